"""The error a model directory that cannot be loaded raises, importable without torch (the command
line catches it for every subcommand)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A model directory that cannot be loaded; the message says what to fix."""
