# Per-issue results from downloaded outputs, and the run summary.


rule write_results:
    input:
        output=f"{BATCHES}/{{processor}}/{{chunk}}.output.jsonl",
        errors=f"{BATCHES}/{{processor}}/{{chunk}}.errors.jsonl",
    output:
        manifest=f"{BATCHES}/{{processor}}/{{chunk}}.results.json",
    log:
        "logs/write_results/{processor}/{chunk}.log",
    localrule: True
    run:
        bp.run_collect(get_plan(wildcards.processor), wildcards.processor, wildcards.chunk, log[0])


rule restore_result:
    input:
        unpack(get_restore_inputs),
    output:
        result=f"{RESULTS}/{{issue}}_{{processor}}.json",
    log:
        "logs/restore_result/{issue}_{processor}.log",
    localrule: True
    run:
        bp.run_restore(get_plan(wildcards.processor), wildcards.processor, wildcards.issue, log[0])


rule summarize_run:
    input:
        manifests=get_manifests,
        restored=get_missing_files,
        trigger=get_trigger,
        tasks=get_task_outputs,
    output:
        table=report("results/all", caption="../report/summary.rst", category="Run summary"),
        summary=report("results/summary.json", caption="../report/summary.rst", category="Run summary"),
    log:
        "logs/summarize_run.log",
    localrule: True
    conda:
        "../envs/batchpipe.yaml"
    script:
        "../scripts/summarize_run.py"
