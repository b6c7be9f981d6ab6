# Per-chunk rules use short `run:` blocks calling the package: with the profile's force-use-threads they
# run inside the Snakemake process instead of a new interpreter per job (BENCHMARKS.md).
# Submission is idempotent in its own code (the ledger in batch_results/ledger/), never by Snakemake:
# a deleted marker is rewritten from the ledger byte for byte, and no rerun creates a second batch.
# Jobs that call the provider are localrules: they need the key, the network and the ledger's host.


# Which of the two makes a chunk's marker follows from this run's plans (their inputs say it, the same for the
# whole run); resume_batch is tried first: most chunks of a settled workspace are known.
ruleorder: resume_batch > submit_batch


# A new chunk: its request file and index, written from its plan's spec, then sent, in one job (one job per
# chunk less: Snakemake's own cost per job is about the work of a chunk, BENCHMARKS.md). Once the ledger knows
# the chunk, both files are linked beside it (Snakemake deletes a failed job's outputs, and those of a job
# before it runs again): the submission resumes from them, and a job run again restores them. In a run that
# waits on a provider's batches, submissions go before downloads (`SUBMIT_PRIORITY`), so that downloads waiting
# on batches do not hold the job slots the sending needs (within Snakemake's sample of ready jobs: README).
rule submit_batch:
    input:
        unpack(get_new_chunk_inputs),
    output:
        request=REQUEST,
        index=INDEX,
        marker=MARKER,
    log:
        "logs/submit_batch/{processor}/{chunk}.log",
    priority: SUBMIT_PRIORITY
    localrule: True
    resources:
        api_calls=1,
    run:
        bp.run_write_and_submit(config, wildcards.processor, wildcards.chunk, input.get("plan", ""), log[0])


# A chunk an earlier run made (the ledger knows it): its marker, rewritten from the ledger byte for byte (sent),
# or its submission finished (a run stopped mid-submission: the ledger's intents say what was done). Its inputs
# are ancient: a request file written again (same content) never sends a chunk again.
rule resume_batch:
    input:
        unpack(get_resume_inputs),
    output:
        marker=MARKER,
    log:
        "logs/resume_batch/{processor}/{chunk}.log",
    priority: SUBMIT_PRIORITY
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
