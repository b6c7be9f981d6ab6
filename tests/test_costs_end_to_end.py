"""Cost on every path without a key: the forecast before a run against what the run's answers cost.

The simulated service (the `local` engine, and the emulator behind the real SDKs) answers as the model asked
for and counts tokens its own way (words and punctuation marks over everything sent, answers capped at
max_tokens), independently of the forecast's estimate (4 characters a token): the comparison is not
circular. The ceiling holds on every run; the expected figure is within its margin once the processor's
answers so far give the expected answer length.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest

from batchpipe.forecast import EXPECTED_MARGIN
from batchpipe.service.emulator import Emulator

_PRICE = {"input": 1.0, "cached_input": 0.1, "cache_write": 2.0, "output": 5.0}
PRICES = {"offline": _PRICE, "gpt-4o-mini": _PRICE, "claude-haiku-4-5": _PRICE}
MODEL = {"local": "offline", "openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def env_for(provider: str, emu: Emulator | None) -> dict[str, str]:
    if emu is None:
        return {}
    if provider == "openai":
        return {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "sk-test-key"}
    return {"ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-test-key"}


def forecast_of(ws, *config: str) -> dict:
    """`batchpipe plan --json`'s one forecast row (product-labeling), as a user asks before a run."""
    args = [item for pair in config for item in ("--config", pair)]
    preview = ws.cli(*args, "plan", "--json")
    assert preview.returncode == 0, preview.output
    [row] = json.loads(preview.stdout)["forecast"]
    return row


def spent(ws) -> tuple[float, set[str]]:
    """What the results cost (each at the price it was charged), and which results there are."""
    results = ws.results()
    return sum(r["cost_usd"]["charged"] for r in results.values()), set(results)


@pytest.mark.workflow
@pytest.mark.parametrize("provider", ["local", "openai", "anthropic"])
def test_actual_cost_never_exceeds_the_ceiling_and_meets_the_expected_figure(small_workspace, tmp_path, provider):
    ws = small_workspace
    ws.config(provider=provider, prices=PRICES, chunk_size=2, poll_interval=0.05)
    with ExitStack() as stack:
        emu = None if provider == "local" else stack.enter_context(Emulator(tmp_path / "emulator"))
        env = env_for(provider, emu)

        first = forecast_of(ws, "limit=3")
        assert (first["model"], first["requests"]) == (MODEL[provider], 3)
        ws.snakemake("--cores", "2", "results/all", "--config", "limit=3", env=env)
        cost1, done1 = spent(ws)
        assert len(done1) == 3 and 0 < cost1 <= first["cost_usd"]["ceiling"]["batch"]
        assert {r["model"] for r in ws.results().values()} == {MODEL[provider]}  # the model asked for, priced
        assert all(r["simulated"] for r in ws.results().values())

        second = forecast_of(ws)  # the answers so far give the expected answer length
        assert second["requests"] == 2
        ws.snakemake("--cores", "2", "results/all", env=env)
        cost2, done2 = spent(ws)
        assert len(done2) == 5
        actual = cost2 - cost1
        expected, ceiling = second["cost_usd"]["expected"]["batch"], second["cost_usd"]["ceiling"]["batch"]
        assert 0 < actual <= ceiling
        assert abs(actual - expected) <= EXPECTED_MARGIN * expected, (actual, expected)

    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert summary["totals"]["cost_charged_usd"] == pytest.approx(cost2, abs=1e-5)
