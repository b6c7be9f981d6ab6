"""Configuration: the validated settings with typed attributes, and the processors.

The schema (`config.schema.yaml`, package data) gives every key its description and default; the
workflow validates `config` against the same file. `load_settings` fills the defaults, checks the
values, resolves the processors (chained processors bring their input processors, earlier stages
first) and returns a frozen `Settings`.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from string import Template
from typing import Any, Literal

import jsonschema
import yaml

from .errors import ConfigError
from .files import canonical_json, sha256_hex

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"
PROVIDERS = ("local", "openai", "anthropic")
SELECTION_MODES = ("all", "missing", "reprocess", "sql")

__all__ = [
    "MIN_CACHE_TOKENS",
    "PROVIDERS",
    "SCHEMA_PATH",
    "CacheConfig",
    "LocalConfig",
    "Price",
    "Processor",
    "ReportLimits",
    "SDKConfig",
    "Settings",
    "Truncation",
    "coerce_command_line",
    "load_settings",
    "load_settings_file",
    "merge_config",
    "read_config",
    "resolve_processors",
    "validate_config",
]


@dataclass(frozen=True)
class Processor:
    """One kind of analysis: a prompt, an answer format and per-provider models."""

    name: str
    version: str
    description: str
    format: str  # "json" | "text"
    system_template: str
    prompt_template: str
    schema: dict[str, Any] | None
    max_tokens: int
    models: dict[str, str]
    labels: dict[str, str]
    input_processor: str | None = None  # chained: its input is this processor's results
    aggregate_by: str | None = None  # chained: one request per repo or org over the earlier results
    aggregate_chars: int = 60000  # most characters of rendered earlier answers in one aggregate request

    def model_for(self, provider: str, override: str | None = None) -> str:
        if override:
            return override
        if provider not in self.models:
            raise ConfigError(
                f"processor {self.name}: no model for provider {provider}; add processor_definitions."
                f"{self.name}.models.{provider} to config.yaml or pass --config model={provider}:MODEL"
            )
        return self.models[provider]

    def render(self, template: str, values: dict[str, str]) -> str:
        return Template(template).safe_substitute(values)


@dataclass(frozen=True)
class Truncation:
    """Character budgets for long issue text."""

    body_chars: int
    comment_chars: int
    max_comments: int


@dataclass(frozen=True)
class LocalConfig:
    """The embedded `local` provider."""

    responder: str
    base_url: str | None
    api_key_env: str | None
    concurrency: int
    state_dir: str
    delays: dict[str, float]
    faults: dict[str, Any]


@dataclass(frozen=True)
class SDKConfig:
    """An SDK provider (`openai`, `anthropic`): where it is and which variable holds its key."""

    base_url: str | None
    api_key_env: str
    timeout: float


@dataclass(frozen=True)
class ReportLimits:
    """The checks of `batchpipe report`."""

    max_pending_age_hours: float
    max_active_batches: int
    min_completion_rate: float


@dataclass(frozen=True)
class Price:
    """USD per million tokens at real-time price."""

    input: float
    output: float
    cached_input: float
    cache_write: float = 0.0  # a prompt-cache write (Anthropic bills it above input); the input price when not given


# The shortest prefix each model caches, in tokens (Anthropic's prompt-caching guide); longest name first wins.
MIN_CACHE_TOKENS: dict[str, int] = {
    "default": 1024,
    "claude-haiku-4-5": 4096,
    "claude-opus-4-5": 4096,
    "claude-opus-4-6": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}


@dataclass(frozen=True)
class CacheConfig:
    """Prompt caching: whether Anthropic prefixes are marked, whether a processor's first chunk warms the
    batch cache alone, and the shortest prefix each model caches."""

    enabled: bool = True
    warm_first: bool = True
    min_tokens: dict[str, int] = field(default_factory=lambda: dict(MIN_CACHE_TOKENS))

    def min_tokens_for(self, model: str) -> int:
        """The model's minimum cacheable prefix; a dated snapshot falls back to its family."""
        table = self.min_tokens
        if model in table:
            return table[model]
        for name in sorted(table, key=len, reverse=True):
            if name != "default" and model.startswith(name):
                return table[name]
        return table.get("default", MIN_CACHE_TOKENS["default"])


@dataclass(frozen=True)
class Settings:
    """The validated configuration, with defaults filled in; relative folders resolve against `root`."""

    root: Path
    values: dict[str, Any] = field(repr=False)  # the validated config as given (fingerprints, job processes)
    processors: tuple[Processor, ...]
    provider: str
    model_override: str | None
    project_id: str
    issues_dir: str
    results_dir: str
    requests_dir: str
    batches_dir: str
    org: str | None
    repo: str | None
    issue_number: int | None
    limit: int | None
    strict: bool
    local: LocalConfig
    openai: SDKConfig
    anthropic: SDKConfig
    enqueued_token_limit: int | dict[str, int] | None
    mode: str
    realtime_concurrency: int
    selection: str  # all | missing | reprocess | sql
    selection_sql: str | None
    threshold: float
    recycle_force: bool
    commit_results: bool
    report: ReportLimits
    chunk_size: int | Literal["auto"]
    max_attempts: int
    wait: bool
    poll_interval: float
    max_poll_interval: float
    truncation: Truncation
    batch_discount: float
    prices: dict[str, Price]
    refresh: frozenset[str] = frozenset()  # processors whose outdated results a person asked to send again
    max_cost_usd: float | None = None  # what one run may submit, by the forecast's ceiling
    max_cost_usd_per_day: float | None = None  # what the last 24 hours may have submitted, from the ledger
    include_pull_requests: bool = False  # pull requests in the issue files are selected too
    cache: CacheConfig = field(default_factory=CacheConfig)  # prompt caching

    @cached_property
    def fingerprint(self) -> str:
        return sha256_hex(canonical_json(self.values))[:16]

    @property
    def processor_names(self) -> list[str]:
        return [p.name for p in self.processors]

    def processor(self, name: str) -> Processor:
        for proc in self.processors:
            if proc.name == name:
                return proc
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(p.name for p in self.processors)}")

    def model_of(self, processor: Processor) -> str:
        """The model this processor's requests use with the configured provider."""
        return processor.model_for(self.provider, self.model_override)

    def token_limit(self, model: str) -> int | None:
        """The enqueued-token limit for a model (an integer for all, or a per-model table)."""
        limit = self.enqueued_token_limit
        if isinstance(limit, dict):
            return limit.get(model)
        return limit


# --- validation -------------------------------------------------------------------------------------


@functools.cache
def _schema() -> dict[str, Any]:
    """The config schema, read once per process (never modified)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the pure loader is slow
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        schema: dict[str, Any] = yaml.load(handle, Loader=loader)
    return schema


def _fill_defaults(validator_class: Any) -> Any:
    """A validator that also sets each missing property's default (jsonschema's documented recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _fill_defaults(jsonschema.Draft202012Validator)
_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce_command_line(values: dict[str, Any]) -> dict[str, Any]:
    """Strings from `--config key=value` turned into the booleans, nulls or numbers the schema expects, at
    any depth.

    Snakemake passes `wait=false` as the string "false", and every scalar inside a mapping
    (`local={delays: {in_progress: 40}}`) as a string; this reads each as YAML would, by its key's type."""
    for key, value in list(values.items()):
        sub = _schema()["properties"].get(key)
        if isinstance(sub, dict):
            values[key] = _coerce(value, sub)
    return values


_INTEGER = re.compile(r"[-+]?[0-9]+")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _schema_types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema allows, its `oneOf`/`anyOf` branches included."""
    types = schema.get("type", [])
    out = {types} if isinstance(types, str) else set(types)
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        if isinstance(branch, dict):
            out |= _schema_types(branch)
    return out


def _coerce(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with its strings read as the scalar type `schema` asks for (mappings and lists walked)."""
    if isinstance(value, str):
        types = _schema_types(schema)
        word = value.strip()
        if "string" in types and not ({"boolean", "null", "integer", "number"} & types):
            return value
        if "boolean" in types and word.lower() in _WORDS:
            return _WORDS[word.lower()]
        if "null" in types and word.lower() in ("null", "none", "~", ""):
            return None
        if ("integer" in types or "number" in types) and _INTEGER.fullmatch(word):
            return int(word)
        if "number" in types and _NUMBER.fullmatch(word):
            return float(word)
        return value
    if isinstance(value, dict):
        branches = [schema, *(b for b in schema.get("oneOf", []) + schema.get("anyOf", []) if isinstance(b, dict))]
        for key, item in list(value.items()):
            for branch in branches:
                sub = branch.get("properties", {}).get(key)
                extra = branch.get("additionalProperties")
                sub = sub if isinstance(sub, dict) else extra if isinstance(extra, dict) else None
                if sub is not None:
                    value[key] = _coerce(item, sub)
                    break
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(item, schema["items"]) for item in value]
    return value


def validate_config(values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults and validate; raise ConfigError naming the key and the problem."""
    values = coerce_command_line(copy.deepcopy(values))
    errors = sorted(_DefaultFillingValidator(_schema()).iter_errors(values), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"{source}: {where}: {err.message}; fix it in config.yaml or with --config")
    return values


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base` key by key, nested mappings merged, as Snakemake's `update_config` does (in place)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _read_one(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; run from the project folder or pass --configfile") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file is a mapping of keys to values")
    return values


def read_config(path: str | Path | Sequence[str | Path], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read one YAML config file, or several laid over each other in order, then the overrides on top: later
    values replace earlier ones key by key and nested mappings merge, as `snakemake --configfile a b
    --config ...` does."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    values: dict[str, Any] = {}
    for one in paths:
        merge_config(values, _read_one(one))
    return merge_config(values, overrides or {})


# --- processors -----------------------------------------------------------------------------------


def resolve_processors(selected: list[str], definitions: dict[str, Any], source: str = "config") -> list[str]:
    """The processors to run: the selected ones plus the input processors they need, earlier stages first
    (otherwise in the given order). Raises ConfigError for an unknown input, a cycle, an aggregate
    without an input, or a chain over an aggregate's (per-group) results."""
    order: list[str] = []

    def visit(name: str, trail: list[str]) -> None:
        if name in order:
            return
        if name in trail:
            cycle = " -> ".join(trail[trail.index(name) :] + [name])
            raise ConfigError(f"{source}: processor_definitions.{name}.input_processor: the chain is a cycle ({cycle})")
        spec = definitions[name]
        earlier = spec.get("input_processor")
        if earlier is not None:
            if earlier not in definitions:
                raise ConfigError(
                    f"{source}: processor_definitions.{name}.input_processor: unknown processor "
                    f"{earlier!r}; known: {', '.join(definitions)}"
                )
            if definitions[earlier].get("aggregate_by"):
                raise ConfigError(
                    f"{source}: processor_definitions.{name}.input_processor: {earlier} aggregates "
                    "(one result per group, not per issue); a chain can only start from per-issue results"
                )
            visit(earlier, trail + [name])
        elif spec.get("aggregate_by"):
            raise ConfigError(
                f"{source}: processor_definitions.{name}.aggregate_by: needs input_processor "
                "(an aggregate is made from an earlier processor's results)"
            )
        order.append(name)

    for name in selected:
        visit(name, [])
    return order


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


def _load_processor(root: Path, name: str, spec: dict[str, Any]) -> Processor:
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


def _sdk(values: dict[str, Any]) -> SDKConfig:
    return SDKConfig(values.get("base_url"), values["api_key_env"], float(values["timeout"]))


def _local(values: dict[str, Any]) -> LocalConfig:
    delays = {k: float(values["delays"].get(k, 0)) for k in ("validating", "in_progress", "finalizing")}
    return LocalConfig(
        responder=values["responder"],
        base_url=values.get("base_url"),
        api_key_env=values.get("api_key_env"),
        concurrency=int(values["concurrency"]),
        state_dir=values["state_dir"],
        delays=delays,
        faults=dict(values.get("faults") or {}),
    )


def _prices(values: dict[str, Any]) -> dict[str, Price]:
    """The price table; a missing `cache_write` is what the provider bills for the cache the requests ask
    for: twice the input price for Claude (the 1-hour cache), the input price elsewhere."""
    return {
        model: Price(
            float(p["input"]),
            float(p["output"]),
            float(p.get("cached_input", p["input"])),
            float(p.get("cache_write", p["input"] * (2 if model.startswith("claude") else 1))),
        )
        for model, p in values.items()
    }


def load_settings(values: dict[str, Any], root: str | Path = ".", source: str = "config") -> Settings:
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
    selected = values["processors"] = resolve_processors(selected, definitions, source)
    provider, model = _split_model(values["provider"], values["model"])
    processors = tuple(_load_processor(root, name, definitions[name]) for name in selected)
    selection = values["selection"]
    return Settings(
        root=root,
        values=values,
        processors=processors,
        provider=provider,
        model_override=model,
        project_id=values["project_id"] or "batchpipe",
        issues_dir=values["issues_dir"],
        results_dir=values["results_dir"],
        requests_dir=values["requests_dir"],
        batches_dir=values["batches_dir"],
        org=values["org"],
        repo=values["repo"],
        issue_number=values["issue_number"],
        limit=values["limit"],
        strict=values["strict"],
        local=_local(values["local"]),
        openai=_sdk(values["openai"]),
        anthropic=_sdk(values["anthropic"]),
        enqueued_token_limit=values["enqueued_token_limit"],
        mode=values["mode"],
        realtime_concurrency=values["realtime_concurrency"],
        selection="sql" if isinstance(selection, dict) else selection,
        selection_sql=selection["sql"] if isinstance(selection, dict) else None,
        threshold=float(values["threshold"]),
        recycle_force=values["recycle_force"],
        commit_results=values["commit_results"],
        report=ReportLimits(
            float(values["report"]["max_pending_age_hours"]),
            int(values["report"]["max_active_batches"]),
            float(values["report"]["min_completion_rate"]),
        ),
        chunk_size=values["chunk_size"],
        max_attempts=values["max_attempts"],
        wait=values["wait"],
        poll_interval=float(values["poll_interval"]),
        max_poll_interval=float(values["max_poll_interval"]),
        truncation=Truncation(**values["truncation"]),
        batch_discount=float(values["batch_discount"]),
        prices=_prices(values["prices"]),
        refresh=_refresh(values["refresh"], [p.name for p in processors], source),
        max_cost_usd=_float_or_none(values["max_cost_usd"]),
        max_cost_usd_per_day=_float_or_none(values["max_cost_usd_per_day"]),
        include_pull_requests=bool(values["include_pull_requests"]),
        cache=CacheConfig(
            bool(values["cache"]["enabled"]),
            bool(values["cache"]["warm_first"]),
            {**MIN_CACHE_TOKENS, **{k: int(v) for k, v in values["cache"]["min_tokens"].items()}},
        ),
    )


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _refresh(value: str | None, names: list[str], source: str) -> frozenset[str]:
    """`refresh: outdated` (every processor) or `outdated:NAME[,NAME]`: whose outdated results are sent."""
    if not value:
        return frozenset()
    head, _, tail = value.partition(":")
    if head != "outdated":
        raise ConfigError(f"{source}: refresh: {value!r}; write outdated or outdated:PROCESSOR[,PROCESSOR]")
    wanted = [n.strip() for n in tail.split(",") if n.strip()] or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ConfigError(f"{source}: refresh: {unknown[0]!r} is not a processor of this run; run: {', '.join(names)}")
    return frozenset(wanted)


def load_settings_file(
    path: str | Path | Sequence[str | Path] = "config.yaml", overrides: dict[str, Any] | None = None
) -> Settings:
    """The settings of a config file (or of several, laid over each other in order); relative folders
    resolve against the first file's folder."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise ConfigError("no config file given")
    source = " + ".join(str(p) for p in paths)
    return load_settings(read_config(paths, overrides), root=paths[0].resolve().parent, source=source)
