"""collect.py: answers validated, one result per issue, every outcome in the manifest, stable bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

import batchpipe.collect as collect_module
from batchpipe.collect import AnswerSchema, parse_answer, write_result
from batchpipe.collect import collect_chunk as collect
from batchpipe.config import load_settings_file
from batchpipe.download import download_chunk, download_realtime
from batchpipe.joblog import JobLog
from batchpipe.ledger import read_marker
from batchpipe.manifest import read_manifest
from batchpipe.plan import build_plan
from batchpipe.pricing import cost_of
from batchpipe.providers import Outcome, make_provider
from batchpipe.request import read_index
from batchpipe.submit import send_chunk

from conftest import REPO, make_workspace

PROC = "product-labeling"
ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:3]  # issues 1, 10, 103: one chunk
RESULT_KEYS = {
    "issue_reference",
    "processor",
    "provider",
    "model",
    "requested_model",
    "mode",
    "simulated",  # the offline responder's answers (test_task_board.py)
    "batch_id",
    "chunk",
    "custom_id",
    "request_hash",
    "attempt",
    "usage",
    "cost_usd",
    "truncation",
    "analysis",
}
PRICES = {"offline": {"input": 2.0, "cached_input": 1.0, "output": 8.0}}


class Downloaded:
    """A workspace with one chunk sent and its outputs downloaded, not yet collected."""

    def __init__(self, tmp_path: Path, **config):
        self.ws = make_workspace(tmp_path / "ws", ISSUES)
        self.ws.config(processors=[PROC], chunk_size=3, prices=PRICES, **config)
        self.settings = load_settings_file(self.ws.root / "config.yaml")
        self.plan = build_plan(self.settings)
        self.layout = self.plan.layout
        provider = make_provider(self.settings)
        self.log_path = tmp_path / "job.log"
        self.log = JobLog(self.log_path, echo=False)
        (self.chunk,) = self.plan.processors[PROC].new
        send_chunk(self.plan, provider, PROC, self.chunk, self.log)
        if self.settings.mode == "realtime":
            download_realtime(self.settings, PROC, self.chunk, self.log)
        else:
            download_chunk(self.settings, provider, PROC, self.chunk, self.log)
        self.marker = read_marker(self.layout.marker(PROC, self.chunk))
        self.index = read_index(self.layout.index_file(PROC, self.chunk))

    def key(self, number: int) -> str:
        return f"bitcoin-core_gui_issue_{number}"

    def cid_of(self, number: int) -> str:
        return next(cid for cid, r in self.index.requests.items() if r.issue_keys == [self.key(number)])

    def result_path(self, number: int) -> Path:
        return self.layout.result(self.key(number), PROC)

    def edit_title(self, number: int):
        """Edit an issue's title; the plan made then."""
        path = self.ws.issues / f"{self.key(number)}.json"
        data = json.loads(path.read_text())
        data["issue"]["title"] += " (edited)"
        path.write_text(json.dumps(data))
        return build_plan(self.settings)


def test_collect_writes_one_result_per_issue_and_the_manifest(tmp_path):
    run = Downloaded(tmp_path)
    proc = run.settings.processor(PROC)
    validator = jsonschema.Draft202012Validator(proc.schema)

    manifest = collect(run.plan.settings, PROC, run.chunk, run.log)

    results = run.ws.results()
    assert sorted(results) == sorted(f"{run.key(n)}_{PROC}.json" for n in (1, 10, 103))
    for cid, record in run.index.requests.items():
        (issue,) = record.issues
        doc = results[f"{issue.key}_{PROC}.json"]
        assert set(doc) == RESULT_KEYS
        assert doc["issue_reference"] == {
            "org": "bitcoin-core",
            "repo": "gui",
            "number": issue.number,
            "title": issue.title,
            "url": issue.url,
            "updated_at": issue.updated_at,
            "ref": f"bitcoin-core/gui#{issue.number}",
            "source_file": issue.path,
            "kind": "issue",
        }
        assert doc["processor"] == {"name": PROC, "version": "1.0", "format": "json"}
        assert (doc["provider"], doc["requested_model"], doc["mode"]) == ("local", "offline", "batch")
        assert doc["model"] == "offline"  # what answered, from the output line: the model asked for
        assert (doc["batch_id"], doc["chunk"]) == (run.marker.batch_id, run.chunk)
        assert (doc["custom_id"], doc["request_hash"], doc["attempt"]) == (cid, record.request_hash, 1)
        assert set(doc["usage"]) == {"input_tokens", "output_tokens", "cached_input_tokens"}
        assert doc["usage"]["input_tokens"] > 0 and doc["usage"]["output_tokens"] > 0
        cost = cost_of(run.settings, doc["model"], doc["usage"])
        assert cost is not None and cost.batch > 0
        assert doc["cost_usd"] == {"batch": cost.batch, "realtime": cost.realtime, "charged": cost.batch}
        assert doc["truncation"] == {}
        assert list(validator.iter_errors(doc["analysis"])) == []

    written = read_manifest(run.layout.manifest(PROC, run.chunk))
    assert written == manifest
    assert (written.chunk, written.processor, written.batch_id, written.provider) == (
        run.chunk,
        PROC,
        run.marker.batch_id,
        "local",
    )
    assert (written.succeeded, written.failed) == (3, 0)
    assert list(written.requests) == list(run.index.requests)
    for cid, outcome in written.requests.items():
        assert outcome.ok and outcome.issues == run.index.requests[cid].issue_keys
        assert outcome.model == "offline" and outcome.usage["input_tokens"] > 0
    raw = json.loads(run.layout.manifest(PROC, run.chunk).read_text())
    assert "error" not in raw["requests"][run.cid_of(1)]  # a success carries no error fields


def test_invalid_json_and_schema_breaking_answers_fail_as_invalid_answer(tmp_path):
    faults = [
        {"match": "random free port", "kind": "invalid_json"},  # issue 10's title
        {"match": "Accessibility", "kind": "schema_violation"},  # issue 103's title
    ]
    run = Downloaded(tmp_path, local={"faults": {"requests": faults}})

    manifest = collect(run.plan.settings, PROC, run.chunk, run.log)

    assert list(run.ws.results()) == [f"{run.key(1)}_{PROC}.json"]
    assert (manifest.succeeded, manifest.failed) == (1, 2)
    bad_json, bad_schema = manifest.requests[run.cid_of(10)], manifest.requests[run.cid_of(103)]
    for outcome in (bad_json, bad_schema):
        assert not outcome.ok and outcome.error_type == "invalid_answer" and outcome.retryable
        assert outcome.counts_as_attempt and outcome.usage["output_tokens"] > 0  # it was paid for
    assert bad_json.error.startswith("invalid answer: answer is not valid JSON")
    assert bad_schema.error.startswith("invalid answer: answer breaks the schema at (top level)")
    assert read_manifest(run.layout.manifest(PROC, run.chunk)) == manifest
    log = run.log_path.read_text()
    assert f"{run.cid_of(10)} ({run.key(10)}) failed: invalid answer" in log
    assert "1 succeeded, 2 failed, 1 result file(s) written" in log


def test_request_errors_keep_their_type_and_a_token_limit_is_not_an_attempt(tmp_path):
    run = Downloaded(
        tmp_path, local={"faults": {"requests": [{"match": "random free port", "kind": "error", "status": 400}]}}
    )
    manifest = collect(run.plan.settings, PROC, run.chunk, run.log)
    failed = manifest.requests[run.cid_of(10)]
    assert failed.error_type == "invalid_request_error" and failed.retryable is False and failed.counts_as_attempt

    run = Downloaded(tmp_path / "limit", wait=False, local={"faults": {"batch": {"fail": "token_limit_exceeded"}}})
    manifest = collect(run.plan.settings, PROC, run.chunk, run.log)
    assert manifest.succeeded == 0 and run.ws.results() == {}
    for outcome in manifest.requests.values():
        assert outcome.error_type == "token_limit_exceeded" and outcome.counts_as_attempt is False
    raw = json.loads(run.layout.manifest(PROC, run.chunk).read_text())
    assert all(r["counts_as_attempt"] is False for r in raw["requests"].values())


def test_a_missing_output_line_is_a_failure_named_missing(tmp_path):
    run = Downloaded(tmp_path)
    output = run.layout.output(PROC, run.chunk)
    output.write_text("".join(line + "\n" for line in output.read_text().splitlines() if run.cid_of(103) not in line))

    manifest = collect(run.plan.settings, PROC, run.chunk, run.log)

    missing = manifest.requests[run.cid_of(103)]
    assert not missing.ok and missing.error_type == "missing" and "no line for this request" in missing.error
    assert not run.result_path(103).exists() and run.result_path(1).exists()


def test_collect_again_gives_the_same_bytes_and_restores_a_deleted_result(tmp_path):
    run = Downloaded(tmp_path)
    collect(run.plan.settings, PROC, run.chunk, run.log)
    first = {name: path.read_bytes() for name, path in ((p.name, p) for p in run.ws.files("data/results/*.json"))}
    manifest_bytes = run.layout.manifest(PROC, run.chunk).read_bytes()
    run.result_path(10).unlink()

    collect(run.settings, PROC, run.chunk, run.log)  # from the files on disk only

    assert {p.name: p.read_bytes() for p in run.ws.files("data/results/*.json")} == first
    assert run.layout.manifest(PROC, run.chunk).read_bytes() == manifest_bytes


def test_collection_is_a_function_of_the_downloads_not_of_the_issue_files(tmp_path):
    """An issue edited since its request still gets the answer that was paid for (until a newer request's
    answer owns the file: `_Owners`); the plan sends the edited request, the summary counts it pending."""
    run = Downloaded(tmp_path)
    replanned = run.edit_title(1)
    assert replanned.current_hash(run.key(1), PROC) != run.index.requests[run.cid_of(1)].request_hash

    manifest = collect(replanned.settings, PROC, run.chunk, run.log)

    assert manifest.succeeded == 3
    assert run.result_path(1).exists() and run.result_path(10).exists() and run.result_path(103).exists()
    assert run.key(1) not in build_plan(run.settings).processors[PROC].sources  # its current request is not done


@pytest.mark.parametrize("listed", ["looked at each", "listed, there", "listed before it was made"])
def test_an_older_chunk_collected_late_never_overwrites_a_newer_answer(tmp_path, monkeypatch, listed):
    """Issue 1 edited and sent again in a second chunk, collected first; the first chunk, collected after,
    writes issues 10 and 103 and leaves issue 1's newer answer, however the collection learnt the file was
    there (a stat each, the folder's listing, or a listing made before the newer collection wrote it)."""
    run = Downloaded(tmp_path)
    replanned = run.edit_title(1)
    (second,) = replanned.processors[PROC].new
    provider = make_provider(run.settings)
    send_chunk(replanned, provider, PROC, second, run.log)
    download_chunk(run.settings, provider, PROC, second, run.log)
    collect(run.settings, PROC, second, run.log)
    newer = run.result_path(1).read_bytes()
    assert json.loads(newer)["chunk"] == second
    if listed != "looked at each":
        monkeypatch.setattr(collect_module, "LISTED_FROM", 1)
    if listed == "listed before it was made":
        monkeypatch.setattr(collect_module, "_existing_results", lambda layout, requests: lambda path: False)

    manifest = collect(run.settings, PROC, run.chunk, run.log)

    assert run.result_path(1).read_bytes() == newer
    assert json.loads(run.result_path(10).read_bytes())["chunk"] == run.chunk
    assert sorted(manifest.results) == sorted(f"{run.key(n)}_{PROC}.json" for n in (10, 103))
    assert not list(run.layout.results_dir.glob(".*"))  # no temporary left


def test_realtime_results_say_so_and_are_charged_the_realtime_price(tmp_path):
    run = Downloaded(tmp_path, mode="realtime")
    collect(run.plan.settings, PROC, run.chunk, run.log)
    doc = json.loads(run.result_path(1).read_text())
    assert doc["mode"] == "realtime" and doc["batch_id"] == f"rt_{run.chunk}"
    cost = doc["cost_usd"]
    assert cost["charged"] == cost["realtime"] == pytest.approx(2 * cost["batch"]) and cost["batch"] > 0


# --- parse_answer --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_settings():
    return load_settings_file(REPO / "config.yaml")


VALID = {
    "recommended_labels": [{"label": "Bug", "confidence": 0.9, "reasoning": "It crashes."}],
    "recommendation_confidence": 0.8,
    "current_labels_assessment": [],
    "summary": "The GUI crashes.",
    "reasoning": "A crash is a bug.",
}


@pytest.mark.parametrize(
    "processor, outcome, ok, expected",
    [
        (
            "issue-summary",
            Outcome("c", True, text="## Summary\nIt crashes."),
            True,
            {"text": "## Summary\nIt crashes."},
        ),
        ("issue-summary", Outcome("c", True, text="   \n"), False, "empty answer"),
        ("issue-summary", Outcome("c", True, data={"a": 1}), True, {"text": '{"a": 1}'}),
        (PROC, Outcome("c", True, text=json.dumps(VALID)), True, VALID),
        (PROC, Outcome("c", True, text=f"```json\n{json.dumps(VALID, indent=2)}\n```"), True, VALID),
        (PROC, Outcome("c", True, text=f"```\n{json.dumps(VALID)}\n```\n"), True, VALID),
        (PROC, Outcome("c", True, data=VALID), True, VALID),  # an Anthropic tool's input
        (PROC, Outcome("c", True, text='{"summary": "cut off'), False, "answer is not valid JSON (Unterminated string"),
        (PROC, Outcome("c", True, text="Sure! Here are the labels."), False, "answer is not valid JSON"),
        (
            PROC,
            Outcome("c", True, text=json.dumps({**VALID, "recommendation_confidence": 1.5})),
            False,
            "answer breaks the schema at recommendation_confidence: 1.5 is greater than the maximum of 1",
        ),
        (
            PROC,
            Outcome(
                "c",
                True,
                text=json.dumps(
                    {**VALID, "recommended_labels": [{"label": "Kitchen sink", "confidence": 0.5, "reasoning": "r"}]}
                ),
            ),
            False,
            "answer breaks the schema at recommended_labels/0/label: 'Kitchen sink' is not one of",
        ),
        (PROC, Outcome("c", True, data=[]), False, "answer breaks the schema at (top level)"),
    ],
)
def test_parse_answer(repo_settings, processor, outcome, ok, expected):
    proc = repo_settings.processor(processor)
    schema = AnswerSchema(proc.schema) if proc.schema else None

    answer = parse_answer(outcome, proc, schema)

    assert answer.ok is ok
    if ok:
        assert answer.value == expected and answer.problem == ""
    else:
        assert answer.problem.startswith(expected) and answer.value is None


def test_a_valid_answer_is_checked_by_the_compiled_schema_alone(repo_settings):
    schema = AnswerSchema(repo_settings.processor(PROC).schema)
    assert schema.fast is not None

    class Unused:
        def iter_errors(self, value):
            raise AssertionError("jsonschema was asked about a valid answer")

    schema.reference = Unused()
    assert schema.problem(VALID) is None


@pytest.mark.parametrize(
    "schema, value, problem",
    [
        # a $ref that only a fetch could resolve: no fetch; jsonschema alone decides (and cannot resolve it)
        ({"properties": {"a": {"$ref": "http://127.0.0.1:9/none.json"}}}, {"b": 1}, None),
        ({"type": "integer", "maximum": 2**80}, 2**70, None),  # beyond 64 bits
        ({"type": "string", "maxLength": 3}, "\ud800", None),  # a lone surrogate it cannot take: jsonschema decides
        ({"type": "number", "multipleOf": 0.01}, 0.07, "answer breaks the schema at (top level): "),  # float rounding
        ({"type": "string", "pattern": "^\\S+$"}, "a\x1c", "answer breaks the schema at (top level): "),  # Python's re
        ({"type": "integer", "maximum": 2**80}, 2**81, "answer breaks the schema at (top level): "),
        ({"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": True}, "answer breaks the schema at n"),
        ({"type": "string", "format": "email"}, "not an address", None),  # formats are not asserted, as before
    ],
)
def test_answer_schema_gives_jsonschemas_verdicts_and_words(schema, value, problem):
    checked = AnswerSchema(schema).problem(value)
    reference = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    assert (checked is None) is (reference is None) is (problem is None)
    if problem is not None:
        assert checked.startswith(problem) and checked.endswith(reference.message[:200])


# --- write_result ---------------------------------------------------------------------------------------


def test_write_result_leaves_identical_bytes_alone(tmp_path):
    path = tmp_path / "results" / "x_issue_1_p.json"
    doc = {"analysis": {"text": "é"}, "attempt": 1}
    write_result(path, doc)
    data, before = path.read_bytes(), path.stat()
    assert json.loads(data) == doc
    past = before.st_mtime_ns - 5_000_000_000
    os.utime(path, ns=(past, past))  # so that any rewrite would show

    write_result(path, dict(reversed(list(doc.items()))))  # the same document: the same bytes

    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, past) and path.read_bytes() == data

    write_result(path, {**doc, "attempt": 2})
    assert json.loads(path.read_bytes())["attempt"] == 2 and path.stat().st_mtime_ns != past


def test_a_result_that_cannot_be_written_stops_no_other(tmp_path):
    run = Downloaded(tmp_path)
    blocked = run.result_path(10)
    blocked.mkdir(parents=True)  # a folder where the result file goes: the write fails
    lines: list[str] = []

    manifest = collect(run.plan.settings, PROC, run.chunk, lines.append)

    assert run.result_path(1).is_file() and run.result_path(103).is_file()
    assert manifest.succeeded == 3  # paid and answered: the answer stays, only its view is missing
    assert blocked.name not in manifest.results and run.result_path(1).name in manifest.results
    [line] = [x for x in lines if "could not be written" in x]
    assert f"1 result file(s) could not be written, e.g. '{blocked.name}'" in line
    blocked.rmdir()
    collect(run.plan.settings, PROC, run.chunk, lines.append)  # fixed: written on the next collection
    assert run.result_path(10).is_file()
