"""A processor change marks results outdated and sends nothing; only a change to an issue (or a person's
`refresh: outdated`) sends its request again (plan.py, without Snakemake)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchpipe.config import ConfigError, Settings, load_settings, read_config
from batchpipe.issues import load_issue
from batchpipe.layout import Layout
from batchpipe.ledger import Created, Prepared, append
from batchpipe.manifest import Manifest, RequestOutcome
from batchpipe.plan import Plan, build_plan
from batchpipe.render import issue_ref
from batchpipe.request import RequestRecord, attempt_of

from conftest import Workspace, make_workspace

NAME = "note"


def write_issue(folder: Path, number: int, body: str = "", updated: str = "2024-01-02T00:00:00Z") -> Path:
    data = {
        "org": "o",
        "repo": "r",
        "issue": {
            "number": number,
            "title": f"Issue {number}",
            "body": body or f"body of {number}",
            "state": "open",
            "labels": [],
            "user": {"login": "someone"},
            "comments": [],
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": updated,
            "html_url": f"https://github.com/o/r/issues/{number}",
        },
        "metadata": {},
    }
    path = folder / f"o_r_issue_{number}.json"
    path.write_text(json.dumps(data))
    return path


def settings_for(ws: Workspace, version: str = "1.0", prompt: str = "Note on $title: $body", **more) -> Settings:
    values = read_config(ws.root / "config.yaml")
    values["processor_definitions"][NAME] = {
        "format": "text",
        "prompt": prompt,
        "max_tokens": 100,
        "version": version,
        "models": {"local": "offline"},
    }
    values["processors"] = [NAME]
    values["truncation"]["body_chars"] = 100
    values.update(more)
    return load_settings(values, root=ws.root)


def send_and_answer(settings: Settings, plan: Plan, ok: bool = True) -> list[str]:
    """Record every new chunk as submitted and collected (as submit.py and collect.py would)."""
    layout = Layout(settings)
    chunks = []
    for chunk_id, chunk in plan.processors[NAME].new.items():
        table = {
            m.custom_id: RequestRecord(
                request_hash=m.request_hash,
                attempt=attempt_of(m.custom_id),
                issues=[issue_ref(load_issue(p), p, settings.root) for p in m.paths],
            )
            for m in chunk.members
        }
        append(
            layout,
            Prepared(
                chunk=chunk_id,
                processor=NAME,
                provider="local",
                model="offline",
                request_count=len(table),
                est_tokens=chunk.est_tokens,
                content_hash="sha",
                request_file=f"batch_requests/{NAME}/{chunk_id}.jsonl",
                group="g",
                requests=table,
            ),
        )
        append(layout, Created(chunk=chunk_id, batch_id=f"batch_{chunk_id}", created_at=1.0, status="validating"))
        status = "succeeded" if ok else "failed"
        outcomes = {
            cid: RequestOutcome(status, issues=r.issue_keys, error="" if ok else "server error")
            for cid, r in table.items()
        }
        Manifest(chunk_id, NAME, f"batch_{chunk_id}", "local", outcomes).write(layout.manifest(NAME, chunk_id))
        chunks.append(chunk_id)
    return chunks


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = make_workspace(tmp_path / "ws", [])
    for n in (1, 2, 3):
        write_issue(ws.issues, n)
    return ws


def new_paths(plan: Plan) -> list[str]:
    return [Path(p).name for c in plan.processors[NAME].new.values() for m in c.members for p in m.paths]


@pytest.mark.parametrize(
    "change",
    [
        {"version": "2.0"},
        {"prompt": "A different note on $title: $body"},
    ],
)
def test_a_processor_change_marks_results_outdated_and_sends_nothing(ws, change):
    first = settings_for(ws)
    [chunk] = send_and_answer(first, build_plan(first))

    after = build_plan(settings_for(ws, **change))
    pp = after.processors[NAME]
    assert pp.new == {}
    keys = ["o_r_issue_1", "o_r_issue_2", "o_r_issue_3"]
    assert sorted(pp.outdated) == keys
    assert {k: pp.sources[k][0] for k in keys} == {k: chunk for k in keys}
    assert all(pp.outdated[k] != after.current_hash(k, NAME) for k in keys)  # the answer's hash, not the new one
    assert pp.answer_hash("o_r_issue_1") == pp.outdated["o_r_issue_1"]
    assert f"3 result(s) outdated by a change to {NAME}" in after.describe()
    assert f"--config refresh=outdated:{NAME}" in after.describe()


def test_refresh_outdated_sends_them_and_only_them(ws):
    first = settings_for(ws)
    send_and_answer(first, build_plan(first))
    write_issue(ws.issues, 4)  # never sent: sent anyway

    kept = build_plan(settings_for(ws, version="2.0"))
    assert new_paths(kept) == ["o_r_issue_4.json"]
    assert sorted(kept.processors[NAME].outdated) == ["o_r_issue_1", "o_r_issue_2", "o_r_issue_3"]

    for refresh in ("outdated", f"outdated:{NAME}"):
        asked = build_plan(settings_for(ws, version="2.0", refresh=refresh))
        assert sorted(new_paths(asked)) == [f"o_r_issue_{n}.json" for n in (1, 2, 3, 4)]
        assert asked.processors[NAME].outdated == {}


def test_refresh_names_a_processor_of_the_run(ws):
    with pytest.raises(ConfigError, match="refresh: 'nope' is not a processor of this run"):
        settings_for(ws, refresh="outdated:nope")
    with pytest.raises(ConfigError, match="refresh"):
        settings_for(ws, refresh="everything")


def test_a_changed_issue_is_sent_again_after_a_processor_change(ws):
    first = settings_for(ws)
    send_and_answer(first, build_plan(first))
    write_issue(ws.issues, 2, body="now it crashes on start")

    after = build_plan(settings_for(ws, version="2.0"))
    assert new_paths(after) == ["o_r_issue_2.json"]
    assert sorted(after.processors[NAME].outdated) == ["o_r_issue_1", "o_r_issue_3"]


def test_a_failed_request_is_not_outdated(ws):
    """A failure is no result: a new processor gets its own attempt."""
    first = settings_for(ws, max_attempts=1)
    send_and_answer(first, build_plan(first), ok=False)
    after = build_plan(settings_for(ws, version="2.0", max_attempts=1))
    assert sorted(new_paths(after)) == ["o_r_issue_1.json", "o_r_issue_2.json", "o_r_issue_3.json"]
    assert after.processors[NAME].outdated == {}


def test_a_request_in_flight_of_the_old_processor_is_waited_for(ws):
    first = settings_for(ws)
    [chunk] = send_and_answer(first, build_plan(first))
    Layout(first).manifest(NAME, chunk).unlink()  # not collected yet: in flight
    after = build_plan(settings_for(ws, version="2.0"))
    pp = after.processors[NAME]
    assert pp.new == {} and pp.outdated == {}
    assert pp.waiting == {f"o_r_issue_{n}": chunk for n in (1, 2, 3)}


def test_an_issue_changed_past_the_truncation_point_is_listed_not_sent(ws):
    path = write_issue(ws.issues, 1, body="x" * 120 + " tail one")
    first = settings_for(ws)
    send_and_answer(first, build_plan(first))
    write_issue(ws.issues, 1, body="x" * 120 + " tail two")  # past body_chars: 100

    after = build_plan(first)
    pp = after.processors[NAME]
    assert pp.new == {}
    assert pp.prompt_unchanged == ["o_r_issue_1"]
    assert "1 issue(s) changed since answered, but not their request" in after.describe()
    assert "o_r_issue_1" in after.describe()
    assert path.exists()


@pytest.mark.parametrize(
    ("updated", "sent"), [("2024-01-02T00:00:00Z", []), ("2024-02-02T00:00:00Z", ["o_r_issue_1.json"])]
)
def test_tables_made_before_digests_compare_updated_at(ws, updated, sent):
    """A workspace made before digests were kept: its answers are outdated unless the issue's updated_at moved."""
    first = settings_for(ws)
    [chunk] = send_and_answer(first, build_plan(first))
    ledger = Layout(first).ledger(chunk)
    text = ledger.read_text()
    assert '"digest"' in text
    ledger.write_text(
        "\n".join(json.dumps(_without_digest(json.loads(line))) for line in text.splitlines() if line) + "\n"
    )
    write_issue(ws.issues, 1, body="body of 1", updated=updated)  # same content, maybe a new updated_at

    after = build_plan(settings_for(ws, version="2.0"))
    assert new_paths(after) == sent


def _without_digest(event: dict) -> dict:
    for record in (event.get("requests") or {}).values():
        for issue in record.get("issues", []):
            issue.pop("digest", None)
    return event


# --- as users meet it ---------------------------------------------------------------------------------


@pytest.mark.workflow
def test_a_processor_change_in_a_run_sends_nothing_until_asked(tmp_path):
    import yaml

    from conftest import REPO

    ws = make_workspace(tmp_path / "ws", sorted((REPO / "data" / "issues").glob("*.json"))[:4])
    ws.config(processors=["product-labeling"])
    ws.snakemake("--cores", "2", "results/all")
    assert len(ws.local_batches()) == 1
    before = ws.results()
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["processor_definitions"]["product-labeling"]["version"] = "2.0"
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    preview = ws.snakemake("-n", "results/all")
    assert "4 result(s) outdated by a change to product-labeling" in preview.output
    assert "4 result(s) outdated" in ws.cli("plan").output
    ws.snakemake("--cores", "2", "results/all")
    assert len(ws.local_batches()) == 1  # nothing sent
    assert ws.results() == before  # the answers are kept as they were
    table = (ws.root / "results" / "all").read_text()
    assert "OUTDATED product-labeling: 4 result(s)" in table
    assert json.loads((ws.root / "results" / "summary.json").read_text())["totals"]["results"] == 4

    ws.snakemake("--cores", "2", "results/all", "--config", "refresh=outdated")
    assert len(ws.local_batches()) == 2  # a person asked
    assert {doc["processor"]["version"] for doc in ws.results().values()} == {"2.0"}
    assert "OUTDATED" not in (ws.root / "results" / "all").read_text()
