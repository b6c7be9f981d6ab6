"""The `openai` provider: OpenAI's Files + Batch API through the official SDK (openai >= 3, httpx2).

Money rules:
* `batches.create` goes through a client with `max_retries=0`; an error whose outcome is unknown
  (timeout, dropped connection, 408/409/429/5xx) is followed by a search for the batch (metadata
  `batchpipe_chunk_hash`) before any new attempt (`base.create_once`).
* Reads (retrieve, list, file content) and uploads keep SDK retries: they cost nothing.
* The key comes from the environment only (`openai.api_key_env`, default OPENAI_API_KEY) and never
  appears in a message: every SDK error is turned into a scrubbed one-line ProviderError.

The SDK is imported lazily, so building the provider and `check_ready()` are cheap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ProviderError
from .base import BatchMatch, BatchStatus, create_once
from .openai_wire import OPENAI_ENDPOINT, OpenAIWire, custom_ids_of, status_from_openai
from .sdk import SDKProvider, retry_after_seconds, scrub_secrets, sdk_kwargs

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
FIND_MARGIN = 900.0  # seconds before created_after at which find_batch stops scanning (clock skew, slow creates)
FIND_MAX_SCAN = 5000


class OpenAIProvider(SDKProvider):
    name = "openai"
    wire = OpenAIWire
    sdk = "openai"
    sdk_error = "OpenAIError"
    default_key_env = DEFAULT_KEY_ENV
    base_url_env = BASE_URL_ENV
    default_base_url = DEFAULT_BASE_URL

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        conf = settings.openai
        provider = cls(base_url=conf.base_url, api_key_env=conf.api_key_env or DEFAULT_KEY_ENV, timeout=conf.timeout)
        provider.check_ready()  # a missing key stops the run here, before anything is written or spent
        return provider

    # --- clients and errors --------------------------------------------------------------------

    def _new_client(self, module: Any, key: str, retries: int) -> Any:
        return module.OpenAI(api_key=key, base_url=self.base_url or None, timeout=self.timeout, max_retries=retries)

    def _http_error_text(self, exc: Any) -> str:
        return _error_message(exc.body) or exc.message

    def _list_once(self, client: Any) -> Any:
        return client.batches.list(limit=1)

    # --- Provider ---------------------------------------------------------------------------------

    def upload(self, request_file: Path) -> str:
        # A duplicate upload costs nothing, so SDK retries are fine here.
        client = self._client("read")
        data = request_file.read_bytes()
        file = self._call(
            f"upload of {request_file.name}", client.files.create, file=(request_file.name, data), purpose="batch"
        )
        return file.id

    def create(self, request_file: Path, input_file_id: str | None, metadata: dict[str, str]) -> BatchStatus:
        if not input_file_id:
            raise ProviderError("openai create: no input file id (upload the request file first)")
        client = self._client("create")
        content_hash = (metadata or {}).get("batchpipe_chunk_hash")
        started = time.time()

        def attempt() -> BatchStatus:
            batch = client.batches.create(
                input_file_id=input_file_id,
                endpoint=OPENAI_ENDPOINT,
                completion_window="24h",
                metadata=metadata or None,
            )
            return _status(batch)

        def find() -> BatchStatus | None:
            if not content_hash:
                raise ProviderError("openai create: cannot tell whether the batch was made (no chunk hash in metadata)")
            # Only a batch made by this call counts (an older batch of the same chunk is not this one).
            return self.find_batch(
                BatchMatch(content_hash, created_after=started, margin=120, input_file_id=input_file_id)
            )

        return create_once(
            attempt,
            find,
            self._classify_create,
            label=f"openai create for {request_file.name}",
            delays=self.create_delays,
            sleep=self.sleep,
        )

    def _token_limit_text(self, exc: Any, text: str) -> str:
        return f"{_error_code(getattr(exc, 'body', None))} {text}"

    def retrieve(self, batch_id: str) -> BatchStatus:
        return _status(self._call(f"retrieve {batch_id}", self._client("read").batches.retrieve, batch_id))

    def download(self, status: BatchStatus) -> tuple[bytes, bytes]:
        """Output and error file contents (either file may be missing); line order is the API's."""
        client = self._client("read")

        def fetch(file_id: str | None) -> bytes:
            if not file_id:
                return b""
            data = self._call(f"download of {file_id} (batch {status.batch_id})", client.files.content, file_id).content
            return data if not data or data.endswith(b"\n") else data + b"\n"

        return fetch(status.output_file_id), fetch(status.error_file_id)

    @property
    def lists_inputs(self) -> bool:
        return True

    def input_custom_ids(self, status: BatchStatus) -> set[str]:
        file_id = status.raw.get("input_file_id")
        if not file_id:
            return set()
        client = self._client("read")
        import openai

        try:
            return custom_ids_of(client.files.content(file_id).content)
        except openai.NotFoundError:
            return set()  # the input file expired: the batch cannot be recognised
        except openai.OpenAIError as exc:
            raise self._error(f"input file of {status.batch_id}", exc) from None

    def cancel(self, batch_id: str) -> BatchStatus:
        return _status(self._call(f"cancel {batch_id}", self._client("read").batches.cancel, batch_id))

    def list_batches(self) -> Iterator[BatchStatus]:
        import openai

        client = self._client("read")
        try:
            for batch in client.batches.list(limit=100):
                yield _status(batch)
        except openai.OpenAIError as exc:
            raise self._error("list", exc) from None

    def find_batch(self, match: BatchMatch) -> BatchStatus | None:
        """The batch whose metadata holds this chunk hash, scanning newest first down to well before the intent."""
        created_after = match.created_after
        margin = match.margin if match.margin is not None else FIND_MARGIN
        matches: list[BatchStatus] = []
        for scanned, status in enumerate(self.list_batches()):
            if created_after and status.created_at and status.created_at < created_after - margin:
                break
            if status.batch_id in match.claimed:
                continue
            if status.metadata.get("batchpipe_chunk_hash") == match.content_hash:
                matches.append(status)
            if scanned >= FIND_MAX_SCAN:
                if matches:
                    break
                raise ProviderError(f"cannot tell: scanned {scanned} batches without reaching the submission time")
        if not matches:
            return None
        # Several batches of one chunk means one was already paid twice; adopt the oldest (the others
        # stay visible in `batchpipe list --remote`) rather than stopping.
        return min(matches, key=lambda s: (s.created_at or 0, s.batch_id))

    def complete(self, request_line: dict[str, Any]) -> dict[str, Any]:
        """Realtime: POST the line's body to /chat/completions; the answer as a batch output/error line."""
        import openai

        custom_id = request_line.get("custom_id", "")
        body = dict(request_line.get("body") or {})
        client = self._client("realtime")
        try:
            completion = client.chat.completions.create(**sdk_kwargs(client.chat.completions.create, body))
        except openai.APIStatusError as exc:
            _, text = self._describe(exc)
            err = (exc.body.get("error") if isinstance(exc.body, dict) else None) or {}
            err = err if isinstance(err, dict) else {}
            return {
                "custom_id": custom_id,
                "response": {
                    "status_code": exc.status_code,
                    "request_id": exc.request_id,
                    "body": {
                        "error": {
                            "message": scrub_secrets(err.get("message") or text, self._secrets()),
                            "type": err.get("type"),
                            "param": err.get("param"),
                            "code": err.get("code"),
                        }
                    },
                },
                "error": None,
                "retry_after": retry_after_seconds(exc.response.headers),
            }
        except openai.OpenAIError as exc:
            _, text = self._describe(exc)
            code = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection_error"
            return {"custom_id": custom_id, "response": None, "error": {"code": code, "message": text}}
        return {
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": getattr(completion, "_request_id", None),
                "body": completion.model_dump(mode="json", exclude_unset=True),
            },
            "error": None,
        }


def _status(batch: Any) -> BatchStatus:
    return status_from_openai(batch.model_dump(mode="json"))


def _error_message(body: object) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    if isinstance(body, str):
        return body
    return None


def _error_code(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return f"{err.get('code') or ''} {err.get('type') or ''}"
    return ""
