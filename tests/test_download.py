"""Download stage tests against loopback servers: one route per failure mode (tests/http_server).

Every test uses small timeouts and backoff so the module runs in a few seconds; nothing leaves
127.0.0.1 (the "public" hosts below only ever reach a fake resolver).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import pickle
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from ipaddress import ip_address
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from stages import download
from stages.download import (
    BadURL,
    ConnectionFailed,
    DownloadConfig,
    Downloaded,
    DownloadError,
    DownloadTimeout,
    ForbiddenAddress,
    HTTPStatusError,
    TooLarge,
    TooManyRedirects,
    TruncatedBody,
    fetch,
    is_forbidden_address,
    make_session,
    parse_retry_after,
    url_to_relpath,
)
from tests.http_server import jpeg_bytes, serve, serve_async, silent_server, silent_server_async

# --- helpers --------------------------------------------------------------------------------------


def cfg(**overrides: Any) -> DownloadConfig:
    """Test config: loopback allowed, short timeouts, near-zero backoff."""
    values: dict[str, Any] = {
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 10.0,
        "retries": 2,
        "backoff": 0.01,
        "backoff_max": 2.0,
        "allow_private_hosts": True,
    }
    values.update(overrides)
    return DownloadConfig(**values)


async def get(url: str, config: DownloadConfig) -> Downloaded:
    async with make_session(config) as session:
        return await fetch(session, url, config)


async def fail(url: str, config: DownloadConfig) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        await get(url, config)
    return info.value


async def hits(base: str, path: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/hits") as response:
        counts: dict[str, int] = await response.json()
    return counts.get(path, 0)


@pytest.fixture
def server() -> Iterator[str]:
    """A fresh failure-mode server (fresh counters) in a background thread."""
    with serve() as base_url:
        yield base_url


# --- success --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ok_returns_image(server: str) -> None:
    url = f"{server}/ok/a"
    result = await get(url, cfg())
    assert result.data == jpeg_bytes("a")
    assert (result.url, result.final_url, result.status) == (url, url, 200)
    assert result.content_type == "image/jpeg"
    assert result.attempts == 1
    assert result.elapsed > 0
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.format == "JPEG"
    assert "data=" not in repr(result)  # the bytes stay out of logs


@pytest.mark.asyncio
async def test_sends_configured_user_agent(server: str) -> None:
    config = cfg(user_agent="pixpipe-test/9")
    result = await get(f"{server}/headers", config)
    assert json.loads(result.data)["User-Agent"] == "pixpipe-test/9"


@pytest.mark.asyncio
async def test_wrong_content_type_is_reported_not_refused(server: str) -> None:
    # Decided: fetch does not judge content types; the decode stage does.
    result = await get(f"{server}/html", cfg())
    assert result.content_type == "text/html"
    assert result.data.startswith(b"<html>")


@pytest.mark.asyncio
async def test_chunked_body_without_content_length(server: str) -> None:
    result = await get(f"{server}/chunked?size=100000", cfg())
    assert result.data == b"\1" * 100_000


@pytest.mark.asyncio
async def test_body_exactly_at_cap_is_accepted(server: str) -> None:
    result = await get(f"{server}/big?size=1000", cfg(max_bytes=1000))
    assert len(result.data) == 1000


@pytest.mark.asyncio
async def test_serve_async_form() -> None:
    async with serve_async() as base_url:
        result = await get(f"{base_url}/ok/b", cfg())
    assert result.data == jpeg_bytes("b")


def test_serve_directory_from_sync_code(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "x.jpg")
    with open(path, "wb") as f:
        f.write(jpeg_bytes("dir"))
    with serve(tmp_path) as base_url:
        result = asyncio.run(get(f"{base_url}/x.jpg", cfg()))
    assert result.data == jpeg_bytes("dir")


# --- status codes, retries ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_404_is_not_retried(server: str) -> None:
    exc = await fail(f"{server}/status/404", cfg(retries=3))
    assert isinstance(exc, HTTPStatusError)
    assert (exc.status, exc.attempts) == (404, 1)
    assert "attempts=1" in str(exc)
    assert "404" in str(exc)
    assert await hits(server, "/status/404") == 1


@pytest.mark.asyncio
async def test_flaky_500_then_success(server: str) -> None:
    result = await get(f"{server}/flaky?fails=1", cfg())
    assert result.attempts == 2
    assert result.data == jpeg_bytes("flaky")


@pytest.mark.asyncio
async def test_persistent_503_gives_up_with_attempts_and_status(server: str) -> None:
    exc = await fail(f"{server}/status/503", cfg(retries=2))
    assert isinstance(exc, HTTPStatusError)
    assert (exc.status, exc.attempts) == (503, 3)
    assert "attempts=3" in str(exc)
    assert "last status=503" in str(exc)
    assert await hits(server, "/status/503") == 3


@pytest.mark.asyncio
async def test_retries_zero_means_one_attempt(server: str) -> None:
    exc = await fail(f"{server}/status/500", cfg(retries=0))
    assert exc.attempts == 1


@pytest.mark.asyncio
async def test_ratelimited_honours_retry_after_seconds(server: str) -> None:
    started = time.monotonic()
    result = await get(f"{server}/ratelimited?retry_after=1", cfg())
    assert time.monotonic() - started >= 0.9  # waited as told, not the 0.01 s backoff
    assert result.attempts == 2


@pytest.mark.asyncio
async def test_ratelimited_honours_retry_after_http_date(server: str) -> None:
    started = time.monotonic()
    result = await get(f"{server}/ratelimited?retry_after=1&date=1", cfg())
    assert time.monotonic() - started >= 0.9
    assert result.attempts == 2


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0
    for bad in (None, "", "soon", "-1", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_backoff_is_full_jitter_capped_and_retry_after_capped() -> None:
    config = cfg(backoff=0.5, backoff_max=3.0)
    for attempt in range(1, 12):
        ceiling = min(3.0, 0.5 * 2 ** (attempt - 1))
        delays = [download._backoff_delay(config, attempt, None) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    assert download._backoff_delay(config, 1, 3600.0) == 3.0  # Retry-After capped
    assert download._backoff_delay(config, 1, 0.25) == 0.25
    assert download._backoff_delay(config, 10_000, None) <= 3.0  # no overflow


# --- timeouts -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_slow_trickle_hits_read_timeout(server: str) -> None:
    config = cfg(read_timeout=0.2, retries=0)
    exc = await fail(f"{server}/trickle?interval=0.5&count=20", config)
    assert isinstance(exc, DownloadTimeout)
    assert exc.attempts == 1


@pytest.mark.asyncio
async def test_steady_trickle_hits_total_timeout(server: str) -> None:
    # Every read is quick (0.05 s apart) but the whole body would take 5 s.
    config = cfg(read_timeout=2.0, total_timeout=0.5, retries=1)
    exc = await fail(f"{server}/trickle?interval=0.05&count=100", config)
    assert isinstance(exc, DownloadTimeout)
    assert exc.attempts == 2


@pytest.mark.asyncio
async def test_server_that_never_answers_times_out() -> None:
    async with silent_server_async() as base_url:
        exc = await fail(f"{base_url}/x.jpg", cfg(read_timeout=0.3, total_timeout=2.0, retries=1))
    assert isinstance(exc, DownloadTimeout)
    assert exc.attempts == 2
    assert exc.status is None


@pytest.mark.asyncio
async def test_server_that_never_answers_total_timeout_threaded() -> None:
    with silent_server() as base_url:
        exc = await fail(f"{base_url}/x.jpg", cfg(read_timeout=5.0, total_timeout=0.4, retries=0))
    assert isinstance(exc, DownloadTimeout)


@pytest.mark.asyncio
async def test_cancellation_propagates(server: str) -> None:
    path = "/trickle?interval=0.2&count=50"  # a 10 s body: still coming when it is cancelled
    task = asyncio.create_task(get(f"{server}{path}", cfg()))
    deadline = time.monotonic() + 30
    while await hits(server, path) == 0:  # until the request is at the server
        assert not task.done(), task
        assert time.monotonic() < deadline, "the request never reached the server"
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- broken bodies, connections -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_connection_reset_mid_body_is_retried_then_truncated(server: str) -> None:
    exc = await fail(f"{server}/reset?after=1000", cfg(retries=2))
    assert isinstance(exc, TruncatedBody)
    assert (exc.attempts, exc.status) == (3, 200)
    assert await hits(server, "/reset?after=1000") == 3


@pytest.mark.asyncio
async def test_content_length_larger_than_body(server: str) -> None:
    exc = await fail(f"{server}/short?declared=1000&sent=10", cfg(retries=0))
    assert isinstance(exc, TruncatedBody)
    assert exc.status == 200


@pytest.mark.asyncio
async def test_connection_refused_is_retried() -> None:
    with socket.socket() as sock:  # a port that was just free: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exc = await fail(f"http://127.0.0.1:{port}/x", cfg(retries=1))
    assert isinstance(exc, ConnectionFailed)
    assert exc.attempts == 2


# --- size cap -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_declared_length_over_cap_fails_early(server: str) -> None:
    exc = await fail(f"{server}/big?size=6000000", cfg(max_bytes=5 * 2**20))
    assert isinstance(exc, TooLarge)
    assert "Content-Length" in exc.message
    assert exc.attempts == 1  # not retried


@pytest.mark.asyncio
async def test_chunked_body_over_cap(server: str) -> None:
    exc = await fail(f"{server}/chunked?size=200000", cfg(max_bytes=100_000))
    assert isinstance(exc, TooLarge)


@pytest.mark.asyncio
async def test_compressed_body_is_capped_after_decoding(server: str) -> None:
    # 10 MB of zeros gzip to ~10 KB: the cap applies to the decoded bytes, not the wire.
    exc = await fail(f"{server}/gzip-bomb?size=10000000", cfg(max_bytes=2**20))
    assert isinstance(exc, TooLarge)
    ok = await get(f"{server}/gzip-bomb?size=1000", cfg(max_bytes=2**20))
    assert ok.data == b"\0" * 1000


@pytest.mark.asyncio
async def test_endless_body_is_cut_at_the_cap_with_flat_memory(server: str) -> None:
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        for _ in range(12):  # 12 x 5 MB = 60 MB offered, one at a time
            exc = await fail(f"{server}/endless", cfg(max_bytes=5 * 2**20))
            assert isinstance(exc, TooLarge)
    finally:
        done.set()
        await sampler
    assert peak - baseline < 30 * 2**20


@pytest.mark.asyncio
async def test_empty_body_with_content_length_zero(server: str) -> None:
    result = await get(f"{server}/big?size=0", cfg())
    assert (result.data, result.status) == (b"", 200)


@contextlib.asynccontextmanager
async def lying_length_server(declared: int) -> AsyncIterator[str]:
    """Raw server: ``Content-Length: declared``, then endless bytes until the client goes away."""
    handlers: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n"
            writer.write(head.encode())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # bounded, in case the client never leaves
                writer.write(b"\1" * 65536)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: what is expected
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.asyncio
async def test_body_longer_than_content_length_never_exceeds_it() -> None:
    # A server that declares 100 bytes and then never stops: aiohttp frames the body by the
    # declared length, so what comes after it is never part of the body (aiohttp 3.14 refuses
    # the whole answer as malformed HTTP); either way memory stays flat, nothing hangs.
    process = psutil.Process()
    baseline = process.memory_info().rss
    async with lying_length_server(100) as base_url:
        try:
            result = await get(f"{base_url}/x.jpg", cfg(max_bytes=2**20, retries=0))
        except (ConnectionFailed, TruncatedBody):
            pass  # refused or cut short: fine (any other error fails the test)
        else:
            assert result.data == b"\1" * 100
    assert process.memory_info().rss - baseline < 30 * 2**20


# --- redirects ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redirect_chain_is_followed(server: str) -> None:
    result = await get(f"{server}/redirect/3", cfg(max_redirects=5))
    assert result.final_url == f"{server}/ok/redirected"
    assert result.url == f"{server}/redirect/3"
    assert result.data == jpeg_bytes("redirected")


@pytest.mark.asyncio
async def test_redirects_up_to_the_limit(server: str) -> None:
    assert (await get(f"{server}/redirect/4", cfg(max_redirects=5))).status == 200
    exc = await fail(f"{server}/redirect/5", cfg(max_redirects=5))
    assert isinstance(exc, TooManyRedirects)


@pytest.mark.asyncio
async def test_redirect_loop(server: str) -> None:
    exc = await fail(f"{server}/loop", cfg(max_redirects=3))
    assert isinstance(exc, TooManyRedirects)
    assert (exc.attempts, exc.status) == (1, 302)
    assert await hits(server, "/loop") == 4  # the first request + 3 redirects


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "location",
    ["ftp://example.com/x.jpg", "file:///etc/passwd", "javascript:alert(1)", "data:,hello"],
)
async def test_redirect_to_non_http_scheme(server: str, location: str) -> None:
    exc = await fail(f"{server}/redirect-to?location={location}", cfg())
    assert isinstance(exc, BadURL)
    assert (exc.attempts, exc.status) == (1, 302)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "location", ["http://10.0.0.1/x.jpg", "http://[fd00::1]/x.jpg", "http://internal.example/x"]
)
async def test_redirect_into_private_network_is_refused(
    server: str, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the loopback test server is a public host, "public.example", then let it redirect
    # inwards: every hop is checked (IP literals in fetch, names in the resolver).
    table = {"public.example": ["127.0.0.1"], "internal.example": ["10.0.0.2"]}
    monkeypatch.setattr(download, "DefaultResolver", lambda: FakeResolver(table))
    monkeypatch.setattr(download, "_address_forbidden", lambda host: host != "127.0.0.1")
    port = server.rsplit(":", 1)[1]
    config = cfg(allow_private_hosts=False)
    ok = await get(f"http://public.example:{port}/ok/pub", config)
    assert ok.data == jpeg_bytes("pub")
    exc = await fail(f"http://public.example:{port}/redirect-to?location={location}", config)
    assert isinstance(exc, ForbiddenAddress)
    assert (exc.attempts, exc.status) == (1, 302)
    # the message says how such a host is fetched all the same, once, also unpickled
    assert str(pickle.loads(pickle.dumps(exc))).count("--allow-private-hosts") == 1


def slow_redirects(delay: float) -> web.RouteTableDef:
    """``/slow/{n}``: waits ``delay`` seconds, then redirects to ``/slow/{n-1}``; 0 is a JPEG."""
    routes = web.RouteTableDef()

    @routes.get("/slow/{n}")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=jpeg_bytes("slow"), content_type="image/jpeg")
        raise web.HTTPFound(f"/slow/{n - 1}")

    return routes


@pytest.mark.asyncio
async def test_redirect_hops_share_the_total_timeout() -> None:
    # Each hop (0.2 s) is well within total_timeout (0.5 s) but the chain (0.8 s) is not: the
    # limit is per attempt, all hops included, not per request.
    async with serve_async(slow_redirects(0.2)) as base_url:
        ok = await get(f"{base_url}/slow/3", cfg(total_timeout=3.0))
        assert ok.final_url == f"{base_url}/slow/0"
        started = time.monotonic()
        exc = await fail(f"{base_url}/slow/3", cfg(total_timeout=0.5, retries=0))
        elapsed = time.monotonic() - started
    assert isinstance(exc, DownloadTimeout)
    assert (exc.attempts, exc.status) == (1, 302)
    assert elapsed < 1.5


# --- URLs and address policy ----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "http://",
        "http:///path-only",
        "//example.com/a.jpg",
        "http://example.com/a\r\nX-Injected: 1",
        "http://example.com:99999/",
        # host names DNS cannot hold: said so, not a bare UnicodeError or a resolver's error
        "http://exa mple.com/a.jpg",
        f"https://{'a' * 64}.com/x.jpg",
        f"https://{'a.' * 127}com/x.jpg",
        "http://a..b.com/x.jpg",
    ],
)
async def test_bad_urls_fail_without_network(url: str) -> None:
    exc = await fail(url, cfg(allow_private_hosts=False))
    assert isinstance(exc, BadURL)
    assert exc.attempts == 1


@pytest.mark.asyncio
async def test_private_ip_literal_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    config = cfg(allow_private_hosts=False)
    exc = await fail(f"http://127.0.0.1:{port}/ok/x", config)
    assert isinstance(exc, ForbiddenAddress)
    assert exc.attempts == 1
    exc = await fail(f"http://[::1]:{port}/ok/x", config)
    assert isinstance(exc, ForbiddenAddress)
    exc = await fail(f"http://127.1:{port}/ok/x", config)  # odd numeric forms too
    assert isinstance(exc, ForbiddenAddress | BadURL)
    assert await hits(server, "/ok/x") == 0  # never connected


@pytest.mark.asyncio
async def test_private_hostname_refused_by_resolver() -> None:
    async with serve_async() as base_url:
        port = base_url.rsplit(":", 1)[1]
        exc = await fail(f"http://localhost:{port}/ok/x", cfg(allow_private_hosts=False))
        assert isinstance(exc, ForbiddenAddress)
        assert "localhost" in exc.message
        assert await hits(base_url, "/ok/x") == 0


@pytest.mark.asyncio
async def test_private_hosts_allowed_by_flag() -> None:
    async with serve_async() as base_url:
        port = base_url.rsplit(":", 1)[1]
        for host in ("127.0.0.1", "localhost"):
            result = await get(f"http://{host}:{port}/ok/x", cfg(allow_private_hosts=True))
            assert result.data == jpeg_bytes("x")


class FakeResolver(AbstractResolver):
    """Answers from a table: lets tests "resolve" public-looking names without any DNS."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_dns_answer_pointing_inside_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A public-looking name whose DNS answer is a private address (DNS rebinding, metadata
    # services): refused on the resolved address, the one that would be connected to.
    table = {"rebind.example": ["10.0.0.7", "169.254.169.254", "::1"]}
    monkeypatch.setattr(download, "DefaultResolver", lambda: FakeResolver(table))
    exc = await fail("http://rebind.example/x.jpg", cfg(allow_private_hosts=False, retries=2))
    assert isinstance(exc, ForbiddenAddress)
    assert exc.attempts == 1


@pytest.mark.asyncio
async def test_resolver_keeps_only_public_addresses() -> None:
    inner = FakeResolver({"mixed.example": ["127.0.0.1", "93.184.216.34", "10.1.1.1"]})
    resolver = download._PolicyResolver(inner, allow_private=False, timeout=1.0)
    results = await resolver.resolve("mixed.example", 80)
    assert [r["host"] for r in results] == ["93.184.216.34"]
    permissive = download._PolicyResolver(inner, allow_private=True, timeout=1.0)
    assert len(await permissive.resolve("mixed.example", 80)) == 3


@pytest.mark.asyncio
async def test_fetch_refuses_a_session_without_the_address_policy() -> None:
    config = cfg(allow_private_hosts=False)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="make_session"):
            await fetch(session, "http://example.com/", config)
    async with make_session(cfg(allow_private_hosts=True)) as session:
        with pytest.raises(ValueError, match="make_session"):
            await fetch(session, "http://example.com/", config)


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("192.0.2.1", True),
        ("::", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fec0::1", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("2002:7f00:1::", True),
        ("64:ff9b::a00:1", True),
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ip_address(address)) is forbidden


@pytest.mark.asyncio
async def test_fetch_config_wins_over_the_sessions(server: str) -> None:
    # The session was made from another config: fetch still sends its own User-Agent and uses
    # its own timeouts.
    async with make_session(cfg(user_agent="session/1", read_timeout=5.0)) as session:
        got = await fetch(session, f"{server}/headers", cfg(user_agent="fetch/2"))
        assert json.loads(got.data)["User-Agent"] == "fetch/2"
        started = time.monotonic()
        with pytest.raises(DownloadTimeout):
            await fetch(
                session, f"{server}/trickle?interval=0.5&count=20", cfg(read_timeout=0.2, retries=0)
            )
        assert time.monotonic() - started < 2.0
        same = await fetch(session, f"{server}/headers", cfg(user_agent="session/1"))
        assert json.loads(same.data)["User-Agent"] == "session/1"


@pytest.mark.asyncio
async def test_session_limits_come_from_config() -> None:
    config = cfg(limit=10, limit_per_host=3)
    async with make_session(config) as session:
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert (session.connector.limit, session.connector.limit_per_host) == (10, 3)


# --- config, errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be a finite number > 0"),
        ({"read_timeout": -1}, "read_timeout must be a finite number > 0"),
        ({"total_timeout": float("inf")}, "total_timeout must be a finite number > 0"),
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": 1.5}, "retries must be an int >= 0"),
        ({"retries": True}, "retries must be an int >= 0"),
        ({"backoff": -0.1}, "backoff must be a finite number >= 0"),
        ({"max_redirects": -1}, "max_redirects must be an int >= 0"),
        ({"max_bytes": 0}, "max_bytes must be an int >= 1"),
        ({"limit": 0}, "limit must be an int >= 1"),
        ({"limit_per_host": 0}, "limit_per_host must be an int >= 1"),
        ({"limit": 4, "limit_per_host": 8}, r"limit_per_host \(8\) > limit \(4\)"),
        ({"user_agent": ""}, "user_agent must be a non-empty single-line string"),
        ({"user_agent": "a\r\nb"}, "user_agent must be a non-empty single-line string"),
        ({"allow_private_hosts": "yes"}, "allow_private_hosts must be a bool"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        DownloadConfig(**overrides)


def test_config_defaults_frozen_keyword_only() -> None:
    config = DownloadConfig()
    assert (config.retries, config.max_bytes, config.limit, config.limit_per_host) == (
        3,
        50 * 2**20,
        64,
        8,
    )
    assert config.allow_private_hosts is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retries = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        DownloadConfig(1.0)  # type: ignore[call-arg]


ERRORS = [
    BadURL("bad", url="ftp://x"),
    ForbiddenAddress("nope", url="http://10.0.0.1/"),
    HTTPStatusError("HTTP 503", url="http://x/", attempts=4, status=503, retry_after=2.0),
    TooLarge("big", url="http://x/", status=200),
    TruncatedBody("short", url="http://x/", attempts=2, status=200),
    TooManyRedirects("loop", url="http://x/", status=302),
    DownloadTimeout("slow", url="http://x/", attempts=3),
    ConnectionFailed("reset", url="http://x/"),
    DownloadError("base"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_round_trip(error: DownloadError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert clone.__dict__ == error.__dict__
    assert str(clone) == str(error)
    assert clone.args == error.args


@pytest.mark.asyncio
async def test_raised_error_pickles_with_attempts(server: str) -> None:
    exc = await fail(f"{server}/status/502", cfg(retries=1))
    clone = pickle.loads(pickle.dumps(exc))
    assert isinstance(clone, HTTPStatusError)
    assert (clone.attempts, clone.status, clone.url) == (2, 502, f"{server}/status/502")
    assert str(clone) == str(exc)


# --- url_to_relpath -------------------------------------------------------------------------------

SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,80}")


def check_relpath(path: str) -> None:
    assert not os.path.isabs(path)
    segments = path.split("/")
    for segment in segments:
        assert SEGMENT.fullmatch(segment), (path, segment)
        assert segment.strip("."), (path, segment)
        assert not segment.startswith("."), (path, segment)
    assert os.path.normpath(os.path.join("/out", path)).startswith("/out/")


def test_relpath_examples() -> None:
    path = url_to_relpath("https://Example.com/a/b/photo.JPG?size=large")
    assert re.fullmatch(r"example\.com/a/b/photo_[0-9a-f]{10}\.JPG", path), path
    assert url_to_relpath("http://x.com:8080/a.jpg").startswith("x.com_8080/a_")
    assert re.fullmatch(r"x\.com/index_[0-9a-f]{10}", url_to_relpath("http://x.com"))
    assert re.fullmatch(r"x\.com/d/index_[0-9a-f]{10}", url_to_relpath("http://x.com/d/"))
    assert url_to_relpath("http://u:p@x.com/a.png").startswith("x.com/a_")
    assert url_to_relpath("http://b\u00fccher.example/b.jpg").startswith("xn--bcher-kva.example/")


def test_relpath_query_and_case_make_distinct_paths() -> None:
    urls = [
        "http://x.com/a.jpg",
        "http://x.com/a.jpg?v=1",
        "http://x.com/a.jpg?v=2",
        "http://x.com/A.jpg",
        "http://x.com/a%20.jpg",
        "http://x.com/a_.jpg",
    ]
    paths = {url_to_relpath(u).lower() for u in urls}  # distinct even on a case-blind disk
    assert len(paths) == len(urls)


@pytest.mark.parametrize(
    "url",
    [
        "http://x.com/../../etc/passwd",
        "http://x.com/%2e%2e/%2e%2e/etc/passwd",
        "http://x.com/..%2f..%2fetc/passwd",
        "http://../../../x",
        "http://x.com/./a/.//b/...",
        "/etc/passwd",
        "..",
        "http://x.com/" + "a" * 500 + "/" + "b" * 500 + ".jpg",
        "http://x.com/" + "/".join(["d"] * 100) + "/f.jpg",
        "http://x.com/.hidden",
        "http://x.com/-rf",
        "http://x.com/CON.jpg",
        "http://[::1/x",
        "http://x.com/\u00e9t\u00e9/\ud800.jpg",
        "C:\\Windows\\system32",
    ],
)
def test_relpath_hostile_inputs_stay_inside(url: str) -> None:
    path = url_to_relpath(url)
    check_relpath(path)
    assert ".." not in path.split("/")


URLISH = st.builds(
    lambda scheme, host, parts, query: f"{scheme}{host}/{'/'.join(parts)}{query}",
    st.sampled_from(["http://", "https://", "", "ftp://", "//"]),
    st.text(max_size=30),
    st.lists(
        st.one_of(
            st.sampled_from(["..", ".", "", "%2e%2e", "..%2f", "~", "\\..\\"]),
            st.text(max_size=40),
        ),
        max_size=12,
    ),
    st.one_of(st.just(""), st.text(max_size=20).map(lambda q: "?" + q)),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), URLISH))
def test_relpath_property_never_leaves_the_output_folder(url: str) -> None:
    check_relpath(url_to_relpath(url))


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_relpath_property_distinct_urls_distinct_paths(a: str, b: str) -> None:
    if a != b:
        assert url_to_relpath(a) != url_to_relpath(b)
