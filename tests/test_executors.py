"""Jobs are functions of their declared inputs, the config and the ledger: the same run made with every job in
its own process (no `force-use-threads`) and on Snakemake's `cluster-generic` executor (a local submit
command) gives the same request files byte for byte, the same results, manifests, summary and task files
(batch ids aside), and exactly one batch per chunk."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, Workspace, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:7]
BATCH_ID = re.compile(r'"batch_[0-9a-f]+"|"g\d{8}-\d{6}-[0-9a-f]{4}"')  # batch ids, group (run) ids
# the profile's settings, but threads: every `run:` job in a new interpreter
PER_PROCESS = [
    "--workflow-profile", "none", "--cores", "4", "--rerun-triggers", "mtime", "params", "--rerun-incomplete",
    "--keep-going", "--resources", "api_calls=4",
]  # fmt: skip


def workspace(path) -> Workspace:
    ws = make_workspace(path, ISSUES)
    ws.config(processors=["product-labeling"], chunk_size=3)
    return ws


def normalized(ws: Workspace) -> dict[str, str]:
    """The run's views, batch ids (and what hashes them: the task files' result digests) aside."""
    out = {}
    for pattern in ("batch_requests/*/*", "batch_results/*/*.results.json", "data/results/*.json", "data/tasks/*.json"):
        for path in ws.files(pattern):
            text = BATCH_ID.sub('"BATCH"', path.read_text())
            if path.name.endswith(".tasks.json"):
                doc = json.loads(text)
                doc.pop("result_sha256", None)
                text = json.dumps(doc, sort_keys=True)
            out[str(path.relative_to(ws.root))] = text
    summary = json.loads(BATCH_ID.sub('"BATCH"', (ws.root / "results" / "summary.json").read_text()))
    for key in ("generated_at", "started_at", "key", "elapsed_s"):
        summary.pop(key, None)
    out["results/summary.json"] = json.dumps(summary, sort_keys=True)
    return out


def one_batch_per_chunk(ws: Workspace) -> None:
    created = [
        json.loads(line)["batch_id"]
        for path in ws.files("batch_results/ledger/*.jsonl")
        for line in path.read_text().splitlines()
        if '"created"' in line
    ]
    assert len(created) == len(set(created)) == len(ws.files("batch_results/ledger/*.jsonl"))
    assert sorted(b["id"] for b in ws.local_batches()) == sorted(created)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    ws = workspace(tmp_path_factory.mktemp("reference") / "ws")
    ws.snakemake("--cores", "4", "results/all")
    one_batch_per_chunk(ws)
    return normalized(ws)


@pytest.mark.workflow
def test_every_job_in_its_own_process_gives_the_same_files(tmp_path, reference):
    ws = workspace(tmp_path / "ws")
    run = ws.snakemake("results/all", *PER_PROCESS)
    assert "force-use-threads" not in run.output
    one_batch_per_chunk(ws)
    assert normalized(ws) == reference
    assert "Nothing to be done" in ws.snakemake("results/all", *PER_PROCESS).output


@pytest.mark.workflow
def test_the_cluster_generic_executor_gives_the_same_files(tmp_path, reference):
    ws = workspace(tmp_path / "ws")
    submit = ws.root / "submit.sh"  # a "cluster": the job script runs in the background, its pid is the job id
    submit.write_text('#!/bin/bash\nnohup bash "$@" > /dev/null 2>&1 &\necho $!\n')
    submit.chmod(0o755)
    args = ["--executor", "cluster-generic", "--cluster-generic-submit-cmd", str(submit), "--jobs", "4"]
    run = ws.snakemake("results/all", *args)
    assert "Submitted job" in run.output  # recycle_tasks ran on the "cluster"; the localrules here
    one_batch_per_chunk(ws)
    assert normalized(ws) == reference
    assert "Nothing to be done" in ws.snakemake("results/all", *args).output


def test_the_local_executor_runs_without_a_job_rate_limit_and_others_keep_it():
    """Snakemake's scheduler starts a timer thread each scheduling pass while a job rate limit is set; the
    local executor's run drops it (`onstart`), a cluster's keeps it. The attributes are Snakemake's own: a
    Snakemake without them would make this a silent no-op, so their presence is checked too."""
    import inspect
    from types import SimpleNamespace

    from snakemake.scheduling.job_scheduler import JobScheduler

    from batchpipe.workflow import unthrottle_local_jobs

    assert "self.job_rate_limiter = (" in inspect.getsource(JobScheduler.__init__)
    assert "if self.job_rate_limiter is not None:" in inspect.getsource(JobScheduler.schedule)
    local = SimpleNamespace(scheduler=SimpleNamespace(job_rate_limiter=object()), local_exec=True)
    assert unthrottle_local_jobs(local) and local.scheduler.job_rate_limiter is None
    limiter = object()
    cluster = SimpleNamespace(scheduler=SimpleNamespace(job_rate_limiter=limiter), local_exec=False)
    assert not unthrottle_local_jobs(cluster) and cluster.scheduler.job_rate_limiter is limiter
    assert not unthrottle_local_jobs(SimpleNamespace(scheduler=None, local_exec=True))  # a dry run has none


def test_a_job_of_thousands_of_inputs_is_not_weighed_by_their_sizes():
    """Snakemake's scheduler asks the size of every input of every ready job each round; `list_issues` takes
    every issue file. A job of more than LARGE_JOB_INPUTS inputs is left out of the ask and weighs as empty;
    the others as before. The attributes are Snakemake's own (checked too: without them this is a no-op)."""
    import asyncio
    import inspect
    from types import SimpleNamespace

    from snakemake.scheduling.greedy import Scheduler as Greedy
    from snakemake.scheduling.job_scheduler import JobScheduler
    from snakemake.scheduling.milp import Scheduler as Ilp

    from batchpipe.workflow import LARGE_JOB_INPUTS, weigh_small_jobs_only

    assert "self._input_sizes = {}" in inspect.getsource(JobScheduler.__init__)
    assert "self.update_input_sizes(jobs)" in inspect.getsource(JobScheduler.job_selector)
    assert "input_sizes[f] or 0 for f in job.input" in inspect.getsource(Greedy.job_reward)
    assert "input_sizes[f] / 1e9 for f in temp_files" in inspect.getsource(Ilp.select_jobs)

    asked: list[str] = []

    class Scheduler:
        def __init__(self):
            self._input_sizes: dict = {}

        async def update_input_sizes(self, jobs):
            for job in jobs:
                asked.extend(job.input)
                self._input_sizes.update((f, 7) for f in job.input)

    scheduler = Scheduler()
    assert weigh_small_jobs_only(SimpleNamespace(scheduler=scheduler))
    small = SimpleNamespace(input=["a", "b"])
    large = SimpleNamespace(input=[f"issue_{i}.json" for i in range(LARGE_JOB_INPUTS + 1)])
    asyncio.run(scheduler.update_input_sizes([small, large]))
    assert asked == ["a", "b"]
    sizes = scheduler._input_sizes
    assert [sizes[f] for f in small.input] == [7, 7] and [sizes[f] for f in large.input[:2]] == [0, 0]
    assert not weigh_small_jobs_only(SimpleNamespace(scheduler=None))  # a dry run has none
