"""``personavec info``: what a model looks like to personavec."""

from __future__ import annotations

from dataclasses import dataclass

from personavec.core.capture import Example, capture
from personavec.core.layers import _BLOCK_PATHS, _get_path, find_blocks
from personavec.core.models import chat_messages, format_chat, load_model
from personavec.core.vector import config_fingerprint

# A few neutral exchanges to estimate the typical residual norm per layer.
NORM_PROBES: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me a tip for sleeping better.", "Keep a regular bedtime and avoid screens late."),
    ("How do plants make food?", "Plants use sunlight, water and carbon dioxide to make sugar."),
    ("Say something about the ocean.", "The ocean covers most of the planet and is very deep."),
)


@dataclass
class ModelReport:
    model_id: str
    architecture: str
    n_layers: int
    hidden_size: int
    parameters: int
    device: str
    dtype: str
    fingerprint: str
    blocks_path: str
    chat_template: str | None
    example_prompt: str
    typical_norm: list[float]
    """Mean L2 norm of the residual stream over response tokens, layers 0..n."""


def model_info(spec: str, *, device: str | None = None, dtype: str | None = None) -> ModelReport:
    """Load ``spec`` and describe it, including typical norms measured on :data:`NORM_PROBES`."""
    loaded = load_model(spec, device=device, dtype=dtype)
    model = loaded.model
    blocks = find_blocks(model)
    path = next((p for p in _BLOCK_PATHS if _get_path(model, p) is blocks), "?")
    examples = [Example(chat_messages(q), a) for q, a in NORM_PROBES]
    result = capture(loaded, examples, readouts=["response_avg"])
    param = next(model.parameters())
    return ModelReport(
        model_id=loaded.model_id,
        architecture=type(model).__name__,
        n_layers=len(blocks),
        hidden_size=loaded.hidden_size,
        parameters=sum(p.numel() for p in model.parameters()),
        device=str(param.device),
        dtype=str(param.dtype).removeprefix("torch."),
        fingerprint=config_fingerprint(model.config),
        blocks_path=path,
        chat_template=getattr(loaded.tokenizer, "chat_template", None),
        example_prompt=format_chat(loaded.tokenizer, chat_messages("Hello!")),
        typical_norm=[float(x) for x in result.token_norm],
    )
