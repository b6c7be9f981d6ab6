"""Chained processors: requests made from another processor's results.

A processor whose definition says `input_processor: issue-summary` runs after that processor. Its prompt
templates see the earlier answer as `$previous` (the earlier result's `analysis`: its text for text
processors, pretty JSON otherwise) next to the issue's own values (`$issue`, `$title`, ...), and
`$input_processor`. With `aggregate_by: repo` (org/repo) or `org`, one request covers a whole group's
earlier answers, in issue-number order, as `### {ref} ({state}): {title}` blocks; when the blocks of a
group are longer than `aggregate_chars` characters, the group is split into parts (`$part`, `$parts`,
`$part_note`). Other aggregate values: `$group` (`org/repo` or `org`), `$org`, `$repo`, `$count`,
`$issue_list`, `$left_out`. An aggregate's result is one file per group and part (see `Layout.group_result`),
whose `group` reference replaces `issue_reference`.

A chained request embeds the earlier answers, so its request hash covers them: a changed earlier result
makes exactly the dependent requests new. An item waits while any of its earlier results is not final
(in flight, still to be sent or sent again, or a deleted result to restore); an issue whose earlier
request failed for good makes its per-issue item fail, and is left out of its group's aggregate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Processor, Settings
from .errors import IssueFileError
from .files import read_json
from .issues import load_item
from .layout import Layout
from .render import CUT_NOTE, Rendered, estimate_tokens, neutral_request, render_request
from .request import GroupInfo, IssueRef
from .scan import IssueEntry
from .state import Failed

__all__ = ["ChainedItem", "EarlierStage", "chained_items", "previous_text", "split_parts", "stage_numbers"]


def stage_numbers(processors: tuple[Processor, ...] | list[Processor]) -> dict[str, int]:
    """Processor name -> stage (0: from issues; n: from stage n-1's results). Earlier stages come first."""
    stages: dict[str, int] = {}
    for proc in processors:
        stages[proc.name] = stages[proc.input_processor] + 1 if proc.input_processor else 0
    return stages


@dataclass
class ChainedItem:
    """One unit of work of a chained processor: an issue, or a group (part) of issues for an aggregate."""

    key: str  # issue key, or group key (`{org}_{repo}`, `_part{k}` when split)
    issues: list[str]  # keys of the issues whose earlier results it covers, in order
    result_file: Path
    request_hash: str | None = None  # None while it waits or cannot be made
    tokens: int = 0
    group: GroupInfo | None = None
    waiting: str = ""  # why it cannot be made yet
    failed: Failed | None = None  # when it can never be made
    members: list[str] = field(default_factory=list)  # aggregates: every issue of the group (all parts)


@dataclass
class EarlierStage:
    """What a chained processor needs of its input processor's plan."""

    processor: str
    format: str
    done: set[str]  # issue keys with a current result
    waiting: set[str]  # issue keys with an attempt in flight
    failed: dict[str, Failed]  # issue keys that failed for good
    selected: frozenset[str]  # issue keys the run selected for it
    result_file: Callable[[str], Path]
    current_hash: Callable[[str], str | None]


def previous_text(doc: dict[str, Any], fmt: str) -> str:
    """An earlier result's answer as the next stage sees it: the text, or pretty JSON."""
    analysis = doc.get("analysis")
    if fmt == "text" and isinstance(analysis, dict) and isinstance(analysis.get("text"), str):
        return str(analysis["text"]).strip()
    return json.dumps(analysis, indent=2, sort_keys=True, ensure_ascii=False)


def _earlier(stage: EarlierStage, key: str) -> tuple[dict[str, Any] | None, str]:
    """The current earlier result of an issue, or why there is none: "failed", or a reason to wait.

    An issue this run did not select for the input processor (selection `missing`, `reprocess`) has
    its result file as it is."""
    name = stage.processor
    if key in stage.failed:
        return None, "failed"
    selected = key in stage.done or key in stage.waiting or key in stage.selected
    if selected and key not in stage.done:
        return None, f"waiting for {name}"
    path = stage.result_file(key)
    try:
        doc = read_json(path)
    except FileNotFoundError:
        if selected:
            return None, f"waiting for {name} (its result file is restored first)"
        return None, f"no {name} result, and {name} is not selected for it in this run"
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({exc}); delete it to have it rewritten"
    current = stage.current_hash(key)
    if selected and current is not None and doc.get("request_hash") != current:
        return None, f"{path} does not hold the current {name} answer; delete it to have it rewritten"
    return doc, ""


def _issue_ref(doc: dict[str, Any], entry: IssueEntry) -> IssueRef:
    """The request table's entry for an issue, from its earlier result (no issue file read)."""
    ref = doc.get("issue_reference") or {}
    return IssueRef(
        key=entry.key,
        ref=ref.get("ref") or f"{entry.org}/{entry.repo}#{entry.number}",
        path=ref.get("source_file") or entry.path,
        org=entry.org,
        repo=entry.repo,
        number=entry.number,
        title=ref.get("title", ""),
        url=ref.get("url", ""),
        updated_at=ref.get("updated_at", ""),
    )


def issue_item(
    settings: Settings, proc: Processor, stage: EarlierStage, entry: IssueEntry
) -> tuple[ChainedItem, Rendered | None]:
    """A per-issue chained item: the issue's values plus `$previous`, its earlier answer."""
    key = entry.key
    item = ChainedItem(key, [key], Layout(settings).result(key, proc.name))
    doc, why = _earlier(stage, key)
    if why == "failed":
        state = stage.failed[key]
        item.failed = Failed(f"{stage.processor} failed: {state.reason}", 0, state.permanent)
        return item, None
    if doc is None:
        item.waiting = why
        return item, None
    try:
        issue = load_item(entry.path)
    except IssueFileError as exc:
        item.waiting = f"issue file unreadable now: {exc}"
        return item, None
    extra = {"previous": previous_text(doc, stage.format), "input_processor": stage.processor}
    rendered = render_request(issue, proc, settings, entry.path, extra, inputs={key: doc.get("request_hash") or ""})
    item.request_hash, item.tokens = rendered.request_hash, rendered.est_tokens
    return item, rendered


def group_key(entry: IssueEntry, by: str) -> str:
    return entry.org if by == "org" else f"{entry.org}_{entry.repo}"


def _groups(issues: dict[str, IssueEntry], keys: list[str], by: str) -> dict[str, list[IssueEntry]]:
    """The issues a chained processor covers, by group, each group in issue-number order."""
    groups: dict[str, list[IssueEntry]] = {}
    for key in keys:
        entry = issues.get(key)
        if entry is not None:
            groups.setdefault(group_key(entry, by), []).append(entry)
    return {k: sorted(v, key=lambda e: (e.number, e.key)) for k, v in sorted(groups.items())}


def split_parts(sizes: list[int], budget: int) -> list[list[int]]:
    """Indexes of consecutive blocks, in order, in parts of at most `budget` characters (a block longer
    than the budget is alone in its part, cut to the budget)."""
    parts: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        size = min(size, budget)
        if current and used + size > budget:
            parts.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        parts.append(current)
    return parts


def group_items(
    settings: Settings, proc: Processor, stage: EarlierStage, gkey: str, entries: list[IssueEntry]
) -> list[tuple[ChainedItem, Rendered | None]]:
    """An aggregate's items for one group: one per part, or one waiting / failed item for the group."""
    layout = Layout(settings)
    by = proc.aggregate_by or "repo"
    first = entries[0]
    name = first.org if by == "org" else f"{first.org}/{first.repo}"
    repo = None if by == "org" else first.repo
    blocks: list[tuple[IssueEntry, dict[str, Any], str]] = []
    left_out: list[str] = []
    waiting: list[str] = []
    for entry in entries:
        doc, why = _earlier(stage, entry.key)
        if why == "failed":
            left_out.append(f"{entry.org}/{entry.repo}#{entry.number}")
        elif doc is None:
            waiting.append(f"{entry.key}: {why}")
        else:
            ref = _issue_ref(doc, entry)
            block = f"### {ref.ref} ({entry.state}): {ref.title}\n{previous_text(doc, stage.format)}"
            blocks.append((entry, doc, block))
    members = [e.key for e in entries]
    whole = ChainedItem(
        gkey,
        members,
        layout.group_result(proc.name, gkey),
        group=GroupInfo(by, gkey, name, first.org, repo, item=gkey, part=1, parts=1),
        members=members,
    )
    if waiting:
        whole.waiting = f"{len(waiting)} issue(s) waiting for {stage.processor} (first: {waiting[0]})"
        return [(whole, None)]
    if not blocks:
        whole.failed = Failed(f"the {stage.processor} request of every issue of {name} failed", 0, True)
        return [(whole, None)]
    budget = proc.aggregate_chars
    parts = split_parts([len(b) for _, _, b in blocks], budget)
    out: list[tuple[ChainedItem, Rendered | None]] = []
    for number, indexes in enumerate(parts, 1):
        split = len(parts) > 1
        item_key = f"{gkey}_part{number}" if split else gkey
        chosen = [blocks[i] for i in indexes]
        texts, cut = [], {}
        for entry, doc, block in chosen:
            if len(block) > budget:
                cut[_issue_ref(doc, entry).ref] = len(block) - budget
                block = block[:budget] + CUT_NOTE
            texts.append(block)
        refs = [_issue_ref(doc, entry) for entry, doc, _ in chosen]
        group = GroupInfo(
            by, gkey, name, first.org, repo, item_key, number, len(parts), [r.ref for r in refs], left_out
        )
        values = {
            "org": first.org,
            "repo": repo or "",
            "group": name,
            "group_by": by,
            "count": str(len(chosen)),
            "part": str(number),
            "parts": str(len(parts)),
            "part_note": f" (part {number} of {len(parts)})" if split else "",
            "issue_list": "\n".join(
                f"- {r.ref} ({e.state}): {r.title}" for r, (e, _, _) in zip(refs, chosen, strict=True)
            ),
            "previous": "\n\n".join(texts),
            "input_processor": stage.processor,
            "left_out": ", ".join(left_out) or "(none)",
        }
        neutral, request_hash = neutral_request(proc, settings, values)
        rendered = Rendered(
            neutral,
            request_hash,
            {"previous_chars_cut": cut} if cut else {},
            refs,
            inputs={e.key: doc.get("request_hash") or "" for e, doc, _ in chosen},
            group=group,
            input_processor=proc.input_processor,
            est_tokens=estimate_tokens(neutral),
        )
        item = ChainedItem(
            item_key,
            [e.key for e, _, _ in chosen],
            layout.group_result(proc.name, gkey, number if split else None),
            request_hash,
            rendered.est_tokens,
            group,
            members=members,
        )
        out.append((item, rendered))
    return out


def chained_items(
    settings: Settings, proc: Processor, stage: EarlierStage, issues: dict[str, IssueEntry], keys: list[str]
) -> list[tuple[ChainedItem, Rendered | None]]:
    """Every item of a chained processor over the issues `keys`, from its input processor's state."""
    keys = [k for k in keys if k in issues]
    if proc.aggregate_by:
        return [
            pair
            for gkey, entries in _groups(issues, keys, proc.aggregate_by).items()
            for pair in group_items(settings, proc, stage, gkey, entries)
        ]
    return [issue_item(settings, proc, stage, issues[key]) for key in keys]


def render_group(
    settings: Settings, proc: Processor, stage: EarlierStage, issues: dict[str, IssueEntry], item: ChainedItem
) -> Rendered | None:
    """An aggregate item's request, rendered again from the earlier results of its whole group."""
    assert item.group is not None
    entries = sorted((issues[k] for k in item.members), key=lambda e: (e.number, e.key))
    for other, rendered in group_items(settings, proc, stage, item.group.key, entries):
        if other.key == item.key:
            return rendered
    return None
