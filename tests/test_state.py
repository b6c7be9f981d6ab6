"""The request state machine, table by table: every state and transition of one request's attempts.

Each row lists a request's attempts in order, as (attempt number, what the ledger and manifest say of
it), and the state the planner must see. `sent` is an attempt in flight (submitted, not collected);
`ok` succeeded; `retry` / `perm` failed retryably / for good; `limit` was refused by the token limit
(not an attempt); `asked` failed and a person asked to send it again (`batchpipe retry`).
"""

from __future__ import annotations

import pytest

from batchpipe.ledger import ChunkHistory, Prepared, RetryRequested
from batchpipe.manifest import RequestOutcome
from batchpipe.request import IssueRef, RequestRecord
from batchpipe.state import Attempt, Done, Failed, Pending, Waiting, reprocess_due, request_state

ISSUE = IssueRef("o_r_issue_1", "o/r#1", "x.json", "o", "r", 1, "t", "", "")


def history(attempts: list[tuple[int, str]]) -> tuple[list[Attempt], dict[str, ChunkHistory]]:
    """One chunk per attempt, its ledger and manifest as the attempt's word says."""
    sent, chunks = [], {}
    for number, word in attempts:
        chunk, cid = f"c{number}", f"rhash{number}a{number}"
        record = RequestRecord("hash", number, [ISSUE])
        events = [Prepared(chunk=chunk, processor="p", requests={cid: record})]
        outcome = {
            "ok": RequestOutcome("succeeded"),
            "retry": RequestOutcome("failed", error="server_error: boom", retryable=True),
            "perm": RequestOutcome("failed", error="invalid_request_error: bad", retryable=False),
            "limit": RequestOutcome("failed", error="token_limit_exceeded: later", counts_as_attempt=False),
            "asked": RequestOutcome("failed", error="invalid_answer: x", retryable=False),
            "none": None,  # collected, but the manifest has no line for it
        }
        history = ChunkHistory(chunk, "p", {cid: record}, events)
        if word == "asked":
            history.events.append(RetryRequested(chunk=chunk, custom_ids=[cid]))
        if word != "sent":
            result = outcome[word]
            history.outcomes = {cid: result} if result is not None else {}
        chunks[chunk] = history
        sent.append(Attempt(chunk, cid, record))
    return sent, chunks


CASES = [
    # never sent: the first attempt is pending
    ([], 3, Pending(1)),
    # in flight
    ([(1, "sent")], 3, Waiting("c1")),
    ([(1, "retry"), (2, "sent")], 3, Waiting("c2")),
    # done, with the attempt that answered and the latest sent
    ([(1, "ok")], 3, Done("c1", "rhash1a1", 1, 1, reprocessed=False)),
    ([(1, "retry"), (2, "ok")], 3, Done("c2", "rhash2a2", 2, 2, reprocessed=False)),
    # retryable failures: sent again until max_attempts, then failed (not permanent)
    ([(1, "retry")], 3, Pending(2)),
    ([(1, "retry"), (2, "retry")], 3, Pending(3)),
    ([(1, "retry"), (2, "retry"), (3, "retry")], 3, Failed("server_error: boom", 3, permanent=False)),
    ([(1, "retry")], 1, Failed("server_error: boom", 1, permanent=False)),
    # a collected chunk without a line for the request: a retryable failure
    ([(1, "none")], 3, Pending(2)),
    ([(1, "none"), (2, "none"), (3, "none")], 3, Failed("no result recorded", 3, permanent=False)),
    # a permanent failure stops at once, whatever attempts are left
    ([(1, "perm")], 3, Failed("invalid_request_error: bad", 1, permanent=True)),
    ([(1, "retry"), (2, "perm")], 3, Failed("invalid_request_error: bad", 2, permanent=True)),
    # token-limit refusals do not use up attempts
    ([(1, "limit"), (2, "limit"), (3, "limit")], 3, Pending(4)),
    ([(1, "limit"), (2, "retry"), (3, "retry")], 3, Pending(4)),
    ([(1, "limit"), (2, "retry"), (3, "retry"), (4, "retry")], 3, Failed("server_error: boom", 3, permanent=False)),
    # a person asked for a retry: even a permanent failure is sent again, and the count starts over
    ([(1, "asked")], 3, Pending(2)),
    ([(1, "retry"), (2, "retry"), (3, "asked")], 3, Pending(4)),
    ([(1, "retry"), (2, "retry"), (3, "asked"), (4, "retry"), (5, "retry")], 3, Pending(6)),
    # a reprocess (an attempt after a success): waits while in flight; a failure keeps the earlier answer
    ([(1, "ok"), (2, "sent")], 3, Waiting("c2")),
    ([(1, "ok"), (2, "retry")], 3, Done("c1", "rhash1a1", 1, 2, reprocessed=False)),
    ([(1, "ok"), (2, "perm")], 3, Done("c1", "rhash1a1", 1, 2, reprocessed=False)),
    ([(1, "ok"), (2, "ok")], 3, Done("c2", "rhash2a2", 2, 2, reprocessed=True)),
]


@pytest.mark.parametrize("attempts, max_attempts, expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_request_state(attempts, max_attempts, expected):
    sent, chunks = history(attempts)
    assert request_state(sent, chunks, max_attempts) == expected


REPROCESS = [
    # (done state, custom_id of the current low-confidence result, sent once more?)
    (Done("c1", "rhash1a1", 1, 1, reprocessed=False), "rhash1a1", True),
    (Done("c1", "rhash1a1", 1, 1, reprocessed=False), None, False),  # not selected for reprocessing
    (Done("c1", "rhash1a1", 1, 1, reprocessed=False), "rhash0a0", False),  # the result is another attempt's
    (Done("c1", "rhash1a1", 1, 2, reprocessed=False), "rhash1a1", False),  # a reprocess was sent already
    (Done("c2", "rhash2a2", 2, 2, reprocessed=True), "rhash2a2", False),  # the answer is a reprocess's: once only
]


@pytest.mark.parametrize("done, result_custom_id, expected", REPROCESS)
def test_reprocess_is_due_once_for_the_current_answer(done, result_custom_id, expected):
    assert reprocess_due(done, result_custom_id) is expected


def test_attempts_are_taken_in_the_order_given():
    """The planner sorts attempts by number; the machine trusts that order (latest success answers)."""
    sent, chunks = history([(1, "ok"), (2, "ok")])
    assert request_state(list(reversed(sent)), chunks, 3) == Done("c1", "rhash1a1", 1, 2, reprocessed=True)
