"""Data screening with persona vectors: the projection difference ΔP per sample and dataset.

Public entry points: :func:`personavec.screening.api.screen` with
:class:`personavec.screening.run.ScreenConfig`; the per-batch scorer
:func:`personavec.screening.score.score_batch`; thresholds and filtering in
:mod:`personavec.screening.filtering`; the Ray engine (a pool of model actors, resumable like
the in-process one) in :mod:`personavec.screening.ray_engine`.
"""
