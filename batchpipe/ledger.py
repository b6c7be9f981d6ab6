"""The ledger: the record of every submission, and the only code that reads or writes ledger files.

`batch_results/ledger/{chunk}.jsonl` is an append-only, fsynced journal that no Snakemake rule
declares (Snakemake deletes outputs; it never touches this). An intent is recorded before every paid
or state-changing call and the answer after it, so a rerun, a deleted marker or a crash at any point
is resolved from here: a chunk with a `created` event is never created again.

Events (one JSON object a line, `event` naming the kind):
    prepared          the chunk's request table, content hash, provider, model, group, mode
    upload_intent     before uploading the request file (OpenAI)
    uploaded          its file id
    create_intent     before creating the batch (time, request count)
    create_abandoned  the create made no batch (token limit, or a person said so)
    created           the batch id (adopted: found at the provider after a crash)
    status            the provider's word on a batch in flight
    downloaded        its outputs were saved (counts, hashes)
    retry_requested   a person asked to send failed requests again
    cancel_requested  a person cancelled the batch
    archived, unarchived

The marker (`{chunk}.submitted.json`) is derived from the ledger only, so a rewrite gives the same bytes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .files import append_line_durably, atomic_write_json, atomic_write_table, canonical_json, read_json
from .layout import Layout
from .manifest import RequestOutcome
from .request import RequestRecord, Shared, table_from_json, table_to_json

__all__ = [
    "Archived",
    "CancelRequested",
    "ChunkHistory",
    "CreateAbandoned",
    "CreateIntent",
    "Created",
    "Downloaded",
    "Event",
    "Marker",
    "Prepared",
    "Refused",
    "RetryRequested",
    "StatusSeen",
    "Unarchived",
    "UploadIntent",
    "Uploaded",
    "WaitingMarker",
    "append",
    "is_sent",
    "read_chunks",
    "read_events",
    "read_marker_or_waiting",
    "read_waiting",
    "write_waiting_marker",
]


@dataclass(kw_only=True)
class Event:
    """One ledger line. Fields a newer version wrote and this one does not know are kept in `extra`."""

    kind: ClassVar[str] = ""
    chunk: str
    time: float = field(default_factory=lambda: round(time.time(), 3))
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "chunk": self.chunk, "time": self.time}
        for f in fields(self):
            if f.name in ("chunk", "time", "extra"):
                continue
            value = getattr(self, f.name)
            if f.name == "requests":
                value = table_to_json(value)
            elif value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Any, shared: Shared | None = None) -> Event:
        """The event a ledger line holds; ValueError when the line is not an event. `shared`: the issue refs
        of the ledgers read before (`IssueRef.from_json`)."""
        if not isinstance(data, dict):
            raise ValueError(f"a ledger line is a JSON object, not {type(data).__name__}")
        kind = EVENTS.get(data.get("event", ""), Unknown)
        known = {f.name for f in fields(kind)} - {"extra"}
        args: dict[str, Any] = {"chunk": data.get("chunk", ""), "time": float(data.get("time") or 0)}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("event", "chunk", "time"):
                continue
            if key in known:
                args[key] = table_from_json(value, shared) if key == "requests" else value
            else:
                extra[key] = value
        if kind is Unknown:
            extra["event"] = data.get("event")
        try:
            return kind(**args, extra=extra)
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"{data.get('event')} event: {exc}") from None


def _opt() -> Any:
    """A field left out of the JSON while it is None."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(kw_only=True)
class Prepared(Event):
    kind: ClassVar[str] = "prepared"
    processor: str
    provider: str | None = None
    model: str | None = None
    request_count: int = 0
    est_tokens: int = 0
    content_hash: str | None = None
    request_file: str | None = None
    group: str | None = None
    requests: dict[str, RequestRecord] = field(default_factory=dict)
    mode: str | None = _opt()  # realtime; batch when absent
    rebuilt_from: str | None = _opt()
    ceiling_usd: float | None = _opt()  # what it costs at most (the plan's forecast): the cost caps count it


@dataclass(kw_only=True)
class UploadIntent(Event):
    kind: ClassVar[str] = "upload_intent"


@dataclass(kw_only=True)
class Uploaded(Event):
    kind: ClassVar[str] = "uploaded"
    input_file_id: str | None = None


@dataclass(kw_only=True)
class CreateIntent(Event):
    kind: ClassVar[str] = "create_intent"
    input_file_id: str | None = None
    request_count: int = 0
    created_after: float | None = None


@dataclass(kw_only=True)
class CreateAbandoned(Event):
    kind: ClassVar[str] = "create_abandoned"
    reason: str = ""


@dataclass(kw_only=True)
class Created(Event):
    kind: ClassVar[str] = "created"
    batch_id: str
    created_at: float | None = None
    input_file_id: str | None = None
    status: str | None = _opt()
    adopted: bool | None = _opt()
    mode: str | None = _opt()
    rebuilt_from: str | None = _opt()


@dataclass(kw_only=True)
class StatusSeen(Event):
    kind: ClassVar[str] = "status"
    batch_id: str | None = None
    status: str | None = None
    ended: bool = False
    succeeded: int = 0
    failed: int = 0
    total: int = 0


@dataclass(kw_only=True)
class Downloaded(Event):
    kind: ClassVar[str] = "downloaded"
    batch_id: str | None = None
    status: str | None = None
    succeeded: int = 0
    failed: int = 0
    total: int = 0
    output_sha256: str | None = None
    errors_sha256: str | None = None
    batch_errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class Refused(Event):
    """The provider created the batch, then failed it as a whole before running anything (the enqueued-
    token limit): no answer, no cost. The chunk is created again once the budget frees."""

    kind: ClassVar[str] = "refused"
    batch_id: str | None = None
    reason: str = ""


@dataclass(kw_only=True)
class RetryRequested(Event):
    kind: ClassVar[str] = "retry_requested"
    custom_ids: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class CancelRequested(Event):
    kind: ClassVar[str] = "cancel_requested"
    batch_id: str | None = None


@dataclass(kw_only=True)
class Archived(Event):
    kind: ClassVar[str] = "archived"
    paths: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Unarchived(Event):
    kind: ClassVar[str] = "unarchived"
    reason: str = ""


@dataclass(kw_only=True)
class Unknown(Event):
    """An event this version does not know (kept, never acted on)."""

    kind: ClassVar[str] = "unknown"


EVENTS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        Prepared,
        UploadIntent,
        Uploaded,
        CreateIntent,
        CreateAbandoned,
        Created,
        StatusSeen,
        Downloaded,
        Refused,
        RetryRequested,
        CancelRequested,
        Archived,
        Unarchived,
    )
}

E = TypeVar("E", bound=Event)


# --- reading and writing ---------------------------------------------------------------------------


_NOTED: set[tuple[str, int]] = set()


def read_events(layout: Layout, chunk: str, shared: Shared | None = None, tables: bool = True) -> list[Event]:
    """The chunk's ledger (empty when it has none). A line that is not a whole event (a write cut short
    by a power cut) is left out and named once on stderr: every whole line is still the truth. `shared`:
    the issue refs of the ledgers read before (`IssueRef.from_json`). `tables=False`: a `prepared` event
    without its request table (empty), for readers that need only the events (a large chunk's table is
    most of its ledger, and many times its size once built)."""
    path = layout.ledger(chunk)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not tables and isinstance(data, dict) and data.get("event") == Prepared.kind:
                data.pop("requests", None)
            events.append(Event.from_json(data, shared))
        except ValueError:
            if (str(path), number) not in _NOTED:
                _NOTED.add((str(path), number))
                print(
                    f"batchpipe: {path}: line {number} is not a whole ledger event (a write cut short); it is left out",
                    file=sys.stderr,
                )
    return events


def append(layout: Layout, event: E) -> E:
    """Append one event to its chunk's ledger, fsynced."""
    append_line_durably(layout.ledger(event.chunk), canonical_json(event.to_json()))
    return event


def last(events: list[Event], *kinds: type[E]) -> E | None:
    """The latest event of one of these kinds."""
    for event in reversed(events):
        if isinstance(event, kinds):
            return event
    return None


def last_of(events: list[Event], *kinds: type[Event]) -> Event | None:
    """The latest event of one of these kinds, whichever it is (to tell which came last)."""
    for event in reversed(events):
        if isinstance(event, kinds):
            return event
    return None


@dataclass
class ChunkHistory:
    """A chunk that has a ledger: it was (or may have been) submitted. Built from its ledger events;
    its `outcomes` are attached from its manifest once collected."""

    chunk: str
    processor: str
    requests: dict[str, RequestRecord]
    events: list[Event] = field(default_factory=list, repr=False)
    outcomes: dict[str, RequestOutcome] | None = None
    result_sizes: dict[str, int] | None = None  # the manifest's result files and their sizes, with the outcomes
    manifest_batch_id: str | None = None  # the batch id its manifest names
    manifest_complete: bool = False  # its manifest has every field a summary reads

    @classmethod
    def of(cls, chunk: str, events: list[Event]) -> ChunkHistory:
        """ValueError when the ledger has no `prepared` event."""
        prepared = last(events, Prepared)
        if prepared is None:
            raise ValueError("no prepared event")
        return cls(chunk, prepared.processor, prepared.requests, events)

    @property
    def collected(self) -> bool:
        return self.outcomes is not None

    @property
    def prepared(self) -> Prepared:
        found = last(self.events, Prepared)
        assert found is not None  # `of` requires one
        return found

    @property
    def created(self) -> Created | None:
        return last(self.events, Created)

    @property
    def sent(self) -> bool:
        """Its batch is created (or adopted) and not refused: never sent again."""
        return self.created is not None and not self.refused

    @property
    def batch_id(self) -> str | None:
        created = self.created
        return created.batch_id if created else None

    @property
    def group(self) -> str | None:
        return self.prepared.group

    @property
    def mode(self) -> str:
        return self.prepared.mode or "batch"

    @property
    def archived(self) -> bool:
        return isinstance(last_of(self.events, Archived, Unarchived), Archived)

    @property
    def retry_requested(self) -> set[str]:
        """custom_ids a person asked to send again (`batchpipe retry`), whatever their failure."""
        return {cid for e in self.events if isinstance(e, RetryRequested) for cid in e.custom_ids}

    @property
    def known_status(self) -> str | None:
        """The provider's last status word the ledger saw (created, status refresh or download)."""
        event = last_of(self.events, Created, StatusSeen, Downloaded)
        return getattr(event, "status", None) if event else None

    @property
    def refused(self) -> bool:
        """Its current batch was refused (it is to be created again)."""
        return isinstance(last_of(self.events, Created, Refused), Refused)

    @property
    def known_ended(self) -> bool:
        seen = last(self.events, StatusSeen)
        return last(self.events, Downloaded) is not None or bool(seen and seen.ended)

    @property
    def open_create(self) -> CreateIntent | None:
        """The create intent an interrupted run left unresolved (no `created` after it, nor abandoned)."""
        if self.created is not None:
            return None
        decided = last_of(self.events, CreateIntent, CreateAbandoned)
        return decided if isinstance(decided, CreateIntent) else None

    def in_flight(self) -> bool:
        """Submitted, and not yet seen ending nor collected."""
        return self.batch_id is not None and not self.collected and not self.known_ended


def ledger_chunks(layout: Layout) -> list[str]:
    """The chunk ids that have a ledger, sorted."""
    try:
        return sorted(e.name[: -len(".jsonl")] for e in os.scandir(layout.ledger_dir) if e.name.endswith(".jsonl"))
    except FileNotFoundError:
        return []


def read_chunks(layout: Layout) -> dict[str, dict[str, ChunkHistory]]:
    """Chunks with a ledger, by processor and id (outcomes not attached). An unreadable ledger is named
    on stderr and left alone."""
    out: dict[str, dict[str, ChunkHistory]] = {}
    shared: Shared = {}  # an issue's ref, one object in every table that names it
    for chunk in ledger_chunks(layout):
        try:
            history = ChunkHistory.of(chunk, read_events(layout, chunk, shared))
        except (ValueError, KeyError, TypeError, OSError):
            print(
                f"batchpipe: ledger {layout.ledger(chunk)} is unreadable or incomplete; "
                "it is left alone (see batch_results/README.md)",
                file=sys.stderr,
            )
            continue
        out.setdefault(history.processor, {})[chunk] = history
    return out


def read_history(layout: Layout, chunk: str, tables: bool = True) -> ChunkHistory | None:
    """One chunk's history (None when it has no ledger); `tables=False`: without its request table
    (`read_events`)."""
    events = read_events(layout, chunk, tables=tables)
    return ChunkHistory.of(chunk, events) if events else None


def is_sent(layout: Layout, chunk: str) -> bool:
    """The ledger knows the chunk's batch (created or adopted, not refused): its marker is written from the
    ledger, and its request file is no longer needed. `ChunkHistory.sent`, read without building the events
    (the Snakefile asks it of every chunk in the DAG: their request tables are most of a ledger)."""
    try:
        with open(layout.ledger(chunk), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return False
    prepared, last_word = False, None
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line cut short: the plan job names it
        if not isinstance(data, dict):
            continue
        try:
            float(data.get("time") or 0)  # as Event.from_json: a line whose time is no number is no event
        except (TypeError, ValueError):
            continue
        kind = data.get("event")
        if kind == Prepared.kind and "processor" in data:
            prepared = True
        elif (kind == Created.kind and "batch_id" in data) or kind == Refused.kind:
            last_word = kind
    return prepared and last_word == Created.kind


def iter_all_events(layout: Layout) -> Iterator[Event]:
    """Every readable event of every ledger (a line cut short by a crash is skipped)."""
    for chunk in ledger_chunks(layout):
        try:
            text = layout.ledger(chunk).read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                yield Event.from_json(json.loads(line))
            except ValueError:
                continue


def claimed_batches(layout: Layout, except_hash: str | None = None) -> set[str]:
    """Batch ids that chunks' ledgers record as theirs (other than the chunk with content hash `except_hash`)."""
    claimed: dict[str, set[str]] = {}
    hashes: dict[str, str | None] = {}
    for event in iter_all_events(layout):
        if isinstance(event, Prepared):
            hashes[event.chunk] = event.content_hash
        elif isinstance(event, Created):
            claimed.setdefault(event.chunk, set()).add(event.batch_id)
    return {b for chunk, ids in claimed.items() if except_hash is None or hashes.get(chunk) != except_hash for b in ids}


_EVENT_COLUMNS = (
    "{event: 'VARCHAR', chunk: 'VARCHAR', time: 'DOUBLE', processor: 'VARCHAR', provider: 'VARCHAR', "
    "model: 'VARCHAR', \"group\": 'VARCHAR', mode: 'VARCHAR', request_count: 'BIGINT', "
    "batch_id: 'VARCHAR', status: 'VARCHAR', succeeded: 'BIGINT', failed: 'BIGINT'}"
)


def events_sql(layout: Layout) -> str:
    """A DuckDB relation of every ledger event (the columns `views.batches` needs, and `file`): how
    `batchpipe query` reads the ledger. A line cut short by a crash is skipped."""
    folder = layout.ledger_dir.resolve()
    if ledger_chunks(layout):
        pattern = str(folder / "*.jsonl").replace("'", "''")
        return (
            f"(SELECT *, filename AS file FROM read_json('{pattern}', format='newline_delimited', "
            f"ignore_errors=true, filename=true, columns={_EVENT_COLUMNS}))"
        )
    return (
        "(SELECT NULL::VARCHAR AS event, NULL::VARCHAR AS chunk, NULL::DOUBLE AS time, "
        "NULL::VARCHAR AS processor, NULL::VARCHAR AS provider, NULL::VARCHAR AS model, "
        'NULL::VARCHAR AS "group", NULL::VARCHAR AS mode, NULL::BIGINT AS request_count, '
        "NULL::VARCHAR AS batch_id, NULL::VARCHAR AS status, NULL::BIGINT AS succeeded, "
        "NULL::BIGINT AS failed, NULL::VARCHAR AS file WHERE false)"
    )


# --- the marker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """A submission marker: the batch id and what the chunk holds, derived from the ledger only."""

    chunk: str
    processor: str | None
    provider: str | None
    model: str | None
    batch_id: str
    input_file_id: str | None
    request_count: int | None
    est_tokens: int | None
    content_hash: str | None
    request_file: str | None
    submitted_at: float | None
    created_at: float | None
    adopted: bool
    group: str | None
    mode: str
    requests: dict[str, RequestRecord]

    @classmethod
    def of(cls, history: ChunkHistory) -> Marker:
        prepared, created = history.prepared, history.created
        assert created is not None, "a marker needs a created event"
        return cls(
            chunk=created.chunk,
            processor=prepared.processor,
            provider=prepared.provider,
            model=prepared.model,
            batch_id=created.batch_id,
            input_file_id=created.input_file_id,
            request_count=prepared.request_count,
            est_tokens=prepared.est_tokens,
            content_hash=prepared.content_hash,
            request_file=prepared.request_file,
            submitted_at=created.time,
            created_at=created.created_at,
            adopted=bool(created.adopted),
            group=prepared.group,
            mode=prepared.mode or "batch",
            requests=prepared.requests,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "processor": self.processor,
            "provider": self.provider,
            "model": self.model,
            "batch_id": self.batch_id,
            "input_file_id": self.input_file_id,
            "request_count": self.request_count,
            "est_tokens": self.est_tokens,
            "content_hash": self.content_hash,
            "request_file": self.request_file,
            "submitted_at": self.submitted_at,
            "created_at": self.created_at,
            "adopted": self.adopted,
            "group": self.group,
            "mode": self.mode,
            "requests": table_to_json(self.requests),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Marker:
        return cls(
            chunk=data["chunk"],
            processor=data.get("processor"),
            provider=data.get("provider"),
            model=data.get("model"),
            batch_id=data["batch_id"],
            input_file_id=data.get("input_file_id"),
            request_count=data.get("request_count"),
            est_tokens=data.get("est_tokens"),
            content_hash=data.get("content_hash"),
            request_file=data.get("request_file"),
            submitted_at=data.get("submitted_at"),
            created_at=data.get("created_at"),
            adopted=bool(data.get("adopted", False)),
            group=data.get("group"),
            mode=data.get("mode") or "batch",
            requests=table_from_json(data.get("requests")),
        )

    def events(self) -> list[Event]:
        """The `prepared` and `created` events this marker stands for (to rebuild a lost ledger)."""
        at = self.submitted_at or time.time()
        return [
            Prepared(
                chunk=self.chunk,
                time=at,
                processor=self.processor or "",
                provider=self.provider,
                model=self.model,
                request_count=self.request_count or 0,
                est_tokens=self.est_tokens or 0,
                content_hash=self.content_hash,
                request_file=self.request_file,
                group=self.group,
                requests=self.requests,
                mode=self.mode,
                rebuilt_from="marker",
            ),
            Created(
                chunk=self.chunk,
                time=at,
                batch_id=self.batch_id,
                created_at=self.created_at,
                input_file_id=self.input_file_id,
                adopted=self.adopted,
                rebuilt_from="marker",
            ),
        ]


def read_marker(path: Path) -> Marker:
    """The marker at `path`; OSError, ValueError or KeyError when missing or unreadable."""
    return Marker.from_json(read_json(path))


def write_waiting_marker(layout: Layout, processor: str, chunk: str, kind: str, reason: str) -> Path:
    """The marker of a chunk whose submission waits (`kind`: "verify", a batch that may be its own must
    end first; "person", `batchpipe adopt`; "budget", the token budget is full): the job is done, the run
    goes on, the summary names it, and the next run's plan removes it and tries again."""
    path = layout.marker(processor, chunk)
    atomic_write_json(path, {"chunk": chunk, "processor": processor, "waiting": kind, "reason": reason})
    return path


def read_waiting(path: Path) -> tuple[str, str] | None:
    """(kind, reason) of a waiting marker, else None."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    waiting = _waiting_in(data)
    return (waiting.kind, waiting.reason) if waiting else None


@dataclass(frozen=True)
class WaitingMarker:
    """A waiting marker's kind and reason (`write_waiting_marker`)."""

    kind: str
    reason: str


def _waiting_in(data: Any) -> WaitingMarker | None:
    if isinstance(data, dict) and data.get("waiting"):
        return WaitingMarker(str(data["waiting"]), str(data.get("reason", "")))
    return None


def read_marker_or_waiting(path: Path) -> Marker | WaitingMarker:
    """The marker at `path`, or what it waits for: one read of the file (a large chunk's marker holds its
    table). OSError, ValueError or KeyError as `read_marker`."""
    data = read_json(path)
    return _waiting_in(data) or Marker.from_json(data)


def write_marker(layout: Layout, history: ChunkHistory) -> Path:
    """Write the chunk's marker when it is missing, or rebuild it when it is not the ledger's (named on
    stderr); a marker that is the ledger's is never rewritten."""
    path = layout.marker(history.processor, history.chunk)
    expected = Marker.of(history)
    doc = expected.to_json()
    try:
        if json.loads(path.read_bytes()) == doc:  # the ledger's, as written (no dataclasses built)
            return path
        found = read_marker(path)
        if found == expected:
            return path
        earlier = {e.batch_id for e in history.events if isinstance(e, Created)}
        if found.batch_id not in earlier:  # not an earlier batch of this chunk (a refused one): repaired
            print(f"batchpipe: {path}: not what the ledger says; rebuilt from the ledger", file=sys.stderr)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        print(f"batchpipe: {path}: unreadable; rebuilt from the ledger", file=sys.stderr)
    atomic_write_table(path, doc)
    return path
