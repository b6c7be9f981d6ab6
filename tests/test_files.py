"""files.py: `pretty_json` writes exactly what `json.dumps(sort_keys=True, indent=2, ensure_ascii=False)` does."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest

from batchpipe.files import pretty_json

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "issues"


def standard(value):
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class Text(str):
    pass


class Number(int):
    pass


VALUES = [
    None,
    True,
    0,
    -0.0,
    1.5,
    1e300,
    1e-7,
    10**30,
    "",
    'é \u2028 \x00 " \\ \ud800 \n',
    Text("a str subclass"),
    Number(7),
    [],
    {},
    [[]],
    {"": [{}]},
    (1, "two", None),
    {"b": 1, "a": [None, False, {"z": {}, "y": []}], "c": {"d": [1.0, 2, "3"]}},
    OrderedDict([("b", 2), ("a", 1)]),
    # left to the standard encoder: its spelling of NaN and the infinities, and keys that are not strings
    float("nan"),
    [float("inf"), float("-inf")],
    {1: "one", 2: {"x": 3}},
    {"a": {None: 1}},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_pretty_json_is_the_standard_encoding(value):
    assert pretty_json(value) == standard(value)


def test_pretty_json_of_the_bundled_issues_and_a_result_like_document():
    docs = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(SAMPLE.glob("*.json"))]
    assert docs
    docs.append({"answer": {"labels": [{"name": "bug", "confidence": 0.9}]}, "usage": {"input_tokens": 12}})
    for doc in docs:
        assert pretty_json(doc) == standard(doc)


def test_pretty_json_fails_as_the_standard_encoder_does():
    with pytest.raises(TypeError):
        pretty_json({"a": object()})
    with pytest.raises(TypeError):
        pretty_json({"a": 1, 2: "b"})  # keys that cannot be sorted together
    with pytest.raises(TypeError):
        pretty_json({"a": {None: 1, True: 2}})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        pretty_json(loop)
