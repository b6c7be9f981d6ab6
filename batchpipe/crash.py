"""A test hook: kill this process at a named step, as a power cut or `kill -9` would.

`BATCHPIPE_CRASH_AT=after_create` (or before_upload, after_upload, before_marker, realtime_after_N)
makes the crash tests stop a run at that exact point; unset, it does nothing."""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "BATCHPIPE_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
