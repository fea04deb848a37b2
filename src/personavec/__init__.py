"""personavec: persona vectors for language models — extract, steer, monitor, guard."""

__version__ = "0.1.0"
