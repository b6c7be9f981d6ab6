"""The forecast: what requests will cost before they are sent, as an expected figure and as a ceiling.

Per request the plan knows two input sizes: an estimate (a token per 4 characters of the prompt) and a
bound, the bytes of the request as JSON (prompt, schema and envelope): a token is at least one byte, so
no tokenizer counts more tokens than that. The ceiling prices that bound as if every input token were a
cache write (the dearer of input and cache-write prices) and every answer ran to `max_tokens`: the
actual cost never exceeds it. The expected figure prices the estimate, and the answers at the mean
output of the processor's answers so far (before the first, a guess: `EXPECTED_OUTPUT_SHARE` of
`max_tokens`); once the processor has answers it is a guide within about `EXPECTED_MARGIN` either way,
not a promise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import Settings
from .pricing import price_for

__all__ = [
    "EXPECTED_MARGIN",
    "EXPECTED_OUTPUT_SHARE",
    "REQUEST_OVERHEAD_TOKENS",
    "Forecast",
    "Tally",
    "ceiling_usd",
    "describe_forecasts",
    "forecast",
]

EXPECTED_OUTPUT_SHARE = 0.25  # an answer's expected length before any answer of the processor is known
EXPECTED_MARGIN = 0.5  # the expected cost is a guide: the actual one is usually within ±50 % of it
# Tokens a provider adds to a request that are not in its bytes (Anthropic's tool-use system prompt is
# about 350): the ceiling adds them to every request.
REQUEST_OVERHEAD_TOKENS = 512


@dataclass
class Tally:
    """Tokens of a set of requests: expected, and at most."""

    requests: int = 0
    input_tokens: int = 0  # expected
    output_tokens: int = 0  # expected
    max_input_tokens: int = 0  # the ceiling: the requests' bytes
    max_output_tokens: int = 0  # the ceiling: max_tokens each

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.max_input_tokens += other.max_input_tokens
        self.max_output_tokens += other.max_output_tokens

    def to_json(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "max_input_tokens": self.max_input_tokens,
            "max_output_tokens": self.max_output_tokens,
        }


@dataclass
class Forecast:
    """A processor's new requests for one model, with their costs in USD (None: the model has no price)."""

    processor: str
    model: str
    tally: Tally = field(default_factory=Tally)
    expected_batch: float | None = None
    expected_realtime: float | None = None
    ceiling_batch: float | None = None
    ceiling_realtime: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "processor": self.processor,
            "model": self.model,
            **self.tally.to_json(),
            "cost_usd": {
                "expected": {"batch": self.expected_batch, "realtime": self.expected_realtime},
                "ceiling": {"batch": self.ceiling_batch, "realtime": self.ceiling_realtime},
            },
        }


def _usd(per_million: float, tokens: int) -> float:
    return per_million * tokens / 1e6


def forecast(settings: Settings, processor: str, model: str, tally: Tally) -> Forecast:
    """The costs of a tally at the price table's real-time price and at batch price."""
    out = Forecast(processor, model, tally)
    price = price_for(settings, model)
    if price is None:
        return out
    expected = _usd(price.input, tally.input_tokens) + _usd(price.output, tally.output_tokens)
    max_input = tally.max_input_tokens + REQUEST_OVERHEAD_TOKENS * tally.requests
    ceiling = _usd(max(price.input, price.cache_write), max_input) + _usd(price.output, tally.max_output_tokens)
    out.expected_realtime, out.ceiling_realtime = round(expected, 6), _up(ceiling)
    out.expected_batch = round(expected * settings.batch_discount, 6)
    out.ceiling_batch = _up(ceiling * settings.batch_discount)
    return out


def _up(usd: float) -> float:
    """Rounded up to a millionth of a dollar: a ceiling is never rounded below what it bounds."""
    return math.ceil(round(usd * 1e6, 3)) / 1e6


def ceiling_usd(settings: Settings, model: str, tally: Tally) -> float:
    """What the requests cost at most in the run's mode (batch or real-time price); 0 for a model with no
    price (a cap cannot hold what it cannot price: the forecast says it has no price)."""
    f = forecast(settings, "", model, tally)
    value = f.ceiling_realtime if settings.mode == "realtime" else f.ceiling_batch
    return value or 0.0


def _money(value: float | None) -> str:
    return "no price" if value is None else f"${value:,.4f}"


def describe_forecasts(forecasts: Iterable[Forecast], mode: str) -> list[str]:
    """The forecast as lines: per processor and model, then the total (only priced models add up)."""
    rows = [f for f in forecasts if f.tally.requests]
    if not rows:
        return []
    paid = "batch" if mode == "batch" else "real-time"
    margin = f"{EXPECTED_MARGIN * 100:.0f} %"
    lines = [
        f"batchpipe forecast ({paid} price is what this run pays; "
        f"expected within about ±{margin} once answers are known):"
    ]
    total = Tally()
    sums = [0.0, 0.0, 0.0, 0.0]
    for f in rows:
        t = f.tally
        head = (
            f"  {f.processor} ({f.model}): {t.requests} request(s), ~{t.input_tokens:,} input and "
            f"~{t.output_tokens:,} output tokens"
        )
        if f.expected_batch is None:
            lines.append(f"{head}; no price for {f.model}")
        else:
            lines.append(
                f"{head}; expected {_money(f.expected_batch)} at batch price, {_money(f.expected_realtime)} "
                f"real-time; at most {_money(f.ceiling_batch)} batch, {_money(f.ceiling_realtime)} real-time"
            )
        total.add(t)
        for i, v in enumerate((f.expected_batch, f.expected_realtime, f.ceiling_batch, f.ceiling_realtime)):
            sums[i] += v or 0.0
    unpriced = sorted({f.model for f in rows if f.expected_batch is None})
    lines.append(
        f"  total: {total.requests} request(s); expected ${sums[0]:,.4f} at batch price, ${sums[1]:,.4f} "
        f"real-time; at most ${sums[2]:,.4f} batch, ${sums[3]:,.4f} real-time"
        + (f" (no price for {', '.join(unpriced)}: add it under prices)" if unpriced else "")
    )
    return lines
