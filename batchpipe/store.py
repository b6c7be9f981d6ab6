"""The store of paid answers: every batch's downloaded output and error lines, written once, never removed.

`batch_results/store/{batch_id}.output.jsonl` and `.errors.jsonl`, then `{batch_id}.json` (their sizes and
sha256, written last: a batch is in the store only once that file is). No rule declares these files, so
Snakemake never deletes them (not before a rerun, not after a failed job, not with `--rerun-incomplete`);
the downloads beside the markers are views of the store, rebuilt from it with no provider call.

A realtime chunk's answers are in its answer journal (`batch_results/realtime/`), append-only as well.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write_bytes, canonical_json, sha256_hex
from .layout import Layout

__all__ = ["Stored", "get", "put"]


@dataclass(frozen=True)
class Stored:
    """A batch's answers as the store holds them."""

    batch_id: str
    output: bytes
    errors: bytes


def _paths(layout: Layout, batch_id: str) -> tuple[Path, Path, Path]:
    return layout.store_output(batch_id), layout.store_errors(batch_id), layout.store_meta(batch_id)


def get(layout: Layout, batch_id: str) -> Stored | None:
    """The batch's answers, or None when the store does not hold them whole (never stored, or a file
    that no longer matches what was stored: then it is named on stderr and the provider is asked again)."""
    output_path, errors_path, meta_path = _paths(layout, batch_id)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        output, errors = output_path.read_bytes(), errors_path.read_bytes()
    except (OSError, ValueError):
        return None
    if sha256_hex(output) != meta.get("output_sha256") or sha256_hex(errors) != meta.get("errors_sha256"):
        print(
            f"batchpipe: {meta_path.parent}: the stored answers of {batch_id} do not match their record; "
            "they are downloaded again",
            file=sys.stderr,
        )
        return None
    return Stored(batch_id, output, errors)


def put(layout: Layout, batch_id: str, output: bytes, errors: bytes) -> Stored:
    """Store a batch's answers once. A batch already stored keeps what it has (the first copy paid for
    is the record); the answers returned are the stored ones."""
    stored = get(layout, batch_id)
    if stored is not None:
        return stored
    output_path, errors_path, meta_path = _paths(layout, batch_id)
    atomic_write_bytes(output_path, output)
    atomic_write_bytes(errors_path, errors)
    meta = {
        "batch_id": batch_id,
        "output_bytes": len(output),
        "output_sha256": sha256_hex(output),
        "errors_bytes": len(errors),
        "errors_sha256": sha256_hex(errors),
    }
    atomic_write_bytes(meta_path, (canonical_json(meta) + "\n").encode("utf-8"))
    return Stored(batch_id, output, errors)
