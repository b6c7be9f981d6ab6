# The pages of `snakemake --report report.html`: the run summary as a table, charts and a table of results,
# made from the summary and the files the summary is made from (the chunks' manifests, which list the
# results), the ledger and the issues' labels; no provider is called. A report shows
# files that exist, so they are made in the run, after the summary, and again only when the summary
# changes (a run with nothing to do makes nothing). Each file is read once and only counts and the table's rows
# are kept, so it is a short `run:` job like the per-chunk ones; it is no localrule: any executor may run it.
import batchpipe.charts as bp_charts

REPORT = bp_charts.ReportFiles.in_folder(os.path.join(os.path.dirname(SUMMARY_JSON), "report"))
REPORT_FILES = [str(path) for path in vars(REPORT).values()]


rule report_charts:
    input:
        summary=SUMMARY_JSON,
        chunks=get_run_inputs,
    output:
        summary=report(str(REPORT.summary), caption="../report/report-summary.rst", category="Run summary"),
        cost=report(str(REPORT.cost), caption="../report/report-cost.rst", category="Spend and results"),
        outcomes=report(str(REPORT.outcomes), caption="../report/report-outcomes.rst", category="Spend and results"),
        batches=report(str(REPORT.batches), caption="../report/report-batches.rst", category="Spend and results"),
        confidence=report(
            str(REPORT.confidence), caption="../report/report-confidence.rst", category="Spend and results"
        ),
        labels=report(str(REPORT.labels), caption="../report/report-labels.rst", category="Spend and results"),
        table=report(str(REPORT.table), caption="../report/report-results.rst", category="Table of results"),
    log:
        "logs/report_charts.log",
    run:
        bp.run_report(config, input.summary, dict(output.items()), log[0])
