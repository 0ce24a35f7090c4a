"""A multipart/form-data body (an upload, such as audio to transcribe): what the gateway reads
of it and the one change it makes (pure, no I/O).

The gateway reads the text fields (``model`` above all) and checks that the required part is
there; it never decodes a file. The body is kept as the client sent it, split at its
delimiters, so that rewriting ``model`` for a deployment swaps one part and leaves every other
byte (the file's included) as it was. RFC 7578 / RFC 2046: a part's content cannot contain the
delimiter, so splitting at it is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swarmgate.errors import BadRequest

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
# ``name=`` as its own parameter, not the tail of ``filename=``.
_NAME = re.compile(rb'(?:^|;)\s*name="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb";\s*filename\*?=", re.IGNORECASE)
_HEADERS_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    is_file: bool
    head: bytes  # the part's headers, as sent
    content: bytes


@dataclass(frozen=True, slots=True)
class Form:
    boundary: bytes
    content_type: str  # the client's, boundary included: the deployment gets the same
    preamble: bytes
    parts: tuple[Part, ...]
    epilogue: bytes

    def field(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def fields(self) -> dict[str, str]:
        """The text fields (files left out), for whoever needs to read them."""
        return {p.name: p.content.decode("utf-8", "replace") for p in self.parts if not p.is_file}

    def with_field(self, name: str, value: str) -> bytes:
        """The body with field ``name``'s value replaced (or the field appended)."""
        old = self.field(name)
        part = Part(name, False, old.head if old else _text_head(name), value.encode())
        parts = [part if p.name == name else p for p in self.parts]
        if old is None:
            parts.append(part)
        delimiter = b"\r\n--" + self.boundary
        segments = (b"\r\n" + p.head + _HEADERS_END + p.content for p in parts)
        body = delimiter.join([b"", *segments, b"--" + self.epilogue])
        # The first delimiter's CRLF belongs to the preamble; with none, the body starts "--".
        return self.preamble + body if self.preamble else body[2:]


def _text_head(name: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode()


def boundary_of(content_type: str | None) -> bytes:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("the request body must be multipart/form-data")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise BadRequest("the multipart/form-data content type names no boundary")
    return (match.group(1) or match.group(2)).encode("latin-1")


def parse_form(body: bytes, content_type: str | None) -> Form:
    boundary = boundary_of(content_type)
    assert content_type is not None
    # A CRLF before the first delimiter makes every delimiter the same "\r\n--boundary".
    segments = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if len(segments) < 2 or not segments[-1].startswith(b"--"):
        raise BadRequest("the multipart/form-data body is truncated or malformed")
    parts = []
    for segment in segments[1:-1]:
        # After the delimiter: optional whitespace, CRLF, the headers, an empty line.
        start = segment.find(b"\r\n")
        end = segment.find(_HEADERS_END, start)
        if start < 0 or end < 0 or segment[:start].strip():
            raise BadRequest("a part of the multipart/form-data body is malformed")
        head = segment[start + 2 : end]
        parts.append(_part(head, segment[end + 4 :]))
    preamble = segments[0][2:]  # without the CRLF added above
    return Form(boundary, content_type, preamble, tuple(parts), segments[-1][2:])


def _part(head: bytes, content: bytes) -> Part:
    disposition = next(
        (line for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition:")),
        None,
    )
    if disposition is None:
        raise BadRequest("a part of the multipart/form-data body has no Content-Disposition")
    name = _NAME.search(disposition.split(b":", 1)[1])
    if name is None:
        raise BadRequest("a part of the multipart/form-data body has no name")
    return Part(
        name.group(1).decode("utf-8", "replace"),
        _FILENAME.search(disposition) is not None,
        head,
        content,
    )
