# Per-chunk rules use short `run:` blocks calling the package: with the profile's force-use-threads
# they run inside the Snakemake process instead of a new interpreter per job (BENCHMARKS.md).
# Submission is idempotent in its own code (the ledger in batch_results/ledger/), never by Snakemake:
# a deleted marker is rewritten from the ledger byte for byte, and no rerun creates a second batch.
# submit_batch first writes a new chunk's request file (batch_requests/): no job of its own for it.


rule submit_batch:
    output:
        marker=MARKER,
    log:
        "logs/submit_batch/{processor}/{chunk}.log",
    localrule: True
    resources:
        api_calls=1,
    run:
        bp.run_submit(get_plan(wildcards.processor), wildcards.processor, wildcards.chunk, log[0])


# Download and collect in one job: Snakemake's own cost per job is about the work of a chunk, so one
# job less per chunk matters at scale (BENCHMARKS.md).
rule download_batch:
    input:
        marker=ancient(MARKER),
    output:
        output=OUTPUT,
        errors=ERRORS,
        manifest=MANIFEST,
    log:
        "logs/download_batch/{processor}/{chunk}.log",
    localrule: True
    resources:
        api_calls=1,
    run:
        bp.run_download(get_plan(wildcards.processor), wildcards.processor, wildcards.chunk, log[0])
