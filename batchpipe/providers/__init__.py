"""Batch providers: `local` (embedded, offline), `openai` and `anthropic` (official SDKs)."""

from __future__ import annotations

from ..config import Settings
from .base import BatchStatus, MissingKey, Outcome, Provider, ProviderError


def make_provider(settings: Settings) -> Provider:
    """The configured provider. Real providers import their SDK only here (importing them is slow)."""
    name = settings.provider
    if name == "local":
        from .local import LocalProvider

        return LocalProvider.from_settings(settings)
    if name == "openai":
        from .openai_batches import OpenAIProvider

        return OpenAIProvider.from_settings(settings)
    if name == "anthropic":
        from .anthropic_batches import AnthropicProvider

        return AnthropicProvider.from_settings(settings)
    raise ProviderError(f"unknown provider {name!r}; use local, openai or anthropic")


__all__ = ["BatchStatus", "MissingKey", "Outcome", "Provider", "ProviderError", "make_provider"]
