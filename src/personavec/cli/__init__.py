"""The ``personavec`` command line: a thin layer over the library (one module per command group)."""

from personavec.cli.app import app, main

__all__ = ["app", "main"]
