"""Stopping a run promptly: every wait of a job (polling, backoff, the token budget) sleeps on one event,
which SIGINT/SIGTERM set, so a stop ends the waits at once instead of after the next poll (up to minutes).
Batches keep running at the provider; the next run resumes them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .errors import Interrupted

__all__ = ["STOP", "die_with_parent", "install", "on_stop", "sleep"]

STOP = threading.Event()
_CALLBACKS: list[Callable[[], None]] = []
_LOCK = threading.Lock()
_INSTALLED: list[bool] = []


def sleep(seconds: float) -> None:
    """Sleep, unless the run is asked to stop: then raise Interrupted."""
    if STOP.wait(max(seconds, 0.0)):
        raise Interrupted("the run was asked to stop; batches keep running at the provider, the next run resumes")


def on_stop(callback: Callable[[], None]) -> None:
    """Call `callback` (once) when the run is asked to stop, e.g. to end worker processes. A callback already
    waiting (an equal one: the same bound method) is not added again."""
    with _LOCK:
        if callback not in _CALLBACKS:
            _CALLBACKS.append(callback)


def stop() -> None:
    """Ask every wait to end, and run the stop callbacks."""
    STOP.set()
    with _LOCK:
        callbacks, _CALLBACKS[:] = list(_CALLBACKS), []
    for callback in callbacks:
        try:
            callback()
        except Exception:  # noqa: BLE001 - stopping is best effort, each callback on its own
            pass


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """In a worker process: exit as soon as `parent`, the process that started it, is gone (a `kill -9` of
    the run leaves no worker polling or writing behind). A daemon thread watches the parent's pid. The pid
    comes from the parent: a worker still starting when its parent died already has another one."""
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="batchpipe-parent-watch", daemon=True).start()


def install() -> None:
    """Chain a handler for SIGINT and SIGTERM in front of the current ones (call from the main thread;
    once per process)."""
    with _LOCK:
        if _INSTALLED:
            return
        _INSTALLED.append(True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)

        def handler(number: int, frame: FrameType | None, previous: Any = previous) -> None:
            stop()
            if callable(previous):
                previous(number, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(number, signal.SIG_DFL)
                signal.raise_signal(number)

        signal.signal(signum, handler)
