"""Export persona vectors as llama.cpp control vectors (GGUF).

llama.cpp numbers control-vector layers differently from personavec. Its loader puts tensor
``direction.k`` (``k ≥ 1``) into slot ``k``, and its graph adds slot ``il`` to the output of the
0-indexed block ``il``, which is personavec layer ``il + 1``. So personavec layer ``L`` is written
as ``direction.{L - 1}``. Slot 0 does not exist and slots stop at ``n_layers - 1``, so only layers
``2..n_layers`` can be exported; layers 0 and 1 are refused with a clear error.

llama.cpp adds control vectors at every token position (personavec's ``all`` positions) with the
``add`` operator; the coefficient is baked into the tensors (llama.cpp's ``--control-vector-scaled``
can scale it further). The export takes a :class:`~personavec.core.setting.SteeringSetting`, so a
vector calibrated in relative units is exported at the same strength as ``generate`` steers it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from personavec.core.setting import SteeringSetting
from personavec.core.steering import Intervention
from personavec.errors import SteeringError, VectorFileError


def llama_cpp_tensor_name(layer: int, n_layers: int) -> str:
    """The llama.cpp control-vector tensor name for personavec ``layer``."""
    if not 2 <= layer <= n_layers:
        raise SteeringError(
            f"llama.cpp control vectors can steer layers 2..{n_layers} only (it has no slot for "
            f"the output of block 1 or the embeddings); got layer {layer}"
        )
    return f"direction.{layer - 1}"


def export_gguf(
    setting: SteeringSetting, path: str | Path, *, model_hint: str | None = None
) -> Path:
    """Write a llama.cpp control-vector GGUF that adds the setting's vector at each of its layers.

    Args:
        setting: an ``add`` setting at ``all`` positions, layers in ``2..n_layers``; what is
            written per layer is exactly what :meth:`SteeringSetting.interventions` adds
            (``coef · v_L`` raw, or norm ``coef · typical_norm[L]`` relative).
        path: output file (``.gguf``); written atomically.
        model_hint: the ``controlvector.model_hint`` string (default: the vector's model id).
    """
    import gguf  # imported lazily: only the exporter needs it

    vector = setting.vector
    n = vector.meta.n_layers
    interventions = _exportable(setting)
    target = Path(path)
    if target.suffix != ".gguf":
        raise VectorFileError(f"output {target} should end in .gguf; pick a .gguf file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", model_hint or vector.meta.model_id)
        writer.add_uint32("controlvector.layer_count", len(interventions))
        for item in interventions:
            data = (item.vector.float() * item.coef).numpy().astype(np.float32)
            writer.add_tensor(llama_cpp_tensor_name(item.layer, n), data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _exportable(setting: SteeringSetting) -> list[Intervention]:
    """The setting's interventions, or an export-specific one-line error."""
    if setting.op != "add" or setting.is_baseline:
        raise SteeringError(
            f"llama.cpp control vectors can only add a vector; cannot export op {setting.op!r}"
            + (" with coefficient 0" if setting.is_baseline else "")
        )
    if setting.positions != "all":
        raise SteeringError(
            f"llama.cpp control vectors steer every position; cannot export positions "
            f"{setting.positions!r} (pass positions all)"
        )
    items = setting.interventions()
    for item in items:
        llama_cpp_tensor_name(item.layer, setting.vector.meta.n_layers)
    return items


def read_control_vector(path: str | Path) -> dict[int, np.ndarray]:
    """Read a control-vector GGUF back as personavec layer → float32 ``[hidden]``."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise VectorFileError(f"{path} holds a tensor {tensor.name!r}; not a control vector")
        out[int(index) + 1] = np.asarray(tensor.data, dtype=np.float32).reshape(-1).copy()
    return out
