"""Interoperability with other runtimes: llama.cpp control vectors."""
