# batchpipe: GitHub issues -> chunked batch requests -> provider batches -> per-issue results.
# Run: snakemake --cores 4 results/all   (dry run: snakemake -n results/all)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/plan.smk"
include: "rules/batches.smk"
include: "rules/tasks.smk"
include: "rules/report.smk"
include: "rules/results.smk"


rule all:
    default_target: True
    input:
        SUMMARY_TABLE,
