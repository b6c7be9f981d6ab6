"""A job's log: lines appended to its log file, and echoed to stderr for a person watching."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .files import making_folder

__all__ = ["JobLog"]


class JobLog:
    """A job's log file; lines also go to stderr so a person watching sees progress."""

    def __init__(self, path: str | Path | None, echo: bool = True):
        self.path = Path(path) if path else None
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        path = self.path
        if path is not None:
            with making_folder(path, lambda: open(path, "a", encoding="utf-8")) as handle:
                handle.write(line + "\n")
        if self.echo:
            print(message, file=sys.stderr, flush=True)

    def quiet(self) -> JobLog:
        """The same log file, without the echo."""
        return JobLog(self.path, echo=False)
