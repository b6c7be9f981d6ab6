"""Snakemake script: recycle tasks from new or changed results (data/tasks/: task files, board, ACTIVE_TASKS.md)."""

from batchpipe.config import load_settings
from batchpipe.memory import collector_paused
from batchpipe.tasks import recycle

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    settings = load_settings(snakemake.config, root=".")  # noqa: F821
    with collector_paused():  # it reads every result of the run: millions of objects, no cycle
        recycle(settings, active_path=snakemake.output.active, summary_path=snakemake.output.summary, log=log)  # noqa: F821
