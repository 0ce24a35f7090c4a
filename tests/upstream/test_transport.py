"""The HTTP transport against real sockets: every aiohttp failure arrives as one of ours."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from swarmgate.errors import UpstreamBroken, UpstreamError, UpstreamUnreachable
from swarmgate.types import Origin
from swarmgate.upstream.transport import HttpTransport

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Serve], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(serve: Serve) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await serve(reader, writer)
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()
    for writer in writers:
        writer.close()
    await asyncio.sleep(0)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_an_answer_is_read_whole_or_in_chunks(
    server: Callable[[Serve], Awaitable[str]],
) -> None:
    seen: list[bytes] = []

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/x\r\nContent-Length: 5\r\n\r\nhello"
            )
            await writer.drain()

    url = await server(ok)
    transport = HttpTransport()
    try:
        response = await transport.send(Origin(url, 1), "/v1/x", b"{}", {"x-a": "1"})
        assert response.status == 200 and response.headers.get("Content-Type") == "text/x"
        assert await response.read() == b"hello"
        response = await transport.send(Origin(url, 2), "/v1/x", b"{}", {})
        assert b"".join([c async for c in response.chunks()]) == b"hello"
        response.close()
        assert b"x-a: 1" in seen[0].lower() and seen[0].startswith(b"POST /v1/x ")
        # Two base URLs of one origin share one pool of connections.
        assert len(transport._sessions) == 1
    finally:
        await transport.close()


async def test_a_server_that_cannot_be_reached_is_unreachable() -> None:
    transport = HttpTransport()
    try:
        with pytest.raises(UpstreamUnreachable, match="could not reach"):
            await transport.send(Origin(_dead_url(), 1), "/v1/x", b"{}", {})
    finally:
        await transport.close()


async def test_a_body_cut_short_is_broken_while_read(
    server: Callable[[Serve], Awaitable[str]],
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    url = await server(cut)
    transport = HttpTransport()
    try:
        response = await transport.send(Origin(url, 1), "/v1/x", b"{}", {})
        with pytest.raises(UpstreamBroken):
            await response.read()
        response = await transport.send(Origin(url, 1), "/v1/x", b"{}", {})
        with pytest.raises(UpstreamBroken, match="broke off the stream"):
            async for _ in response.chunks():
                pass
    finally:
        await transport.close()


async def test_garbage_instead_of_http_is_an_upstream_error(
    server: Callable[[Serve], Awaitable[str]],
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        writer.close()

    url = await server(garbage)
    transport = HttpTransport()
    try:
        with pytest.raises(UpstreamError, match="invalid HTTP response"):
            await transport.send(Origin(url, 1), "/v1/x", b"{}", {})
    finally:
        await transport.close()


async def test_a_pooled_connection_the_server_closed_is_not_a_failed_request(
    server: Callable[[Serve], Awaitable[str]],
) -> None:
    received = 0

    async def closes_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request of each connection; a second one on it finds the
        # connection closed, as when the server's idle timeout crosses the request.
        nonlocal received
        await _read_request(reader)
        received += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await _read_request(reader)
            received += 1

    url = await server(closes_idle)
    transport = HttpTransport()
    origin = Origin(url, 1, keepalive=30)
    try:
        for _ in range(5):
            response = await transport.send(origin, "/v1/x", b"{}", {})
            assert await response.read() == b"ok"
        # Requests 2 and 4 found their pooled connection closed: each was sent once more, on
        # a connection of its own; 3 and 5 opened new pooled connections.
        assert received == 7
    finally:
        await transport.close()


async def test_a_server_that_drops_every_request_is_resent_once_only(
    server: Callable[[Serve], Awaitable[str]],
) -> None:
    received = 0

    async def drops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await _read_request(reader)
        received += 1

    url = await server(drops)
    transport = HttpTransport()
    try:
        with pytest.raises(UpstreamUnreachable, match="ServerDisconnectedError"):
            await transport.send(Origin(url, 1), "/v1/x", b"{}", {})
        assert received == 2
    finally:
        await transport.close()


async def test_a_probe_is_a_get_whose_status_is_returned_and_body_dropped(
    server: Callable[[Serve], Awaitable[str]],
) -> None:
    seen: list[bytes] = []

    async def health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError:
                return
            status = b"200 OK" if b"/health " in seen[-1] else b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    url = await server(health)
    transport = HttpTransport()
    try:
        origin = Origin(url, 1)
        assert await transport.probe(origin, "/health", {"authorization": "Bearer k"}) == 200
        assert await transport.probe(origin, "/v1/models", {}) == 404
        assert seen[0].startswith(b"GET /health ") and b"authorization: bearer k" in seen[0].lower()
        with pytest.raises(UpstreamUnreachable):
            await transport.probe(Origin(_dead_url(), 1), "/health", {})
    finally:
        await transport.close()
