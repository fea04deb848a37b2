"""The research studies: each trains or screens models and measures what the paper claims.

* :mod:`.shift_study` (+ :mod:`.shift_study_report`) — ``personavec shift-study``: does the
  finetuning shift along a persona vector predict the finetuned model's trait score?
* :mod:`.prevent_study` (+ :mod:`.prevent_study_report`) — ``personavec prevent-study``:
  preventative steering against post-hoc subtraction, ablation and a projection penalty.
* :mod:`.screen_study` — the validation of data screening (``benchmarks/screen_study.py``).
* :mod:`.common` — what every study shares: the base model's identity, finetunes loaded like it.

This package sits above ``training/``, ``screening/`` and ``pipeline/`` (it uses them; they
never import it) and below ``cli/``. Each study opens its directory with the run primitive
(:mod:`personavec.runs.run`) under its full identity and keys its records by a hash of their
settings (:func:`personavec.runs.rows.record_key`).
"""
