"""Benchmark the vLLM engine against the HF engine on SmolLM2 and print JSON (one run, ratios).

Run it in the vLLM venv, alone on the machine (``make install-vllm`` first)::

    flock /tmp/coord/heavy.lock .venv-vllm/bin/python benchmarks/bench_vllm.py --tokens 64

Measured in one process, greedy, the same prompts (bench_core's questions), the prefix cache
emptied before every timed call so that no phase reuses another's prompt KV:

* tokens/s of the HF engine and of vLLM at batch 1, 8 and 16 (all requests submitted at once);
* inside vLLM at batch 16: steered / plain and monitored / plain (two vectors at two layers)
  tokens/s — a small coefficient keeps the answers' lengths equal, so the ratio is the hooks'
  cost;
* K = 16 distinct settings in one batch (one coefficient per request) / one shared setting;
* time to the first token of one request (``max_new_tokens = 1``), HF and vLLM.

Each phase runs ``--repeats`` times interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM otherwise takes most of RAM
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from bench_core import QUESTIONS  # the same prompts as bench_core

from fixtures import synthetic_vector
from personavec.core.models import chat_messages, load_model
from personavec.core.setting import SteeringSetting
from personavec.core.vector import config_fingerprint
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.engines.vllm_engine import RequestControls, VLLMEngine, controls_for
from personavec.monitor.specs import MonitorSpec


def timed(phases: dict[str, Callable[[], list[int]]], repeats: int) -> dict[str, tuple[float, int]]:
    """Per phase: median seconds of ``run()`` (which returns generated token counts) and its
    tokens, the phases interleaved round by round."""
    seconds: dict[str, list[float]] = {name: [] for name in phases}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, run in phases.items():
            start = time.perf_counter()
            tokens[name] = sum(run())
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), tokens[name]) for name in phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model("smollm2", device="cpu")
    vector = synthetic_vector(
        n_layers=30, hidden=576, seed=0, model_id=loaded.model_id,
        fingerprint=config_fingerprint(loaded.model.config), typical_norm=50.0,
    )  # fmt: skip
    start = time.perf_counter()
    engine = VLLMEngine(loaded)
    startup = time.perf_counter() - start
    runtime = engine.runtime
    config = SamplingConfig(max_new_tokens=args.tokens, temperature=0.0, batch_size=16)
    requests = [GenerationRequest(chat_messages(q)) for q in (QUESTIONS * 2)[:16]]

    def counts(generations: list[Any]) -> list[int]:
        return [len(g.response_token_ids) + (g.finish_reason == "stop") for g in generations]

    def hf(n: int, cfg: SamplingConfig = config) -> list[int]:
        return counts(HFEngine(loaded).generate(requests[:n], cfg))

    def vllm(n: int, controls: list[RequestControls] | None = None,
             cfg: SamplingConfig = config) -> list[int]:  # fmt: skip
        runtime.engine.reset_prefix_cache()
        chosen = controls or [RequestControls()] * n
        return counts([r.generation for r in engine.run(requests[:n], cfg, chosen)])

    setting = SteeringSetting.from_vector(vector, 15, 0.05, "raw", "all")
    steered = [controls_for([setting])] * 16
    specs = (MonitorSpec("a", 12, vector.at(12)), MonitorSpec("b", 20, vector.at(20)))
    monitored = [RequestControls(monitor=specs)] * 16
    distinct = [
        controls_for([SteeringSetting.from_vector(vector, 15, 0.05 + 0.001 * k, "raw", "all")])
        for k in range(16)
    ]
    vllm(16)  # warm-up
    hf(2)
    phases: dict[str, Callable[[], list[int]]] = {
        **{f"hf_b{n}": (lambda n=n: hf(n)) for n in (1, 8, 16)},
        **{f"vllm_b{n}": (lambda n=n: vllm(n)) for n in (1, 8, 16)},
        "vllm_steered_b16": lambda: vllm(16, steered),
        "vllm_monitored_b16": lambda: vllm(16, monitored),
        "vllm_16_settings_b16": lambda: vllm(16, distinct),
    }
    first = SamplingConfig(max_new_tokens=1, temperature=0.0)
    phases["ttft_hf"] = lambda: hf(1, first)
    phases["ttft_vllm"] = lambda: vllm(1, None, first)
    results = timed(phases, args.repeats)
    ttft_hf, ttft_vllm = results.pop("ttft_hf")[0], results.pop("ttft_vllm")[0]
    rate = {name: tokens / seconds for name, (seconds, tokens) in results.items()}

    def ratio(a: str, b: str, digits: int = 3) -> float:
        return round(rate[a] / rate[b], digits)

    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "vllm_startup_s": round(startup, 1),
        "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "vllm_over_hf": {f"b{n}": ratio(f"vllm_b{n}", f"hf_b{n}", 2) for n in (1, 8, 16)},
        "steered_over_plain_b16": ratio("vllm_steered_b16", "vllm_b16"),
        "monitored_over_plain_b16": ratio("vllm_monitored_b16", "vllm_b16"),
        "16_settings_over_1_setting": ratio("vllm_16_settings_b16", "vllm_steered_b16"),
        "ttft_s": {"hf": round(ttft_hf, 3), "vllm": round(ttft_vllm, 3)},
        "tokens": args.tokens,
        "repeats": args.repeats,
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
