# Recycled tasks: actionable items of every new or changed result -> task files, the board, ACTIVE_TASKS.md.
rule recycle_tasks:
    input:
        get_run_inputs,
    output:
        active=ACTIVE_TASKS,
        summary=RECYCLE_SUMMARY,
    log:
        "logs/recycle_tasks.log",
    conda:
        "../envs/batchpipe.yaml"
    script:
        "../scripts/recycle_tasks.py"
