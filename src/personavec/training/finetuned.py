"""Finetuned directories and their base: the base's identity in the record, reading the record,
the "was this trained on that base?" check, and loading a finetune exactly like its base.

The record's ``base`` holds the base model's spec, id, config fingerprint, parameter dtype and
two weight hashes:

* ``weights_sha256`` — :func:`personavec.runs.identity.weights_sha256` over every parameter:
  the base's identity (a finetune is reused only with the same one; a merged finetune of the
  same base has another one);
* ``weights`` — a hash of the input embeddings in float32 (LoRA leaves them untouched). It is
  what :func:`check_base` compares when the base is loaded in another dtype than the finetune
  was trained in (the full hash then differs by construction), and what records written before
  ``weights_sha256`` existed hold.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel, load_model
from personavec.core.vector import config_fingerprint
from personavec.runs.identity import weights_sha256
from personavec.training.finetune_config import FinetuneError
from personavec.training.finetune_dir import MARKER, RECORD, is_finished


def dtype_name(model: torch.nn.Module) -> str:
    """The dtype of a model's parameters, e.g. ``"float32"``."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def embedding_sha256(model: torch.nn.Module, dtype: str | None = None) -> str:
    """sha256 (16 hex) of the input-embedding weights in float32, first rounded to ``dtype``
    (e.g. the dtype a finetune was trained in; see the module docstring)."""
    weight = model.get_input_embeddings().weight.detach()  # type: ignore[operator]
    if dtype is not None:
        weight = weight.to(getattr(torch, dtype))
    data = weight.to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def base_identity(loaded: LoadedModel) -> dict[str, Any]:
    """The ``base`` entry of a finetune record (module docstring)."""
    return {
        "spec": loaded.spec,
        "model_id": loaded.model_id,
        "fingerprint": config_fingerprint(loaded.model.config),
        "dtype": dtype_name(loaded.model),
        "weights_sha256": weights_sha256(loaded.model),
        "weights": embedding_sha256(loaded.model),
        "n_layers": loaded.n_layers,
    }


def read_record(path: str | Path) -> dict[str, Any]:
    """The ``personavec_finetune.json`` of a *finished* finetune directory."""
    folder = Path(path)
    if not is_finished(folder):
        raise FinetuneError(
            f"{folder} is not a finished personavec finetune (no {MARKER} marker); "
            "run `personavec finetune` to completion"
        )
    record: dict[str, Any] = json.loads((folder / RECORD).read_text())
    return record


def check_base(base: LoadedModel, finetuned_dir: str | Path) -> None:
    """Raise unless ``finetuned_dir`` was trained from ``base``: same architecture, and the same
    full weight hash when ``base`` is in the dtype it was trained in; in another dtype, the same
    input embeddings once rounded to the training dtype (a base loaded in a coarser dtype than
    the finetune was trained in cannot be checked and is refused)."""
    recorded = read_record(finetuned_dir)["base"]
    trained = recorded.get("dtype")
    same_dtype = trained == dtype_name(base.model) and "weights_sha256" in recorded
    same = config_fingerprint(base.model.config) == recorded["fingerprint"] and (
        weights_sha256(base.model) == recorded["weights_sha256"]
        if same_dtype
        else embedding_sha256(base.model, trained) == recorded["weights"]
    )
    if not same:
        dtype = f" --dtype {trained}" if trained and not same_dtype else ""
        raise FinetuneError(
            f"{finetuned_dir} was finetuned from {recorded['model_id']} ({recorded['spec']}"
            f"{', ' + trained if trained else ''}), not from {base.spec}; pass --base "
            f"{recorded['spec']}{dtype}"
        )


def load_finetuned(
    path: str | Path,
    like: LoadedModel | None = None,
    *,
    base: LoadedModel | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """A finetuned model: the merged checkpoint when present, else base + adapter merged.

    Args:
        path: A finished finetune directory.
        like: The base model as loaded for the comparison: the finetune is loaded in its dtype
            and on its device (a bf16 finetune against an fp32 base measures precision, not
            finetuning), and it must be the finetune's base (:func:`check_base`). An adapter-only
            directory is applied to a copy of it (``like`` is never modified).
        base: The older name of ``like``.
        device, dtype: Without ``like``: where and how to load (default as
            :func:`~personavec.core.models.load_model`); an adapter-only directory then reloads
            the recorded base spec.
    """
    folder = Path(path)
    record = read_record(folder)
    like = like or base
    precision: str | torch.dtype | None = dtype
    if like is not None:
        check_base(like, folder)
        device, precision = str(like.device), next(like.model.parameters()).dtype
    if (folder / "config.json").is_file():
        return load_model(str(folder), device=device, dtype=precision)
    from peft import PeftModel

    source = like or load_model(record["base"]["spec"], device=device, dtype=dtype)
    model = PeftModel.from_pretrained(copy.deepcopy(source.model), str(folder / "adapter"))
    merged = model.merge_and_unload()
    merged.eval()
    return LoadedModel(merged, source.tokenizer, str(folder), folder.name)
