# Chained stages (batchpipe/stages.py): ONE checkpoint per stage boundary, never one per chunk or issue.
# Once stage n-1's chunks are collected, the plan is made again from files and stage n's chunks join
# the DAG in the same run (with wait=false: on a later run, once stage n-1's batches have ended).


checkpoint complete_stage:
    input:
        get_stage_inputs,
    output:
        stage=STAGE_FILE,
    log:
        "logs/complete_stage/stage_{n}.log",
    wildcard_constraints:
        n="[1-9][0-9]*",
    localrule: True
    run:
        bp_stages.run_complete_stage(STAGES, int(wildcards.n), output.stage, log[0])


rule restore_group_result:
    input:
        unpack(get_group_restore_inputs),
    output:
        result=GROUP_RESULT,
    log:
        "logs/restore_group_result/{group}_{aggregate}.log",
    wildcard_constraints:
        group="[^/]+",
        aggregate=AGGREGATES,
    localrule: True
    run:
        bp_stages.run_restore_group(STAGES, wildcards.group, wildcards.aggregate, log[0])
