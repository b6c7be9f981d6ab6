"""download.py: waiting with growing polls, saving a batch's output and error lines, realtime assembly."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from batchpipe import interrupt, workflow
from batchpipe.config import load_settings_file
from batchpipe.download import Waiter, batch_errors_as_lines, download_chunk, download_realtime
from batchpipe.errors import BatchRefused, Interrupted, ProviderError
from batchpipe.files import sha256_hex
from batchpipe.joblog import JobLog
from batchpipe.ledger import Downloaded, read_events, read_marker
from batchpipe.plan import build_plan
from batchpipe.providers import BatchStatus, make_provider
from batchpipe.submit import resubmit, send_chunk
from batchpipe.workflow import WORKERS_ENV, DownloadWorkers

from conftest import REPO, make_workspace

PROC = "product-labeling"
ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:3]  # issues 1, 10, 103: one chunk
ERROR_400 = {"match": "random free port", "kind": "error", "status": 400}  # issue 10's title


class Submitted:
    """A workspace with one chunk sent (as a batch or in realtime)."""

    def __init__(self, tmp_path: Path, **config):
        self.ws = make_workspace(tmp_path / "ws", ISSUES)
        self.ws.config(processors=[PROC], chunk_size=3, **config)
        self.settings = load_settings_file(self.ws.root / "config.yaml")
        self.plan = build_plan(self.settings)
        self.layout = self.plan.layout
        self.provider = make_provider(self.settings)
        self.log_path = tmp_path / "job.log"
        self.log = JobLog(self.log_path, echo=False)
        (self.chunk,) = self.plan.processors[PROC].new
        self.members = self.plan.processors[PROC].new[self.chunk].members
        send_chunk(self.plan, self.provider, PROC, self.chunk, self.log)
        self.marker = read_marker(self.layout.marker(PROC, self.chunk))

    def cid_of(self, number: int) -> str:
        return next(m.custom_id for m in self.members if m.paths[0].endswith(f"_issue_{number}.json"))

    def lines(self, kind: str) -> list[dict]:
        path = self.layout.output(PROC, self.chunk) if kind == "output" else self.layout.errors(PROC, self.chunk)
        return [json.loads(line) for line in path.read_text().splitlines()]

    def downloaded(self) -> Downloaded:
        event = read_events(self.layout, self.chunk)[-1]
        assert isinstance(event, Downloaded)
        return event

    def realtime_answers(self) -> int:
        path = self.layout.local_state_dir / "realtime.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0


# --- download_chunk --------------------------------------------------------------------------------


def test_download_chunk_saves_output_and_errors_and_records_their_hashes(tmp_path):
    sub = Submitted(tmp_path, local={"faults": {"requests": [ERROR_400]}})
    slept: list[float] = []
    waiter = Waiter(sub.provider, 1.0, 4.0, sub.log, sleep=slept.append)

    download_chunk(sub.settings, sub.provider, PROC, sub.chunk, sub.log, waiter=waiter)

    assert slept == []  # zero delays: the batch has ended at the first look
    output = sub.layout.output(PROC, sub.chunk).read_bytes()
    errors = sub.layout.errors(PROC, sub.chunk).read_bytes()
    assert sorted(line["custom_id"] for line in sub.lines("output")) == sorted({sub.cid_of(1), sub.cid_of(103)})
    assert all(line["response"]["status_code"] == 200 for line in sub.lines("output"))
    (error,) = sub.lines("errors")
    assert error["custom_id"] == sub.cid_of(10) and error["response"]["status_code"] == 400
    # exactly what the provider holds for the batch
    assert (output, errors) == sub.provider.download(sub.provider.retrieve(sub.marker.batch_id))

    event = sub.downloaded()
    assert event.batch_id == sub.marker.batch_id and event.status == "completed"
    assert (event.succeeded, event.failed, event.total) == (2, 1, 3)
    assert event.output_sha256 == sha256_hex(output) and event.errors_sha256 == sha256_hex(errors)
    assert event.batch_errors == []
    assert "saved 2 output and 1 error line(s)" in sub.log_path.read_text()


def test_a_refused_batch_is_created_again_in_a_waiting_run_once_the_budget_frees(tmp_path):
    """OpenAI's enqueued-token limit fails a batch as a whole after creating it: nothing ran, nothing is
    charged. A waiting run records the refusal, creates the chunk's batch again, and collects it."""
    sub = Submitted(
        tmp_path, poll_interval=0.01, local={"faults": {"batch": {"fail": "token_limit_exceeded", "times": 1}}}
    )
    refused = sub.marker.batch_id
    with pytest.raises(BatchRefused, match="token limit"):
        download_chunk(sub.settings, sub.provider, PROC, sub.chunk, sub.log)
    assert [e.kind for e in read_events(sub.layout, sub.chunk)][-1] == "refused"
    assert not sub.layout.output(PROC, sub.chunk).exists()  # nothing stored for a refused batch

    resubmit(sub.settings, sub.provider, PROC, sub.chunk, sub.log)
    marker = read_marker(sub.layout.marker(PROC, sub.chunk))
    assert marker.batch_id != refused  # the marker follows the ledger to the new batch
    download_chunk(sub.settings, sub.provider, PROC, sub.chunk, sub.log)
    assert len(sub.lines("output")) == len(marker.requests) and sub.lines("errors") == []
    kinds = [e.kind for e in read_events(sub.layout, sub.chunk)]
    assert kinds.count("created") == 2 and kinds.count("refused") == 1 and kinds[-1] == "downloaded"
    assert len(sub.ws.local_batches()) == 2  # the refused one ran nothing


def test_a_batch_that_failed_as_a_whole_answers_every_request_with_its_error(tmp_path):
    sub = Submitted(tmp_path, wait=False, local={"faults": {"batch": {"fail": "token_limit_exceeded"}}})

    download_chunk(sub.settings, sub.provider, PROC, sub.chunk, sub.log)

    assert sub.layout.output(PROC, sub.chunk).read_bytes() == b""
    lines = sub.lines("errors")
    assert [line["custom_id"] for line in lines] == list(sub.marker.requests)
    assert all(line["batch_failed"] and line["response"] is None for line in lines)
    assert {line["error"]["code"] for line in lines} == {"token_limit_exceeded"}
    event = sub.downloaded()
    assert event.status == "failed" and event.batch_errors[0]["code"] == "token_limit_exceeded"
    assert event.errors_sha256 == sha256_hex(sub.layout.errors(PROC, sub.chunk).read_bytes())


# --- the waiter ------------------------------------------------------------------------------------


class ScriptedProvider:
    """Answers `retrieve` from a script: a BatchStatus, or a ProviderError to raise."""

    def __init__(self, script: list[BatchStatus | ProviderError]):
        self.script = list(script)
        self.asked: list[str] = []

    def retrieve(self, batch_id: str) -> BatchStatus:
        self.asked.append(batch_id)
        step = self.script.pop(0)
        if isinstance(step, ProviderError):
            raise step
        return step


def running(done: int = 0) -> BatchStatus:
    return BatchStatus("b1", "in_progress", False, total=3, succeeded=done)


def test_waiter_polls_with_growing_waits_through_passing_outages():
    ended = BatchStatus("b1", "completed", True, total=3, succeeded=3)
    provider = ScriptedProvider([ProviderError("503"), ProviderError("503"), running(), running(), running(1), ended])
    slept: list[float] = []
    logged: list[str] = []

    status = Waiter(provider, 2.0, 6.0, logged.append, sleep=slept.append).wait("b1", "p/c")

    assert status is ended and provider.script == [] and provider.asked == ["b1"] * 6
    assert slept == [2.0, 3.0, 4.5, 6.0, 6.0]  # x1.5 each time, capped at max_poll_interval
    assert [line for line in logged if "status check failed (503)" in line] == [
        "p/c: status check failed (503); trying again in 2s",
        "p/c: status check failed (503); trying again in 3s",
    ]
    progress = [line.split(", ", 2)[:2] for line in logged if "batch b1" in line]
    # a line when the status changes (the repeated in_progress 0/3 is not printed twice) and at the end
    assert progress == [
        ["p/c: batch b1 in_progress", "0/3 done"],
        ["p/c: batch b1 in_progress", "1/3 done"],
        ["p/c: batch b1 completed", "3/3 done"],
    ]


def test_waiter_gives_up_after_max_failures_in_a_row():
    provider = ScriptedProvider([ProviderError(f"down {i}") for i in range(10)])
    slept: list[float] = []

    with pytest.raises(ProviderError, match="down 2"):
        Waiter(provider, 1.0, 10.0, lambda _: None, sleep=slept.append, max_failures=3).wait("b1", "p/c")

    assert len(provider.asked) == 3 and slept == [1.0, 1.5]


def test_waiter_counts_only_failures_in_a_row():
    ended = BatchStatus("b1", "completed", True, total=1, succeeded=1)
    script = [ProviderError("x"), running(), ProviderError("y"), running(), ProviderError("z"), ended]
    provider = ScriptedProvider(script)

    status = Waiter(provider, 1.0, 1.0, lambda _: None, sleep=lambda _: None, max_failures=2).wait("b1", "p/c")

    assert status is ended and provider.script == []


# --- batch-level errors ------------------------------------------------------------------------------


def test_batch_errors_as_lines_gives_each_request_the_batch_error():
    status = BatchStatus(
        "b1",
        "failed",
        True,
        errors=[{"code": "token_limit_exceeded", "message": "too many"}, {"code": "other", "message": "ignored"}],
    )
    lines = [json.loads(line) for line in batch_errors_as_lines(status, {"ra1": None, "rb1": None}).splitlines()]
    assert lines == [
        {
            "custom_id": "ra1",
            "response": None,
            "batch_failed": True,
            "error": {"code": "token_limit_exceeded", "message": "too many"},
        },
        {
            "custom_id": "rb1",
            "response": None,
            "batch_failed": True,
            "error": {"code": "token_limit_exceeded", "message": "too many"},
        },
    ]

    bare = BatchStatus("b2", "failed", True, errors=[{"code": None, "line": 3}])
    (line,) = [json.loads(x) for x in batch_errors_as_lines(bare, {"rc1": None}).splitlines()]
    assert line["error"] == {"code": "batch_failed", "message": ""}

    assert batch_errors_as_lines(status, {}) == b""


# --- realtime ------------------------------------------------------------------------------------------


def test_download_realtime_assembles_the_files_from_the_journal_without_asking_the_provider(tmp_path):
    sub = Submitted(tmp_path, mode="realtime", local={"faults": {"requests": [ERROR_400]}})
    asked = sub.realtime_answers()
    assert asked == 3

    download_realtime(sub.settings, PROC, sub.chunk, sub.log)

    assert sub.realtime_answers() == asked  # no provider call
    journal = [json.loads(line) for line in sub.layout.journal(sub.chunk).read_text().splitlines()]
    by_cid = {entry["custom_id"]: entry["line"] for entry in journal}
    output, errors = sub.lines("output"), sub.lines("errors")
    assert output == [by_cid[cid] for cid in sub.marker.requests if cid != sub.cid_of(10)]  # the table's order
    assert errors == [by_cid[sub.cid_of(10)]] and errors[0]["response"]["status_code"] == 400

    event = sub.downloaded()
    assert event.batch_id == f"rt_{sub.chunk}" and event.status == "completed"
    assert (event.succeeded, event.failed, event.total) == (2, 1, 3)
    assert event.output_sha256 == sha256_hex(sub.layout.output(PROC, sub.chunk).read_bytes())
    assert event.errors_sha256 == sha256_hex(sub.layout.errors(PROC, sub.chunk).read_bytes())


def test_download_realtime_counts_a_request_missing_from_the_journal_as_failed(tmp_path):
    sub = Submitted(tmp_path, mode="realtime")
    journal = sub.layout.journal(sub.chunk)
    entries = journal.read_text().splitlines()
    dropped = json.loads(entries[0])["custom_id"]
    journal.write_text("\n".join(entries[1:]) + "\n")

    download_realtime(sub.settings, PROC, sub.chunk, sub.log)

    assert dropped not in {line["custom_id"] for line in sub.lines("output")}
    assert len(sub.lines("output")) == 2 and sub.lines("errors") == []
    event = sub.downloaded()
    assert (event.succeeded, event.failed, event.total) == (2, 1, 3)
    assert "1 request(s) have no answer in the realtime journal" in sub.log_path.read_text()


@pytest.mark.parametrize(
    ("cores", "chunk_size", "env", "workers"),
    [
        (2, 30, None, 1),  # many small chunks: the scheduler keeps a core
        (2, "auto", None, 2),  # few large chunks: the downloads are the critical path
        (2, 1000, None, 2),
        (8, 30, None, 4),
        (8, "auto", None, 4),
        (2, "auto", "0", 0),  # BATCHPIPE_WORKERS decides
        (2, 30, "3", 3),
    ],
)
def test_download_workers_take_every_core_for_large_chunks(monkeypatch, cores, chunk_size, env, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if env is None:
        monkeypatch.delenv(WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKERS_ENV, env)
    settings = load_settings_file(REPO / "config.yaml", {"chunk_size": chunk_size})
    assert DownloadWorkers.count(settings) == workers


def test_a_submission_apart_ends_when_the_run_is_asked_to_stop(tmp_path):
    """A large chunk's submission runs in a process of its own: a stop of the run (SIGINT, SIGTERM) reaches it
    as SIGTERM, which ends its waits (the token budget) as in a job thread; the job says the run was stopped."""
    log = tmp_path / "submit.log"
    errors: list[BaseException] = []

    def job() -> None:
        try:
            workflow._APART.run(str(log), interrupt.sleep, 120)  # a submission waiting for the budget
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "in a process of its own" in log.read_text()):  # the process is running
            assert time.monotonic() < deadline, "the process did not start"
            time.sleep(0.05)
        interrupt.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], Interrupted), errors
        with pytest.raises(Interrupted):  # and nothing more starts
            workflow._APART.run(str(log), time.sleep, 0)
    finally:
        interrupt.STOP.clear()
        thread.join(30)
