"""The `anthropic` provider: Anthropic's Message Batches API through the official SDK.

Anthropic takes the requests inline (no file upload) and keeps no metadata on a batch, so a batch
is recognised by its creation time, its request count and, once it has ended, its custom_ids
(`find_batch`); the batches other chunks own are handed to it and never taken. Money rules as for
OpenAI: `messages.batches.create` goes through a client with
`max_retries=0`, and after an error whose outcome is unknown the batch is searched for before any
new attempt (`base.create_once`); when the search cannot tell, it stops with a ProviderError.

The key comes from the environment only (`anthropic.api_key_env`, default ANTHROPIC_API_KEY) and
never appears in a message. The SDK is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ProviderError, Unverifiable
from ..files import sha256_hex
from .anthropic_wire import AnthropicWire, split_results
from .base import BatchMatch, BatchStatus, create_once
from .sdk import SDKProvider, retry_after_seconds, scrub_secrets, sdk_kwargs

DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
DEFAULT_BASE_URL = "https://api.anthropic.com"
WINDOW_BEFORE = 120.0  # find_batch: candidates created from created_after - 120 s ...
WINDOW_AFTER = 600.0  # ... to created_after + 600 s (clock skew, slow create calls)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicProvider(SDKProvider):
    name = "anthropic"
    wire = AnthropicWire
    sdk = "anthropic"
    sdk_error = "AnthropicError"
    default_key_env = DEFAULT_KEY_ENV
    base_url_env = BASE_URL_ENV
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key_env: str = DEFAULT_KEY_ENV,
        timeout: float = 600.0,
        read_retries: int = 5,
        realtime_retries: int = 0,
        create_delays: tuple[float, ...] = (2.0, 5.0, 15.0),
        not_found_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(
            base_url=base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            read_retries=read_retries,
            realtime_retries=realtime_retries,
            create_delays=create_delays,
            sleep=sleep,
        )
        self.not_found_delays = tuple(not_found_delays)
        self._made: dict[str, str] = {}  # batch id -> content hash, for batches this process created
        self._ids: dict[str, frozenset[str]] = {}  # content hash -> custom_ids, for chunks this process sent

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicProvider:
        conf = settings.anthropic
        provider = cls(base_url=conf.base_url, api_key_env=conf.api_key_env or DEFAULT_KEY_ENV, timeout=conf.timeout)
        provider.check_ready()  # a missing key stops the run here, before anything is written or spent
        return provider

    # --- clients and errors --------------------------------------------------------------------

    def _new_client(self, module: Any, key: str, retries: int) -> Any:
        # An explicit api_key keeps the SDK from reading profiles or other credential variables.
        return module.Anthropic(api_key=key, base_url=self.base_url or None, timeout=self.timeout, max_retries=retries)

    def _http_error_text(self, exc: Any) -> str:
        err = _error_body(exc.body)
        kind = err.get("type")
        return f"{f'{kind}: ' if kind else ''}{err.get('message') or exc.message}"

    def _list_once(self, client: Any) -> Any:
        return client.messages.batches.list(limit=1)

    # --- Provider ---------------------------------------------------------------------------------

    def upload(self, request_file: Path) -> None:
        return None  # requests go inline with the create call

    def create(self, request_file: Path, input_file_id: str | None, metadata: dict[str, str]) -> BatchStatus:
        content = request_file.read_bytes()
        requests = [json.loads(line) for line in content.splitlines() if line.strip()]
        if not requests:
            raise ProviderError(f"anthropic create: {request_file} holds no requests")
        content_hash = (metadata or {}).get("batchpipe_chunk_hash") or sha256_hex(content)
        custom_ids = frozenset(r["custom_id"] for r in requests)
        self._ids[content_hash] = custom_ids
        client = self._client("create")
        started = time.time()

        def attempt() -> BatchStatus:
            return _status(client.messages.batches.create(requests=requests))

        def find() -> BatchStatus | None:
            return self.find_batch(
                BatchMatch(content_hash, created_after=started, request_count=len(requests), custom_ids=custom_ids)
            )

        status = create_once(
            attempt,
            find,
            self._classify_create,
            label=f"anthropic create for {request_file.name}",
            delays=self.create_delays,
            sleep=self.sleep,
        )
        self._made[status.batch_id] = content_hash
        return status

    def retrieve(self, batch_id: str) -> BatchStatus:
        """The batch; a 404 just after create (the batch is not visible everywhere yet) is retried briefly."""
        import anthropic

        client = self._client("read")
        for delay in (*self.not_found_delays, None):
            try:
                return _status(client.messages.batches.retrieve(batch_id))
            except anthropic.NotFoundError as exc:
                if delay is None:
                    raise self._error(f"retrieve {batch_id}", exc) from None
                self.sleep(delay)
            except anthropic.AnthropicError as exc:
                raise self._error(f"retrieve {batch_id}", exc) from None
        raise AssertionError("unreachable")

    def download(self, status: BatchStatus) -> tuple[bytes, bytes]:
        """(succeeded lines, errored/canceled/expired lines) of an ended batch, in the API's order."""
        return split_results(self._results(status))

    def _results(self, status: BatchStatus) -> bytes:
        if not status.ended:
            raise ProviderError(f"anthropic batch {status.batch_id} is {status.status}; results come once it has ended")
        client = self._client("read")
        raw = self._call(
            f"results of {status.batch_id}", client.messages.batches.with_raw_response.results, status.batch_id
        )
        data = self._call(f"results of {status.batch_id}", raw.read)
        lines = [line for line in data.splitlines() if line.strip()]
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                raise ProviderError(f"anthropic results of {status.batch_id}: a line is not JSON") from None
        return b"".join(line + b"\n" for line in lines)

    def cancel(self, batch_id: str) -> BatchStatus:
        return _status(self._call(f"cancel {batch_id}", self._client("read").messages.batches.cancel, batch_id))

    def list_batches(self) -> Iterator[BatchStatus]:
        import anthropic

        client = self._client("read")
        try:
            for batch in client.messages.batches.list(limit=100):
                yield _status(batch)
        except anthropic.AnthropicError as exc:
            raise self._error("list", exc) from None

    def find_batch(self, match: BatchMatch) -> BatchStatus | None:
        """The batch an interrupted create made, judged without metadata.

        Candidates: created within [created_after - 120 s, created_after + 600 s], with the chunk's request
        count, and not a batch another chunk owns (this process's creates and `match.claimed`). A candidate
        is adopted only when verified: it has ended and its results hold exactly the chunk's custom_ids.
        None: there is no such batch. Unverifiable: a running candidate (or unknown custom_ids) keeps the
        question open; the chunk neither creates nor adopts until it can tell."""
        created_after = match.created_after
        if not created_after:
            raise ProviderError("cannot tell: the ledger holds no time for the interrupted create")
        count = match.request_count
        ids = match.custom_ids if match.custom_ids is not None else self._ids.get(match.content_hash)
        if count is None and ids is not None:
            count = len(ids)
        others = set(match.claimed) | {b for b, made_for in self._made.items() if made_for != match.content_hash}
        candidates: list[BatchStatus] = []
        for status in self.list_batches():
            if status.created_at is None or status.created_at > created_after + WINDOW_AFTER:
                continue
            if status.created_at < created_after - WINDOW_BEFORE:
                break  # newest first: the rest are older still
            if count is not None and status.total != count:
                continue
            if status.batch_id in others:
                continue
            candidates.append(status)
        if not candidates:
            return None
        if ids is None:
            raise Unverifiable(
                f"{len(candidates)} batch(es) ({_ids(candidates)}) of {count} requests were created then, and the "
                "chunk's custom_ids are not known to check them; see `batchpipe list --remote`"
            )
        verified, running = [], []
        for status in candidates:
            if status.ended:
                got = {json.loads(line).get("custom_id") for line in self._results(status).splitlines()}
                if got == ids:
                    verified.append(status)
            else:
                running.append(status)
        if verified:
            # several: the chunk was paid twice; adopt the oldest, the others stay visible in `list --remote`
            return min(verified, key=lambda s: (s.created_at or 0, s.batch_id))
        if running:
            raise Unverifiable(
                f"{len(running)} running batch(es) ({_ids(running)}) of {count} requests may hold this chunk; "
                "their results show whose they are once they end: the chunk waits until then"
            )
        return None

    def complete(self, request_line: dict[str, Any]) -> dict[str, Any]:
        """Realtime: send the line's params to /v1/messages; the answer as a batch result line."""
        import anthropic

        custom_id = request_line.get("custom_id", "")
        params = dict(request_line.get("params") or {})
        client = self._client("realtime")
        try:
            message = client.messages.create(**sdk_kwargs(client.messages.create, params))
        except anthropic.APIStatusError as exc:
            _, text = self._describe(exc)
            err = _error_body(exc.body)
            return {
                "custom_id": custom_id,
                "result": {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {
                            "type": err.get("type") or ERROR_TYPES.get(exc.status_code, "api_error"),
                            "message": scrub_secrets(err.get("message") or text, self._secrets()),
                        },
                        "request_id": exc.request_id,
                    },
                },
                "retry_after": retry_after_seconds(exc.response.headers),
            }
        except anthropic.AnthropicError as exc:
            _, text = self._describe(exc)
            kind = "timeout_error" if isinstance(exc, anthropic.APITimeoutError) else "api_error"
            return {
                "custom_id": custom_id,
                "result": {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": kind, "message": text}, "request_id": None},
                },
            }
        return {
            "custom_id": custom_id,
            "result": {"type": "succeeded", "message": message.model_dump(mode="json", exclude_unset=True)},
        }


def _unix(value: datetime | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


def _status(batch: Any) -> BatchStatus:
    counts = batch.request_counts
    failed = int(counts.errored or 0) + int(counts.canceled or 0) + int(counts.expired or 0)
    succeeded = int(counts.succeeded or 0)
    return BatchStatus(
        batch_id=batch.id,
        status=batch.processing_status,
        ended=batch.processing_status == "ended",
        total=int(counts.processing or 0) + succeeded + failed,
        succeeded=succeeded,
        failed=failed,
        created_at=_unix(batch.created_at),
        ended_at=_unix(batch.ended_at),
        metadata={},
        raw=batch.model_dump(mode="json"),
    )


def _ids(statuses: list[BatchStatus]) -> str:
    return ", ".join(s.batch_id for s in statuses[:5]) + (", ..." if len(statuses) > 5 else "")


def _error_body(body: object) -> dict:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return err
    return {}
