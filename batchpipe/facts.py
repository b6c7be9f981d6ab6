"""Result facts: what a chunk's collection knows of each result file it writes, kept for the report and the
recycling.

At the end of a run the report and the recycling would each read and parse every result again (a cold run at
100,000 issues and two processors writes 200,000). The collect job has each result in hand as it writes it,
so it records, per result file it makes, a fact: the file's stamp as written (size, mtime, inode), its
SHA-256, what the report shows of it and what the recycling takes of it. A fact stands for the file only
while the file's stamp is the recorded one: a file edited, rewritten or replaced since is read as before.

Facts are bookkeeping, like the scan cache (`.snakemake/batchpipe/facts/{processor}/{chunk}.jsonl`, written
atomically, no fsync): a missing, torn or foreign facts file only means the files are read. `complete_run`
removes them once the report and the recycling of its run have taken them in (the report's memo and the
board keep what they learnt). Each line is `{name}\\t{json}`: a reader keeps a line by its name and parses
only the lines it uses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .files import atomic_writer, sha256_hex
from .layout import Layout

__all__ = [
    "SUMMARY_CHARS",
    "FactLines",
    "FactsWriter",
    "ResultFact",
    "entry_ok",
    "label_names",
    "read_fact_lines",
    "remove_facts",
    "report_entry",
]

VERSION = 1
SUMMARY_CHARS = 300  # of an answer's summary in the report's table


def _header(root: str) -> bytes:
    """A facts file's first line: its version and the workspace's root (report entries hold absolute paths)."""
    return json.dumps({"result-facts": VERSION, "root": root}).encode() + b"\n"


def label_names(value: Any, key: str) -> tuple[str, ...] | None:
    """Label names of a JSON array (objects by `key`, or strings); None when it is not an array."""
    if not isinstance(value, list):
        return None
    names = []
    for item in value:
        name = item.get(key) if isinstance(item, dict) else item
        if name is None:
            continue
        names.append(name if isinstance(name, str) else json.dumps(name))
    return tuple(names)


def report_entry(doc: Any, size: int, mtime: int, root: str) -> list[Any]:
    """What the report shows of a result file (its memo entry, `charts`), from the file's JSON: `[size,
    mtime, key, processor, confidence, recommended labels or None, source, summary]`; `[size, mtime]` alone
    for a group result or a file that is not JSON."""
    ref = doc.get("issue_reference") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(ref, dict):
        return [size, mtime]
    kind = "_pull_" if ref.get("kind") == "pull_request" else "_issue_"
    source = str(ref.get("source_file") or "")
    processor = doc.get("processor")
    analysis = doc.get("analysis")
    analysis = analysis if isinstance(analysis, dict) else {}
    try:
        confidence: float | None = float(analysis["recommendation_confidence"])
    except (KeyError, TypeError, ValueError, OverflowError):
        confidence = None
    text = next((analysis[k] for k in ("summary", "text", "reasoning") if analysis.get(k) is not None), "")
    recommended = label_names(analysis.get("recommended_labels"), "label")
    return [
        size,
        mtime,
        f"{ref.get('org')}_{ref.get('repo')}{kind}{ref.get('number')}",
        str(processor.get("name") or "") if isinstance(processor, dict) else "",
        confidence if confidence is None or math.isfinite(confidence) else None,
        list(recommended) if recommended is not None else None,
        os.path.normpath(source if os.path.isabs(source) else os.path.join(root, source)),
        str(text)[:SUMMARY_CHARS],
    ]


def entry_ok(entry: Any) -> bool:
    """A `report_entry` of the expected shape (a memo's or a fact's: either may be torn or foreign)."""
    if not isinstance(entry, list) or len(entry) not in (2, 8) or not all(type(v) is int for v in entry[:2]):
        return False
    if len(entry) == 2:
        return True
    _, _, key, processor, confidence, recommended, source, summary = entry
    return (
        all(isinstance(v, str) for v in (key, processor, source, summary))
        and (confidence is None or type(confidence) in (int, float))
        and (recommended is None or (isinstance(recommended, list) and all(isinstance(v, str) for v in recommended)))
    )


@dataclass(frozen=True, slots=True)
class ResultFact:
    """One result file as its collection wrote it."""

    name: str  # the file's name in the results folder
    size: int
    mtime_ns: int
    ino: int
    sha256: str
    report: list[Any]  # `report_entry` of it
    tasks: int  # how many tasks the recycling takes from it (a result that gives some is read by it)
    simulated: bool
    issue: str | None  # the issue and processor whose earlier tasks its answer supersedes (`source_of`)
    processor: str | None

    def matches(self, st: os.stat_result) -> bool:
        """Whether the file is still the one written (a file edited, rewritten or replaced is another)."""
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.ino)

    @classmethod
    def parse(cls, line: bytes) -> ResultFact | None:
        """A fact from its line (`read_fact_lines`); None when the line is not a whole fact."""
        try:
            name, _, rest = line.decode("utf-8").partition("\t")
            size, mtime, ino, digest, report, tasks, simulated, issue, processor = json.loads(rest)
        except (ValueError, TypeError, RecursionError):
            return None
        ints = all(type(v) is int for v in (size, mtime, ino, tasks))
        texts = isinstance(digest, str) and all(v is None or isinstance(v, str) for v in (issue, processor))
        if not (ints and texts and entry_ok(report) and report[:2] == [size, mtime] and type(simulated) is bool):
            return None
        return cls(name, size, mtime, ino, digest, report, tasks, simulated, issue, processor)


class FactsWriter:
    """A chunk's facts, gathered while its results are written, then written in one file."""

    def __init__(self, layout: Layout, processor: str, chunk: str) -> None:
        from .tasks import extract  # here: the tasks package (its recycling) imports this module

        self.extract = extract
        self.path = layout.result_facts(processor, chunk)
        self.root = str(layout.root.resolve())
        self.lines: list[bytes] = []

    def add(self, name: str, st: os.stat_result, data: bytes, doc: dict[str, Any]) -> None:
        """The fact of a result file just written: `st` its stat as written, `data` its bytes, `doc` its JSON."""
        if "\t" in name or "\n" in name:
            return  # not a name a line can hold: the file is read
        source = self.extract.source_of(doc, name)
        fact = [
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            sha256_hex(data),
            report_entry(doc, st.st_size, st.st_mtime_ns, self.root),
            len(self.extract.tasks_from_result(doc, name)),
            self.extract.is_simulated(doc),
            source.issue if source else None,
            source.processor if source else None,
        ]
        self.lines.append(name.encode("utf-8") + b"\t" + json.dumps(fact, separators=(",", ":")).encode() + b"\n")

    def write(self) -> None:
        """The facts file (none for a collection that wrote no result). A speed-up only: one that cannot be
        written leaves the files to be read."""
        if not self.lines:
            return
        with contextlib.suppress(OSError), atomic_writer(self.path, durable=False) as handle:
            handle.write(_header(self.root))
            handle.writelines(self.lines)


def _facts_files(layout: Layout) -> list[Path]:
    try:
        return sorted(layout.facts_dir.glob("*/*.jsonl"))
    except OSError:
        return []


def read_fact_lines(layout: Layout) -> Iterator[tuple[str, bytes]]:
    """Every fact line of the workspace's facts files, with its result file's name (a later file's fact of a
    name replaces an earlier one only if the reader keeps the last). A file of another version or workspace,
    and a torn last line, are left out."""
    header = _header(str(layout.root.resolve()))
    for path in _facts_files(layout):
        try:
            with open(path, "rb") as handle:
                if handle.readline() != header:
                    continue
                for line in handle:
                    if line.endswith(b"\n"):
                        name, tab, _ = line.partition(b"\t")
                        if tab:
                            with contextlib.suppress(UnicodeDecodeError):
                                yield name.decode("utf-8"), line
        except OSError:
            continue


class FactLines:
    """The facts files' lines by result name, for a reader that takes them in an order of its own (the report
    takes them in the results' name order). Each line is copied to an unnamed scratch file beside the facts
    and read back when asked for: the reader holds an offset a result, not its line (at 100,000 issues and two
    processors the lines are some 140 MB in memory). Where no scratch file can be written, they are held."""

    def __init__(self, layout: Layout) -> None:
        self._at: dict[str, int | bytes] = {}  # name -> offset << 32 | length in the scratch file, or the line
        self._scratch: IO[bytes] | None = None
        try:
            offset = 0
            for name, line in read_fact_lines(layout):
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryFile(dir=layout.work_dir)  # unnamed: gone with its handle
                self._scratch.write(line)
                self._at[name] = offset << 32 | len(line)
                offset += len(line)
            if self._scratch is not None:
                self._scratch.flush()
        except OSError:  # no room for it: the lines in memory
            self.close()
            self._at = dict(read_fact_lines(layout))

    def get(self, name: str) -> bytes | None:
        """The fact line of a result file (`ResultFact.parse`), or None (none, or the scratch file unreadable:
        the file is read)."""
        at = self._at.get(name)
        if at is None or isinstance(at, bytes):
            return at
        if self._scratch is None:  # closed
            return None
        try:
            return os.pread(self._scratch.fileno(), at & 0xFFFFFFFF, at >> 32)
        except OSError:
            return None

    def close(self) -> None:
        if self._scratch is not None:
            with contextlib.suppress(OSError):
                self._scratch.close()
            self._scratch = None

    def __enter__(self) -> FactLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_facts(layout: Layout) -> int:
    """Remove the facts files (after the report and the recycling took them in); returns how many."""
    removed = 0
    for path in _facts_files(layout):
        with contextlib.suppress(OSError):  # a speed-up only: one left is read, or removed next time
            path.unlink()
            removed += 1
    return removed
