"""The forecast (expected and ceiling costs before sending) and the cost caps that hold chunks by it."""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack

import pytest

from batchpipe.config import Settings, load_settings, read_config
from batchpipe.forecast import REQUEST_OVERHEAD_TOKENS, Tally, ceiling_usd, describe_forecasts, forecast
from batchpipe.layout import Layout
from batchpipe.ledger import Created, Prepared, append
from batchpipe.manifest import Manifest, RequestOutcome
from batchpipe.plan import Plan, build_plan, hold_over_caps
from batchpipe.request import RequestRecord, attempt_of
from batchpipe.service.emulator import Emulator
from batchpipe.service.engine import BatchEngine

from conftest import REPO, Workspace, make_workspace

_PRICE = {"input": 2.0, "cached_input": 0.2, "cache_write": 2.5, "output": 8.0}
PRICES = {"offline": _PRICE, "batchpipe-offline": _PRICE}
SAMPLES = sorted((REPO / "data" / "issues").glob("*.json"))


def settings_of(ws: Workspace, **more) -> Settings:
    values = read_config(ws.root / "config.yaml")
    values.update({"processors": ["product-labeling"], "prices": PRICES, "chunk_size": 2, **more})
    return load_settings(values, root=ws.root)


@pytest.fixture
def ws5(tmp_path) -> Workspace:
    return make_workspace(tmp_path / "ws", SAMPLES[:5])


def test_forecast_prices_the_estimate_and_the_ceiling(ws5):
    settings = settings_of(ws5)
    tally = Tally(requests=2, input_tokens=1000, output_tokens=500, max_input_tokens=4000, max_output_tokens=3000)
    f = forecast(settings, "p", "offline", tally)
    expected = (1000 * 2.0 + 500 * 8.0) / 1e6
    # input at the dearer cache-write price, with what a provider adds to each request; rounded up
    ceiling = ((4000 + 2 * REQUEST_OVERHEAD_TOKENS) * 2.5 + 3000 * 8.0) / 1e6
    assert (f.expected_realtime, f.ceiling_realtime) == (round(expected, 6), math.ceil(ceiling * 1e6) / 1e6)
    assert (f.expected_batch, f.ceiling_batch) == (round(expected * 0.5, 6), math.ceil(ceiling * 0.5e6) / 1e6)
    assert ceiling_usd(settings, "offline", tally) == f.ceiling_batch
    assert ceiling_usd(settings_of(ws5, mode="realtime"), "offline", tally) == f.ceiling_realtime
    unpriced = forecast(settings, "p", "no-such-model", tally)
    assert unpriced.expected_batch is None and ceiling_usd(settings, "no-such-model", tally) == 0.0
    lines = describe_forecasts([f, unpriced], "batch")
    assert "p (offline): 2 request(s), ~1,000 input and ~500 output tokens" in lines[1]
    assert "no price for no-such-model: add it under prices" in lines[-1]


def test_the_plan_forecasts_its_new_chunks(ws5):
    settings = settings_of(ws5)
    plan = build_plan(settings, write_cache=False)
    [f] = plan.forecasts()
    chunks = list(plan.processors["product-labeling"].new.values())
    assert f.tally.requests == 5 == sum(len(c.members) for c in chunks)
    assert f.tally.max_output_tokens == 5 * 1500  # max_tokens each
    assert f.tally.output_tokens == 5 * 375  # a quarter of max_tokens before any answer is known
    assert 0 < f.tally.input_tokens < f.tally.max_input_tokens
    assert f.expected_batch is not None and f.ceiling_batch is not None
    assert 0 < f.expected_batch < f.ceiling_batch
    assert sum(c.ceiling_usd for c in chunks) == pytest.approx(f.ceiling_batch, abs=1e-5)
    text = plan.describe()
    assert "batchpipe forecast" in text and "product-labeling (offline): 5 request(s)" in text
    assert "total: 5 request(s)" in text


def record_sent(settings: Settings, plan: Plan, chunk_id: str, group: str, at: float, cost_usage: dict | None = None):
    """Record a planned chunk as prepared and created (with its ceiling), and collected when usage is given."""
    layout = Layout(settings)
    chunk = plan.processors["product-labeling"].new[chunk_id]
    append(
        layout,
        Prepared(
            chunk=chunk_id,
            processor="product-labeling",
            provider="local",
            model="offline",
            request_count=len(chunk.members),
            group=group,
            requests={m.custom_id: RequestRecord(m.request_hash, attempt_of(m.custom_id), []) for m in chunk.members},
            ceiling_usd=chunk.ceiling_usd,
            time=at,
        ),
    )
    append(layout, Created(chunk=chunk_id, batch_id=f"b_{chunk_id}", created_at=at, status="validating", time=at))
    if cost_usage is not None:
        outcomes = {  # the whole usage on the first request
            m.custom_id: RequestOutcome("succeeded", issues=[], usage=cost_usage if i == 0 else {}, model="offline")
            for i, m in enumerate(chunk.members)
        }
        Manifest(chunk_id, "product-labeling", f"b_{chunk_id}", "local", outcomes).write(
            layout.manifest("product-labeling", chunk_id)
        )


def test_max_cost_usd_holds_the_chunks_over_it_in_file_order(ws5):
    plan = build_plan(settings_of(ws5), write_cache=False)
    first, second, third = plan.processors["product-labeling"].new.values()
    cap = first.ceiling_usd + second.ceiling_usd / 2  # room for the first chunk only
    capped = build_plan(settings_of(ws5, max_cost_usd=cap), write_cache=False)
    hold_over_caps(capped, "g1")
    pp = capped.processors["product-labeling"]
    assert list(pp.new) == [first.chunk]
    assert list(pp.held) == [second.chunk, third.chunk]
    assert second.chunk not in pp.chunks and first.chunk in pp.chunks
    assert capped.volatile  # the next run looks again
    assert capped.held_because.startswith(f"max_cost_usd ${cap:,.4f}: this run submitted up to $0.0000; 2 new chunk(s)")
    assert "3 request(s)" in capped.held_because and capped.held_because in capped.describe()
    [f] = capped.forecasts()
    assert f.tally.requests == 2  # the forecast is of what is sent


def test_this_runs_chunks_count_against_max_cost_usd_and_others_do_not(ws5):
    settings = settings_of(ws5)
    plan = build_plan(settings, write_cache=False)
    first, second, third = plan.processors["product-labeling"].new.values()
    record_sent(settings, plan, first.chunk, "g1", time.time())
    cap = first.ceiling_usd + second.ceiling_usd + third.ceiling_usd / 2
    for group, held in (("g1", [third.chunk]), ("g2", [])):  # g2: another run; its cap starts at 0
        again = build_plan(settings_of(ws5, max_cost_usd=cap), write_cache=False)
        hold_over_caps(again, group)
        assert list(again.processors["product-labeling"].held) == held


def test_max_cost_usd_per_day_counts_the_last_24_hours_from_the_ledger(ws5):
    settings = settings_of(ws5)
    plan = build_plan(settings, write_cache=False)
    first, second, third = plan.processors["product-labeling"].new.values()
    now = time.time()
    record_sent(settings, plan, first.chunk, "old", now - 25 * 3600)  # outside the window
    usage = {"input_tokens": 100_000, "output_tokens": 0}  # collected: its cost, 100k x $2/M x 0.5 = $0.10
    record_sent(settings, plan, second.chunk, "g0", now - 3600, usage)
    capped = build_plan(settings_of(ws5, max_cost_usd_per_day=0.10 + third.ceiling_usd * 0.99), write_cache=False)
    hold_over_caps(capped, "g1", now)
    pp = capped.processors["product-labeling"]
    assert list(pp.held) == [third.chunk]
    assert "max_cost_usd_per_day" in capped.held_because and "the last 24 hours submitted up to $0.1000" in (
        capped.held_because
    )
    roomy = build_plan(settings_of(ws5, max_cost_usd_per_day=0.10 + third.ceiling_usd * 1.01), write_cache=False)
    hold_over_caps(roomy, "g1", now)
    assert roomy.processors["product-labeling"].held == {}


# --- as users meet it ---------------------------------------------------------------------------------


@pytest.mark.workflow
@pytest.mark.parametrize("provider", ["local", "openai"])
def test_a_capped_run_sends_what_fits_exits_5_and_the_next_run_sends_the_rest(tmp_path, provider):
    ws = make_workspace(tmp_path / "ws", SAMPLES[:4])
    prices = {**PRICES, "gpt-4o-mini": _PRICE}
    ws.config(processors=["product-labeling"], chunk_size=2, prices=prices, provider=provider, poll_interval=0.05)
    with ExitStack() as stack:
        env: dict[str, str] = {}
        engine = BatchEngine(ws.root / ".batchpipe" / "local")
        if provider == "openai":
            emu = stack.enter_context(Emulator(tmp_path / "emulator"))
            env = {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "sk-test-key"}
            engine = emu.engine
        plan = build_plan(settings_of(ws, provider=provider, prices=prices), write_cache=False)
        first, second = plan.processors["product-labeling"].new.values()
        cap = round(first.ceiling_usd * 1.5, 6)
        ws.config(max_cost_usd=cap)

        doc = json.loads(ws.cli("plan", "--json").stdout)
        assert [c["chunk"] for c in doc["processors"]["product-labeling"]["held_by_cap"]] == [second.chunk]
        assert doc["forecast"][0]["requests"] == 2
        run = ws.snakemake("--cores", "2", "results/all", env=env, code=5)  # work left
        assert "held, not sent" in run.output
        assert len(engine.list_batches()) == 1 and len(ws.results()) == 2
        assert f"HELD max_cost_usd ${cap:,.4f}" in (ws.root / "results" / "all").read_text()

        ws.snakemake("--cores", "2", "results/all", env=env)  # a new run, a new allowance: the rest
        sent = [_custom_ids(engine, b.id) for b in engine.list_batches()]
        assert len(sent) == 2 and len(ws.results()) == 4
        ids = [cid for batch in sent for cid in batch]
        assert len(ids) == len(set(ids)) == 4  # every request sent once
        actual = sum(r["cost_usd"]["charged"] for r in ws.results().values())
        assert 0 < actual <= first.ceiling_usd + second.ceiling_usd  # never over the ceiling


def _custom_ids(engine: BatchEngine, batch_id: str) -> list[str]:
    """The custom_ids the provider was sent in a batch (its stored requests)."""
    requests = engine.state_dir / "batches" / batch_id / "requests.jsonl"
    return [json.loads(line)["custom_id"] for line in requests.read_text().splitlines() if line.strip()]


def test_under_a_cap_a_model_with_no_price_is_held(ws5):
    capped = build_plan(settings_of(ws5, max_cost_usd=100.0, prices={}), write_cache=False)
    hold_over_caps(capped, "g1")
    pp = capped.processors["product-labeling"]
    assert pp.new == {} and len(pp.held) == 3
    assert "no price for offline (add it under prices: a cap counts prices)" in capped.held_because


def test_the_daily_cap_counts_every_processors_batches(ws5):
    """Another processor's spend today counts, though this run is not about it."""
    settings = settings_of(ws5)
    plan = build_plan(settings, write_cache=False)
    first, second, third = plan.processors["product-labeling"].new.values()
    record_sent(settings, plan, first.chunk, "g0", time.time())  # in flight: its ceiling counts
    other = build_plan(settings_of(ws5, processors=["issue-summary"], max_cost_usd_per_day=first.ceiling_usd))
    hold_over_caps(other, "g1")
    assert len(other.processors["issue-summary"].held) > 0
    assert other.processors["issue-summary"].new == {}
