"""The `local` provider: the embedded, file-backed batch engine, spoken to in OpenAI's wire format."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..config import Settings
from ..engine import BatchEngine, Conflict, NotFound, Timing
from ..responders import make_responder
from .base import OPENAI_ENDPOINT, BatchStatus, Provider, ProviderError

OPENAI_ENDED = {"completed", "failed", "expired", "cancelled"}


def status_from_openai(batch: dict) -> BatchStatus:
    """BatchStatus from an OpenAI Batch object (a dict)."""
    counts = batch.get("request_counts") or {}
    errors = ((batch.get("errors") or {}).get("data")) or []
    ended_at = next((batch.get(k) for k in ("completed_at", "failed_at", "expired_at", "cancelled_at") if batch.get(k)), None)
    return BatchStatus(
        batch_id=batch["id"],
        status=batch["status"],
        ended=batch["status"] in OPENAI_ENDED,
        total=int(counts.get("total") or 0),
        succeeded=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        created_at=batch.get("created_at"),
        ended_at=ended_at,
        output_file_id=batch.get("output_file_id"),
        error_file_id=batch.get("error_file_id"),
        errors=[{k: e.get(k) for k in ("code", "message", "line", "param")} for e in errors],
        metadata=dict(batch.get("metadata") or {}),
        raw=batch,
    )


class LocalProvider(Provider):
    name = "local"
    wire = "openai"

    def __init__(self, engine: BatchEngine):
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalProvider":
        local = settings["local"]
        delays = local.get("delays", {})
        responder = make_responder(local)
        timing = Timing(validating=delays.get("validating", 0), in_progress=delays.get("in_progress", 0),
                        finalizing=delays.get("finalizing", 0))
        return cls(BatchEngine(settings.root / local["state_dir"], responder, timing, local.get("faults") or None))

    def upload(self, request_file: Path) -> str:
        return self.engine.create_file(request_file.read_bytes(), request_file.name, "batch")["id"]

    def create(self, request_file: Path, input_file_id: str | None, metadata: dict) -> BatchStatus:
        record = self.engine.create_batch(request_format="openai", endpoint=OPENAI_ENDPOINT,
                                          input_file_id=input_file_id, metadata=metadata)
        return status_from_openai(self.engine.openai_batch(record))

    def retrieve(self, batch_id: str) -> BatchStatus:
        try:
            return status_from_openai(self.engine.openai_batch(self.engine.get_batch(batch_id)))
        except NotFound:
            raise ProviderError(f"local batch {batch_id} not found in {self.engine.state_dir}") from None

    def download(self, status: BatchStatus) -> tuple[bytes, bytes]:
        fetch = self.engine.file_content
        return (fetch(status.output_file_id) if status.output_file_id else b"",
                fetch(status.error_file_id) if status.error_file_id else b"")

    def cancel(self, batch_id: str) -> BatchStatus:
        try:
            return status_from_openai(self.engine.openai_batch(self.engine.cancel_batch(batch_id)))
        except (NotFound, Conflict) as exc:  # e.g. it reached finalizing meanwhile: one line, not a traceback
            raise ProviderError(f"local batch {batch_id}: {exc}") from None

    def list_batches(self) -> Iterator[BatchStatus]:
        for record in self.engine.list_batches():
            yield status_from_openai(self.engine.openai_batch(record))

    def complete(self, request_line: dict) -> dict:
        """Realtime: the engine answers one OpenAI request line now (its output or error line)."""
        return self.engine.complete_line(request_line, "openai")
