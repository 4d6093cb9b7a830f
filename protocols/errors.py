"""Errors the harness defines. Each names what is wrong (the file and line for bad input)
and what to do; the command line prints the message as one line instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """Base of every error a user can act on (the CLI catches exactly these)."""


class ProtocolError(HarnessError, ValueError):
    """Bad input data or an impossible protocol request, located as precisely as we can."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class SettingInfeasible(ProtocolError):
    """Valid data on which one setting cannot be built (a cold pool or a user's negative
    pool too small for the candidate count): a table of several settings fails only that
    setting's cells (bench.runner), not the whole run."""


class OptionError(HarnessError, ValueError):
    """An option value outside its range (checked before any work starts)."""


class OutputError(HarnessError, ValueError):
    """An output path the harness may not write: it would delete or overwrite what the
    harness did not write, or it overlaps the input."""


class BusyError(OutputError):
    """Another process holds the lock on an output directory."""
