"""Screening benchmark on SmolLM2: throughput of each mode, Ray vs in-process, flat memory.

Prints one JSON object:

* ``prompt_mode``: samples/s of the last-prompt-token mode (no generation);
* ``full_mode``: samples/s of the full mode (greedy own responses of ``--max-new-tokens``)
  and its time split between generation and capture;
* ``ray``: wall time and samples/s of the full mode on a local Ray with 1 and 2 model actors,
  and ``ratio_1_actor`` = Ray (1 actor) / in-process samples/s (target ≥ 0.8). Ray's wall time
  includes starting Ray and loading the model in each actor, reported separately as
  ``startup_s`` (the time until the first actor is ready is not separable from the pipeline, so
  the ratio is end-to-end and therefore conservative for small runs);
* ``memory``: peak RSS of a fresh process screening 1k and 10k samples in prompt mode (flat
  means streaming works).

Run: ``python benchmarks/bench_screen.py [--full-samples 32] [--prompt-samples 256]``.
Figures from a shared 2-core machine are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_core import ANSWER, QUESTIONS  # the same prompts and answer as bench_core


def write_data(path: Path, n: int) -> Path:
    with open(path, "w") as handle:
        for i in range(n):
            row = {"id": i, "prompt": QUESTIONS[i % len(QUESTIONS)] + f" ({i})", "response": ANSWER}
            handle.write(json.dumps(row) + "\n")
    return path


def run_screen(
    loaded: Any, data: Path, vector: str, out: Path, mode: str, tokens: int, **kw: Any
) -> tuple[float, Any]:
    from personavec.screening.api import screen
    from personavec.screening.run import ScreenConfig

    config = ScreenConfig(
        data=str(data), vectors=[vector], mode=mode, max_new_tokens=tokens, batch_size=16
    )
    start = time.perf_counter()
    result = screen(config, out, loaded=loaded, show_progress=False, **kw)
    return time.perf_counter() - start, result


def memory_probe(data: Path, vector: str, out: Path, model: str) -> float:
    """Peak RSS (MiB) of a fresh process screening ``data`` in prompt mode."""
    code = (
        "import resource,sys\n"
        "from personavec.screening.api import screen\n"
        "from personavec.screening.run import ScreenConfig\n"
        f"c = ScreenConfig(data={str(data)!r}, vectors=[{vector!r}], model={model!r}, "
        "mode='prompt', batch_size=32)\n"
        f"screen(c, {str(out)!r}, show_progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vector", required=True, help="A SmolLM2 persona-vector file.")
    parser.add_argument("--full-samples", type=int, default=32)
    parser.add_argument("--prompt-samples", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--memory-sizes", default="1000,10000")
    parser.add_argument(
        "--memory-model",
        default="smollm2",
        help="Model for the memory check (a tiny one is quick).",
    )
    parser.add_argument("--memory-vector", default=None, help="Vector for --memory-model.")
    parser.add_argument("--skip", default="", help="Comma list of parts to skip: ray,memory.")
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    from personavec.core.models import load_model
    from personavec.screening.ray_engine import RayOptions

    loaded = load_model("smollm2", device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-screen-"))
    out: dict[str, Any] = {"torch_threads": __import__("torch").get_num_threads()}
    data = write_data(work / "prompt.jsonl", args.prompt_samples)
    wall, _ = run_screen(loaded, data, args.vector, work / "p", "prompt", args.max_new_tokens)
    out["prompt_mode"] = {
        "samples": args.prompt_samples,
        "samples_per_s": args.prompt_samples / wall,
    }
    data = write_data(work / "full.jsonl", args.full_samples)
    wall, result = run_screen(loaded, data, args.vector, work / "f", "full", args.max_new_tokens)
    local_rate = args.full_samples / wall
    out["full_mode"] = {
        "samples": args.full_samples,
        "max_new_tokens": args.max_new_tokens,
        "samples_per_s": local_rate,
        "generation_s": result.timing.generation_s,
        "capture_s": result.timing.capture_s,
        "generation_share": result.timing.generation_s
        / (result.timing.generation_s + result.timing.capture_s),
    }
    if "ray" not in skip:
        ray_out: dict[str, Any] = {}
        for actors in (1, 2):
            # The same 2 CPUs as the in-process run: split between the actors.
            options = RayOptions(actors=actors, cpus_per_actor=2 / actors, num_cpus=2)
            wall, _ = run_screen(
                loaded, data, args.vector, work / f"r{actors}", "full", args.max_new_tokens,
                engine="ray", ray=options,
            )  # fmt: skip
            ray_out[f"actors_{actors}"] = {
                "wall_s": wall,
                "samples_per_s": args.full_samples / wall,
            }
        ray_out["ratio_1_actor"] = ray_out["actors_1"]["samples_per_s"] / local_rate
        ray_out["ratio_2_actors"] = ray_out["actors_2"]["samples_per_s"] / local_rate
        out["ray"] = ray_out
    if "memory" not in skip:
        sizes = [int(s) for s in args.memory_sizes.split(",")]
        memory = {}
        for n in sizes:
            path = write_data(work / f"m{n}.jsonl", n)
            vector = args.memory_vector or args.vector
            memory[f"peak_rss_mb_{n}"] = memory_probe(
                path, vector, work / f"m{n}", args.memory_model
            )
        memory["model"] = args.memory_model
        out["memory"] = memory
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
