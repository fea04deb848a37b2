"""Held-out layer separation and the suggested layer, on constructed data with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from personavec.pipeline.extract import LayerSeparation, layer_separation, suggest_layer

PAIRS = 8


def readouts() -> tuple[torch.Tensor, torch.Tensor]:
    """``[pairs, 3 layers, hidden 2]`` pos / neg readouts.

    Within a pair, pos and neg share the y coordinate, so every fold's direction is exactly +x
    and the held-out projections are the x coordinates.

    * column 0 (weak): pos x = 1, 0, 1, 0, …; neg x = 0.5, -0.5, …
    * column 1 (clean): pos x = 2, 3, 2, 3, …; neg x = 0, 1, 0, 1, …
    * column 2 (none): pos == neg, so the direction is zero.
    """
    y = torch.arange(PAIRS, dtype=torch.float32) * 0.37 - 1.0
    alt = torch.tensor([0.0, 1.0] * (PAIRS // 2))
    pos_x = [1.0 - alt, 2.0 + alt, torch.zeros(PAIRS)]
    neg_x = [0.5 - alt, alt, torch.zeros(PAIRS)]
    pos = torch.stack([torch.stack([x, y], dim=1) for x in pos_x], dim=1)
    neg = torch.stack([torch.stack([x, y], dim=1) for x in neg_x], dim=1)
    return pos, neg


def test_layer_separation_known_values() -> None:
    pos, neg = readouts()
    out = layer_separation(pos, neg, [3, 5, 7], torch.tensor([10.0, 20.0, 30.0]))
    assert [s.layer for s in out] == [3, 5, 7]
    assert [s.typical_norm for s in out] == [10.0, 20.0, 30.0]
    weak, clean, none = out
    # Weak: held-out pos {0,0,0,0,1,1,1,1} vs neg {±0.5 ×4}: 1 beats all 8, 0 beats 4 → 48/64.
    assert weak.auroc == pytest.approx(0.75)
    # d: means 0.5 and 0; sample variances 2/7 and 2/7 (values ±0.5 around the mean, n = 8).
    assert weak.cohens_d == pytest.approx(0.5 / math.sqrt(2 / 7))
    assert weak.vector_norm == pytest.approx(0.5)
    # Clean: every held-out pos (2 or 3) is above every neg (0 or 1); means 2.5 and 0.5.
    assert clean.auroc == 1.0
    assert clean.cohens_d == pytest.approx(2.0 / math.sqrt(2 / 7))
    assert clean.vector_norm == pytest.approx(2.0)
    # None: no direction, nothing held out.
    assert math.isnan(none.auroc) and math.isnan(none.cohens_d)
    assert none.vector_norm == 0.0


def test_layer_separation_is_held_out() -> None:
    """A direction that fits one fold but flips on the other scores below chance."""
    pos = torch.zeros(4, 1, 1)
    neg = torch.zeros(4, 1, 1)
    pos[:, 0, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # even pairs: pos above; odd: below
    out = layer_separation(pos, neg, [1], torch.ones(1))
    # Fold even → +x, tested on odd (pos −1 < neg 0); fold odd → −x, tested on even (−1 < 0).
    assert out[0].auroc == 0.0
    assert out[0].vector_norm == 0.0  # the full-data mean difference cancels


def sep(layer: int, auroc: float, d: float = 1.0) -> LayerSeparation:
    return LayerSeparation(layer, auroc, d, 1.0, 1.0)


def test_suggest_layer_depth_window() -> None:
    # 20 layers: the window is 35-70 % of depth = layers 7..14 inclusive.
    candidates = [
        sep(3, 1.0),  # best overall but too shallow
        sep(6, 0.99),
        sep(7, 0.80),
        sep(10, 0.85),
        sep(14, 0.84),
        sep(15, 0.99),  # too deep
    ]
    assert suggest_layer(candidates, 20) == 10
    assert suggest_layer([*candidates, sep(7, 0.95)], 20) == 7  # lower edge inclusive
    assert suggest_layer([*candidates, sep(14, 0.95)], 20) == 14  # upper edge inclusive


def test_suggest_layer_ties_nan_and_fallback() -> None:
    # AUROC equal to 3 decimals: the larger Cohen's d wins.
    assert suggest_layer([sep(8, 0.9001, 1.0), sep(12, 0.9004, 3.0)], 20) == 12
    assert suggest_layer([sep(8, 0.9004, 3.0), sep(12, 0.9001, 1.0)], 20) == 8
    # NaN separation ranks below any number.
    assert suggest_layer([sep(8, math.nan, math.nan), sep(12, 0.2, 0.1)], 20) == 12
    # Nothing in the window: the best of all layers.
    assert suggest_layer([sep(2, 0.6), sep(19, 0.8), sep(1, 0.7)], 20) == 19
    # Two blocks: the window collapses to layer 1.
    assert suggest_layer([sep(0, 1.0), sep(1, 0.5), sep(2, 0.9)], 2) == 1
