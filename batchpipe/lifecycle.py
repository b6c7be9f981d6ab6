"""The words the providers use for a batch's lifecycle, in one place.

OpenAI (and `local`): validating -> in_progress -> finalizing -> completed; failed; expired;
cancelling -> cancelled. Anthropic: in_progress -> ended (canceling -> ended).
"""

from __future__ import annotations

OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
ANTHROPIC_ENDED = frozenset({"ended"})
ENDED = OPENAI_ENDED | ANTHROPIC_ENDED | {"canceled"}
STARTED = frozenset({"in_progress", "finalizing", "cancelling", "canceling"})

__all__ = ["ANTHROPIC_ENDED", "ENDED", "OPENAI_ENDED", "STARTED"]
