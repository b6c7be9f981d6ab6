# The plan of the run, made by a job: the first repairs damaged views, adopts the batches another checkout
# sent, learns which batches in flight ended, and plans stage 0; later rounds send the retries of the round
# before; later stages plan from the results of the stage before. One checkpoint per plan, never per chunk.


checkpoint plan:
    input:
        get_plan_inputs,
    output:
        plan=directory(PLAN),
    log:
        "logs/plan/{key}_s{stage}r{round}.log",
    localrule: True
    resources:
        api_calls=1,
    run:
        bp.run_plan(config, wildcards.key, int(wildcards.stage), int(wildcards.round), output.plan, log[0])
