"""A job's process and its memory: the garbage collector paused while a job makes its objects, what a job
freed given back to the system.

A run's jobs are threads of the Snakemake process (the plan, the summary, the report) or tasks of worker
processes (downloads, large submissions). Their data (plans, chunk tables, answers, results) are millions of
objects and hardly any reference cycle: reference counting frees them, while each collection their
allocations set off walks everything made so far (a tenth of a worker's time, more of a plan's). So the
collector is off while such a job runs and as it was before once the last one ends; cycles made meanwhile
(an exception's traceback) are collected then.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["collector_paused", "freeze_what_lasts", "give_back_memory", "run_paused"]


class _CollectorPause:
    """The collector off while any paused job of the process runs (the jobs of a run are threads of one
    process), and as it was before once the last one ends. Process-wide: cycles the other threads make
    meanwhile are collected once it is back on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs = 0
        self.was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self.lock:
            if self.jobs == 0:
                self.was_enabled = gc.isenabled()
                gc.disable()
            self.jobs += 1
        try:
            yield
        finally:
            with self.lock:
                self.jobs -= 1
                if self.jobs == 0 and self.was_enabled:
                    gc.enable()


collector_paused = _CollectorPause()


def run_paused(function: Any, *args: Any) -> Any:
    """`function(*args)` with the collector paused (a job in a worker process)."""
    with collector_paused():
        return function(*args)


def freeze_what_lasts() -> None:
    """Leave what the process holds when a run's first plan starts (Snakemake's workflow and DAG, the modules)
    out of every later garbage collection, which then walks only what the jobs made. Frozen objects that
    became garbage later would stay; those live for the run anyway. Once a process: a first plan run again in
    it (a retried job) leaves what the jobs made since to the collector."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


def give_back_memory(collect: bool = True) -> None:
    """What a large job in the Snakemake process freed goes back to the system (glibc's malloc_trim; elsewhere
    nothing), so that the process does not keep its peak. `collect=False` after a job that made no reference
    cycles (reference counting freed them): a full collection walks all of Snakemake's objects too."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
