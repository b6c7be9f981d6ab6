# Per-issue results restored from downloaded outputs (download_batch writes them first), and the run summary.


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
