"""Prices: what a request's usage costs at batch and at real-time price, from the config's table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Price, Settings

__all__ = ["Cost", "cost_of", "price_for"]


@dataclass(frozen=True)
class Cost:
    """USD at batch price, at real-time price, and what was charged (the price of the mode it ran in)."""

    batch: float
    realtime: float
    charged: float

    def as_dict(self) -> dict[str, float]:
        return {"batch": self.batch, "realtime": self.realtime, "charged": self.charged}


def price_for(settings: Settings, model: str | None) -> Price | None:
    """The model's price; dated snapshots (gpt-4o-mini-2024-07-18) fall back to their family."""
    prices = settings.prices
    if not model:
        return None
    if model in prices:
        return prices[model]
    for name in sorted(prices, key=len, reverse=True):
        if model.startswith(name):
            return prices[name]
    return None


def cost_of(settings: Settings, model: str | None, usage: dict[str, Any], mode: str = "batch") -> Cost | None:
    """Cost in USD at batch price and at real-time price, from the price table (None: no price, no usage).

    `input_tokens` counts every input token; the cache reads (`cached_input_tokens`) among them are priced
    at `cached_input`, the cache writes (`cache_write_tokens`) at `cache_write`, the rest at `input`."""
    price = price_for(settings, model)
    if price is None or not usage:
        return None
    cached = int(usage.get("cached_input_tokens", 0) or 0)
    written = int(usage.get("cache_write_tokens", 0) or 0)
    fresh = max(int(usage.get("input_tokens", 0) or 0) - cached - written, 0)
    output = int(usage.get("output_tokens", 0) or 0)
    realtime = (
        fresh * price.input + cached * price.cached_input + written * price.cache_write + output * price.output
    ) / 1e6
    batch = realtime * settings.batch_discount
    return Cost(round(batch, 8), round(realtime, 8), round(batch if mode == "batch" else realtime, 8))
