"""Kill -9 the run at seeded random points, again and again: never a second batch, never a lost answer,
never a process left behind; and SIGTERM/SIGINT stop a waiting run at once, resumably.

For each provider (`local`, the embedded default; `openai` and `anthropic` through the loopback Emulator
on 127.0.0.1) a seeded loop starts a run, `python -m snakemake --cores 4 results/all` and
`python -m batchpipe run` in turn, reads its merged output line by line and SIGKILLs the Snakemake main
process right after the k-th line (k from `random.Random(seed)`). After every run no process whose cwd
is the workspace may stay alive. A plain Snakemake run is preceded by `snakemake --unlock` when a killed
run left the lock, and by nothing else; `batchpipe run` needs nothing. New issues arrive every few kills,
batches spend a short while in progress, so the kills land on planning, submitting, waiting, downloading
and collecting. Then plain reruns finish the work, and the ledger, the provider's batches and the
results are checked against each other and against a clean run of the same issues in a second workspace.

A failing kill-loop test names its seed, every attempt (runner, k, whether it was killed, exit code, the
jobs running at the kill, the last line read) and keeps each run's output under the test's tmp_path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from batchpipe.service.emulator import Emulator
from batchpipe.service.engine import BatchEngine, Timing

from conftest import REPO, Workspace, make_workspace

KILLS = 20  # SIGKILLs per provider (at least 20)
SEEDS = {"local": 7001, "openai": 7002, "anthropic": 7003}
MAX_LINE = 150  # a kill point k is drawn from 1..MAX_LINE (a run prints ~20-250 lines, ~40 before its first job)
FIRST_ISSUES = 6  # issues in the workspace at the start
ADD_ISSUES = 3  # issues added every ADD_EVERY kills, and whenever a run finishes all its work
ADD_EVERY = 5
POOL = sorted((REPO / "data" / "issues").glob("*.json"))
TIMING = Timing(validating=0.05, in_progress=0.3, finalizing=0.1)  # a short wait for every batch
GONE_WITHIN = 10.0  # seconds every process of a stopped run has to end
RUN_TIMEOUT = 120.0  # one run of the loop (a hang is a failure, not a stuck CI job)
LOOP_DEADLINE = 300.0
RERUN_DEADLINE = 90.0
WAITING = 4  # the README's exit code: a chunk waits for a batch to be verified
INTERRUPTED = 130
KEYS = {"openai": "sk-test-secret-key-123", "anthropic": "sk-ant-test-secret-key-123"}


# --- the provider: the embedded local service, or the emulator --------------------------------------------


@dataclass
class Service:
    """Where the provider keeps its batches (a BatchEngine state dir) and what a run needs to reach it."""

    provider: str
    env: dict[str, str]
    state_dir: Path
    emulator: Emulator | None = None

    def batches(self) -> dict[str, list[str]]:
        """Every batch the provider holds -> the custom_ids sent in it (from the batch's stored requests)."""
        engine = self.emulator.engine if self.emulator is not None else BatchEngine(self.state_dir)
        held = {}
        for record in engine.list_batches():
            requests = (engine.state_dir / "batches" / record.id / "requests.jsonl").read_text(encoding="utf-8")
            held[record.id] = [json.loads(line)["custom_id"] for line in requests.splitlines() if line.strip()]
        return held


@contextlib.contextmanager
def service(provider: str, ws: Workspace, emulator_dir: Path, timing: Timing) -> Iterator[Service]:
    if provider == "local":  # the embedded service lives in the workspace; its delays come from config.yaml
        yield Service(provider, {}, ws.root / ".batchpipe" / "local")
        return
    with Emulator(emulator_dir, timing=timing) as emu:
        if provider == "openai":
            env = {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": KEYS[provider]}
        else:
            env = {"ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": KEYS[provider]}
        yield Service(provider, env, emu.engine.state_dir, emu)


def configure(ws: Workspace, provider: str, chunk_size: int, timing: Timing) -> None:
    """product-labeling only, small chunks, quick polls; the local service's batches wait like the emulator's."""
    path = ws.root / "config.yaml"
    values = yaml.safe_load(path.read_text())
    values.update(
        provider=provider,
        processors=["product-labeling"],
        chunk_size=chunk_size,
        poll_interval=0.05,
        max_poll_interval=0.2,
    )
    values["local"]["delays"] = {
        "validating": timing.validating,
        "in_progress": timing.in_progress,
        "finalizing": timing.finalizing,
    }
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def run_env(svc: Service) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update(svc.env)
    env["PYTHONUNBUFFERED"] = "1"  # every line reaches the pipe when it is printed: kills follow the events
    return env


# --- processes, from /proc -----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes_in(root: Path) -> dict[int, str]:
    """Live (not zombie) processes whose cwd is `root`: pid -> 'state ppid cmdline'."""
    root_text = os.path.realpath(root)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") != root_text:
                continue
        except OSError:
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        found[int(entry.name)] = f"{stat[0]} ppid={stat[1]} {_cmdline(int(entry.name))}"
    return found


def left_alive(root: Path, within: float = GONE_WITHIN) -> dict[int, str]:
    """Poll until no process works in `root`; what is still alive after `within` seconds (then ended)."""
    deadline = time.monotonic() + within
    while True:
        alive = processes_in(root)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:  # processes of this test's own runs: end them, so that a failure leaves nothing behind
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return alive


def end_all(root: Path) -> None:
    """End every process still working in `root`: a failing test leaves nothing running behind it."""
    for _ in range(100):
        alive = processes_in(root)
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def snakemake_child(parent: subprocess.Popen, within: float = 10.0) -> int | None:
    """The Snakemake main process `batchpipe run` started (its child; not the `--unlock` one)."""
    deadline = time.monotonic() + within
    while parent.poll() is None and time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            stat = _stat(int(entry.name))
            if stat is None or stat[1] != parent.pid or stat[0] in ("Z", "X"):
                continue
            cmd = _cmdline(int(entry.name))
            if "snakemake" in cmd and "--unlock" not in cmd:
                return int(entry.name)
        time.sleep(0.01)
    return None


# --- one run, killed after its k-th line ----------------------------------------------------------------

JOB_START = re.compile(r"local(?:rule|checkpoint) (\w+):")
JOB_ID = re.compile(r"^\s+jobid: (\d+)")
JOB_END = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


class Output:
    """A run's merged stdout/stderr, line by line (read by a thread: the pipe never fills, and a read
    never blocks the test past its deadline). It tracks which jobs are running, for the trace."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.ended = False
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.running: dict[str, str] = {}
        self._starting: str | None = None
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.queue.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
        self.queue.put(None)

    def next(self, deadline: float) -> str | None:
        """The next line, None at the end of the output; fails past the deadline."""
        try:
            line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("a run printed nothing more before its deadline (hung?)") from None
        if line is None:
            self.ended = True
        else:
            self.lines.append(line)
            self._track(line)
        return line

    def _track(self, line: str) -> None:
        if found := JOB_START.search(line):
            self._starting = found.group(1)
        elif (found := JOB_ID.match(line)) and self._starting:
            self.running[found.group(1)] = self._starting
            self._starting = None
        for found in JOB_END.finditer(line):
            self.running.pop(found.group(1), None)

    def rest(self, within: float = GONE_WITHIN) -> None:
        """Read to the end of the output (every writer gone)."""
        deadline = time.monotonic() + within
        while not self.ended and time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):
                self.next(deadline)


@dataclass
class Attempt:
    number: int
    runner: str
    k: int
    killed: bool = False
    code: int | None = None
    running: list[str] = field(default_factory=list)  # jobs (rules) running when it was killed
    last_line: str = ""
    lines: int = 0
    seconds: float = 0.0
    times: dict[str, float] = field(default_factory=dict)  # seconds from the start of the run
    left_alive: dict[int, str] = field(default_factory=dict)  # processes alive GONE_WITHIN s after it ended
    note: str = ""

    def __str__(self) -> str:
        what = f"KILLED after line {self.k}" if self.killed else f"ran to its end (k={self.k}), exit {self.code}"
        jobs = f" running={sorted(set(self.running))}" if self.killed else ""
        note = f" NOTE: {self.note}" if self.note else ""
        times = " ".join(f"{name} {t:.1f}" for name, t in self.times.items())
        return (
            f"#{self.number:02d} {self.runner:9} {what}{jobs}; {self.lines} lines, {self.seconds:.1f}s ({times}); "
            f"last line: {self.last_line[:140]!r}{note}"
        )


def unlock_if_locked(ws: Workspace, env: dict[str, str]) -> None:
    """What a user does after a killed plain-snakemake run: `snakemake --unlock`, nothing else."""
    locks = ws.root / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "--unlock"], cwd=ws.root, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def run_and_kill(ws: Workspace, env: dict[str, str], attempt: Attempt, log_dir: Path) -> Attempt:
    """Start the run, SIGKILL its Snakemake main process right after its k-th line of output (if it gets
    that far), then see that every process of the run ends within GONE_WITHIN seconds (those that do not are
    recorded in `attempt.left_alive`, then ended)."""
    started = time.monotonic()
    if attempt.runner == "snakemake":
        unlock_if_locked(ws, env)
        argv = [sys.executable, "-m", "snakemake", "--cores", "4", "results/all"]
    else:
        argv = [sys.executable, "-m", "batchpipe", "run"]
    launched = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ws.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out = Output(proc)
    try:
        deadline = started + RUN_TIMEOUT
        count = 0
        while (line := out.next(deadline)) is not None:
            count += 1
            if count == 1:
                attempt.times["first line"] = time.monotonic() - launched
            if count == attempt.k:
                target = proc.pid if attempt.runner == "snakemake" else snakemake_child(proc)
                if target is None:  # batchpipe run is done with Snakemake: nothing to kill, read to the end
                    continue
                attempt.running = list(out.running.values())
                attempt.last_line = line
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
                attempt.times["kill"] = time.monotonic() - launched
                break
        attempt.code = proc.wait(timeout=GONE_WITHIN)
        # killed: Snakemake itself died of SIGKILL (batchpipe run passes on its child's -9 as 247)
        attempt.killed = attempt.code == -signal.SIGKILL if attempt.runner == "snakemake" else attempt.code == 247
        ended = time.monotonic()
        attempt.left_alive = left_alive(ws.root)
        attempt.times["gone"] = time.monotonic() - ended
        out.rest()
    finally:
        end_all(ws.root)
        proc.wait()
    attempt.seconds = time.monotonic() - started
    attempt.lines = len(out.lines)
    if not attempt.killed:
        attempt.last_line = out.lines[-1] if out.lines else ""
    (log_dir / f"{attempt.number:02d}-{attempt.runner}-k{attempt.k}.log").write_text("\n".join(out.lines) + "\n")
    if attempt.left_alive:
        attempt.note = f"still alive {GONE_WITHIN:.0f}s after the run ended (then killed): " + "; ".join(
            f"{pid}: {what}" for pid, what in attempt.left_alive.items()
        )
    return attempt


# --- what the files and the provider say ------------------------------------------------------------------


@dataclass
class Ledger:
    requests: dict[str, set[str]]  # chunk -> the custom_ids of its request table (prepared)
    created: dict[str, list[str]]  # chunk -> the batch ids of its created events
    bad_lines: list[str]


def read_ledger(ws: Workspace) -> Ledger:
    requests: dict[str, set[str]] = {}
    created: dict[str, list[str]] = {}
    bad = []
    for path in ws.files("batch_results/ledger/*.jsonl"):
        chunk = path.name.removesuffix(".jsonl")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                bad.append(f"{path.name}:{number}: {line[:120]!r}")
                continue
            if event["event"] == "prepared":
                requests[chunk] = set(event["requests"])
            elif event["event"] == "created":
                created.setdefault(chunk, []).append(event["batch_id"])
    return Ledger(requests, created, bad)


def check_paid_once(ws: Workspace, svc: Service) -> list[str]:
    """Problems with the money: a chunk with two batches, a batch two chunks claim or none does, a request
    sent twice, a batch whose requests are not its chunk's, a result whose request was never sent."""
    problems = []
    ledger = read_ledger(ws)
    problems += [f"ledger line that is not a whole event: {bad}" for bad in ledger.bad_lines]
    claims: dict[str, list[str]] = {}
    for chunk, ids in ledger.created.items():
        if len(set(ids)) > 1:
            problems.append(f"chunk {chunk} has {len(set(ids))} created batches: {sorted(set(ids))}")
        for batch_id in set(ids):
            claims.setdefault(batch_id, []).append(chunk)
    problems += [f"batch {b} is claimed by {len(o)} chunks: {sorted(o)}" for b, o in claims.items() if len(o) > 1]
    held = svc.batches()
    for batch_id, custom_ids in sorted(held.items()):
        owners = claims.get(batch_id, [])
        if not owners:
            problems.append(f"batch {batch_id} ({len(custom_ids)} requests) is claimed by no chunk (an orphan, paid)")
        elif len(owners) == 1 and set(custom_ids) != ledger.requests.get(owners[0]):
            problems.append(f"batch {batch_id} does not hold the requests of its chunk {owners[0]}")
    problems += [f"the ledger claims batch {b}, which the provider does not hold" for b in set(claims) - set(held)]
    sent = Counter(cid for custom_ids in held.values() for cid in custom_ids)
    problems += [f"custom_id {cid} was sent in {n} batches" for cid, n in sorted(sent.items()) if n != 1]
    for name, result in ws.results().items():
        if sent[result["custom_id"]] != 1:
            problems.append(
                f"{name}: its custom_id {result['custom_id']} was sent in {sent[result['custom_id']]} batches"
            )
        if result["batch_id"] not in held:
            problems.append(f"{name}: its batch {result['batch_id']} is not one the provider holds")
    return problems


def essentials(results: dict[str, dict]) -> dict[str, tuple]:
    return {
        name: (
            json.dumps(r["issue_reference"], sort_keys=True),
            r["custom_id"],
            json.dumps(r["analysis"], sort_keys=True),
        )
        for name, r in results.items()
    }


def clean_results(tmp_path: Path, provider: str, issues: list[Path], chunk_size: int) -> dict[str, dict]:
    """The results an uninterrupted run of the same issues makes, in a workspace and provider of its own."""
    ref = make_workspace(tmp_path / "clean", issues)
    instant = Timing()
    configure(ref, provider, chunk_size, instant)
    with service(provider, ref, tmp_path / "clean-emulator", instant) as svc:
        run = ref.snakemake("--cores", "4", "results/all", env=svc.env, check=False)
        assert run.returncode == 0, f"the clean run exited {run.returncode}:\n{run.output[-4000:]}"
    return ref.results()


# --- the kill loop --------------------------------------------------------------------------------------


def kill_loop(tmp_path: Path, provider: str) -> None:
    """The seeded SIGKILL loop, the reruns, and every check of the module docstring."""
    seed = SEEDS[provider]
    rng = random.Random(seed)
    chunk_size = rng.choice((2, 3))
    ws = make_workspace(tmp_path / "ws", POOL[:FIRST_ISSUES])
    configure(ws, provider, chunk_size, TIMING)
    waiting_ok = {0, WAITING} if provider == "anthropic" else {0}
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    attempts: list[Attempt] = []
    anomalies: list[str] = []
    added = FIRST_ISSUES

    def trace() -> str:
        return f"provider={provider} seed={seed} chunk_size={chunk_size} logs={log_dir}\n" + "\n".join(
            str(a) for a in attempts
        )

    def add_issues() -> None:
        nonlocal added
        for issue in POOL[added : added + ADD_ISSUES]:
            (ws.issues / issue.name).write_bytes(issue.read_bytes())
        added = min(len(POOL), added + ADD_ISSUES)

    with service(provider, ws, tmp_path / "emulator", TIMING) as svc:
        env = run_env(svc)
        deadline = time.monotonic() + LOOP_DEADLINE
        kills = 0
        while kills < KILLS:
            assert time.monotonic() < deadline, f"only {kills} kills in {LOOP_DEADLINE:.0f}s\n{trace()}"
            runner = ("snakemake", "batchpipe")[len(attempts) % 2]
            attempt = Attempt(len(attempts) + 1, runner, rng.randint(1, MAX_LINE))
            attempts.append(attempt)
            try:
                run_and_kill(ws, env, attempt, log_dir)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n\n{trace()}") from None
            if attempt.killed:
                kills += 1
                if kills % ADD_EVERY == 0:
                    add_issues()
            else:
                if attempt.code not in waiting_ok:
                    attempt.note += f" a run that was not killed exited {attempt.code}"
                if attempt.code == 0:
                    add_issues()  # all done: new work, so that the next kills land on real work
            if attempt.note:
                anomalies.append(str(attempt))

        # Plain reruns until done (only Anthropic may have to wait for a batch a killed create made), while
        # a clean run of the same issues makes the reference results in a workspace of its own.
        issues = ws.files("data/issues/*.json")
        clean_pool = concurrent.futures.ThreadPoolExecutor(1)
        clean = clean_pool.submit(clean_results, tmp_path, provider, issues, chunk_size)
        clean_pool.shutdown(wait=False)
        unlock_if_locked(ws, env)
        reruns = []
        until = time.monotonic() + RERUN_DEADLINE
        while True:
            rerun = ws.snakemake("--cores", "4", "results/all", env=svc.env, check=False, timeout=RERUN_DEADLINE)
            reruns.append(rerun.returncode)
            if rerun.returncode not in waiting_ok or rerun.returncode == 0 or time.monotonic() > until:
                break
        report = check_paid_once(ws, svc)
        held = svc.batches()
        assert not left_alive(ws.root), "the reruns left a process alive"

    if anomalies:
        report[:0] = ["processes left alive, or runs that were not killed and ended badly:", *anomalies]
    results = ws.results()
    if rerun.returncode != 0:
        report.append(f"reruns after the loop exited {reruns}; the last one's output ends:\n{rerun.output[-3000:]}")
    else:
        if len(results) != len(issues):
            report.append(f"{len(results)} results for {len(issues)} issues")
        if sum(len(ids) for ids in held.values()) != len(issues):
            report.append(f"{sum(len(ids) for ids in held.values())} requests paid for {len(issues)} issues")
        got, want = essentials(results), essentials(clean.result(timeout=RERUN_DEADLINE))
        if got.keys() != want.keys():
            report.append(f"result files that differ from a clean run's: {sorted(got.keys() ^ want.keys())}")
        differ = sorted(name for name in got.keys() & want.keys() if got[name] != want[name])
        report += [f"{name}: differs from the clean run's" for name in differ]
    assert not report, "\n".join(report) + f"\n\n{trace()}"
    print(f"\n{trace()}\nreruns: {reruns}; {len(held)} batches for {len(issues)} issues")


# --- SIGTERM / SIGINT to a waiting run --------------------------------------------------------------------

LONG = 600.0  # an emulator batch's in-progress seconds: it ends only when the test moves the emulator's clock
LOCAL_LONG = 12.0  # the local service's clock is the run's own: its batch really waits this long
# (two jobs' lines may come glued together: threads print without a lock)
IN_PROGRESS = re.compile(r": batch \S+ in_progress, ")
SUBMITTED = re.compile(r": submitted \d+ request\(s\) as batch ")


def interrupt_while_waiting(ws: Workspace, env: dict[str, str], signum: int, submits: int) -> tuple[float, str]:
    """`batchpipe run`; once it has made `submits` batches and waits for one, send `signum` (SIGTERM to
    batchpipe run, as `kill` or a scheduler does; SIGINT to its process group, as Ctrl-C does). Requires
    exit 130 within GONE_WITHIN seconds and no process left. Returns (seconds to stop, output)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "run"],
        cwd=ws.root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a job in a shell
    )
    out = Output(proc)
    try:
        waiting, submitted = False, 0
        deadline = time.monotonic() + RUN_TIMEOUT
        while not waiting or submitted < submits:
            line = out.next(deadline)
            assert line is not None, "the run ended before it waited for its batches:\n" + "\n".join(out.lines[-60:])
            waiting = waiting or bool(IN_PROGRESS.search(line))
            submitted += len(SUBMITTED.findall(line))
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        try:
            code = proc.wait(timeout=GONE_WITHIN + 5)
        except subprocess.TimeoutExpired:
            code = None
        stopped = time.monotonic() - sent
        alive = left_alive(ws.root, max(0.1, GONE_WITHIN - stopped))
        out.rest()
    finally:
        end_all(ws.root)
        proc.wait()
    text = "\n".join(out.lines)
    assert code == INTERRUPTED, f"exit {code} after {signal.Signals(signum).name}, not {INTERRUPTED}:\n{text[-4000:]}"
    assert stopped <= GONE_WITHIN, f"{signal.Signals(signum).name}: stopped after {stopped:.1f}s:\n{text[-4000:]}"
    assert not alive, f"still alive after {signal.Signals(signum).name}: {alive}\n{text[-4000:]}"
    return stopped, text


def signals_stop_a_waiting_run(tmp_path: Path, provider: str) -> None:
    """SIGTERM, then Ctrl-C (SIGINT to the process group) on the rerun: each stops `batchpipe run` within
    GONE_WITHIN seconds with exit 130 and no process left; the third run collects, with no new batch."""
    ws = make_workspace(tmp_path / "ws", POOL[:4])
    timing = Timing(in_progress=LOCAL_LONG if provider == "local" else LONG)
    configure(ws, provider, 2, timing)  # two chunks, two long batches
    with service(provider, ws, tmp_path / "emulator", timing) as svc:
        env = run_env(svc)
        took_term, _ = interrupt_while_waiting(ws, env, signal.SIGTERM, submits=2)
        before = svc.batches()
        assert len(before) == 2
        # the next run resumes the same batches (it waits for them again); Ctrl-C stops it as promptly
        took_int, _ = interrupt_while_waiting(ws, env, signal.SIGINT, submits=0)
        assert svc.batches() == before, "the interrupted rerun made a new batch"
        if svc.emulator is not None:  # the provider's time passes: the batches end
            svc.emulator.engine.clock = lambda: time.time() + LONG
        done = ws.batchpipe("run", env=svc.env)
        assert done.returncode == 0, done.output[-4000:]
        assert svc.batches() == before, "the resumed run made a new batch"
        assert check_paid_once(ws, svc) == []
        assert not left_alive(ws.root)
    assert len(ws.results()) == 4
    print(f"\nSIGTERM stopped the run in {took_term:.2f}s, SIGINT in {took_int:.2f}s")


# --- the tests: a class per provider, so that pytest-xdist (--dist loadscope) runs providers side by side


class KillAndSignals:
    provider = ""

    @pytest.mark.workflow
    def test_kill_loop_never_pays_twice_never_loses_an_answer_leaves_no_process(self, tmp_path):
        try:
            kill_loop(tmp_path, self.provider)
        finally:
            end_all(tmp_path / "ws")
            end_all(tmp_path / "clean")

    @pytest.mark.workflow
    def test_sigterm_and_sigint_stop_a_waiting_run_at_once_and_the_rerun_resumes(self, tmp_path):
        try:
            signals_stop_a_waiting_run(tmp_path, self.provider)
        finally:
            end_all(tmp_path / "ws")


class TestLocal(KillAndSignals):
    provider = "local"


class TestOpenAI(KillAndSignals):
    provider = "openai"


class TestAnthropic(KillAndSignals):
    provider = "anthropic"
