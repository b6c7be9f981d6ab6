"""The requests a plan rendered, kept in its folder so that its submissions write them instead of rendering
them again.

A plan renders every request whose issue file the scan cache lacks, to hash it. Without these, each new
chunk's job would read its issue files and render their requests once more, in the Snakemake process. The
scan writes each rendering it makes, as the request file's line will be (its custom_id left open: the
attempt is chosen later), with what the chunk's table records of it, to `rendered/` in the plan's folder;
the spec of a new chunk names where each of its requests is kept. A kept rendering is used only when it is
whole (the SHA-256 its spec names), is the one its spec names (the same issue file and request hash), and
was rendered from the issue file as it is now (its size and mtime) with the templates and settings as they
are now (the scan cache's fingerprint); anything else is rendered again from the issue file, as without
them (and an issue edited since the plan is refused as before: `PlanOutdated`). They are dropped once the
plan's round is gathered.

An entry is two lines: a JSON header (the request hash, the issue file and its stamp, the fingerprint, the
table's fields), then the request line in the provider's wire format with the custom_id `CUSTOM_ID_HOLE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .files import atomic_writer, canonical_json, sha256_hex
from .issues import split_locator
from .render import Rendered, request_line_json
from .request import IssueRef, NeutralRequest, RequestRecord

__all__ = [
    "CUSTOM_ID_HOLE",
    "KeptReader",
    "KeptRendering",
    "Ref",
    "RenderingWriter",
    "Renderings",
    "RequestLine",
    "Spill",
    "drop_renderings",
]

FOLDER = "rendered"  # in the plan's folder
CUSTOM_ID_HOLE = "\x00"  # a custom_id no request has; in the line, JSON-escaped
_HOLE = canonical_json({"custom_id": CUSTOM_ID_HOLE})[1:-1].encode("utf-8")  # b'"custom_id":"\\u0000"'

Ref = tuple[str, int, int, str]  # a kept rendering: its file in `rendered/`, offset, length and SHA-256
RequestLine = Callable[[str, NeutralRequest], dict[str, Any]]  # the provider's `Wire.request_line`
Spill = tuple[str, str, RequestLine, str]  # a scan's writers: plan folder, file prefix, request line, fingerprint


@dataclass(frozen=True, slots=True)
class KeptRendering:
    """A request as the plan rendered it: its request file line but for the custom_id, and its table entry."""

    request_hash: str
    line: bytes  # with `_HOLE` once, ending in a newline
    truncation: dict[str, Any]
    issues: list[IssueRef]
    est_tokens: int
    model: str

    def line_for(self, custom_id: str) -> bytes:
        return self.line.replace(_HOLE, canonical_json({"custom_id": custom_id})[1:-1].encode("utf-8"), 1)

    def record(self, attempt: int) -> RequestRecord:
        return RequestRecord(
            request_hash=self.request_hash,
            attempt=attempt,
            issues=list(self.issues),
            truncation=self.truncation,
            est_tokens=self.est_tokens,
        )


class RenderingWriter:
    """Keeps the renderings of one scan (or one slice of a parallel scan) in a file of `rendered/`."""

    def __init__(self, plan_folder: str | Path, name: str, request_line: RequestLine, fingerprint: str) -> None:
        self.folder = Path(plan_folder) / FOLDER
        self.name = name
        self.request_line = request_line
        self.fingerprint = fingerprint
        self._file = contextlib.ExitStack()  # the file, written atomically (renamed into place on `close`)
        self._handle: IO[bytes] | None = None
        self._offset = 0
        self._broken = False

    def keep(self, path: str, stamp: list[int], rendered: Rendered) -> Ref | None:
        """Write one rendering (of the issue file or item `path`, whose file had `stamp`: size, mtime);
        returns where it is kept. None once a write failed (a full disk): the plan goes on without them."""
        if self._broken:
            return None
        line = request_line_json(self.request_line, CUSTOM_ID_HOLE, rendered.neutral).encode("utf-8") + b"\n"
        header = {
            "hash": rendered.request_hash,
            "path": path,
            "stamp": stamp,
            "fingerprint": self.fingerprint,
            "truncation": rendered.truncation,
            "issues": [i.to_json() for i in rendered.issues],
            "est_tokens": rendered.est_tokens,
            "model": rendered.neutral.model,
        }
        data = canonical_json(header).encode("utf-8") + b"\n" + line
        try:
            if self._handle is None:
                self._handle = self._file.enter_context(atomic_writer(self.folder / self.name, durable=False))
            self._handle.write(data)
        except OSError:
            self._broken = True
            return None
        ref = (self.name, self._offset, len(data), sha256_hex(data))
        self._offset += len(data)
        return ref

    def close(self) -> None:
        """The file goes into place, not fsynced: a rendering lost in a crash is rendered again."""
        self._handle = None
        with contextlib.suppress(OSError):
            self._file.close()


@dataclass
class Renderings:
    """Where a plan job keeps its renderings, and which it kept: (issue file or item, processor) -> (request
    hash, where). A plan job may scan more than once (after repairs, adoptions): each scan writes files of
    its own, and a later scan (reading the cache) leaves what an earlier one kept."""

    plan_folder: str
    request_line: RequestLine  # the provider's (picklable: a worker process writes with it too)
    fingerprint: str  # of the templates and settings the requests are rendered with (the scan cache's)
    kept: dict[tuple[str, str], tuple[str, Ref]] = field(default_factory=dict)
    scans: int = 0

    def spill(self) -> Spill:
        """A new scan's `Spill`: its writers (in worker processes too) write files of their own."""
        self.scans += 1
        return self.plan_folder, f"scan{self.scans}", self.request_line, self.fingerprint

    def ref(self, path: str, processor: str, request_hash: str) -> Ref | None:
        hit = self.kept.get((path, processor))
        return hit[1] if hit is not None and hit[0] == request_hash else None


class KeptReader:
    """Reads a plan's kept renderings for one chunk's job: each file of `rendered/` is opened once, not once
    a request."""

    def __init__(self, plan_folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(plan_folder) / FOLDER
        self.fingerprint = fingerprint
        self._files: dict[str, IO[bytes] | None] = {}

    def __enter__(self) -> KeptReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._files.values():
            if handle is not None:
                handle.close()
        self._files.clear()

    def _data(self, name: str, offset: int, length: int) -> bytes | None:
        if name not in self._files:
            try:
                self._files[name] = open(self.folder / name, "rb")  # noqa: SIM115 (closed by `__exit__`)
            except OSError:
                self._files[name] = None
        handle = self._files[name]
        if handle is None:
            return None
        handle.seek(offset)
        return handle.read(length)

    def read(self, ref: Any, path: str, request_hash: str) -> KeptRendering | None:
        """The rendering kept at `ref`, when it is whole, is the one of issue file `path` with that hash, and
        was rendered from the file as it is now with the settings of the fingerprint; None otherwise (the
        caller renders it again)."""
        try:
            name, offset, length, digest = ref
            data = self._data(str(name), int(offset), int(length))
            if data is None or len(data) != length or sha256_hex(data) != digest:
                return None
            head, line = data.split(b"\n", 1)
            header = json.loads(head)
            if (
                header["hash"] != request_hash
                or header["path"] != path
                or header["fingerprint"] != self.fingerprint
                or line.count(_HOLE) != 1
            ):
                return None
            st = os.stat(split_locator(path)[0])
            if header["stamp"] != [st.st_size, st.st_mtime_ns]:
                return None
            return KeptRendering(
                request_hash,
                line,
                dict(header["truncation"]),
                [IssueRef.from_json(i) for i in header["issues"]],
                int(header["est_tokens"]),
                str(header["model"]),
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None


def drop_renderings(plan_folder: str | Path) -> None:
    """Once a plan's chunks are all written: its renderings are of no more use."""
    shutil.rmtree(Path(plan_folder) / FOLDER, ignore_errors=True)
