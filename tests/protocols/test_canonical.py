"""Canonical encoding: one byte string per value, everything else refused."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.canonical import INT_MAX, INT_MIN, decode, encode, tagged
from protocols.errors import BadInputError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(values)
def test_encode_decode_is_byte_stable(value) -> None:
    data = encode(value)
    back = decode(data)
    assert encode(back) == data
    assert back == value


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly_and_stay_floats(x: float) -> None:
    back = decode(encode([x]))[0]
    assert type(back) is float and (back == x) and math.copysign(1, back) == math.copysign(1, x)


def test_known_encoding() -> None:
    assert encode({"b": [1, 2.0, None, True], "a": "é\n", "c": 1e-05}) == '{"a":"é\\n","b":[1,2.0,null,true],"c":1e-05}'.encode()


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (float("nan"), "only finite floats"),
        (float("inf"), "only finite floats"),
        ({1: "x"}, "object key 1 is int"),
        (2**63, "outside the signed 64-bit range"),
        ("\ud800", "lone surrogate"),
        (b"bytes", "type bytes cannot be encoded"),
        ({"a": {1, 2}}, "type set cannot be encoded"),
    ],
)
def test_encode_rejects_values_outside_the_subset(value, rule: str) -> None:
    with pytest.raises(BadInputError, match=rule):
        encode(value)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b'{"a":1, "b":2}', "not the canonical encoding"),  # whitespace
        (b'{"b":1,"a":2}', "not the canonical encoding"),  # key order
        (b'{"a":1,"a":2}', "not the canonical encoding"),  # duplicate key
        (b"[1E5]", "not the canonical encoding"),  # exponent spelling
        (b"[1.50]", "not the canonical encoding"),  # non-shortest float
        (b'["\\u0041"]', "not the canonical encoding"),  # needless escape
        (b"\xef\xbb\xbf[1]", "not canonical JSON"),  # BOM
        (b"[NaN]", "not a canonical number"),
        (b"[Infinity]", "not a canonical number"),
        (b"[99999999999999999999]", "outside the signed 64-bit range"),
        (b'["\\ud800"]', "cannot be re-encoded"),
        (b"\xff", "not canonical JSON"),
        (b"[1,]", "not canonical JSON"),
    ],
)
def test_decode_rejects_non_canonical_bytes(data: bytes, rule: str) -> None:
    with pytest.raises(BadInputError, match=rule):
        decode(data)


def test_domain_tags_separate_messages() -> None:
    assert tagged(b"claim", b"x") != tagged(b"head", b"x")
    with pytest.raises(ValueError, match="no NUL"):
        tagged(b"a\x00b", b"c")
