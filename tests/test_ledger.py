"""ledger.py: the events and their JSON, reading and appending, a chunk's history, the marker."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from batchpipe import ledger
from batchpipe.config import Settings, load_settings
from batchpipe.files import canonical_json, pretty_json, table_json
from batchpipe.layout import Layout
from batchpipe.ledger import (
    Archived,
    CancelRequested,
    ChunkHistory,
    CreateAbandoned,
    Created,
    CreateIntent,
    Downloaded,
    Event,
    Marker,
    Prepared,
    RetryRequested,
    StatusSeen,
    Unarchived,
    Uploaded,
    UploadIntent,
    append,
    claimed_batches,
    read_chunks,
    read_events,
    write_marker,
)
from batchpipe.manifest import RequestOutcome
from batchpipe.request import IssueRef, RequestRecord

CONFIG = {
    "processors": ["note"],
    "processor_definitions": {"note": {"format": "text", "prompt": "Note on $title", "models": {"local": "offline"}}},
}

ISSUE = {
    "key": "o_r_issue_1",
    "ref": "o/r#1",
    "path": "data/issues/x.json",
    "org": "o",
    "repo": "r",
    "number": 1,
    "title": "t",
    "url": "",
    "updated_at": "",
}
RECORD = {"request_hash": "abc", "attempt": 1, "issues": [ISSUE], "truncation": {}, "est_tokens": 10}
TABLE = {"rabca1": RequestRecord("abc", 1, [IssueRef(**ISSUE)], {}, 10)}


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return load_settings(CONFIG, root=tmp_path_factory.mktemp("settings"))  # validated once: it takes 0.1 s


@pytest.fixture
def layout(settings, tmp_path) -> Layout:
    return Layout(dataclasses.replace(settings, root=tmp_path))


def prepared(chunk: str = "c1", processor: str = "p", **fields: Any) -> Prepared:
    values: dict[str, Any] = dict(
        time=1.0,
        provider="local",
        model="m",
        request_count=1,
        est_tokens=10,
        content_hash="h",
        request_file=f"batch_requests/{processor}/{chunk}.jsonl",
        group="g",
        requests=TABLE,
    )
    values.update(fields)
    return Prepared(chunk=chunk, processor=processor, **values)


def history(*events: Event, chunk: str = "c1") -> ChunkHistory:
    return ChunkHistory.of(chunk, [prepared(chunk), *events])


# --- every event kind's JSON ---------------------------------------------------------------------------

CASES: list[tuple[Event, dict[str, Any]]] = [
    (
        prepared(),
        {
            "event": "prepared",
            "chunk": "c1",
            "time": 1.0,
            "processor": "p",
            "provider": "local",
            "model": "m",
            "request_count": 1,
            "est_tokens": 10,
            "content_hash": "h",
            "request_file": "batch_requests/p/c1.jsonl",
            "group": "g",
            "requests": {"rabca1": RECORD},
        },
    ),
    (
        prepared(mode="realtime", rebuilt_from="marker", group=None),
        {
            "event": "prepared",
            "chunk": "c1",
            "time": 1.0,
            "processor": "p",
            "provider": "local",
            "model": "m",
            "request_count": 1,
            "est_tokens": 10,
            "content_hash": "h",
            "request_file": "batch_requests/p/c1.jsonl",
            "group": None,
            "requests": {"rabca1": RECORD},
            "mode": "realtime",
            "rebuilt_from": "marker",
        },
    ),
    (UploadIntent(chunk="c1", time=2.0), {"event": "upload_intent", "chunk": "c1", "time": 2.0}),
    (
        Uploaded(chunk="c1", time=3.0, input_file_id="file-1"),
        {"event": "uploaded", "chunk": "c1", "time": 3.0, "input_file_id": "file-1"},
    ),
    (
        CreateIntent(chunk="c1", time=4.0, input_file_id="file-1", request_count=2, created_after=3.5),
        {
            "event": "create_intent",
            "chunk": "c1",
            "time": 4.0,
            "input_file_id": "file-1",
            "request_count": 2,
            "created_after": 3.5,
        },
    ),
    (
        CreateAbandoned(chunk="c1", time=5.0, reason="token_limit"),
        {"event": "create_abandoned", "chunk": "c1", "time": 5.0, "reason": "token_limit"},
    ),
    (
        Created(chunk="c1", time=6.0, batch_id="batch_1", created_at=1700000000, input_file_id="file-1"),
        {
            "event": "created",
            "chunk": "c1",
            "time": 6.0,
            "batch_id": "batch_1",
            "created_at": 1700000000,
            "input_file_id": "file-1",
        },
    ),
    (
        Created(
            chunk="c1",
            time=6.0,
            batch_id="batch_1",
            created_at=None,
            input_file_id=None,
            status="validating",
            adopted=True,
            mode="realtime",
            rebuilt_from="marker",
        ),
        {
            "event": "created",
            "chunk": "c1",
            "time": 6.0,
            "batch_id": "batch_1",
            "created_at": None,
            "input_file_id": None,
            "status": "validating",
            "adopted": True,
            "mode": "realtime",
            "rebuilt_from": "marker",
        },
    ),
    (
        StatusSeen(chunk="c1", time=7.0, batch_id="batch_1", status="in_progress", succeeded=1, failed=0, total=2),
        {
            "event": "status",
            "chunk": "c1",
            "time": 7.0,
            "batch_id": "batch_1",
            "status": "in_progress",
            "ended": False,
            "succeeded": 1,
            "failed": 0,
            "total": 2,
        },
    ),
    (
        Downloaded(
            chunk="c1",
            time=8.0,
            batch_id="batch_1",
            status="completed",
            succeeded=1,
            failed=1,
            total=2,
            output_sha256="o" * 64,
            errors_sha256="e" * 64,
            batch_errors=[{"code": "token_limit_exceeded", "message": "too many"}],
        ),
        {
            "event": "downloaded",
            "chunk": "c1",
            "time": 8.0,
            "batch_id": "batch_1",
            "status": "completed",
            "succeeded": 1,
            "failed": 1,
            "total": 2,
            "output_sha256": "o" * 64,
            "errors_sha256": "e" * 64,
            "batch_errors": [{"code": "token_limit_exceeded", "message": "too many"}],
        },
    ),
    (
        ledger.Refused(chunk="c1", time=8.5, batch_id="batch_1", reason="Enqueued token limit reached"),
        {
            "event": "refused",
            "chunk": "c1",
            "time": 8.5,
            "batch_id": "batch_1",
            "reason": "Enqueued token limit reached",
        },
    ),
    (
        RetryRequested(chunk="c1", time=9.0, custom_ids=["rabca1"]),
        {"event": "retry_requested", "chunk": "c1", "time": 9.0, "custom_ids": ["rabca1"]},
    ),
    (
        CancelRequested(chunk="c1", time=10.0, batch_id="batch_1"),
        {"event": "cancel_requested", "chunk": "c1", "time": 10.0, "batch_id": "batch_1"},
    ),
    (
        Archived(chunk="c1", time=11.0, paths=["batch_results/p/c1.results.json"]),
        {"event": "archived", "chunk": "c1", "time": 11.0, "paths": ["batch_results/p/c1.results.json"]},
    ),
    (
        Unarchived(chunk="c1", time=12.0, reason="batchpipe collect"),
        {"event": "unarchived", "chunk": "c1", "time": 12.0, "reason": "batchpipe collect"},
    ),
]


@pytest.mark.parametrize(("event", "expected"), CASES, ids=[f"{e.kind}-{i}" for i, (e, _) in enumerate(CASES)])
def test_event_json_round_trip(event, expected):
    assert event.to_json() == expected
    back = Event.from_json(expected)
    assert type(back) is type(event)
    assert back == event
    assert back.extra == {}
    assert back.to_json() == expected


def test_every_event_kind_is_covered():
    assert {e.kind for e, _ in CASES} == set(ledger.EVENTS)
    assert all(ledger.EVENTS[kind].kind == kind for kind in ledger.EVENTS)


def test_event_time_defaults_to_now_in_milliseconds():
    event = UploadIntent(chunk="c1")
    assert event.time > 1.6e9
    assert round(event.time, 3) == event.time


def test_from_json_fills_defaults_of_missing_fields():
    event = Event.from_json({"event": "status", "chunk": "c1"})
    assert event == StatusSeen(chunk="c1", time=0.0)
    assert event.to_json() == {
        "event": "status",
        "chunk": "c1",
        "time": 0.0,
        "batch_id": None,
        "status": None,
        "ended": False,
        "succeeded": 0,
        "failed": 0,
        "total": 0,
    }


def test_unknown_fields_are_kept_in_extra_and_written_back():
    data = {
        "event": "created",
        "chunk": "c1",
        "time": 6.0,
        "batch_id": "batch_1",
        "created_at": None,
        "input_file_id": None,
        "region": "eu",
        "cost": {"usd": 0.5},
    }
    event = Event.from_json(data)
    assert isinstance(event, Created)
    assert event.batch_id == "batch_1"
    assert event.extra == {"region": "eu", "cost": {"usd": 0.5}}
    assert event.to_json() == data


def test_unknown_fields_of_prepared_survive_append_and_read(layout):
    data = CASES[0][1] | {"priority": 3}
    append(layout, Event.from_json(data))
    [event] = read_events(layout, "c1")
    assert isinstance(event, Prepared) and event.extra == {"priority": 3}
    assert json.loads(layout.ledger("c1").read_text()) == data


def test_unknown_event_kind_is_kept_verbatim(layout):
    data = {"event": "quota_warning", "chunk": "c1", "time": 3.0, "batch_id": "batch_9", "status": "failed"}
    event = Event.from_json(data)
    assert isinstance(event, ledger.Unknown)
    assert not isinstance(event, (Created, StatusSeen, Downloaded))
    assert event.to_json() == data
    append(layout, event)
    assert json.loads(layout.ledger("c1").read_text()) == data
    [back] = read_events(layout, "c1")
    assert isinstance(back, ledger.Unknown) and back.to_json() == data


def test_unknown_event_kind_is_never_acted_on(layout):
    lines = [
        prepared().to_json(),
        Created(chunk="c1", time=2.0, batch_id="batch_1", status="in_progress").to_json(),
        {"event": "created_v2", "chunk": "c1", "time": 3.0, "batch_id": "batch_9", "status": "failed"},
        {"event": "batch_ended", "chunk": "c1", "time": 4.0, "batch_id": "batch_9", "ended": True},
        {"event": "archived_v2", "chunk": "c1", "time": 5.0, "paths": ["x"]},
    ]
    for line in lines:
        append(layout, Event.from_json(line))
    hist = ChunkHistory.of("c1", read_events(layout, "c1"))
    assert hist.batch_id == "batch_1"
    assert hist.known_status == "in_progress"
    assert hist.known_ended is False
    assert hist.archived is False
    assert hist.in_flight() is True
    assert claimed_batches(layout) == {"batch_1"}
    assert [json.loads(line) for line in layout.ledger("c1").read_text().splitlines()] == lines


# --- append and read_events -----------------------------------------------------------------------------


def test_append_then_read_events_in_order(layout):
    events = [e for e, _ in CASES]
    for event in events:
        assert append(layout, event) is event
    assert read_events(layout, "c1") == events
    text = layout.ledger("c1").read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert len(lines) == len(events)
    for line, (_, expected) in zip(lines, CASES, strict=True):
        assert line == canonical_json(expected)  # one canonical object a line: sorted keys, no spaces


@pytest.mark.parametrize(
    "events, sent",
    [
        ([], False),
        ([prepared()], False),
        ([prepared(), CreateIntent(chunk="c1")], False),
        ([prepared(), Created(chunk="c1", batch_id="b1")], True),
        ([prepared(), Created(chunk="c1", batch_id="b1"), ledger.Refused(chunk="c1", batch_id="b1")], False),
        (
            [
                prepared(),
                Created(chunk="c1", batch_id="b1"),
                ledger.Refused(chunk="c1", batch_id="b1"),
                Created(chunk="c1", batch_id="b2"),
                StatusSeen(chunk="c1", batch_id="b2", status="completed"),
            ],
            True,
        ),
    ],
)
def test_is_sent_reads_the_ledger_as_the_history_does(layout, events, sent):
    for event in events:
        append(layout, event)
    if events:
        with open(layout.ledger("c1"), "a", encoding="utf-8") as handle:
            handle.write('{"event": "created", "chunk": "c1", "time": "noon", "batch_id": "b9"}\n')  # no event
            handle.write('{"event": "created", "chunk": "c1", "tim')  # a torn last line is no batch
    assert ledger.is_sent(layout, "c1") is sent
    history = ledger.read_history(layout, "c1")
    assert (history is not None and history.sent) is sent


def test_append_makes_the_ledger_folder(layout):
    assert not layout.ledger_dir.exists()
    append(layout, UploadIntent(chunk="c7", time=1.0))
    assert layout.ledger("c7").read_text() == '{"chunk":"c7","event":"upload_intent","time":1.0}\n'


def test_append_keeps_what_is_there(layout):
    layout.ledger_dir.mkdir(parents=True)
    layout.ledger("c1").write_text(canonical_json(CASES[0][1]) + "\n")
    append(layout, UploadIntent(chunk="c1", time=2.0))
    assert [type(e) for e in read_events(layout, "c1")] == [Prepared, UploadIntent]


def test_read_events_of_a_chunk_without_ledger(layout):
    assert read_events(layout, "nothing") == []


def test_read_events_skips_blank_lines_and_leaves_out_a_torn_line_naming_it(layout, capsys):
    layout.ledger_dir.mkdir(parents=True)
    layout.ledger("c1").write_text(canonical_json(CASES[0][1]) + "\n\n" + canonical_json(CASES[2][1]) + "\n")
    assert [type(e) for e in read_events(layout, "c1")] == [Prepared, UploadIntent]
    assert capsys.readouterr().err == ""
    layout.ledger("c2").write_text(canonical_json(CASES[0][1]) + '\n{"event": "crea')  # power cut mid-append
    assert [type(e) for e in read_events(layout, "c2")] == [Prepared]  # every whole line is still the truth
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(layout.ledger("c2")) in err[0] and "line 2" in err[0]
    read_events(layout, "c2")
    assert capsys.readouterr().err == ""  # named once
    # the next append ends the torn line first: the new event is whole, the torn line stays out
    append(layout, UploadIntent(chunk="c2", time=2.0))
    assert [type(e) for e in read_events(layout, "c2")] == [Prepared, UploadIntent]
    assert layout.ledger("c2").read_text().splitlines()[1] == '{"event": "crea'


def test_non_ascii_text_is_written_as_is(layout):
    append(layout, CreateAbandoned(chunk="c1", time=1.0, reason="abgebrochen: Größe"))
    assert "Größe" in layout.ledger("c1").read_text(encoding="utf-8")
    assert read_events(layout, "c1")[0].reason == "abgebrochen: Größe"


# --- a chunk's history ------------------------------------------------------------------------------------


def test_history_of_needs_a_prepared_event():
    with pytest.raises(ValueError):
        ChunkHistory.of("c1", [])
    with pytest.raises(ValueError):
        ChunkHistory.of("c1", [Created(chunk="c1", batch_id="b")])


def test_history_of_takes_processor_and_table_from_prepared():
    hist = ChunkHistory.of("c1", [prepared(processor="issue-summary", group="g7")])
    assert hist.chunk == "c1"
    assert hist.processor == "issue-summary"
    assert hist.requests == TABLE
    assert hist.group == "g7"
    assert hist.mode == "batch"
    assert hist.prepared.content_hash == "h"
    assert ChunkHistory.of("c1", [prepared(mode="realtime")]).mode == "realtime"


def test_batch_id_and_created():
    hist = history(UploadIntent(chunk="c1"), CreateIntent(chunk="c1"))
    assert hist.created is None and hist.batch_id is None
    created = Created(chunk="c1", batch_id="batch_1")
    hist = history(CreateIntent(chunk="c1"), created)
    assert hist.created is created and hist.batch_id == "batch_1"
    later = Created(chunk="c1", batch_id="batch_2", adopted=True)
    assert history(created, later).batch_id == "batch_2"


def test_collected_follows_the_outcomes():
    hist = history(Created(chunk="c1", batch_id="b"))
    assert hist.collected is False
    hist.outcomes = {"rabca1": RequestOutcome("succeeded")}
    assert hist.collected is True
    hist.outcomes = {}
    assert hist.collected is True  # a manifest with no requests is still a collected chunk


@pytest.mark.parametrize(
    ("sequence", "archived"),
    [
        ([], False),
        ([Archived], True),
        ([Unarchived], False),
        ([Archived, Unarchived], False),
        ([Archived, Unarchived, Archived], True),
        ([Archived, Archived, Unarchived], False),
    ],
)
def test_archived_after_archived_and_unarchived(sequence, archived):
    events = []
    for kind in sequence:
        events.append(kind(chunk="c1"))
        events.append(StatusSeen(chunk="c1", status="completed"))  # other events between do not count
    assert history(*events).archived is archived


def test_retry_requested_collects_every_request():
    hist = history(
        RetryRequested(chunk="c1", custom_ids=["ra1", "rb1"]),
        StatusSeen(chunk="c1"),
        RetryRequested(chunk="c1", custom_ids=["rb1", "rc1"]),
    )
    assert hist.retry_requested == {"ra1", "rb1", "rc1"}
    assert history().retry_requested == set()


def test_known_status_is_the_latest_word():
    assert history().known_status is None
    assert history(Created(chunk="c1", batch_id="b")).known_status is None
    assert history(Created(chunk="c1", batch_id="b", status="validating")).known_status == "validating"
    seen = history(
        Created(chunk="c1", batch_id="b", status="validating"),
        StatusSeen(chunk="c1", status="in_progress"),
        RetryRequested(chunk="c1", custom_ids=["x"]),
    )
    assert seen.known_status == "in_progress"
    done = history(
        Created(chunk="c1", batch_id="b", status="validating"),
        StatusSeen(chunk="c1", status="in_progress"),
        Downloaded(chunk="c1", status="completed"),
    )
    assert done.known_status == "completed"


def test_known_ended():
    created = Created(chunk="c1", batch_id="b")
    assert history(created).known_ended is False
    assert history(created, StatusSeen(chunk="c1", status="in_progress")).known_ended is False
    assert history(created, StatusSeen(chunk="c1", status="completed", ended=True)).known_ended is True
    assert history(created, Downloaded(chunk="c1", status="completed")).known_ended is True
    # the latest status event decides, a download stands
    again = history(created, StatusSeen(chunk="c1", ended=True), StatusSeen(chunk="c1", ended=False))
    assert again.known_ended is False
    assert history(created, Downloaded(chunk="c1"), StatusSeen(chunk="c1", ended=False)).known_ended is True


def test_open_create():
    assert history().open_create is None
    assert history(UploadIntent(chunk="c1"), Uploaded(chunk="c1", input_file_id="f")).open_create is None
    intent = CreateIntent(chunk="c1", request_count=1, created_after=5.0)
    assert history(intent).open_create is intent
    assert history(intent, CreateAbandoned(chunk="c1", reason="token_limit")).open_create is None
    second = CreateIntent(chunk="c1", request_count=1, created_after=9.0)
    assert history(intent, CreateAbandoned(chunk="c1"), second).open_create is second
    assert history(intent, Created(chunk="c1", batch_id="b")).open_create is None
    # a created event closes every intent, even one recorded after it
    assert history(Created(chunk="c1", batch_id="b"), second).open_create is None


def test_in_flight():
    assert history().in_flight() is False
    assert history(CreateIntent(chunk="c1")).in_flight() is False
    submitted = history(Created(chunk="c1", batch_id="b"), StatusSeen(chunk="c1", status="in_progress"))
    assert submitted.in_flight() is True
    assert history(Created(chunk="c1", batch_id="b"), StatusSeen(chunk="c1", ended=True)).in_flight() is False
    assert history(Created(chunk="c1", batch_id="b"), Downloaded(chunk="c1")).in_flight() is False
    submitted.outcomes = {}
    assert submitted.in_flight() is False


# --- read_chunks -----------------------------------------------------------------------------------------


def test_read_chunks_groups_by_processor(layout, capsys):
    for chunk, processor in [("c1", "p"), ("c2", "q"), ("c3", "p")]:
        append(layout, prepared(chunk, processor))
    append(layout, Created(chunk="c3", batch_id="batch_3"))
    chunks = read_chunks(layout)
    assert {name: sorted(per) for name, per in chunks.items()} == {"p": ["c1", "c3"], "q": ["c2"]}
    assert chunks["p"]["c3"].batch_id == "batch_3"
    assert chunks["p"]["c1"].batch_id is None
    assert chunks["q"]["c2"].processor == "q"
    assert all(h.outcomes is None for per in chunks.values() for h in per.values())
    assert capsys.readouterr().err == ""


def test_read_chunks_names_an_unreadable_ledger_and_skips_it(layout, capsys):
    append(layout, prepared("good", "p"))
    append(layout, prepared("torn", "p"))
    with open(layout.ledger("torn"), "a") as handle:
        handle.write('{"event": "created", "chu\n')
    append(layout, Created(chunk="noprep", batch_id="b"))  # no prepared event
    layout.ledger("noproc").write_text('{"event": "prepared", "chunk": "noproc", "time": 1.0}\n')  # no processor
    (layout.ledger_dir / "notes.txt").write_text("not a ledger\n")  # not a .jsonl file: not a ledger at all
    chunks = read_chunks(layout)
    assert list(chunks) == ["p"] and list(chunks["p"]) == ["good", "torn"]  # a torn line is left out
    err = capsys.readouterr().err
    for bad in ("noprep", "noproc"):
        assert f"batchpipe: ledger {layout.ledger(bad)} is unreadable or incomplete" in err
    assert f"{layout.ledger('torn')}: line 2 is not a whole ledger event" in err
    assert f"{layout.ledger('noproc')}: line 1 is not a whole ledger event" in err
    assert "good" not in err
    assert len(err.strip().splitlines()) == 4


def test_read_chunks_makes_one_ref_of_an_issue_every_table_names(layout):
    """The tables of both processors (and of every attempt) name the same issues: a plan reads them all, so
    an issue's ref is one object in every table, equal to what each line says; another issue's is its own."""
    other = {**ISSUE, "key": "o_r_issue_2", "ref": "o/r#2", "number": 2}
    table = {"rabca1": RequestRecord("abc", 1, [IssueRef(**ISSUE), IssueRef(**other)], {}, 10)}
    for chunk, processor in [("c1", "p"), ("c2", "q"), ("c3", "p")]:
        append(layout, prepared(chunk, processor, requests=table))
    chunks = read_chunks(layout)
    refs = [h.requests["rabca1"].issues for per in chunks.values() for h in per.values()]
    assert len(refs) == 3 and all(found == table["rabca1"].issues for found in refs)
    assert refs[0][0] is refs[1][0] is refs[2][0] and refs[0][1] is refs[2][1]
    assert refs[0][0] is not refs[0][1]
    assert [ref.to_json() for ref in refs[1]] == [ISSUE, other]  # written back as read
    # read alone (a marker rewritten from one ledger), a table is the same
    alone = ledger.read_history(layout, "c2")
    assert alone is not None and alone.requests == table
    # a ref with a field that is no string (a hand-edited ledger) is read as it is, not a reason to skip it
    odd = {"rodda1": RequestRecord("odd", 1, [IssueRef(**{**ISSUE, "title": ["a", "list"]})], {}, 10)}  # type: ignore[arg-type]
    append(layout, prepared("c4", "p", requests=odd))
    assert read_chunks(layout)["p"]["c4"].requests["rodda1"].issues[0].title == ["a", "list"]


def test_read_chunks_without_ledgers(layout):
    assert read_chunks(layout) == {}


def test_read_history(layout):
    assert ledger.read_history(layout, "c1") is None
    append(layout, prepared())
    append(layout, Created(chunk="c1", batch_id="b"))
    found = ledger.read_history(layout, "c1")
    assert found is not None and found.batch_id == "b" and found.processor == "p"


def test_read_history_without_tables_has_every_event_but_the_request_table(layout):
    events = [e for e, _ in CASES]
    for event in events:
        append(layout, event)
    whole = ledger.read_history(layout, "c1")
    light = ledger.read_history(layout, "c1", tables=False)
    assert whole is not None and light is not None
    assert whole.prepared.requests and light.prepared.requests == {} and light.requests == {}
    assert [dataclasses.replace(e, requests={}) if isinstance(e, Prepared) else e for e in whole.events] == light.events
    assert (light.batch_id, light.processor, light.prepared.time) == (
        whole.batch_id,
        whole.processor,
        whole.prepared.time,
    )


# --- the marker -------------------------------------------------------------------------------------------


def submitted(**created: Any) -> ChunkHistory:
    return history(
        UploadIntent(chunk="c1", time=2.0),
        Uploaded(chunk="c1", time=3.0, input_file_id="file-1"),
        CreateIntent(chunk="c1", time=4.0, input_file_id="file-1", request_count=1, created_after=3.9),
        Created(chunk="c1", time=5.0, batch_id="batch_1", created_at=1700000000.0, input_file_id="file-1", **created),
        StatusSeen(chunk="c1", time=6.0, batch_id="batch_1", status="in_progress"),
    )


def test_marker_of_a_history():
    marker = Marker.of(submitted(status="validating"))
    assert marker.to_json() == {
        "chunk": "c1",
        "processor": "p",
        "provider": "local",
        "model": "m",
        "batch_id": "batch_1",
        "input_file_id": "file-1",
        "request_count": 1,
        "est_tokens": 10,
        "content_hash": "h",
        "request_file": "batch_requests/p/c1.jsonl",
        "submitted_at": 5.0,
        "created_at": 1700000000.0,
        "adopted": False,
        "group": "g",
        "mode": "batch",
        "requests": {"rabca1": RECORD},
    }
    assert Marker.of(submitted(adopted=True)).adopted is True


def test_marker_needs_a_created_event():
    with pytest.raises(AssertionError):
        Marker.of(history(CreateIntent(chunk="c1")))


@pytest.mark.parametrize("created", [{}, {"adopted": True, "status": "validating"}])
def test_marker_json_round_trip(created):
    marker = Marker.of(submitted(**created))
    assert Marker.from_json(marker.to_json()) == marker
    assert Marker.from_json(json.loads(pretty_json(marker.to_json()))) == marker


def test_marker_from_json_defaults():
    marker = Marker.from_json({"chunk": "c1", "batch_id": "b"})
    assert marker.mode == "batch" and marker.adopted is False and marker.requests == {}
    assert marker.processor is None and marker.submitted_at is None
    with pytest.raises(KeyError):
        Marker.from_json({"chunk": "c1"})


@pytest.mark.parametrize(
    "hist",
    [
        submitted(),
        submitted(adopted=True, status="completed"),
        ChunkHistory.of(
            "c1",
            [
                prepared(mode="realtime", group=None),
                Created(chunk="c1", time=4.0, batch_id="realtime-c1", created_at=1.0, input_file_id=None),
            ],
        ),
    ],
)
def test_marker_events_rebuild_a_ledger_with_the_same_marker(layout, hist):
    marker = Marker.of(hist)
    events = marker.events()
    assert [type(e) for e in events] == [Prepared, Created]
    assert all(e.to_json()["rebuilt_from"] == "marker" for e in events)
    assert Marker.of(ChunkHistory.of(marker.chunk, events)) == marker
    # and through the ledger file
    for event in events:
        append(layout, event)
    rebuilt = ChunkHistory.of(marker.chunk, read_events(layout, marker.chunk))
    assert Marker.of(rebuilt) == marker
    assert rebuilt.processor == hist.processor and rebuilt.requests == hist.requests


def test_write_marker_writes_the_ledgers_marker_and_repairs_any_other(layout, capsys):
    hist = submitted()
    path = write_marker(layout, hist)
    assert path == layout.marker("p", "c1")
    text = path.read_text(encoding="utf-8")
    assert text == table_json(Marker.of(hist).to_json())
    assert json.loads(text)["batch_id"] == "batch_1"
    inode = path.stat().st_ino
    assert write_marker(layout, hist) == path and path.stat().st_ino == inode  # the ledger's: not rewritten
    assert capsys.readouterr().err == ""
    # a deleted marker is written again, from the ledger
    path.unlink()
    write_marker(layout, hist)
    assert path.read_text(encoding="utf-8") == text
    # a garbage marker is rebuilt, and named
    path.write_text("{garbage")
    write_marker(layout, hist)
    assert path.read_text(encoding="utf-8") == text
    assert f"{path}: unreadable; rebuilt from the ledger" in capsys.readouterr().err
    # the chunk's batch was refused and made again: the marker follows the ledger, quietly
    changed = ChunkHistory.of("c1", [*hist.events, Created(chunk="c1", batch_id="batch_2")])
    write_marker(layout, changed)
    assert json.loads(path.read_text(encoding="utf-8"))["batch_id"] == "batch_2"
    assert capsys.readouterr().err == ""
    # a marker naming a batch the ledger never gave this chunk is rebuilt from the ledger, and named
    path.write_text(path.read_text(encoding="utf-8").replace("batch_2", "batch_x"))
    write_marker(layout, changed)
    assert json.loads(path.read_text(encoding="utf-8"))["batch_id"] == "batch_2"
    assert f"{path}: not what the ledger says" in capsys.readouterr().err


def test_read_marker(layout):
    path = write_marker(layout, submitted())
    assert ledger.read_marker(path) == Marker.of(submitted())
    with pytest.raises(OSError):
        ledger.read_marker(path.with_name("missing.submitted.json"))


def test_read_marker_or_waiting_reads_the_file_once_for_either(layout):
    path = write_marker(layout, submitted())
    assert ledger.read_marker_or_waiting(path) == Marker.of(submitted())
    waiting = ledger.write_waiting_marker(layout, "p", "c9", "budget", "the token budget is full")
    assert ledger.read_marker_or_waiting(waiting) == ledger.WaitingMarker("budget", "the token budget is full")
    assert ledger.read_waiting(waiting) == ("budget", "the token budget is full")
    assert ledger.read_waiting(path) is None
    with pytest.raises(OSError):
        ledger.read_marker_or_waiting(path.with_name("missing.submitted.json"))


# --- claimed batches ------------------------------------------------------------------------------------------


def test_claimed_batches(layout):
    append(layout, prepared("c1", content_hash="h1"))
    append(layout, Created(chunk="c1", batch_id="batch_1"))
    append(layout, prepared("c2", content_hash="h2"))
    append(layout, Created(chunk="c2", batch_id="batch_2"))
    append(layout, Created(chunk="c2", batch_id="batch_3", adopted=True))
    append(layout, prepared("c3", content_hash="h3"))
    append(layout, CreateIntent(chunk="c3"))
    append(layout, prepared("c4", content_hash="h4"))
    append(layout, Created(chunk="c4", batch_id="batch_4"))
    with open(layout.ledger("c4"), "a") as handle:
        handle.write('{"event":"created","batch_id":"batch_5","chu')  # cut short by a crash: skipped
    assert claimed_batches(layout) == {"batch_1", "batch_2", "batch_3", "batch_4"}
    assert claimed_batches(layout, except_hash="h2") == {"batch_1", "batch_4"}
    assert claimed_batches(layout, except_hash="h3") == {"batch_1", "batch_2", "batch_3", "batch_4"}
    assert claimed_batches(layout, except_hash="other") == {"batch_1", "batch_2", "batch_3", "batch_4"}


def test_claimed_batches_without_ledgers(layout):
    assert claimed_batches(layout) == set()
    assert claimed_batches(layout, except_hash="h") == set()


# --- ledgers of older versions ------------------------------------------------------------------------------

OLD_PREPARED = {
    "event": "prepared",
    "chunk": "c1",
    "time": 1.0,
    "processor": "p",
    "provider": "local",
    "model": "m",
    "request_count": 1,
    "est_tokens": 10,
    "content_hash": "h",
    "request_file": "batch_requests/p/c1.jsonl",
    "group": "g",
    "requests": {"rabca1": RECORD},
}
OLD_CHAINED_RECORD = {
    "request_hash": "def",
    "attempt": 2,
    "issues": [ISSUE, dict(ISSUE, key="o_r_issue_2", ref="o/r#2", number=2, path="data/issues/y.json")],
    "truncation": {"o/r#2": 17},
    "est_tokens": 500,
    "input_processor": "issue-summary",
    "inputs": {"o_r_issue_1": "h1", "o_r_issue_2": "h2"},
    "group": {
        "by": "repo",
        "key": "o_r",
        "name": "o/r",
        "org": "o",
        "repo": "r",
        "item": "o_r",
        "part": 1,
        "parts": 1,
        "issues": ["o/r#1", "o/r#2"],
        "left_out": [],
    },
}
OLD_LEDGERS = {
    "batch": [
        OLD_PREPARED,
        {"event": "upload_intent", "chunk": "c1", "time": 1.5},
        {"event": "uploaded", "chunk": "c1", "time": 1.6, "input_file_id": "file-1"},
        {
            "event": "create_intent",
            "chunk": "c1",
            "time": 1.7,
            "input_file_id": "file-1",
            "request_count": 1,
            "created_after": 1.69,
        },
        {
            "event": "created",
            "chunk": "c1",
            "time": 2.5,
            "batch_id": "batch_abc",
            "created_at": 1700000000,
            "input_file_id": "file-1",
            "status": "validating",
        },
        {
            "event": "status",
            "chunk": "c1",
            "time": 3.0,
            "batch_id": "batch_abc",
            "status": "completed",
            "ended": True,
            "succeeded": 1,
            "failed": 0,
            "total": 1,
        },
    ],
    "adopted": [
        OLD_PREPARED | {"group": None},
        {"event": "create_intent", "chunk": "c1", "time": 1.7, "input_file_id": None, "request_count": 1},  # < 1a6d7b0
        {
            "event": "created",
            "chunk": "c1",
            "time": 9.25,
            "batch_id": "msgbatch_1",
            "created_at": 1700000100.5,
            "input_file_id": None,
            "status": "in_progress",
            "adopted": True,
        },
    ],
    "realtime": [
        OLD_PREPARED | {"mode": "realtime"},
        {
            "event": "created",
            "chunk": "c1",
            "time": 2.0,
            "batch_id": "realtime-c1",
            "created_at": 1.0,
            "input_file_id": None,
            "status": "completed",
            "mode": "realtime",
        },
        {
            "event": "status",
            "chunk": "c1",
            "time": 2.0,
            "batch_id": "realtime-c1",
            "status": "completed",
            "ended": True,
            "succeeded": 1,
            "failed": 0,
            "total": 1,
        },
    ],
    "chained": [
        OLD_PREPARED | {"processor": "repo-digest", "requests": {"rdefa2": OLD_CHAINED_RECORD}},
        {"event": "created", "chunk": "c1", "time": 2.5, "batch_id": "b", "created_at": None, "input_file_id": None},
        {"event": "retry_requested", "chunk": "c1", "time": 3.5, "custom_ids": ["rdefa2"]},
        {"event": "archived", "chunk": "c1", "time": 4.5, "paths": ["batch_results/repo-digest/c1.results.json"]},
    ],
}


def old_marker_from_ledger(entries: list[dict]) -> dict:
    """The marker the code before the split wrote (batches.marker_from_ledger), kept as the reference."""

    def last(*names: str) -> dict:
        return next((e for e in reversed(entries) if e["event"] in names), {})

    prepared, created = last("prepared"), last("created")
    return {
        "chunk": created["chunk"],
        "processor": prepared.get("processor"),
        "provider": prepared.get("provider"),
        "model": prepared.get("model"),
        "batch_id": created["batch_id"],
        "input_file_id": created.get("input_file_id"),
        "request_count": prepared.get("request_count"),
        "est_tokens": prepared.get("est_tokens"),
        "content_hash": prepared.get("content_hash"),
        "request_file": prepared.get("request_file"),
        "submitted_at": created.get("time"),
        "created_at": created.get("created_at"),
        "adopted": created.get("adopted", False),
        "group": prepared.get("group"),
        "mode": prepared.get("mode", "batch"),
        "requests": prepared.get("requests"),
    }


def write_lines(layout: Layout, chunk: str, lines: list[dict]) -> Path:
    path = layout.ledger(chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    # older versions wrote canonical JSON too; key order must not matter, so write them unsorted
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(OLD_LEDGERS))
def test_old_ledger_reads_and_gives_the_old_marker(layout, name):
    lines = OLD_LEDGERS[name]
    write_lines(layout, "c1", lines)
    events = read_events(layout, "c1")
    for event, line in zip(events, lines, strict=True):  # every key of every line reads back as written
        out = event.to_json()
        assert {key: out[key] for key in line} == line
        assert set(out) - set(line) <= {"created_after"}  # the oldest create intents had no created_after
    assert all(not isinstance(e, ledger.Unknown) and e.extra == {} for e in events)
    hist = ChunkHistory.of("c1", events)
    assert hist.processor == lines[0]["processor"]
    marker = Marker.of(hist)
    assert marker.to_json() == old_marker_from_ledger(lines)
    path = write_marker(layout, hist)
    assert path.read_text(encoding="utf-8") == table_json(old_marker_from_ledger(lines))  # the same bytes
    assert Marker.from_json(old_marker_from_ledger(lines)) == marker


def test_old_ledgers_history():
    batch = ChunkHistory.of("c1", [Event.from_json(line) for line in OLD_LEDGERS["batch"]])
    assert batch.batch_id == "batch_abc" and batch.known_status == "completed" and batch.known_ended
    assert batch.open_create is None and not batch.in_flight()
    assert batch.requests == TABLE
    adopted = ChunkHistory.of("c1", [Event.from_json(line) for line in OLD_LEDGERS["adopted"]])
    assert adopted.created is not None and adopted.created.adopted is True and adopted.in_flight()
    realtime = ChunkHistory.of("c1", [Event.from_json(line) for line in OLD_LEDGERS["realtime"]])
    assert realtime.mode == "realtime"
    chained = ChunkHistory.of("c1", [Event.from_json(line) for line in OLD_LEDGERS["chained"]])
    record = chained.requests["rdefa2"]
    assert record.input_processor == "issue-summary" and record.group is not None and record.group.item == "o_r"
    assert record.issue_keys == ["o_r_issue_1", "o_r_issue_2"]
    assert chained.retry_requested == {"rdefa2"} and chained.archived


def test_old_ledger_from_read_chunks(layout, capsys):
    write_lines(layout, "c1", OLD_LEDGERS["batch"])
    write_lines(layout, "c2", [dict(line, chunk="c2") for line in OLD_LEDGERS["chained"]])
    chunks = read_chunks(layout)
    assert sorted(chunks) == ["p", "repo-digest"]
    assert chunks["p"]["c1"].batch_id == "batch_abc"
    assert chunks["repo-digest"]["c2"].archived
    assert capsys.readouterr().err == ""
