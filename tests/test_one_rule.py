"""One of each: the recommended-layer fallback and the comma-list readers are written once and
every entry point uses them (same meaning, same one-line message)."""

from __future__ import annotations

import pytest

from fixtures import synthetic_vector
from personavec.cli.monitor_sweep import parse_shots
from personavec.core.grammar import parse_numbers, split_list
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError, SteeringError
from personavec.monitor.specs import MonitorSpec
from personavec.pipeline.monitor_sweep import resolve_layer
from personavec.pipeline.project import resolve_vector_layers
from personavec.pipeline.sweep import parse_grid
from personavec.screening.score import make_targets
from personavec.training.shift import vector_layer


def vector(layer: int | None) -> PersonaVector:
    return synthetic_vector(
        trait="evil", n_layers=4, hidden=8, layer=layer, typical_norm=10.0, recommended_coef=1.0
    )


ENTRY_POINTS = {
    "setting": lambda v, layer: SteeringSetting.from_vector(
        v, None if layer is None else [layer]
    ).layers[0],
    "monitor": lambda v, layer: MonitorSpec.from_vector(v, layer).layer,
    "screen": lambda v, layer: make_targets([v], layer)[0].layer,
    "project": lambda v, layer: resolve_vector_layers([("evil", v)], layer)["evil"],
    "shift": vector_layer,
    "monitor-sweep": resolve_layer,
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_entry_point_resolves_the_layer_the_same_way(name: str) -> None:
    resolve = ENTRY_POINTS[name]
    assert resolve(vector(3), None) == 3 == vector(3).layer_or_recommended()
    assert resolve(vector(3), 2) == 2
    with pytest.raises(PersonavecError) as info:
        resolve(vector(None), None)
    with pytest.raises(SteeringError) as same:
        vector(None).layer_or_recommended()
    assert str(info.value) == str(same.value)
    assert "records no recommended layer" in str(info.value) and "--layer" in str(info.value)
    with pytest.raises(PersonavecError, match="out of range"):
        resolve(vector(3), 9)


def test_one_comma_list_reader() -> None:
    assert split_list(" a, b,,c ,") == ["a", "b", "c"]
    assert split_list(None) == []
    assert parse_numbers("1, 2,4", float, "--coefs", "1,2,4") == [1.0, 2.0, 4.0]
    assert parse_shots("0,5, 10") == [0, 5, 10]
    assert parse_grid("2,-1") == [-1.0, 0.0, 2.0]
    for call, words in [
        (lambda: parse_shots("0,x"), "cannot read --shots '0,x'; write e.g. 0,5,10"),
        (lambda: parse_grid("1,inf"), "coefficients must be finite"),
        (lambda: parse_numbers("1,two", float, "--coefs", "1,2,4"), "cannot read --coefs"),
    ]:
        with pytest.raises(PersonavecError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)
