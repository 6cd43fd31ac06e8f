"""Canonical serialization: the one byte encoding used for everything that is signed or hashed.

Rules (a strict subset of JSON, RFC 8259; every value has exactly one encoding):

1. Values are ``None`` (``null``), ``bool``, ``int``, ``float``, ``str``, ``list``/``tuple``
   (encoded as an array) and ``dict`` with ``str`` keys. Nothing else (no bytes, no sets, no
   enums: callers convert to a plain value first).
2. Objects: keys sorted by Unicode code point, no duplicate keys, no whitespace anywhere
   (separators ``,`` and ``:``).
3. Text is UTF-8; strings are escaped exactly as Python's ``json`` does with
   ``ensure_ascii=False`` (``\\"``, ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f``, other
   control characters as ``\\u00XX``); lone surrogates are rejected.
4. Integers are plain decimal without a fraction or exponent, limited to the signed 64-bit range
   so any verifier in any language reads them exactly. ``bool`` is ``true``/``false``, never 0/1.
5. Floats are written as Python's shortest round-trip ``repr`` (``0.1``, ``1e-05``, ``1.0``):
   always with a ``.`` or an exponent, so a float never decodes as an integer. NaN and
   +-infinity are rejected: the ledger spells "epsilon is infinite" (non-DP baselines) as the
   string ``"inf"`` at the schema level (:mod:`protocols.ledger`), never as a JSON number.
6. :func:`decode` accepts only bytes that :func:`encode` would produce for the decoded value,
   byte for byte (it re-encodes and compares). Any other spelling of the same data (whitespace,
   key order, duplicate keys, ``\\u0041`` for ``A``, ``1E5``, a BOM) is refused, so
   ``encode(decode(b)) == b`` for every accepted ``b``.

Hashes and signatures always cover a *domain tag* followed by canonical bytes (see
:func:`tagged`), so bytes signed for one purpose can never be replayed as another.
"""

from __future__ import annotations

import json
from typing import Any

from protocols.errors import BadInputError

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=True
)


# Not canonical: a value cannot be encoded, or bytes are not the canonical encoding. An alias, not
# a subclass, so the exit-code table stays one code per class; the ledger reader turns it into an
# integrity error when the bytes came from stored evidence.
CanonicalError = BadInputError


def _check(value: Any, path: str) -> None:
    # Validate explicitly: json.dumps silently turns int/float/bool/None keys into strings and
    # accepts integers of any size, both of which would make the encoding ambiguous. Iterative
    # with exact type tests because this runs on every signed record.
    stack: list[tuple[Any, str]] = [(value, path)]
    pop, push = stack.pop, stack.append
    while stack:
        v, where = pop()
        t = type(v)
        if t is str:
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise CanonicalError(f"{where}: string is not valid Unicode (lone surrogate)") from exc
        elif t is dict:
            for key, item in v.items():
                if type(key) is not str:
                    raise CanonicalError(f"{where}: object key {key!r} is {type(key).__name__}, expected str")
                push((key, where))
                push((item, f"{where}.{key}"))
        elif t is int:
            if not INT_MIN <= v <= INT_MAX:
                raise CanonicalError(f"{where}: integer {v} outside the signed 64-bit range")
        elif t is float:
            if v - v != 0.0:  # NaN and +-inf (faster than math.isfinite on this path)
                raise CanonicalError(f"{where}: {v!r} is not allowed (only finite floats; spell infinity as \"inf\")")
        elif t is list or t is tuple:
            for i, item in enumerate(v):
                push((item, f"{where}[{i}]"))
        elif v is None or t is bool:
            pass
        else:
            raise CanonicalError(
                f"{where}: type {t.__name__} cannot be encoded; allowed: None, bool, int, float, str, list, dict"
            )


def encode(value: Any) -> bytes:
    """The canonical bytes of ``value`` (see the module docstring for the rules).

    Raises
    ------
    CanonicalError
        If ``value`` contains a type, number or string outside the canonical subset.
    """
    _check(value, "$")
    return _ENCODER.encode(value).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not a canonical number; only finite numbers are allowed")


def _parse_int(literal: str) -> int:
    value = int(literal)
    if not INT_MIN <= value <= INT_MAX:
        raise CanonicalError(f"integer {literal} outside the signed 64-bit range")
    return value


# One decoder for all calls: json.loads with hooks would build a new decoder every time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int)


def decode(data: bytes) -> Any:
    """Parse canonical bytes; refuse anything that is not exactly ``encode`` of its value.

    Raises
    ------
    CanonicalError
        If ``data`` is not UTF-8 JSON, or is JSON but not in canonical form.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CanonicalError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        if isinstance(exc, CanonicalError):
            raise
        raise CanonicalError(f"not canonical JSON: {exc}") from exc
    try:
        # json.loads (with the hooks above) only yields str keys, finite floats, 64-bit ints and
        # plain types, so the fast encoder suffices; lone surrogates fail the UTF-8 step.
        again = _ENCODER.encode(value).encode("utf-8")
    except (CanonicalError, UnicodeEncodeError) as exc:
        raise CanonicalError(f"decoded value cannot be re-encoded canonically: {exc}") from exc
    if again != data:
        raise CanonicalError(
            "bytes are valid JSON but not the canonical encoding (sorted keys, no whitespace, no "
            "duplicate keys, shortest float repr, minimal escapes); re-encode with protocols.canonical.encode"
        )
    return value


def tagged(domain: bytes, payload: bytes) -> bytes:
    """``domain`` + NUL + ``payload``: what every hash and signature actually covers.

    The NUL cannot occur in a domain tag, so two different (domain, payload) pairs never give
    the same message.
    """
    if b"\x00" in domain or not domain:
        raise ValueError("domain tag must be non-empty and contain no NUL byte")
    return domain + b"\x00" + payload
