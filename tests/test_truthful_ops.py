"""Operations tell the truth (issue 13, item 6): savings, recorded costs, config files laid over each other,
nested --config values, each batch operated with the provider that made it, commit_results in a clone of
the project, per-chunk notices."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from snakemake.cli import parse_config

from batchpipe import cli
from batchpipe.collect import collect_chunk
from batchpipe.config import coerce_command_line, load_settings, load_settings_file, validate_config
from batchpipe.download import download_chunk, download_realtime
from batchpipe.gitcommit import commit_results
from batchpipe.joblog import JobLog
from batchpipe.layout import Layout
from batchpipe.plan import build_plan
from batchpipe.providers import make_provider
from batchpipe.service.emulator import Emulator
from batchpipe.submit import send_chunk, submit_batch, write_request_file
from batchpipe.summary import summarize, summary_table

from conftest import REPO, Workspace, make_workspace

PROC = "product-labeling"
ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))
PRICES = {"offline": {"input": 2.0, "cached_input": 1.0, "output": 8.0}}


def collected(ws: Workspace, log: JobLog | None = None) -> tuple[str, list[str]]:
    """Send every new chunk of the workspace's config, download and collect it; returns (mode, chunks)."""
    settings = load_settings_file(ws.root / "config.yaml")
    plan = build_plan(settings)
    provider = make_provider(settings)
    log = log or JobLog(None, echo=False)
    chunks = list(plan.processors[PROC].new)
    for chunk in chunks:
        send_chunk(plan, provider, PROC, chunk, log)
        if settings.mode == "realtime":
            download_realtime(settings, PROC, chunk, log)
        else:
            download_chunk(settings, provider, PROC, chunk, log)
        collect_chunk(settings, PROC, chunk, log)
    return settings.mode, chunks


def small(tmp_path, count: int = 3, **config) -> Workspace:
    ws = make_workspace(tmp_path / "ws", ISSUES[:count])
    ws.config(processors=[PROC], prices=PRICES, **config)
    return ws


# --- the summary's savings --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_only_batch_priced_requests_save(tmp_path, mode):
    ws = small(tmp_path, mode=mode)
    collected(ws)
    summary = summarize(build_plan(load_settings_file(ws.root / "config.yaml")))
    t, cost = summary["totals"], summary["processors"][PROC]["cost_usd"]
    manifest = json.loads(ws.files("batch_results/*/*.results.json")[0].read_text())
    recorded = [r["cost_usd"] for r in manifest["requests"].values()]
    assert len(recorded) == 3 and all(c["charged"] > 0 for c in recorded)
    charged = round(sum(c["charged"] for c in recorded), 6)
    at_realtime = round(sum(c["realtime"] for c in recorded), 6)
    assert (t["cost_charged_usd"], t["cost_realtime_usd"]) == (charged, at_realtime)
    saved_line = next(line for line in summary_table(summary).splitlines() if line.startswith("saved by batching"))
    if mode == "realtime":
        assert charged == at_realtime  # paid at real-time price
        assert (t["saved_usd"], cost["saved"], cost["batch"], t["realtime_requests"]) == (0.0, 0.0, 0.0, 3)
        assert saved_line == (
            "saved by batching: $0.0000 (3 request(s) sent in real time, at real-time price: no saving)"
        )
    else:
        assert t["saved_usd"] == round(at_realtime - charged, 6) > 0 and t["realtime_requests"] == 0
        assert saved_line == f"saved by batching: ${at_realtime - charged:.4f}"


# --- batchpipe cost ---------------------------------------------------------------------------------


def test_cost_sums_what_was_recorded_and_reprices_only_when_asked(tmp_path):
    ws = small(tmp_path)
    collected(ws)
    manifest_path = ws.files("batch_results/*/*.results.json")[0]
    recorded = [r["cost_usd"] for r in json.loads(manifest_path.read_text())["requests"].values()]
    spent = sum(c["charged"] for c in recorded)
    ws.config(prices={"offline": {"input": 20.0, "cached_input": 10.0, "output": 80.0}})  # 10x since

    data = json.loads(ws.cli("cost", "--json").stdout)
    assert data["source"] == "recorded" and data["total"]["priced"]
    assert data["total"]["cost_usd"] == pytest.approx(spent)
    assert data["total"]["saved_usd"] == pytest.approx(spent)  # batch_discount 0.5: half the real-time price

    repriced = ws.cli("cost", "--reprice", "--json")
    assert json.loads(repriced.stdout)["source"] == "repriced"
    assert json.loads(repriced.stdout)["total"]["cost_usd"] == pytest.approx(10 * spent)
    table = ws.cli("cost", "--reprice")
    assert table.returncode == 0 and table.stdout.startswith("re-priced from the current config's `prices`")
    assert not ws.cli("cost").stdout.startswith("re-priced")

    # a manifest written before costs were recorded: each request's result file says what it cost
    old = json.loads(manifest_path.read_text())
    for request in old["requests"].values():
        del request["cost_usd"]
    manifest_path.write_text(json.dumps(old))
    assert json.loads(ws.cli("cost", "--json").stdout)["total"]["cost_usd"] == pytest.approx(spent)
    # and with neither: tokens counted, no cost made up
    for path in ws.files("data/results/*.json"):
        path.unlink()
    unrecorded = ws.cli("cost")
    assert unrecorded.returncode == 0 and "3 request(s) have no recorded cost" in unrecorded.stdout
    assert json.loads(ws.cli("cost", "--json").stdout)["total"]["cost_usd"] == 0


# --- config files and --config ----------------------------------------------------------------------


def test_configfiles_lay_over_each_other_in_order_nested_keys_merged(tmp_path):
    ws = small(tmp_path, count=5)
    (ws.root / "a.yaml").write_text("limit: 1\nlocal: {delays: {in_progress: 7}, concurrency: 3}\nmax_attempts: 5\n")
    (ws.root / "b.yaml").write_text("limit: 2\nlocal: {concurrency: 9}\n")

    assert cli.split_configfiles(["--configfile", "a.yaml", "b.yaml", "plan", "--configfile", "x"]) == [
        "--configfile",
        "a.yaml",
        "--configfile",
        "b.yaml",
        "plan",
        "--configfile",
        "x",
    ]
    assert cli.config_files(["a.yaml", "b.yaml"], ws.root) == ["config.yaml", "a.yaml", "b.yaml"]
    assert cli.config_files(["config.yaml", "b.yaml"], ws.root) == ["config.yaml", "b.yaml"]
    assert cli.config_files([], ws.root) == ["config.yaml"]

    settings = load_settings_file([ws.root / "config.yaml", ws.root / "a.yaml", ws.root / "b.yaml"])
    assert (settings.limit, settings.max_attempts, settings.local.concurrency) == (2, 5, 9)
    assert settings.local.delays["in_progress"] == 7.0 and settings.local.responder == "offline"
    assert settings.processor_names == [PROC] and settings.root == ws.root.resolve()

    for args in (["--configfile", "a.yaml", "b.yaml"], ["--configfile", "a.yaml", "--configfile", "b.yaml"]):
        plan = ws.cli(*args, "plan", "--json")
        assert plan.returncode == 0, plan.output
        assert json.loads(plan.stdout)["issues_selected"] == 2
    assert json.loads(ws.cli("--configfile", "b.yaml", "a.yaml", "plan", "--json").stdout)["issues_selected"] == 1
    missing = ws.cli("--configfile", "a.yaml", "nope.yaml", "plan")
    assert missing.returncode == 2 and "nope.yaml: no such config file" in missing.stderr


def test_nested_config_values_keep_their_types_for_commands_and_the_workflow(tmp_path):
    ws = small(tmp_path)
    values = yaml.safe_load((ws.root / "config.yaml").read_text())

    # batchpipe commands: YAML values, merged into the file's mapping as snakemake does
    overrides = cli.parse_overrides(["local={delays: {in_progress: 40}}", "local={concurrency: 2}", "limit=1"])
    assert overrides == {"local": {"delays": {"in_progress": 40}, "concurrency": 2}, "limit": 1}
    run = ws.cli("--config", "local={delays: {in_progress: 40}}", "plan", "--json")
    assert run.returncode == 0, run.output
    settings = load_settings({**values, "local": {"delays": {"in_progress": 40}}}, ws.root)
    assert settings.local.delays["in_progress"] == 40.0

    # the workflow: snakemake parses --config itself, every scalar inside a mapping a string
    parsed = parse_config(["local={delays: {in_progress: 40, finalizing: 0.5}, concurrency: 2}", "wait=false"])
    assert parsed["local"]["delays"]["in_progress"] == "40"
    coerced = coerce_command_line({**values, **parsed})
    assert coerced["local"] == {"delays": {"in_progress": 40, "finalizing": 0.5}, "concurrency": 2}
    assert coerced["wait"] is False
    validate_config({**values, **parse_config(["prices={m: {input: 1, output: 2.5}}"])})
    bad = ws.cli("--config", "local={delays: {in_progress: soon}}", "plan")
    assert bad.returncode == 2 and "local.delays.in_progress" in bad.stderr and len(bad.stderr.splitlines()) == 1


# --- each batch with the provider that made it -------------------------------------------------------


@pytest.fixture
def emulator(tmp_path):
    with Emulator(tmp_path / "emulator", timing={"in_progress": 600}) as emu:
        yield emu


def calls(emu: Emulator, method: str, suffix: str) -> list[dict]:
    return [r for r in emu.requests_seen() if r["method"] == method and r["path"].endswith(suffix)]


def test_commands_use_the_provider_each_batch_was_made_with(tmp_path, emulator, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-truthful-0123")
    ws = small(tmp_path)  # config.yaml keeps provider: local
    values = yaml.safe_load((ws.root / "config.yaml").read_text())
    openai = load_settings({**values, "provider": "openai"}, ws.root)
    plan = build_plan(openai)
    [chunk] = plan.processors[PROC].new
    write_request_file(plan, PROC, chunk, JobLog(None, echo=False))
    submit_batch(openai, make_provider(openai), PROC, chunk, JobLog(None, echo=False), group="gtest-openai")
    [batch_id] = [r["batch_id"] for r in calls(emulator, "POST", "/v1/batches")]

    status = ws.cli("status", "--refresh", "--json")
    assert status.returncode == 0, status.output
    [view] = json.loads(status.stdout)["groups"][0]["batches"]
    assert (view["provider"], view["status"]) == ("openai", "in_progress")
    assert calls(emulator, "GET", f"/v1/batches/{batch_id}")
    assert "not refreshed" not in status.stderr

    remote = ws.cli("list", "--remote", "--json")
    assert remote.returncode == 0 and [
        (r["provider"], r["batch_id"], r["known"]) for r in json.loads(remote.stdout)
    ] == [("openai", batch_id, True)]

    cancel = ws.cli("cancel", "gtest-openai")
    assert cancel.returncode == 0, cancel.output
    assert calls(emulator, "POST", f"/v1/batches/{batch_id}/cancel")
    assert cancel.stdout.count("\n") == 1 and "cancel requested" in cancel.stdout

    got = ws.cli("collect", batch_id)
    assert got.returncode == 0, got.output
    assert "0 succeeded, 3 failed" in got.stdout
    manifest = json.loads(Layout(openai).manifest(PROC, chunk).read_text())
    assert manifest["provider"] == "openai" and manifest["failed"] == 3

    retry = ws.cli("retry", "gtest-openai", "--failed-only")
    assert retry.returncode == 0, retry.output
    assert "(openai): 3 request(s), 3 of them retried" in retry.stdout
    assert len(calls(emulator, "POST", "/v1/batches")) == 2
    assert ws.local_batches() == []  # the local provider was never asked to do anything

    # the key of the provider that made a batch is still needed: one line for it, the rest goes on
    monkeypatch.delenv("OPENAI_API_KEY")
    seen = len(emulator.requests_seen())
    denied = ws.cli("status", "--refresh")
    assert denied.returncode == 0 and "gtest-openai" in denied.stdout
    [line] = denied.stderr.splitlines()
    assert "OPENAI_API_KEY" in line and "sk-test" not in denied.output
    assert len(emulator.requests_seen()) == seen


# --- commit_results ---------------------------------------------------------------------------------


def git(root, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def test_commit_results_commits_ignored_result_files_and_says_so(tmp_path, capsys):
    ws = small(tmp_path)
    shutil.copy2(REPO / ".gitignore", ws.root / ".gitignore")  # the project's: ignores data/results/, data/reports/
    git(ws.root, "init", "-q")
    for key, value in (("user.name", "t"), ("user.email", "t@example.invalid"), ("commit.gpgsign", "false")):
        git(ws.root, "config", key, value)
    settings = load_settings_file(ws.root / "config.yaml")
    results = ws.root / "data" / "results"
    results.mkdir(parents=True)
    (results / "o_r_issue_1_p.json").write_text('{"batch_id": "batch_1"}\n')
    (results / "o_r_issue_2_p.json").write_text('{"batch_id": "batch_2"}\n')
    (results / ".o_r_issue_3_p.json.1234.tmp").write_text("{}")
    (ws.root / "data" / "reports").mkdir()
    (ws.root / "data" / "reports" / "o_r_digest.md").write_text("# digest\n")
    lines: list[str] = []

    commit = commit_results(settings, lines.append)

    assert commit and git(ws.root, "rev-parse", "HEAD").strip() == commit
    committed = git(ws.root, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(committed) == [
        "data/reports/o_r_digest.md",
        "data/results/o_r_issue_1_p.json",
        "data/results/o_r_issue_2_p.json",
    ]
    said = f"commit_results: committed 2 result file(s) and 1 report(s) as {commit[:12]} (batches: batch_1, batch_2)"
    assert lines == [said] and capsys.readouterr().err == f"batchpipe: {said}\n"

    assert commit_results(settings, lines.append) is None  # nothing changed: says why, commits nothing
    assert capsys.readouterr().err == "batchpipe: commit_results: no new or changed result files; nothing committed\n"
    (results / "o_r_issue_1_p.json").write_text('{"batch_id": "batch_3"}\n')  # tracked now: a change is seen
    assert commit_results(settings, lines.append)
    assert "committed 1 result file(s) and 0 report(s)" in capsys.readouterr().err


# --- notices summarised per chunk -------------------------------------------------------------------


def test_failed_requests_are_one_console_line_per_chunk_details_in_the_log(tmp_path, capsys):
    titles = [json.loads(p.read_text())["issue"]["title"] for p in ISSUES[:4]]
    faults = [{"match": t, "kind": "error", "status": 400, "type": "invalid_request_error"} for t in titles[:3]]
    ws = small(tmp_path, count=4, local={"faults": {"requests": faults}})
    log_path = tmp_path / "collect.log"

    collected(ws, JobLog(log_path))

    err = capsys.readouterr().err.splitlines()
    manifest = json.loads(ws.files("batch_results/*/*.results.json")[0].read_text())
    ok, failed = manifest["succeeded"], manifest["failed"]
    assert failed >= 2 and ok >= 1
    assert not [line for line in err if ") failed: " in line], err  # no line per request on the console
    [chunk_line] = [line for line in err if "result file(s) written" in line]
    assert chunk_line.endswith(
        f"{ok} succeeded, {failed} failed, {ok} result file(s) written; failed: {failed} invalid_request_error"
    )
    details = [line for line in log_path.read_text().splitlines() if ") failed: invalid_request_error" in line]
    assert len(details) == failed  # each one in the log file


# --- the workflow agrees -----------------------------------------------------------------------------


@pytest.mark.workflow
def test_snakemake_configfiles_nested_config_and_commit_results_in_a_clone(tmp_path):
    ws = small(tmp_path, count=4)
    shutil.copy2(REPO / ".gitignore", ws.root / ".gitignore")
    git(ws.root, "init", "-q")
    for key, value in (("user.name", "t"), ("user.email", "t@example.invalid"), ("commit.gpgsign", "false")):
        git(ws.root, "config", key, value)
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-q", "-m", "the project")
    (ws.root / "a.yaml").write_text("limit: 1\ncommit_results: true\nlocal: {concurrency: 3}\n")
    (ws.root / "b.yaml").write_text("limit: 2\nlocal: {delays: {in_progress: 0}}\n")

    run = ws.snakemake(
        "--cores", "2", "results/all", "--configfile", "a.yaml", "b.yaml",
        "--config", "local={delays: {finalizing: 0.01}}", "poll_interval=0.05",
    )  # fmt: skip

    assert len(ws.results()) == 2  # b's limit over a's; a's commit_results kept
    committed = git(ws.root, "show", "--name-only", "--format=", "HEAD").split()
    assert len(committed) == 2 and all(p.startswith("data/results/") for p in committed)
    head = git(ws.root, "rev-parse", "HEAD").strip()
    assert f"commit_results: committed 2 result file(s) and 0 report(s) as {head[:12]}" in run.stderr
    # the batchpipe command reads the same files the same way
    plan = ws.cli("--configfile", "a.yaml", "b.yaml", "plan", "--json")
    assert json.loads(plan.stdout)["issues_selected"] == 2


def test_batchpipe_run_hands_every_configfile_and_config_to_snakemake(tmp_path, monkeypatch):
    ws = small(tmp_path)
    handed: list[list[str]] = []
    monkeypatch.setattr("batchpipe.commands.run._run_workflow", lambda root, extra: handed.append(extra) or 0)

    done = ws.cli(
        "--configfile", "a.yaml", "b.yaml", "--config", "local={delays: {in_progress: 4}}", "limit=2",
        "run", "--", "results/all", "-n",
    )  # fmt: skip

    assert done.returncode == 0, done.output
    assert handed == [
        [
            "results/all",
            "-n",
            "--configfile",
            "a.yaml",
            "b.yaml",
            "--config",
            "local={delays: {in_progress: 4}}",
            "limit=2",
        ]
    ]  # snakemake reads config.yaml first itself; the targets are not taken for config files
