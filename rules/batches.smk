# Per-chunk rules use short `run:` blocks calling the package: with the profile's force-use-threads they
# run inside the Snakemake process instead of a new interpreter per job (BENCHMARKS.md).
# Submission is idempotent in its own code (the ledger in batch_results/ledger/), never by Snakemake:
# a deleted marker is rewritten from the ledger byte for byte, and no rerun creates a second batch.
# Jobs that call the provider are localrules: they need the key, the network and the ledger's host.


rule write_requests:
    input:
        unpack(get_spec),
    output:
        request=REQUEST,
        index=INDEX,
    log:
        "logs/write_requests/{processor}/{chunk}.log",
    localrule: True
    run:
        bp.run_write_requests(config, wildcards.processor, wildcards.chunk, input.get("plan", ""), log[0])


# Its inputs are ancient: a request file written again (same content) never sends a chunk again.
rule submit_batch:
    input:
        unpack(get_submit_inputs),
    output:
        marker=MARKER,
    log:
        "logs/submit_batch/{processor}/{chunk}.log",
    localrule: True
    resources:
        api_calls=1,
    run:
        bp.run_submit(config, wildcards.processor, wildcards.chunk, log[0])


# Download and collect in one job: Snakemake's own cost per job is about the work of a chunk, so one job
# less per chunk matters at scale (BENCHMARKS.md). The per-issue results it writes are views of its
# answers listed in its manifest; a damaged or deleted one is found by the plan, which removes the
# manifest so that this job runs again (from the store: no provider call).
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
        bp.run_download(config, wildcards.processor, wildcards.chunk, log[0])
