# The run summary, and results/all (its table, once the tasks are recycled too), with where the run settled.


rule summarize_run:
    input:
        get_run_inputs,
    output:
        summary=report(SUMMARY_JSON, caption="../report/summary.rst", category="Run summary"),
    log:
        "logs/summarize_run.log",
    localrule: True
    run:
        bp.run_summarize(config, [p for p in input if "/plan/" in p], output.summary, log[0])


# results/all waits for the summary and the recycled tasks, which run side by side (neither uses the other).
# settled.json names the state the run left the files in: until one changes, the next run has nothing to do.
# The plan key is its parameter: a new key (a changed file) reruns it by Snakemake's `params` trigger (the
# profile), and its input, the run's first plan, is then made, so the run is brought up to date although
# every older file exists (Snakemake does not rerun a job for a missing intermediate file).
rule complete_run:
    input:
        plan=FIRST_PLAN,
        summary=SUMMARY_JSON,
        active=ACTIVE_TASKS,
        tasks=RECYCLE_SUMMARY,
    output:
        table=report(SUMMARY_TABLE, caption="../report/summary.rst", category="Run summary"),
        settled=SETTLED,
    log:
        "logs/complete_run.log",
    localrule: True
    params:
        key=KEY,
    run:
        bp.run_complete(config, input.summary, output.table, output.settled, log[0])
