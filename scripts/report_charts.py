"""Snakemake script: the report's pages made from the files (the batches, the confidence, the labels, the table of
results), in a process of its own beside the summary job."""

from batchpipe.charts import report_job
from batchpipe.config import load_settings

settings = load_settings(snakemake.config, root=".")  # noqa: F821 (snakemake is injected)
report_job(settings, None, dict(snakemake.output.items()), snakemake.log[0])  # noqa: F821
