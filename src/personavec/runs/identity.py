"""Content hashes that pin a run's inputs: values, files and a loaded model's weights.

A run's identity (:mod:`personavec.runs.run`) holds every setting that changes its results plus
a hash of every input whose name does not pin its content down: a trait file that can be edited,
a vector that can be re-extracted, a dataset, the model's weights. All hashes here are the first
16 hex digits of a SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError

SAMPLES_PER_TENSOR = 4096
"""Values read from each weight tensor by :func:`weights_sha256` (evenly strided)."""


def content_sha256(content: bytes | Any) -> str:
    """Hash of ``content``: bytes as they are, anything else as canonical JSON."""
    data = content if isinstance(content, bytes) else json.dumps(content, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """Hash of a file's bytes, read in 1 MiB chunks (a vector, a dataset, a trait file)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise PersonavecError(f"cannot read {path} ({exc.strerror}); check the path") from None
    return digest.hexdigest()[:16]


def files_sha256(paths: list[str | Path] | tuple[str | Path, ...]) -> list[str]:
    """:func:`file_sha256` of each path, in order."""
    return [file_sha256(path) for path in paths]


@torch.no_grad()
def weights_sha256(model: nn.Module) -> str:
    """Hash of a loaded model's weights: every parameter's name, shape and dtype, and up to
    :data:`SAMPLES_PER_TENSOR` evenly strided values of it.

    Reading a strided sample keeps this cheap on a 7B model (a few MB copied) while any finetune,
    merge or re-quantisation changes it: a LoRA merge or a training step changes whole matrices.
    Two loads of the same checkpoint in the same dtype give the same hash; another dtype gives
    another hash (a run records its dtype anyway).
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::stride][:SAMPLES_PER_TENSOR].to("cpu").contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
    return digest.hexdigest()[:16]


def tensors_sha256(tensors: dict[str, torch.Tensor | None]) -> str:
    """Hash of named tensors' names, shapes, dtypes and values (``None`` entries count too)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|".encode())
        if tensor is not None:
            value = tensor.detach().to("cpu").contiguous()
            digest.update(f"{tuple(value.shape)}|{value.dtype}|".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def vector_sha256(vector: PersonaVector) -> str:
    """Hash of what a persona vector steers and reads with: every readout, the typical norms and
    the projection percentiles — not its metadata, so writing a calibration into the file (a
    sweep does) keeps the hash."""
    return tensors_sha256(
        {
            **{f"vector.{name}": tensor for name, tensor in vector.vectors.items()},
            "typical_norm": vector.typical_norm,
            "projection_percentiles": vector.projection_percentiles,
        }
    )
