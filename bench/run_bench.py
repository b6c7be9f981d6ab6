#!/usr/bin/env python3
"""Benchmark the pipeline: cold run, no-op dry run and one-issue change at several sizes.

    .venv/bin/python bench/run_bench.py --sizes 1000 10000 [--keep] [--seed 1] [--py-spy]

For each N: a fresh temp workspace (Snakefile, config.yaml, rules, schemas, prompts, profiles, envs,
scripts copied from the repository; N generated issues in data/issues, see generate_issues.py), then

  cold    python -m snakemake --cores 4 results/all      (local provider, offline responder, zero delays)
  noop    python -m snakemake -n results/all             (right after: should be "Nothing to be done")
  change  one issue's body edited, then python -m snakemake --cores 4 results/all

Each phase is measured for wall time, peak RSS of the whole process tree (sum over the tree, polled
from /proc every 50 ms; a child in its first second still running its parent's command line, forked and
not yet exec'd, is left out: it shares its parent's pages) and the largest single process's max RSS
(GNU time -v, when /usr/bin/time exists), job counts per rule (Snakemake's "Job stats"), and batches
(ledger files). Prints a Markdown table and writes bench/out/results.json (and each phase's stdout/stderr
under bench/out/N/).

The workspaces are removed when every size is done, not between sizes: on an ext4 file system without a
journal (this project's test VM), a file made within a minute or so of many deletions costs up to 20 times
the kernel time (inode allocation skips the recently deleted ones, looking each up: `recently_deleted`),
which would be charged to the next size's run. For the same reason, compare runs made alike: back to back
invocations each start after the one before removed its workspaces (`--keep`, then remove them at the end).

--py-spy (py-spy must be installed) also records a sampling profile (all threads) of every phase in
bench/out/N/PHASE.pyspy.txt (collapsed stacks) and prints the top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
COPY = ["Snakefile", "config.yaml", "rules", "schemas", "prompts", "profiles", "envs", "scripts", "report"]
PACKAGE = "batchpipe"  # copied too: the workspace (first on sys.path, and PYTHONPATH) then runs a snapshot
GNU_TIME = "/usr/bin/time"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat times
TARGETS = {"cold_s": 60.0, "noop_s": 3.0, "change_s": 10.0, "peak_mb": 500.0}

sys.path.insert(0, str(HERE))
import generate_issues  # noqa: E402

# --- measuring -----------------------------------------------------------------------------------


def _label(pid: int) -> str:
    """A short name for a process: its command line's last meaningful words."""
    raw = _cmdline(pid)
    if raw is None:
        return str(pid)
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    words = [os.path.basename(w) if "/" in w else w for w in words]
    return " ".join(words)[:80]


def _cmdline(pid: int) -> bytes | None:
    """A process's command line as /proc holds it (NUL-separated); None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return None


class TreeRss:
    """Polls /proc for the summed RSS of a process and all its descendants; keeps the peak. A descendant whose
    command line is its parent's, started within the second, is a fork between `fork`/`vfork` and `exec` (a
    spawned worker, a subprocess in its first instants): it shares its parent's pages (a vfork its very address
    space), so counting it would count the parent twice (a 100,000-issue run's Snakemake process, 328 MB, once
    showed up so). One that keeps its parent's command line longer (a forked pool's worker) counts."""

    def __init__(self, root_pid: int, interval: float = 0.05):
        self.root = root_pid
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self.peak_breakdown: list[tuple[str, float]] = []  # (process, MB) at the peak sample
        self.timeline: list[str] = []  # "seconds<TAB>total MB<TAB>process=MB ..." every quarter second
        self._began = time.monotonic()
        self._last = -1.0
        self.labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        self._started: dict[int, float] = {}  # pid -> its start, in seconds since boot
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            # fields 3 on follow the ")" that closes the command name: 4 is the ppid, 22 the start time
            fields = stat[stat.rindex(b")") + 2 :].split()
            kids.setdefault(int(fields[1]), []).append(int(name))
            self._started[int(name)] = int(fields[19]) / TICKS
        return kids

    def _forking(self, pid: int, cmdline: bytes, parent_cmdline: bytes) -> bool:
        """Whether `pid` is a fork not yet exec'd: its parent's command line, and started within the second (a
        worker forked for good, which keeps it, counts once it has run a second)."""
        if not cmdline or cmdline != parent_cmdline:
            return False
        try:
            with open("/proc/uptime", "rb") as handle:
                now = float(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return True
        return now - self._started.get(pid, now) < 1.0

    def sample(self) -> None:
        kids = self._children()
        todo, total, count, each = [(self.root, b"")], 0, 0, []
        while todo:
            pid, parent_cmdline = todo.pop()
            cmdline = _cmdline(pid) or b""
            todo.extend((kid, cmdline) for kid in kids.get(pid, ()))
            if self._forking(pid, cmdline, parent_cmdline):  # its parent's pages, until it execs
                continue
            try:
                with open(f"/proc/{pid}/statm", "rb") as handle:
                    rss = int(handle.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                continue
            total += rss
            count += 1
            each.append((pid, rss))
        if total > self.peak:
            self.peak, self.peak_procs = total, count
            self.peak_breakdown = [(_label(pid), round(rss / 2**20, 1)) for pid, rss in each]
        now = time.monotonic() - self._began
        if now - self._last >= 0.25:
            self._last = now
            for pid, _ in each:
                if pid not in self.labels:
                    self.labels[pid] = _label(pid)
            parts = " ".join(f"{pid}={rss / 2**20:.0f}" for pid, rss in each)
            self.timeline.append(f"{now:.2f}\t{total / 2**20:.0f}\t{parts}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def parse_job_stats(text: str) -> dict[str, int]:
    """Jobs run per rule (with "total"), from the "Finished jobid: N (Rule: X)" lines of a Snakemake log:
    a checkpoint's later jobs are not in its first "Job stats:" table. Without such lines (a dry run), the
    last "Job stats:" table."""
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text)
    if finished:
        stats = dict(sorted(Counter(finished).items()))
        stats["total"] = len(finished)
        return stats
    stats = {}
    blocks = text.split("Job stats:")
    if len(blocks) < 2:
        return stats
    for line in blocks[-1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    return stats


def parse_gnu_time(text: str) -> dict:
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["max_single_rss_mb"] = round(int(m.group(1)) / 1024, 1)
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        seconds = 0.0
        for part in m.group(1).split(":"):
            seconds = seconds * 60 + float(part)
        out["time_wall_s"] = round(seconds, 2)
    for key, label in (("user_s", "User time (seconds)"), ("sys_s", "System time (seconds)")):
        m = re.search(re.escape(label) + r": ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    return out


def cpu_busy_seconds() -> float:
    """Busy CPU time of the whole machine so far (all CPUs, from /proc/stat), in seconds."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def calibrate() -> float:
    """Seconds a fixed pure-Python workload (JSON round trips) takes now: about 0.25 s on a quiet machine.

    On a shared VM the same work costs more CPU when neighbours are busy (SMT siblings, caches, steal);
    compare phases across runs with this figure at hand."""
    doc = {f"k{i}": ["x" * 20, i, {"y": [1.5, None, True]}] for i in range(200)}
    start = time.perf_counter()
    for _ in range(300):
        json.loads(json.dumps(doc, sort_keys=True, indent=1))
    return round(time.perf_counter() - start, 3)


def wait_for_quiet(timeout: float, threshold: float = 0.15, window: float = 3.0) -> float:
    """Wait (up to timeout seconds) until the machine's CPUs are busy less than threshold over a window.

    Other sessions share this machine; their test runs would be counted in our wall times. Returns the
    busy fraction of the last window."""
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_busy_seconds()
        time.sleep(window)
        frac = (cpu_busy_seconds() - before) / (window * ncpu)
        if frac < threshold or time.monotonic() >= deadline:
            return round(frac, 3)


def run_phase(
    name: str, args: list[str], ws: Path, outdir: Path, env: dict, py_spy: bool, quiet_timeout: float = 0.0
) -> dict:
    """Run one snakemake command in the workspace; measure it."""
    busy_before_start = wait_for_quiet(quiet_timeout) if quiet_timeout > 0 else None
    calibration = calibrate()
    cmd = [sys.executable, "-m", "snakemake", *args]
    time_file = outdir / f"{name}.time.txt"
    spy_file = outdir / f"{name}.pyspy.txt"
    full = list(cmd)
    if py_spy:
        full = [
            "py-spy",
            "record",
            "--format",
            "raw",
            "--subprocesses",
            "--rate",
            "200",
            "--nonblocking",
            "-o",
            str(spy_file),
            "--",
            *full,
        ]
    if os.path.exists(GNU_TIME):
        full = [GNU_TIME, "-v", "-o", str(time_file), *full]
    ledger = ws / "batch_results" / "ledger"
    ledgers_before = len(list(ledger.glob("*.jsonl"))) if ledger.is_dir() else 0
    with open(outdir / f"{name}.stdout.txt", "wb") as out, open(outdir / f"{name}.stderr.txt", "wb") as err:
        load_before = os.getloadavg()[0]
        busy_before = cpu_busy_seconds()
        start = time.monotonic()
        proc = subprocess.Popen(full, cwd=ws, env=env, stdout=out, stderr=err)
        poller = TreeRss(proc.pid).start()
        rc = proc.wait()
        wall = time.monotonic() - start
        busy = cpu_busy_seconds() - busy_before
        poller.stop()
    heads = [f"# {pid} {label}" for pid, label in poller.labels.items()]
    (outdir / f"{name}.rss.tsv").write_text("\n".join(heads + poller.timeline) + "\n")
    stderr = (outdir / f"{name}.stderr.txt").read_text(encoding="utf-8", errors="replace")
    ledgers_after = len(list(ledger.glob("*.jsonl"))) if ledger.is_dir() else 0
    result = {
        "command": " ".join(["python", "-m", "snakemake", *args]),
        "exit_code": rc,
        "wall_s": round(wall, 2),
        "peak_tree_rss_mb": round(poller.peak / 2**20, 1),
        "peak_tree_procs": poller.peak_procs,
        "peak_tree_breakdown": poller.peak_breakdown,
        "jobs": parse_job_stats(stderr),
        "nothing_to_do": "Nothing to be done" in stderr,
        "new_batches": ledgers_after - ledgers_before,
        "plan_lines": [line for line in stderr.splitlines() if line.startswith("batchpipe plan:")],
    }
    result["loadavg_1m_before"] = round(load_before, 2)
    result["calibration_s"] = calibration
    if busy_before_start is not None:
        result["machine_busy_fraction_before"] = busy_before_start
    result["machine_busy_cpu_s"] = round(busy, 2)
    if time_file.exists():
        result.update(parse_gnu_time(time_file.read_text()))
        if "user_s" in result:
            # CPU time other processes (other sessions' tests, ...) took during the phase: 0 on a quiet machine
            result["foreign_cpu_s"] = round(max(busy - result["user_s"] - result["sys_s"], 0.0), 2)
    if py_spy:
        # py-spy's own run slows the job; its wall time is not the figure to report
        result["profiled"] = True
    if rc != 0:
        tail = "\n".join(stderr.splitlines()[-30:])
        print(f"  {name}: exit code {rc}; last lines of stderr:\n{tail}", file=sys.stderr)
    return result


# --- workspace -----------------------------------------------------------------------------------


def make_workspace(n: int, seed: int, base: Path | None, source: str = "worktree") -> tuple[Path, dict]:
    """A temp workspace with the workflow files, a snapshot of the package, and N generated issues.

    source "worktree" copies the files as they are now; any other value is a git revision whose files are
    taken with `git archive` (read-only), for a consistent tree while others edit the working tree."""
    ws = Path(tempfile.mkdtemp(prefix=f"batchpipe-bench-{n}-", dir=base))
    names = COPY + [PACKAGE]
    if source == "worktree":
        for name in names:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                shutil.copy2(src, ws / name)
    else:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", source], check=True, capture_output=True, text=True
        ).stdout.split()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", source, *[name for name in names if name in listed]],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(ws)], input=archive, check=True)
    start = time.monotonic()
    stats = generate_issues.generate(n, ws / "data" / "issues", seed)
    stats["generate_s"] = round(time.monotonic() - start, 2)
    return ws, stats


def edit_one_issue(ws: Path, n: int) -> str:
    """Change the body of the issue in the middle of the set; return its file name."""
    path = ws / "data" / "issues" / f"{generate_issues.ORG}_{generate_issues.REPO}_issue_{max(1, n // 2)}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["issue"]["body"] = (doc["issue"]["body"] or "") + "\r\n\r\nEdited for the benchmark: one more line.\r\n"
    path.write_bytes(generate_issues.render(doc))
    return path.name


def summary_totals(ws: Path) -> dict:
    try:
        return json.loads((ws / "results" / "summary.json").read_text())["totals"]
    except (OSError, ValueError, KeyError):
        return {}


HOLLOW_STUB = """

def _bench_touch(output):
    \"\"\"bench --hollow: a job that only creates its outputs (Snakemake's own cost per job).\"\"\"
    for path in output:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        open(path, "w").close()
"""


def hollow_rules(ws: Path) -> None:
    """Replace every run: block and script: job of the workspace's rules by `_bench_touch(output)`.

    The DAG, scheduling and job bookkeeping stay as they are; the batchpipe work is gone but the plan's
    (at parse time before 84b381f; the checkpoint plan job since, kept whole: the DAG is read from it). What
    a hollow cold run costs is Snakemake's overhead for that many jobs (run it with max_attempts=1: empty
    manifests would otherwise plan retry rounds)."""
    for smk in sorted((ws / "rules").glob("*.smk")):
        if smk.name == "plan.smk":
            continue
        out: list[str] = []
        lines = smk.read_text().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^(\s+)(run|script|conda):\s*(.*)$", line)
            if not m:
                out.append(line)
                i += 1
                continue
            indent, key, rest = m.groups()
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].startswith(indent + " ")):
                    break
                i += 1  # the directive's body
            if key in ("run", "script"):
                out += [f"{indent}run:", f"{indent}    _bench_touch(output)"]
        text = "\n".join(out) + "\n"
        if smk.name == "common.smk":
            text += HOLLOW_STUB
        smk.write_text(text)


def apply_patches(ws: Path, patches: list[Path]) -> None:
    """Apply unified diffs (paths a/..., b/...) to the workspace copy only: to measure a proposed change."""
    for diff in patches:
        subprocess.run(["patch", "-p1", "-s", "-d", str(ws), "-i", str(diff.resolve())], check=True)


def bench_size(
    n: int,
    seed: int,
    keep: bool,
    py_spy: bool,
    base: Path | None,
    source: str = "worktree",
    extra: list[str] | None = None,
    patches: list[Path] | None = None,
    quiet_timeout: float = 0.0,
    hollow: bool = False,
) -> dict:
    outdir = OUT / str(n)
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    print(f"N={n}: generating issues ...", file=sys.stderr, flush=True)
    ws, gen = make_workspace(n, seed, base, source)
    apply_patches(ws, patches or [])
    if hollow:
        hollow_rules(ws)
    print(
        f"N={n}: workspace {ws} ({gen['bytes']:,} bytes of issues, {gen['generate_s']} s)", file=sys.stderr, flush=True
    )
    env = dict(os.environ)
    env.pop("BATCHPIPE_RUN_ID", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run: imports compiled once, then from __pycache__
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # the package snapshot in the workspace, also for script: jobs (a new interpreter)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ws), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    record: dict = {
        "n": n,
        "seed": seed,
        "workspace": str(ws) if keep else None,
        "source": source,
        "extra_args": extra or [],
        "patches": [p.name for p in patches or []],
        "hollow": hollow,
        "issues": gen,
    }
    extra = extra or []
    phases = [
        ("cold", ["--cores", "4", "results/all", *extra]),
        ("noop", ["-n", "results/all", *extra]),
        ("change", ["--cores", "4", "results/all", *extra]),
    ]
    for name, args in phases:
        if name == "change":
            record["edited_issue"] = edit_one_issue(ws, n)
        print(f"N={n}: {name}: python -m snakemake {' '.join(args)}", file=sys.stderr, flush=True)
        result = run_phase(name, args, ws, outdir, env, py_spy, quiet_timeout)
        if name != "noop":
            result["totals"] = summary_totals(ws)
        record[name] = result
        print(
            f"N={n}: {name}: {result['wall_s']} s, peak tree RSS {result['peak_tree_rss_mb']} MB, "
            f"jobs {result['jobs'].get('total', 0)}, exit {result['exit_code']}",
            file=sys.stderr,
            flush=True,
        )
        if py_spy:
            print(top_functions(outdir / f"{name}.pyspy.txt"), file=sys.stderr)
    record["batches"] = len(list((ws / "batch_results" / "ledger").glob("*.jsonl")))
    record["_workspace"] = str(ws)  # removed once every size is done (`main`), unless kept
    return record


def top_functions(path: Path, limit: int = 25) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    if not path.exists():
        return f"(no profile at {path})"
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        count = int(count)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{path.name}: {total} samples", "  inclusive:"]
    for frame, c in sorted(incl.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"    {100 * c / total:5.1f}%  {frame}")
    lines.append("  self:")
    for frame, c in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"    {100 * c / total:5.1f}%  {frame}")
    return "\n".join(lines)


# --- report --------------------------------------------------------------------------------------


def machine() -> dict:
    mem = ""
    try:
        mem = next(line.split(":", 1)[1].strip() for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    smk = subprocess.run(
        [sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "snakemake": smk,
        "kernel": platform.release(),
        "gnu_time": os.path.exists(GNU_TIME),
    }


def source_description(source: str) -> str:
    """The git commit the files came from (and whether the working tree differed from it)."""
    try:
        rev = "HEAD" if source == "worktree" else source
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
        ).stdout.strip()
        if source != "worktree":
            return f"git {commit}"
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--", *COPY, PACKAGE],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"working tree at {commit}" + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return source


def fmt_jobs(jobs: dict) -> str:
    return str(jobs.get("total", 0))


def table(records: list[dict]) -> str:
    rows = [
        "| N | phase | wall s | CPU s (user+sys) | peak tree RSS MB | max single RSS MB | jobs | new batches "
        "| other load CPU s | target | ok |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    target = {
        "cold": ("≤ 60 s", TARGETS["cold_s"]),
        "noop": ("≤ 3 s", TARGETS["noop_s"]),
        "change": ("≤ 10 s", TARGETS["change_s"]),
    }
    for r in records:
        for phase in ("cold", "noop", "change"):
            p = r[phase]
            label, limit = target[phase]
            ok = p["exit_code"] == 0 and p["wall_s"] <= limit and p["peak_tree_rss_mb"] <= TARGETS["peak_mb"]
            cpu = p.get("user_s", 0) + p.get("sys_s", 0)
            rows.append(
                f"| {r['n']:,} | {phase} | {p['wall_s']:.1f} | {cpu:.1f} | {p['peak_tree_rss_mb']:.0f} | "
                f"{p.get('max_single_rss_mb', float('nan')):.0f} | {fmt_jobs(p['jobs'])} | {p['new_batches']} | "
                f"{p.get('foreign_cpu_s', float('nan')):.1f} | {label}, ≤ 500 MB | {'yes' if ok else 'NO'} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of issues")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workspaces")
    parser.add_argument("--tmp", type=Path, default=None, help="where to make workspaces (default: system temp)")
    parser.add_argument("--py-spy", action="store_true", help="also record a py-spy profile of every phase")
    parser.add_argument(
        "--source",
        default="worktree",
        help="workflow files and package: 'worktree' (default, as they are now) or a git revision "
        "(e.g. HEAD), taken with git archive",
    )
    parser.add_argument(
        "--patch",
        type=Path,
        action="append",
        default=[],
        help="apply this diff (patch -p1) to the workspace copy before running; repeatable",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=180.0,
        help="before each phase, wait up to this many seconds for the machine's CPUs to be under "
        "15%% busy (other sessions' runs skew timings); 0: do not wait (default 180)",
    )
    parser.add_argument(
        "--hollow",
        action="store_true",
        help="rules do no work (each job only creates its outputs): measures Snakemake's own cost",
    )
    parser.add_argument("--label", default="", help="name of this configuration (results-LABEL.json)")
    parser.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="after --: extra snakemake arguments for every phase (e.g. -- --config chunk_size=200)",
    )
    args = parser.parse_args(argv)
    if args.py_spy and not shutil.which("py-spy"):
        parser.error("--py-spy: py-spy is not on PATH (pip install py-spy)")
    extra = [a for a in args.snakemake_args if a != "--"] if args.snakemake_args else []
    OUT.mkdir(parents=True, exist_ok=True)
    info = machine()
    source = source_description(args.source)  # before the runs: others may commit meanwhile
    records = []
    for n in args.sizes:
        records.append(
            bench_size(
                n,
                args.seed,
                args.keep,
                args.py_spy,
                args.tmp,
                args.source,
                extra,
                args.patch,
                args.quiet_timeout,
                args.hollow,
            )
        )
    if not args.keep:  # not between sizes: files made soon after many were deleted cost more (docstring)
        for record in records:
            shutil.rmtree(record["_workspace"], ignore_errors=True)
    for record in records:
        del record["_workspace"]
    doc = {
        "machine": info,
        "targets": TARGETS,
        "profiled": args.py_spy,
        "source": source,
        "extra_args": extra,
        "patches": [p.name for p in args.patch],
        "runs": records,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    label = args.label or ("pyspy" if args.py_spy else "")
    name = f"results-{label}.json" if label else "results.json"
    (OUT / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(table(records))
    print(
        f"\nmachine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']}, Python {info['python']}, "
        f"snakemake {info['snakemake']}; written {OUT / name}"
    )
    failed = any(r[p]["exit_code"] != 0 for r in records for p in ("cold", "noop", "change"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
