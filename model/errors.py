"""Errors a model or its serving memory raises for a bad input, importable without torch (the command
line catches them and prints their one-line message)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A model directory that cannot be loaded; the message says what to fix."""


class CacheSizeError(ValueError):
    """A KV cache bigger than this machine can allocate; the message says what to lower."""
