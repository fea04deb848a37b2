"""The vLLM engine against the HF engine on the real SmolLM2, fp32 on CPU (vLLM's CPU backend
runs fp32): greedy tokens equal for plain generation, for every operator, position mode and
multi-layer mode, each request alone and all of them in one mixed batch; readings and guards
equal the HF monitor's; the prefix cache never reuses KV across settings; seeded sampling.
vLLM is started once per session (the runtime is shared per checkpoint), so the module costs
one engine start."""

from __future__ import annotations

import pytest
import torch

from fixtures import synthetic_vector
from personavec.core.models import LoadedModel, chat_messages, encode_prompt
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.monitor.monitor import TokenMonitor
from personavec.monitor.specs import ConditionalSteering, MonitorSpec
from vllm_helpers import GREEDY, hf_tokens, needs_vllm

pytestmark = [needs_vllm, pytest.mark.slow]

READING_TOLERANCE = 2e-3
"""Largest |vLLM − HF| of a projection ``h · v̂`` (hidden units; values are O(1–10)): the two
engines run different fp32 kernels, so readings agree to rounding, not bit for bit."""

REQUEST = GenerationRequest(chat_messages("Tell me about your day."))
OTHER = GenerationRequest(
    chat_messages("What is the capital of France?", system="Answer in one word.")
)  # stops early


@pytest.fixture(scope="module")
def engine(smollm2: LoadedModel):  # type: ignore[no-untyped-def]
    from personavec.engines.vllm_engine import VLLMEngine

    return VLLMEngine(smollm2)


@pytest.fixture(scope="module")
def vector(smollm2: LoadedModel) -> PersonaVector:
    return synthetic_vector(
        n_layers=30,
        hidden=576,
        seed=3,
        trait="evil",
        model_id=smollm2.model_id,
        fingerprint=config_fingerprint(smollm2.model.config),
        layer=15,
        typical_norm=50.0,
    )


def settings(vector: PersonaVector) -> dict[str, SteeringSetting]:
    """One setting per operator, position mode and multi-layer mode, plus layers 0 and 30."""
    make = SteeringSetting.from_vector
    return {
        "add-all": make(vector, 15, 4.0, "raw", "all"),
        "add-prompt": make(vector, 15, 4.0, "raw", "prompt"),
        "add-response": make(vector, 15, -4.0, "raw", "response"),
        "ablate": make(vector, 15, None, "raw", "all", op="ablate"),
        "cap": make(vector, 12, None, "raw", "response", op="cap", threshold=-0.5),
        "stack": make(vector, [10, 16], 2.5, "raw", "all"),
        "incremental": make(vector, range(10, 14), 3.0, "raw", "all", mode="incremental"),
        "embeddings": make(vector, 0, 0.05, "raw", "all"),
        "last-layer": make(vector, 30, 3.0, "raw", "response"),
    }


def test_plain_greedy_tokens_and_texts_equal_hf(smollm2: LoadedModel, engine) -> None:  # type: ignore[no-untyped-def]
    got = engine.generate([REQUEST, OTHER], GREEDY)
    want = HFEngine(smollm2).generate([REQUEST, OTHER], GREEDY)
    assert [g.response_token_ids for g in got] == [g.response_token_ids for g in want]
    assert [g.response_text for g in got] == [g.response_text for g in want]
    assert [g.finish_reason for g in got] == [g.finish_reason for g in want]
    assert {g.finish_reason for g in got} == {"stop", "length"}  # both ends are exercised


def test_every_setting_in_one_mixed_batch_equals_hf_alone_and_vllm_alone(
    smollm2: LoadedModel,
    engine,  # type: ignore[no-untyped-def]
    vector: PersonaVector,
) -> None:
    from personavec.engines.vllm_engine import RequestControls, VLLMEngine, controls_for

    cases = settings(vector)
    names = list(cases)
    plain = hf_tokens(smollm2, [REQUEST])[0]
    want = {name: hf_tokens(smollm2, [REQUEST], [cases[name]])[0] for name in names}
    changed = [name for name in names if want[name] != plain]
    assert len(changed) >= len(names) - 2, f"steering changed too little: {changed}"

    requests = [REQUEST] * len(names) + [REQUEST, OTHER]
    controls = [controls_for([cases[n]]) for n in names] + [RequestControls()] * 2
    batch = engine.run(requests, GREEDY, controls)
    for name, result in zip(names, batch, strict=False):
        assert result.generation.response_token_ids == want[name], name
    assert batch[-2].generation.response_token_ids == plain
    assert batch[-1].generation.response_token_ids == hf_tokens(smollm2, [OTHER])[0]
    for name in ("add-prompt", "cap", "incremental"):
        alone = VLLMEngine(smollm2, steering=[cases[name]]).generate([REQUEST], GREEDY)
        assert alone[0].response_token_ids == want[name], name


def test_readings_and_guard_equal_the_hf_monitor(
    smollm2: LoadedModel,
    engine,  # type: ignore[no-untyped-def]
    vector: PersonaVector,
) -> None:
    from personavec.engines.vllm_engine import RequestControls

    steering = SteeringSetting.from_vector(vector, 15, 4.0, "raw", "all")
    specs = (MonitorSpec("at15", 15, vector.at(15)), MonitorSpec("at20", 20, vector.at(20)))
    prompt_len = len(encode_prompt(smollm2.tokenizer, REQUEST.messages))
    with steering.apply(smollm2.model), TokenMonitor(smollm2.model, specs, stop_ids=()) as hf:
        want = HFEngine(smollm2).generate([REQUEST], GREEDY)[0]
    reference = {r.position: r.values for r in hf.readings[0] if r.position >= prompt_len - 1}
    # A guard at layer 20 that fires on about half the generated tokens.
    values20 = sorted(v["at20"] for p, v in reference.items() if p >= prompt_len)
    rule = ConditionalSteering(specs[1], threshold=values20[len(values20) // 2], coef=1.5)
    with (
        steering.apply(smollm2.model),
        TokenMonitor(smollm2.model, specs, conditional=[rule], stop_ids=()) as guarded_hf,
    ):
        want_guarded = HFEngine(smollm2).generate([REQUEST], GREEDY)[0]

    controls = [
        RequestControls(tuple(steering.interventions()), specs),
        RequestControls(tuple(steering.interventions()), specs, (rule,)),
    ]
    got, got_guarded = engine.run([REQUEST, REQUEST], GREEDY, controls)
    assert got.generation.response_token_ids == want.response_token_ids
    readings = {r.position: r.values for r in got.readings}
    assert sorted(readings) == sorted(reference)
    assert readings[prompt_len - 1] and got.readings[0].is_prompt
    worst = max(abs(readings[p][n] - reference[p][n]) for p in reference for n in reference[p])
    assert worst <= READING_TOLERANCE

    assert got_guarded.generation.response_token_ids == want_guarded.response_token_ids
    fired = set(guarded_hf.steered[0])  # prompt and response positions alike
    assert {p for p in fired if p >= prompt_len} and set(got_guarded.guarded) == fired


def test_prefix_cache_never_reuses_kv_across_settings(
    smollm2: LoadedModel,
    engine,  # type: ignore[no-untyped-def]
    vector: PersonaVector,
) -> None:
    from personavec.engines.vllm_engine import RequestControls, controls_for

    system = " ".join(f"Rule {i}: answer kindly and stay on topic." for i in range(40))
    request = GenerationRequest(chat_messages("Name a colour.", system=system))
    steering = SteeringSetting.from_vector(vector, 15, 4.0, "raw", "prompt")
    plain_want = hf_tokens(smollm2, [request])[0]
    steered_want = hf_tokens(smollm2, [request], [steering])[0]
    assert plain_want != steered_want

    def once(controls: RequestControls) -> tuple[list[int], int]:
        result = engine.run([request], GREEDY, [controls])[0]
        return result.generation.response_token_ids, result.cached_tokens

    steered = controls_for([steering])
    first_plain = once(RequestControls())
    first_steered = once(steered)
    again_plain = once(RequestControls())
    again_steered = once(steered)
    assert first_plain[0] == plain_want and first_steered[0] == steered_want
    assert first_steered[1] == 0  # the plain run's KV was not reused under the setting
    assert again_plain == (plain_want, again_plain[1]) and again_plain[1] > 0
    assert again_steered[0] == steered_want and again_steered[1] > 0
    # A monitor-only request shares the plain cache (readings do not change KV).
    monitored = RequestControls(monitor=(MonitorSpec("v", 15, vector.at(15)),))
    assert once(monitored)[0] == plain_want


def test_sampling_is_seeded_per_sample(engine) -> None:  # type: ignore[no-untyped-def]
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, n_samples=3, seed=7)
    first = engine.generate([REQUEST], config)
    second = engine.generate([REQUEST], config)
    assert [g.response_token_ids for g in first] == [g.response_token_ids for g in second]
    assert len({tuple(g.response_token_ids) for g in first}) > 1
    assert [g.sample_index for g in first] == [0, 1, 2]


def test_non_finite_steering_is_refused(smollm2: LoadedModel, engine) -> None:  # type: ignore[no-untyped-def]
    from personavec.core.steering import Intervention
    from personavec.engines.vllm_engine import RequestControls
    from personavec.errors import SteeringError

    huge = Intervention(15, torch.full((576,), 3e38), 1.0)  # finite alone, inf when doubled
    with pytest.raises(SteeringError, match="NaN or inf"):
        engine.run([REQUEST], GREEDY, [RequestControls((huge, huge))])
    assert (
        engine.generate([REQUEST], GREEDY)[0].response_token_ids == hf_tokens(smollm2, [REQUEST])[0]
    )


def test_a_request_the_hooks_never_meet_is_an_error_not_an_unsteered_answer(
    smollm2: LoadedModel,
    engine,  # type: ignore[no-untyped-def]
    vector: PersonaVector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model whose layers hide the token positions (simulated: the layout finds nothing)
    would decode tracked requests without their controls; the engine says so in one line."""
    from personavec.engines.vllm_engine import NOT_SERVED, controls_for
    from personavec.engines.vllm_hooks import VLLMHooks
    from personavec.errors import PersonavecError

    setting = SteeringSetting.from_vector(vector, 15, 4.0, "raw", "all")
    with monkeypatch.context() as patch:
        patch.setattr(VLLMHooks, "_layout", lambda self, positions: [])
        with pytest.raises(PersonavecError, match="without its steering"):
            engine.run([REQUEST], GREEDY, [controls_for([setting])])
    assert "use --engine hf" in NOT_SERVED
    steered = engine.run([REQUEST], GREEDY, [controls_for([setting])])[0]
    assert steered.generation.response_token_ids == hf_tokens(smollm2, [REQUEST], [setting])[0]
