"""What the `openai` and `anthropic` providers share: keys from the environment, one SDK client per
kind of call (reads with SDK retries, creates without), and SDK errors turned into one scrubbed line."""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Any

from .base import (
    CREATE_REJECTED,
    CREATE_TOKEN_LIMIT,
    CREATE_UNKNOWN,
    Provider,
    ProviderError,
    is_token_limit_message,
    key_from_env,
    scrub_secrets,
)


class SDKProvider(Provider):
    """A provider over an official SDK. Subclasses name the SDK and build its client."""

    sdk: str  # the SDK's module name
    sdk_error: str  # the SDK's base exception class
    default_key_env: str
    base_url_env: str
    default_base_url: str

    def __init__(self, *, base_url: str | None = None, api_key_env: str | None = None, timeout: float = 600.0,
                 read_retries: int = 5, realtime_retries: int = 0, create_delays: tuple[float, ...] = (2.0, 5.0, 15.0),
                 sleep=time.sleep):
        self.base_url = base_url
        self.api_key_env = api_key_env or self.default_key_env
        self.timeout = timeout
        self.read_retries = read_retries
        self.realtime_retries = realtime_retries
        self.create_delays = tuple(create_delays)
        self.sleep = sleep
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _module(self):
        return importlib.import_module(self.sdk)  # imported lazily: importing anthropic costs about 2 s

    def _key(self) -> str:
        return key_from_env(self.name, self.api_key_env)

    def _endpoint(self) -> str:
        return self.base_url or os.environ.get(self.base_url_env) or self.default_base_url

    def _new_client(self, module, key: str, retries: int):
        raise NotImplementedError

    def _client(self, kind: str = "read"):
        """kind: read (SDK retries), create (no retries: a retried create can pay twice), realtime."""
        key = self._key()
        with self._lock:
            client = self._clients.get(kind)
            if client is None or client.api_key != key:
                retries = {"read": self.read_retries, "create": 0, "realtime": self.realtime_retries}[kind]
                client = self._new_client(self._module(), key, retries)
                self._clients[kind] = client
            return client

    def _secrets(self) -> tuple[str | None, ...]:
        raw = os.environ.get(self.api_key_env) or ""
        return (raw, raw.strip())

    def _http_error_text(self, exc) -> str:
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

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except getattr(self._module(), self.sdk_error) as exc:
            raise self._error(what, exc) from None

    def _token_limit_text(self, exc, text: str) -> str:
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

    def _list_once(self, client) -> Any:
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


def retry_after_seconds(headers) -> float | None:
    """Seconds a 429/5xx answer asks to wait (retry-after-ms or retry-after), if it says."""
    try:
        value = headers.get("retry-after-ms")
        if value:
            return float(value) / 1000
        value = headers.get("retry-after")
        return float(value) if value else None
    except (TypeError, ValueError):
        return None
