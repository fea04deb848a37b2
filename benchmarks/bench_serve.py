"""Benchmark ``personavec serve`` on 127.0.0.1 and print JSON.

With ``--clients`` concurrent clients (each a bounded loop of ``--rounds`` streaming requests):

* server throughput (generated tokens/s over the whole run) vs the in-process batched engine
  (:meth:`HFEngine.generate`, ``batch_size = clients``) on the same prompts — target ≥ 0.8×;
* steered + monitored requests vs plain requests through the server — target ≥ 0.95×;
* p50 / p95 latency to the first token and between tokens, per setting.

Every phase is greedy with the same ``max_tokens`` and runs ``--repeats`` times interleaved
(plain, steered+monitored, engine, …); the medians are reported. Vectors are seeded random
directions with SmolLM2's shape (what is measured is the plumbing, not a trait).

    python benchmarks/bench_serve.py --clients 8 --rounds 2 --tokens 32
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from bench_core import QUESTIONS  # the same prompts as bench_core

from personavec.core.models import LoadedModel, load_model
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from serve_helpers import running_server, smollm2_vectors  # the tests' vectors and server

EXTRA = {
    "plain": {},
    "steered+monitored": {
        # A small coefficient keeps the answers' lengths equal to the plain ones, so the ratio
        # measures the hooks' cost rather than a change in how many tokens the answers take.
        "steering": [{"vector": "humor", "coef": 0.05}],
        "monitor": ["evil", "humor"],
    },
}


def client_loop(
    url: str, prompts: list[str], tokens: int, extra: dict[str, Any], out: dict[str, list[float]]
) -> None:
    """Send ``prompts`` one after another as streaming chats; record timings."""
    with httpx.Client(timeout=600) as http:
        for prompt in prompts:
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
                **extra,
            }
            start = time.perf_counter()
            stamps = []
            with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    if choice.get("delta", {}).get("content") or choice.get("persona", {}).get(
                        "tokens"
                    ):
                        stamps.append(time.perf_counter())
            out["first"].append(stamps[0] - start)
            out["gaps"] += [b - a for a, b in itertools.pairwise(stamps)]
            out["tokens"].append(len(stamps))


def run_clients(url: str, prompts: list[list[str]], tokens: int, extra: dict[str, Any]) -> dict:
    out: dict[str, list[float]] = {"first": [], "gaps": [], "tokens": []}
    threads = [
        threading.Thread(target=client_loop, args=(url, p, tokens, extra, out)) for p in prompts
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": sum(out["tokens"]),
        "first": out["first"],
        "gaps": out["gaps"],
    }


def run_engine(loaded: LoadedModel, prompts: list[list[str]], tokens: int) -> dict:
    flat = [GenerationRequest([{"role": "user", "content": p}]) for ps in prompts for p in ps]
    config = SamplingConfig(max_new_tokens=tokens, temperature=0, batch_size=len(prompts))
    start = time.perf_counter()
    generations = HFEngine(loaded).generate(flat, config)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(g.response_token_ids) for g in generations)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    loaded = load_model("smollm2")
    pool = [f"{q} (variant {i})" for i in range(args.rounds) for q in QUESTIONS]
    prompts = [pool[c :: args.clients][: args.rounds] for c in range(args.clients)]
    results: dict[str, list[dict]] = {"engine": [], **{name: [] for name in EXTRA}}
    with tempfile.TemporaryDirectory() as folder:
        smollm2_vectors(loaded, Path(folder))
        with running_server(loaded, Path(folder), max_batch=args.clients) as (url, _):
            run_clients(url, prompts[:1], 4, {})  # warm-up
            for _ in range(args.repeats):
                for name, extra in EXTRA.items():
                    results[name].append(run_clients(url, prompts, args.tokens, extra))
                results["engine"].append(run_engine(loaded, prompts, args.tokens))

    def rate(name: str) -> float:
        return statistics.median(r["tokens"] / r["seconds"] for r in results[name])

    report: dict[str, Any] = {
        "clients": args.clients,
        "requests": args.clients * args.rounds,
        "max_tokens": args.tokens,
        "repeats": args.repeats,
        "tokens_per_s": {name: round(rate(name), 1) for name in results},
        "tokens_generated": {name: results[name][0]["tokens"] for name in results},
        "server_vs_engine": round(rate("plain") / rate("engine"), 3),
        "steered_monitored_vs_plain": round(rate("steered+monitored") / rate("plain"), 3),
    }
    for name in EXTRA:
        first = [x for r in results[name] for x in r["first"]]
        gaps = [x for r in results[name] for x in r["gaps"]]
        report[f"latency_ms_{name}"] = {
            "first_token_p50": round(1000 * percentile(first, 50), 1),
            "first_token_p95": round(1000 * percentile(first, 95), 1),
            "per_token_p50": round(1000 * percentile(gaps, 50), 1),
            "per_token_p95": round(1000 * percentile(gaps, 95), 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
