"""Small file helpers: atomic writes, canonical JSON, content hashes, JSONL, locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

T = TypeVar("T")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pretty_json(value: Any, flat_depth: int | None = None) -> str:
    """Readable JSON, deterministic (sorted keys), ending in a newline: `json.dumps(value, sort_keys=True,
    indent=2, ensure_ascii=False)`, byte for byte. Its indented form runs the standard library's pure-Python
    encoder, a generator per container; every result and task file is written this way, so plain values
    (str keys; str, int, float, bool, None, list, tuple, dict) take a direct path, and anything else the
    standard one. `flat_depth`: containers that many levels down are written as `canonical_json`, a line each."""
    parts: list[str] = []
    try:
        _pretty(value, parts, "\n", None, 0 if flat_depth is None else _flat(flat_depth))
    except (_NotPlain, RecursionError):
        return _standard_pretty(value)
    parts.append("\n")
    return "".join(parts)


def _standard_pretty(value: Any) -> str:
    """`pretty_json`'s text by the standard encoder (what `_pretty` leaves to it)."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class _NotPlain(Exception):
    """A value `_pretty` leaves to the standard encoder."""


_quote = json.encoder.encode_basestring  # the C function where CPython has it, as json.dumps uses
_INF = float("inf")


_FLUSH_AT = 4096  # pieces `_pretty` gathers before a writer's `flush` takes them


def _pretty(value: Any, out: list[str], newline: str, flush: Callable[[], None] | None = None, flat: int = 0) -> None:
    # the order of json.encoder's checks: str, None, True, False, int, float, list/tuple, dict.
    # `flush`: called between a container's items once `out` holds `_FLUSH_AT` pieces (it empties `out`);
    # `flat`: a container whose `newline` is this long or longer is written as `canonical_json` (0: none)
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in (_INF, -_INF):
            raise _NotPlain  # NaN and the infinities: the standard encoder's spelling
        out.append(float.__repr__(value))
    elif isinstance(value, (list, tuple)):
        if flat and len(newline) >= flat:
            out.append(canonical_json(value))
            return
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "," + inner
        out.append("[" + inner)
        first = True
        for item in value:
            if first:
                first = False
            else:
                out.append(separator)
            if isinstance(item, str):
                out.append(_quote(item))
            else:
                _pretty(item, out, inner, flush, flat)
                if flush is not None and len(out) >= _FLUSH_AT:
                    flush()
        out.append(newline + "]")
    elif isinstance(value, dict):
        if flat and len(newline) >= flat:
            out.append(canonical_json(value))
            return
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        separator = "," + inner
        out.append("{" + inner)
        first = True
        for key in sorted(value):  # a TypeError (keys of mixed types) is the standard encoder's, as before
            if not isinstance(key, str):
                raise _NotPlain  # the standard encoder turns other keys into strings
            if first:
                first = False
            else:
                out.append(separator)
            out.append(_quote(key) + ": ")
            item = value[key]
            if isinstance(item, str):
                out.append(_quote(item))
            else:
                _pretty(item, out, inner, flush, flat)
                if flush is not None and len(out) >= _FLUSH_AT:
                    flush()
        out.append(newline + "}")
    else:
        raise _NotPlain


def sha256_hex(data: bytes | str) -> str:
    """The hex SHA-256 of bytes, or of a text as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's content, read as a stream (a request file may be 200 MB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def making_folder(path: Path, make: Callable[[], T]) -> T:
    """`make()` (which creates `path`), once more after making the folder when it is missing.

    Rather than a mkdir before every file: most files land in a folder that exists."""
    try:
        return make()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make()


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` through a temp file in the same folder, fsync, then rename.

    durable=False skips the fsync (the rename stays atomic for readers): only for files derived from
    durable ones and rebuilt when missing, such as per-issue results."""
    with atomic_writer(path, durable) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A file written piece by piece, then renamed into place (fsynced first when `durable`): readers see
    the old file or the whole new one; an exception leaves no trace."""
    path = Path(path)
    fd, tmp = making_folder(path, lambda: _temporary(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _temporary(path: Path) -> tuple[int, str]:
    """A new file beside `path` for an atomic write, `.{name}.{8 hex digits}.tmp`: the exclusive create
    `tempfile.mkstemp` does, without its cost per name (results are written by the hundred thousand), and
    with the mode open() gives (mkstemp's is 0600)."""
    while True:
        tmp = f"{path.parent}/.{path.name}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def write_new(path: Path, data: bytes) -> os.stat_result | None:
    """Write `path` atomically (no fsync) only if no file is there: the stat of the file written (its size,
    mtime and inode as it lands), or None, and nothing written, if one is there. For a file that was absent a
    moment ago, which another process may write meanwhile. Where the file system has no hard links, a file made
    between the look and the rename is replaced (as a plain check would)."""
    if _UNNAMED[0]:
        made = making_folder(path, lambda: _write_unnamed(path, data))
        if made is not None:
            return made if isinstance(made, os.stat_result) else None
    fd, tmp = making_folder(path, lambda: _temporary(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            st = os.fstat(handle.fileno())  # a link or a rename keeps the inode, size and mtime
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError:  # no hard links here: the same, but for a file made in between
            if os.path.lexists(path):
                return None
            os.replace(tmp, path)
        return st
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_UNNAMED = [hasattr(os, "O_TMPFILE")]  # False once this process found it unsupported (then: named temporaries)


def _write_unnamed(path: Path, data: bytes) -> os.stat_result | Literal[False] | None:
    """`write_new` through a file with no name until it is linked in whole (Linux's `O_TMPFILE`): one entry
    added to the folder, where a named temporary adds one, links and removes it (results are written by the
    hundred thousand into one folder). Its stat as written; False when a file is there; None where the folder
    or the system does not allow it."""
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in _NO_UNNAMED_FILES:
            _UNNAMED[0] = False
            return None
        raise  # no folder yet (`making_folder` makes it), a full disk, too many open files: as any write
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) == 0o666 and (umask := _umask()):  # kernels before 6.0 without ACLs
            os.fchmod(fd, 0o666 & ~umask)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        st = os.fstat(fd)  # linking it in keeps its inode, size and mtime
    except BaseException:
        os.close(fd)
        raise
    try:
        # linkat, which follows the /proc link to the open file; a dir_fd makes Python call it instead of
        # link(), and is ignored for an absolute path
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
        return st
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.isdir("/proc/self/fd"):
            raise  # the folder went meanwhile: `making_folder` makes it again
        if exc.errno in _NO_LINKS:  # no /proc, or no hard links here
            _UNNAMED[0] = False
            return None
        raise
    finally:
        os.close(fd)


# why an unnamed file cannot be made here (an older kernel, a file system without them), or not linked in
_NO_UNNAMED_FILES = {errno.EISDIR, errno.EOPNOTSUPP, errno.EINVAL}
_NO_LINKS = {errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK}


def _umask() -> int:
    """The process's umask as Linux shows it (its status file; one cannot read it without setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """`target` becomes a hard link to `source` (for files never rewritten in place), or a copy, streamed, where
    the file system has no hard links; atomically either way."""
    source, target = Path(source), Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        making_folder(target, lambda: os.link(source, temporary))
    except OSError:
        with source.open("rb") as data, atomic_writer(target) as copy:
            shutil.copyfileobj(data, copy, 1 << 20)
        return
    os.replace(temporary, target)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> None:
    """Write `pretty_json(value)` atomically and durably, piece by piece as it is made."""
    with atomic_writer(path) as handle:
        write_pretty_json(handle, value)


TABLE_DEPTH = 2  # a table file's document -> its table (custom_id -> entry) -> one entry per line


def table_json(value: Any) -> str:
    """`pretty_json`, but each container `TABLE_DEPTH` levels down (a request's entry in a chunk's table)
    on one line, as `canonical_json`: a file with one line per request, whose entries are encoded by the
    standard library's C encoder, not indented a piece at a time (a chunk may have 50,000 requests)."""
    return pretty_json(value, TABLE_DEPTH)


def atomic_write_table(path: str | Path, value: Any) -> None:
    """Write `table_json(value)` atomically and durably, piece by piece as it is made: a chunk's index,
    marker or manifest (tens of MB for a large chunk) is never held whole as text."""
    with atomic_writer(path) as handle:
        write_pretty_json(handle, value, TABLE_DEPTH)


def _flat(depth: int) -> int:
    """`_pretty`'s `flat` for containers `depth` levels down: the length of their newline."""
    return 1 + 2 * depth


def write_pretty_json(handle: BinaryIO, value: Any, flat_depth: int | None = None) -> None:
    """`pretty_json(value)` (`table_json` with `flat_depth`) written to a file opened for binary writing at
    its start, piece by piece."""
    parts: list[str] = []

    def flush() -> None:
        handle.write("".join(parts).encode("utf-8"))
        parts.clear()

    try:
        _pretty(value, parts, "\n", flush, 0 if flat_depth is None else _flat(flat_depth))
    except (_NotPlain, RecursionError):  # the standard encoder's text, over what was written so far
        handle.seek(0)
        handle.truncate()
        handle.write(_standard_pretty(value).encode("utf-8"))
        return
    parts.append("\n")
    flush()


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """JSONL with one compact line per row and no blank lines (JSONL readers break on them)."""
    return "".join(canonical_json(row) + "\n" for row in rows).encode("utf-8")


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes (`Path.read_bytes`, without a file object: the result, issue and task files are read
    by the hundred thousand)."""
    return read_with_stat(path)[0]


def read_with_stat(path: str | Path) -> tuple[bytes, os.stat_result]:
    """A file's bytes and the stat of the very file read (a file replaced meanwhile is the other one whole)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        pieces = [os.read(fd, st.st_size + 1)]
        while pieces[-1]:  # the file grew since the fstat, or a file system that gives less at a time
            pieces.append(os.read(fd, max(st.st_size, 65536)))
    finally:
        os.close(fd)
    return pieces[0] if len(pieces) == 2 else b"".join(pieces), st


def read_json(path: str | Path) -> Any:
    """The parsed JSON of a UTF-8 file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def append_line_durably(path: str | Path, line: str) -> None:
    """Append one line and fsync it: used for journals that must survive a crash.

    A last line cut short (a power cut mid-append) is ended first, so it stays one bad line of its own
    instead of swallowing this one."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with making_folder(path, lambda: open(path, "a+b")) as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                data = b"\n" + data
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock held on `path` (created if missing), across threads and processes."""
    path = Path(path)
    with making_folder(path, lambda: open(path, "a")) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class FolderListing:
    """Which files a folder holds, from one listing: for asking about thousands of files of one folder
    without a stat each (a path elsewhere is asked of the file system)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names: set[str] | None
        try:  # a symbolic link counts when what it points to exists, as Path.exists says
            with os.scandir(folder) as entries:
                self.names = {e.name for e in entries if not e.is_symlink() or os.path.exists(e.path)}
        except (FileNotFoundError, NotADirectoryError):
            self.names = set()
        except OSError:
            self.names = None  # not listable (permissions, ...): each path is asked, as before

    def exists(self, path: Path) -> bool:
        if self.names is not None and path.parent == self.folder:
            return path.name in self.names
        return path.exists()

    def holds(self, name: str) -> bool:
        """Whether the folder holds a file of that name (`exists` of `folder / name`, without the `Path`)."""
        if self.names is not None:
            return name in self.names
        return (self.folder / name).exists()
