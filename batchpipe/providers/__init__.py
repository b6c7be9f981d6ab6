"""Batch providers: `local` (embedded, offline), `openai` and `anthropic` (official SDKs).

`make_provider` builds the configured one; `wire_for` names a provider's request format without
building it (request files are written offline)."""

from __future__ import annotations

from ..config import Settings
from ..layout import Layout
from .anthropic_wire import AnthropicWire
from .base import BatchMatch, BatchStatus, Outcome, Provider
from .openai_wire import OpenAIWire
from .wire import Wire

__all__ = ["BatchMatch", "BatchStatus", "Outcome", "Provider", "Wire", "make_provider", "wire_for"]


def wire_for(provider: str) -> type[Wire]:
    """The request and result format of a provider (`local` speaks OpenAI's)."""
    return AnthropicWire if provider == "anthropic" else OpenAIWire


def make_provider(settings: Settings) -> Provider:
    """The configured provider. Real providers import their SDK only here (importing them is slow)."""
    name = settings.provider
    if name == "local":
        from .local import LocalProvider

        return LocalProvider.from_config(settings.local, Layout(settings).local_state_dir)
    if name == "openai":
        from .openai_batches import OpenAIProvider

        return OpenAIProvider.from_settings(settings)
    if name == "anthropic":
        from .anthropic_batches import AnthropicProvider

        return AnthropicProvider.from_settings(settings)
    from ..errors import ProviderError

    raise ProviderError(f"unknown provider {name!r}; use local, openai or anthropic")
