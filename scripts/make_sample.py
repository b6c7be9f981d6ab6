#!/usr/bin/env python3
"""Make the bundled sample: convert a deterministic, varied selection of github-metadata-backup
issues (the bitcoin-core/gui tgz) into gh-analysis issue files.

    python scripts/make_sample.py /work/shared/data/bitcoin-core-gui-issues.tgz data/issues --count 40

The selection always contains: issues with an empty and a null body, the issues with the most
comments, the longest bodies, issues with emoji and with accented letters, a few issues for each
common label (one for each rarer label), open and closed issues; the rest is spread evenly over
the issue numbers. Files larger than --max-file-bytes are never chosen, and the whole sample stays
under --max-bytes. Same input and options, same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

SOURCE = "bitcoin-data/github-metadata-backup-bitcoin-core-gui"


def read_tgz(path: Path) -> list[dict]:
    """The github-metadata-backup issue records in the tgz, sorted by issue number."""
    records = []
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                data = json.loads(tar.extractfile(member).read().decode("utf-8-sig"))
                if isinstance(data, dict) and data.get("type") == "issue":
                    records.append(data)
    records.sort(key=lambda r: r["issue"]["number"])
    return records


def org_repo(issue: dict) -> tuple[str, str]:
    org, repo = issue["repository_url"].rsplit("/repos/", 1)[1].split("/")[:2]
    return org, repo


def convert(record: dict) -> dict:
    """One github-metadata-backup record as a gh-analysis stored issue (bodies unchanged)."""
    issue = record["issue"]
    org, repo = org_repo(issue)
    comments = [
        {
            "user": {"login": (e.get("user") or {}).get("login") or "ghost"},
            "body": e.get("body"),
            "created_at": e.get("created_at"),
        }
        for e in record.get("events") or []
        if e.get("event") == "commented"
    ]
    return {
        "org": org,
        "repo": repo,
        "issue": {
            "number": issue["number"],
            "title": issue["title"],
            "body": issue.get("body"),
            "state": issue["state"],
            "labels": [{"name": label["name"]} for label in issue.get("labels") or []],
            "user": {"login": (issue.get("user") or {}).get("login") or "ghost"},
            "comments": comments,
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "html_url": issue.get("html_url"),
        },
        "metadata": {"source": SOURCE, "converted_by": "batchpipe"},
    }


def render(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _text(doc: dict) -> str:
    issue = doc["issue"]
    return "\n".join([issue["title"], issue["body"] or ""] + [c["body"] or "" for c in issue["comments"]])


def _has_emoji(text: str) -> bool:
    return any(ord(ch) >= 0x1F000 or 0x2600 <= ord(ch) < 0x2800 for ch in text)


def _has_accent(text: str) -> bool:
    return any(0xC0 <= ord(ch) <= 0x24F and ch not in "×÷" for ch in text)


def select(docs: list[dict], sizes: list[int], count: int, max_bytes: int, max_file: int) -> list[int]:
    """Indexes into docs of the chosen issues (deterministic)."""
    usable = [i for i in range(len(docs)) if sizes[i] <= max_file]
    chosen: list[int] = []
    total = 0

    def take(i: int) -> bool:
        nonlocal total
        if i in chosen or len(chosen) >= count or total + sizes[i] > max_bytes:
            return False
        chosen.append(i)
        total += sizes[i]
        return True

    def take_first(candidates: list[int], n: int = 1) -> None:
        candidates = list(dict.fromkeys(candidates))
        got = sum(1 for i in candidates if i in chosen)
        for i in candidates:
            if got >= n:
                return
            got += take(i)

    def take_top(ranked: list[int], n: int) -> None:
        for i in ranked:
            if n <= 0:
                return
            if i in chosen or take(i):
                n -= 1

    issue = [d["issue"] for d in docs]
    take_first([i for i in usable if issue[i]["body"] is None])
    take_first([i for i in usable if issue[i]["body"] == ""])
    take_top(sorted(usable, key=lambda i: (-len(issue[i]["comments"]), i)), 3)
    take_top(sorted(usable, key=lambda i: (-len(issue[i]["body"] or ""), i)), 3)
    take_first([i for i in usable if _has_emoji(issue[i]["title"] + (issue[i]["body"] or ""))])
    take_first([i for i in usable if _has_accent(_text(docs[i]))])
    take_first([i for i in usable if issue[i]["state"] == "open"])
    take_first([i for i in usable if issue[i]["state"] == "closed"])

    freq: dict[str, int] = {}
    for i in usable:
        for label in issue[i]["labels"]:
            freq[label["name"]] = freq.get(label["name"], 0) + 1
    for name in sorted(freq, key=lambda n: (-freq[n], n)):
        having = [i for i in usable if any(label["name"] == name for label in issue[i]["labels"])]
        want = 3 if freq[name] >= 20 else 1
        # spread over the label's issues rather than always the oldest ones
        step = max(1, len(having) // want)
        take_first(having[::step] + having, want)

    rest = [i for i in usable if i not in chosen]
    need = count - len(chosen)
    if need > 0 and rest:
        step = len(rest) / need
        spread = [rest[int(k * step)] for k in range(need)]
        for i in spread + rest:  # spread first, then anything that still fits the budget
            if len(chosen) >= count:
                break
            take(i)
    return sorted(chosen, key=lambda i: issue[i]["number"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tgz", type=Path, help="bitcoin-core-gui-issues.tgz (issues/{n}.json)")
    parser.add_argument("outdir", type=Path, help="folder to write {org}_{repo}_issue_{n}.json into")
    parser.add_argument("--count", type=int, default=40, help="number of issues (default 40)")
    parser.add_argument("--max-bytes", type=int, default=1_400_000, help="size budget for the whole sample")
    parser.add_argument("--max-file-bytes", type=int, default=150_000, help="skip issues bigger than this")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="first delete *.json in OUTDIR that this script wrote (metadata.converted_by == batchpipe)",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not args.tgz.is_file():
        parser.error(f"{args.tgz}: no such file")

    docs = [convert(r) for r in read_tgz(args.tgz)]
    blobs = [render(d) for d in docs]
    picked = select(docs, [len(b) for b in blobs], args.count, args.max_bytes, args.max_file_bytes)

    args.outdir.mkdir(parents=True, exist_ok=True)
    if args.clean:
        for old in args.outdir.glob("*.json"):
            try:
                meta = json.loads(old.read_bytes()).get("metadata") or {}
            except (ValueError, AttributeError):
                continue
            if meta.get("converted_by") == "batchpipe":
                old.unlink()
    for i in picked:
        d = docs[i]
        (args.outdir / f"{d['org']}_{d['repo']}_issue_{d['issue']['number']}.json").write_bytes(blobs[i])
    total = sum(len(blobs[i]) for i in picked)
    numbers = " ".join(str(docs[i]["issue"]["number"]) for i in picked)
    print(f"wrote {len(picked)} issues ({total:,} bytes) to {args.outdir}: {numbers}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
