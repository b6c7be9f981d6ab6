"""Responders: answer one provider-neutral request. The batch engine converts native requests to these.

- `OfflineResponder`: no network, deterministic placeholder answers (they satisfy the requested JSON
  Schema, but analyse nothing), in the name of the model asked for, with tokens counted by the service
  itself (`count_tokens`: words and punctuation marks, not the planner's 4 characters a token), so that
  forecasts, caps and spend meet the price table on every path without a key.
- `OpenAICompatibleResponder`: forwards each request to a chat-completions server (vLLM, Ollama,
  llama.cpp server, ...) through the official `openai` SDK, with bounded concurrency.
"""

from __future__ import annotations

import codecs
import copy
import functools
import hashlib
import json
import math
import os
import random
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..files import canonical_json
from ..request import NeutralRequest

if TYPE_CHECKING:
    from openai import OpenAI

    from ..config import LocalConfig

# How a simulated answer is marked on the wire, never by its model name (a model name may be the one asked
# for): OpenAI's `system_fingerprint`, and the prefix of Anthropic's message id. Real providers send neither.
SIMULATED_FINGERPRINT = "batchpipe-simulated"
SIMULATED_MESSAGE_ID = "msg_batchpipe_simulated_"


@dataclass
class NeutralError:
    """An HTTP-level failure of one request."""

    status: int
    type: str
    message: str
    code: str | None = None


@dataclass
class NeutralAnswer:
    """The answer to one request: `text`, or `data` (parsed JSON; `text` may then hold its JSON form),
    or an `error`."""

    text: str | None = None
    data: Any = None
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    error: NeutralError | None = None
    simulated: bool = False  # a placeholder, not a model's answer: marked on the wire
    cache_read_tokens: int = 0  # of input_tokens: the prompt-cache reads and writes (the engine's simulation)
    cache_write_tokens: int = 0

    def as_text(self) -> str:
        if self.text is not None:
            return self.text
        return json.dumps(self.data, ensure_ascii=False)


class Responder:
    """Answers requests. Subclasses implement `respond`; `respond_many` may add concurrency."""

    def respond(self, req: NeutralRequest) -> NeutralAnswer:
        raise NotImplementedError

    def respond_many(self, reqs: list[NeutralRequest]) -> list[NeutralAnswer]:
        return [self.respond(req) for req in reqs]


_TOKEN = re.compile(r"\w+|[^\w\s]")  # what `count_tokens` counts, by its definition
_ASCII_SPACE = bytes(i for i in range(128) if _TOKEN.match(chr(i)) is None)  # \s: also \x1c-\x1f
_ASCII_WORD = bytes(i for i in range(128) if re.match(r"\w", chr(i)))
_NOT_MARKS = _ASCII_SPACE + _ASCII_WORD
_WORDS_APART = bytes(0x61 if i in _ASCII_WORD else 0x20 for i in range(256))  # a word run -> "aaa", else " "
_TOKEN_CLASS = "batchpipe.token_class"


def _token_class(error: UnicodeError) -> tuple[str, int]:
    """Encoding to ASCII, each other character becomes one of its class for `count_tokens`: `a` (a word
    character: alphanumeric or `_`), a space (whitespace) or `!` (a punctuation mark), as the regex sees it."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    run = error.object[error.start : error.end]
    return "".join("a" if c.isalnum() or c == "_" else " " if c.isspace() else "!" for c in run), error.end


codecs.register_error(_TOKEN_CLASS, _token_class)


def count_tokens(text: str) -> int:
    """The service's token count: words and punctuation marks (the matches of `_TOKEN`). Each is at least one
    character, so a request's count never exceeds its bytes (the forecast's ceiling), and it is not the
    planner's estimate. The offline responder counts every request, so it is counted on bytes, not by the
    regex: the text as ASCII with each other character replaced by one of its class, then its word runs
    (counted where one starts, with no list of them made) and its punctuation marks (what is left once word
    and space bytes are deleted)."""
    ascii_text = text.encode("ascii", _TOKEN_CLASS)
    marks = len(ascii_text.translate(None, _NOT_MARKS))
    runs = ascii_text.translate(_WORDS_APART)  # a run starts at an "a" after a space, or at the start
    return runs.count(b" a") + runs.startswith(b"a") + marks


def prefix_text(req: NeutralRequest, schema_json: str | None = None) -> str:
    """The part of a request shared by a processor's requests, as it is sent first: the answer's schema (the
    tool or response format), then the system prompt. `schema_json`: `canonical_json(req.schema)`, when the
    caller has it."""
    if req.schema is None:
        schema = ""
    else:
        schema = schema_json if schema_json is not None else canonical_json(req.schema)
    return "\n".join(part for part in (schema, req.system) if part)


def prompt_text(req: NeutralRequest) -> str:
    """Everything the model reads: the shared prefix, then the messages."""
    return "\n".join([prefix_text(req), *(m["content"] for m in req.messages)])


def input_tokens(req: NeutralRequest, schema_json: str | None = None) -> int:
    """`count_tokens(prompt_text(req))`, counted a part at a time: no token spans the line break joining two
    parts, and the shared prefix's count is kept (it is most of a short request's text)."""
    return _prefix_tokens(prefix_text(req, schema_json)) + sum(count_tokens(m["content"]) for m in req.messages)


@functools.lru_cache(maxsize=256)
def _prefix_tokens(prefix: str) -> int:
    return count_tokens(prefix)


def output_tokens(req: NeutralRequest, text: str) -> int:
    """An answer's tokens, at most the request's max_tokens (a model stops there)."""
    count = count_tokens(text)
    return min(count, req.max_tokens) if req.max_tokens else count


# --- offline answers ---------------------------------------------------------------------------

_WORDS = (
    "placeholder answer deterministic offline sample value label issue component behaviour "
    "report request detail context summary step check result note"
).split()


@dataclass(frozen=True)
class _Shared:
    """What a processor's requests share, encoded once: the model, system prompt and schema they are
    compared by, the schema's text, and the seed text's bytes around the messages."""

    model: str
    system: str | None
    schema: Any
    scalars: list[tuple[tuple[Any, ...], type]]  # where the schema holds a number or boolean, and its type
    schema_json: str
    head: bytes  # `[model,system,`
    tail: bytes  # `,schema]`

    def fits(self, req: NeutralRequest) -> bool:
        """Whether `req` shares these parts. Equal schemas may differ in text where `1 == 1.0 == True`: the
        types at the schema's numbers and booleans are compared too."""
        if self.model != req.model or self.system != req.system or self.schema != req.schema:
            return False
        for path, kind in self.scalars:
            value: Any = req.schema
            for step in path:
                value = value[step]
            if type(value) is not kind:
                return False
        return True


def _scalars(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], type]]:
    """The paths to the numbers and booleans in a JSON value, with their types."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _scalars(item, (*path, key))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _scalars(item, (*path, index))]
    return [(path, type(value))] if isinstance(value, (bool, int, float)) else []


class OfflineResponder(Responder):
    """Deterministic placeholder answers, seeded from a hash of the request. No network, no model."""

    _shared: _Shared | None = None  # the last request's shared parts (a batch's requests mostly share them)

    def _parts(self, req: NeutralRequest) -> _Shared:
        shared = self._shared
        if shared is None or not shared.fits(req):
            schema = copy.deepcopy(req.schema)  # its own: a caller's schema changed in place is another one
            schema_json = canonical_json(schema)
            head = f"[{canonical_json(req.model)},{canonical_json(req.system)},".encode()
            shared = _Shared(
                req.model, req.system, schema, _scalars(schema), schema_json, head, f",{schema_json}]".encode()
            )
            self._shared = shared
        return shared

    def respond(self, req: NeutralRequest) -> NeutralAnswer:
        # the seed is a hash of `canonical_json([model, system, messages, schema])`, made of its items' texts
        # (a list's text is theirs, joined): the schema's is counted among the input tokens too
        shared = self._parts(req)
        seed = hashlib.sha256(shared.head)
        seed.update(canonical_json(req.messages).encode())
        seed.update(shared.tail)
        schema_json = shared.schema_json
        rng = random.Random(int(seed.hexdigest()[:16], 16))
        if req.schema is not None:
            data = generate_from_schema(req.schema, rng)
            answer = NeutralAnswer(data=data, text=json.dumps(data, ensure_ascii=False))
        else:
            answer = NeutralAnswer(text=offline_markdown(find_title(req), rng))
        answer.model = req.model  # the model asked for: its price applies (the wire marks the answer simulated)
        answer.simulated = True
        answer.input_tokens = input_tokens(req, schema_json)
        answer.output_tokens = output_tokens(req, answer.as_text())
        return answer


def find_title(req: NeutralRequest) -> str:
    """The issue title in the first user message: a `Title:` or `# ` line, else its first line."""
    user = next((m["content"] for m in req.messages if m["role"] == "user"), "")
    for pattern in (r"^\s*Title:\s*(.+?)\s*$", r"^\s*#+\s+(.+?)\s*$"):
        found = re.search(pattern, user, re.MULTILINE | re.IGNORECASE)
        if found:
            return found.group(1)
    return next((line.strip() for line in user.splitlines() if line.strip()), "this issue")


def offline_markdown(title: str, rng: random.Random) -> str:
    """A short Markdown text with material for later extraction (a TODO line, numbered steps)."""
    title = title.replace('"', "'")[:120]
    first = rng.choice(["Reproduce", "Confirm", "Narrow down"])
    second = rng.choice(["Add a regression test", "Write a minimal fix", "Ask the reporter for details"])
    return "\n".join(
        [
            f'## Summary: "{title}"',
            "",
            "Deterministic placeholder from batchpipe-offline: this text does not analyse the issue.",
            "",
            f'**Step 1: {first} "{title}"** with the smallest setup that shows it.',
            f"**Step 2: {second}** and link it to the issue.",
            "",
            f'TODO: decide whether "{title}" needs a fix, a reply or a label.',
        ]
    )


def generate_from_schema(schema: Any, rng: random.Random, root: Any = None, depth: int = 0, hint: str = "value") -> Any:
    """A value satisfying `schema`, chosen with `rng`. Covers the usual subset of JSON Schema: object
    (properties, required, additionalProperties, minProperties), array (items, prefixItems, minItems,
    maxItems, uniqueItems), string (enum, minLength, maxLength, common formats; not `pattern`),
    number/integer (minimum, maximum, exclusive bounds, multipleOf), boolean, null, const, enum,
    anyOf/oneOf/allOf and local $ref."""
    root = schema if root is None else root
    if schema is True or not isinstance(schema, dict) or not schema:
        return _text(hint, rng)
    if "$ref" in schema:
        return generate_from_schema(_resolve_ref(root, schema["$ref"]), rng, root, depth + 1, hint)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "allOf" in schema:
        return generate_from_schema(_merge_all_of(schema, root), rng, root, depth, hint)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return _one_branch(schema, key, rng, root, depth, hint)
    kind = schema.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"]
        kind = rng.choice(real) if real else "null"
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return _GENERATORS[kind](schema, rng, root, depth, hint)


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        raise ValueError(f"only local $ref are supported, not {ref!r}")
    node = root
    for part in filter(None, ref[1:].split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _resolve_ref(root, part["$ref"]) if "$ref" in part else part
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = sorted({*merged.get("required", []), *value})
            else:
                merged.setdefault(key, value)
    return merged


def _one_branch(schema: dict[str, Any], key: str, rng: random.Random, root: Any, depth: int, hint: str) -> Any:
    """Pick a non-null branch; for oneOf, keep the first candidate that matches exactly one branch."""
    branches = schema[key]
    order = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")] or branches
    order = order[:]
    rng.shuffle(order)
    candidates = [generate_from_schema(b, rng, root, depth + 1, hint) for b in order]
    if key == "anyOf":
        return candidates[0]
    import jsonschema  # only needed for oneOf

    for value in candidates:
        hits = sum(
            jsonschema.Draft202012Validator({**b, **_defs(root)}).is_valid(value)
            for b in branches
            if isinstance(b, dict)
        )
        if hits == 1:
            return value
    return candidates[0]


def _defs(root: Any) -> dict[str, Any]:
    return {k: root[k] for k in ("$defs", "definitions") if isinstance(root, dict) and k in root}


def _object(schema: dict[str, Any], rng: random.Random, root: Any, depth: int, hint: str) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if name in required or depth < 4:
            out[name] = generate_from_schema(sub, rng, root, depth + 1, name)
    extra = schema.get("additionalProperties", True)
    index = 0
    while len(out) < schema.get("minProperties", 0) and extra is not False:
        out[f"extra_{index}"] = generate_from_schema(
            extra if isinstance(extra, dict) else {}, rng, root, depth + 1, "extra"
        )
        index += 1
    return out


def _array(schema: dict[str, Any], rng: random.Random, root: Any, depth: int, hint: str) -> list[Any]:
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    lo, hi = max(low, 1), max(low, 1) + (2 if depth < 4 else 0)
    if high is not None:
        lo, hi = min(lo, high), min(hi, high)
    size = rng.randint(lo, hi)
    prefix = schema.get("prefixItems", [])
    items = schema.get("items", {})
    singular = hint[:-1] if hint.endswith("s") else hint
    enum = items.get("enum") if isinstance(items, dict) else None
    if schema.get("uniqueItems") and enum:
        return rng.sample(enum, min(size, len(enum)))
    out: list[Any] = []
    for index in range(size):
        sub = prefix[index] if index < len(prefix) else items
        value = generate_from_schema(sub, rng, root, depth + 1, singular)
        for attempt in range(5 if schema.get("uniqueItems") else 0):
            if value not in out:
                break
            value = generate_from_schema(sub, rng, root, depth + 1, f"{singular} {index} {attempt}")
        out.append(value)
    return out


_FORMATS = {
    "date": "2024-01-15",
    "date-time": "2024-01-15T12:00:00Z",
    "time": "12:00:00Z",
    "email": "placeholder@example.com",
    "uri": "https://example.com/placeholder",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _text(hint: str, rng: random.Random) -> str:
    words = [hint.replace("_", " ")] + rng.sample(_WORDS, 3)
    return " ".join(words).capitalize() + "."


def _string(schema: dict[str, Any], rng: random.Random, root: Any, depth: int, hint: str) -> str:
    text = _FORMATS.get(schema.get("format", "")) or _text(hint, rng)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(text) < low:
        text += "x" * (low - len(text))
    if high is not None:
        text = text[:high]
    return text


def _number(
    schema: dict[str, Any], rng: random.Random, root: Any, depth: int, hint: str, integer: bool = False
) -> float | int:
    step = 1 if integer else 0.01
    low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    if _is_number(schema.get("exclusiveMinimum")):
        low = max(low, schema["exclusiveMinimum"] + step)
    if _is_number(schema.get("exclusiveMaximum")):
        high = min(high, schema["exclusiveMaximum"] - step)
    if math.isinf(low) and math.isinf(high):
        low, high = 0, 100
    elif math.isinf(low):
        low = high - 100
    elif math.isinf(high):
        high = low + 100
    multiple = schema.get("multipleOf")
    if multiple:
        value = math.ceil(low / multiple) * multiple
        return int(value) if integer else value
    if integer:
        return rng.randint(math.ceil(low), math.floor(high))
    return min(max(round(rng.uniform(low, high), 2), low), high)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# (schema, rng, root schema, depth, hint) -> a value of the schema's type
_Generator = Callable[[dict[str, Any], random.Random, Any, int, str], Any]
_GENERATORS: dict[str, _Generator] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "number": _number,
    "integer": lambda s, r, root, d, h: _number(s, r, root, d, h, integer=True),
    "boolean": lambda s, r, root, d, h: r.random() < 0.5,
    "null": lambda s, r, root, d, h: None,
}


# --- OpenAI-compatible servers -----------------------------------------------------------------


class OpenAICompatibleResponder(Responder):
    """Sends each request to a chat-completions server through the `openai` SDK (imported lazily)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        concurrency: int = 4,
        timeout: float = 120,
        max_retries: int = 2,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.max_retries = max_retries
        self._client: OpenAI | None = None
        self._lock = threading.Lock()

    def _get_client(self) -> OpenAI:
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                self._client = OpenAI(
                    base_url=self.base_url,
                    api_key=self.api_key or "not-needed",
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
            return self._client

    def respond(self, req: NeutralRequest) -> NeutralAnswer:
        import openai

        messages = ([{"role": "system", "content": req.system}] if req.system else []) + req.messages
        kwargs: dict[str, Any] = {"model": self.model or req.model, "messages": messages}
        if req.max_tokens is not None:
            kwargs["max_tokens"] = req.max_tokens
        if req.temperature is not None:
            kwargs["temperature"] = req.temperature
        if req.schema is not None:
            name = re.sub(r"[^a-zA-Z0-9_-]", "_", req.schema_name or "answer")[:64]
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": req.schema, "strict": True},
            }
        try:
            completion = self._get_client().chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            detail = exc.body if isinstance(exc.body, dict) else {}
            detail = detail.get("error", detail) if isinstance(detail.get("error"), dict) else detail
            return NeutralAnswer(
                error=NeutralError(
                    status=exc.status_code,
                    type=str(detail.get("type") or status_error_type(exc.status_code)),
                    message=str(detail.get("message") or exc.message),
                )
            )
        except openai.APITimeoutError as exc:
            return NeutralAnswer(error=NeutralError(status=504, type="timeout_error", message=str(exc)))
        except openai.APIConnectionError as exc:
            return NeutralAnswer(error=NeutralError(status=502, type="api_error", message=str(exc)))
        except Exception as exc:  # e.g. a malformed response: fail this request, not the batch
            return NeutralAnswer(error=NeutralError(status=500, type="server_error", message=repr(exc)))
        text = (completion.choices[0].message.content or "") if completion.choices else ""
        usage = completion.usage
        return NeutralAnswer(
            text=text,
            model=completion.model or kwargs["model"],
            input_tokens=usage.prompt_tokens if usage else input_tokens(req),
            output_tokens=usage.completion_tokens if usage else output_tokens(req, text),
        )

    def respond_many(self, reqs: list[NeutralRequest]) -> list[NeutralAnswer]:
        if len(reqs) <= 1:
            return [self.respond(req) for req in reqs]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(reqs))) as pool:
            return list(pool.map(self.respond, reqs))


def status_error_type(status: int) -> str:
    """The usual error type for an HTTP status (OpenAI spelling)."""
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        408: "timeout_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")


def make_responder(local: LocalConfig | None = None, *, model: str | None = None) -> Responder:
    """The responder the `local` config names: offline (the default), or an openai-compatible server
    at `local.base_url` (its key in the variable `local.api_key_env`); `model` overrides the model asked."""
    if local is None or local.responder == "offline":
        return OfflineResponder()
    if local.responder == "openai-compatible":
        if not local.base_url:
            raise ValueError("responder openai-compatible needs base_url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAICompatibleResponder(
            base_url=local.base_url,
            api_key=os.environ.get(local.api_key_env) if local.api_key_env else None,
            model=model,
            concurrency=local.concurrency,
        )
    raise ValueError(f"unknown responder {local.responder!r} (expected offline or openai-compatible)")
