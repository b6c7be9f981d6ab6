# The plan of the run, made by a job: the first repairs damaged views, adopts the batches another checkout
# sent, learns which batches in flight ended, and plans stage 0; later rounds send the retries of the round
# before; later stages plan from the results of the stage before. One checkpoint per plan, never per chunk.


# The issue files, listed: the first plan's input (one file, not one per issue: Snakemake compares a job's
# inputs with the file each consumer of its output needs, and every new chunk's job takes the plan's folder).
rule list_issues:
    input:
        get_issue_files,
    output:
        issues=ISSUE_LIST,
    log:
        "logs/list_issues/{key}.log",
    localrule: True
    run:
        bp.run_list_issues(input, output.issues, log[0])


# Its threads read the issue files the scan cache lacks in as many processes (a cold plan's largest work);
# nothing else is ready while a plan is made. Snakemake gives it at most --cores (`--set-threads plan=1`: none).
checkpoint plan:
    input:
        get_plan_inputs,
    output:
        plan=directory(PLAN),
    log:
        "logs/plan/{key}_s{stage}r{round}.log",
    localrule: True
    threads: os.cpu_count() or 1
    resources:
        api_calls=1,
    run:
        bp.run_plan(config, wildcards.key, int(wildcards.stage), int(wildcards.round), output.plan, log[0], threads)


# What a plan's chunks made, gathered into one file (the chunk files it lists, with their sizes): the jobs
# after a round (the next round's plan, the summary, the recycling, the report) take it instead of every
# chunk's manifest, so Snakemake links and records those manifests once per round, not once per job.
rule gather_round:
    input:
        get_round_inputs,
    output:
        round=ROUND,
    log:
        "logs/gather_round/{key}_s{stage}r{round}.log",
    localrule: True
    run:
        bp.run_gather_round(config, input[0], output.round, log[0])
