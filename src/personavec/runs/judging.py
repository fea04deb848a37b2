"""Judge many (question, answer) items with a progress stage per judge, through the cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from personavec.judges.base import Judge, JudgeItem
from personavec.judges.cache import CachedJudge, JudgmentCache
from personavec.progress import stage

Scores = list[float | None]


def judge_items(
    items: Sequence[JudgeItem],
    judges: Mapping[str, Judge],
    cache_path: Path,
    *,
    show_progress: bool = True,
    chunk_size: int = 32,
) -> dict[str, Scores]:
    """Scores 0-100 (``None`` where a judge cannot say) of every item, by judge name.

    Args:
        items: The (question, answer) pairs, in the order the scores come back.
        judges: Name → judge, e.g. ``{"trait": ..., "coherence": ...}``; the name labels the
            progress stage (``judging trait``) and keys the result.
        cache_path: The SQLite judgment cache (e.g. ``run_dir/judgments.sqlite``); verdicts
            found there are reused, new ones are stored a chunk at a time.
        show_progress: Show a progress stage per judge (counted in distinct items).
        chunk_size: Items per judge call and per cache transaction.
    """
    results: dict[str, Scores] = {}
    with JudgmentCache(cache_path) as cache:
        for name, judge in judges.items():
            found = cache.get_many(judge.identity, judge.aspect, items)
            to_score = len({item for i, item in enumerate(items) if i not in found})
            total = len(found) + to_score
            with stage(
                f"judging {name}", total, enabled=show_progress, start=len(found)
            ) as advance:
                done = len(found)

                def report(n: int) -> None:
                    nonlocal done
                    done += n
                    advance(done)

                scorer = CachedJudge(judge, cache, chunk_size=chunk_size, on_chunk=report)
                results[name] = scorer.score(items)
    return results
