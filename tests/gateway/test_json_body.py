"""The gateway's strict parse of request bodies (``offloop.codec.jsonmap.parse_json``), without
sockets: what :func:`json.loads` lets through that the mapping must not see (issue 11, items 9
and 12), and, for any input, nothing but the value or a 400."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offloop.codec.jsonmap import JsonSyntaxError, parse_json
from offloop.errors import LocalProtocolError
from offloop.gateway.statuses import status_for

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(_values)
def test_any_json_document_parses_to_its_value(value: Any) -> None:
    assert parse_json(json.dumps(value).encode()) == value


@given(st.binary(max_size=200))
def test_any_bytes_give_the_value_or_a_400(data: bytes) -> None:
    try:
        parse_json(data)
    except JsonSyntaxError as exc:
        assert status_for(exc).status == 400


@given(st.dictionaries(st.text(), _scalars, min_size=1, max_size=5), st.data())
def test_a_duplicate_key_is_refused_by_name(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    text = json.dumps(obj)[:-1] + f", {json.dumps(key)}: null}}"
    with pytest.raises(JsonSyntaxError, match="duplicate key") as info:
        parse_json(text.encode())
    assert json.dumps(key)[:30] in str(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_bare_nan_and_infinity_are_not_json(literal: str) -> None:
    with pytest.raises(JsonSyntaxError, match=f'string "{literal}"'):
        parse_json(f'{{"x": [1, {literal}]}}'.encode())
    assert parse_json(f'{{"x": "{literal}"}}'.encode()) == {"x": literal}


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
def test_nesting_past_the_parser_is_a_400(depth: int) -> None:
    for opener, closer in (b"[", b"]"), (b'{"a":', b"}"):
        with pytest.raises(LocalProtocolError, match="nested too deep"):
            parse_json(opener * depth + b"0" + closer * depth)
    assert parse_json(b"[" * 50 + b"]" * 50) is not None


def test_a_number_past_the_double_range_parses_as_infinite() -> None:
    # The mapping refuses it where a value is decoded, with the value's path.
    assert parse_json(b"[1e400, -1e400]") == [float("inf"), float("-inf")]
