"""The download stage's lean HTTP/1.1 client (stages.http1), through ``fetch``: what it does
itself (keep-alive reuse, a kept connection the server closed, 1xx heads, bodies framed by
length, chunks or the end of the connection, malformed answers, per-host limits, cancellation)
and what it hands to aiohttp (a Content-Encoding, a long body without a Content-Length).

Raw servers (``asyncio.start_server`` on 127.0.0.1 port 0) answer with the exact bytes each
test needs; the failure-mode app of tests/http_server covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from yarl import URL

from stages import download, http1
from stages.download import (
    ConnectionFailed,
    DownloadConfig,
    Downloaded,
    DownloadError,
    TooLarge,
    TruncatedBody,
    fetch,
    make_session,
)
from tests.http_server import serve

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def cfg(**overrides: Any) -> DownloadConfig:
    values: dict[str, Any] = {
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 10.0,
        "retries": 0,
        "backoff": 0.01,
        "allow_private_hosts": True,
    }
    values.update(overrides)
    return DownloadConfig(**values)


class Raw:
    """A raw HTTP server: ``handler`` gets each connection; counts connections and heads."""

    def __init__(self, handler: Callable[[Raw, asyncio.StreamReader, asyncio.StreamWriter], Any]):
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.url = ""
        self.writers: set[asyncio.StreamWriter] = set()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await self.handler(self, reader, writer)
        finally:
            self.writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[Raw, asyncio.StreamReader, asyncio.StreamWriter], Any],
) -> AsyncIterator[Raw]:
    raw = Raw(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()
        for writer in list(raw.writers):  # ends the handlers still reading
            writer.transport.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # the handlers see their connection go


def reply(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", "Content-Type: image/jpeg", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
def server() -> Iterator[str]:
    with serve() as base_url:
        yield base_url


async def hits(base: str, path: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/hits") as response:
        counts: dict[str, int] = await response.json()
    return counts.get(path, 0)


async def fetch_from(
    handler: Callable[[Raw, asyncio.StreamReader, asyncio.StreamWriter], Any],
    *paths: str,
    **overrides: Any,
) -> tuple[list[Downloaded], Raw]:
    """Fetch each of ``paths`` in turn on one session from a raw server running ``handler``."""
    async with raw_server(handler) as raw:
        config = cfg(**overrides)
        async with make_session(config) as session:
            got = [await fetch(session, f"{raw.url}{path}", config) for path in paths]
    return got, raw


# --- keep-alive -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_keep_alive_connection_is_reused() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await raw.head(reader)
            w.write(reply(b"abc"))
            await w.drain()

    async with raw_server(handler) as raw:
        config = cfg()
        async with make_session(config) as session:
            for i in range(5):
                got = await fetch(session, f"{raw.url}/x{i}", config)
                assert (got.data, got.attempts) == (b"abc", 1)
            # the kept connection holds nothing of the answers it delivered
            lean = download._SESSIONS[session].lean
            assert lean is not None
            (kept,) = [conn for conns in lean.idle.values() for conn in conns]
            assert (kept.chunks, kept.head, kept.url, kept.fields) == ([], None, None, {})
        assert (raw.connections, raw.requests) == (1, 5)


@pytest.mark.asyncio
async def test_kept_connection_the_server_closed_is_replaced_without_a_retry() -> None:
    """The server answers one request per connection without saying ``Connection: close``:
    the kept connection is dead when the next request goes out; the client opens a new one
    (the download's attempt count stays 1; retries are off)."""

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(reply(b"abc"))
        await w.drain()

    async with raw_server(handler) as raw:
        config = cfg()
        async with make_session(config) as session:
            for i in range(3):
                await asyncio.sleep(0.05)  # let the server's close arrive first, or not
                got = await fetch(session, f"{raw.url}/x{i}", config)
                assert (got.data, got.attempts) == (b"abc", 1)
        assert raw.requests == 3
        assert raw.connections == 3


@pytest.mark.asyncio
async def test_http10_and_connection_close_are_not_reused() -> None:
    answers = iter(
        [b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na", reply(b"b", "Connection: close")]
    )

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(next(answers, reply(b"c")))
        await w.drain()
        await reader.read()  # keep the connection open: the client must not reuse it

    got, raw = await fetch_from(handler, "/0", "/1", "/2")
    assert [g.data for g in got] == [b"a", b"b", b"c"]
    assert raw.connections == 3


@pytest.mark.asyncio
async def test_closing_the_session_closes_the_lean_connections() -> None:
    closed = asyncio.Event()

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(reply(b"abc"))
        await w.drain()
        await reader.read()  # EOF: the client closed the kept connection
        closed.set()

    async with raw_server(handler) as raw:
        config = cfg()
        async with make_session(config) as session:
            assert (await fetch(session, f"{raw.url}/a", config)).data == b"abc"
            assert not closed.is_set()
        async with asyncio.timeout(5):
            await closed.wait()


# --- framing --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_informational_head_before_the_answer_is_skipped() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(reply(b"abc", "X-Robots-Tag: noai"))
        await w.drain()

    (got,), _ = await fetch_from(handler, "/a")
    assert (got.status, got.data, got.content_type, got.robots) == (
        200,
        b"abc",
        "image/jpeg",
        "noai",
    )


@pytest.mark.asyncio
async def test_body_until_the_connection_closes() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
        for _ in range(4):
            w.write(b"x" * 1000)
            await w.drain()
            await asyncio.sleep(0.01)

    (got,), _ = await fetch_from(handler, "/a")
    assert got.data == b"x" * 4000


@pytest.mark.asyncio
async def test_body_until_close_over_the_cap_is_too_large() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000)
        await w.drain()
        await reader.read()

    with pytest.raises(TooLarge, match="max_bytes 4096"):
        await fetch_from(handler, "/a", max_bytes=4096)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "malformed response: Expected dot"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed response: Expected HTTP/"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "Invalid header token"),
        (b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n", "Unexpected space after start line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "Duplicate Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Invalid character in Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "Invalid character in chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
            "Expected LF after chunk data",
        ),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "head longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "Duplicate"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "Content-Length can't be present with Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            "Missing expected CR after chunk size",  # bare LF after the head: refused
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101 Switching"),
    ],
)
@pytest.mark.asyncio
async def test_malformed_answers_fail_as_connection_errors(answer: bytes, message: str) -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(answer)
        await w.drain()
        await reader.read()

    with pytest.raises(ConnectionFailed, match=message):
        await fetch_from(handler, "/a")


@pytest.mark.asyncio
async def test_connection_closed_in_the_head_or_chunks_is_reported() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ]
    )

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(next(answers))
        await w.drain()

    async with raw_server(handler) as raw:
        config = cfg()
        async with make_session(config) as session:
            with pytest.raises(ConnectionFailed, match="middle of the response head"):
                await fetch(session, f"{raw.url}/a", config)
            with pytest.raises(TruncatedBody, match="body incomplete") as info:
                await fetch(session, f"{raw.url}/b", config)
    assert info.value.status == 200


@pytest.mark.asyncio
async def test_chunked_with_extensions_and_trailers() -> None:
    body = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await raw.head(reader)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 4):  # in small pieces: every parser state is met
                w.write(body[i : i + 4])
                await w.drain()
                await asyncio.sleep(0.001)

    got, raw = await fetch_from(handler, "/0", "/1")
    assert [g.data for g in got] == [b"abcde"] * 2
    assert raw.connections == 1


@pytest.mark.asyncio
async def test_bytes_past_the_body_drop_the_connection() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await raw.head(reader)
            w.write(reply(b"abc") + b"HTTP/1.1 200 OK\r\n")  # the start of an answer to nothing
            await w.drain()

    got, raw = await fetch_from(handler, "/0", "/1")
    assert [g.data for g in got] == [b"abc"] * 2
    assert raw.connections == 2


@pytest.mark.asyncio
async def test_chunked_body_over_the_cap_is_too_large() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b"1000\r\n" + b"x" * 4096 + b"\r\n1\r\nx\r\n0\r\n\r\n")
        await w.drain()
        await reader.read()

    with pytest.raises(TooLarge, match="max_bytes 4096"):
        await fetch_from(handler, "/a", max_bytes=4096)


# --- handed to aiohttp ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_compressed_body_is_decoded_through_aiohttp(server: str) -> None:
    config = cfg()
    async with make_session(config) as session:
        got = await fetch(session, f"{server}/gzip-bomb?size=5000", config)
    assert got.data == b"\0" * 5000
    assert (
        await hits(server, "/gzip-bomb?size=5000") == 2
    )  # the lean client saw the encoding, then aiohttp


@pytest.mark.asyncio
async def test_head_with_bare_lf_line_ends_goes_through_aiohttp() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 200 OK\nContent-Length: 3\nConnection: close\n\nabc")
        await w.drain()

    (got,), raw = await fetch_from(handler, "/a")
    assert got.data == b"abc"
    assert raw.requests == 2


@pytest.mark.asyncio
async def test_chunk_framing_longer_than_the_body_goes_through_aiohttp() -> None:
    """Chunk extensions (not kept by llhttp, but bytes to read) many times the body: aiohttp
    reads the answer; the lean client stops before they cost more than a bound."""
    body = b"".join(
        b"1;ext=" + b"e" * 100 + b"\r\n" + bytes([65 + i % 26]) + b"\r\n" for i in range(2000)
    )

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 50_000):  # in pieces: the bound is checked per read
            w.write(body[i : i + 50_000])
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")
        await w.drain()

    (got,), raw = await fetch_from(handler, "/a")
    assert got.data == bytes(65 + i % 26 for i in range(2000))
    assert raw.requests == 2


@pytest.mark.asyncio
async def test_long_chunked_body_goes_through_aiohttp(server: str) -> None:
    size = 3 * 2**20  # over the lean client's 1 MiB for a body without a Content-Length
    config = cfg()
    async with make_session(config) as session:
        got = await fetch(session, f"{server}/chunked?size={size}", config)
    assert got.data == b"\1" * size
    assert await hits(server, f"/chunked?size={size}") == 2


@pytest.mark.asyncio
async def test_short_chunked_body_stays_lean(server: str) -> None:
    config = cfg()
    async with make_session(config) as session:
        got = await fetch(session, f"{server}/chunked?size=100000", config)
    assert got.data == b"\1" * 100_000
    assert await hits(server, "/chunked?size=100000") == 1


# --- limits and cancellation ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_limit_per_host_bounds_requests_in_flight() -> None:
    now = peak = 0

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal now, peak
        while True:
            await raw.head(reader)
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.02)
            now -= 1
            w.write(reply(b"abc"))
            await w.drain()

    async with raw_server(handler) as raw:
        config = cfg(limit=8, limit_per_host=3)
        async with make_session(config) as session:
            got = await asyncio.gather(
                *(fetch(session, f"{raw.url}/{i}", config) for i in range(12))
            )
    assert [g.data for g in got] == [b"abc"] * 12
    assert peak == 3
    assert raw.connections <= 3


@pytest.mark.asyncio
async def test_cancelled_download_frees_its_slot_and_connection() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await raw.head(reader)
        if b"GET /slow" in head:
            await reader.read()  # never answers; returns when the client hangs up
            return
        w.write(reply(b"fast"))
        await w.drain()

    async with raw_server(handler) as raw:
        config = cfg(limit=1, limit_per_host=1)
        async with make_session(config) as session:
            slow = asyncio.create_task(fetch(session, f"{raw.url}/slow", config))
            await asyncio.sleep(0.1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            got = await fetch(session, f"{raw.url}/fast", config)
    assert got.data == b"fast"
    assert raw.connections == 2


@pytest.mark.asyncio
async def test_waiters_for_a_busy_host_do_not_hold_back_another_host() -> None:
    slots = http1._Slots(limit=4, per_host=1)
    a, b = ("http", "a", 80), ("http", "b", 80)
    await slots.acquire(a)
    waiting = asyncio.create_task(slots.acquire(a))
    await asyncio.sleep(0)
    assert slots.try_acquire(b)  # host a's waiter does not block host b
    assert not waiting.done()
    slots.release(a)
    await asyncio.wait_for(waiting, 1)
    assert slots.hosts == {a: 1, b: 1}
    assert (slots.used, slots.waiters, slots.waiting) == (2, type(slots.waiters)(), {})


@pytest.mark.asyncio
async def test_a_waiter_cancelled_after_its_grant_passes_the_slot_on() -> None:
    slots = http1._Slots(limit=1, per_host=1)
    key = ("http", "a", 80)
    await slots.acquire(key)
    first = asyncio.create_task(slots.acquire(key))
    second = asyncio.create_task(slots.acquire(key))
    await asyncio.sleep(0)
    slots.release(key)  # granted to `first`...
    first.cancel()  # ...which is cancelled before it runs: the slot goes to `second`
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert (slots.used, slots.hosts, slots.waiting) == (1, {key: 1}, {})


@pytest.mark.asyncio
async def test_read_timeout_of_a_stalled_body() -> None:
    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await raw.head(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await w.drain()
        await reader.read()

    with pytest.raises(DownloadError, match=r"no data for 0\.3 s") as info:
        await fetch_from(handler, "/a", read_timeout=0.3)
    assert type(info.value).__name__ == "DownloadTimeout"


@pytest.mark.asyncio
async def test_fragment_is_not_sent_nor_in_the_final_url() -> None:
    heads: list[bytes] = []

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        heads.append(await raw.head(reader))
        w.write(reply(b"abc"))
        await w.drain()

    (got,), raw = await fetch_from(handler, "/a%20b?q=1#part")
    assert heads[0].startswith(b"GET /a%20b?q=1 HTTP/1.1\r\n")
    assert b"Accept-Encoding: identity\r\n" in heads[0]
    assert (got.url, got.final_url) == (f"{raw.url}/a%20b?q=1#part", f"{raw.url}/a%20b?q=1")


@pytest.mark.asyncio
async def test_idle_connections_are_bounded_in_all_and_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hosts are many in a URL list: idle connections stay within ``limit`` in all (the oldest
    go first) and none is kept past the idle time."""
    closed = 0

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal closed
        while True:
            try:
                await raw.head(reader)
            except asyncio.IncompleteReadError:
                closed += 1  # the client closed this kept connection
                raise
            w.write(reply(b"abc"))
            await w.drain()

    async with contextlib.AsyncExitStack() as stack:
        raws = [await stack.enter_async_context(raw_server(handler)) for _ in range(4)]
        config = cfg(limit=2, limit_per_host=2)
        async with make_session(config) as session:
            lean = download._SESSIONS[session].lean
            assert lean is not None
            for raw in raws:  # four hosts, one after the other
                assert (await fetch(session, f"{raw.url}/a", config)).data == b"abc"
            assert [len(conns) for conns in lean.idle.values()] == [1, 1]
            assert set(lean.idle) == {http1._key(URL(raw.url)) for raw in raws[2:]}
            assert len(lean.lru) == 2
            await asyncio.sleep(0.1)
            assert closed == 2  # the first two hosts' connections, evicted
            monkeypatch.setattr(http1, "_IDLE_SECONDS", 0.05)
            assert (await fetch(session, f"{raws[0].url}/b", config)).data == b"abc"
            assert set(lean.idle) == {http1._key(URL(raws[0].url))}  # the older two expired
            await asyncio.sleep(0.1)
            assert closed == 4


# --- https ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_server(ca: trustme.CA) -> AsyncIterator[tuple[str, Counter[str]]]:
    """An https server on 127.0.0.1 with a certificate of ``ca`` for that address."""
    hits: Counter[str] = Counter()

    async def image(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(body=b"over tls", content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{name}", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    try:
        await site.start()
        yield f"https://127.0.0.1:{site.port}", hits
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_https_through_the_lean_client(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    monkeypatch.setattr(http1.Http1Client, "_tls_context", lambda self: trusting)
    async with tls_server(ca) as (base, hits):
        config = cfg()
        async with make_session(config) as session:
            for name in ("a", "b"):
                got = await fetch(session, f"{base}/{name}", config)
                assert (got.data, got.attempts, got.final_url) == (b"over tls", 1, f"{base}/{name}")
            lean = download._SESSIONS[session].lean
            assert lean is not None
            assert sum(len(conns) for conns in lean.idle.values()) == 1  # kept and reused
    assert hits == {"/a": 1, "/b": 1}  # each asked once: no second try through aiohttp


@pytest.mark.asyncio
async def test_https_with_an_untrusted_certificate_fails_without_retries() -> None:
    async with tls_server(trustme.CA()) as (base, hits):
        config = cfg(retries=2)
        async with make_session(config) as session:
            with pytest.raises(ConnectionFailed) as info:
                await fetch(session, f"{base}/a", config)
    assert info.value.attempts == 1  # a bad certificate stays bad
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert not hits


# --- connecting -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_next_address_is_tried_when_one_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with two addresses: nothing listens on the first (127.0.0.2, same port), the
    connection goes to the second; the Host header keeps the name."""
    from tests.test_download import FakeResolver

    heads: list[bytes] = []

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        heads.append(await raw.head(reader))
        w.write(reply(b"abc"))
        await w.drain()

    async with raw_server(handler) as raw:
        port = URL(raw.url).port
        table = {"two.test": ["127.0.0.2", "127.0.0.1"]}
        monkeypatch.setattr(download, "DefaultResolver", lambda: FakeResolver(table))
        config = cfg()
        async with make_session(config) as session:
            got = await fetch(session, f"http://two.test:{port}/a", config)
    assert (got.data, got.attempts) == (b"abc", 1)
    assert f"Host: two.test:{port}\r\n".encode() in heads[0]


@pytest.mark.asyncio
async def test_a_user_agent_beyond_latin1_goes_through_aiohttp(server: str) -> None:
    config = cfg(user_agent="pixpipe-☃/1")
    async with make_session(config) as session:
        got = await fetch(session, f"{server}/ok/ua", config)
    assert got.status == 200
    assert await hits(server, "/ok/ua") == 1  # the lean client sent nothing


@pytest.mark.asyncio
async def test_waiting_for_a_slot_is_not_counted_against_the_total_timeout() -> None:
    """A request that waits for one of its host's connections (all busy with slower answers)
    gets its whole ``total_timeout`` once it goes: the wait is our own queue, not the server's
    time. Counted, the URLs queued behind a slow host failed as timed out before being asked
    (16 of 20 at 2 s an answer, 2 a host, 5 s in all)."""

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await raw.head(reader)
            if b"/slow" in head:
                await asyncio.sleep(0.6)
            w.write(reply(b"abc"))
            await w.drain()

    async with raw_server(handler) as raw:
        config = cfg(limit=1, limit_per_host=1, total_timeout=0.4, read_timeout=5.0)
        async with make_session(config) as session:
            slow = asyncio.create_task(
                fetch(session, f"{raw.url}/slow", cfg(limit=1, limit_per_host=1))
            )
            await asyncio.sleep(0.05)
            got = await fetch(session, f"{raw.url}/second", config)  # waits 0.55 s, then 0.4
            assert got.status == 200
            assert (await slow).status == 200
        assert raw.requests == 2


@pytest.mark.asyncio
async def test_a_urls_user_and_password_are_sent_as_basic_credentials() -> None:
    """``http://user:pw@host/…`` (an internal server behind Basic auth): the lean client sent
    no credentials (HTTP 401 where curl and aiohttp get 200)."""
    import base64

    heads: list[bytes] = []

    async def handler(raw: Raw, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await raw.head(reader))
            w.write(reply(b"abc"))
            await w.drain()

    async with raw_server(handler) as raw:
        config = cfg()
        user_url = raw.url.replace("http://", "http://me:s%C3%A9cret@")
        async with make_session(config) as session:
            assert (await fetch(session, f"{user_url}/private", config)).status == 200
            assert (await fetch(session, f"{raw.url}/public", config)).status == 200
    token = base64.b64encode("me:sécret".encode()).decode()
    assert f"Authorization: Basic {token}\r\n".encode() in heads[0]
    assert b"Authorization" not in heads[1]  # the same host, another URL: none
