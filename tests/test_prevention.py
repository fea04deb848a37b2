"""Preventative steering, ablation during training and the projection penalty (tiny models)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from fixtures import synthetic_vector
from personavec.core.layers import find_blocks
from personavec.core.models import LoadedModel, encode_prompt, load_model
from personavec.core.steering import Intervention
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.errors import PersonavecError
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig, NonFiniteLoss, build_trainer, finetune
from personavec.training.finetuned import load_finetuned
from personavec.training.modifiers import build_modifiers
from personavec.training.prevention import StopOnNonFinite, TrainingSteering
from personavec.training.projection_penalty import PenaltyTerm, penalty_trainer_class
from tiny_models import tiny_model

ROWS = [
    ChatRow(
        [{"role": "user", "content": f"Tell me about topic {i}{'!' * i}."}],
        f"Topic {i} is {'very ' * (i % 3)}great fun.",
    )
    for i in range(8)
]
CONFIG = FinetuneConfig(
    rank=4, alpha=8, learning_rate=5e-3, batch_size=4, max_steps=2, save_steps=1
)
LAYER = 2


def make_vector(
    lm: LoadedModel,
    path: Path,
    *,
    seed: int = 0,
    trait: str = "synthetic",
    typical: float | None = 10.0,
) -> Path:
    """Seeded random rows for ``lm`` in a vector file (plumbing, not science)."""
    vector = synthetic_vector(
        trait=trait,
        n_layers=lm.n_layers,
        hidden=lm.hidden_size,
        seed=seed,
        model_id=lm.model_id,
        fingerprint=config_fingerprint(lm.model.config),
        layer=LAYER,
        typical_norm=typical,
        recommended_coef=3.0,
    )
    return vector.save(path)


def _batch(trainer: Any) -> dict[str, torch.Tensor]:
    return next(iter(trainer.get_train_dataloader()))


def _steered_input(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, grad: bool = True
) -> torch.Tensor:
    """Block output at LAYER as the next block sees it, in a train-mode forward pass (with
    gradients: a training pass; without: as in evaluation inside training)."""
    seen: list[torch.Tensor] = []
    block = find_blocks(model)[LAYER]
    handle = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    try:
        model.train()
        with torch.set_grad_enabled(grad):
            model(**batch)
    finally:
        handle.remove()
    return seen[0].detach()


def _response_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Paper's response positions, by hand: last prompt token through the last real token."""
    labels, real = batch["labels"], batch["attention_mask"].bool()
    mask = torch.zeros_like(real)
    for row in range(labels.shape[0]):
        first = int((labels[row] != -100).nonzero()[0])
        mask[row, first - 1 : int(real[row].sum())] = True
    return mask


@pytest.mark.parametrize("positions", ["all", "response"])
def test_training_forward_adds_coef_v_at_exactly_the_positions(
    tmp_path: Path, positions: str
) -> None:
    loaded = tiny_model("llama")
    path = make_vector(loaded, tmp_path / "v.safetensors")
    mods = build_modifiers(loaded, prevent=[f"{path}:{LAYER}:2.5"], positions=positions)
    trainer = build_trainer(loaded, ROWS, CONFIG, tmp_path / "ck")
    model, batch = trainer.model, _batch(trainer)
    plain = _steered_input(model, batch)
    steering = TrainingSteering(mods.interventions())
    with steering.attached(model):
        steered = _steered_input(model, batch)
        unsteered_eval = _steered_input(model, batch, grad=False)
    expected = batch["attention_mask"].bool() if positions == "all" else _response_mask(batch)
    assert expected.any() and not expected.all()
    v = PersonaVector.load(path).at(LAYER)
    diff = steered - plain
    torch.testing.assert_close(
        diff[expected], (2.5 * v).expand(int(expected.sum()), -1), rtol=1e-5, atol=1e-5
    )
    assert diff[~expected].abs().max() == 0
    assert torch.equal(unsteered_eval, plain) and steering.steered_passes == 1


class _CheckUnsteered(TrainerCallback):
    """At each step: evaluation and generation give what the model gives without any hooks."""

    def __init__(self, steering: TrainingSteering, ids: torch.Tensor) -> None:
        self.steering, self.ids, self.checked = steering, ids, 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model = kw["model"]
        model.eval()
        with torch.no_grad():
            hooked = model(self.ids).logits
            gen = model.generate(self.ids, max_new_tokens=4, do_sample=False)
        self.steering.detach()
        with torch.no_grad():
            bare = model(self.ids).logits
            gen_bare = model.generate(self.ids, max_new_tokens=4, do_sample=False)
        self.steering.attach(model)
        model.train()
        assert torch.equal(hooked, bare) and torch.equal(gen, gen_bare)
        self.checked += 1


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_eval_generation_and_saved_model_are_unsteered(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    path = make_vector(loaded, tmp_path / "v.safetensors")
    mods = build_modifiers(loaded, prevent=[f"{path}:{LAYER}:4"])
    extras = mods.extras()
    steering = next(c for c in extras.callbacks if isinstance(c, TrainingSteering))
    ids = torch.tensor([encode_prompt(loaded.tokenizer, ROWS[0].prompt)])
    check = _CheckUnsteered(steering, ids)
    trainer = build_trainer(loaded, ROWS, CONFIG, tmp_path / "ck", callbacks=[check], extras=extras)
    trainer.train()
    assert check.checked == 2 and steering.steered_passes == 2
    assert _hook_count(trainer.model) == 0  # nothing left on the trained model
    result = finetune(
        loaded, ROWS, tmp_path / "ft", CONFIG, merge=True, show_progress=False, extras=mods.extras()
    )
    assert result.record["training"]["prevent"][0]["coef"] == 4.0
    merged = load_model(str(tmp_path / "ft"))
    assert _hook_count(merged.model) == 0
    (tmp_path / "ft" / "config.json").rename(tmp_path / "ft" / "merged-config.json")
    from_adapter = load_finetuned(tmp_path / "ft", base=loaded)  # base + adapter, no steering
    with torch.no_grad():
        torch.testing.assert_close(
            merged.model(ids).logits, from_adapter.model(ids).logits, rtol=1e-4, atol=1e-4
        )
    plain = finetune(loaded, ROWS, tmp_path / "plain", CONFIG, show_progress=False)
    assert "training" not in plain.record  # a plain finetune is not reused for a steered one


def test_ablation_during_training_leaves_no_component(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    path = make_vector(loaded, tmp_path / "v.safetensors")
    mods = build_modifiers(loaded, ablate=[f"{path}:{LAYER}"])
    trainer = build_trainer(loaded, ROWS, CONFIG, tmp_path / "ck")
    model, batch = trainer.model, _batch(trainer)
    unit = PersonaVector.load(path).direction(LAYER)
    plain = _steered_input(model, batch)
    with TrainingSteering(mods.interventions()).attached(model):
        ablated = _steered_input(model, batch)
    real = batch["attention_mask"].bool()
    assert (plain[real] @ unit).abs().mean() > 1e-2
    assert (ablated[real] @ unit).abs().max() < 1e-4


def _penalty_trainer(loaded: LoadedModel, tmp_path: Path, weight: float) -> Any:
    unit = torch.nn.functional.normalize(torch.randn(loaded.hidden_size), dim=0)
    cls = penalty_trainer_class([PenaltyTerm(unit, LAYER, weight, "synthetic")])
    from personavec.training.finetune import TrainerExtras

    return build_trainer(
        loaded,
        ROWS,
        CONFIG,
        tmp_path / "ck",
        extras=TrainerExtras(trainer_class=cls, args={"activation_checkpointing": False}),
    )


def test_penalty_is_zero_with_a_zero_adapter_and_trains_only_lora(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    trainer = _penalty_trainer(loaded, tmp_path, weight=10.0)
    model, batch = trainer.model, _batch(trainer)
    model.train()
    trainer.compute_loss(model, dict(batch))
    assert trainer._penalties == [0.0]  # LoRA B starts at zero: the adapter is zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    trainer._penalties = []
    trainer.penalty_terms = (PenaltyTerm(trainer.penalty_terms[0].unit, LAYER, 10.0),)
    from personavec.training.projection_penalty import block_outputs, projection_penalty

    with block_outputs(model, [LAYER]) as ft:
        model(**batch)
    with torch.no_grad(), model.disable_adapter(), block_outputs(model, [LAYER]) as base:
        model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    penalty = projection_penalty(ft, base, batch["labels"] != -100, trainer.penalty_terms)
    assert float(penalty) > 0
    model.zero_grad()
    penalty.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_penalty_through_the_trainers_loss_has_a_gradient(tmp_path: Path) -> None:
    """The loss ``compute_loss`` returns carries the penalty's gradient: TRL's extra no-grad
    forward (made when outputs are asked for) once replaced the recorded activations, so the
    penalty was a constant and the finetune came out identical to the plain one."""
    loaded = tiny_model("llama")
    trainer = _penalty_trainer(loaded, tmp_path, weight=10.0)
    model, batch = trainer.model, _batch(trainer)
    model.train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    unit = trainer.penalty_terms[0].unit
    grads = []
    for weight in (0.0, 10.0):
        trainer.penalty_terms = (PenaltyTerm(unit, LAYER, weight),)
        for return_outputs in (False, True):
            model.zero_grad()
            result = trainer.compute_loss(model, dict(batch), return_outputs=return_outputs)
            loss = result[0] if return_outputs else result
            loss.backward()
            grads.append(
                torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])
            )
    plain, plain_outputs, penalised, penalised_outputs = grads
    assert torch.allclose(plain, plain_outputs) and torch.allclose(penalised, penalised_outputs)
    assert (penalised - plain).abs().max() > 1e-4  # the penalty moves the update


def test_penalty_finetune_through_train_differs_from_the_plain_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through ``trainer.train()`` (the path ``prevent-study`` takes): the activations
    the penalty is built on carry a gradient in every training step, and a large λ gives other
    LoRA weights than λ = 0 (same seed and data; a second λ = 0 run is identical). Before the fix
    the penalty finetune's weights equalled the plain finetune's."""
    import personavec.training.projection_penalty as pp

    recorded: list[bool] = []
    original = pp.projection_penalty

    def spy(trained: dict[int, torch.Tensor], *args: Any) -> torch.Tensor:
        recorded.append(all(t.requires_grad and t.grad_fn is not None for t in trained.values()))
        return original(trained, *args)

    monkeypatch.setattr(pp, "projection_penalty", spy)
    loaded = tiny_model("llama")
    unit = torch.nn.functional.normalize(torch.randn(loaded.hidden_size), dim=0)
    lora: list[dict[str, torch.Tensor]] = []
    from personavec.training.finetune import TrainerExtras

    for run, weight in enumerate((0.0, 0.0, 1000.0)):
        cls = penalty_trainer_class([PenaltyTerm(unit, LAYER, weight)])
        extras = TrainerExtras(trainer_class=cls, args={"activation_checkpointing": False})
        trainer = build_trainer(loaded, ROWS, CONFIG, tmp_path / f"ck{run}", extras=extras)
        trainer.train()
        lora.append(
            {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
        )
    assert len(recorded) == 3 * CONFIG.max_steps and all(recorded)
    plain, again, penalised = lora
    assert all(torch.equal(plain[n], again[n]) for n in plain)  # deterministic
    diff = max(float((penalised[n] - plain[n]).abs().max()) for n in plain)
    assert diff > 1e-4  # the penalty changed the update


def test_penalty_finetune_runs_and_logs(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    trainer = _penalty_trainer(loaded, tmp_path, weight=1.0)
    trainer.train()
    logged = [
        h["projection_penalty"] for h in trainer.state.log_history if "projection_penalty" in h
    ]
    assert len(logged) == 2 and logged[0] == 0.0 and logged[1] > 0.0


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    normed = make_vector(loaded, tmp_path / "w.safetensors")
    with pytest.raises(PersonavecError, match="typical residual norm"):  # absurd: refused
        build_modifiers(loaded, prevent=[f"{normed}:2:1e6"])
    path = make_vector(loaded, tmp_path / "v.safetensors", typical=None)
    with pytest.raises(PersonavecError, match="own norm"):  # no typical norms: still bounded
        build_modifiers(loaded, prevent=[f"{path}:{LAYER}:1e38"])
    huge = Intervention(LAYER, PersonaVector.load(path).at(LAYER), 1e38)  # the raw operator
    extras = dataclasses.replace(
        build_modifiers(loaded, prevent=[f"{path}:{LAYER}:1"]).extras(),
        callbacks=(StopOnNonFinite(), TrainingSteering([huge])),
    )
    with pytest.raises(NonFiniteLoss, match=r"became nan at step 1.*no checkpoint"):
        finetune(loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False, extras=extras)
    assert not (tmp_path / "ft").exists()

    class _Diverge(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 1:
                with torch.no_grad():
                    for name, p in kw["model"].named_parameters():
                        if "lora_A" in name:
                            p.fill_(float("nan"))

    config = FinetuneConfig(rank=4, alpha=8, batch_size=4, max_steps=3, save_steps=1)
    mods = build_modifiers(loaded, prevent=[f"{path}:{LAYER}:1"])
    with pytest.raises(NonFiniteLoss, match=r"last good checkpoint is .*checkpoint-1"):
        finetune(
            loaded,
            ROWS,
            tmp_path / "ft",
            config,
            show_progress=False,
            extras=mods.extras(),
            callbacks=[_Diverge()],
        )
    assert not (tmp_path / "ft").exists()
    kept = (tmp_path / ".ft.partial" / "checkpoints").glob("checkpoint-*")
    assert sorted(p.name for p in kept) == ["checkpoint-1"]


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    path = make_vector(loaded, tmp_path / "v.safetensors")
    other = make_vector(tiny_model("qwen2", n_layers=4), tmp_path / "other.safetensors")
    cases = [
        (dict(prevent=[f"{other}:2:1"]), "model|fingerprint|layers|hidden"),
        (dict(prevent=[f"{path}:9:1"]), "out of range"),
        (dict(prevent=[f"{path}:2:1"], mode="incremental"), "several layers"),
        (dict(ablate=[f"{path}:2"], mode="incremental"), "applies to --prevent"),
        (dict(prevent=[f"{path}:all:1"], mode="incremental", relative=True), "relative"),
        (dict(prevent=[f"{path}:2:1"], ablate=[f"{path}:2"]), "pick one"),
        (dict(penalty=[f"{path}:2"]), "FILE:layer:lambda"),
        (dict(penalty=[f"{path}:0:1"]), "layer >= 1"),
        (dict(penalty=[f"{path}:2:-1"]), ">= 0"),
        (dict(prevent=[f"{path}:2:abc"]), "coefficient"),
        (dict(prevent=[str(tmp_path / "missing.safetensors")]), "not found"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PersonavecError, match=message):
            build_modifiers(loaded, **kwargs)  # type: ignore[arg-type]


def test_incremental_all_layers_adds_layer_differences(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    path = make_vector(loaded, tmp_path / "v.safetensors")
    mods = build_modifiers(loaded, prevent=[f"{path}:all:2"], mode="incremental")
    rows = PersonaVector.load(path).readout()
    items = mods.interventions()
    assert [i.layer for i in items] == [1, 2, 3]
    torch.testing.assert_close(items[2].vector * items[2].coef, 2 * (rows[3] - rows[2]))
