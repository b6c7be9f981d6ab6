# The pages of `snakemake --report report.html`: the run summary as a table, charts and a table of results,
# made from the summary and from the files the summary is made from (the results, the ledger, the issues'
# labels); no provider is called. A report shows files that exist, so they are made in the run, and again only
# when a plan changes (a run with nothing to do makes nothing). Neither is a localrule: any executor may run them.
import batchpipe.charts as bp_charts

REPORT = bp_charts.ReportFiles.in_folder(os.path.join(os.path.dirname(SUMMARY_JSON), "report"))
REPORT_FILES = [str(path) for path in vars(REPORT).values()]


# The summary's pages: a short `run:` job after the summary.
rule report_summary:
    input:
        summary=SUMMARY_JSON,
    output:
        summary=report(str(REPORT.summary), caption="../report/report-summary.rst", category="Run summary"),
        cost=report(str(REPORT.cost), caption="../report/report-cost.rst", category="Spend and results"),
        outcomes=report(str(REPORT.outcomes), caption="../report/report-outcomes.rst", category="Spend and results"),
    log:
        "logs/report_summary.log",
    run:
        bp.run_report(config, input.summary, dict(output.items()), log[0])


# The files' pages (each file read once, only counts and the table's rows kept; a memo skips what did not
# change): they need no summary, so a script (a process of its own) makes them beside the summary and the
# recycling, on another core.
rule report_charts:
    input:
        get_run_inputs,
    output:
        batches=report(str(REPORT.batches), caption="../report/report-batches.rst", category="Spend and results"),
        confidence=report(
            str(REPORT.confidence), caption="../report/report-confidence.rst", category="Spend and results"
        ),
        labels=report(str(REPORT.labels), caption="../report/report-labels.rst", category="Spend and results"),
        table=report(str(REPORT.table), caption="../report/report-results.rst", category="Table of results"),
    log:
        "logs/report_charts.log",
    conda:
        "../envs/batchpipe.yaml"
    script:
        "../scripts/report_charts.py"
