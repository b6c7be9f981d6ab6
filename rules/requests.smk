# Per-chunk rules use short `run:` blocks calling the package: with the profile's force-use-threads
# they run inside the Snakemake process (about 15 ms a job instead of 0.2-1.6 s for a new interpreter).


rule write_requests:
    output:
        requests=f"{REQUESTS}/{{processor}}/{{chunk}}.jsonl",
        index=f"{REQUESTS}/{{processor}}/{{chunk}}.index.json",
    log:
        "logs/write_requests/{processor}/{chunk}.log",
    localrule: True
    run:
        bp.run_write_requests(get_plan(wildcards.processor), wildcards.processor, wildcards.chunk, log[0])
