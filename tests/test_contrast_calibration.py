"""The contrast judge's calibration: control weight and logistic map, fitted on examples only."""

from __future__ import annotations

import pytest

from personavec.judges.contrast_calibration import (
    CONTROL_WEIGHTS,
    Calibration,
    Contrasts,
    fit_calibration,
)


def test_without_controls_the_weight_is_zero_and_the_means_map_to_90_and_10() -> None:
    positive, negative = Contrasts([0.5, 0.7], [9.0, 9.0]), Contrasts([0.1, 0.1], [-9.0, 9.0])
    calibration = fit_calibration(positive, negative)
    assert calibration.control_weight == 0.0
    assert calibration(0.6) == pytest.approx(90.0) and calibration(0.1) == pytest.approx(10.0)


def test_the_control_weight_that_separates_the_trait_from_other_traits_is_chosen() -> None:
    """Other traits' answers share the trait's own contrast (misbehaving answers raise every
    trait's contrast) but also raise the control. From w = 0.5 on, every positive example beats
    every other trait's (0.85 > 0.75), so the smallest such weight is kept."""
    positive = Contrasts(own=[1.0, 1.1, 0.9], control=[0.2, 0.3, 0.1])
    negative = Contrasts(own=[0.0, 0.1, -0.1], control=[0.0, 0.0, 0.1])
    others = Contrasts(own=[1.2, 1.0, 1.3], control=[1.0, 0.9, 1.1])
    calibration = fit_calibration(positive, negative, others)
    assert calibration.control_weight == 0.5
    assert calibration.positive_mean == pytest.approx(1.0 - 0.5 * 0.2)
    assert calibration.negative_mean == pytest.approx(0.0 - 0.5 * 0.1 / 3)


def test_a_control_that_only_blurs_the_trait_is_not_used() -> None:
    """When the control moves with the trait itself, any weight > 0 hurts; ties keep 0."""
    positive = Contrasts(own=[1.0, 1.1, 0.9], control=[1.0, 1.1, 0.9])
    negative = Contrasts(own=[0.0, 0.1, -0.1], control=[0.0, 0.1, -0.1])
    others = Contrasts(own=[0.0, 0.2, 0.1], control=[0.0, 0.2, 0.1])
    assert fit_calibration(positive, negative, others).control_weight == 0.0
    assert 0.0 in CONTROL_WEIGHTS and 1.0 in CONTROL_WEIGHTS


def test_examples_that_never_separate_are_refused() -> None:
    same = Contrasts([0.1, 0.2], [0.0, 0.0])
    with pytest.raises(ValueError, match="do not score above"):
        fit_calibration(same, Contrasts([0.3, 0.4], [0.0, 0.0]))
    with pytest.raises(ValueError, match="must exceed"):
        Calibration.from_means(0.1, 0.1)
