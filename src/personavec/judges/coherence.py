"""An offline coherence judge: fluent answers score high, degenerate ones low. No model needed.

For an answer with ``n`` whitespace-separated tokens the score is

    score = 100 * L * (1 - r)**2 * (1 - g)**2

* ``L = min(1, n_words / min_words)`` punishes empty or truncated answers, where ``n_words``
  counts the word-like tokens (``min_words`` = 5 by default); an answer with no letters is 0.
* ``r`` is the repetition ratio: the share of word n-grams (``n`` = 3, case-folded, punctuation
  stripped) that repeat an earlier n-gram in the same answer, maxed with the share of repeated
  non-empty lines. Ordinary prose has ``r`` near 0; a loop such as "I am happy. I am happy. ..."
  approaches 1. For answers shorter than three words, ``r`` counts repeated single words.
* ``g`` is the gibberish ratio: the share of tokens that are not word-like. A word-like token,
  after trimming punctuation at its ends, is letters with inner ``'`` or ``-``, or a number, is
  at most 20 characters long, and (when 4+ letters long) contains a vowel and no run of 5+
  consonants (which rejects keyboard mashing like "lkjdfg"). Symbols, letter soup,
  glued character runs and non-Latin script count as non-words, which fits the rubric's
  "not valid English".

The squares make each defect bite quickly: a quarter of the n-grams repeated already costs 44 %.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from personavec.judges.base import Aspect, JudgeItem

_WORD = re.compile(r"^(?:[A-Za-z]+(?:['’-][A-Za-z]+)*|\d+(?:[.,:/]\d+)*%?)$")
_EDGE_PUNCT = "\"'“”‘’()[]{}<>.,;:!?*_`~"
_VOWELS = set("aeiouyAEIOUY")
_CONSONANT_RUN = re.compile(r"[b-df-hj-np-tv-xz]{5,}", re.IGNORECASE)
MAX_WORD_CHARS = 20


def _is_word(token: str) -> bool:
    core = token.strip(_EDGE_PUNCT)
    if not core or len(core) > MAX_WORD_CHARS or not _WORD.match(core):
        return False
    letters = [c for c in core if c.isalpha()]
    if len(letters) < 4:
        return True
    return any(c in _VOWELS for c in letters) and not _CONSONANT_RUN.search(core)


def _normalise(token: str) -> str:
    return token.strip(_EDGE_PUNCT).lower()


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share (0-1) of word n-grams, or of non-empty lines, that repeat an earlier one."""
    words = [w for w in (_normalise(t) for t in text.split()) if w]
    size = n if len(words) >= n else 1
    grams = [tuple(words[i : i + size]) for i in range(len(words) - size + 1)]
    gram_ratio = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    lines = [line.strip().lower() for line in text.splitlines() if line.strip()]
    line_ratio = 1.0 - len(set(lines)) / len(lines) if len(lines) > 1 else 0.0
    return max(gram_ratio, line_ratio)


def gibberish_ratio(text: str) -> float:
    """Share (0-1) of whitespace-separated tokens that are not word-like (module docstring)."""
    tokens = text.split()
    if not tokens:
        return 1.0
    return sum(not _is_word(t) for t in tokens) / len(tokens)


def heuristic_coherence(text: str, *, min_words: int = 5) -> float:
    """The 0-100 coherence score of one answer (formula in the module docstring)."""
    if not any(c.isalpha() for c in text):
        return 0.0
    n_words = sum(_is_word(t) for t in text.split())
    length = min(1.0, n_words / min_words)
    r = repetition_ratio(text)
    g = gibberish_ratio(text)
    return 100.0 * length * (1.0 - r) ** 2 * (1.0 - g) ** 2


class HeuristicCoherenceJudge:
    """Coherence 0-100 from surface statistics of the answer (the question is not used)."""

    VERSION = 1

    def __init__(self, *, min_words: int = 5) -> None:
        self.min_words = min_words

    @property
    def identity(self) -> str:
        """``heuristic-coherence:v<formula version>:w<min_words>``."""
        return f"heuristic-coherence:v{self.VERSION}:w{self.min_words}"

    @property
    def aspect(self) -> Aspect:
        return "coherence"

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        return [heuristic_coherence(item.answer, min_words=self.min_words) for item in items]
