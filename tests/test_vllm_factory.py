"""The engine factory (``--engine hf|vllm``): one-line errors before any model loads, and the HF
path exactly as before (steering hooks around ``HFEngine``). Runs in both venvs; the missing-vLLM
cases only where vLLM is absent."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from fixtures import synthetic_vector
from personavec.cli import app
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting, apply_settings
from personavec.core.vector import config_fingerprint
from personavec.engines.answering import answer_chats
from personavec.engines.factory import check_engine, open_engine
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
without_vllm = pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")
GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0)


def test_unknown_engine_is_one_line() -> None:
    with pytest.raises(PersonavecError, match="unknown engine 'tgi'; use hf or vllm"):
        check_engine("tgi")


@without_vllm
def test_missing_vllm_names_the_install_command() -> None:
    with pytest.raises(PersonavecError, match=r"make install-vllm.*personavec\[vllm\]"):
        check_engine("vllm")


@without_vllm
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "Hi", "--engine", "vllm"],
        ["steer", "-q", "Hi", "--steer", "x", "--engine", "vllm"],
        ["extract", "--trait", "evil", "--engine", "vllm"],
        ["serve", "--engine", "vllm"],
        ["screen", "data.jsonl", "--vector", "x", "--generator", "vllm"],
    ],
)
def test_cli_refuses_vllm_without_it_before_loading(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--model", "/nonexistent"])
    assert result.exit_code != 0
    assert "make install-vllm" in result.output
    assert "nonexistent" not in result.output  # refused before the model (or vector) is read


def test_hf_engine_through_the_factory_equals_hooks_around_hf_engine(
    tiny_model_factory,  # type: ignore[no-untyped-def]
) -> None:
    loaded: LoadedModel = tiny_model_factory("llama", n_layers=2)
    vector = synthetic_vector(
        n_layers=2,
        hidden=64,
        seed=1,
        model_id=loaded.model_id,
        fingerprint=config_fingerprint(loaded.model.config),
    )
    setting = SteeringSetting.from_vector(vector, 1, 3.0, "raw", "response")
    requests = [GenerationRequest(chat_messages("Hello there"))]
    with apply_settings(loaded.model, [setting]):
        want = HFEngine(loaded).generate(requests, GREEDY)
    plain = HFEngine(loaded).generate(requests, GREEDY)
    with open_engine("hf", loaded, setting) as engine:
        got = engine.generate(requests, GREEDY)
    assert got == want and got != plain
    chats = [r.messages for r in requests]
    assert answer_chats(loaded, chats, GREEDY, setting) == [want[0].response_text.strip()]


@without_vllm
def test_screen_needs_vllm_only_when_it_generates() -> None:
    from personavec.screening.run import ScreenConfig

    prompt_only = ScreenConfig(data="d.jsonl", vectors=["v"], mode="prompt", generator="vllm")
    assert prompt_only.generator == "vllm"  # nothing generated: no engine needed
    with pytest.raises(PersonavecError, match="make install-vllm"):
        ScreenConfig(data="d.jsonl", vectors=["v"], generator="vllm")
