"""Reading finetuned directories: the record, base-model checks, loading (merged or adapter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel, load_model
from personavec.core.vector import config_fingerprint
from personavec.training.finetune import MARKER, RECORD, FinetuneError, weights_digest


def read_record(path: str | Path) -> dict[str, Any]:
    """The ``personavec_finetune.json`` of a *finished* finetune directory."""
    folder = Path(path)
    if not (folder / MARKER).is_file() or not (folder / RECORD).is_file():
        raise FinetuneError(
            f"{folder} is not a finished personavec finetune (no {MARKER} marker); "
            "run `personavec finetune` to completion"
        )
    record: dict[str, Any] = json.loads((folder / RECORD).read_text())
    return record


def check_base(base: LoadedModel, finetuned_dir: str | Path) -> None:
    """Raise unless ``finetuned_dir`` was trained from ``base`` (architecture and weights)."""
    recorded = read_record(finetuned_dir)["base"]
    if config_fingerprint(base.model.config) != recorded["fingerprint"] or (
        weights_digest(base.model) != recorded["weights"]
    ):
        raise FinetuneError(
            f"{finetuned_dir} was finetuned from {recorded['model_id']} ({recorded['spec']}), "
            f"not from {base.spec}; pass --base {recorded['spec']}"
        )


def load_finetuned(
    path: str | Path,
    *,
    base: LoadedModel | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """A finetuned model: the merged checkpoint when present, else base + adapter merged in memory.

    ``base`` (for adapter-only directories) is copied, never modified; default: reload the
    recorded base spec.
    """
    import copy

    folder = Path(path)
    record = read_record(folder)
    if (folder / "config.json").is_file():
        return load_model(str(folder), device=device, dtype=dtype)
    from peft import PeftModel

    source = base or load_model(record["base"]["spec"], device=device, dtype=dtype)
    model = PeftModel.from_pretrained(copy.deepcopy(source.model), str(folder / "adapter"))
    merged = model.merge_and_unload()
    merged.eval()
    return LoadedModel(merged, source.tokenizer, str(folder), folder.name)
