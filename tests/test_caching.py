"""Prompt caching that stacks with the batch discount: the prefix marked, cache tokens read and priced, the
batch cache warmed by a first chunk of one request, and the simulated service's cache end to end."""

from __future__ import annotations

import json

import pytest

from batchpipe.config import CacheConfig, load_settings, read_config
from batchpipe.dag import warm_chunk
from batchpipe.issues import load_item
from batchpipe.layout import Layout
from batchpipe.plan import build_plan, write_plan_folder
from batchpipe.pricing import cost_of
from batchpipe.providers.anthropic_wire import CACHE_CONTROL, AnthropicWire
from batchpipe.providers.openai_wire import OpenAIWire
from batchpipe.render import render_request
from batchpipe.service.emulator import Emulator
from batchpipe.service.engine import BatchEngine
from batchpipe.service.responders import OfflineResponder

from conftest import REPO, Workspace, make_workspace

SAMPLES = sorted((REPO / "data" / "issues").glob("*.json"))
PROC = "long-labeling"
PRICE = {"input": 1.0, "cached_input": 0.1, "cache_write": 2.0, "output": 5.0}
# Static instructions long enough for Claude Haiku 4.5's minimum (4096 tokens at 4 characters a token).
GUIDE = "".join(
    f"Guideline {i}: weigh what the reporter saw against what the maintainers of ${{org}}/${{repo}} expect, "
    "and name the component the change would touch.\n"
    for i in range(180)
)


def long_processor(ws: Workspace) -> None:
    """A labeling processor whose system prompt (its shared prefix) is long; it replaces the default ones."""
    (ws.root / "prompts" / "long-labeling.system.txt").write_text(
        (REPO / "prompts" / "product-labeling.system.txt").read_text() + "\n" + GUIDE
    )
    values = json.loads(json.dumps(read_config(ws.root / "config.yaml")))
    definition = dict(values["processor_definitions"]["product-labeling"])
    definition["system"] = "prompts/long-labeling.system.txt"
    ws.config(
        processor_definitions={**values["processor_definitions"], PROC: definition},
        processors=[PROC],
        prices={"claude-haiku-4-5": PRICE, "gpt-4o-mini": PRICE},
    )


def settings_of(ws: Workspace, **more):
    values = read_config(ws.root / "config.yaml")
    values.update({"provider": "anthropic", **more})
    return load_settings(values, root=ws.root)


@pytest.fixture
def ws5(tmp_path) -> Workspace:
    ws = make_workspace(tmp_path / "ws", SAMPLES[:5])
    long_processor(ws)
    return ws


# --- usage read from both providers, and priced ----------------------------------------------------


def test_anthropic_usage_counts_cache_reads_and_writes_among_the_input():
    def line(usage: dict) -> dict:
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": usage,
        }
        return {"custom_id": "r1a1", "result": {"type": "succeeded", "message": message}}

    write = AnthropicWire.parse_line(
        line(
            {
                "input_tokens": 312,
                "cache_creation_input_tokens": 5120,
                "cache_read_input_tokens": 0,
                "output_tokens": 88,
            }
        )
    )
    assert write.usage == {
        "input_tokens": 312 + 5120,  # Anthropic's input_tokens leave the cache out; ours count every input token
        "cached_input_tokens": 0,
        "cache_write_tokens": 5120,
        "output_tokens": 88,
    }
    read = AnthropicWire.parse_line(
        line(
            {
                "input_tokens": 290,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 5120,
                "output_tokens": 91,
            }
        )
    )
    assert read.usage == {"input_tokens": 290 + 5120, "cached_input_tokens": 5120, "output_tokens": 91}


def test_openai_usage_counts_cached_tokens_and_cache_writes_where_reported():
    def line(usage: dict) -> dict:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": usage,
        }
        return {"id": "batch_req_1", "custom_id": "r1a1", "response": {"status_code": 200, "body": body}, "error": None}

    hit = OpenAIWire.parse_line(
        line(
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            }
        )
    )
    assert hit.usage == {"input_tokens": 2006, "cached_input_tokens": 1920, "output_tokens": 300}
    written = OpenAIWire.parse_line(
        line(
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 1920},
            }
        )
    )
    assert written.usage["cache_write_tokens"] == 1920 and written.usage["cached_input_tokens"] == 0


def test_cost_prices_fresh_input_cache_reads_and_cache_writes_apart(ws5):
    settings = settings_of(ws5)
    usage = {"input_tokens": 1_000_000, "cached_input_tokens": 600_000, "cache_write_tokens": 300_000}
    cost = cost_of(settings, "claude-haiku-4-5", usage | {"output_tokens": 100_000})
    realtime = 100_000 * 1.0 + 600_000 * 0.1 + 300_000 * 2.0 + 100_000 * 5.0  # fresh, read, written, output
    assert cost is not None and cost.realtime == pytest.approx(realtime / 1e6)
    assert cost.batch == cost.charged == pytest.approx(realtime / 1e6 * 0.5)  # caching stacks with the discount


def test_config_prices_a_one_hour_cache_write_at_twice_the_input():
    prices = read_config(REPO / "config.yaml")["prices"]
    for model in ("claude-haiku-4-5", "claude-sonnet-4-5"):
        assert prices[model]["cache_write"] == 2 * prices[model]["input"]
    assert CACHE_CONTROL == {"type": "ephemeral", "ttl": "1h"}
    assert "offline" in prices  # the local provider's model has a price (free)


def test_minimum_cacheable_prefix_by_model():
    cache = CacheConfig()
    assert cache.min_tokens_for("claude-haiku-4-5") == 4096
    assert cache.min_tokens_for("claude-haiku-4-5-20251001") == 4096  # a dated snapshot: its family
    assert cache.min_tokens_for("claude-sonnet-4-6") == 2048
    assert cache.min_tokens_for("claude-sonnet-4-5-20250929") == 1024
    assert cache.min_tokens_for("claude-opus-4-6") == 4096 and cache.min_tokens_for("claude-opus-4-1") == 1024
    assert cache.min_tokens_for("claude-3-5-haiku-latest") == 2048
    assert cache.min_tokens_for("someone-elses-model") == 1024
    assert CacheConfig(min_tokens={"default": 9}).min_tokens_for("x") == 9


# --- the prefix marked on Anthropic requests ------------------------------------------------------------


ALL = [PROC, "product-labeling", "issue-summary"]


def test_static_instructions_come_first_and_the_user_message_is_the_issue(ws5):
    settings = settings_of(ws5, processors=ALL)
    path = ws5.files("data/issues/*.json")[0]
    issue = load_item(path)
    for name in ("product-labeling", "issue-summary"):
        request = render_request(issue, settings.processor(name), settings, path).neutral
        assert request.user.startswith(("Issue: ", "Pull request: ")) and f"Title: {issue.title}" in request.user
        assert f"{issue.org}/{issue.repo}" in request.system and "Step" not in request.user
    labeling = render_request(issue, settings.processor("product-labeling"), settings, path).neutral
    assert "Available labels" in labeling.system and "- Bug: " in labeling.system


def test_cache_control_marks_the_prefix_only_when_it_is_long_enough(ws5):
    settings = settings_of(ws5, processors=ALL)
    path = ws5.files("data/issues/*.json")[0]
    issue = load_item(path)
    long = render_request(issue, settings.processor(PROC), settings, path)
    short = render_request(issue, settings.processor("product-labeling"), settings, path)

    params = AnthropicWire.request_line("r1a1", long.neutral)["params"]
    assert params["system"] == [{"type": "text", "text": long.neutral.system, "cache_control": CACHE_CONTROL}]
    assert "cache_control" not in json.dumps(params["tools"])  # one mark, after tools and system
    params = AnthropicWire.request_line("r1a1", short.neutral)["params"]
    assert params["system"] == short.neutral.system and "cache_control" not in json.dumps(params)
    # a lower minimum marks the short prefix too; OpenAI requests never carry a mark (it caches by itself)
    low = settings_of(ws5, processors=ALL, cache={"min_tokens": {"claude-haiku-4-5": 100}})
    assert render_request(issue, low.processor("product-labeling"), low, path).neutral.cache_prefix
    openai = settings_of(ws5, processors=ALL, provider="openai")
    assert "cache_control" not in json.dumps(
        OpenAIWire.request_line("r1a1", render_request(issue, openai.processor(PROC), openai, path).neutral)
    )

    # the mark is not part of what is asked: the request hash is the same with caching off
    off = settings_of(ws5, processors=ALL, cache={"enabled": False})
    unmarked = render_request(issue, off.processor(PROC), off, path)
    assert not unmarked.neutral.cache_prefix and unmarked.request_hash == long.request_hash


# --- the first chunk warms the batch cache ----------------------------------------------------------------


def test_a_waiting_run_sends_one_request_first_and_the_other_chunks_after_it(ws5):
    settings = settings_of(ws5, chunk_size=2)
    plan = build_plan(settings, write_cache=False)
    pp = plan.processors[PROC]
    sizes = [len(c.members) for c in pp.new.values()]
    assert sizes == [1, 2, 2] and pp.warm == next(iter(pp.new))
    assert "sent first, alone, to warm the prompt cache" in plan.describe()

    folder = Layout(settings).plan_root / "k" / "s0r0"
    write_plan_folder(plan, folder, "k", 0, 0, [PROC], "g")
    assert warm_chunk(settings, PROC, pp.warm) is None
    assert [warm_chunk(settings, PROC, c) for c in list(pp.new)[1:]] == [pp.warm, pp.warm]

    # no warm-up: not waiting, turned off, a prefix too short, or everything fits one chunk
    for more in ({"wait": False}, {"cache": {"warm_first": False}}, {"processors": ["product-labeling"]}):
        other = build_plan(settings_of(ws5, chunk_size=2, **more), write_cache=False)
        assert all(p.warm is None for p in other.processors.values()), more
        assert [len(c.members) for p in other.processors.values() for c in p.new.values()] == [2, 2, 1]
    assert build_plan(settings_of(ws5, chunk_size=5), write_cache=False).processors[PROC].warm is None


# --- the simulated cache ------------------------------------------------------------------------------


def _request(custom_id: str, system: str, text: str, marked: bool) -> dict:
    block: dict = {"type": "text", "text": system}
    if marked:
        block["cache_control"] = dict(CACHE_CONTROL)
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "system": [block],
        "messages": [{"role": "user", "content": f"Title: {text}\n\nIt breaks."}],
    }
    return {"custom_id": custom_id, "params": params}


def _usage(engine: BatchEngine, requests: list[dict]) -> dict[str, dict]:
    record = engine.create_batch(request_format="anthropic", requests=requests)
    engine.get_batch(record.id)
    rows = [json.loads(line) for line in engine.anthropic_results(record.id).splitlines()]
    return {row["custom_id"]: row["result"]["message"]["usage"] for row in rows}


def test_the_service_writes_a_marked_prefix_once_and_reads_it_while_it_lives(tmp_path):
    now = [1_700_000_000.0]
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=lambda: now[0])
    system = "You triage issues of the project, carefully and briefly. " * 20
    usage = _usage(
        engine,
        [_request(f"a{i}", system, f"Issue {i}", marked=True) for i in range(3)]
        + [_request("plain", system, "Issue 9", marked=False)],
    )
    prefix = usage["a0"]["cache_creation_input_tokens"]
    assert prefix > 200 and usage["a0"]["cache_read_input_tokens"] == 0  # the first request writes it
    assert [usage[f"a{i}"]["cache_read_input_tokens"] for i in (1, 2)] == [prefix, prefix]  # the others read it
    assert usage["plain"]["cache_read_input_tokens"] == usage["plain"]["cache_creation_input_tokens"] == 0
    # Anthropic's input_tokens leave the cache out: the fresh part is the same for every request
    assert usage["a1"]["input_tokens"] == usage["plain"]["input_tokens"] - prefix

    now[0] += 50 * 60  # another batch within the hour reads it (and renews it)
    assert _usage(engine, [_request("b", system, "Issue 4", marked=True)])["b"]["cache_read_input_tokens"] == prefix
    now[0] += 2 * 3600  # expired: written again
    assert _usage(engine, [_request("c", system, "Issue 5", marked=True)])["c"]["cache_creation_input_tokens"] == prefix


@pytest.mark.workflow
def test_anthropic_run_warms_the_cache_then_reads_it_and_prices_both(ws5, tmp_path):
    ws = ws5
    ws.config(chunk_size=2, poll_interval=0.05)
    with Emulator(tmp_path / "emulator") as emu:
        env = {"ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-test-key"}
        ws.snakemake("--cores", "2", "results/all", "--config", "provider=anthropic", env=env)
        seen = emu.requests_seen()

    creates = [r for r in seen if r["method"] == "POST" and r["path"] == "/v1/messages/batches" and r.get("batch_id")]
    assert len(creates) == 3
    warm = creates[0]["batch_id"]
    results_read = min(r["seq"] for r in seen if r["path"].endswith(f"/{warm}/results"))
    assert all(c["seq"] > results_read for c in creates[1:])  # the others are sent once the warm batch is in

    for path in ws.files("batch_requests/*/*.jsonl"):
        for line in path.read_text().splitlines():
            assert json.loads(line)["params"]["system"][0]["cache_control"] == CACHE_CONTROL

    results = ws.results()
    assert len(results) == 5
    writes = [r for r in results.values() if r["usage"].get("cache_write_tokens")]
    reads = [r for r in results.values() if r["usage"]["cached_input_tokens"]]
    assert len(writes) == 1 and len(reads) == 4  # every sample issue is of one repository: one prefix
    settings = settings_of(ws)
    for result in results.values():
        cost = cost_of(settings, result["model"], result["usage"])
        assert cost is not None and result["cost_usd"]["charged"] == cost.batch > 0

    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    tokens = summary["processors"][PROC]["tokens"]
    assert tokens["cache_write_tokens"] == writes[0]["usage"]["cache_write_tokens"]
    assert tokens["cached_input_tokens"] == sum(r["usage"]["cached_input_tokens"] for r in reads)
    [row] = json.loads(ws.cli("--config", "provider=anthropic", "cost", "--json").stdout)["rows"]
    assert (row["cache_write_tokens"], row["cached_input_tokens"]) == (
        tokens["cache_write_tokens"],
        tokens["cached_input_tokens"],
    )
