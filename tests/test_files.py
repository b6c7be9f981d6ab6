"""files.py: `pretty_json` writes exactly what `json.dumps(sort_keys=True, indent=2, ensure_ascii=False)` does."""

from __future__ import annotations

import io
import json
import os
import stat
from collections import OrderedDict
from pathlib import Path

import pytest

from batchpipe import files
from batchpipe.files import atomic_write_json, pretty_json

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "issues"


def standard(value):
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class Text(str):
    pass


class Number(int):
    pass


VALUES = [
    None,
    True,
    0,
    -0.0,
    1.5,
    1e300,
    1e-7,
    10**30,
    "",
    'é \u2028 \x00 " \\ \ud800 \n',
    Text("a str subclass"),
    Number(7),
    [],
    {},
    [[]],
    {"": [{}]},
    (1, "two", None),
    {"b": 1, "a": [None, False, {"z": {}, "y": []}], "c": {"d": [1.0, 2, "3"]}},
    OrderedDict([("b", 2), ("a", 1)]),
    # left to the standard encoder: its spelling of NaN and the infinities, and keys that are not strings
    float("nan"),
    [float("inf"), float("-inf")],
    {1: "one", 2: {"x": 3}},
    {"a": {None: 1}},
    {"a": [[1], [2], [3]], "b": float("nan")},  # written in part before the standard encoder takes over
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_pretty_json_is_the_standard_encoding(value):
    assert pretty_json(value) == standard(value)


def test_pretty_json_of_the_bundled_issues_and_a_result_like_document():
    docs = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(SAMPLE.glob("*.json"))]
    assert docs
    docs.append({"answer": {"labels": [{"name": "bug", "confidence": 0.9}]}, "usage": {"input_tokens": 12}})
    for doc in docs:
        assert pretty_json(doc) == standard(doc)


def test_pretty_json_fails_as_the_standard_encoder_does():
    with pytest.raises(TypeError):
        pretty_json({"a": object()})
    with pytest.raises(TypeError):
        pretty_json({"a": 1, 2: "b"})  # keys that cannot be sorted together
    with pytest.raises(TypeError):
        pretty_json({"a": {None: 1, True: 2}})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        pretty_json(loop)


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_atomic_write_json_writes_pretty_json_piece_by_piece(value, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_FLUSH_AT", 2)  # a flush after nearly every piece
    path = tmp_path / "value.json"
    path.write_text("an older, longer file " * 10, encoding="utf-8")
    try:
        expected = standard(value).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: nothing is written, as before
        with pytest.raises(UnicodeEncodeError):
            atomic_write_json(path, value)
        expected = ("an older, longer file " * 10).encode("utf-8")
    else:
        atomic_write_json(path, value)
    assert path.read_bytes() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["value.json"]


def test_write_pretty_json_of_a_large_table_writes_it_in_pieces():
    table = {f"cid{i:05d}": {"issues": [{"key": f"o_r_issue_{i}", "n": i}], "hash": "h" * 64} for i in range(3000)}
    value = {"chunk": "c", "requests": table, "tail": [1.5]}

    class Sink(io.BytesIO):
        sizes: list[int] = []

        def write(self, data):  # type: ignore[override]
            self.sizes.append(len(data))
            return super().write(data)

    sink = Sink()
    files.write_pretty_json(sink, value)
    whole = standard(value).encode("utf-8")
    assert sink.getvalue() == whole
    assert len(Sink.sizes) > 10 and max(Sink.sizes) < len(whole) / 5  # never held whole


def test_table_json_writes_each_entry_of_a_table_on_one_line(tmp_path, monkeypatch):
    table = {f"r{i}a1": {"issues": [{"key": f"o_r_issue_{i}", "number": i}], "attempt": 1} for i in range(3)}
    value = {"chunk": "c", "requests": table, "empty": {}, "tail": [1.5, [2]], "sizes": {"a.json": 3}}
    text = files.table_json(value)
    assert json.loads(text) == value
    assert text.splitlines() == [
        "{",
        '  "chunk": "c",',
        '  "empty": {},',
        '  "requests": {',
        '    "r0a1": {"attempt":1,"issues":[{"key":"o_r_issue_0","number":0}]},',
        '    "r1a1": {"attempt":1,"issues":[{"key":"o_r_issue_1","number":1}]},',
        '    "r2a1": {"attempt":1,"issues":[{"key":"o_r_issue_2","number":2}]}',
        "  },",
        '  "sizes": {',
        '    "a.json": 3',
        "  },",
        '  "tail": [',
        "    1.5,",
        "    [2]",
        "  ]",
        "}",
    ]
    monkeypatch.setattr(files, "_FLUSH_AT", 2)  # written piece by piece, the same bytes
    files.atomic_write_table(tmp_path / "t.json", value)
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == text
    odd = {1: {"x": [float("nan")]}}  # what the direct path leaves to the standard encoder: its whole text
    assert files.table_json(odd) == standard(odd)


def test_atomic_write_json_that_fails_leaves_the_older_file(tmp_path):
    path = tmp_path / "value.json"
    path.write_text("{}\n", encoding="utf-8")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": [1] * 10000 + [object()]})
    assert path.read_text(encoding="utf-8") == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["value.json"]


def test_atomic_writes_give_the_mode_open_gives_and_leave_no_temporary(tmp_path):
    old = os.umask(0o027)
    try:
        files.atomic_write_bytes(tmp_path / "a.json", b"{}\n")
        assert files.write_new(tmp_path / "sub" / "b.json", b"[]\n")  # its folder made as well
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "sub" / "b.json").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.json", "sub"]


def test_write_new_never_replaces_a_file_that_is_there(tmp_path):
    path = tmp_path / "r.json"
    assert files.write_new(path, b"first\n")
    assert not files.write_new(path, b"second\n")
    assert path.read_bytes() == b"first\n"
    link = tmp_path / "dangling.json"
    link.symlink_to(tmp_path / "nowhere.json")
    assert not files.write_new(link, b"x\n")  # a link is a file there, even to nothing
    assert link.is_symlink() and not (tmp_path / "nowhere.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "r.json"]


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_write_new_gives_the_stat_of_the_file_as_it_lands(tmp_path, monkeypatch, unnamed):
    """Its size, mtime and inode are the file's once linked in: a fact of it stands for the file (`facts`)."""
    monkeypatch.setattr(files, "_UNNAMED", [unnamed and files._UNNAMED[0]])
    path = tmp_path / "sub" / "r.json"
    st = files.write_new(path, b"first\n")
    assert st is not None and not stat.S_ISDIR(st.st_mode)
    now = path.stat()
    assert (st.st_size, st.st_mtime_ns, st.st_ino) == (now.st_size, now.st_mtime_ns, now.st_ino)
    assert st.st_size == 6
    assert files.write_new(path, b"second\n") is None


def test_write_new_without_hard_links_still_never_replaces(tmp_path, monkeypatch):
    def no_links(source, target, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    monkeypatch.setattr(files, "_UNNAMED", [files._UNNAMED[0]])  # what it learns stays in this test
    path = tmp_path / "r.json"
    assert files.write_new(path, b"first\n")
    assert not files.write_new(path, b"second\n")
    assert path.read_bytes() == b"first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="Linux's unnamed files")
def test_write_new_links_an_unnamed_file_where_the_system_allows(tmp_path, monkeypatch):
    def no_named(path):
        raise AssertionError(f"a named temporary beside {path}")

    monkeypatch.setattr(files, "_UNNAMED", [True])
    monkeypatch.setattr(files, "_temporary", no_named)
    assert files.write_new(tmp_path / "sub" / "r.json", b"first\n")  # its folder made as well
    assert not files.write_new(tmp_path / "sub" / "r.json", b"second\n")
    assert (tmp_path / "sub" / "r.json").read_bytes() == b"first\n"
    assert files._UNNAMED == [True]


def test_write_new_falls_back_to_named_temporaries_where_unnamed_files_fail(tmp_path, monkeypatch):
    real_open = os.open

    def no_unnamed(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
            raise OSError(95, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files, "_UNNAMED", [hasattr(os, "O_TMPFILE")])
    monkeypatch.setattr(files.os, "open", no_unnamed)
    assert files.write_new(tmp_path / "r.json", b"first\n")
    assert not files.write_new(tmp_path / "r.json", b"second\n")
    assert (tmp_path / "r.json").read_bytes() == b"first\n"
    assert files._UNNAMED == [False]  # learnt once: later files go the named way at once
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="Linux's unnamed files")
def test_write_new_raises_a_full_disk_and_goes_on_with_unnamed_files(tmp_path, monkeypatch):
    real_open = os.open

    def full(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(28, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files, "_UNNAMED", [True])
    monkeypatch.setattr(files.os, "open", full)
    with pytest.raises(OSError, match="No space"):
        files.write_new(tmp_path / "r.json", b"x\n")
    assert files._UNNAMED == [True] and list(tmp_path.iterdir()) == []  # a passing error: nothing learnt
    monkeypatch.setattr(files.os, "open", real_open)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub").rmdir()  # a folder gone meanwhile is made again
    assert files.write_new(tmp_path / "sub" / "r.json", b"x\n") and files._UNNAMED == [True]


def test_read_with_stat_gives_the_bytes_and_the_stat_of_the_file_read(tmp_path):
    path = tmp_path / "r.json"
    for data in (b"", b"{}\n", "é".encode() * 100_000):
        path.write_bytes(data)
        got, st = files.read_with_stat(path)
        assert got == data and files.read_bytes(path) == data
        assert (st.st_size, st.st_ino) == (len(data), path.stat().st_ino)
    with pytest.raises(IsADirectoryError):
        files.read_with_stat(tmp_path)
    with pytest.raises(FileNotFoundError):
        files.read_bytes(tmp_path / "missing.json")
