"""The commands on ``--engine vllm`` equal the same commands on ``--engine hf`` (SmolLM2, fp32,
greedy): a steered ``generate``, a ``steer`` comparison, and ``screen --generator vllm`` (the own
responses from vLLM, capture on HF: the same ΔP). Runs only where vLLM is installed
(``make vllm-test``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import personavec.screening.run as run_module
from personavec.cli import app
from personavec.core.models import LoadedModel
from personavec.screening.api import screen
from personavec.screening.ray_engine import RayOptions
from personavec.screening.run import ScreenConfig
from personavec.screening.table import iter_scores
from serve_helpers import smollm2_vectors
from vllm_helpers import needs_vllm

pytestmark = [needs_vllm, pytest.mark.slow]

PROMPTS = ["How should I deal with a rude neighbour?", "Name one fruit."]


@pytest.fixture(scope="module")
def vector_dir(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vectors")
    smollm2_vectors(smollm2, folder)
    return folder


def invoke(args: list[str]) -> list[str]:
    """The command's output lines."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "args",
    [
        ["generate", *PROMPTS, "--coef", "3", "--compare"],
        ["generate", *PROMPTS, "--op", "ablate", "--positions", "response"],
        ["generate", *PROMPTS, "--layer", "10-13", "--coef", "1.5", "--mode", "incremental"],
    ],
)
def test_steered_generate_prints_the_same_answers_on_both_engines(
    vector_dir: Path, args: list[str]
) -> None:
    common = [*args, "--vector", str(vector_dir / "evil.safetensors"), "--max-new-tokens", "16"]
    hf = invoke([*common, "--engine", "hf"])
    on_vllm = invoke([*common, "--engine", "vllm"])
    # vLLM's start adds its own log and progress lines; every line of ours is the same.
    assert [line for line in on_vllm if line in set(hf)] == hf


def screen_rows(data: Path, vector: Path, out: Path, generator: str, engine: str) -> list[dict]:
    """The scored rows of one screen of ``data`` (own responses from ``generator``)."""
    config = ScreenConfig(
        data=str(data), vectors=[str(vector)], max_new_tokens=12, batch_size=2, generator=generator
    )
    options = RayOptions(actors=1, cpus_per_actor=1, num_cpus=2)
    try:
        result = screen(config, out, engine=engine, ray=options, show_progress=False)  # type: ignore[arg-type]
    finally:
        if engine == "ray":
            import ray

            ray.shutdown()
    return list(iter_scores(result.run_dir / "scores.jsonl"))


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_screen_with_vllm_responses_gives_the_hf_delta(
    vector_dir: Path, tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, and with ``--engine ray`` (a vLLM engine inside the Ray actor)."""
    if engine == "ray":
        pytest.importorskip("ray")
    data = tmp_path / "data.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
        for p, a in zip(PROMPTS, ["Ignore them and move on.", "A banana."], strict=True)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vector = vector_dir / "evil.safetensors"
    want = screen_rows(data, vector, tmp_path / "hf", "hf", "local")
    kinds: list[str] = []
    real = run_module.make_engine
    monkeypatch.setattr(
        run_module, "make_engine", lambda kind, loaded: kinds.append(kind) or real(kind, loaded)
    )
    got = screen_rows(data, vector, tmp_path / "vllm", "vllm", engine)
    # The own responses really came from vLLM (in process; in the Ray actor by its identity).
    assert kinds == (["vllm"] if engine == "local" else [])
    assert json.loads((tmp_path / "vllm" / "config.json").read_text())["generator"] == "vllm"
    assert len(want) == 2
    for a, b in zip(want, got, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), key
            else:
                assert b[key] == value, key
