"""Strengths mean one thing: a unit given without a coefficient converts the file's calibrated
coefficient, so every entry point adds the same vector (library, CLI options, ``export-gguf``,
``evaluate``, ``--prevent``, the server, the prevention study); and a vector without typical
norms is still checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fixtures import synthetic_vector
from personavec.cli import app
from personavec.cli.common import setting_from_options
from personavec.core.setting import MAX_NORM_RATIO, SteeringSetting, convert_coef
from personavec.core.steering import Intervention
from personavec.core.vector import PersonaVector
from personavec.errors import SteeringError
from personavec.interop.gguf_export import read_control_vector
from personavec.serve.schemas import ApiError, SteeringItem
from personavec.serve.vectors import VectorRegistry
from personavec.training.modifiers import build_modifiers
from tiny_models import HIDDEN, LAYERS, tiny_model

runner = CliRunner()
NORMS = torch.tensor([5.0, 10.0, 20.0, 40.0])
REL = 0.2


def calibrated(
    *, relative: bool = True, coef: float = REL, norms: torch.Tensor | None = NORMS
) -> PersonaVector:
    """A tiny-model-sized vector calibrated at layer 2 (``coef`` in the given unit)."""
    return synthetic_vector(
        n_layers=LAYERS,
        hidden=HIDDEN,
        seed=7,
        layer=2,
        typical_norm=norms,
        recommended_coef=coef,
        calibration={"relative": relative, "positions": "all"},
    )


def added(items: list[Intervention]) -> dict[int, torch.Tensor]:
    """Layer → the vector the ``add`` interventions put on the residual stream."""
    return {i.layer: i.vector.float() * i.coef for i in items}


def assert_same_added(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for layer in a:
        torch.testing.assert_close(a[layer], b[layer], rtol=1e-6, atol=0)


def expected_relative(pv: PersonaVector) -> dict[int, torch.Tensor]:
    """The calibrated meaning: norm ``REL · typical_norm[2]`` along ``v_2``."""
    v = pv.at(2).float()
    return {2: v / v.norm() * REL * float(NORMS[2])}


def test_library_unit_without_coef_keeps_the_added_vector() -> None:
    pv = calibrated()
    as_file = SteeringSetting.from_vector(pv)
    raw = SteeringSetting.from_vector(pv, unit="raw")
    assert (as_file.unit, raw.unit) == ("relative", "raw")
    assert raw.coef == pytest.approx(REL * float(NORMS[2]) / float(pv.at(2).norm()))
    assert_same_added(added(raw.interventions()), added(as_file.interventions()))
    assert_same_added(added(raw.interventions()), expected_relative(pv))
    # ... and the other way round: a raw calibration asked for in relative units.
    raw_file = calibrated(relative=False, coef=1.5)
    relative = SteeringSetting.from_vector(raw_file, unit="relative")
    assert relative.unit == "relative"
    assert_same_added(added(relative.interventions()), {2: 1.5 * raw_file.at(2).float()})
    # An explicit coefficient is taken as given (no conversion).
    assert SteeringSetting.from_vector(pv, coef=0.2, unit="raw").coef == 0.2


def test_conversion_refused_in_one_line_when_it_has_no_single_meaning() -> None:
    no_norms = calibrated(norms=None)
    with pytest.raises(SteeringError, match=r"no typical norms.*give --coef") as info:
        SteeringSetting.from_vector(no_norms, unit="raw")
    assert "\n" not in str(info.value)
    # Two layers with different typical-norm-to-vector-norm factors: no one raw coefficient.
    with pytest.raises(SteeringError, match=r"different raw coefficient.*give --coef"):
        SteeringSetting.from_vector(calibrated(), [1, 2], unit="raw")
    # A shared factor converts fine.
    pv = calibrated()
    assert convert_coef(pv, [2, 2], 0.5, "relative", "relative") == 0.5


def test_cli_options_generate_and_evaluate_convert(tmp_path: Path) -> None:
    pv = calibrated()
    path = pv.save(tmp_path / "v.safetensors")
    want = expected_relative(pv)
    for relative in (None, True, False):
        setting = setting_from_options(path, relative=relative)
        assert_same_added(added(setting.interventions()), want)
    # The commands refuse a unit they cannot convert to before loading any model.
    bare = calibrated(norms=None).save(tmp_path / "bare.safetensors")
    for args in (
        ["generate", "hi", "--model", "missing.gguf", "--vector", str(bare), "--raw"],
        ["evaluate", "-t", "evil", "--vector", str(bare), "--raw", "--model", "missing.gguf"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "give --coef" in result.output and "GGUF" not in result.output


def test_export_gguf_bakes_the_calibrated_strength_in_any_unit(tmp_path: Path) -> None:
    pv = calibrated()
    path = pv.save(tmp_path / "v.safetensors")
    norms: list[float] = []
    for flag in ([], ["--raw"], ["--relative"]):
        out = tmp_path / f"cv{len(norms)}.gguf"
        result = runner.invoke(app, ["export-gguf", str(path), str(out), *flag])
        assert result.exit_code == 0, result.output
        (baked,) = read_control_vector(out).values()
        norms.append(float(torch.from_numpy(baked).norm()))
    assert norms == pytest.approx([REL * float(NORMS[2])] * 3, rel=1e-6)


def test_prevent_spec_with_a_unit_converts(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    pv = calibrated()
    path = pv.save(tmp_path / "v.safetensors")
    for relative in (None, False, True):
        modifiers = build_modifiers(lm, prevent=[f"{path}:2"], relative=relative, force=True)
        assert_same_added(added(modifiers.interventions()), expected_relative(pv))


def test_server_unit_without_coef_converts_and_huge_coef_is_refused() -> None:
    pv = calibrated()
    registry = VectorRegistry({"v": pv})
    for unit in (None, "raw", "relative"):
        items = registry.interventions([SteeringItem(vector="v", unit=unit)])
        assert_same_added(added(items), expected_relative(pv))
    bare = VectorRegistry({"v": calibrated(norms=None)})
    with pytest.raises(ApiError, match="own norm"):
        bare.interventions([SteeringItem(vector="v", coef=1e30, unit="raw")])


# ---- a vector without typical norms is still checked ----------------------------------------


@pytest.mark.parametrize("coef", [1e30, -1e30, 1e308 * 10, 1.01 * MAX_NORM_RATIO])
def test_no_typical_norms_still_bounds_the_strength(coef: float) -> None:
    pv = calibrated(norms=None)
    with pytest.raises(SteeringError) as info:
        SteeringSetting(pv, (2,), coef)
    assert "\n" not in str(info.value)


def test_no_typical_norms_rule_is_coef_at_most_the_ratio() -> None:
    """Documented rule: without typical norms the added norm may be at most
    ``MAX_NORM_RATIO × ‖v_L‖``, i.e. a raw ``|coef| ≤ MAX_NORM_RATIO``."""
    pv = calibrated(norms=None)
    setting = SteeringSetting(pv, (2,), -0.99 * MAX_NORM_RATIO)
    (item,) = setting.interventions()
    assert float((item.vector * item.coef).norm()) <= MAX_NORM_RATIO * float(pv.at(2).norm())
    # Zero typical norm at a layer falls back to the same rule.
    zero = calibrated(norms=torch.tensor([5.0, 10.0, 0.0, 40.0]))
    SteeringSetting(zero, (2,), 0.99 * MAX_NORM_RATIO)
    with pytest.raises(SteeringError, match="own norm"):
        SteeringSetting(zero, (2,), 1e6)


def test_cli_generate_applies_the_calibrated_strength_in_any_unit(tmp_path: Path) -> None:
    """``generate --raw`` / ``--relative`` without ``--coef`` on a tiny checkpoint: the coefficient
    it reports times ``‖v‖`` (raw) or times ``typical_norm`` (relative) is the calibrated norm,
    and the steered answers are the same."""
    from personavec.core.vector import config_fingerprint

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    pv = calibrated()
    pv.meta.model_fingerprint = config_fingerprint(lm.model.config)
    path = pv.save(tmp_path / "v.safetensors")
    base = ["generate", "Hi", "--model", str(tmp_path / "model"), "--device", "cpu"]
    base += ["--vector", str(path), "--max-new-tokens", "4"]
    outputs = {}
    for flag in ("--raw", "--relative"):
        result = runner.invoke(app, [*base, flag], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        described = next(ln for ln in result.output.splitlines() if "coef" in ln)
        coef = float(described.split(" coef ")[1].split()[0])
        scale = float(pv.at(2).norm()) if flag == "--raw" else float(NORMS[2])
        assert coef * scale == pytest.approx(REL * float(NORMS[2]), rel=1e-5)
        outputs[flag] = result.output.split("steered:", 1)[1]
    assert outputs["--raw"] == outputs["--relative"]


def test_prevention_study_variants_add_what_their_unit_says(tmp_path: Path) -> None:
    """The study's preventative (training) and post-hoc (evaluation) strengths, in either unit."""
    from personavec.core.vector import config_fingerprint
    from personavec.studies.prevent_study import _variant_plan
    from personavec.studies.prevent_study_types import StudyContext, StudySettings
    from personavec.training.finetune import FinetuneConfig

    lm = tiny_model("llama")
    fitted = synthetic_vector(
        n_layers=LAYERS,
        hidden=HIDDEN,
        seed=7,
        layer=2,
        typical_norm=NORMS,
        fingerprint=config_fingerprint(lm.model.config),
    )
    pv = PersonaVector.load(fitted.save(tmp_path / "v.safetensors"))
    v = pv.at(2).float()
    for relative, unit_norm in ((True, float(NORMS[2])), (False, float(v.norm()))):
        settings = StudySettings(coefs=(0.5,), penalty_weights=(), ablate=False, relative=relative)
        ctx = StudyContext(
            lm,
            pv,
            2,
            [],
            tmp_path,
            settings,
            FinetuneConfig(),
            None,  # type: ignore[arg-type]  # capability: not read when planning variants
            tmp_path,
            lambda message: None,
            False,
        )
        (prevent,) = [x for x in _variant_plan(ctx) if x.method == "prevent"]
        assert prevent.mods is not None
        assert_same_added(added(prevent.mods.interventions()), {2: v / v.norm() * 0.5 * unit_norm})
        unit = "relative" if relative else "raw"
        posthoc = SteeringSetting.from_vector(pv, [2], coef=-0.5, unit=unit)  # as _measure does
        assert_same_added(added(posthoc.interventions()), {2: -v / v.norm() * 0.5 * unit_norm})
