#!/usr/bin/env python3
"""Compare benchmark results: one row per configuration, repeats (labels ending -rN) merged.

    .venv/bin/python bench/compare.py [bench/out/results-*.json ...]

Prints a Markdown table: N, configuration (source, patches, extra snakemake arguments), then per phase
the wall times of the repeats (min / max when repeated), jobs, the CPU seconds of the run and the CPU
seconds other processes took meanwhile (a noisy neighbour shows there).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def config_name(path: Path, doc: dict) -> str:
    label = re.sub(r"-r\d+$", "", path.stem.removeprefix("results-").removeprefix("results")) or "(default)"
    return label


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(OUT.glob("results*.json"))
    groups: dict[tuple[int, str], list[dict]] = {}
    meta: dict[tuple[int, str], dict] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        for run in doc["runs"]:
            key = (run["n"], config_name(path, doc))
            groups.setdefault(key, []).append(run)
            meta[key] = {
                "source": doc.get("source", ""),
                "patches": doc.get("patches", []),
                "extra": " ".join(doc.get("extra_args", [])),
            }
    print(
        "| N | configuration | cold s | noop s | change s | jobs (cold) | CPU s cold | other CPU s cold | peak RSS MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (n, name), runs in sorted(groups.items()):

        def span(phase: str, runs: list[dict] = runs) -> str:
            values = sorted(r[phase]["wall_s"] for r in runs)
            return f"{values[0]:.1f}" if len(values) == 1 else f"{values[0]:.1f}–{values[-1]:.1f}"

        cpu = [r["cold"].get("user_s", 0) + r["cold"].get("sys_s", 0) for r in runs]
        other = [r["cold"].get("foreign_cpu_s", float("nan")) for r in runs]
        rss = max(max(r[p]["peak_tree_rss_mb"] for p in ("cold", "noop", "change")) for r in runs)
        m = meta[(n, name)]
        desc = ", ".join(
            filter(None, [m["source"], " + ".join(p.removesuffix(".diff") for p in m["patches"]), m["extra"]])
        )
        print(
            f"| {n:,} | {name}: {desc} | {span('cold')} | {span('noop')} | {span('change')} | "
            f"{runs[0]['cold']['jobs'].get('total', 0)} | {'/'.join(f'{c:.0f}' for c in cpu)} | "
            f"{'/'.join(f'{o:.0f}' for o in other)} | {rss:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
