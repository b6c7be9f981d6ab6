# Per-issue results restored from downloaded outputs (download_batch writes them first), the run summary,
# and results/all (its table, once the tasks are recycled too).


rule restore_result:
    input:
        unpack(get_restore_inputs),
    output:
        result=RESULT,
    log:
        "logs/restore_result/{issue}_{processor}.log",
    localrule: True
    run:
        bp.run_restore(get_plan(wildcards.processor), wildcards.processor, wildcards.issue, log[0])


# A thread in this process, like the per-chunk jobs, while recycle_tasks runs in its own processes.
rule summarize_run:
    input:
        manifests=get_manifests,
        restored=get_missing_files,
        trigger=get_trigger,
    output:
        summary=report(SUMMARY_JSON, caption="../report/summary.rst", category="Run summary"),
    log:
        "logs/summarize_run.log",
    localrule: True
    run:
        bp.run_summarize(config, output.summary, log[0])


# results/all waits for the summary and the recycled tasks, which run side by side (neither uses the other).
rule complete_run:
    input:
        summary=SUMMARY_JSON,
        tasks=get_task_outputs,
    output:
        table=report(SUMMARY_TABLE, caption="../report/summary.rst", category="Run summary"),
    log:
        "logs/complete_run.log",
    localrule: True
    run:
        bp.run_complete(input.summary, output.table, log[0])
