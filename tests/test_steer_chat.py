"""Multi-vector steering specs, ``steer``/``chat``/``perplexity`` commands, ChatSession, perplexity.

Real models only: SmolLM2 with seeded random (synthetic) vectors for the plumbing, a tiny random
llama for the perplexity arithmetic.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from personavec.cli import app
from personavec.cli.steer import register
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting, parse_steer_spec
from personavec.core.steering import Intervention, steer
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.engines.answering import answer_chats
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError, SteeringError
from personavec.interfaces.chat import ChatSession
from personavec.metrics.perplexity import perplexity

register(app)
register(app)  # idempotent
runner = CliRunner()
GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)


def make_vector(
    lm: LoadedModel, path: Path, *, seed: int, layer: int, coef: float, trait: str = "synthetic"
) -> Path:
    """Seeded random rows ``[n_layers + 1, hidden]`` in a PersonaVector (plumbing, not science)."""
    n = lm.n_layers
    rows = torch.randn(n + 1, lm.hidden_size, generator=torch.Generator().manual_seed(seed))
    meta = VectorMetadata(
        trait=trait,
        model_id=lm.model_id,
        model_fingerprint=config_fingerprint(lm.model.config),
        hidden_size=lm.hidden_size,
        n_layers=n,
        readouts=["response_avg"],
        recommended_layer=layer,
        recommended_coef=coef,
    )
    return PersonaVector({"response_avg": rows}, meta, torch.full((n + 1,), 50.0)).save(path)


@pytest.fixture(scope="module")
def vectors(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("steer_vectors")
    a = make_vector(smollm2, root / "alpha.safetensors", seed=1, layer=10, coef=4.0, trait="a")
    b = make_vector(smollm2, root / "beta.safetensors", seed=2, layer=20, coef=-3.0, trait="b")
    return a, b


# ---- spec parsing ------------------------------------------------------------------------------


def build_requests(specs: list[str], lm: LoadedModel) -> list[SteeringSetting]:
    """Parse every spec and check it fits ``lm`` (what the commands do)."""
    settings = [parse_steer_spec(spec) for spec in specs]
    for setting in settings:
        setting.check_compatible(lm.model)
    return settings


def spec_vector(path: Path) -> Path:
    """A small vector file with 30 layers, recommended layer 12 and coefficient 2."""
    rows = torch.randn(31, 8, generator=torch.Generator().manual_seed(3))
    meta = VectorMetadata(
        trait="spec",
        model_id="tiny",
        model_fingerprint="x",
        hidden_size=8,
        n_layers=30,
        readouts=["response_avg"],
        recommended_layer=12,
        recommended_coef=2.0,
    )
    return PersonaVector({"response_avg": rows}, meta, torch.full((31,), 10.0)).save(path)


def test_parse_spec_good(tmp_path: Path) -> None:
    v = spec_vector(tmp_path / "v.safetensors")
    plain = parse_steer_spec(str(v))
    assert (plain.layers, plain.coef, plain.positions, plain.op) == ((12,), 2.0, "all", "add")
    assert parse_steer_spec(f"{v}:12").layers == (12,)
    full = parse_steer_spec(f" {v}:8-10:-2.5:response:add ")
    assert (full.layers, full.coef, full.positions, full.op) == (
        (8, 9, 10),
        -2.5,
        "response",
        "add",
    )
    kept = parse_steer_spec(f"{v}::4")
    assert (kept.layers, kept.coef) == ((12,), 4.0)
    assert parse_steer_spec(f"{v}:12,8::prompt").layers == (8, 12)
    ablate = parse_steer_spec(f"{v}::::ablate")
    assert (ablate.layers, ablate.positions, ablate.op) == ((12,), "all", "ablate")  # file default
    # A file whose name holds ':' is kept whole when it exists.
    odd = spec_vector(tmp_path / "a:b.safetensors")
    parsed = parse_steer_spec(f"{odd}:3:1")
    assert (parsed.vector.path, parsed.layers, parsed.coef) == (odd, (3,), 1.0)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "empty"),
        (":12", "names no vector"),
        ("v.safetensors:x", "cannot read layers"),
        ("v.safetensors:9-3", "cannot read layers"),
        ("v.safetensors:8,,9", "cannot read layers"),
        ("v.safetensors:12:abc", "cannot read coefficient"),
        ("v.safetensors:12:nan", "not a finite"),
        ("v.safetensors:12:1:middle", "unknown positions"),
        ("v.safetensors:12:1:all:scale", "unknown operator"),
        ("v.safetensors:1:2:all:add:more", "too many"),
    ],
)
def test_parse_spec_bad(spec: str, words: str) -> None:
    with pytest.raises(SteeringError) as info:
        parse_steer_spec(spec)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_build_fills_defaults_and_checks(smollm2: LoadedModel, vectors: tuple[Path, Path]) -> None:
    a, b = vectors
    first, second = build_requests([str(a), f"{b}:5:1.5:prompt"], smollm2)
    assert (first.layers, first.coef, first.positions, first.op) == ((10,), 4.0, "all", "add")
    assert (second.layers, second.coef, second.positions) == ((5,), 1.5, "prompt")
    with pytest.raises(PersonavecError, match="not found"):
        build_requests(["missing.safetensors"], smollm2)
    with pytest.raises(PersonavecError, match=r"out of range|layer"):
        build_requests([f"{a}:99"], smollm2)


# ---- batched, multi-vector generation ----------------------------------------------------------

PROMPTS = ["Hi!", "Tell me about the sea in one sentence.", "What is two plus two?"]


def test_two_vectors_equal_combined_by_hand(
    smollm2: LoadedModel, vectors: tuple[Path, Path]
) -> None:
    a, b = vectors
    requests = build_requests([f"{a}:10:4", f"{b}:20:-3:response"], smollm2)
    chats = [chat_messages(p) for p in PROMPTS[:2]]
    got = answer_chats(smollm2, chats, GREEDY, requests)

    by_hand = (
        SteeringSetting(PersonaVector.load(a), (10,), 4.0).interventions()
        + SteeringSetting(PersonaVector.load(b), (20,), -3.0, positions="response").interventions()
    )
    with steer(smollm2.model, by_hand):
        gens = HFEngine(smollm2).generate([GenerationRequest(c) for c in chats], GREEDY)
    assert got == [g.response_text.strip() for g in gens]
    # Both vectors act: the pair differs from either alone and from no steering.
    only_a = answer_chats(smollm2, chats, GREEDY, requests[:1])
    only_b = answer_chats(smollm2, chats, GREEDY, requests[1:])
    plain = answer_chats(smollm2, chats, GREEDY)
    assert got != only_a and got != only_b and got != plain


def test_batched_prompts_equal_one_by_one(smollm2: LoadedModel, vectors: tuple[Path, Path]) -> None:
    a, b = vectors
    requests = build_requests([f"{a}:10:3:response", f"{b}:15:2:all"], smollm2)
    chats = [chat_messages(p, system="Be brief.") for p in PROMPTS]
    batched = answer_chats(smollm2, chats, GREEDY, requests)
    alone = [answer_chats(smollm2, [c], GREEDY, requests)[0] for c in chats]
    assert batched == alone


# ---- steer command -----------------------------------------------------------------------------


def test_steer_command_writes_rows(
    smollm2: LoadedModel, vectors: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = vectors
    prompts = tmp_path / "prompts.jsonl"
    history = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "Name a colour."},
    ]
    prompts.write_text(
        json.dumps({"prompt": PROMPTS[1]}) + "\n\n" + json.dumps({"messages": history}) + "\n"
    )
    out = tmp_path / "out" / "answers.jsonl"
    specs = [f"{a}:10:4", f"{b}:20:-3:response"]
    args = ["steer", "-q", PROMPTS[0], "--prompts", str(prompts), "--system", "Be brief."]
    args += ["--steer", specs[0], "--steer", specs[1], "--compare", "--out", str(out)]
    args += ["--max-new-tokens", "8", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [PROMPTS[0], PROMPTS[1], "Name a colour."]
    assert rows[2]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert rows[2]["messages"][1:] == history
    requests = build_requests(specs, smollm2)
    chats = [r["messages"] for r in rows]
    # Expected answers without the chat layer: the interventions by hand on the engine.
    vec_a, vec_b = PersonaVector.load(a), PersonaVector.load(b)
    by_hand = [
        Intervention(10, vec_a.at(10).float(), 4.0),
        Intervention(20, vec_b.at(20).float(), -3.0, positions="response"),
    ]
    engine, plain_requests = HFEngine(smollm2), [GenerationRequest(c) for c in chats]
    with steer(smollm2.model, by_hand):
        steered = [g.response_text.strip() for g in engine.generate(plain_requests, GREEDY)]
    unsteered = [g.response_text.strip() for g in engine.generate(plain_requests, GREEDY)]
    assert [r["steered"] for r in rows] == steered != unsteered
    assert [r["unsteered"] for r in rows] == unsteered
    assert rows[0]["steering"] == [r.describe() for r in requests]
    # a text file: one prompt a line
    plain = tmp_path / "prompts.txt"
    plain.write_text("Hi!\n\nWhat is two plus two?\n")
    result = runner.invoke(
        app, ["steer", "--prompts", str(plain), "-s", str(a), "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("steered:") == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["steer", "-q", "hi"], "at least one --steer"),
        (["steer", "-s", "{a}:x", "-q", "hi"], "cannot read layers"),
        (["steer", "-s", "missing.safetensors", "-q", "hi"], "vector file not found"),
        (["steer", "-s", "{a}"], "nothing to answer"),
        (["steer", "-s", "{a}", "--prompts", "nope.txt"], "not found"),
        (["steer", "-s", "{a}", "-q", "hi", "--temperature", "-1"], "temperature"),
        (["perplexity", "nope.txt"], "not found"),
        (["perplexity", "nope.txt", "-s", "{a}:1:2:3"], "unknown positions"),
        (["chat", "-s", "{a}:1:z"], "cannot read coefficient"),
        (["chat", "-s", "missing.safetensors"], "vector file not found"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(
    args: list[str], words: str, vectors: tuple[Path, Path]
) -> None:
    result = runner.invoke(app, [arg.replace("{a}", str(vectors[0])) for arg in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.output


def test_bad_prompt_rows(tmp_path: Path, vectors: tuple[Path, Path]) -> None:
    vector = str(vectors[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    result = runner.invoke(app, ["steer", "-s", vector, "--prompts", str(bad)])
    assert result.exit_code == 2 and "end with a user message" in result.output
    bad.write_text("{not json\n")
    result = runner.invoke(app, ["steer", "-s", vector, "--prompts", str(bad)])
    assert result.exit_code == 2 and "not valid JSON" in result.output


# ---- chat --------------------------------------------------------------------------------------


def test_chat_session_history_and_commands(
    smollm2: LoadedModel, vectors: tuple[Path, Path]
) -> None:
    a, b = vectors
    session = ChatSession(smollm2, GREEDY, system="Be brief.")
    assert session.add(f"{a}:10:4") == "alpha"
    assert session.add(str(a)) == "alpha-2"
    session.command("/off alpha-2")
    first = session.send("Hello!")
    expected = answer_chats(
        smollm2, [chat_messages("Hello!", "Be brief.")], GREEDY, list(session.steering.values())
    )
    assert first == expected[0]
    session.command("/coef alpha 2")
    session.command(f"/steer {b}:20:-3")
    assert session.steering["alpha"].coef == 2.0 and set(session.steering) == {"alpha", "beta"}
    session.command("/layer alpha 8-9")
    assert session.steering["alpha"].layers == (8, 9)
    second = session.send("And then?")
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And then?"},
    ]
    requests = list(session.steering.values())
    assert second == answer_chats(smollm2, [history], GREEDY, requests, ids=["turn-1"])[0]
    assert len(session.history) == 4
    for bad in ("/coef nobody 1", "/coef alpha x", "/layer alpha 99", "/frobnicate", "/off"):
        with pytest.raises(PersonavecError):
            session.command(bad)
    assert session.steering["alpha"].layers == (8, 9)  # a rejected change leaves it as it was
    assert "alpha" in session.command("/list").text
    session.command("/reset")
    assert session.history == [] and session.command("/quit").quit


def test_chat_cli_piped(vectors: tuple[Path, Path]) -> None:
    a, b = vectors
    script = (
        "from personavec.cli import app; from personavec.cli.steer import register; "
        "register(app); app()"
    )
    env = {**os.environ, "COLUMNS": "300"}
    threads = os.environ.get("PERSONAVEC_TEST_THREADS")
    if threads:
        env["OMP_NUM_THREADS"] = threads
    lines = [
        "hello",
        "/coef alpha 2",
        "/steer " + f"{b}:20:-3",
        "/list",
        "/bogus",
        "hi",
        "/off beta",
        "/system You are a pirate.",
        "/reset",
        "/help",
        "/quit",
        "never sent",
    ]
    command = [sys.executable, "-c", script, "chat", "--steer", f"{a}:10:4"]
    result = subprocess.run(
        [*command, "--max-new-tokens", "6", "--device", "cpu"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("assistant:") == 2
    assert "alpha: steering 'a' at layer 10 with raw coef 2" in out
    assert "beta: steering 'b' at layer 20 with raw coef -3" in out
    assert "unknown command '/bogus'" in out
    assert "beta: off" in out and "conversation cleared" in out and "/coef NAME VALUE" in out
    assert "bye" in out


# ---- perplexity --------------------------------------------------------------------------------

TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the dog slept on."


def _hand_perplexity(lm: LoadedModel, text: str) -> float:
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    nll = -logprobs.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
    return math.exp(float(nll.mean()))


def test_perplexity_matches_hand_and_steering(
    tiny_model_factory: Callable[..., LoadedModel], tmp_path: Path
) -> None:
    lm = tiny_model_factory("llama")
    n_tokens = len(lm.tokenizer(TEXT)["input_ids"])
    base = perplexity(lm, TEXT, window=512)
    assert base.n_tokens == n_tokens - 1
    assert base.perplexity == pytest.approx(_hand_perplexity(lm, TEXT), rel=1e-5)
    file = tmp_path / "text.txt"
    file.write_text(TEXT, encoding="utf-8")
    assert perplexity(lm, file).mean_nll == pytest.approx(base.mean_nll, rel=1e-6)
    # A sliding window scores every token once, with less context than the full pass.
    slid = perplexity(lm, TEXT, window=6, stride=3)
    assert slid.n_tokens == n_tokens - 1 and math.isfinite(slid.perplexity)
    assert slid.mean_nll != pytest.approx(base.mean_nll, rel=1e-6)
    assert perplexity(lm, TEXT, window=6, stride=6).n_tokens == n_tokens - 1

    vec = make_vector(lm, tmp_path / "tiny.safetensors", seed=3, layer=1, coef=20.0)
    pv = PersonaVector.load(vec)
    with steer(lm.model, SteeringSetting(pv, (1,), 20.0).interventions()):
        steered = perplexity(lm, TEXT)
        assert steered.perplexity == pytest.approx(_hand_perplexity(lm, TEXT), rel=1e-5)
    assert abs(steered.mean_nll - base.mean_nll) > 1e-3
    assert perplexity(lm, TEXT).mean_nll == base.mean_nll  # restored after the context
    requests = build_requests([f"{vec}:1:20"], lm)
    assert perplexity(lm, TEXT, steering=requests).mean_nll == pytest.approx(steered.mean_nll)
    assert perplexity(lm, TEXT).mean_nll == base.mean_nll
    for window, stride in ((1, None), (8, 9), (8, 0)):
        with pytest.raises(PersonavecError):
            perplexity(lm, TEXT, window=window, stride=stride)
    with pytest.raises(PersonavecError, match="fewer than 2"):
        perplexity(lm, "")
    with pytest.raises(PersonavecError, match="not found"):
        perplexity(lm, tmp_path / "missing.txt")


def test_perplexity_command(vectors: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = vectors
    file = tmp_path / "text.txt"
    file.write_text(TEXT, encoding="utf-8")
    result = runner.invoke(
        app, ["perplexity", str(file), "--steer", f"{a}:10:4", "--window", "16", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "unsteered: perplexity" in result.output
    assert "steered:   perplexity" in result.output and "change:" in result.output


def test_generate_checks_arguments_before_loading_the_model(tmp_path: Path) -> None:
    # The model spec is bad too: the vector error must come first (no model load was attempted).
    missing = tmp_path / "missing.safetensors"
    args = ["generate", "hi", "--model", "missing.gguf", "--vector", str(missing)]
    outcome = runner.invoke(app, args)
    assert outcome.exit_code == 2 and "vector file not found" in outcome.output
    v = spec_vector(tmp_path / "v.safetensors")
    for extra, words in [
        (["--coef", "1e30"], "typical residual norm"),
        (["--layer", "8-"], "cannot read layers"),
        (["--op", "cap"], "threshold"),
    ]:
        outcome = runner.invoke(
            app, ["generate", "hi", "--model", "missing.gguf", "--vector", str(v), *extra]
        )
        assert outcome.exit_code == 2 and words in outcome.output, outcome.output


def test_markup_in_vector_metadata_is_printed_verbatim(
    smollm2: LoadedModel, tmp_path: Path
) -> None:
    path = make_vector(smollm2, tmp_path / "odd.safetensors", seed=5, layer=10, coef=2.0,
                       trait="evil[/]")  # fmt: skip
    outcome = runner.invoke(
        app, ["generate", "[bold]hi[/]", "--vector", str(path), "--max-new-tokens", "2"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "steering 'evil[/]' at layer 10" in outcome.output
    assert "[bold]hi[/]" in outcome.output
