"""What the `openai` and `anthropic` providers share: keys from the environment, one SDK client per
kind of call over one connection pool (reads with SDK retries, creates without), and SDK errors turned
into one scrubbed line."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import MissingKey, ProviderError
from .base import CREATE_REJECTED, CREATE_TOKEN_LIMIT, CREATE_UNKNOWN, Provider

__all__ = ["SDKProvider", "key_from_env", "retry_after_seconds", "scrub_secrets", "sdk_kwargs"]

TOKEN_LIMIT_MARKERS = ("token_limit", "enqueued token limit")
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;'\"]+"), r"\1 [redacted]"),
    (re.compile(r"(?i)(x-api-key|api[_-]?key|authorization)(['\"]?\s*[:=]\s*['\"]?)[^\s,;'\"}]+"), r"\1\2[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}"), "sk-[redacted]"),
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def scrub_secrets(text: object, secrets: tuple[str | None, ...] | list[str | None] = (), limit: int = 400) -> str:
    """One line of text without the given secrets or anything shaped like a key or auth header."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "[redacted]")
    for pattern, replacement in _SECRET_PATTERNS:
        out = pattern.sub(replacement, out)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


def key_from_env(provider: str, variable: str) -> str:
    """The API key in `variable`; MissingKey (one line naming the variable) when it is unset or empty.

    A setting that does not look like a variable name (a key pasted into the config) is refused without
    being repeated."""
    if not _ENV_NAME.match(variable or "") or variable.lower().startswith(("sk-", "sk_")):
        raise MissingKey(
            f"{provider}.api_key_env must be the NAME of an environment variable (it looks like "
            f"something else; never put a key in the config)"
        )
    key = os.environ.get(variable, "").strip()
    if not key:
        raise MissingKey(f"provider {provider} needs an API key: set the environment variable {variable}")
    return key


def sdk_kwargs(method: Callable[..., Any], body: dict[str, Any]) -> dict[str, Any]:
    """A request body as keyword arguments of an SDK method; keys it does not name go in `extra_body`."""
    names = set(inspect.signature(method).parameters)
    kwargs = {k: v for k, v in body.items() if k in names and not k.startswith("extra_")}
    extra = {k: v for k, v in body.items() if k not in kwargs}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def is_token_limit_message(text: str | None) -> bool:
    low = (text or "").lower()
    return any(marker in low for marker in TOKEN_LIMIT_MARKERS)


class SDKProvider(Provider):
    """A provider over an official SDK. Subclasses name the SDK and build its client."""

    sdk: str  # the SDK's module name
    sdk_error: str  # the SDK's base exception class
    default_key_env: str
    base_url_env: str
    default_base_url: str

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 600.0,
        read_retries: int = 5,
        realtime_retries: int = 0,
        create_delays: tuple[float, ...] = (2.0, 5.0, 15.0),
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url
        self.api_key_env = api_key_env or self.default_key_env
        self.timeout = timeout
        self.read_retries = read_retries
        self.realtime_retries = realtime_retries
        self.create_delays = tuple(create_delays)
        self.sleep = sleep
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _module(self) -> Any:
        return importlib.import_module(self.sdk)  # imported lazily: importing anthropic costs about 2 s

    def _key(self) -> str:
        return key_from_env(self.name, self.api_key_env)

    def _endpoint(self) -> str:
        return self.base_url or os.environ.get(self.base_url_env) or self.default_base_url

    def _new_client(self, module: Any, key: str, retries: int) -> Any:
        raise NotImplementedError

    def _client(self, kind: str = "read") -> Any:
        """kind: read (SDK retries), create (no retries: a retried create can pay twice), realtime.

        The create and realtime clients are the read client's `with_options`: one HTTP connection pool
        (and one TLS context) for the three, differing only in how often the SDK retries."""
        key = self._key()
        with self._lock:
            return self._client_for(kind, key)

    def _client_for(self, kind: str, key: str) -> Any:
        client = self._clients.get(kind)
        if client is None or client.api_key != key:
            if kind == "read":
                client = self._new_client(self._module(), key, self.read_retries)
            else:
                retries = {"create": 0, "realtime": self.realtime_retries}[kind]
                client = self._client_for("read", key).with_options(max_retries=retries)
            self._clients[kind] = client
        return client

    def _secrets(self) -> tuple[str | None, ...]:
        raw = os.environ.get(self.api_key_env) or ""
        return (raw, raw.strip())

    def _http_error_text(self, exc: Any) -> str:
        """The provider's own words for an HTTP error (exc is the SDK's APIStatusError)."""
        raise NotImplementedError

    def _describe(self, exc: Exception) -> tuple[int | None, str]:
        """(HTTP status or None, one scrubbed line) for an SDK error."""
        module = self._module()
        status = getattr(exc, "status_code", None) if isinstance(exc, module.APIStatusError) else None
        if isinstance(exc, module.APITimeoutError):
            text = "request timed out"
        elif isinstance(exc, module.APIConnectionError):
            text = "connection error" + (f" ({type(exc.__cause__).__name__})" if exc.__cause__ else "")
        elif isinstance(exc, module.APIStatusError):
            text = f"HTTP {status}: {self._http_error_text(exc)}"
            if status in (401, 403):
                text += f" (check the key in {self.api_key_env})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return status, scrub_secrets(text, self._secrets())

    def _error(self, what: str, exc: Exception) -> ProviderError:
        _, text = self._describe(exc)
        return ProviderError(f"{self.name} {what}: {text}")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except getattr(self._module(), self.sdk_error) as exc:
            raise self._error(what, exc) from None

    def _token_limit_text(self, exc: Any, text: str) -> str:
        """What to search for the enqueued-token-limit words (OpenAI adds the error code)."""
        return text

    def _classify_create(self, exc: Exception) -> tuple[str, str, float | None] | None:
        """How a failed create ended: token limit (submit later), rejected (nothing made) or unknown."""
        module = self._module()
        if not isinstance(exc, getattr(module, self.sdk_error)):
            return None
        status, text = self._describe(exc)
        if status in (400, 429) and is_token_limit_message(self._token_limit_text(exc, text)):
            return CREATE_TOKEN_LIMIT, text, None
        if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
            return CREATE_REJECTED, text, None
        retry_after = retry_after_seconds(exc.response.headers) if isinstance(exc, module.APIStatusError) else None
        return CREATE_UNKNOWN, text, retry_after

    def _list_once(self, client: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Close the SDK clients (best effort)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def check_ready(self, online: bool = False) -> None:
        """The key is there (and, online, accepted by a cheap list call)."""
        self._key()
        if online:
            client = self._client("read").with_options(max_retries=1)
            self._call(f"check at {self._endpoint()}", self._list_once, client)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a 429/5xx answer asks to wait (retry-after-ms or retry-after), if it says."""
    try:
        value = headers.get("retry-after-ms")
        if value:
            return float(value) / 1000
        value = headers.get("retry-after")
        return float(value) if value else None
    except (TypeError, ValueError):
        return None
