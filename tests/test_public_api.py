"""The public API: every listed name resolves, lazily, to the object its module defines."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import personavec


@pytest.mark.parametrize("name", [n for n in personavec.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_module_object(name: str) -> None:
    module = importlib.import_module(personavec._EXPORTS[name])
    assert getattr(personavec, name) is getattr(module, name)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = personavec.nope  # type: ignore[attr-defined]


def test_import_personavec_does_not_import_torch() -> None:
    code = "import sys, personavec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
