# The run summary, and results/all (its table, once the tasks are recycled too).


rule summarize_run:
    input:
        get_run_inputs,
    output:
        summary=report(SUMMARY_JSON, caption="../report/summary.rst", category="Run summary"),
    log:
        "logs/summarize_run.log",
    localrule: True
    run:
        bp.run_summarize(config, [p for p in input if os.path.isdir(p)], output.summary, log[0])


# results/all waits for the summary and the recycled tasks (made after the summary: `rules/tasks.smk`).
# It also records where the run settled (.snakemake/batchpipe/settled.json, bookkeeping like Snakemake's
# metadata beside it): until a file changes, the next run has the same plan key and nothing to do. The key is
# its parameter: a new key reruns it by Snakemake's `params` trigger (the profile; `results/all` is its only
# output so that its metadata is whole), and its input, the run's first plan, is then made, so the run is
# brought up to date although every older file exists (Snakemake does not rerun for a missing intermediate).
rule complete_run:
    input:
        plan=FIRST_PLAN,
        summary=SUMMARY_JSON,
        active=ACTIVE_TASKS,
        tasks=RECYCLE_SUMMARY,
        report=REPORT_FILES,
    output:
        table=SUMMARY_TABLE,
    log:
        "logs/complete_run.log",
    localrule: True
    params:
        key=KEY,
    run:
        bp.run_complete(config, input.summary, output.table, log[0])
