"""Errors raised for bad input: they name the file and, where there is one, the line."""

from __future__ import annotations

from pathlib import Path


class ProtocolError(ValueError):
    """Bad input data or an impossible protocol request, located as precisely as we can."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)
