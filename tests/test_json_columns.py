"""db/types.json_loads (orjson on the common path) reads every JSON column as json.loads would.

The documents are what agentmx stores (metadata values: big ints, floats, unicode, nesting), as
json_dumps and older json.dumps wrote them, and number literals as PostgreSQL's JSONB gives them
back (it keeps a number's digits: 1e300 comes back as 1 and 300 zeros).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentmx.db.types import json_dumps, json_loads

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
# JSON's number grammar, whatever its length: what any writer (json, orjson, PostgreSQL) may produce.
_number_literals = st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?\Z")


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types (1 is not 1.0) and NaN equal to NaN, -0.0 not to 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _writings(document: Any) -> list[str]:
    return [
        json_dumps(document),
        json.dumps(document),
        json.dumps(document, ensure_ascii=False, separators=(",", ":")),
    ]


@settings(max_examples=500, deadline=None)
@given(_documents)
@example({"n": 2**64})
@example({"n": -(2**63) - 1})
@example({"x": 0.1 + 0.2, "s": "caf\u00e9 \U0001f600 \ud800"})
# Long digit runs inside strings (Message-IDs), beside a big int or a float, or alone.
@example({"Message-ID": "<bench-49-14552-1796323464326675719@bench.example>", "n": [2**64]})
@example({"Message-ID": "<1796323464326675719.12@x>", "x": [0.5, {"y": 1e300}]})
@example(["<17963234643266757190@x>", {"z": "12345678901234567890123"}])
def test_json_loads_agrees_with_json_loads_on_stored_documents(document: Any) -> None:
    for text in _writings(document):
        assert _same(json_loads(text), json.loads(text)), text
        assert _same(json_loads(text.encode("utf-8", "surrogatepass")), json.loads(text)), text


@settings(max_examples=800, deadline=None)
@given(_number_literals)
@example("1" + "0" * 300)
@example("18446744073709551616")
@example("-0")
@example("2.4703282292062328e-324")
@example("1e400")
def test_json_loads_agrees_with_json_loads_on_number_literals(literal: str) -> None:
    text = '{"v": [' + literal + "]}"
    assert _same(json_loads(text), json.loads(text)), text


def test_json_loads_reads_a_deep_document_with_a_long_digit_run() -> None:
    """Deeper than Python's recursion limit lets a recursive walk go, as deep as orjson reads."""
    text = "[" * 900 + '"1796323464326675719", 36893488147419103232, 0.5' + "]" * 900
    inner = json_loads(text)
    for _ in range(899):
        (inner,) = inner
    assert _same(inner, ["1796323464326675719", 2**65, 0.5])
