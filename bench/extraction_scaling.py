#!/usr/bin/env python3
"""Task extraction scales linearly with an answer's length: 20,000 lines take about twice as long as
10,000 (quadratic would be 4x). A benchmark, not a test: it measures time.

    .venv/bin/python bench/extraction_scaling.py
"""

from __future__ import annotations

import gc
import sys
import time

from batchpipe.tasks import tasks_from_result


def result(analysis: dict) -> dict:
    return {
        "issue_reference": {"org": "o", "repo": "r", "number": 1, "ref": "o/r#1"},
        "processor": {"name": "issue-summary"},
        "batch_id": "b",
        "custom_id": "c",
        "analysis": analysis,
    }


def main() -> int:
    """A complexity check: 20,000 lines take about twice as long as 10,000 (quadratic would be 4x)."""
    block = [
        "**Step {i}: Do thing {i}** with detail",
        "Some continuation text for {i} with `code` and a [link](https://example.org/{i}).",
        "",
        "TODO: check case {i}",
        "1. numbered item {i}",
        "   - a sub bullet",
        "Needs to be implemented: part {i}",
        "plain prose line {i}",
    ]

    def answers(n: int) -> list[dict]:
        """A mixed answer whose parts are also the worst cases (one long item, one long list, duplicates),
        and an answer of sections only (kept, since no other item is found)."""
        part = n // 4
        mixed = "\n".join(
            [
                "\n".join(line.format(i=i) for i in range(part // len(block) + 1) for line in block),
                "**Step 1: one long step**",
                "\n".join(f"continuation {i}" for i in range(part)),
                "",
                "This requires implementation:",
                "\n".join(f"- item {i}" for i in range(part)),
                "",
                "\n".join("TODO: the same thing again" for _ in range(part)),
            ]
        )
        sections = "\n".join(f"### {i % 999 + 1}. Section {i}" if i % 2 else f"text {i}" for i in range(n))
        return [result({"text": mixed}), result({"text": sections})]

    def timed(items: list[dict]) -> float:
        """CPU time of this process: other processes on a busy machine count less than in wall time."""
        start = time.process_time()
        for item in items:
            tasks_from_result(item, "r.json")
        return time.process_time() - start

    small, large = answers(10_000), answers(20_000)
    timed(answers(1_000))  # warm up
    gc.collect()
    gc.disable()
    runs_small, runs_large = [], []
    try:  # interleaved, best of 5: robust to a busy machine
        for _ in range(5):
            runs_small.append(timed(small))
            runs_large.append(timed(large))
    finally:
        gc.enable()
    t_small, t_large = min(runs_small), min(runs_large)
    print(f"10,000 lines: {t_small:.3f} s CPU, 20,000 lines: {t_large:.3f} s CPU, ratio {t_large / t_small:.2f}")
    return 0 if t_large < 3.0 * t_small else 1


if __name__ == "__main__":
    sys.exit(main())
