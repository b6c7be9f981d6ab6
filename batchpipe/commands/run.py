"""`batchpipe run [snakemake arguments]`: the one command for cron and for people.

It takes a lock of its own (one run per workspace), clears a stale Snakemake lock only when no run is
alive in this folder, runs the workflow (`python -m snakemake`, the profile's defaults, `results/all`
unless a target is given), prints the summary, and exits with the workflow's code (the README's table).
SIGINT/SIGTERM are passed to the workflow, which stops its waits at once; batches keep running at the
provider and the next run resumes them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .. import exitcodes
from ..errors import CommandError
from ..files import making_folder
from ..layout import SUMMARY_TABLE

STOP_GRACE = 7.0  # seconds the workflow has to stop after SIGINT/SIGTERM before it is killed (all gone within 10 s)


def snakemake_alive(root: Path) -> list[int]:
    """Pids of Snakemake processes working in `root` (Linux /proc; elsewhere none are found)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if any(part.endswith(b"snakemake") for part in cmdline[:3]) and cwd == root:
            found.append(int(entry.name))
    return found


def clear_stale_lock(root: Path) -> bool:
    """Remove Snakemake's lock when no Snakemake process is alive here (a killed run left it)."""
    locks = root / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()) or snakemake_alive(root):
        return False
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=root, capture_output=True, check=False)
    print("batchpipe run: cleared the Snakemake lock a stopped run left (no run is alive here)", file=sys.stderr)
    return True


def run(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "Snakefile").is_file():
        raise CommandError(f"{root}: no Snakefile here; run from the workflow folder")
    lock_path = root / ".batchpipe" / "run.lock"
    handle = making_folder(lock_path, lambda: open(lock_path, "a+"))
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise CommandError(f"another `batchpipe run` is running here (pid {handle.read().strip() or '?'})") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        clear_stale_lock(root)
        extra = [a for a in args.snakemake_args or [] if a != "--"]
        # after the targets and the user's own options: `--configfile` and `--config` take every word that follows
        if args.configfiles:  # snakemake reads config.yaml first by itself (the Snakefile's configfile)
            extra += ["--configfile", *args.configfiles]
        if args.config:
            extra += ["--config", *args.config]
        return _run_workflow(root, extra)
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _term_with_parent() -> None:
    """In the workflow's process, before it starts: SIGTERM when `batchpipe run` dies, even by `kill -9`
    (Linux `prctl(PR_SET_PDEATHSIG)`), so that no run outlives the command that started it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the workflow then ends on its own


def _run_workflow(root: Path, extra: list[str]) -> int:
    started = time.time()
    stopping: list[float] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        stopping.append(time.monotonic())

    # the handlers first: a signal that arrives while the workflow starts is passed on, never lost
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *extra],
            cwd=root,
            preexec_fn=_term_with_parent,  # noqa: PLW1509
        )
        children.append(child)
        if stopping:
            child.send_signal(signal.SIGTERM)  # stopped before it started
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > STOP_GRACE:
                    child.kill()  # its workers watch it and end with it
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping:
        return exitcodes.INTERRUPTED
    table = root / SUMMARY_TABLE
    try:
        if table.stat().st_mtime < started:  # the workflow did not print it this time (nothing to do)
            print(table.read_text(encoding="utf-8"), end="")
    except OSError:
        pass
    return code


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the workflow: one run at a time, stale locks cleared, the summary, the README's exit codes",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake (e.g. --config wait=false)")
    p.set_defaults(func=run)
