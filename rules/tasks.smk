# Recycled tasks: actionable items of every new or changed result -> task files, the board, ACTIVE_TASKS.md.
# After the summary, not beside it: the two read every result of the run, and at 100,000 issues they are its
# largest moments, whose memory would add up (BENCHMARKS.md); the report's pages are made beside it. Ancient:
# an order, not a trigger (a summary written again, by another target or after the tasks, reruns nothing).
rule recycle_tasks:
    input:
        get_run_inputs,
        summary=ancient(SUMMARY_JSON),
    output:
        active=ACTIVE_TASKS,
        summary=RECYCLE_SUMMARY,
    log:
        "logs/recycle_tasks.log",
    conda:
        "../envs/batchpipe.yaml"
    script:
        "../scripts/recycle_tasks.py"
