"""Errors a user can act on.

Every error raised for bad input is a :class:`PersonavecError` whose message is one line that
says what is wrong and what to do. The CLI prints it and exits with status 2.
"""

from __future__ import annotations


class PersonavecError(Exception):
    """A problem with the user's input or environment, with a one-line fix in the message."""


class ModelLoadError(PersonavecError):
    """A model spec could not be resolved or loaded."""


class VectorFileError(PersonavecError):
    """A persona-vector file is unreadable, corrupt, or does not fit the model."""


class SteeringError(PersonavecError):
    """A steering request is invalid (layer out of range, NaN coefficient, ...)."""


class TraitError(PersonavecError):
    """A trait name is unknown, or a trait file is missing, unreadable, or invalid."""
