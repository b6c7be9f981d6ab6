"""Snakemake script: write the run summary (results/all as a table, results/summary.json)."""

import sys

from batchpipe.workflow import load_plan
from batchpipe.results import write_summary

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
plan = load_plan(snakemake.config)  # noqa: F821
summary = write_summary(plan, snakemake.output.table, snakemake.output.summary)  # noqa: F821
print(open(snakemake.output.table).read(), file=sys.stderr)  # noqa: F821
