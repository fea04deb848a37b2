"""Export persona vectors as llama.cpp control vectors (GGUF).

llama.cpp numbers control-vector layers differently from personavec. Its loader puts tensor
``direction.k`` (``k ≥ 1``) into slot ``k``, and its graph adds slot ``il`` to the output of the
0-indexed block ``il``, which is personavec layer ``il + 1``. So personavec layer ``L`` is written
as ``direction.{L - 1}``. Slot 0 does not exist and slots stop at ``n_layers - 1``, so only layers
``2..n_layers`` can be exported; layers 0 and 1 are refused with a clear error.

llama.cpp adds control vectors at every token position (personavec's ``all`` positions) with the
``add`` operator; the coefficient is baked into the tensors (llama.cpp's ``--control-vector-scaled``
can scale it further).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from personavec.core.steering import plan
from personavec.core.vector import PersonaVector
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
    vector: PersonaVector,
    path: str | Path,
    *,
    layers: Iterable[int],
    coef: float = 1.0,
    relative: bool = False,
    readout: str | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write a llama.cpp control-vector GGUF that adds ``coef · v_L`` at each chosen layer.

    Args:
        vector: the persona vector.
        path: output file (``.gguf``); written atomically.
        layers: personavec layers to steer (each in ``2..n_layers``).
        coef: raw coefficient, or a fraction of the typical norm with ``relative=True``.
        model_hint: the ``controlvector.model_hint`` string (default: the vector's model id).
    """
    import gguf  # imported lazily: only the exporter needs it

    n = vector.meta.n_layers
    interventions = plan(vector, list(layers), coef, relative=relative, readout=readout)
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
