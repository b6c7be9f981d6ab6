"""Repairs: views a person or a crash damaged are made again from the ledger and the store, each named.

Run by the plan job before anything else. A marker is a view of the ledger: a missing, unreadable or
foreign one is written again at once. A chunk whose downloads or results are missing or damaged (a result
file that is no longer the size its manifest recorded and no longer valid JSON: a result a person edited
stays) loses its manifest, so that the run collects it again
from the store (no provider call). A marker left by a chunk that waits is removed, so that the run tries
again. A lost task board makes the recycling run again (it is rebuilt from the results).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .layout import Layout
from .ledger import write_marker
from .manifest import read_manifest
from .plan import Plan

__all__ = ["repair_views"]


def repair_views(plan: Plan, log: Callable[[str], None]) -> int:
    """Repair what is damaged; returns how many chunks (and views) were put right."""
    layout = plan.layout
    repaired = 0
    for name, pp in plan.processors.items():
        for chunk, history in sorted(pp.existing.items()):
            if history.archived:
                continue
            marker = layout.marker(name, chunk)
            if history.created is not None:
                before = marker.read_bytes() if marker.exists() else None
                write_marker(layout, history)
                if before != marker.read_bytes():
                    log(f"repair: {marker}: written again from the ledger")
                    repaired += 1
            elif marker.exists():
                marker.unlink()  # a chunk that waited: its submission is tried again
            if history.outcomes is None:
                continue
            damaged = _damaged(layout, name, chunk, pp.missing_results, pp.sources, history.result_sizes)
            if damaged:
                layout.manifest(name, chunk).unlink(missing_ok=True)
                log(f"repair: {name}/{chunk}: {damaged}; collected again from the store")
                repaired += 1
    if layout.tasks_dir.is_dir() and not layout.board.exists() and layout.recycle_summary.exists():
        layout.recycle_summary.unlink()
        log(f"repair: {layout.board} is missing; the recycling rebuilds it")
        repaired += 1
    return repaired


def _damaged(
    layout: Layout,
    name: str,
    chunk: str,
    missing: list[str],
    sources: dict[str, tuple[str, str]],
    recorded: dict[str, int] | None = None,
) -> str:
    """Why a collected chunk's views are not whole ("" when they are). `recorded`: the manifest's result
    files, as the plan read them (else the manifest is read here)."""
    for path in (layout.output(name, chunk), layout.errors(name, chunk)):
        if not path.exists():
            return f"{path.name} is missing"
    lost = [key for key in missing if sources.get(key, ("",))[0] == chunk]
    if lost:
        return f"the result of {lost[0]} is missing" + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else "")
    if recorded is None:
        try:
            recorded = read_manifest(layout.manifest(name, chunk)).results
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "its manifest is unreadable"
    for file_name, size in recorded.items():
        path = layout.results_dir / file_name
        try:
            if path.stat().st_size != size and not _valid_json(path):  # an edited result stays; a torn one goes
                return f"{file_name} is damaged (not valid JSON)"
        except FileNotFoundError:
            continue  # replaced by a later request's result, or counted above
    return ""


def _valid_json(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (OSError, ValueError):
        return False
