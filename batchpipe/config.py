"""Configuration: defaults and validation from schemas/config.schema.yaml, and the processors."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from string import Template
from typing import Any

import jsonschema
import yaml

from .files import canonical_json, sha256_hex

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
PROVIDERS = ("local", "openai", "anthropic")


class ConfigError(Exception):
    """A bad configuration value; the message is one line saying where and what to do."""


@dataclass(frozen=True)
class Processor:
    """One kind of analysis: a prompt, an answer format and per-provider models."""

    name: str
    version: str
    description: str
    format: str  # "json" | "text"
    system_template: str
    prompt_template: str
    schema: dict | None
    max_tokens: int
    models: dict[str, str]
    labels: dict[str, str]
    input_processor: str | None = None  # chained: its input is this processor's results (stages.py)
    aggregate_by: str | None = None  # chained: one request per repo or org over the earlier results
    aggregate_chars: int = 60000  # most characters of rendered earlier answers in one aggregate request

    def model_for(self, provider: str, override: str | None = None) -> str:
        if override:
            return override
        if provider not in self.models:
            raise ConfigError(
                f"processor {self.name}: no model for provider {provider}; "
                f"add processor_definitions.{self.name}.models.{provider} to config.yaml or pass --config model={provider}:MODEL"
            )
        return self.models[provider]

    def render(self, template: str, values: dict[str, str]) -> str:
        return Template(template).safe_substitute(values)


@dataclass(frozen=True)
class Settings:
    """The validated configuration, with defaults filled in and paths resolved against `root`."""

    root: Path
    values: dict[str, Any] = field(repr=False)
    processors: tuple[Processor, ...]
    provider: str
    model_override: str | None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def path(self, key: str) -> Path:
        return self.root / self.values[key]

    @cached_property
    def fingerprint(self) -> str:
        return sha256_hex(canonical_json(self.values))[:16]

    def processor(self, name: str) -> Processor:
        for proc in self.processors:
            if proc.name == name:
                return proc
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(p.name for p in self.processors)}")


def _schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _fill_defaults(validator_class):
    """A validator that also sets each missing property's default (jsonschema's documented recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _fill_defaults(jsonschema.Draft202012Validator)


_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce_command_line(values: dict) -> dict:
    """Top-level strings from `--config key=value` turned into the booleans, nulls or lists the schema expects.

    Snakemake passes `wait=false` as the string "false"; this reads it as YAML would, by the key's type."""
    properties = _schema()["properties"]
    for key, value in list(values.items()):
        if not isinstance(value, str) or key not in properties:
            continue
        types = properties[key].get("type", [])
        types = [types] if isinstance(types, str) else types
        word = value.strip().lower()
        if "boolean" in types and word in _WORDS:
            values[key] = _WORDS[word]
        elif "null" in types and word in ("null", "none", "~", ""):
            values[key] = None
        elif "integer" in types and word.lstrip("-").isdigit():
            values[key] = int(word)
    return values


def validate_config(values: dict, source: str = "config") -> dict:
    """Fill defaults and validate; raise ConfigError naming the key and the problem."""
    values = coerce_command_line(copy.deepcopy(values))
    errors = sorted(_DefaultFillingValidator(_schema()).iter_errors(values), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"{source}: {where}: {err.message}; fix it in config.yaml or with --config")
    return values


def read_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config file, merge top-level overrides."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; run from the project folder or pass --configfile") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    values.update(overrides or {})
    return values


def _text_or_file(root: Path, value: str | None) -> str:
    """A template given inline or as a path to a file under root."""
    if not value:
        return ""
    candidate = root / value
    if "\n" not in value and len(value) < 300 and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    return value


def _with_label_enum(schema: Any, labels: list[str]) -> Any:
    """Copy of `schema` where every string property named `label` gets the label set as enum."""
    if isinstance(schema, list):
        return [_with_label_enum(item, labels) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            props = {}
            for name, sub in value.items():
                sub = _with_label_enum(sub, labels)
                if name == "label" and isinstance(sub, dict) and sub.get("type") == "string" and "enum" not in sub:
                    sub = {**sub, "enum": list(labels)}
                props[name] = sub
            out[key] = props
        else:
            out[key] = _with_label_enum(value, labels)
    return out


def _load_processor(root: Path, name: str, spec: dict) -> Processor:
    schema = spec.get("schema")
    if isinstance(schema, str):
        path = root / schema
        try:
            with open(path, encoding="utf-8") as handle:
                schema = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"processor {name}: cannot read schema {schema}: {exc}") from None
    if spec["format"] == "json":
        if not isinstance(schema, dict):
            raise ConfigError(f"processor {name}: format json needs a schema (a file path or an inline object)")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"processor {name}: its schema is not a valid JSON Schema: {exc.message}") from None
        if spec.get("labels"):
            schema = _with_label_enum(schema, list(spec["labels"]))
    else:
        schema = None
    prompt = _text_or_file(root, spec["prompt"])
    if not prompt.strip():
        raise ConfigError(f"processor {name}: empty prompt template")
    return Processor(
        name=name,
        version=str(spec.get("version", "1.0")),
        description=spec.get("description", ""),
        format=spec["format"],
        system_template=_text_or_file(root, spec.get("system")),
        prompt_template=prompt,
        schema=schema,
        max_tokens=int(spec.get("max_tokens", 1024)),
        models=dict(spec.get("models", {})),
        labels=dict(spec.get("labels", {})),
        input_processor=spec.get("input_processor"),
        aggregate_by=spec.get("aggregate_by"),
        aggregate_chars=int(spec.get("aggregate_chars", 60000)),
    )


def _split_model(provider: str, model: str | None) -> tuple[str, str | None]:
    """`openai:gpt-4o-mini` selects provider and model; a bare name is a model for `provider`."""
    if not model:
        return provider, None
    head, sep, tail = model.partition(":")
    if sep and head in PROVIDERS:
        if not tail:
            raise ConfigError(f"model {model!r}: no model name after '{head}:'; write e.g. openai:gpt-4o-mini")
        return head, tail
    return provider, model


def load_settings(values: dict, root: str | Path = ".", source: str = "config") -> Settings:
    """Validate a raw config dict and resolve its processors."""
    root = Path(root)
    values = validate_config(values, source)
    selected = values["processors"]
    if isinstance(selected, str):
        selected = [p.strip() for p in selected.split(",") if p.strip()]
        values["processors"] = selected
    definitions = values["processor_definitions"]
    unknown = [name for name in selected if name not in definitions]
    if unknown:
        raise ConfigError(
            f"{source}: processors: unknown processor {unknown[0]!r}; known: {', '.join(definitions) or 'none'}"
        )
    if not selected:
        raise ConfigError(f"{source}: processors: the list is empty; name at least one processor")
    from .stages import resolve_processors  # chained processors: their inputs join, earlier stages first

    selected = values["processors"] = resolve_processors(selected, definitions, source)
    provider, model = _split_model(values["provider"], values["model"])
    processors = tuple(_load_processor(root, name, definitions[name]) for name in selected)
    return Settings(root=root, values=values, processors=processors, provider=provider, model_override=model)


def load_settings_file(path: str | Path = "config.yaml", overrides: dict | None = None) -> Settings:
    path = Path(path)
    return load_settings(read_config(path, overrides), root=path.resolve().parent, source=str(path))
