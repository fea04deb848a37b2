"""Apply llama.cpp control-vector GGUF files to a ``llama_cpp.Llama`` from Python.

llama-cpp-python has no high-level option for control vectors (the ``--control-vector`` flag
lives in llama.cpp's ``common`` library, which the Python package does not bind). This module
replicates that loader (``common_control_vector_load`` in ``common/common.cpp``) and hands the
result to the low-level ``llama_set_adapter_cvec``:

* every tensor must be named ``direction.k`` with ``k ≥ 1``, be F32, 1-D, and all must share one
  length ``n_embd``;
* the buffer starts at slot 1 (slot 0 is never stored): tensor ``direction.k`` goes to
  ``data[n_embd·(k−1) : n_embd·k]``, scaled by the file's strength; tensors for the same slot and
  several files add up;
* the layer range defaults to ``1 .. n_layer`` (both inclusive), as in llama.cpp's ``common``.

llama.cpp then adds slot ``il`` to the output of its 0-indexed block ``il`` (personavec layer
``il + 1``) at every token position. Slots ``≥ n_layer`` are ignored by llama.cpp. Unlike
``common`` (which sets a vector once per context), :func:`apply_control_vector` may be called
repeatedly on one context, so it pads the buffer to every slot: llama.cpp leaves slots that a
shorter buffer does not cover at their previous values.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from personavec.errors import SteeringError, VectorFileError

_DIRECTION = re.compile(r"direction\.(\d+)")

ControlVectorSpec = str | Path | tuple[str | Path, float]


def load_control_vector_data(
    files: ControlVectorSpec | Iterable[ControlVectorSpec],
) -> tuple[int, np.ndarray]:
    """Read one or more control-vector GGUFs into llama.cpp's flat buffer.

    Args:
        files: a path, a ``(path, strength)`` pair, or several of them (summed).

    Returns:
        ``(n_embd, data)`` where ``data`` is float32 ``[n_embd · max_slot]`` starting at slot 1.
    """
    import gguf

    specs: list[ControlVectorSpec]
    if isinstance(files, str | Path | tuple):
        specs = [files]
    else:
        specs = list(files)
    if not specs:
        raise VectorFileError("no control-vector files given; pass at least one .gguf path")
    n_embd = -1
    data = np.zeros(0, dtype=np.float32)
    for spec in specs:
        path, strength = spec if isinstance(spec, tuple) else (spec, 1.0)
        reader = gguf.GGUFReader(str(path))
        if not reader.tensors:
            raise VectorFileError(f"{path} holds no direction tensors; not a control vector")
        for tensor in reader.tensors:
            match = _DIRECTION.fullmatch(tensor.name)
            if match is None:
                raise VectorFileError(
                    f"{path}: tensor {tensor.name!r} is not named direction.<layer>"
                )
            slot = int(match.group(1))
            if slot == 0:
                raise VectorFileError(f"{path}: llama.cpp has no control-vector slot 0")
            if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
                raise VectorFileError(f"{path}: tensor {tensor.name!r} is not F32")
            if len(tensor.shape) != 1:
                raise VectorFileError(f"{path}: tensor {tensor.name!r} is not 1-D")
            values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
            if n_embd == -1:
                n_embd = values.size
            elif values.size != n_embd:
                raise VectorFileError(
                    f"{path}: tensor {tensor.name!r} has {values.size} values, expected {n_embd}"
                )
            if data.size < n_embd * slot:
                data = np.concatenate([data, np.zeros(n_embd * slot - data.size, np.float32)])
            data[n_embd * (slot - 1) : n_embd * slot] += values * np.float32(strength)
    return n_embd, data


def _handles(llm: Any) -> tuple[Any, Any]:
    ctx = getattr(llm, "ctx", None)
    model = getattr(llm, "model", None)
    if ctx is None or model is None:
        raise SteeringError("expected a llama_cpp.Llama instance (with .ctx and .model)")
    return ctx, model


def apply_control_vector(
    llm: Any,
    files: ControlVectorSpec | Iterable[ControlVectorSpec],
    *,
    layer_start: int | None = None,
    layer_end: int | None = None,
) -> None:
    """Load control vector(s) into ``llm`` (a ``llama_cpp.Llama``), replacing any active one.

    ``layer_start``/``layer_end`` are llama.cpp slots (inclusive; default ``1``..``n_layer``,
    as llama.cpp's ``--control-vector-layer-range``). Slot ``s`` is personavec layer ``s + 1``.
    The KV cache is not touched: call ``llm.reset()`` before evaluating steered tokens.
    """
    import llama_cpp

    ctx, model = _handles(llm)
    n_embd, data = load_control_vector_data(files)
    model_embd = int(llama_cpp.llama_model_n_embd(model))
    if n_embd != model_embd:
        raise SteeringError(
            f"control vector has {n_embd} values per layer but the model has hidden size "
            f"{model_embd}; export a vector for this model"
        )
    n_layer = int(llama_cpp.llama_model_n_layer(model))
    start = layer_start if layer_start is not None and layer_start > 0 else 1
    end = layer_end if layer_end is not None and layer_end > 0 else n_layer
    # llama.cpp only overwrites the slots the buffer covers and keeps the others from the
    # previous call, so pad with zeros to every slot (1 .. n_layer - 1) to replace them all.
    slots = n_embd * max(n_layer - 1, 0)
    if data.size < slots:
        data = np.concatenate([data, np.zeros(slots - data.size, dtype=np.float32)])
    buffer = np.ascontiguousarray(data, dtype=np.float32)
    pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    err = llama_cpp.llama_set_adapter_cvec(ctx, pointer, buffer.size, n_embd, start, end)
    if err != 0:
        raise SteeringError(f"llama.cpp refused the control vector (error {err})")


def clear_control_vector(llm: Any) -> None:
    """Switch off the control vector of ``llm`` (the KV cache is not touched)."""
    import llama_cpp

    ctx, model = _handles(llm)
    n_embd = int(llama_cpp.llama_model_n_embd(model))
    err = llama_cpp.llama_set_adapter_cvec(ctx, None, 0, n_embd, -1, -1)
    if err != 0:
        raise SteeringError(f"llama.cpp could not clear the control vector (error {err})")
