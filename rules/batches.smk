# Per-chunk rules use short `run:` blocks calling the package: with the profile's force-use-threads
# they run inside the Snakemake process (about 15 ms a job instead of 0.2-1.6 s for a new interpreter).
# Submission is idempotent in its own code (the ledger in batch_results/ledger/), never by Snakemake:
# a deleted marker is rewritten from the ledger byte for byte, and no rerun creates a second batch.
# submit_batch first writes a new chunk's request file (batch_requests/): no job of its own for it.


rule submit_batch:
    output:
        marker=f"{BATCHES}/{{processor}}/{{chunk}}.submitted.json",
    log:
        "logs/submit_batch/{processor}/{chunk}.log",
    resources:
        api_calls=1,
    localrule: True
    run:
        bp.run_submit(get_plan(wildcards.processor), wildcards.processor, wildcards.chunk, log[0])


# Download and collect in one job: Snakemake's own cost is about 15 ms a job, as much as the work of a
# chunk; one job less per chunk is 668 jobs less at 10,000 issues.
rule download_batch:
    input:
        marker=ancient(f"{BATCHES}/{{processor}}/{{chunk}}.submitted.json"),
    output:
        output=f"{BATCHES}/{{processor}}/{{chunk}}.output.jsonl",
        errors=f"{BATCHES}/{{processor}}/{{chunk}}.errors.jsonl",
        manifest=f"{BATCHES}/{{processor}}/{{chunk}}.results.json",
    log:
        "logs/download_batch/{processor}/{chunk}.log",
    resources:
        api_calls=1,
    localrule: True
    run:
        bp.run_download(get_plan(wildcards.processor), wildcards.processor, wildcards.chunk, log[0])
