"""multipart/related parsing of WADO-RS replies, including bytes that look like a boundary."""

from __future__ import annotations

import pytest

from agent.pacs.multipart import parse_multipart
from protocols.errors import TransportError

CT = 'multipart/related; type="application/dicom"; boundary=XYZ'


def _body(*parts: bytes, boundary: str = "XYZ", closed: bool = True) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if closed else b"")


def test_parts_are_returned_exactly() -> None:
    a, b = b"\x00DICM\r\n\r\nbinary--XYZ-not-a-delimiter", b"second\r\n"
    assert parse_multipart(_body(a, b), CT) == [a, b]


def test_quoted_boundary_and_preamble() -> None:
    body = b"preamble to ignore\r\n" + _body(b"one", boundary="a b")
    assert parse_multipart(body, 'multipart/related; boundary="a b"; type="application/dicom"') == [b"one"]


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (b"{}", "application/json", "expected a multipart/related reply"),
        (_body(b"x"), "multipart/related", "names no boundary"),
        (b"garbage", CT, "not framed by its boundary"),
        (_body(b"x", b"y", closed=False), CT, "no closing boundary"),
        (b"--XYZ\r\nno separator--XYZ\r\n--XYZ--", CT, "not framed|no header/body separator"),
    ],
)
def test_malformed_replies_are_transport_errors(body: bytes, content_type: str, match: str) -> None:
    with pytest.raises(TransportError, match=match):
        parse_multipart(body, content_type)
