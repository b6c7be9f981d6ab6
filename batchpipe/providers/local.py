"""The `local` provider: the embedded, file-backed batch service, spoken to in OpenAI's wire format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import LocalConfig
from ..errors import Conflict, NotFound, ProviderError
from ..service.engine import BatchEngine, Timing
from ..service.responders import make_responder
from .base import BatchStatus, Provider
from .openai_wire import OPENAI_ENDPOINT, OpenAIWire, custom_ids_of, status_from_openai

__all__ = ["LocalProvider"]


class LocalProvider(Provider):
    name = "local"
    wire = OpenAIWire

    def __init__(self, engine: BatchEngine):
        self.engine = engine

    @classmethod
    def from_config(cls, local: LocalConfig, state_dir: Path) -> LocalProvider:
        """The engine under `state_dir`, answered by the configured responder, on the configured delays."""
        delays = local.delays
        timing = Timing(
            validating=delays.get("validating", 0),
            in_progress=delays.get("in_progress", 0),
            finalizing=delays.get("finalizing", 0),
        )
        return cls(BatchEngine(state_dir, make_responder(local), timing, local.faults or None))

    def upload(self, request_file: Path) -> str:
        return self.engine.create_file_from(request_file, "batch")["id"]

    def create(self, request_file: Path, input_file_id: str | None, metadata: dict[str, str]) -> BatchStatus:
        record = self.engine.create_batch(
            request_format="openai", endpoint=OPENAI_ENDPOINT, input_file_id=input_file_id, metadata=metadata
        )
        return status_from_openai(self.engine.openai_batch(record))

    def retrieve(self, batch_id: str) -> BatchStatus:
        try:
            return status_from_openai(self.engine.openai_batch(self.engine.get_batch(batch_id)))
        except NotFound:
            raise ProviderError(f"local batch {batch_id} not found in {self.engine.state_dir}") from None

    def download(self, status: BatchStatus) -> tuple[bytes, bytes]:
        fetch = self.engine.file_content
        return (
            fetch(status.output_file_id) if status.output_file_id else b"",
            fetch(status.error_file_id) if status.error_file_id else b"",
        )

    def cancel(self, batch_id: str) -> BatchStatus:
        try:
            return status_from_openai(self.engine.openai_batch(self.engine.cancel_batch(batch_id)))
        except (NotFound, Conflict) as exc:  # e.g. it reached finalizing meanwhile: one line, not a traceback
            raise ProviderError(f"local batch {batch_id}: {exc}") from None

    def list_batches(self) -> Iterator[BatchStatus]:
        for record in self.engine.list_batches():
            yield status_from_openai(self.engine.openai_batch(record))

    @property
    def lists_inputs(self) -> bool:
        return True

    def input_custom_ids(self, status: BatchStatus) -> set[str]:
        file_id = status.raw.get("input_file_id")
        try:
            content = self.engine.file_content(file_id) if file_id else b""
        except NotFound:
            return set()  # the input file expired: the batch cannot be recognised
        return custom_ids_of(content)

    def complete(self, request_line: dict[str, Any]) -> dict[str, Any]:
        """Realtime: the engine answers one OpenAI request line now (its output or error line)."""
        return self.engine.complete_line(request_line, "openai")
