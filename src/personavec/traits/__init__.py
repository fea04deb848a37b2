"""Trait artifacts: the schema, the shipped library, and loading / saving trait files."""

from personavec.traits.library import list_traits, load_trait, save_trait
from personavec.traits.schema import InstructionPair, TraitSpec

__all__ = ["InstructionPair", "TraitSpec", "list_traits", "load_trait", "save_trait"]
