"""Parsing of ``multipart/related`` bodies as returned by WADO-RS (RFC 2046 framing)."""

from __future__ import annotations

import re

from protocols.errors import TransportError

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def parse_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a multipart body, in order, without their part headers.

    Raises
    ------
    TransportError
        If the content type is not multipart or names no boundary, or the body is not framed by it.
    """
    if not content_type.lower().startswith("multipart/"):
        raise TransportError(f"expected a multipart/related reply, got content type {content_type.split(';')[0]!r}")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise TransportError("multipart reply names no boundary; the server's reply cannot be split into instances")
    # The delimiter includes the CRLF before it (RFC 2046 5.1.1); prefixing one lets the first
    # boundary at the very start match too, and keeps payload bytes that merely contain "--x".
    delimiter = b"\r\n--" + match.group(1).encode("ascii")
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 3:
        raise TransportError("multipart reply is not framed by its boundary; the transfer was probably cut short")
    parts = []
    # pieces[0] is the preamble; the piece after the closing delimiter starts with "--".
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        header_end = piece.find(b"\r\n\r\n")
        if header_end < 0:
            raise TransportError("multipart part has no header/body separator; the reply is malformed")
        parts.append(piece[header_end + 4 :])
    else:
        raise TransportError("multipart reply has no closing boundary; the transfer was cut short")
    return parts
