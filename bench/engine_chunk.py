#!/usr/bin/env python3
"""Time the local batch engine answering one chunk: upload, create, then run to the end (offline responder).

    .venv/bin/python bench/engine_chunk.py batch_requests/product-labeling/CHUNK.jsonl [--package DIR]

`--package DIR`: import `batchpipe` from DIR (e.g. a `git archive REV batchpipe | tar -x -C DIR` of an older
revision), to compare two revisions on the same request file; alternate them, the machine is noisy. The
engine's state goes to a temp folder, removed at the end.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=Path, help="a chunk's OpenAI-format request file (JSONL)")
    parser.add_argument("--package", type=Path, help="folder holding the batchpipe package to import")
    args = parser.parse_args()
    if args.package:
        sys.path.insert(0, str(args.package.resolve()))
    from batchpipe.service.engine import BatchEngine
    from batchpipe.service.responders import OfflineResponder

    state = Path(tempfile.mkdtemp(prefix="engine-chunk-"))
    try:
        engine = BatchEngine(state, OfflineResponder())
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        uploaded = engine.create_file_from(args.requests, "batch")
        batch = engine.create_batch(request_format="openai", input_file_id=uploaded["id"])
        created = time.perf_counter()
        record = engine.get_batch(batch.id)
        while not record.ended:
            record = engine.get_batch(batch.id)
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"{record.status}: {record.succeeded} answered; create {created - start:.2f} s, "
            f"run {time.perf_counter() - created:.2f} s; CPU {after.ru_utime - before.ru_utime:.2f} s user, "
            f"{after.ru_stime - before.ru_stime:.2f} s sys"
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
