"""Estimators (mean-diff, PCA, logistic probe): known answers on constructed readouts, the vector
file that stores them, and ``--estimator`` selecting one for every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from typer.testing import CliRunner

from estimator_helpers import estimator_vector
from personavec.cli import app
from personavec.core.estimators import (
    ENV_VAR,
    _folds,
    estimate_layers,
    estimator_identity,
    fit_logistic,
    mean_diff,
    pca_direction,
    probe_direction,
)
from personavec.core.vector import PersonaVector, projection_percentiles
from personavec.errors import PersonavecError, VectorFileError
from personavec.pipeline.extract_estimators import attach_estimators
from tiny_models import tiny_model

runner = CliRunner()


def _basis(d: int, seed: int = 0) -> torch.Tensor:
    """An orthonormal basis of R^d (rows), float64."""
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed)).double()
    )
    return q.T


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def test_mean_diff_is_exact() -> None:
    pos = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, -1.0]])
    assert torch.equal(mean_diff(pos, neg), torch.tensor([2.0, 0.0, 2.0]))


def test_pca_finds_the_planted_axis_where_mean_diff_does_not() -> None:
    """Differences ``±s_i·axis + c`` with balanced signs: D^T D = Σ s_i² axis axisᵀ + n c cᵀ, so
    the axis is exactly the top singular vector while the mean difference is ``c``."""
    basis = _basis(8)
    axis, offset = basis[0], 0.3 * basis[1]
    scales = torch.tensor([3.0, 2.0, 4.0, 1.5, 3.0, 2.0, 4.0, 1.5]).double()
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]).double()  # Σ sign·s = 0
    differences = (signs * scales)[:, None] * axis + offset
    neg = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)).double()
    pos = neg + differences
    v = pca_direction(pos.float(), neg.float())
    md = mean_diff(pos.float(), neg.float())
    assert abs(_cos(v, axis)) > 1 - 1e-6
    assert float(v.norm()) == pytest.approx(float(md.norm()), rel=1e-5)
    assert abs(_cos(md, axis)) < 1e-6  # mean-diff points along the offset instead


def test_pca_equals_mean_diff_direction_when_every_pair_agrees() -> None:
    basis = _basis(6, seed=2)
    neg = torch.randn(5, 6, generator=torch.Generator().manual_seed(3)).double()
    pos = neg + torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]).double()[:, None] * basis[2]
    v = pca_direction(pos.float(), neg.float())
    assert _cos(v, basis[2]) > 1 - 1e-6  # same sign as mean-diff, which is +axis here


def _mirrored_classes(d: int = 10, n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two classes, each symmetric under x⊥ → −x⊥ (the complement of ``normal``): the unique
    L2-logistic optimum is then a multiple of ``normal``, whatever the noise in between."""
    basis = _basis(d, seed=4)
    normal = basis[0]
    generator = torch.Generator().manual_seed(5)

    def side(sign: float) -> torch.Tensor:
        noise = torch.randn(n, d - 1, generator=generator).double() @ basis[1:]
        along = (sign * torch.linspace(0.5, 2.0, n).double())[:, None] * normal
        return torch.cat([along + noise, along - noise])  # each point and its mirror image

    return side(1.0).float(), side(-0.3).float(), normal


def test_probe_returns_the_separating_normal_scaled_to_mean_diff() -> None:
    pos, neg, normal = _mirrored_classes()
    fit = probe_direction(pos, neg, groups=[i % 4 for i in range(pos.shape[0])])
    assert abs(_cos(fit.vector, normal)) > 1 - 1e-9
    assert float(fit.vector.norm()) == pytest.approx(float(mean_diff(pos, neg).norm()), rel=1e-5)
    assert fit.penalty in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    assert fit.cv_loss == fit.cv_loss  # cross-validated (not NaN)


def test_probe_differs_from_mean_diff_when_the_classes_are_correlated() -> None:
    """A separating normal that is not the mean difference: noise correlated along the mean
    difference tilts the optimal boundary (the probe finds it, mean-diff cannot)."""
    generator = torch.Generator().manual_seed(6)
    n = 200
    shared = torch.randn(n, generator=generator)
    base = torch.stack([shared * 3, shared * 3 + 0.1 * torch.randn(n, generator=generator)], 1)
    pos, neg = base + torch.tensor([0.0, 1.0]), base.roll(1, 0) - torch.tensor([0.0, 1.0])
    fit = probe_direction(pos, neg, groups=list(range(n)))
    md = mean_diff(pos, neg)
    assert abs(_cos(md, torch.tensor([0.0, 1.0]))) > 0.99
    assert _cos(fit.vector, torch.tensor([-1.0, 1.0])) > 0.9  # x2 − x1 separates the classes


def test_logistic_fit_is_optimal_in_the_full_space() -> None:
    """The row-space Newton solve satisfies the full d-dimensional optimality condition
    (d > n): mean (p − y) x + λ w = 0 and mean (p − y) = 0."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(12, 40, generator=generator).double()
    y = (torch.arange(12) % 2).double()
    for penalty in (1e-3, 0.5):
        w, b = fit_logistic(x, y, penalty)
        residual = torch.sigmoid(x @ w + b) - y
        assert float((x.T @ residual / 12 + penalty * w).abs().max()) < 1e-8
        assert abs(float(residual.mean())) < 1e-8


def test_probe_folds_never_split_a_question() -> None:
    groups = [0, 0, 1, 2, 2, 2, 3, 4, 4]
    folds = _folds(groups, 3)
    assert sorted(int(i) for fold in folds for i in fold) == list(range(len(groups)))
    for fold in folds:
        held = {groups[int(i)] for i in fold}
        assert all(groups[j] not in held for j in range(len(groups)) if j not in fold.tolist())
    pos, neg, _ = _mirrored_classes()
    single = probe_direction(pos, neg, groups=[0] * pos.shape[0])  # one question: no CV
    assert single.penalty == 1e-1 and single.cv_loss != single.cv_loss  # the middle one
    with pytest.raises(PersonavecError, match="positive"):
        probe_direction(pos, neg, penalties=[0.0])


def test_every_layer_is_estimated_like_one_layer_alone() -> None:
    generator = torch.Generator().manual_seed(8)
    pos, neg = torch.randn(6, 3, 5, generator=generator), torch.randn(6, 3, 5, generator=generator)
    groups = [0, 0, 1, 1, 2, 2]
    estimates = estimate_layers(pos, neg, groups)
    for layer in range(3):
        p, q = pos[:, layer], neg[:, layer]
        assert torch.equal(estimates.vectors["mean-diff"][layer], mean_diff(p, q))
        assert torch.equal(estimates.vectors["pca"][layer], pca_direction(p, q))
        fit = probe_direction(p, q, groups)
        assert torch.equal(estimates.vectors["probe"][layer], fit.vector)
        assert estimates.probe_penalty[layer] == fit.penalty


# ---- the vector file ------------------------------------------------------------------------


def _extracted(tmp_path: Path) -> tuple[PersonaVector, torch.Tensor]:
    return estimator_vector(tiny_model("llama", n_layers=2))


def test_extraction_stores_every_estimator_and_they_round_trip(tmp_path: Path) -> None:
    vector, readouts = _extracted(tmp_path)
    estimates = estimate_layers(readouts[0::2], readouts[1::2], [0, 0, 1, 1])
    assert torch.equal(vector.vectors["response_avg@pca"], estimates.vectors["pca"])
    assert torch.equal(vector.vectors["response_avg@probe"], estimates.vectors["probe"])
    # mean-diff stays what extraction computed (float32 group means), equal to the estimator
    assert torch.allclose(vector.vectors["response_avg"], estimates.vectors["mean-diff"], atol=1e-5)
    assert vector.meta.estimators["probe"]["penalty_per_layer"] == estimates.probe_penalty
    table = vector.estimator_percentiles["probe"]
    assert torch.equal(table, projection_percentiles(readouts, estimates.vectors["probe"]))

    path = vector.save(tmp_path / "evil.safetensors")
    loaded = PersonaVector.load(path)
    assert loaded.meta.estimator == "mean-diff"
    assert torch.equal(loaded.vectors["response_avg"], vector.vectors["response_avg"])
    probe = PersonaVector.load(path, estimator="probe")
    assert probe.meta.estimator == "probe"
    assert torch.equal(probe.at(1), estimates.vectors["probe"][1])  # the default readout
    assert torch.equal(probe.readout("response_avg"), estimates.vectors["probe"])
    assert probe.projection_percentiles is not None and torch.equal(
        probe.projection_percentiles, table
    )
    assert probe.relative_scale(1) == pytest.approx(
        float(vector.typical_norm[1]) / float(estimates.vectors["probe"][1].norm())  # type: ignore[index]
    )
    # Writing a view back (as a sweep writes its calibration) keeps the file form intact.
    probe.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    assert probe.canonical().to_bytes() == path.read_bytes()
    pca = probe.with_estimator("pca")  # a view of a view
    assert torch.equal(pca.at(2), estimates.vectors["pca"][2])
    assert pca.with_estimator("mean-diff").to_bytes() == path.read_bytes()


def test_environment_selects_the_estimator_and_the_argument_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vector, _ = _extracted(tmp_path)
    path = vector.save(tmp_path / "evil.safetensors")
    monkeypatch.setenv(ENV_VAR, "pca")
    assert torch.equal(PersonaVector.load(path).at(1), vector.vectors["response_avg@pca"][1])
    assert PersonaVector.load(path, estimator="mean-diff").meta.estimator == "mean-diff"
    monkeypatch.setenv(ENV_VAR, "lasso")
    with pytest.raises(PersonavecError, match="unknown estimator 'lasso'; use one of"):
        PersonaVector.load(path)
    # Runs keyed by file bytes (screen, monitor-sweep) add the choice; mean-diff keeps old keys.
    assert estimator_identity(None) == estimator_identity("mean-diff") == {}
    assert estimator_identity("probe") == {"estimator": "probe"}


def _old_file(tmp_path: Path) -> tuple[Path, PersonaVector]:
    """A file exactly as versions before estimators wrote it (no estimator metadata keys)."""
    vector, _ = _extracted(tmp_path)
    meta = json.loads(vector.meta.model_dump_json())
    for key in ("estimator", "estimators", "recommended_estimators"):
        del meta[key]
    tensors = {f"vector.{k}": v for k, v in vector.vectors.items() if "@" not in k}
    assert vector.typical_norm is not None and vector.projection_percentiles is not None
    tensors["typical_norm"] = vector.typical_norm
    tensors["projection_percentiles"] = vector.projection_percentiles
    meta["readouts"] = sorted(k.removeprefix("vector.") for k in tensors if k.startswith("vec"))
    path = tmp_path / "old.safetensors"
    path.write_bytes(st_save(tensors, metadata={"personavec": json.dumps(meta)}))
    return path, vector


def test_old_files_load_unchanged_and_say_how_to_get_estimators(tmp_path: Path) -> None:
    path, vector = _old_file(tmp_path)
    old = PersonaVector.load(path)
    assert old.meta.estimator == "mean-diff" and old.meta.estimators == {}
    assert set(old.vectors) == {"response_avg", "prompt_avg", "prompt_last"}
    for name, tensor in old.vectors.items():
        assert torch.equal(tensor, vector.vectors[name])
    assert PersonaVector.load(path, estimator="mean-diff").to_bytes() == old.to_bytes()
    with pytest.raises(VectorFileError) as info:
        PersonaVector.load(path, estimator="pca")
    message = str(info.value)
    assert "holds no 'pca' estimator" in message and "re-run `personavec extract`" in message
    assert "\n" not in message


def test_cli_estimator_option_reaches_every_vector_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``personavec --estimator probe export-gguf`` exports the probe's vector; an old file or an
    unknown name is a one-line error with exit status 2 and no output file."""
    from personavec.interop.gguf_export import read_control_vector

    # The CLI's --estimator sets os.environ directly; setenv first so that monkeypatch records
    # the variable's prior state and restores it after the test (a bare delenv of an unset
    # variable records nothing, and the test's last value leaked into every later test).
    monkeypatch.setenv(ENV_VAR, "mean-diff")
    monkeypatch.delenv(ENV_VAR)
    vector, _ = _extracted(tmp_path)
    path = vector.save(tmp_path / "evil.safetensors")
    old, _ = _old_file(tmp_path)

    def export(estimator: str, source: Path, out: Path) -> str:
        command = ["--estimator", estimator, "export-gguf", str(source), str(out)]
        result = runner.invoke(app, [*command, "--layer", "2", "--coef", "1", "--raw"])
        return f"exit {result.exit_code}: {result.output}"

    for estimator, readout in (("mean-diff", "response_avg"), ("probe", "response_avg@probe")):
        out = tmp_path / f"{estimator}.gguf"
        assert export(estimator, path, out).startswith("exit 0"), estimator
        (exported,) = read_control_vector(out).values()
        assert torch.allclose(torch.from_numpy(exported), vector.vectors[readout][2])
    message = export("pca", old, tmp_path / "old.gguf")
    assert message.startswith("exit 2") and "holds no 'pca' estimator" in message
    assert not (tmp_path / "old.gguf").exists()
    result = runner.invoke(app, ["--estimator", "lasso", "trait", "list"])
    assert result.exit_code == 2 and "unknown estimator 'lasso'" in result.output


def test_extraction_recommends_the_estimator_that_separates_held_out_pairs() -> None:
    """Noise shared along the mean difference: held-out pairs separate along x2 − x1 (the
    probe), not along the mean difference (x2), so the probe is recommended for monitoring."""
    from personavec.core.capture import CaptureResult
    from personavec.core.vector import VectorMetadata

    generator = torch.Generator().manual_seed(9)
    n = 40
    shared = torch.randn(2 * n, generator=generator) * 3
    base = torch.stack([shared, shared + 0.1 * torch.randn(2 * n, generator=generator)], 1)
    pos, neg = base[:n] + torch.tensor([0.0, 1.0]), base[n:] - torch.tensor([0.0, 1.0])
    layer_one = torch.stack([pos, neg], 1).reshape(2 * n, 2)  # pos, neg, pos, neg, …
    per_example = torch.stack([torch.zeros_like(layer_one), layer_one], 1)  # [2n, 2 layers, 2]
    per_example[:, 0] = torch.randn(2 * n, 2, generator=generator)
    means = {"response_avg": {"pos": pos.mean(0), "neg": neg.mean(0)}}
    captured = CaptureResult([0, 1], means, {}, {"response_avg": per_example}, torch.ones(2))
    vectors = {"response_avg": per_example[0::2].mean(0) - per_example[1::2].mean(0)}
    meta = VectorMetadata(
        trait="t", model_id="m", model_fingerprint="f", hidden_size=2, n_layers=1,
        readouts=["response_avg"], recommended_layer=1,
    )  # fmt: skip
    vector = attach_estimators(PersonaVector(vectors, meta), captured, list(range(n)))
    chosen = vector.meta.recommended_estimators
    assert chosen["monitoring"] == "probe" and chosen["steering"] == "mean-diff"
    assert "layer 1" in chosen["monitoring_basis"] and "not measured" in chosen["steering_basis"]


def test_the_cli_estimator_lasts_one_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process ``personavec --estimator probe ...`` leaves $PERSONAVEC_ESTIMATOR as it was."""
    import os

    monkeypatch.setenv(ENV_VAR, "mean-diff")
    monkeypatch.delenv(ENV_VAR)
    assert runner.invoke(app, ["--estimator", "probe", "trait", "list"]).exit_code == 0
    assert ENV_VAR not in os.environ
    monkeypatch.setenv(ENV_VAR, "pca")
    assert runner.invoke(app, ["--estimator", "probe", "trait", "list"]).exit_code == 0
    assert os.environ[ENV_VAR] == "pca"
