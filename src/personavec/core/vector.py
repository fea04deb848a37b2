"""``PersonaVector``: per-layer trait directions plus the metadata that says where they came from.

File format (safetensors, never pickle):

* tensors ``vector.<readout>``: float32 ``[n_layers + 1, hidden]``, one row per layer under the
  block-output convention (row 0 = embeddings, row L = output of block L);
* tensor ``typical_norm``: float32 ``[n_layers + 1]``, the mean L2 norm of the residual stream at
  each layer (so coefficients can be given relative to it); optional;
* tensor ``projection_percentiles``: float32 ``[n_layers + 1, 101]``, percentiles 0..100 of the
  scalar projections ``h · v̂`` of the extraction examples' readouts at each layer (so a cap
  threshold can be given as a percentile); optional (absent in files from older versions);
* tensors ``vector.response_avg@<estimator>`` and ``projection_percentiles@<estimator>`` for
  the estimators other than mean-diff (``pca``, ``probe``; :mod:`personavec.core.estimators`),
  same shapes; optional (absent in files from older versions). ``vector.response_avg`` is always
  mean-diff in a file; :meth:`PersonaVector.with_estimator` swaps another one in;
* header metadata key ``personavec``: JSON of :class:`VectorMetadata`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from personavec import __version__
from personavec.core.estimators import (
    DEFAULT_ESTIMATOR,
    ESTIMATOR_READOUT,
    check_estimator,
    estimator_readout,
    requested_estimator,
)
from personavec.core.layers import LAYER_CONVENTION, check_layer
from personavec.core.vector_tables import PERCENTILES, config_fingerprint, projection_percentiles
from personavec.errors import SteeringError, VectorFileError
from personavec.store import atomic_write_bytes

FORMAT_VERSION = 1
METADATA_KEY = "personavec"
__all__ = ["PERCENTILES", "PersonaVector", "VectorMetadata", "config_fingerprint"]
__all__ += ["projection_percentiles"]
_MEAN_DIFF_IN_VIEW = f"{ESTIMATOR_READOUT}@{DEFAULT_ESTIMATOR}"
"""Where a :meth:`PersonaVector.with_estimator` view keeps mean-diff (never in a file)."""


class VectorMetadata(BaseModel):
    """Everything recorded about how a persona vector was made."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    trait: str
    model_id: str
    model_fingerprint: str
    hidden_size: int = Field(gt=0)
    n_layers: int = Field(gt=0, description="Decoder blocks; tensors have n_layers + 1 rows.")
    layer_convention: str = LAYER_CONVENTION
    readouts: list[str]
    default_readout: str = "response_avg"
    sample_counts: dict[str, int] = Field(default_factory=dict)
    judge: str | None = None
    thresholds: dict[str, float] | None = None
    recommended_layer: int | None = None
    recommended_coef: float | None = None
    calibration: dict[str, Any] | None = None
    estimator: str = DEFAULT_ESTIMATOR  # behind response_avg: mean-diff in every file
    estimators: dict[str, Any] = Field(default_factory=dict)  # other estimators → how made
    recommended_estimators: dict[str, str] = Field(default_factory=dict)  # use → estimator
    personavec_version: str = __version__
    created_at: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass
class PersonaVector:
    """Trait directions at every layer, for one or more readouts.

    Attributes:
        vectors: readout name → float32 ``[n_layers + 1, hidden]``; unnormalised
            (mean positive readout − mean negative readout).
        meta: provenance and recommendations.
        typical_norm: float32 ``[n_layers + 1]`` mean residual-stream L2 norm per layer, or None.
        projection_percentiles: float32 ``[n_layers + 1, 101]``; row ``L`` holds percentiles
            0, 1, …, 100 of ``h · v̂_L`` (hidden-state units) over the kept extraction examples'
            ``response_avg`` readouts at layer ``L``, both polarities, where ``v̂_L`` is the unit
            vector of the default readout; None in files without it.
        estimator_percentiles: estimator name → the same table for that estimator's vectors
            (``pca``, ``probe``; in a view made by :meth:`with_estimator` also ``mean-diff``).
    """

    vectors: dict[str, torch.Tensor]
    meta: VectorMetadata
    typical_norm: torch.Tensor | None = None
    projection_percentiles: torch.Tensor | None = None
    estimator_percentiles: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ---- access ---------------------------------------------------------------------------
    def readout(self, readout: str | None = None) -> torch.Tensor:
        """All layers of one readout, ``[n_layers + 1, hidden]``."""
        name = readout or self.meta.default_readout
        if name not in self.vectors:
            raise VectorFileError(
                f"vector has no readout {name!r}; it has {', '.join(sorted(self.vectors))}"
            )
        return self.vectors[name]

    def at(self, layer: int, readout: str | None = None) -> torch.Tensor:
        """The (unnormalised) vector at one layer, ``[hidden]``."""
        check_layer(layer, self.meta.n_layers)
        return self.readout(readout)[layer]

    def direction(self, layer: int, readout: str | None = None) -> torch.Tensor:
        """Unit vector at one layer, ``[hidden]``."""
        vector = self.at(layer, readout)
        norm = vector.norm()
        if norm == 0:
            raise VectorFileError(f"the vector at layer {layer} is zero; pick another layer")
        return vector / norm

    def with_estimator(self, name: str | None) -> PersonaVector:
        """This vector with ``name``'s vectors (and percentiles) as the ``response_avg`` readout,
        so every command steers, monitors and caps with that estimator; ``None``: unchanged.

        Saving the result writes the file form (mean-diff under ``response_avg``), so nothing
        is lost when a command writes a calibration back.
        """
        chosen = None if name is None else check_estimator(name)
        if chosen is None or chosen == self.meta.estimator:
            return self
        stored = self.canonical()
        if chosen == DEFAULT_ESTIMATOR:
            return stored
        if estimator_readout(chosen) not in stored.vectors:
            where = f" {self.path}" if self.path else ""
            raise VectorFileError(
                f"the vector{where} holds no {name!r} estimator (it was extracted before "
                "estimators were stored); re-run `personavec extract` on its run directory"
            )
        kept = stored.projection_percentiles
        return replace(
            stored,
            vectors={
                **stored.vectors,
                ESTIMATOR_READOUT: stored.vectors[estimator_readout(chosen)],
                _MEAN_DIFF_IN_VIEW: stored.vectors[ESTIMATOR_READOUT],
            },
            meta=stored.meta.model_copy(update={"estimator": chosen}),
            projection_percentiles=stored.estimator_percentiles.get(chosen),
            estimator_percentiles={
                **stored.estimator_percentiles,
                **({DEFAULT_ESTIMATOR: kept} if kept is not None else {}),
            },
        )

    def canonical(self) -> PersonaVector:
        """The file form: mean-diff under ``response_avg`` (undoes :meth:`with_estimator`)."""
        chosen = self.meta.estimator
        if chosen == DEFAULT_ESTIMATOR:
            return self
        vectors = dict(self.vectors)
        vectors[ESTIMATOR_READOUT] = vectors.pop(_MEAN_DIFF_IN_VIEW)
        percentiles = dict(self.estimator_percentiles)
        return replace(
            self,
            vectors=vectors,
            meta=self.meta.model_copy(update={"estimator": DEFAULT_ESTIMATOR}),
            projection_percentiles=percentiles.pop(DEFAULT_ESTIMATOR, None),
            estimator_percentiles=percentiles,
        )

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Check shapes against the metadata and reject NaN/inf."""
        rows, hidden = self.meta.n_layers + 1, self.meta.hidden_size
        if not self.vectors:
            raise VectorFileError("persona vector holds no tensors; re-extract it")
        for name, tensor in self.vectors.items():
            _check_tensor(f"readout {name!r}", tensor, (rows, hidden))
        if self.typical_norm is not None:
            _check_tensor("typical_norm", self.typical_norm, (rows,))
        percentiles = {"": self.projection_percentiles, **self.estimator_percentiles}
        for name, table in percentiles.items():
            if table is not None:
                what = f"projection_percentiles{name and '@' + name}"
                _check_tensor(what, table, (rows, PERCENTILES))
        if self.meta.default_readout not in self.vectors:
            raise VectorFileError(
                f"default readout {self.meta.default_readout!r} is missing from the file"
            )
        check_estimator(self.meta.estimator)

    def check_compatible(self, model: torch.nn.Module, *, force: bool = False) -> None:
        """Raise unless this vector fits ``model`` (hidden size, layer count, fingerprint).

        A hidden-size mismatch is always an error; layer count and fingerprint mismatches are
        allowed with ``force=True`` (e.g. a vector transferred between related models).
        """
        from personavec.core.layers import n_layers

        config: Any = getattr(model, "config", None)
        embeddings: Any = model.get_input_embeddings()  # type: ignore[operator]
        hidden = int(embeddings.weight.shape[1])
        if hidden != self.meta.hidden_size:
            raise VectorFileError(
                f"vector is for hidden size {self.meta.hidden_size} ({self.meta.model_id}) but "
                f"the model has {hidden}; extract a vector for this model"
            )
        if force:
            return
        layers = n_layers(model)
        if layers != self.meta.n_layers:
            raise VectorFileError(
                f"vector has {self.meta.n_layers} layers ({self.meta.model_id}) but the model has "
                f"{layers}; extract a vector for this model or pass --force"
            )
        fingerprint = config_fingerprint(config)
        if fingerprint != self.meta.model_fingerprint:
            raise VectorFileError(
                f"vector was extracted from {self.meta.model_id} (config fingerprint "
                f"{self.meta.model_fingerprint}), not this model ({fingerprint}); "
                "use a matching vector or pass --force"
            )

    def layer_or_recommended(self, layer: int | None = None) -> int:
        """``layer`` when given, else the recommended layer; checked against the vector's depth.

        The one "which layer when none is given" rule: every command and library entry point
        resolves an omitted layer here, with the same one-line error.
        """
        if layer is None:
            if self.meta.recommended_layer is None:
                raise SteeringError(
                    f"the {self.meta.trait!r} vector records no recommended layer; "
                    "pass a layer (--layer)"
                )
            layer = int(self.meta.recommended_layer)
        return check_layer(int(layer), self.meta.n_layers)

    def relative_scale(self, layer: int, readout: str | None = None) -> float:
        """Factor turning a relative coefficient into a raw one at ``layer``:
        ``typical_norm[layer] / ‖v_layer‖``, so ``coef_rel · factor · v`` has norm
        ``coef_rel · typical_norm``."""
        if self.typical_norm is None:
            raise VectorFileError(
                "this vector records no typical norms, so relative coefficients are unavailable; "
                "use a raw coefficient"
            )
        norm = float(self.at(layer, readout).norm())
        if norm == 0 or not math.isfinite(norm):
            raise VectorFileError(f"the vector at layer {layer} is zero; pick another layer")
        return float(self.typical_norm[layer]) / norm

    def projection_percentile(self, layer: int, q: float) -> float:
        """The ``q``-th percentile (0..100, linear between whole percentiles) of the extraction
        examples' projections ``h · v̂`` at ``layer``, in hidden-state units."""
        if self.projection_percentiles is None:
            raise VectorFileError(
                "this vector records no projection percentiles; re-extract with this version or "
                "pass a raw threshold"
            )
        check_layer(layer, self.meta.n_layers)
        if not 0.0 <= q <= 100.0:
            raise VectorFileError(f"percentile {q!r} is out of range; pass a value in 0..100")
        low = min(math.floor(q), PERCENTILES - 2)
        a, b = (float(x) for x in self.projection_percentiles[layer, low : low + 2])
        fraction = q - low
        return a if fraction == 0 else b if fraction == 1 else a + fraction * (b - a)

    # ---- I/O ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise the file form (:meth:`canonical`) to safetensors bytes."""
        if self.meta.estimator != DEFAULT_ESTIMATOR:
            return self.canonical().to_bytes()
        tensors = {
            f"vector.{name}": t.detach().to("cpu", torch.float32).contiguous()
            for name, t in self.vectors.items()
        }
        if self.typical_norm is not None:
            tensors["typical_norm"] = self.typical_norm.detach().to("cpu", torch.float32)
        if self.projection_percentiles is not None:
            percentiles = self.projection_percentiles.detach().to("cpu", torch.float32)
            tensors["projection_percentiles"] = percentiles.contiguous()
        for name, table in self.estimator_percentiles.items():
            tensors[f"projection_percentiles@{name}"] = table.detach().to("cpu", torch.float32)
        meta = self.meta.model_copy(update={"readouts": sorted(self.vectors)})
        return bytes(st_save(tensors, metadata={METADATA_KEY: meta.model_dump_json()}))

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (``.safetensors`` added when missing); return the path."""
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        self.validate()
        atomic_write_bytes(target, self.to_bytes())
        self.path = target
        return target

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> PersonaVector:
        """Parse safetensors bytes written by :meth:`to_bytes`."""
        try:
            tensors = st_load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
        except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as exc:
            raise VectorFileError(
                f"{source} is not a safetensors persona-vector file ({exc}); "
                "pass a file written by `personavec extract`"
            ) from exc
        raw_meta = (header.get("__metadata__") or {}).get(METADATA_KEY)
        if raw_meta is None:
            raise VectorFileError(
                f"{source} has no personavec metadata; pass a file written by personavec"
            )
        try:
            meta = VectorMetadata.model_validate_json(raw_meta)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise VectorFileError(
                f"{source} has invalid metadata ({where}: {first['msg']}); re-extract the vector"
            ) from exc
        if meta.format_version > FORMAT_VERSION:
            raise VectorFileError(
                f"{source} uses format version {meta.format_version}, newer than this "
                f"personavec understands ({FORMAT_VERSION}); upgrade personavec"
            )
        vectors = {
            key.removeprefix("vector."): value.to(torch.float32)
            for key, value in tensors.items()
            if key.startswith("vector.")
        }
        return cls(
            vectors=vectors,
            meta=meta,
            typical_norm=tensors.get("typical_norm"),
            projection_percentiles=tensors.get("projection_percentiles"),
            estimator_percentiles={
                key.removeprefix("projection_percentiles@"): value.to(torch.float32)
                for key, value in tensors.items()
                if key.startswith("projection_percentiles@")
            },
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: torch.nn.Module | None = None,
        force: bool = False,
        estimator: str | None = None,
    ) -> PersonaVector:
        """Read and validate a vector file; with ``model``, also check it fits that model.

        ``estimator`` (default ``$PERSONAVEC_ESTIMATOR``, which ``personavec --estimator`` sets;
        unset: the file as stored, i.e. mean-diff) selects the estimator every use of the
        returned vector sees (:meth:`with_estimator`).
        """
        chosen = requested_estimator(estimator)
        source = Path(path)
        if not source.is_file():
            raise VectorFileError(f"vector file not found: {source}; check the path")
        try:
            data = source.read_bytes()
        except OSError as exc:
            message = f"cannot read {source}: {exc.strerror}; check permissions"
            raise VectorFileError(message) from exc
        vector = cls.from_bytes(data, source=str(source))
        vector.path = source
        vector = vector.with_estimator(chosen)
        if model is not None:
            vector.check_compatible(model, force=force)
        return vector


def _check_tensor(what: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise VectorFileError(
            f"{what} has shape {tuple(tensor.shape)}, expected {shape}; the file is corrupt or "
            "was edited — re-extract the vector"
        )
    if not torch.isfinite(tensor).all():
        raise VectorFileError(f"{what} contains NaN or inf; re-extract the vector")
