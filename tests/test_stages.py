"""Chained stages: a processor over another processor's results, planned behind one checkpoint per stage."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))
CHAIN = ["issue-summary", "repo-digest"]
GUI = "bitcoin-core_gui_repo-digest.json"
ACME = "acme_widgets_repo-digest.json"


def two_repo_workspace(path: Path, gui: int = 4, acme: int = 2):
    """`gui` sample issues of bitcoin-core/gui and `acme` copies moved to acme/widgets; the chain selected."""
    ws = make_workspace(path, ISSUES[:gui])
    for source in ISSUES[gui : gui + acme]:
        data = json.loads(source.read_text())
        data["org"], data["repo"] = "acme", "widgets"
        number = data["issue"]["number"]
        data["issue"]["html_url"] = f"https://github.com/acme/widgets/issues/{number}"
        (ws.issues / f"acme_widgets_issue_{number}.json").write_text(json.dumps(data))
    ws.config(processors=CHAIN, poll_interval=0.05)
    return ws


def set_local(ws, **values) -> None:
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"].update(values)
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def set_definition(ws, name: str, **values) -> None:
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["processor_definitions"][name].update(values)
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def request_table(ws, processor: str) -> dict[str, dict]:
    """custom_id -> request table entry, over every chunk of a processor."""
    out = {}
    for index in ws.files(f"batch_requests/{processor}/*.index.json"):
        out.update(json.loads(index.read_text())["requests"])
    return out


def request_users(ws, processor: str) -> dict[str, str]:
    """custom_id -> the user prompt sent, over every chunk of a processor (OpenAI wire format)."""
    out = {}
    for path in ws.files(f"batch_requests/{processor}/*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[row["custom_id"]] = next(m["content"] for m in row["body"]["messages"] if m["role"] == "user")
    return out


def digests(ws) -> dict[str, dict]:
    return {name: doc for name, doc in ws.results().items() if "repo-digest" in name}


def check_digests(ws, provider: str = "local") -> None:
    results = ws.results()
    summaries = {n: d for n, d in results.items() if n.endswith("_issue-summary.json")}
    assert len(summaries) == 6
    found = digests(ws)
    assert sorted(found) == [ACME, GUI]
    for name, repo in ((GUI, "bitcoin-core/gui"), (ACME, "acme/widgets")):
        doc = found[name]
        assert "issue_reference" not in doc and doc["provider"] == provider
        refs = sorted(
            (d["issue_reference"] for d in summaries.values() if d["issue_reference"]["ref"].startswith(repo + "#")),
            key=lambda r: r["number"],
        )
        assert doc["group"]["issues"] == [r["ref"] for r in refs]  # issue-number order
        assert doc["group"]["name"] == repo and doc["group"]["parts"] == 1
        assert doc["analysis"]["text"].strip() and doc["batch_id"]
        report = ws.root / "data" / "reports" / name.replace(".json", ".md")
        assert doc["analysis"]["text"].strip() in report.read_text()
    # the digest request of a repo embeds each of its issues' summaries, and no other repo's
    users = request_users(ws, "repo-digest")
    gui_user = users[found[GUI]["custom_id"]]
    for doc in summaries.values():
        inside = doc["analysis"]["text"].strip() in gui_user
        assert inside == doc["issue_reference"]["ref"].startswith("bitcoin-core/gui#")


@pytest.mark.workflow
def test_chain_runs_end_to_end_in_one_run_then_nothing_to_do(tmp_path):
    ws = two_repo_workspace(tmp_path / "ws")
    before = {p for p in ws.root.rglob("*") if ".snakemake" not in p.parts}
    dry = ws.snakemake("-n", "results/all")
    assert "repo-digest (stage 1, from issue-summary's results)" in dry.output and "checkpoint" in dry.output
    assert {p for p in ws.root.rglob("*") if ".snakemake" not in p.parts} == before  # a dry run writes nothing

    run = ws.snakemake("--cores", "4", "results/all")
    check_digests(ws)
    assert len(ws.local_batches()) == 2  # one per stage, in one run
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert summary["processors"]["repo-digest"]["results"] == 2 and summary["totals"]["results"] == 8
    assert "Updating checkpoint dependencies" in run.output
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output

    # a deleted group result (and its report) is rewritten from the downloaded outputs, no new batch
    before = (ws.root / "data" / "results" / GUI).read_bytes()
    (ws.root / "data" / "results" / GUI).unlink()
    (ws.root / "data" / "reports" / GUI.replace(".json", ".md")).unlink()
    ws.snakemake("--cores", "4", "results/all")
    assert (ws.root / "data" / "results" / GUI).read_bytes() == before
    assert (ws.root / "data" / "reports" / GUI.replace(".json", ".md")).exists()
    assert len(ws.local_batches()) == 2
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output


@pytest.mark.workflow
def test_wait_false_finishes_the_chain_over_later_runs(tmp_path):
    ws = two_repo_workspace(tmp_path / "ws")
    set_local(ws, delays={"validating": 0, "in_progress": 0.3, "finalizing": 0})
    ws.config(wait=False)
    first = ws.snakemake("--cores", "4", "results/all")
    assert first.returncode == 0 and not ws.results() and len(ws.local_batches()) == 1
    runs = 1
    deadline = time.monotonic() + 60
    while len(digests(ws)) < 2 and time.monotonic() < deadline:
        ws.snakemake("--cores", "4", "results/all")
        runs += 1
        if not digests(ws):
            assert len(ws.local_batches()) <= 2
    check_digests(ws)
    assert runs >= 3  # stage 0 collected and stage 1 submitted on a later run; stage 1 collected on another
    assert len(ws.local_batches()) == 2
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output


@pytest.mark.workflow
def test_chain_on_the_emulator_with_the_openai_client(tmp_path):
    try:
        import batchpipe.providers.openai_batches  # noqa: F401
        from batchpipe.service.emulator import Emulator
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"emulator or openai provider not available: {exc}")
    ws = two_repo_workspace(tmp_path / "ws")
    with Emulator(tmp_path / "emu") as emu:
        env = {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "test"}
        ws.snakemake("--cores", "4", "results/all", "--config", "provider=openai", env=env)
        check_digests(ws, provider="openai")
        creates = [r for r in emu.requests_seen() if r["method"] == "POST" and r["path"] == "/v1/batches"]
        assert len(creates) == 2
        again = ws.snakemake("--cores", "4", "results/all", "--config", "provider=openai", env=env)
        assert "Nothing to be done" in again.output


@pytest.mark.workflow
def test_changed_first_stage_result_resends_only_its_dependants(tmp_path):
    ws = two_repo_workspace(tmp_path / "ws")
    ws.snakemake("--cores", "4", "results/all")
    before = {name: (ws.root / "data" / "results" / name).read_bytes() for name in (GUI, ACME)}
    tables = {p: request_table(ws, p) for p in CHAIN}

    edited = ws.issues / ISSUES[1].name
    data = json.loads(edited.read_text())
    data["issue"]["title"] += " (edited)"  # the offline summary names the title: its answer changes
    edited.write_text(json.dumps(data))
    ws.snakemake("--cores", "4", "results/all")

    new = {p: {cid: e for cid, e in request_table(ws, p).items() if cid not in tables[p]} for p in CHAIN}
    assert [[i["key"] for i in e["issues"]] for e in new["issue-summary"].values()] == [[edited.stem]]
    [digest] = new["repo-digest"].values()
    assert digest["group"]["name"] == "bitcoin-core/gui"
    assert len(ws.local_batches()) == 4  # one more batch per stage, one request each
    assert (ws.root / "data" / "results" / ACME).read_bytes() == before[ACME]
    after = json.loads((ws.root / "data" / "results" / GUI).read_text())
    assert after["request_hash"] == digest["request_hash"] and after["custom_id"] in new["repo-digest"]
    assert "(edited)" in request_users(ws, "repo-digest")[after["custom_id"]]
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output


@pytest.mark.workflow
def test_aggregation_splits_into_parts_over_aggregate_chars(tmp_path):
    ws = two_repo_workspace(tmp_path / "ws", gui=7, acme=0)
    budget = 1500  # an offline summary block is some 500-700 characters
    set_definition(ws, "repo-digest", aggregate_chars=budget)
    ws.snakemake("--cores", "4", "results/all")
    parts = digests(ws)
    names = sorted(parts)
    assert len(names) >= 3 and names == [f"bitcoin-core_gui_repo-digest_part{k}.json" for k in range(1, len(names) + 1)]
    covered = [ref for name in names for ref in parts[name]["group"]["issues"]]
    numbers = sorted(json.loads(p.read_text())["issue"]["number"] for p in ws.issues.glob("*.json"))
    assert covered == [f"bitcoin-core/gui#{n}" for n in numbers]  # every issue once, in issue-number order
    users = request_users(ws, "repo-digest")
    for k, name in enumerate(names, 1):
        doc = parts[name]
        assert (doc["group"]["part"], doc["group"]["parts"]) == (k, len(names))
        notes = users[doc["custom_id"]].split("Notes:\n\n", 1)[1]
        assert len(notes) <= budget + 2 * (len(doc["group"]["issues"]) - 1)
        assert (ws.root / "data" / "reports" / name.replace(".json", ".md")).exists()
    assert len(ws.local_batches()) == 2  # all parts in one chunk

    # a budget that fits the whole group: one request and one file; the old parts' files go
    set_definition(ws, "repo-digest", aggregate_chars=60000)
    ws.snakemake("--cores", "4", "results/all")
    assert sorted(digests(ws)) == [GUI]
    assert sorted(p.name for p in (ws.root / "data" / "reports").glob("*.md")) == [GUI.replace(".json", ".md")]
    assert len(ws.local_batches()) == 3


@pytest.mark.workflow
def test_three_stages_with_a_per_issue_chained_processor(tmp_path):
    ws = two_repo_workspace(tmp_path / "ws", gui=3, acme=1)
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["processor_definitions"]["story-notes"] = {
        "format": "text",
        "input_processor": "issue-summary",
        "max_tokens": 300,
        "models": {"local": "offline"},
        "prompt": "Title: Notes on ${title}\nTurn this summary of ${org}/${repo}#${number} into story notes:\n"
        "${previous}",
    }
    cfg["processor_definitions"]["repo-digest"]["input_processor"] = "story-notes"
    cfg["processors"] = ["repo-digest"]  # its inputs join by themselves, earlier stages first
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws.snakemake("--cores", "4", "results/all")
    results = ws.results()
    notes = {n: d for n, d in results.items() if n.endswith("_story-notes.json")}
    assert len(notes) == 4 and len(digests(ws)) == 2
    summaries = {d["issue_reference"]["ref"]: d for n, d in results.items() if n.endswith("_issue-summary.json")}
    users = request_users(ws, "story-notes")
    for doc in notes.values():  # each note's request embeds its own issue's summary ($previous)
        assert summaries[doc["issue_reference"]["ref"]]["analysis"]["text"].strip() in users[doc["custom_id"]]
    assert len(ws.local_batches()) == 3
    assert sorted(p.name for p in ws.files("results/plan/*/s*r0")) == ["s0r0", "s1r0", "s2r0"]  # a plan per stage
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.mark.workflow
def test_commit_results_in_a_git_repository_and_outside_one(tmp_path):
    ws = two_repo_workspace(tmp_path / "repo")
    ws.config(commit_results=True)
    git(ws.root, "init", "-q")
    for key, value in (
        ("user.name", "batchpipe test"),
        ("user.email", "test@example.invalid"),
        ("commit.gpgsign", "false"),
    ):
        git(ws.root, "config", key, value)
    (ws.root / "notes.txt").write_text("not a result: never committed\n")
    ws.snakemake("--cores", "4", "results/all")
    message = git(ws.root, "log", "-1", "--format=%B")
    batch_ids = {b["id"] for b in ws.local_batches()}
    assert len(batch_ids) == 2 and all(bid in message for bid in batch_ids)
    committed = set(git(ws.root, "show", "--name-only", "--format=", "HEAD").split())
    assert f"data/results/{GUI}" in committed and "data/reports/bitcoin-core_gui_repo-digest.md" in committed
    assert all(p.startswith(("data/results/", "data/reports/")) for p in committed)
    assert len(committed) == 6 + 2 + 2
    assert "notes.txt" in git(ws.root, "status", "--porcelain")  # only explicit result paths were added
    assert "committed" in (ws.root / "logs" / "summarize_run.log").read_text()

    outside = two_repo_workspace(tmp_path / "plain", gui=2, acme=1)
    outside.config(commit_results=True)
    run = outside.snakemake("--cores", "4", "results/all", env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert run.returncode == 0 and len(digests(outside)) == 2
    assert "not in a git repository" in (outside.root / "logs" / "summarize_run.log").read_text()


def test_chained_configuration_is_checked_and_inputs_join_earlier_stages_first():
    from batchpipe.chain import stage_numbers
    from batchpipe.config import ConfigError, load_settings

    values = yaml.safe_load((REPO / "config.yaml").read_text())
    settings = load_settings({**values, "processors": "repo-digest,product-labeling"}, root=REPO)
    assert [p.name for p in settings.processors] == ["issue-summary", "repo-digest", "product-labeling"]
    assert stage_numbers(settings.processors) == {"issue-summary": 0, "repo-digest": 1, "product-labeling": 0}
    digest = settings.processor("repo-digest")
    assert (digest.input_processor, digest.aggregate_by, digest.aggregate_chars) == ("issue-summary", "repo", 60000)

    def broken(**definition):
        defs = yaml.safe_load((REPO / "config.yaml").read_text())["processor_definitions"]
        defs["repo-digest"].update(definition)
        with pytest.raises(ConfigError) as err:
            load_settings({**values, "processor_definitions": defs, "processors": ["repo-digest"]}, root=REPO)
        return str(err.value)

    assert "unknown processor 'nope'" in broken(input_processor="nope")
    assert "needs input_processor" in broken(input_processor=None)
    assert "cycle" in broken(input_processor="repo-digest", aggregate_by=None)
    assert "aggregate_by" in broken(aggregate_by="team")
