"""Live monitoring: per-token projections, alerts, conditional steering, the log and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from personavec.cli import app
from personavec.cli.monitor import register, sparkline
from personavec.core.capture import Example, capture_tokens
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.projection import token_projections
from personavec.core.steering import Intervention, steer
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.errors import SteeringError
from personavec.monitor.generate import generate_monitored
from personavec.monitor.log import ReadingLog, read_log
from personavec.monitor.monitor import (
    ConditionalSteering,
    MonitorSpec,
    TokenMonitor,
    start_monitor,
)

PROMPTS = [chat_messages("Hi"), chat_messages("Write a haiku about autumn leaves falling slowly")]
runner = CliRunner()


def random_rows(lm: LoadedModel, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(lm.n_layers + 1, lm.hidden_size, generator=generator)


def save_vector(lm: LoadedModel, path: Path, *, seed: int = 0, layer: int = 15) -> Path:
    """A random persona vector file for ``lm`` (plumbing only)."""
    n = lm.n_layers
    meta = VectorMetadata(
        trait="synthetic",
        model_id=lm.model_id,
        model_fingerprint=config_fingerprint(lm.model.config),
        hidden_size=lm.hidden_size,
        n_layers=n,
        readouts=["response_avg"],
        recommended_layer=layer,
        recommended_coef=4.0,
    )
    rows = random_rows(lm, seed)
    return PersonaVector({"response_avg": rows}, meta, torch.full((n + 1,), 100.0)).save(path)


def left_padded(lm: LoadedModel, prompts=PROMPTS):
    from personavec.core.models import format_chat

    texts = [format_chat(lm.tokenizer, messages) for messages in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def greedy(lm: LoadedModel, enc, new_tokens: int):
    with torch.no_grad():
        return lm.model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )


# ---- (a) decode-time readings equal a teacher-forced pass ------------------------------------


def test_generation_readings_match_teacher_forced_capture(smollm2) -> None:
    rows = random_rows(smollm2)
    specs = [MonitorSpec("a", 10, rows[10]), MonitorSpec("b", 22, rows[22])]
    answers = generate_monitored(smollm2, PROMPTS, specs, max_new_tokens=8)
    for messages, answer in zip(PROMPTS, answers, strict=True):
        positions = [r.position for r in answer.readings]
        assert positions == list(range(len(positions)))  # contiguous: padding never recorded
        n_prompt = sum(r.is_prompt for r in answer.readings)
        assert n_prompt == len(answer.prompt_ids)
        assert len(positions) >= n_prompt + len(answer.response_ids) - 1  # last one unfed
        tokens = capture_tokens(
            smollm2, Example(messages, response_ids=answer.response_ids), layers=[10, 22]
        )
        n = min(len(tokens.token_ids), len(answer.readings))
        assert n >= n_prompt + 7
        for spec in specs:
            expected = token_projections(tokens, spec.layer, spec.vector)[:n]
            got = torch.tensor([r.values[spec.name] for r in answer.readings[:n]])
            torch.testing.assert_close(
                got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max())
            )


# ---- (b) conditional steering: silent below the threshold, active above ------------------------


def test_conditional_steering_is_bit_identical_below_threshold(smollm2) -> None:
    rows = random_rows(smollm2, seed=1)
    spec = MonitorSpec("t", 12, rows[12])
    enc = left_padded(smollm2)
    plain = greedy(smollm2, enc, 5)
    high = ConditionalSteering(spec, threshold=1e6, coef=8.0)
    with TokenMonitor(smollm2.model, spec, conditional=[high]) as monitor:
        quiet = greedy(smollm2, enc, 5)
    assert max(max(monitor.series(s, "t")) for s in range(2)) < 1e6
    assert monitor.steered == [[], []]
    assert torch.equal(plain.sequences, quiet.sequences)
    for a, b in zip(plain.logits, quiet.logits, strict=True):
        assert torch.equal(a, b)
    low = ConditionalSteering(spec, threshold=-1e6, coef=8.0)
    with TokenMonitor(smollm2.model, spec, conditional=[low]) as monitor:
        loud = greedy(smollm2, enc, 5)
    assert not torch.equal(plain.logits[0], loud.logits[0])
    assert monitor.steered[0]  # every real token was steered
    assert all(not m.active for m in (monitor,))


def test_conditional_steering_subtracts_where_above(tiny_model_factory) -> None:
    lm = tiny_model_factory("llama", n_layers=2, seed=3)
    v = random_rows(lm, seed=4)[1]
    spec = MonitorSpec("t", 1, v)
    enc = left_padded(lm)
    after: list[torch.Tensor] = []
    with TokenMonitor(lm.model, spec, conditional=[ConditionalSteering(spec, 0.0, 2.0)]) as m:
        hook = lm.model.model.layers[0].register_forward_hook(
            lambda mod, args, out: after.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            with torch.no_grad():
                lm.model(**enc)
        finally:
            hook.remove()
    # the hook registered after the monitor sees the changed stream: values drop by 2·‖v‖
    unit = v / v.norm()
    seen = after[0].float() @ unit
    real = enc["attention_mask"].bool()
    for row in range(2):
        measured = torch.tensor(m.series(row, "t"))
        shift = torch.where(measured > 0, 2.0 * v.norm(), torch.zeros(()))
        torch.testing.assert_close(seen[row][real[row]], measured - shift, rtol=1e-4, atol=1e-4)


# ---- (c) alerts --------------------------------------------------------------------------------


def test_alerts_fire_exactly_where_values_exceed(tiny_model_factory) -> None:
    lm = tiny_model_factory("llama", n_layers=2, seed=0)
    v = random_rows(lm, seed=2)
    specs = [MonitorSpec("x", 1, v[1]), MonitorSpec("y", 2, v[2])]
    # a first run shows the values; alert above their median in a second, identical run
    (first, second) = generate_monitored(lm, PROMPTS, specs[1:], max_new_tokens=6)
    seen = [r.values["y"] for a in (first, second) for r in a.readings if not r.is_prompt]
    threshold = float(torch.tensor(seen).median())
    specs = [MonitorSpec("x", 1, v[1]), MonitorSpec("y", 2, v[2], threshold=threshold)]
    fired: list[tuple[int, int, str, float]] = []
    answers = generate_monitored(
        lm, PROMPTS, specs, max_new_tokens=6, on_alert=lambda *a: fired.append(a),
        alert_prompt_last=True,
    )  # fmt: skip
    expected = []
    for seq, answer in enumerate(answers):
        last_prompt = max(r.position for r in answer.readings if r.is_prompt)
        for r in answer.readings:
            if (not r.is_prompt or r.position == last_prompt) and r.values["y"] > threshold:
                expected.append((seq, r.position, "y", r.values["y"]))
        assert [a[:3] for a in answer.alerts] == [e[:3] for e in expected if e[0] == seq]
    assert sorted(fired) == sorted(expected)
    values = [r.values["y"] for a in answers for r in a.readings if not r.is_prompt]
    assert any(x > threshold for x in values) and any(x <= threshold for x in values)


# ---- batched = alone, several architectures; order with steering ------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_readings_equal_alone(tiny_model_factory, arch: str) -> None:
    lm = tiny_model_factory(arch, n_layers=2, seed=1)
    v = random_rows(lm, seed=5)
    specs = [MonitorSpec("e", 0, v[0]), MonitorSpec("x", 2, v[2])]
    together = generate_monitored(lm, PROMPTS, specs, max_new_tokens=5)
    for index, messages in enumerate(PROMPTS):
        (alone,) = generate_monitored(lm, [messages], specs, max_new_tokens=5)
        assert alone.response_ids == together[index].response_ids
        assert [r[:2] for r in alone.readings] == [r[:2] for r in together[index].readings]
        for name in ("e", "x"):
            a = torch.tensor([r.values[name] for r in alone.readings])
            b = torch.tensor([r.values[name] for r in together[index].readings])
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_monitor_after_steering_sees_the_steered_stream(tiny_model_factory) -> None:
    lm = tiny_model_factory("qwen2", n_layers=2, seed=2)
    v = random_rows(lm, seed=6)[1]
    enc = left_padded(lm)
    spec = MonitorSpec("t", 1, v)
    with TokenMonitor(lm.model, spec) as before_steer, torch.no_grad():
        lm.model(**enc)
    with steer(lm.model, Intervention(1, v, coef=3.0)):
        monitor = start_monitor(lm.model, spec)
        try:
            with torch.no_grad():
                lm.model(**enc)
        finally:
            monitor.remove()
    for row in range(2):
        base = torch.tensor(before_steer.series(row, "t"))
        steered = torch.tensor(monitor.series(row, "t"))
        torch.testing.assert_close(steered, base + 3.0 * v.norm(), rtol=1e-4, atol=1e-4)


def test_bad_specs_fail_clearly(tiny_model_factory) -> None:
    lm = tiny_model_factory("llama", n_layers=2)
    with pytest.raises(SteeringError, match="out of range"):
        TokenMonitor(lm.model, MonitorSpec("t", 3, torch.ones(64)))
    with pytest.raises(SteeringError, match="hidden size"):
        TokenMonitor(lm.model, MonitorSpec("t", 1, torch.ones(65)))
    with pytest.raises(SteeringError, match="zero"):
        MonitorSpec("t", 1, torch.zeros(64))
    with pytest.raises(SteeringError, match="unique"):
        TokenMonitor(lm.model, [MonitorSpec("t", 1, torch.ones(64))] * 2)
    assert not lm.model.model.layers[0]._forward_hooks  # nothing left behind


# ---- (d) the SQLite log --------------------------------------------------------------------------


def test_log_round_trips(tiny_model_factory, tmp_path: Path) -> None:
    lm = tiny_model_factory("llama", n_layers=2, seed=0)
    v = random_rows(lm, seed=7)
    specs = [MonitorSpec("x", 1, v[1]), MonitorSpec("y", 2, v[2])]
    path = tmp_path / "readings.sqlite"
    log = ReadingLog(path, session="s1")
    monitor = TokenMonitor(lm.model, specs, log=log)
    try:
        enc = left_padded(lm)
        greedy(lm, enc, 4)
        greedy(lm, enc, 3)  # a second generate call: two more sequences, logged as they finish
        assert len(read_log(path)) > 0  # the first call is already written
    finally:
        monitor.remove()
    rows = read_log(path, session="s1")
    expected = []
    for seq, readings in enumerate(monitor.readings):
        for reading, token_id in zip(readings, monitor.token_ids[seq], strict=True):
            for name, value in reading.values.items():
                expected.append((seq, reading.position, token_id, reading.is_prompt, name, value))
    got = [(r.sequence, r.token_index, r.token_id, r.is_prompt, r.name, r.value) for r in rows]
    assert len(monitor.readings) == 4
    assert sorted(got) == sorted(expected)
    assert {r.layer for r in rows if r.name == "y"} == {2}
    assert all(r.session == "s1" and r.timestamp > 0 for r in rows)
    prompt_ids = enc["input_ids"][1][enc["attention_mask"][1].bool()].tolist()
    assert monitor.token_ids[1][: len(prompt_ids)] == prompt_ids
    assert read_log(path, session="other") == []


# ---- (e) the CLI -------------------------------------------------------------------------------


def test_cli_monitor_prints_meters_and_fails_cleanly(smollm2, tmp_path: Path) -> None:
    register(app)
    register(app)  # idempotent
    assert [c.name for c in app.registered_commands].count("monitor") == 1
    good = save_vector(smollm2, tmp_path / "v.safetensors")
    log = tmp_path / "log.sqlite"
    args = ["monitor", "Hi", "--vector", str(good), "--max-new-tokens", "4"]
    result = runner.invoke(app, [*args, "--threshold", "0", "--log", str(log)])
    assert result.exit_code == 0, result.output
    assert "synthetic L15" in result.output and "min " in result.output
    assert "last-prompt" in result.output
    assert read_log(log)
    result = runner.invoke(app, [*args, "--layer", "31"])
    assert result.exit_code == 2
    assert "out of range" in result.output and len(result.output.strip().splitlines()) == 1
    meta = VectorMetadata(
        trait="other",
        model_id="tiny",
        model_fingerprint="0",
        hidden_size=64,
        n_layers=30,
        readouts=["response_avg"],
        recommended_layer=15,
    )
    other = PersonaVector({"response_avg": torch.ones(31, 64)}, meta).save(tmp_path / "o.st")
    result = runner.invoke(app, ["monitor", "Hi", "--vector", str(other)])
    assert result.exit_code == 2
    assert "hidden size" in result.output and len(result.output.strip().splitlines()) == 1


def test_sparkline() -> None:
    assert sparkline([0.0, 1.0, 2.0]) == "▁▅█"
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert sparkline([]) == ""


def test_live_meter_shows_the_latest_reading_at_every_step(smollm2, tmp_path: Path) -> None:
    from rich.console import Console

    from personavec.core.models import chat_messages
    from personavec.core.vector import PersonaVector
    from personavec.monitor.generate import generate_monitored
    from personavec.monitor.live import LiveMeter
    from personavec.monitor.monitor import MonitorSpec

    pv = PersonaVector.load(save_vector(smollm2, tmp_path / "v.safetensors"))
    spec = MonitorSpec.from_vector(pv, None, name="synthetic")
    console = Console(record=True, force_terminal=True, width=100)
    meter = LiveMeter(smollm2.tokenizer, console)
    (answer,) = generate_monitored(
        smollm2, [chat_messages("Name a fruit.")], [spec], max_new_tokens=6, streamer=meter
    )
    assert meter.token_ids[: len(answer.response_ids)] == answer.response_ids
    # Step t shows the reading of the newest token fed to the model at that point.
    fed = [r.values["synthetic"] for r in answer.readings]
    shown = [step["synthetic"] for step in meter.history]
    prompt_len = len(answer.prompt_ids)
    assert shown[0] == pytest.approx(fed[prompt_len - 1])  # last prompt token
    assert shown[1 : len(fed) - prompt_len + 1] == pytest.approx(fed[prompt_len:])
    assert "synthetic" in console.export_text()


# ---- the guard is an operator of the one table ----------------------------------------------


def test_guard_is_the_table_operator_the_monitor_runs(tiny_model_factory) -> None:
    """``ConditionalSteering`` is the ``guard`` operator (gate + add): steering with it through
    the operator table changes the model exactly as the monitor's steer-back does."""
    from personavec.core.steering import OPERATOR_FUNCTIONS

    lm = tiny_model_factory("llama", n_layers=2, seed=3)
    v = random_rows(lm, seed=4)[1]
    spec = MonitorSpec("t", 1, v)
    rule = ConditionalSteering(spec, 0.0, 2.0)
    item = rule.intervention()
    assert "guard" in OPERATOR_FUNCTIONS
    assert (item.op, item.coef, item.threshold, item.layer) == ("guard", -2.0, 0.0, 1)
    enc = left_padded(lm)
    with torch.no_grad():
        plain = lm.model(**enc).logits
        with TokenMonitor(lm.model, spec, conditional=[rule]) as monitor:
            by_monitor = lm.model(**enc).logits
        with steer(lm.model, item):
            by_table = lm.model(**enc).logits
    assert monitor.steered[0] or monitor.steered[1]
    assert not torch.equal(plain, by_monitor)
    torch.testing.assert_close(by_table, by_monitor, rtol=0, atol=1e-6)


def test_guard_output_that_is_not_finite_stops_the_pass(tiny_model_factory) -> None:
    """The guard is covered by the operators' non-finite check, in the monitor and the table."""
    lm = tiny_model_factory("llama", n_layers=2, seed=3)
    spec = MonitorSpec("t", 1, torch.ones(lm.hidden_size) * 3.0)
    rule = ConditionalSteering(spec, -1e9, 1e38)  # fires everywhere; two of them overflow
    enc = left_padded(lm)
    with (
        pytest.raises(SteeringError, match=r"NaN or inf.*smaller coefficient"),
        TokenMonitor(lm.model, spec, conditional=[rule, rule]),
        torch.no_grad(),
    ):
        lm.model(**enc)
    with (
        pytest.raises(SteeringError, match=r"NaN or inf.*smaller coefficient"),
        steer(lm.model, [rule.intervention(), rule.intervention()]),
        torch.no_grad(),
    ):
        lm.model(**enc)
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_guard_with_coefficient_zero_changes_nothing(tiny_model_factory) -> None:
    """``coef`` 0 is a valid guard (the server accepts it): it fires but adds nothing."""
    lm = tiny_model_factory("llama", n_layers=2, seed=3)
    spec = MonitorSpec("t", 1, random_rows(lm, seed=4)[1])
    enc = left_padded(lm)
    with torch.no_grad():
        plain = lm.model(**enc).logits
        with TokenMonitor(lm.model, spec, conditional=[ConditionalSteering(spec, -1e9, 0.0)]):
            guarded = lm.model(**enc).logits
        with steer(lm.model, ConditionalSteering(spec, -1e9, 0.0).intervention()):
            by_table = lm.model(**enc).logits
    torch.testing.assert_close(guarded, plain, rtol=0, atol=0)
    torch.testing.assert_close(by_table, plain, rtol=0, atol=0)
