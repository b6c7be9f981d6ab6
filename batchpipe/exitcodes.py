"""The exit codes of a run, the same for `snakemake` and `batchpipe run` (the README's table).

  0  done: every selected request has its result (with `wait: false`, also while batches are in flight)
  1  an error stopped a job or the run (its log says which)
  2  a bad config value or command-line argument, a missing issues_dir, no issue in it, or a filter
     given explicitly that matches nothing (one line names it)
  3  requests failed for good (the summary's last lines name them)
  4  a chunk waits for a person or for a batch to be verified (`batchpipe status`, `batchpipe adopt`)
  5  work is left for the next run (requests still to send after a waiting run, or held by a cost cap)
130  the run was interrupted (SIGINT/SIGTERM); batches keep running, the next run resumes
"""

from __future__ import annotations

from typing import Any

__all__ = ["DONE", "ERROR", "FAILED", "INTERRUPTED", "LEFT", "USAGE", "WAITING", "from_summary"]

DONE = 0
ERROR = 1
USAGE = 2
FAILED = 3
WAITING = 4
LEFT = 5
INTERRUPTED = 130


def from_summary(summary: dict[str, Any], wait: bool) -> int:
    """The exit code a run summary calls for: a person's attention first, then failures, then work left."""
    processors = summary.get("processors", {}).values()
    if summary.get("blocked"):
        return WAITING
    if any(p.get("failed") for p in processors):
        return FAILED
    if wait and any(p.get("pending_retries") for p in processors):
        return LEFT  # failed requests with attempts left, after a waiting run
    if summary.get("held"):
        return LEFT  # chunks a cost cap held: the next run sends them
    return DONE
