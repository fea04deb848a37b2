"""SteeringSetting: the one steering-setting type, its defaults, its validation, its grammars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from personavec.core.setting import (
    MAX_NORM_RATIO,
    SteeringSetting,
    parse_layers,
    parse_steer_spec,
)
from personavec.core.steering import steer
from personavec.core.vector import PersonaVector, VectorMetadata
from personavec.errors import PersonavecError, SteeringError, VectorFileError
from tiny_models import tiny_model

N_LAYERS, HIDDEN = 4, 8
NORMS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) * 10


def make_vector(
    norms: torch.Tensor | None = NORMS,
    *,
    rows: torch.Tensor | None = None,
    hidden: int = HIDDEN,
    **meta_fields: object,
) -> PersonaVector:
    if rows is None:
        rows = torch.randn(N_LAYERS + 1, hidden, generator=torch.Generator().manual_seed(4))
    meta = VectorMetadata(
        trait="test",
        model_id="tiny",
        model_fingerprint="x",
        hidden_size=hidden,
        n_layers=N_LAYERS,
        readouts=["response_avg"],
        **meta_fields,  # type: ignore[arg-type]
    )
    return PersonaVector({"response_avg": rows}, meta, norms)


# ---- grammar --------------------------------------------------------------------------------


def test_layer_grammar() -> None:
    assert parse_layers("12") == [12]
    assert parse_layers("16,8,12,8") == [8, 12, 16]
    assert parse_layers("8-11") == [8, 9, 10, 11]
    assert parse_layers("8-20:4") == [8, 12, 16, 20]
    assert parse_layers("8-20:4,3, 9") == [3, 8, 9, 12, 16, 20]
    assert parse_layers("0") == [0]
    assert parse_layers("0-30", 30)[-1] == 30


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "cannot read layers"),
        ("8,,12", "cannot read layers"),
        ("x", "cannot read layers"),
        ("12:4", "cannot read layers"),
        ("16-8", "empty range"),
        ("8-16:0", "empty range"),
        ("-1", ">= 0"),
        ("1.5", "cannot read layers"),
    ],
)
def test_layer_grammar_errors_are_one_line(text: str, words: str) -> None:
    with pytest.raises(SteeringError, match=words) as info:
        parse_layers(text)
    assert "\n" not in str(info.value)


def test_layer_range_checked_against_model() -> None:
    with pytest.raises(SteeringError, match=r"layers 0\.\.30"):
        parse_layers("28-31", 30)


def test_spec_string(tmp_path: Path) -> None:
    path = make_vector(recommended_layer=2, recommended_coef=3.0).save(tmp_path / "v")
    full = parse_steer_spec(f" {path}:1-3:-2.5:response:add ")
    assert (full.layers, full.coef, full.positions, full.op, full.unit) == (
        (1, 2, 3),
        -2.5,
        "response",
        "add",
        "raw",
    )
    kept = parse_steer_spec(f"{path}::4")
    assert (kept.layers, kept.coef) == ((2,), 4.0)
    defaults = parse_steer_spec(str(path))
    assert (defaults.layers, defaults.coef, defaults.positions) == ((2,), 3.0, "all")
    ablate = parse_steer_spec(f"{path}:3:::ablate")
    assert (ablate.op, ablate.layers) == ("ablate", (3,))
    with pytest.raises(VectorFileError, match="not found"):
        parse_steer_spec(str(tmp_path / "missing.safetensors"))
    for bad, words in [
        (f"{path}:1:x", "coefficient"),
        (f"{path}:1:1:middle", "positions"),
        (f"{path}:1:1:all:scale", "operator"),
        (f"{path}:1:1:all:add:x", "too many"),
        (f"{path}:9", "out of range"),
    ]:
        with pytest.raises(SteeringError, match=words):
            parse_steer_spec(bad)


# ---- defaults from metadata -----------------------------------------------------------------


def test_defaults_follow_the_calibration() -> None:
    calibration = {"relative": True, "positions": "response"}
    pv = make_vector(recommended_layer=3, recommended_coef=0.2, calibration=calibration)
    setting = SteeringSetting.from_vector(pv)
    assert (setting.layers, setting.coef, setting.unit, setting.positions) == (
        (3,),
        0.2,
        "relative",
        "response",
    )
    (item,) = setting.interventions()
    added = item.vector * item.coef
    torch.testing.assert_close(added.norm(), torch.tensor(0.2 * float(NORMS[3])))
    # An explicit coefficient is raw at all positions unless told otherwise.
    explicit = SteeringSetting.from_vector(pv, coef=2.0)
    assert (explicit.unit, explicit.positions, explicit.layers) == ("raw", "all", (3,))
    torch.testing.assert_close(
        explicit.interventions()[0].vector * 2.0, 2.0 * pv.at(3), rtol=0, atol=0
    )
    # A unit without a coefficient converts the calibrated one: the same vector is added.
    raw = SteeringSetting.from_vector(pv, unit="raw")
    assert raw.unit == "raw"
    assert raw.coef == pytest.approx(0.2 * float(NORMS[3]) / float(pv.at(3).norm()))
    (raw_item,) = raw.interventions()
    torch.testing.assert_close(raw_item.vector * raw_item.coef, added, rtol=1e-6, atol=0)
    # ablate needs no coefficient (the file's is not used).
    assert SteeringSetting.from_vector(make_vector(), layers=[1], op="ablate").op == "ablate"


def test_missing_recommendations_fail_clearly() -> None:
    with pytest.raises(SteeringError, match="recommended layer"):
        SteeringSetting.from_vector(make_vector(), coef=1.0)
    with pytest.raises(SteeringError, match="recommended coefficient"):
        SteeringSetting.from_vector(make_vector(), layers=[1])


def test_stack_incremental_and_relative() -> None:
    pv = make_vector()
    v = pv.readout()
    stack = SteeringSetting(pv, (3, 1, 2), 2.0).interventions()
    assert [i.layer for i in stack] == [1, 2, 3]
    for item in stack:
        torch.testing.assert_close(item.vector * item.coef, 2.0 * v[item.layer])
    incremental = SteeringSetting(pv, (2, 3, 4), 1.5, mode="incremental").interventions()
    torch.testing.assert_close(incremental[1].vector, v[3] - v[2])
    total = sum(item.vector * item.coef for item in incremental)
    torch.testing.assert_close(total, 1.5 * v[4])  # cumulative addition equals v_L
    (rel,) = SteeringSetting(pv, (3,), 0.5, "relative").interventions()
    torch.testing.assert_close((rel.vector * rel.coef).norm(), torch.tensor(0.5 * 40.0))


def test_layer_zero_is_valid_and_steers_the_embeddings() -> None:
    lm = tiny_model("llama")
    rows = torch.randn(lm.n_layers + 1, lm.hidden_size, generator=torch.Generator().manual_seed(1))
    meta = VectorMetadata(
        trait="t",
        model_id="tiny",
        model_fingerprint="x",
        hidden_size=lm.hidden_size,
        n_layers=lm.n_layers,
        readouts=["response_avg"],
    )
    pv = PersonaVector({"response_avg": rows}, meta, torch.full((lm.n_layers + 1,), 10.0))
    setting = SteeringSetting(pv, (0,), 1.0)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base = lm.model(ids).logits
        with setting.apply(lm.model):
            moved = lm.model(ids).logits
        again = lm.model(ids).logits
    assert not torch.allclose(base, moved)
    torch.testing.assert_close(again, base, rtol=0, atol=0)
    with torch.no_grad(), steer(lm.model, setting.interventions()):
        torch.testing.assert_close(lm.model(ids).logits, moved, rtol=0, atol=0)


# ---- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["raw", "relative"])
def test_absurd_coefficient_refused(unit: str) -> None:
    pv = make_vector()
    with pytest.raises(SteeringError, match="typical residual norm") as info:
        SteeringSetting(pv, (2,), 1e30, unit)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    # just under the limit is accepted (relative: the added norm is coef · typical_norm)
    SteeringSetting(pv, (2,), 0.99 * MAX_NORM_RATIO, "relative")
    with pytest.raises(SteeringError, match="typical residual norm"):
        SteeringSetting(pv, (2,), 1.01 * MAX_NORM_RATIO, "relative")


def test_absurd_stored_recommendation_refused() -> None:
    pv = make_vector(recommended_layer=2, recommended_coef=1e30)
    with pytest.raises(SteeringError, match="typical residual norm"):
        SteeringSetting.from_vector(pv)


def test_zero_vector_and_zero_norms_refused() -> None:
    zero = make_vector(rows=torch.zeros(N_LAYERS + 1, HIDDEN))
    for op in ("add", "ablate"):
        with pytest.raises(SteeringError, match="zero"):
            SteeringSetting(zero, (2,), 1.0, op=op)  # type: ignore[arg-type]
    flat = make_vector(norms=torch.zeros(N_LAYERS + 1))
    with pytest.raises(SteeringError, match="typical norm at layer 2 is zero"):
        SteeringSetting(flat, (2,), 0.5, "relative")
    # The coefficient-0 baseline changes nothing and is always allowed.
    assert SteeringSetting(zero, (2,), 0.0).interventions() == []


def test_cross_field_validation() -> None:
    pv = make_vector()
    cases = [
        ({"coef": float("nan")}, "finite"),
        ({"positions": "middle"}, "positions"),
        ({"op": "scale"}, "operator"),
        ({"unit": "percent"}, "unit"),
        ({"layers": (1, 3), "mode": "incremental"}, "contiguous"),
        ({"unit": "relative", "mode": "incremental"}, "incremental"),
        ({"op": "cap"}, "threshold"),
        ({"threshold": 1.0}, "cap only"),
        ({"layers": (5,)}, "out of range"),
        ({"layers": ()}, "no layers"),
    ]
    for changes, words in cases:
        fields = {"layers": (2,), "coef": 1.0, **changes}
        with pytest.raises(SteeringError, match=words):
            SteeringSetting(pv, **fields)  # type: ignore[arg-type]
    with pytest.raises(PersonavecError, match="typical norms"):
        SteeringSetting(make_vector(norms=None), (2,), 0.5, "relative")


def test_cap_threshold_from_percentile() -> None:
    """Needs ``PersonaVector.projection_percentiles`` (the ``core`` branch)."""
    pv = make_vector()
    table = torch.linspace(-5, 5, 101).repeat(N_LAYERS + 1, 1)
    pv.projection_percentiles = table  # type: ignore[attr-defined]
    setting = SteeringSetting.from_vector(pv, layers=[2], op="cap", threshold="p95")
    assert setting.threshold == pytest.approx(float(table[2, 95]))
    assert SteeringSetting.from_vector(pv, layers=[2], op="cap", threshold=1.5).threshold == 1.5
    with pytest.raises(SteeringError, match="one layer"):
        SteeringSetting.from_vector(pv, layers=[2, 3], op="cap", threshold="p95")


# ---- identity and description ---------------------------------------------------------------


def test_identity_is_stable_and_distinguishes_settings() -> None:
    pv = make_vector()
    a = SteeringSetting(pv, (2,), 1.0)
    assert a.identity() == SteeringSetting(make_vector(), [2], 1).identity()  # type: ignore[arg-type]
    others = [
        SteeringSetting(pv, (3,), 1.0),
        SteeringSetting(pv, (2,), 2.0),
        SteeringSetting(pv, (2,), 1.0, "relative"),
        SteeringSetting(pv, (2,), 1.0, positions="response"),
        SteeringSetting(pv, (2,), 1.0, op="ablate"),
    ]
    assert len({str(sorted(s.identity().items())) for s in [a, *others]}) == 6
    assert a.baseline().identity() == {}
    code = (
        "import torch, sys; sys.path.insert(0, 'tests');"
        "from test_setting import make_vector; from personavec.core.setting import SteeringSetting;"
        "print(SteeringSetting(make_vector(), (2,), 1.0).identity())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(a.identity())


def test_describe_and_label() -> None:
    pv = make_vector()
    assert SteeringSetting(pv, (2, 3, 4), 0.5, "relative").describe() == (
        "steering 'test' at layer 2-4 with relative coef 0.5 (all positions, stack)"
    )
    assert SteeringSetting(pv, (2,), -1.0).label() == "L2 raw -1 (all)"
    assert SteeringSetting(pv, (2,), 0.0).label() == "baseline"


def test_cap_passes_threshold_and_bound_to_the_intervention() -> None:
    """Needs ``Intervention(threshold=, bound=)`` (the ``core`` branch)."""
    setting = SteeringSetting(make_vector(), (2,), op="cap", threshold=1.5, bound="min")
    (item,) = setting.interventions()
    assert (item.layer, item.op, item.threshold, item.bound) == (2, "cap", 1.5, "min")  # type: ignore[attr-defined]
    torch.testing.assert_close(item.vector, make_vector().at(2))


def test_one_validation_for_settings_and_interventions() -> None:
    """The setting and the low-level intervention share one validation (and one ``Bound``):
    the same bad field gives the same one-line message from both."""
    from personavec.core import setting as setting_module
    from personavec.core import steering as steering_module
    from personavec.core.steering import Intervention

    assert setting_module.Bound is steering_module.Bound
    pv = make_vector()
    for fields in (
        {"positions": "middle"},
        {"coef": float("nan")},
        {"op": "cap", "bound": "middle", "threshold": 1.0},
        {"op": "cap"},
        {"op": "cap", "threshold": float("inf")},
        {"threshold": 2.0},
    ):
        with pytest.raises(SteeringError) as from_setting:
            SteeringSetting(pv, (2,), **{"coef": 1.0, **fields})  # type: ignore[arg-type]
        with pytest.raises(SteeringError) as from_item:
            Intervention(2, pv.at(2), **{"coef": 1.0, **fields})  # type: ignore[arg-type]
        assert str(from_setting.value) == str(from_item.value), fields
