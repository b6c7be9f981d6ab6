"""The garbage collector is paused while a large job runs, and as it was before once the last one ends."""

from __future__ import annotations

import gc
import json
import threading

import pytest

from batchpipe import workflow
from batchpipe.memory import collector_paused, run_paused


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_a_paused_job_runs_with_the_collector_off_and_leaves_it_on(collector_on):
    seen: list[bool] = []
    assert run_paused(lambda x: (seen.append(gc.isenabled()), x * 2)[1], 21) == 42
    assert seen == [False] and gc.isenabled()


def test_a_failed_job_leaves_the_collector_as_it_was(collector_on):
    def fails() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        run_paused(fails)
    assert gc.isenabled()
    gc.disable()
    try:
        run_paused(lambda: None)
        assert not gc.isenabled()  # a process that turned it off keeps it off
    finally:
        gc.enable()


def test_the_collector_stays_off_until_the_last_of_overlapping_jobs_ends(collector_on):
    inside, leave = threading.Event(), threading.Event()

    def long_job() -> None:
        with collector_paused():
            inside.set()
            leave.wait(10)

    other = threading.Thread(target=long_job)
    other.start()
    assert inside.wait(10)
    run_paused(lambda: None)  # ends while the other job still runs
    assert not gc.isenabled()
    leave.set()
    other.join(10)
    assert gc.isenabled()


def test_a_worker_process_job_runs_paused_and_its_exception_travels_back(collector_on):
    """What the download workers and the processes apart run (`_for_parent`)."""
    seen: list[bool] = []
    workflow._for_parent(lambda: seen.append(gc.isenabled()))
    assert seen == [False] and gc.isenabled()

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("cannot pickle")

    def fails() -> None:
        raise Unpicklable("the SDK said no")

    with pytest.raises(RuntimeError, match="Unpicklable: the SDK said no"):
        workflow._for_parent(fails)
    assert gc.isenabled()


def test_the_report_job_runs_paused(collector_on, monkeypatch, tmp_path):
    seen: list[bool] = []
    monkeypatch.setattr(workflow, "report_job", lambda *args: seen.append(gc.isenabled()))
    monkeypatch.setattr(workflow, "settings_of", lambda config: config)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({}))
    workflow.run_report({}, str(summary), {}, str(tmp_path / "log"))
    assert seen == [False] and gc.isenabled()
