"""request.py: custom_ids, the neutral request and its identity (what request hashes cover), a chunk's table."""

from __future__ import annotations

import json

import pytest

from batchpipe.files import atomic_write_json, canonical_json, sha256_hex
from batchpipe.request import (
    ChunkIndex,
    GroupInfo,
    IssueRef,
    NeutralRequest,
    RequestRecord,
    attempt_of,
    custom_id_for,
    read_index,
    table_from_json,
    table_to_json,
)

HASH = "0123456789abcdef" * 4  # 64 hex characters

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}

ISSUE_JSON = {
    "key": "bitcoin-core_gui_issue_1",
    "ref": "bitcoin-core/gui#1",
    "path": "data/issues/bitcoin-core_gui_issue_1.json",
    "org": "bitcoin-core",
    "repo": "gui",
    "number": 1,
    "title": "gui: Remove unused `Decrypt` wallet",
    "url": "https://github.com/bitcoin-core/gui/issues/1",
    "updated_at": "2020-08-01T10:00:00Z",
}

GROUP_JSON = {
    "by": "repo",
    "key": "bitcoin-core_gui",
    "name": "bitcoin-core/gui",
    "org": "bitcoin-core",
    "repo": "gui",
    "item": "bitcoin-core_gui_part2",
    "part": 2,
    "parts": 3,
    "issues": ["bitcoin-core/gui#1", "bitcoin-core/gui#7"],
    "left_out": ["bitcoin-core/gui#9"],
}


# --- custom_ids ------------------------------------------------------------------------------------


def test_custom_id_is_r_32_hex_a_attempt():
    cid = custom_id_for(HASH, 3)
    assert cid == "r" + HASH[:32] + "a3"
    assert len(cid) == 35
    assert attempt_of(cid) == 3


@pytest.mark.parametrize("attempt", [1, 2, 10, 123])
def test_attempt_of_reads_the_number_after_the_last_a(attempt):
    # a hash that ends in "a": the separator is the last "a", followed only by digits
    request_hash = "a" * 64
    cid = custom_id_for(request_hash, attempt)
    assert cid == "r" + "a" * 32 + f"a{attempt}"
    assert attempt_of(cid) == attempt


def test_custom_ids_of_two_attempts_differ_and_keep_the_hash_prefix():
    first, second = custom_id_for(HASH, 1), custom_id_for(HASH, 2)
    assert first != second
    assert first[1:33] == second[1:33] == HASH[:32]


def test_attempt_of_rejects_a_custom_id_without_an_attempt():
    with pytest.raises(ValueError):
        attempt_of("r" + "0" * 32 + "ax")


# --- the neutral request -----------------------------------------------------------------------------


def test_ask_makes_one_user_message():
    req = NeutralRequest.ask("gpt-4o-mini", "You triage.", "Label this issue.", 1500, SCHEMA, "product-labeling")
    assert req.model == "gpt-4o-mini"
    assert req.messages == [{"role": "user", "content": "Label this issue."}]
    assert req.system == "You triage."
    assert req.max_tokens == 1500
    assert req.schema == SCHEMA
    assert req.schema_name == "product-labeling"
    assert req.temperature is None
    assert req.user == "Label this issue."


def test_user_is_the_first_user_message():
    req = NeutralRequest(
        "m",
        [
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": "first question"},
            {"role": "user", "content": "second question"},
        ],
    )
    assert req.user == "first question"
    assert NeutralRequest("m", [{"role": "assistant", "content": "only me"}]).user == ""
    assert NeutralRequest("m", []).user == ""


def test_identity_has_exactly_the_hashed_keys():
    req = NeutralRequest.ask("offline", "sys", "usr", 800, None, "issue-summary")
    assert req.identity() == {
        "model": "offline",
        "system": "sys",
        "user": "usr",
        "max_tokens": 800,
        "schema": None,
        "schema_name": "issue-summary",
    }


def test_identity_ignores_temperature_but_follows_everything_it_covers():
    base = NeutralRequest.ask("m", "s", "u", 100, SCHEMA, "n")
    warmer = NeutralRequest("m", [{"role": "user", "content": "u"}], "s", 100, SCHEMA, "n", temperature=0.7)
    assert warmer.identity() == base.identity()
    for other in (
        NeutralRequest.ask("m2", "s", "u", 100, SCHEMA, "n"),
        NeutralRequest.ask("m", "s2", "u", 100, SCHEMA, "n"),
        NeutralRequest.ask("m", "s", "u2", 100, SCHEMA, "n"),
        NeutralRequest.ask("m", "s", "u", 101, SCHEMA, "n"),
        NeutralRequest.ask("m", "s", "u", 100, None, "n"),
        NeutralRequest.ask("m", "s", "u", 100, SCHEMA, "n2"),
    ):
        assert other.identity() != base.identity()


def test_request_hash_of_a_fixed_request_is_pinned():
    """Request hashes of existing workspaces depend on identity(): this value was computed by the code that
    wrote them (the same as the pre-split `NeutralRequest.to_dict`). A change here re-sends every request."""
    req = NeutralRequest.ask(
        "gpt-4o-mini",
        "You triage issues.",
        "Label bitcoin-core/gui#1: Remove unused Decrypt",
        1500,
        SCHEMA,
        "product-labeling",
    )
    request_hash = sha256_hex(canonical_json({"provider": "local", "request": req.identity()}))
    assert request_hash == "277bad8c4543c1f6d3020e7487d387f2f113aebf321cfea66b2c623fee5e6d4b"


# --- a chunk's table -------------------------------------------------------------------------------


def test_issue_ref_round_trip():
    ref = IssueRef.from_json(ISSUE_JSON)
    assert ref == IssueRef(**ISSUE_JSON)
    assert ref.to_json() == ISSUE_JSON
    assert list(ref.to_json()) == list(ISSUE_JSON)


def test_issue_ref_fills_missing_optional_keys():
    ref = IssueRef.from_json({"key": "o_r_issue_5"})
    assert ref == IssueRef("o_r_issue_5", "", "", "", "", 0, "", "", "")
    with pytest.raises(KeyError):
        IssueRef.from_json({"ref": "o/r#5"})


def test_group_info_round_trip():
    group = GroupInfo.from_json(GROUP_JSON)
    assert group.part == 2 and group.parts == 3 and group.left_out == ["bitcoin-core/gui#9"]
    assert group.to_json() == GROUP_JSON
    by_org = dict(GROUP_JSON, by="org", key="bitcoin-core", name="bitcoin-core", repo=None, item="bitcoin-core")
    assert GroupInfo.from_json(by_org).to_json() == by_org


def test_group_info_without_issue_lists_gets_empty_lists():
    bare = {k: v for k, v in GROUP_JSON.items() if k not in ("issues", "left_out")}
    group = GroupInfo.from_json(bare)
    assert group.issues == [] and group.left_out == []
    assert group.to_json() == bare | {"issues": [], "left_out": []}


def test_request_record_leaves_out_optional_keys_when_none():
    data = {
        "request_hash": HASH,
        "attempt": 1,
        "issues": [ISSUE_JSON],
        "truncation": {"body_chars_cut": 12},
        "est_tokens": 2000,
    }
    record = RequestRecord.from_json(data)
    assert record.input_processor is None and record.inputs is None and record.group is None
    assert record.issues == [IssueRef(**ISSUE_JSON)]
    assert record.issue_keys == ["bitcoin-core_gui_issue_1"]
    out = record.to_json()
    assert out == data
    assert set(out) == {"request_hash", "attempt", "issues", "truncation", "est_tokens"}


def test_request_record_of_a_chained_aggregate_round_trips():
    data = {
        "request_hash": HASH,
        "attempt": 2,
        "issues": [ISSUE_JSON, dict(ISSUE_JSON, key="bitcoin-core_gui_issue_7", ref="bitcoin-core/gui#7", number=7)],
        "truncation": {},
        "est_tokens": 9000,
        "input_processor": "issue-summary",
        "inputs": {"bitcoin-core_gui_issue_1": "h1", "bitcoin-core_gui_issue_7": "h7"},
        "group": GROUP_JSON,
    }
    record = RequestRecord.from_json(data)
    assert record.group == GroupInfo.from_json(GROUP_JSON)
    assert record.issue_keys == ["bitcoin-core_gui_issue_1", "bitcoin-core_gui_issue_7"]
    assert record.to_json() == data
    assert RequestRecord.from_json(record.to_json()) == record


def test_request_record_keeps_empty_inputs_of_a_chained_request():
    record = RequestRecord(HASH, 1, [], input_processor="issue-summary", inputs={})
    out = record.to_json()
    assert out["inputs"] == {} and out["input_processor"] == "issue-summary"
    assert "group" not in out
    assert RequestRecord.from_json(out) == record


def test_request_record_defaults():
    record = RequestRecord.from_json({"request_hash": HASH, "attempt": "3"})
    assert record == RequestRecord(HASH, 3, [], {}, 0)
    with pytest.raises(KeyError):
        RequestRecord.from_json({"attempt": 1})


def test_table_round_trip():
    table = {
        custom_id_for(HASH, 1): RequestRecord(HASH, 1, [IssueRef(**ISSUE_JSON)], {}, 10),
        custom_id_for("f" * 64, 2): RequestRecord("f" * 64, 2, [], {"comments_dropped": 3}, 20),
    }
    data = table_to_json(table)
    assert list(data) == list(table)
    assert data[custom_id_for(HASH, 1)]["issues"] == [ISSUE_JSON]
    assert table_from_json(data) == table
    assert table_from_json(None) == {}


def _index() -> ChunkIndex:
    cid = custom_id_for(HASH, 1)
    return ChunkIndex(
        chunk="3c5b0571df6d3810",
        processor="product-labeling",
        provider="local",
        model="offline",
        request_count=1,
        est_tokens=2000,
        requests={cid: RequestRecord(HASH, 1, [IssueRef(**ISSUE_JSON)], {}, 2000)},
    )


def test_chunk_index_round_trip():
    index = _index()
    data = index.to_json()
    assert data == {
        "chunk": "3c5b0571df6d3810",
        "processor": "product-labeling",
        "provider": "local",
        "model": "offline",
        "request_count": 1,
        "est_tokens": 2000,
        "requests": {
            custom_id_for(HASH, 1): {
                "request_hash": HASH,
                "attempt": 1,
                "issues": [ISSUE_JSON],
                "truncation": {},
                "est_tokens": 2000,
            }
        },
    }
    assert ChunkIndex.from_json(data) == index


def test_read_index(tmp_path):
    path = tmp_path / "batch_requests" / "product-labeling" / "3c5b0571df6d3810.index.json"
    atomic_write_json(path, _index().to_json())
    assert read_index(path) == _index()


def test_read_index_of_a_missing_or_broken_file(tmp_path):
    with pytest.raises(OSError):
        read_index(tmp_path / "missing.index.json")
    broken = tmp_path / "broken.index.json"
    broken.write_text('{"chunk": "c1", ')
    with pytest.raises(ValueError):
        read_index(broken)
    incomplete = tmp_path / "incomplete.index.json"
    incomplete.write_text(json.dumps({"chunk": "c1", "processor": "p", "provider": "local"}))
    with pytest.raises(KeyError):
        read_index(incomplete)
