"""Snakemake script: write the run summary (results/all as a table, results/summary.json)."""

import sys

from batchpipe.workflow import load_plan
from batchpipe.results import write_summary

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
plan = load_plan(snakemake.config)  # noqa: F821
summary = write_summary(plan, snakemake.output.table, snakemake.output.summary)  # noqa: F821
table = open(snakemake.output.table).read()  # noqa: F821
print(table, file=sys.stderr)
print(table, flush=True)  # on the console, after Snakemake's job lines
if plan.settings["commit_results"]:  # new result and report files to git, naming their batch ids
    from batchpipe.stages import commit_results

    commit_results(plan.settings, log=lambda line: print(line, file=sys.stderr))
