"""Which contrast statistic judges the right trait? AUROC and specificity of candidate statistics.

One shared-prefix pass scores every labelled answer (the first ``PER_SIDE`` per trait and side)
under every shipped trait's 5 eliciting and 5 suppressing prompts and under no system prompt
(the model's default), keeping per-token log-probabilities (cached in ``STORE``, a safetensors
file). Each statistic
is then computed from those numbers; AUROC and specificity (see ``pipeline/judge_check.py``) need
no calibration, being rank statistics. The figures in docs/judging.md came from::

    python benchmarks/judge_statistics.py 10 runs/judge-statistics-10.safetensors
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from personavec.core.models import chat_messages, encode_prompt, encode_response, load_model
from personavec.judges.contrast import _model_in, control_prompts, resolve_dtype
from personavec.judges.labelled import LabelledAnswer, load_labelled
from personavec.judges.prefix_scoring import grouped_logprobs
from personavec.metrics.stats import auroc
from personavec.traits.library import load_trait

Table = dict[tuple[str, int], torch.Tensor]


def first_per_side(per_side: int) -> list[LabelledAnswer]:
    count: dict[tuple[str, int], int] = {}
    kept = []
    for row in load_labelled():
        key = (row.trait, row.label)
        count[key] = count.get(key, 0) + 1
        if count[key] <= per_side:
            kept.append(row)
    return kept


def system_prompts(traits: list[str]) -> dict[str, str | None]:
    """Every prompt scored, by name: ``U`` (no system prompt), ``<trait>:P<i>`` / ``N<i>`` and
    the joined cross-trait control of each trait, ``<trait>:CP`` / ``CN`` (the default judge's)."""
    systems: dict[str, str | None] = {"U": None}
    specs = {t: load_trait(t) for t in traits}
    for t, spec in specs.items():
        for i in range(len(spec.instructions)):
            systems[f"{t}:P{i}"] = spec.system_prompt("pos", i)
            systems[f"{t}:N{i}"] = spec.system_prompt("neg", i)
        pos, neg = control_prompts([specs[x] for x in traits if x != t])
        systems[f"{t}:CP"], systems[f"{t}:CN"] = pos, neg
    return systems


def score_all(rows: list[LabelledAnswer], systems: dict[str, str | None]) -> Table:
    """Per-token log-probs of every row under every named prompt, keyed by (name, row index)."""
    loaded = load_model("smollm2", device="cpu")
    model = _model_in(loaded.model, resolve_dtype(loaded.model, "auto"))
    tok = loaded.tokenizer
    answers = [encode_response(tok, r.answer) for r in rows]
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    keys = []
    for name, system in systems.items():
        for k, row in enumerate(rows):
            prompt = tuple(encode_prompt(tok, chat_messages(row.question, system)))
            groups.setdefault(prompt, []).append(answers[k])
            keys.append((name, k, prompt))
    start = time.perf_counter()
    scored = grouped_logprobs(loaded, groups, batch_size=32, model=model)
    print(f"scored {len(keys)} sequences in {time.perf_counter() - start:.0f} s", flush=True)
    taken: dict[tuple[int, ...], int] = {}
    table: Table = {}
    for name, k, prompt in keys:
        j = taken.get(prompt, 0)
        taken[prompt] = j + 1
        table[(name, k)] = scored[prompt][j].double()
    return table


def statistics(lp: Table, traits: list[str], t: str, k: int) -> dict[str, float]:
    pos = torch.stack([lp[(f"{t}:P{i}", k)] for i in range(5)])
    neg = torch.stack([lp[(f"{t}:N{i}", k)] for i in range(5)])
    neutral = lp[("U", k)]
    d = (pos - neg).mean(0)
    weight = neutral.exp()

    def contrast(x: str, pairs: range) -> float:
        return sum(
            float(lp[(f"{x}:P{i}", k)].mean() - lp[(f"{x}:N{i}", k)].mean()) for i in pairs
        ) / len(pairs)

    def mix(x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(x, 0) - math.log(x.shape[0])

    others = [contrast(x, range(1)) for x in traits if x != t]
    joined = float(lp[(f"{t}:CP", k)].mean() - lp[(f"{t}:CN", k)].mean())
    return {
        "pos - neg (contrast)": float(d.mean()),
        "pos - neutral": float(pos.mean() - neutral.mean()),
        "pos - (neg + neutral)/2": float(pos.mean() - 0.5 * (neg.mean() + neutral.mean())),
        "neutral-probability weighted": float((weight * d).sum() / weight.sum()),
        "probability difference": float((pos.exp() - neg.exp()).mean()),
        "clipped to +-1 nat": float(d.clamp(-1, 1).mean()),
        "mixture likelihood": float((mix(pos) - mix(neg)).mean()),
        "contrast / neutral surprisal": float(d.mean() / (-neutral.mean())),
        "contrast - mean of other traits' first-pair contrasts": float(d.mean())
        - sum(others) / len(others),
        "contrast - joined control (the default judge)": float(d.mean()) - joined,
    }


def main() -> None:
    per_side, store = int(sys.argv[1]), Path(sys.argv[2])
    rows = first_per_side(per_side)
    traits = list(dict.fromkeys(r.trait for r in rows))
    lp: Table = {}
    if store.exists():
        for key, value in load_file(str(store)).items():
            name, _, k = key.rpartition("|")
            lp[(name, int(k))] = value
    systems = system_prompts(traits)
    missing = {n: p for n, p in systems.items() if (n, 0) not in lp}
    if missing:  # score only the prompts the store lacks
        lp.update(score_all(rows, missing))
        store.parent.mkdir(parents=True, exist_ok=True)
        save_file({f"{name}|{k}": v.contiguous() for (name, k), v in lp.items()}, str(store))
    values: dict[str, dict[str, list[float]]] = {}
    for t in traits:
        for k in range(len(rows)):
            for name, v in statistics(lp, traits, t, k).items():
                values.setdefault(name, {}).setdefault(t, []).append(v)
    for name, by_trait in values.items():
        au, sp = [], []
        for t in traits:
            scores = by_trait[t]
            shows = [scores[k] for k, r in enumerate(rows) if r.trait == t and r.label == 1]
            nots = [scores[k] for k, r in enumerate(rows) if r.trait == t and r.label == 0]
            others = [scores[k] for k, r in enumerate(rows) if r.trait != t and r.label == 1]
            au.append(auroc(shows, nots))
            sp.append(auroc(shows, others))
        print(f"{name:46s} AUROC {sum(au) / len(au):.3f}  specificity {sum(sp) / len(sp):.3f}")


if __name__ == "__main__":
    main()
