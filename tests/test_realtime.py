"""Realtime mode: the same requests through the synchronous API, journaled so a crash never pays twice."""

from __future__ import annotations

import json
import random

import pytest

from batchpipe.providers.openai_wire import OpenAIWire

from conftest import REPO, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))
PRICES = {"offline": {"input": 1.0, "cached_input": 0.5, "output": 4.0}}


def realtime_calls(ws) -> list[str]:
    """custom_ids the local service answered synchronously, in order (its own usage log)."""
    log = ws.root / ".batchpipe" / "local" / "realtime.jsonl"
    return [json.loads(line)["custom_id"] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.workflow
def test_realtime_and_batch_results_differ_only_in_mode_batch_id_and_cost(tmp_path):
    runs = {}
    for mode in ("batch", "realtime"):
        ws = make_workspace(tmp_path / mode, ISSUES[:4])
        ws.config(mode=mode, prices=PRICES)
        ws.snakemake("--cores", "4", "results/all")
        runs[mode] = ws
    batch, realtime = runs["batch"].results(), runs["realtime"].results()
    assert sorted(batch) == sorted(realtime) and len(batch) == 8
    for name, doc in realtime.items():
        other = batch[name]
        assert doc["mode"] == "realtime" and other["mode"] == "batch"
        assert doc["batch_id"] == f"rt_{doc['chunk']}" and other["batch_id"].startswith("batch_")
        assert doc["cost_usd"]["charged"] == doc["cost_usd"]["realtime"] > 0
        assert (
            other["cost_usd"]["charged"] == other["cost_usd"]["batch"] == pytest.approx(doc["cost_usd"]["realtime"] / 2)
        )
        strip = lambda d: {k: v for k, v in d.items() if k not in ("mode", "batch_id", "cost_usd")}  # noqa: E731
        assert strip(doc) == strip(other)
    assert not runs["realtime"].local_batches()  # no provider batch at all
    assert len(realtime_calls(runs["realtime"])) == 8 and not realtime_calls(runs["batch"])
    # The same native files as a batch: output lines per custom_id, an empty errors file, a marker.
    for path in runs["realtime"].files("batch_results/*/*.output.jsonl"):
        twin = runs["batch"].root / path.relative_to(runs["realtime"].root)
        ids = lambda p: sorted(json.loads(line)["custom_id"] for line in p.read_text().splitlines())  # noqa: E731
        assert ids(path) == ids(twin)
        assert path.with_name(path.name.replace(".output.", ".errors.")).read_bytes() == b""
        marker = json.loads(path.with_name(path.name.replace(".output.jsonl", ".submitted.json")).read_text())
        assert marker["mode"] == "realtime" and marker["batch_id"].startswith("rt_")
    again = runs["realtime"].snakemake("--cores", "4", "results/all")
    assert "Nothing to be done" in again.output and len(realtime_calls(runs["realtime"])) == 8


@pytest.mark.workflow
def test_realtime_run_killed_mid_chunk_resumes_without_asking_answered_requests(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:6])
    ws.config(processors=["product-labeling"], mode="realtime", realtime_concurrency=1)
    killed = ws.snakemake("--cores", "1", "results/all", env={"BATCHPIPE_CRASH_AT": "realtime_after_3"}, check=False)
    assert killed.returncode != 0
    first = realtime_calls(ws)
    (journal,) = ws.files("batch_results/realtime/*.jsonl")
    journaled = [json.loads(line)["custom_id"] for line in journal.read_text().splitlines()]
    assert first == journaled and len(journaled) == 3
    assert not ws.files("batch_results/*/*.submitted.json") and not ws.results()

    ws.snakemake("--unlock")
    ws.snakemake("--cores", "4", "results/all")
    second = realtime_calls(ws)[len(first) :]
    assert len(second) == 3 and not set(second) & set(first)  # only the unanswered ones were asked
    assert len(ws.results()) == 6 and all(r["mode"] == "realtime" for r in ws.results().values())
    (ledger,) = ws.files("batch_results/ledger/*.jsonl")
    events = [json.loads(line)["event"] for line in ledger.read_text().splitlines()]
    assert events.count("prepared") == 1 and events.count("created") == 1
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output
    assert len(realtime_calls(ws)) == 6


class Scripted:
    """A provider whose synchronous answers are scripted per call."""

    name, wire = "scripted", OpenAIWire

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def complete(self, line):
        self.calls += 1
        return dict(self.answers.pop(0), custom_id=line["custom_id"])


def status_line(code: int, **extra) -> dict:
    body = {"error": {"type": "rate_limit_error" if code == 429 else "server_error", "message": "slow down"}}
    return {"response": {"status_code": code, "body": body}, "error": None, **extra}


def test_rate_limits_and_server_errors_back_off_with_jitter_and_honour_retry_after():
    from batchpipe.realtime import Backoff, Gate, ask

    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    ok = {"response": {"status_code": 200, "body": {"choices": [{"message": {"content": "{}"}}]}}, "error": None}
    provider = Scripted([status_line(429, retry_after=7), status_line(503), status_line(500), ok])
    backoff = Backoff(base=1.0, cap=60, tries=8, rng=random.Random(1))
    answer, tries = ask(provider, {"custom_id": "r1a1"}, backoff, Gate(sleep, lambda: clock[0]), lambda m: None)
    assert tries == 4 and answer["response"]["status_code"] == 200 and "retry_after" not in answer
    assert 7 <= slept[0] <= 7.25  # the server's retry-after
    assert 1 <= slept[1] <= 2 and 2 <= slept[2] <= 4  # exponential, jittered (second and third retry)

    permanent = Scripted([{"response": {"status_code": 400, "body": {"error": {"type": "invalid_request_error"}}}}])
    answer, tries = ask(permanent, {"custom_id": "r2a1"}, backoff, Gate(sleep, lambda: clock[0]), lambda m: None)
    assert tries == 1 and answer["response"]["status_code"] == 400

    stubborn = Scripted([status_line(429)] * 3)
    answer, tries = ask(
        stubborn,
        {"custom_id": "r3a1"},
        Backoff(tries=3, rng=random.Random(2)),
        Gate(sleep, lambda: clock[0]),
        lambda m: None,
    )
    assert tries == 3 and answer["response"]["status_code"] == 429  # journaled as a failure; retried next run


def test_local_provider_answers_one_line_and_applies_fault_rules(tmp_path):
    from batchpipe.providers.local import LocalProvider
    from batchpipe.providers.openai_wire import OpenAIWire
    from batchpipe.realtime import Backoff, Gate, ask
    from batchpipe.service.engine import BatchEngine

    engine = BatchEngine(
        tmp_path / "state", faults={"requests": [{"match": "r9", "kind": "error", "status": 429, "times": 2}]}
    )
    provider = LocalProvider(engine)
    body = {"model": "offline", "messages": [{"role": "user", "content": "Title: hello"}], "max_completion_tokens": 50}
    line = {"custom_id": "r9a1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    assert provider.complete(line)["response"]["status_code"] == 429
    answer, tries = ask(provider, line, Backoff(base=0.001, rng=random.Random(3)), Gate(), lambda m: None)
    outcome = OpenAIWire.parse_line(answer)
    assert tries == 2 and outcome.ok and outcome.text and outcome.usage["input_tokens"] > 0
    bad = provider.complete({"custom_id": "r8a1", "method": "POST", "url": "/v1/embeddings", "body": body})
    assert bad["response"]["status_code"] == 400
