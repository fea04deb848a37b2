"""Screening benchmark on SmolLM2: throughput of each mode, Ray vs in-process, flat memory.

Prints one JSON object:

* ``prompt_mode``: samples/s of the last-prompt-token mode (no generation);
* ``full_mode``: samples/s of the full mode (greedy own responses of ``--max-new-tokens``)
  and its time split between generation and capture;
* ``ray``: the full mode on a local Ray with 1 and 2 model actors: ``ratio_end_to_end`` =
  Ray / in-process samples/s including Ray's start-up and the model load in every actor, and
  ``ratio_marginal`` = the same for the ``--ray-extra`` samples of a second, larger run (extra
  samples / extra seconds), where fixed start-up costs cancel (target ≥ 0.8 for 1 actor);
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


def bench_ray(loaded: Any, work: Path, args: argparse.Namespace, local_wall: float) -> dict:
    """Ray with 1 and 2 actors on the full-mode data, end to end and at the margin.

    End to end includes starting Ray and loading the model in every actor. The marginal rate
    compares a second, larger run (``--ray-extra`` more samples): extra samples / extra seconds,
    for Ray and for the in-process engine alike, so fixed start-up costs cancel.
    """
    from personavec.screening.ray_engine import RayOptions

    n, extra = args.full_samples, args.ray_extra
    big = write_data(work / "full-big.jsonl", n + extra)
    local_big, _ = run_screen(loaded, big, args.vector, work / "fb", "full", args.max_new_tokens)
    local_margin = extra / (local_big - local_wall)
    result: dict[str, Any] = {"in_process_marginal_samples_per_s": local_margin}
    for actors in (1, 2):
        # The same 2 CPUs as the in-process run: split between the actors.
        options = RayOptions(actors=actors, cpus_per_actor=2 / actors, num_cpus=2)
        walls = []
        for name, data in (("small", work / "full.jsonl"), ("big", big)):
            wall, _ = run_screen(
                loaded,
                data,
                args.vector,
                work / f"r{actors}{name}",
                "full",
                args.max_new_tokens,
                engine="ray",
                ray=options,
            )
            walls.append(wall)
        margin = extra / (walls[1] - walls[0])
        result[f"actors_{actors}"] = {
            "wall_s": walls[0],
            "wall_s_big": walls[1],
            "samples_per_s": n / walls[0],
            "marginal_samples_per_s": margin,
            "ratio_end_to_end": (n / walls[0]) / (n / local_wall),
            "ratio_marginal": margin / local_margin,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vector", required=True, help="A SmolLM2 persona-vector file.")
    parser.add_argument("--full-samples", type=int, default=32)
    parser.add_argument("--prompt-samples", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--ray-extra", type=int, default=64, help="Extra samples of the larger Ray/local run."
    )
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
        out["ray"] = bench_ray(loaded, work, args, wall)
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
