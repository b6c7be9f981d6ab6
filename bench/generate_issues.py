#!/usr/bin/env python3
"""Generate N synthetic GitHub issues shaped like the bundled sample (gh-analysis shape).

    python bench/generate_issues.py 10000 /tmp/ws/data/issues --seed 1

Each synthetic issue is a real bitcoin-core/gui issue (from the github-metadata-backup tgz, 341 issues)
resampled and perturbed, so the joint distribution of body length, comment count and comment lengths is
the real one, while every text differs:

* the template issue (body, labels, state, comment count) is drawn uniformly from the real issues;
* each comment is kept (its real length), or with probability 0.2 replaced by a random real comment;
* words are swapped for random words drawn with their real frequencies (about 1 word in 12); the
  non-ASCII text (emoji, accents, U+FFFC) comes with the templates at about the real rate; line ends
  are kept as they are (``\\r\\n`` in most real texts), and a few sentences are dropped or repeated;
* titles get a perturbed real title; dates are shifted and kept in order; numbers are 1..N.

File names are ``{org}_{repo}_issue_{n}.json``. Same tgz, N and seed: same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_TGZ = Path("/work/shared/data/bitcoin-core-gui-issues.tgz")
ORG, REPO = "bitcoin-core", "gui"
SOURCE = "bitcoin-data/github-metadata-backup-bitcoin-core-gui"
TOKEN = re.compile(r"(\s+)")  # split keeping whitespace (so \r\n survives untouched)
WORD = re.compile(r"^[^\W\d_][\w'’\-]*$")  # a "word" token eligible for swapping
SENTENCE_END = re.compile(r"(?<=[.!?])( +)")
TIME_FMT = "%Y-%m-%dT%H:%M:%SZ"


def read_templates(tgz: Path) -> list[dict]:
    """The real issues as compact templates {title, body, state, labels, user, comments, created_at}."""
    out = []
    with tarfile.open(tgz, "r:*") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not (member.isfile() and member.name.endswith(".json")):
                continue
            rec = json.loads(tar.extractfile(member).read().decode("utf-8-sig"))
            if not isinstance(rec, dict) or rec.get("type") != "issue":
                continue
            issue = rec["issue"]
            comments = [
                {
                    "user": (e.get("user") or {}).get("login") or "ghost",
                    "body": e.get("body") or "",
                    "created_at": e.get("created_at"),
                }
                for e in rec.get("events") or []
                if e.get("event") == "commented"
            ]
            out.append(
                {
                    "number": issue["number"],
                    "title": issue["title"],
                    "body": issue.get("body"),  # None kept: real files have null bodies
                    "state": issue["state"],
                    "labels": [label["name"] for label in issue.get("labels") or []],
                    "user": (issue.get("user") or {}).get("login") or "ghost",
                    "created_at": issue["created_at"],
                    "updated_at": issue["updated_at"],
                    "comments": comments,
                }
            )
    out.sort(key=lambda t: t["number"])
    if not out:
        raise SystemExit(f"{tgz}: no github-metadata-backup issues found")
    return out


class Perturber:
    def __init__(self, templates: list[dict], rng: random.Random):
        self.rng = rng
        vocab: list[str] = []  # with repeats: swaps follow real word frequencies
        users: set[str] = set()
        comments: list[dict] = []
        for t in templates:
            users.add(t["user"])
            for text in [t["title"], t["body"] or ""] + [c["body"] for c in t["comments"]]:
                vocab.extend(tok for tok in TOKEN.split(text) if WORD.match(tok) and len(tok) < 30)
            for c in t["comments"]:
                users.add(c["user"])
                comments.append(c)
        self.vocab = vocab
        self.users = sorted(users)
        self.comments = comments

    def text(self, text: str, swap: float = 1 / 12) -> str:
        """Swap some words, drop or repeat a few sentences; whitespace (and so \\r\\n) kept as is."""
        if not text:
            return text
        rng = self.rng
        if len(text) > 200 and rng.random() < 0.5:
            parts = SENTENCE_END.split(text)  # [sentence, sep, sentence, sep, ...]
            sentences = ["".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
            out = []
            for s in sentences:
                r = rng.random()
                if r < 0.05 and len(sentences) > 3:
                    continue
                out.append(s)
                if r > 0.97:
                    out.append(s)
            text = "".join(out)
        tokens = TOKEN.split(text)
        vocab = self.vocab
        for i in range(0, len(tokens), 2):  # even positions are non-whitespace
            tok = tokens[i]
            if tok and rng.random() < swap and WORD.match(tok):
                tokens[i] = rng.choice(vocab)
        out = "".join(tokens)
        if out == text:  # short texts: make sure it differs from its source
            out = text.rstrip() + " " + rng.choice(vocab) + text[len(text.rstrip()) :]
        return out


def shifted(stamp: str, delta: timedelta) -> str:
    return (datetime.strptime(stamp, TIME_FMT).replace(tzinfo=UTC) + delta).strftime(TIME_FMT)


def make_issue(n: int, templates: list[dict], p: Perturber) -> dict:
    rng = p.rng
    t = rng.choice(templates)
    title_src = rng.choice(templates)["title"] if rng.random() < 0.3 else t["title"]
    delta = timedelta(seconds=rng.randint(-400 * 86400, 400 * 86400))
    comments = []
    for c in t["comments"]:
        src = rng.choice(p.comments) if rng.random() < 0.2 else c
        comments.append(
            {
                "user": {"login": src["user"] if rng.random() < 0.8 else rng.choice(p.users)},
                "body": p.text(src["body"]),
                "created_at": shifted(c["created_at"], delta) if c.get("created_at") else None,
            }
        )
    body = t["body"]
    updated = max([t["updated_at"]] + [c["created_at"] for c in t["comments"] if c.get("created_at")])
    return {
        "org": ORG,
        "repo": REPO,
        "issue": {
            "number": n,
            "title": p.text(title_src, swap=0.15).replace("\r", "").replace("\n", " "),
            "body": None if body is None else p.text(body),
            "state": t["state"],
            "labels": [{"name": name} for name in t["labels"]],
            "user": {"login": t["user"] if rng.random() < 0.7 else rng.choice(p.users)},
            "comments": comments,
            "created_at": shifted(t["created_at"], delta),
            "updated_at": shifted(updated, delta),
            "html_url": f"https://github.com/{ORG}/{REPO}/issues/{n}",
        },
        "metadata": {"source": SOURCE, "converted_by": "batchpipe-bench", "template": t["number"]},
    }


def render(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def file_name(doc: dict) -> str:
    return f"{doc['org']}_{doc['repo']}_issue_{doc['issue']['number']}.json"


def generate(n: int, outdir: Path, seed: int = 0, tgz: Path = DEFAULT_TGZ) -> dict:
    """Write N issues into outdir; return a few statistics of what was written."""
    templates = read_templates(tgz)
    rng = random.Random(seed)
    p = Perturber(templates, rng)
    outdir.mkdir(parents=True, exist_ok=True)
    stats = {"issues": 0, "bytes": 0, "comments": 0, "crlf": 0, "non_ascii": 0, "empty_body": 0, "null_body": 0}
    for number in range(1, n + 1):
        doc = make_issue(number, templates, p)
        blob = render(doc)
        (outdir / file_name(doc)).write_bytes(blob)
        issue = doc["issue"]
        text = "".join([issue["title"], issue["body"] or ""] + [c["body"] for c in issue["comments"]])
        stats["issues"] += 1
        stats["bytes"] += len(blob)
        stats["comments"] += len(issue["comments"])
        stats["crlf"] += "\r\n" in text
        stats["non_ascii"] += not text.isascii()
        stats["empty_body"] += issue["body"] == ""
        stats["null_body"] += issue["body"] is None
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="number of issues")
    parser.add_argument("outdir", type=Path, help="folder to write {org}_{repo}_issue_{n}.json into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--tgz", type=Path, default=DEFAULT_TGZ, help=f"real issues (default {DEFAULT_TGZ})")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("N must be at least 1")
    if not args.tgz.is_file():
        parser.error(f"{args.tgz}: no such file")
    stats = generate(args.n, args.outdir, args.seed, args.tgz)
    print(
        f"wrote {stats['issues']} issues ({stats['bytes']:,} bytes, {stats['comments']} comments, "
        f"{stats['crlf']} with \\r\\n, {stats['non_ascii']} with non-ASCII, {stats['empty_body']} empty and "
        f"{stats['null_body']} null bodies) to {args.outdir}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
