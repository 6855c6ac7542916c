"""The package's one error root. Every error about what a user gave it (a file, a folder, a checkpoint, an
annotation, a data set, an option) derives from InputError and carries a one-line message naming the thing;
the command line prints it as `cfbi <command>: error: <message>` (cfbi_model.cli.main).

This module imports nothing, so that every layer (io and config included) can use it.
"""

from __future__ import annotations

__all__ = ["InputError", "UsageError"]


class InputError(RuntimeError):
    """Bad input: a missing, unreadable or malformed file or folder, or bad data inside it (exit code 1)."""


class UsageError(InputError):
    """A command-line mistake: a malformed option or options that contradict each other (exit code 2)."""
