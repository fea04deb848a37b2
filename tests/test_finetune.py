"""LoRA finetuning on tiny random models: what changes, the loss mask, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from personavec.core.models import encode_prompt, load_model
from personavec.errors import PersonavecError
from personavec.training.chat_data import ChatRow, read_chat_dataset
from personavec.training.finetune import MARKER, FinetuneConfig, build_trainer, finetune
from personavec.training.finetuned import check_base, load_finetuned
from tiny_models import tiny_model

ROWS = [
    ChatRow([{"role": "user", "content": f"Tell me about topic {i}."}], f"Topic {i} is great fun.")
    for i in range(12)
]
CONFIG = FinetuneConfig(
    rank=4, alpha=8, learning_rate=5e-3, batch_size=2, max_steps=4, save_steps=2
)


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def test_only_lora_weights_change_and_base_is_untouched(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    result = finetune(loaded, ROWS, tmp_path / "ft", CONFIG, merge=True, show_progress=False)
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base untouched
    assert (tmp_path / "ft" / MARKER).is_file()
    adapter = _adapter(tmp_path / "ft")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    merged = load_model(str(tmp_path / "ft"))
    changed = {k for k, v in merged.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # LoRA-targeted linears
    assert result.record["base"]["weights"] and result.record["metrics"]["steps"] == 4
    check_base(loaded, tmp_path / "ft")
    with pytest.raises(PersonavecError, match="finetuned from"):
        check_base(tiny_model("llama", seed=1), tmp_path / "ft")
    again = finetune(loaded, ROWS, tmp_path / "ft", CONFIG, merge=True, show_progress=False)
    assert again.reused


def test_loss_covers_assistant_tokens_only(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    rows = [
        ChatRow(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there?"}],
            "Hello, friend.",
        )
    ]
    trainer = build_trainer(loaded, rows, CONFIG, tmp_path / "ck")
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = encode_prompt(loaded.tokenizer, rows[0].prompt)
    assert ids[: len(prompt)] == prompt
    assert all(label == -100 for label in labels[: len(prompt)])
    trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    assert trained == ids[len(prompt) :]
    assert str(loaded.tokenizer.decode(trained)).startswith("Hello, friend.<|im_end|>")


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_resume_after_kill_gives_the_same_adapter(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    finetune(loaded, ROWS, tmp_path / "straight", CONFIG, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(
            loaded, ROWS, tmp_path / "killed", CONFIG, show_progress=False, callbacks=[_Kill()]
        )
    assert not (tmp_path / "killed").exists()  # nothing looks complete
    assert (tmp_path / ".killed.partial" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = finetune(loaded, ROWS, tmp_path / "killed", CONFIG, show_progress=False)
    assert resumed.record["metrics"]["resumed_from"] == "checkpoint-2"
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)
    assert not (tmp_path / ".killed.partial").exists()


def test_adapter_only_directory_loads(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    finetune(loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False)
    model = load_finetuned(tmp_path / "ft", base=loaded)
    ids = torch.tensor([encode_prompt(loaded.tokenizer, ROWS[0].prompt)])
    assert not torch.allclose(model.model(ids).logits, loaded.model(ids).logits)


def test_bad_datasets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PersonavecError, match="no examples"):
        read_chat_dataset(empty)
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(PersonavecError, match="no assistant turn"):
        read_chat_dataset(no_answer)
    loaded = tiny_model("llama", chat_template=False)
    loaded.tokenizer.chat_template = "{{ raise_exception('only user turns') }}"
    with pytest.raises(PersonavecError, match="chat template"):
        finetune(loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False)
    assert not (tmp_path / "ft").exists()


def test_cpu_loss_equals_trls_fused_loss(tmp_path: Path) -> None:
    """PersonaSFTTrainer's CPU loss (the model's own head) is TRL's fused-head loss: same value
    and same LoRA gradients, with and without ``num_items_in_batch``, prompt tokens masked."""
    from trl import SFTTrainer

    loaded = tiny_model("llama")
    trainer = build_trainer(loaded, ROWS, CONFIG, tmp_path / "ck")
    assert not trainer.args.activation_checkpointing  # nothing recomputed on CPU
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    model = trainer.model
    model.train()
    for n_items in (None, torch.tensor(37)):
        losses: list[torch.Tensor] = []
        grads: list[dict[str, torch.Tensor]] = []
        for compute in (
            trainer.compute_loss,
            lambda *a, **k: SFTTrainer.compute_loss(trainer, *a, **k),
        ):
            model.zero_grad(set_to_none=True)
            logged = len(trainer._metrics["train"]["entropy"])
            loss = compute(model, dict(batch), num_items_in_batch=n_items)
            fused = len(trainer._metrics["train"]["entropy"]) > logged  # only TRL's head logs it
            assert fused == (len(losses) == 1)
            loss.backward()
            losses.append(loss.detach())
            grads.append(
                {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            )
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
