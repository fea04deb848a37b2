"""personavec: persona vectors for language models — extract, steer, monitor, guard.

The public API, importable from the package itself (``from personavec import SteeringSetting``);
names load on first use, so ``import personavec`` stays fast. Layers are numbered by the
block-output convention (0 = embedding output, L = output of decoder block L).

* Core: :func:`load_model`, :func:`chat_messages`, :class:`PersonaVector`,
  :class:`SteeringSetting` (the one steering setting; ``.apply(model)``), :func:`parse_layers`,
  :func:`parse_steer_spec`, :class:`Intervention`, :func:`steer`, :func:`install_hooks`,
  :func:`teacher_forcing`, :func:`capture`, :class:`Example`, :func:`project`.
* Monitoring: :class:`TokenMonitor`, :class:`MonitorSpec`, :class:`ConditionalSteering`,
  :func:`generate_monitored`, :class:`ReadingLog`.
* Generation: :class:`HFEngine`, :class:`SamplingConfig`, :class:`GenerationRequest`.
* Judges: :func:`make_judge`.
* Pipelines: :func:`extract`, :func:`evaluate_steering`, :func:`sweep`, :func:`screen`.
* Serving: :class:`ServeConfig`, :func:`create_app` (the OpenAI-compatible app),
  :func:`serve_in_thread`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_model": "personavec.core.models",
    "chat_messages": "personavec.core.models",
    "LoadedModel": "personavec.core.models",
    "PersonaVector": "personavec.core.vector",
    "SteeringSetting": "personavec.core.setting",
    "parse_layers": "personavec.core.setting",
    "parse_steer_spec": "personavec.core.setting",
    "Intervention": "personavec.core.steering",
    "steer": "personavec.core.steering",
    "install_hooks": "personavec.core.hooks",
    "teacher_forcing": "personavec.core.hooks",
    "capture": "personavec.core.capture",
    "Example": "personavec.core.capture",
    "project": "personavec.core.projection",
    "TokenMonitor": "personavec.monitor.monitor",
    "MonitorSpec": "personavec.monitor.specs",
    "ConditionalSteering": "personavec.monitor.specs",
    "generate_monitored": "personavec.monitor.generate",
    "ReadingLog": "personavec.monitor.log",
    "HFEngine": "personavec.engines.generation",
    "SamplingConfig": "personavec.engines.generation",
    "GenerationRequest": "personavec.engines.generation",
    "make_judge": "personavec.judges.factory",
    "extract": "personavec.pipeline.extract",
    "evaluate_steering": "personavec.pipeline.evaluate",
    "sweep": "personavec.pipeline.sweep",
    "screen": "personavec.screening.api",
    "ServeConfig": "personavec.serve.config",
    "create_app": "personavec.serve.app",
    "serve_in_thread": "personavec.serve.server",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'personavec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
