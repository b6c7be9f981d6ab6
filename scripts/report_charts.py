"""Snakemake script: the pages of `snakemake --report` (the summary table, the charts, the results table).

A script job, so its own process: DuckDB and matplotlib load and free their memory there, not in the
Snakemake process, and it runs beside the recycling on another core."""

from batchpipe.charts import report_job
from batchpipe.config import load_settings

settings = load_settings(snakemake.config, root=".")  # noqa: F821 (snakemake is injected)
report_job(settings, snakemake.input.summary, dict(snakemake.output.items()), snakemake.log[0])  # noqa: F821
