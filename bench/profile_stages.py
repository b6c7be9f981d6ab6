#!/usr/bin/env python3
"""Time batchpipe's own work per stage, in one process and without Snakemake.

    .venv/bin/python bench/profile_stages.py 10000 [--no-fsync] [--cprofile bench/out/stages.prof]

Makes a fresh workspace like run_bench.py, then calls what the rules call, chunk by chunk, in order:
the plan (the checkpoint job; at parse time before 84b381f), write_requests, submit (one job since the
write_requests rule was merged into submit_batch), download (+ collect),
recycle tasks, summarize; prints the time of
each stage. The difference between the sum and run_bench.py's cold run is Snakemake's overhead (DAG,
scheduler, job bookkeeping). --no-fsync replaces os.fsync with a no-op, to show what durability costs.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_bench  # noqa: E402

_UMASK = os.umask(0)  # read once, at import, before any thread writes: os.umask can only set it
os.umask(_UMASK)


def _write_no_fsync(path, data: bytes) -> None:
    """atomic_write_bytes without the fsync: temp file, then rename."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def _plan_as_a_job(config, bp, stage) -> list:
    """What the rules call since the plan is a job: plan, write_requests, submit, download (+ collect),
    recycle, summarize; then the parse-time key of a no-op run."""
    import batchpipe.dag as dag

    os.environ["BATCHPIPE_WORKERS"] = "0"  # downloads in this thread, like the profile's other stages
    settings = bp.settings_of(config)
    key = stage("plan key (parse time)", lambda: dag.run_key(settings).key)
    folder = f"results/plan/{key}/s0r0"
    stage("plan (checkpoint job)", lambda: bp.run_plan(config, key, 0, 0, folder, "logs/plan.log"))
    view = dag.plan_view(folder)
    chunks = [(name, c) for name, cs in view.new.items() for c in cs]
    for name, c in chunks:  # since 2a8c410 the job is handed its plan folder and reads its spec inside it
        stage("write_requests", lambda n=name, c=c: bp.run_write_requests(config, n, c, folder, "logs/w.log"))
    for name, c in chunks:
        stage("submit_batch", lambda n=name, c=c: bp.run_submit(config, n, c, "logs/s.log"))
    for name, c in chunks:
        stage("download_batch (+ collect)", lambda n=name, c=c: bp.run_download(config, n, c, "logs/d.log"))
    from batchpipe.config import load_settings
    from batchpipe.tasks import recycle

    stage("recycle_tasks (script)", lambda: recycle(load_settings(config, root=".")))
    stage("summarize_run", lambda: bp.run_summarize(config, [folder], "results/summary.json", "logs/sum.log"))
    stage("complete_run", lambda: bp.run_complete(config, "results/summary.json", "results/all", "logs/c.log"))
    stage("plan key (no-op parse)", lambda: dag.run_key(settings).key)
    return chunks


def _plan_at_parse_time(config, bp, stage, inspect, write_summary) -> list:
    """What the rules called while the plan was made at parse time (trees before 84b381f)."""
    plan = stage("load_plan (cold)", lambda: bp.load_plan(config, root=".", verbose=False))
    chunks = [(name, c) for name, pp in plan.processors.items() for c in pp.chunks]
    if hasattr(bp, "run_write_requests"):  # trees before submit_batch wrote the request file itself
        for name, c in chunks:
            stage("write_requests", lambda n=name, c=c: bp.run_write_requests(plan, n, c, f"logs/w/{n}/{c}.log"))
    for name, c in chunks:
        stage("submit_batch", lambda n=name, c=c: bp.run_submit(plan, n, c, f"logs/s/{n}/{c}.log"))
    # download_batch downloads and collects (one job since 4946779); older trees collect in write_results
    fused = hasattr(bp, "download_and_collect") or "collect_chunk" in inspect.getsource(bp.run_download)
    for name, c in chunks:
        stage(
            "download_batch (+ collect)" if fused else "download_batch",
            lambda n=name, c=c: bp.run_download(plan, n, c, f"logs/d/{n}/{c}.log"),
        )
    if not fused:
        for name, c in chunks:
            stage("write_results", lambda n=name, c=c: bp.run_collect(plan, n, c, f"logs/c/{n}/{c}.log"))
    try:
        from batchpipe.config import load_settings
        from batchpipe.tasks import recycle
    except ImportError:
        recycle = None
    if recycle is not None:  # scripts/recycle_tasks.py (a script: job, its own process, after the summary)
        stage("recycle_tasks (script)", lambda: recycle(load_settings(config, root=".")))
    plan2 = stage("load_plan (summary script)", lambda: bp.load_plan(config, root=".", verbose=False))
    paths = (
        ("results/summary.json",)
        if len(inspect.signature(write_summary).parameters) == 2
        else ("results/all", "results/summary.json")
    )
    stage("write_summary", lambda: write_summary(plan2, *paths))
    stage("load_plan (no-op)", lambda: bp.load_plan(config, root=".", verbose=False))
    return chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-fsync", action="store_true", help="make os.fsync a no-op")
    parser.add_argument(
        "--no-fsync-results",
        action="store_true",
        help="write per-issue result files without fsync (atomic rename kept); the rest as is",
    )
    parser.add_argument("--source", default="worktree", help="worktree (default) or a git revision (see run_bench.py)")
    parser.add_argument("--cprofile", type=Path, help="write a cProfile of the whole run here")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--patch", type=Path, action="append", default=[], help="apply a diff to the workspace copy")
    args = parser.parse_args(argv)

    ws, gen = run_bench.make_workspace(args.n, args.seed, None, args.source)
    run_bench.apply_patches(ws, args.patch)
    sys.path.insert(0, str(ws))  # the package snapshot copied into the workspace
    print(f"workspace {ws}: {gen['issues']} issues, {gen['bytes']:,} bytes", file=sys.stderr)
    os.chdir(ws)
    os.environ.pop("BATCHPIPE_RUN_ID", None)
    if args.no_fsync:
        os.fsync = lambda fd: None

    import importlib

    from snakemake.utils import validate

    import batchpipe.workflow as bp

    try:  # the module that writes results: collect (since the re-cut), results before it
        results_module = importlib.import_module("batchpipe.collect")
        write_summary = importlib.import_module("batchpipe.summary").write_summary
        schema = str(importlib.import_module("batchpipe.config").SCHEMA_PATH)
    except ImportError:
        results_module = importlib.import_module("batchpipe.results")
        write_summary = results_module.write_summary
        schema = "schemas/config.schema.yaml"

    print(f"batchpipe from {results_module.__file__}", file=sys.stderr)
    if args.no_fsync_results:
        results_module.atomic_write_bytes = _write_no_fsync

    prof = cProfile.Profile() if args.cprofile else None
    if prof:
        prof.enable()
    times: dict[str, float] = {}

    def stage(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return out

    config = yaml.safe_load(open("config.yaml"))
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    stage("validate config (common.smk)", lambda: validate(config, schema))
    if hasattr(bp, "run_plan"):  # the plan is a job (checkpoint plan) since 84b381f
        chunks = _plan_as_a_job(config, bp, stage)
    else:
        chunks = _plan_at_parse_time(config, bp, stage, inspect, write_summary)
    if prof:
        prof.disable()
        prof.dump_stats(str(args.cprofile))
    total = sum(times.values())
    print(
        f"| stage (N={args.n}, {len(chunks)} chunks{', fsync off' if args.no_fsync else ''}"
        f"{', results without fsync' if args.no_fsync_results else ''}) | s |"
    )
    print("|---|---:|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} |")
    print(f"| total | {total:.2f} |")
    if not args.keep:
        os.chdir("/")
        shutil.rmtree(ws, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
