"""Loopback test servers: one route per download failure mode.

Everything binds 127.0.0.1 on port 0 (the kernel picks a free port), so tests never reach the
internet and never collide. Two ways to run a server:

- ``with serve() as base_url:`` runs the server on its own event loop in a daemon thread. Usable
  from sync tests (end-to-end runs of the pipeline) and from async tests alike, because the
  server never shares the test's loop.
- ``async with serve_async() as base_url:`` runs it on the current loop (async tests only).

Both accept what to serve: ``None`` (the failure-mode app from :func:`make_app`), an
``aiohttp.web.Application``, an iterable of route definitions, or a directory (static files).
:func:`silent_server` / :func:`silent_server_async` give a raw TCP server that accepts
connections and never answers (for connect-ok-but-no-response timeouts).

Routes of :func:`make_app` (counters are per app, i.e. per ``serve()`` call):

====================================  =========================================================
``/ok/{name}``                        a small JPEG (``image/jpeg``), different per name
``/html``                             ``text/html`` body (wrong content type for an image)
``/status/{code}``                    that status code with a short text body
``/flaky?fails=N``                    500 for the first N requests (default 1), then a JPEG
``/ratelimited?fails=N&retry_after=S``  429 with ``Retry-After: S`` N times, then a JPEG;
                                      ``&date=1`` sends ``Retry-After`` as an HTTP-date
``/trickle?interval=S&count=N``       one byte every S seconds, N times (slow server)
``/reset?after=N``                    declares 1 MiB, sends N bytes, then resets the connection
``/short?declared=N&sent=M``          ``Content-Length: N`` but only M bytes, then closes
``/endless?chunk=N``                  streams chunks of N bytes until the client goes away
``/big?size=N``                       N bytes with an honest ``Content-Length``
``/chunked?size=N``                   N bytes, chunked transfer encoding (no Content-Length)
``/gzip-bomb?size=N``                 N zero bytes sent gzip-compressed (Content-Encoding: gzip)
``/redirect/{n}``                     a chain of n redirects ending at ``/ok/redirected``
``/loop``                             redirects to itself forever
``/redirect-to?location=L``           one redirect to L (e.g. ``ftp://...``, ``file:///...``)
``/headers``                          the request headers as JSON
``/hits``                             the per-path request counters as JSON
====================================  =========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fcntl
import functools
import gzip
import io
import os
import socket
import struct
import termios
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path

from aiohttp import web
from PIL import Image

__all__ = [
    "Target",
    "jpeg_bytes",
    "make_app",
    "serve",
    "serve_async",
    "silent_server",
    "silent_server_async",
]

Target = web.Application | Iterable[web.AbstractRouteDef] | str | os.PathLike[str] | None

HITS: web.AppKey[Counter[str]] = web.AppKey("hits", Counter)

# Stop a trickle/endless handler if the client never goes away (keeps a test bounded even if
# the client under test is broken).
_MAX_STREAM_SECONDS = 60.0


@functools.cache
def jpeg_bytes(name: str, size: tuple[int, int] = (16, 12)) -> bytes:
    """A small, valid JPEG whose colour depends on ``name``."""
    digest = sum(name.encode()) * 2654435761
    colour = (digest & 0xFF, (digest >> 8) & 0xFF, (digest >> 16) & 0xFF)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _count(request: web.Request) -> int:
    """Count this request (keyed by path and query) and return the count, starting at 1."""
    hits = request.app[HITS]
    hits[request.path_qs] += 1
    return hits[request.path_qs]


def _qint(request: web.Request, name: str, default: int) -> int:
    return int(request.query.get(name, default))


def _qfloat(request: web.Request, name: str, default: float) -> float:
    return float(request.query.get(name, default))


def _jpeg_response(name: str) -> web.Response:
    return web.Response(body=jpeg_bytes(name), content_type="image/jpeg")


async def _ok(request: web.Request) -> web.Response:
    _count(request)
    return _jpeg_response(request.match_info["name"])


async def _html(request: web.Request) -> web.Response:
    _count(request)
    return web.Response(text="<html><body>not an image</body></html>", content_type="text/html")


async def _status(request: web.Request) -> web.Response:
    _count(request)
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"status {code}")


async def _flaky(request: web.Request) -> web.Response:
    if _count(request) <= _qint(request, "fails", 1):
        return web.Response(status=500, text="try again")
    return _jpeg_response("flaky")


async def _ratelimited(request: web.Request) -> web.Response:
    if _count(request) <= _qint(request, "fails", 1):
        delay = _qfloat(request, "retry_after", 1.0)
        if request.query.get("date"):
            # HTTP-dates have one-second resolution: round up so the wait is at least `delay`.
            value = email.utils.formatdate(time.time() + delay + 1, usegmt=True)
        else:
            value = str(int(delay)) if delay.is_integer() else str(delay)
        return web.Response(status=429, text="slow down", headers={"Retry-After": value})
    return _jpeg_response("ratelimited")


async def _trickle(request: web.Request) -> web.StreamResponse:
    _count(request)
    interval = _qfloat(request, "interval", 0.5)
    count = _qint(request, "count", 20)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.content_length = count
    await resp.prepare(request)
    for _ in range(count):
        await asyncio.sleep(interval)  # the slowness is the route's point
        await resp.write(b"x")
    await resp.write_eof()
    return resp


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged yet (Linux SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


async def _until_delivered(request: web.Request) -> None:
    """Until every byte written so far has left this process and reached the client's kernel
    (acknowledged): a reset or close after that cannot take them back. A poll with a deadline:
    on loopback it is over at once, unless the client does not read."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    deadline = time.monotonic() + 10
    while transport.get_write_buffer_size() or (sock is not None and _unacknowledged(sock)):
        if time.monotonic() > deadline:
            raise TimeoutError("the client did not take the bytes in 10 s")
        await asyncio.sleep(0.001)


def _reset_connection(request: web.Request) -> None:
    """Close the socket with SO_LINGER 0 so the peer sees a TCP RST, not a clean FIN."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _reset(request: web.Request) -> web.StreamResponse:
    _count(request)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.content_length = 2**20
    await resp.prepare(request)
    await resp.write(b"x" * _qint(request, "after", 1000))
    await _until_delivered(request)  # a reset drops whatever is still unsent
    _reset_connection(request)
    # The connection is gone; ending the handler by cancellation keeps aiohttp from trying to
    # finish the response on a dead transport.
    raise asyncio.CancelledError


async def _short(request: web.Request) -> web.StreamResponse:
    _count(request)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.content_length = _qint(request, "declared", 1000)
    resp.force_close()
    await resp.prepare(request)
    await resp.write(b"x" * _qint(request, "sent", 10))
    await _until_delivered(request)
    assert request.transport is not None
    request.transport.close()  # a clean FIN after the bytes, the length never satisfied
    raise asyncio.CancelledError


async def _endless(request: web.Request) -> web.StreamResponse:
    _count(request)
    chunk = b"\0" * _qint(request, "chunk", 64 * 1024)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    await resp.prepare(request)
    deadline = time.monotonic() + _MAX_STREAM_SECONDS
    # resp.write waits for the socket to drain, so this never buffers more than a few chunks.
    with contextlib.suppress(ConnectionError):
        while time.monotonic() < deadline:
            await resp.write(chunk)
    return resp


async def _big(request: web.Request) -> web.Response:
    _count(request)
    return web.Response(body=b"\0" * _qint(request, "size", 2**20), content_type="image/jpeg")


async def _chunked(request: web.Request) -> web.StreamResponse:
    _count(request)
    size = _qint(request, "size", 100_000)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    step = 8192
    for start in range(0, size, step):
        await resp.write(b"\1" * min(step, size - start))
    await resp.write_eof()
    return resp


async def _gzip_bomb(request: web.Request) -> web.Response:
    _count(request)
    body = gzip.compress(b"\0" * _qint(request, "size", 10 * 2**20), compresslevel=1)
    headers = {"Content-Encoding": "gzip", "Content-Type": "image/jpeg"}
    return web.Response(body=body, headers=headers)


async def _redirect(request: web.Request) -> web.Response:
    _count(request)
    n = int(request.match_info["n"])
    target = "/ok/redirected" if n <= 0 else f"/redirect/{n - 1}"
    raise web.HTTPFound(target)


async def _loop(request: web.Request) -> web.Response:
    _count(request)
    raise web.HTTPFound("/loop")


async def _redirect_to(request: web.Request) -> web.Response:
    _count(request)
    raise web.HTTPFound(request.query["location"])


async def _headers(request: web.Request) -> web.Response:
    _count(request)
    return web.json_response(dict(request.headers))


async def _hits(request: web.Request) -> web.Response:
    hits: Counter[str] = request.app[HITS]
    return web.json_response(dict(hits))


def make_app() -> web.Application:
    """The failure-mode app (routes in the module docstring), with fresh counters."""
    app = web.Application()
    app[HITS] = Counter[str]()
    app.add_routes(
        [
            web.get("/ok/{name}", _ok),
            web.get("/html", _html),
            web.get("/status/{code:\\d+}", _status),
            web.get("/flaky", _flaky),
            web.get("/ratelimited", _ratelimited),
            web.get("/trickle", _trickle),
            web.get("/reset", _reset),
            web.get("/short", _short),
            web.get("/endless", _endless),
            web.get("/big", _big),
            web.get("/chunked", _chunked),
            web.get("/gzip-bomb", _gzip_bomb),
            web.get("/redirect/{n:\\d+}", _redirect),
            web.get("/loop", _loop),
            web.get("/redirect-to", _redirect_to),
            web.get("/headers", _headers),
            web.get("/hits", _hits),
        ]
    )
    return app


def _as_app(target: Target) -> web.Application:
    if target is None:
        return make_app()
    if isinstance(target, web.Application):
        return target
    if isinstance(target, str | os.PathLike):
        app = web.Application()
        app.router.add_static("/", Path(target))
        return app
    app = web.Application()
    app.add_routes(list(target))
    return app


Stop = Callable[[], Awaitable[None]]


async def _start_http(target: Target) -> tuple[str, Stop]:
    # handler_cancellation: a handler whose client went away is cancelled at once (the trickle
    # and endless routes would otherwise run until their next write fails).
    runner = web.AppRunner(
        _as_app(target), handler_cancellation=True, access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return f"http://127.0.0.1:{site.port}", runner.cleanup


async def _start_silent() -> tuple[str, Stop]:
    writers: set[asyncio.StreamWriter] = set()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while await reader.read(65536):  # read the request, answer nothing, ever
                pass
        except ConnectionError:
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        for writer in list(writers):
            writer.close()
        await server.wait_closed()

    return f"http://127.0.0.1:{port}", stop


@contextlib.asynccontextmanager
async def _on_current_loop(start: Callable[[], Awaitable[tuple[str, Stop]]]) -> AsyncIterator[str]:
    base_url, stop = await start()
    try:
        yield base_url
    finally:
        await stop()


@contextlib.contextmanager
def _in_thread(start: Callable[[], Awaitable[tuple[str, Stop]]]) -> Iterator[str]:
    """Run a server on a private event loop in a daemon thread; yield its base URL."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop_event = asyncio.Event()
        try:
            base_url, stop = await start()
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            return
        state["url"] = base_url
        state["stop"] = functools.partial(
            asyncio.get_running_loop().call_soon_threadsafe, stop_event.set
        )
        ready.set()
        try:
            await stop_event.wait()
        finally:
            await stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True, name="test-server")
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("test server did not start within 30 s")
    if "error" in state:
        thread.join(timeout=5)
        raise RuntimeError("test server failed to start") from state["error"]  # type: ignore[misc]
    try:
        yield str(state["url"])
    finally:
        request_stop = state["stop"]
        assert callable(request_stop)
        request_stop()
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("test server thread did not stop within 30 s")


def serve(target: Target = None) -> contextlib.AbstractContextManager[str]:
    """Serve ``target`` on 127.0.0.1 from a background thread; yields ``http://127.0.0.1:PORT``."""
    return _in_thread(functools.partial(_start_http, target))


def serve_async(target: Target = None) -> contextlib.AbstractAsyncContextManager[str]:
    """Serve ``target`` on 127.0.0.1 from the running loop; yields ``http://127.0.0.1:PORT``."""
    return _on_current_loop(functools.partial(_start_http, target))


def silent_server() -> contextlib.AbstractContextManager[str]:
    """A TCP server (background thread) that accepts connections and never sends a byte."""
    return _in_thread(_start_silent)


def silent_server_async() -> contextlib.AbstractAsyncContextManager[str]:
    """A TCP server on the running loop that accepts connections and never sends a byte."""
    return _on_current_loop(_start_silent)
