#!/usr/bin/env python3
"""One big chunk through the `local` provider: the peak memory and time of each step (upload, create, the
engine answering it, download), in a process of its own. A benchmark, not a test: it measures memory.

    .venv/bin/python bench/chunk_memory.py                      # a synthetic chunk: 27,500 requests, 180 MB
    .venv/bin/python bench/chunk_memory.py --requests 5000      # a smaller one
    .venv/bin/python bench/chunk_memory.py --file batch_requests/product-labeling/<chunk>.jsonl
    .venv/bin/python bench/chunk_memory.py --file ... --package DIR   # DIR/batchpipe: another revision's

`--package` compares two revisions on the same request file (`git archive REV batchpipe | tar -x -C DIR`);
alternate them, the machine is noisy.

The engine reads, answers and writes a batch a block of requests at a time, so the peak should not grow
with the chunk (BENCHMARKS.md, "Issue 12 at 100,000 issues").
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You triage GitHub issues by assigning product labels. " * 20


def write_chunk(path: Path, requests: int, text_bytes: int) -> None:
    """A request file like the pipeline's: one chat request a line, a system prompt and an issue's text."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(requests):
            body = {
                "model": "offline",
                "max_completion_tokens": 1500,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Title: Issue {i}\n\n" + ("word " * (text_bytes // 5))},
                ],
            }
            line = {"custom_id": f"r{i:06d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="a request file (default: a synthetic one)")
    parser.add_argument("--requests", type=int, default=27_500, help="requests of the synthetic chunk")
    parser.add_argument("--text-bytes", type=int, default=5_500, help="bytes of each synthetic issue text")
    parser.add_argument("--package", type=Path, help="a folder holding the batchpipe package to measure")
    args = parser.parse_args()
    if args.package is not None:
        sys.path.insert(0, str(args.package.resolve()))
    from batchpipe.config import LocalConfig
    from batchpipe.providers.local import LocalProvider

    with tempfile.TemporaryDirectory() as tmp:
        request_file = args.file
        if request_file is None:
            request_file = Path(tmp) / "chunk.jsonl"
            write_chunk(request_file, args.requests, args.text_bytes)
        size_mb = request_file.stat().st_size / 2**20
        local = LocalConfig(
            responder="offline",
            base_url=None,
            api_key_env=None,
            concurrency=1,
            state_dir=str(Path(tmp) / "state"),
            delays={},
            faults={},
        )
        provider = LocalProvider.from_config(local, Path(tmp) / "state")
        print(f"{request_file.name}: {size_mb:.0f} MB; peak RSS so far, elapsed", file=sys.stderr)
        start = time.monotonic()

        def step(name: str) -> None:
            print(f"  {name:<9} {peak_mb():>6} MB {time.monotonic() - start:>7.1f} s", file=sys.stderr)

        step("start")
        file_id = provider.upload(request_file)
        step("upload")
        status = provider.create(request_file, file_id, {})
        step("create")
        status = provider.retrieve(status.batch_id)  # the engine answers the batch here (zero delays)
        step("answer")
        output, errors = provider.download(status)
        step("download")
        print(
            f"  {status.status}: {status.succeeded} succeeded, {len(output) / 2**20:.0f} MB of output", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
