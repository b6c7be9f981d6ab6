"""Configuration: defaults, one-line errors, the provider:model override, --config coercion."""

from __future__ import annotations

import pytest

from batchpipe.config import ConfigError, load_settings_file

from conftest import REPO


def test_defaults_and_model_override_select_provider_and_model():
    settings = load_settings_file(REPO / "config.yaml", {"model": "openai:gpt-4o"})
    assert settings.provider == "openai" and settings.model_override == "gpt-4o"
    assert settings.processor("product-labeling").model_for(settings.provider, settings.model_override) == "gpt-4o"
    plain = load_settings_file(REPO / "config.yaml")
    assert plain.provider == "local" and plain.chunk_size == 30 and plain.max_attempts == 3
    assert plain.processor("product-labeling").model_for("anthropic") == "claude-haiku-4-5"


def test_command_line_strings_are_read_by_the_key_type():
    settings = load_settings_file(REPO / "config.yaml", {"wait": "false", "limit": "5", "org": "null"})
    assert settings.wait is False and settings.limit == 5 and settings.org is None


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"provider": "gemini"}, "provider"),
        ({"processors": ["nope"]}, "unknown processor 'nope'"),
        ({"model": "openai:"}, "no model name"),
    ],
)
def test_bad_values_get_one_line_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_settings_file(REPO / "config.yaml", overrides)
    assert words in str(err.value) and "\n" not in str(err.value)
