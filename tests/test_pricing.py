"""pricing.py: a usage's cost at batch and at real-time price, from the config's price table."""

from __future__ import annotations

import pytest

from batchpipe.config import Price, load_settings_file
from batchpipe.pricing import Cost, cost_of, price_for

from conftest import REPO

PRICES = {
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
    "gpt-4o": {"input": 2.50, "cached_input": 1.25, "output": 10.00},
    "claude-haiku-4-5": {"input": 1.00, "cached_input": 0.10, "output": 5.00},
    "no-cache-price": {"input": 4.0, "output": 8.0},
}


@pytest.fixture(scope="module")
def settings():
    return load_settings_file(REPO / "config.yaml", {"prices": PRICES, "batch_discount": 0.5})


def test_cached_tokens_are_charged_the_cached_price(settings):
    usage = {"input_tokens": 1_000_000, "cached_input_tokens": 400_000, "output_tokens": 100_000}
    cost = cost_of(settings, "gpt-4o-mini", usage)
    # 600k fresh x 0.15 + 400k cached x 0.075 + 100k out x 0.60 = 0.09 + 0.03 + 0.06 per million
    assert cost == Cost(batch=0.09, realtime=0.18, charged=0.09)
    assert cost.as_dict() == {"batch": 0.09, "realtime": 0.18, "charged": 0.09}


def test_without_cache_prices_cached_tokens_and_cache_writes_cost_the_input_price(settings):
    assert settings.prices["no-cache-price"] == Price(
        input=4.0, output=8.0, cached_input=4.0, cache_write=4.0
    )  # both default to input
    usage = {"input_tokens": 500_000, "cached_input_tokens": 250_000, "output_tokens": 0}
    assert cost_of(settings, "no-cache-price", usage).realtime == pytest.approx(2.0)


def test_mode_realtime_charges_the_realtime_price(settings):
    usage = {"input_tokens": 2_000_000, "output_tokens": 1_000_000}
    batch = cost_of(settings, "claude-haiku-4-5", usage)
    realtime = cost_of(settings, "claude-haiku-4-5", usage, mode="realtime")
    assert batch == Cost(batch=3.5, realtime=7.0, charged=3.5)
    assert realtime == Cost(batch=3.5, realtime=7.0, charged=7.0)


def test_the_batch_discount_comes_from_the_settings():
    settings = load_settings_file(REPO / "config.yaml", {"prices": PRICES, "batch_discount": 0.25})
    cost = cost_of(settings, "gpt-4o", {"input_tokens": 1_000_000, "output_tokens": 0})
    assert (cost.batch, cost.realtime, cost.charged) == (0.625, 2.5, 0.625)


@pytest.mark.parametrize(
    "model, family",
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest family name wins, not gpt-4o
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ],
)
def test_dated_model_names_fall_back_to_their_family(settings, model, family):
    assert price_for(settings, model) == settings.prices[family]
    usage = {"input_tokens": 1000, "output_tokens": 1000}
    assert cost_of(settings, model, usage) == cost_of(settings, family, usage)


@pytest.mark.parametrize(
    "model, usage",
    [
        ("gemini-2.0-flash", {"input_tokens": 10, "output_tokens": 10}),  # no price
        ("o-gpt-4o", {"input_tokens": 10, "output_tokens": 10}),  # a family name only counts as a prefix
        (None, {"input_tokens": 10, "output_tokens": 10}),  # no model
        ("", {"input_tokens": 10}),
        ("gpt-4o", {}),  # no usage
    ],
)
def test_no_price_or_no_usage_is_no_cost(settings, model, usage):
    assert cost_of(settings, model, usage) is None


def test_missing_or_null_counts_are_zero_and_cached_never_exceeds_input(settings):
    assert cost_of(settings, "gpt-4o", {"output_tokens": 100_000, "input_tokens": None}) == Cost(0.5, 1.0, 0.5)
    # more cached than input tokens (a provider quirk): no negative fresh tokens
    cost = cost_of(settings, "gpt-4o", {"input_tokens": 100, "cached_input_tokens": 1_000_000})
    assert cost.realtime == pytest.approx(1.25)
