"""A lean HTTP/1.1 client for the download stage's common case: one GET, a framed body.

Why: at concurrency 256 on loopback, aiohttp's ``ClientSession`` spends ~150 us of CPU per
request on the event loop (request objects, header merging, cookie filtering, a timer per
socket read), which capped the download stage below a bare aiohttp loop (issue #19). This
client does one GET on a pooled keep-alive connection with one timer per request, ~50 us.

The response is parsed by llhttp (Node.js's HTTP parser, through MagicStack's ``httptools``)
in its strict mode: status line, headers, Content-Length, chunked framing and trailers; this
module only decides from the parsed head what to keep of the body, or to hand the hop over.

It does only what the common case needs, and says :class:`Unsupported` (before any byte of the
body is handed over) for everything else, so that :func:`stages.download.fetch` repeats the hop
with aiohttp: a ``Content-Encoding`` to decode, a ``Transfer-Encoding`` other than ``chunked``,
a body over ``spool_above`` (aiohttp's path writes it to a spool file as it arrives). The
request asks for ``Accept-Encoding: identity``, so servers rarely compress.

Guarantees, as in the aiohttp path:

* **address policy**: names go through the session's resolver (:class:`stages.download`'s
  ``_PolicyResolver``, which drops non-public addresses); the connection goes to an address it
  returned. IP literals are checked by the caller before the hop, as for aiohttp.
* **timeouts**: DNS in the resolver; each TCP(+TLS) connect ``connect_timeout``; the response
  ``read_timeout`` between two reads; the hop's ``deadline`` over everything. One timer per
  request, re-armed only when it fires early.
* **caps**: a ``Content-Length`` over ``max_bytes`` ends the request at the head (the caller
  raises ``TooLarge``); a chunked or unframed body is counted as it arrives and never held past
  ``min(max_bytes, spool_above, 1 MiB)`` bytes (:class:`BodyOverLimit` or
  :class:`Unsupported`).
* **limits**: at most ``limit`` requests in flight, ``limit_per_host`` per host (with the
  requests aiohttp makes for this client's session: :meth:`Http1Client.slot`); at most
  ``limit_per_host`` idle connections kept per host, for ``_IDLE_SECONDS`` at most.
* **failures**: a connection that breaks mid-body raises :class:`PayloadIncomplete`; a
  response llhttp refuses :class:`MalformedResponse` (its reason in the message), except a head
  with lines ended by LF alone, which llhttp's strict mode refuses and aiohttp reads
  (:class:`Unsupported`); a reused keep-alive connection that the server
  had closed is replaced once, transparently (nothing of the response was seen).

Cancellation closes the request's connection (its state is unknown) and propagates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httptools
from aiohttp.abc import AbstractResolver
from yarl import URL

__all__ = [
    "BodyOverLimit",
    "Headers",
    "HopError",
    "Http1Client",
    "MalformedResponse",
    "PayloadIncomplete",
    "Response",
    "Unsupported",
]

_MAX_HEAD = 64 * 1024  # a head (status line + headers) not complete after this many bytes fails
_IDLE_SECONDS = 15.0  # aiohttp's keepalive_timeout: older idle connections are not reused
_NO_BODY = frozenset({204, 304})
# A body without a Content-Length (chunked, or until the connection closes) is kept here up to
# this size; a longer one is fetched again through aiohttp, which spools it. Bounds what a
# stream the server never ends costs before that (memory: concurrency x 1 MiB at most).
_STREAM_CAP = 1 << 20


class Unsupported(Exception):
    """The response needs the full client (aiohttp): the caller repeats the hop there."""


class HopError(OSError):
    """A response that went wrong; ``status`` is its HTTP status once the head was read."""

    status: int | None = None


class MalformedResponse(HopError):
    """The bytes received are not an HTTP/1.x response this client can frame."""


class PayloadIncomplete(HopError):
    """The connection ended before the end of the body (Content-Length or last chunk)."""


class BodyOverLimit(HopError):
    """A body without an honest Content-Length grew past ``max_bytes``."""


class Headers:
    """Response headers, names case-insensitive; the two look-ups the download stage uses."""

    __slots__ = ("_map",)

    def __init__(self, pairs: dict[str, list[str]]) -> None:
        self._map = pairs

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._map.get(name.lower())
        return values[0] if values else default

    def getall(self, name: str, default: Any = ()) -> list[str] | Any:
        return self._map.get(name.lower()) or default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map


@dataclass(slots=True)
class Response:
    """A hop's answer. ``body`` is None when it was not read: a status other than 2xx (the
    connection is dropped), or a ``Content-Length`` over ``max_bytes`` (see ``declared``)."""

    url: URL
    status: int
    reason: str
    headers: Headers
    declared: int | None
    body: bytes | None
    #: seconds the request waited for one of its host's connections (not the server's time:
    #: the deadline was moved on by as much)
    waited: float = 0.0


def _basic_auth(user: str, password: str) -> bytes:
    """The ``Authorization`` line of a URL's user and password (RFC 7617: UTF-8)."""
    token = base64.b64encode(f"{user}:{password}".encode())
    return b"Authorization: Basic " + token + b"\r\n"


class _Stop(Exception):
    """Raised in a parser callback to stop parsing: the answer was delivered already."""


class _Conn(asyncio.Protocol):
    """One connection; feeds the response to the request in flight to llhttp (through
    ``httptools``) as bytes arrive, and builds the :class:`Response` from its callbacks."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int], open_: set[_Conn]
    ) -> None:
        self.loop = loop
        self.key = key
        self.open = open_  # the client's connections not yet lost; this one joins on connect
        self.gone: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)  # one per connection, kept alive
        self.waiter: asyncio.Future[Response] | None = None
        self.lost = False
        self.seen = False  # any byte of the current response
        self.last = 0.0  # loop time of the last bytes received
        self.deadline = 0.0  # loop time by which the response must be complete
        self.read_timeout = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.reusable = False
        # the request in flight
        self.url: URL | None = None
        self.max_bytes = 0
        self.spool_above = 0
        self.fields: dict[str, list[str]] = {}
        self.reason = ""
        self.head: tuple[int, str, Headers, int | None] | None = None
        self.mode = 0  # 0: head, 1: Content-Length, 2: chunked, 3: until close, 4: delivered
        self.cap = 0  # body bytes allowed before BodyOverLimit or Unsupported
        self.chunks: list[bytes] = []
        self.total = 0  # body bytes received
        self.fed = 0  # bytes of this response fed to the parser

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.open.discard(self)
        if not self.gone.done():
            self.gone.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            if self.mode == 3 and exc is None:
                self._finish(b"".join(self.chunks))  # the body ends with the connection
                return
            if not self.seen:
                err: OSError = ConnectionResetError("connection closed before any response")
            elif self.head is None:
                err = MalformedResponse("connection closed in the middle of the response head")
            else:
                err = PayloadIncomplete(f"connection closed after {self.total} bytes of body")
            if exc is not None:
                err.__cause__ = exc
            if isinstance(err, HopError) and self.head is not None:
                err.status = self.head[0]
            self.waiter.set_exception(err)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides

    def data_received(self, data: bytes) -> None:
        self.seen = True
        self.last = self.loop.time()
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: never reuse this connection
            return
        self.fed += len(data)
        try:
            self.parser.feed_data(data)
            if self.mode == 0 and self.fed > _MAX_HEAD:
                raise MalformedResponse(f"response head longer than {_MAX_HEAD} bytes")
            if self.mode != 4 and self.fed - self.total > _MAX_HEAD * 2 + self.total * 8:
                raise Unsupported("chunk sizes, extensions or trailers longer than the body")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(self._parse_error(exc))
        except (OSError, Unsupported) as exc:
            self._fail(exc)

    def _parse_error(self, exc: Exception) -> BaseException | None:
        """What a parser exception means: the exception a callback raised, or llhttp's."""
        if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__ is not None:
            raised = exc.__context__  # httptools chains what the callback raised
            return None if isinstance(raised, _Stop) else raised
        if isinstance(exc, httptools.HttpParserUpgrade):
            return MalformedResponse("a protocol switch nobody asked for")
        reason = str(exc)
        if self.mode == 0 and reason.startswith("Missing expected CR"):
            # lines ended by LF alone in the head: aiohttp's parser reads them (leniently)
            return Unsupported(f"a head with bare LF line ends ({reason})")
        return MalformedResponse(f"malformed response: {reason}")

    def _fail(self, exc: BaseException | None) -> None:
        self.reusable = False  # the parser stopped mid-stream: this connection goes
        if exc is None or self.waiter is None or self.waiter.done():
            return
        if isinstance(exc, HopError) and self.head is not None:
            exc.status = self.head[0]
        self.waiter.set_exception(exc)

    # -- parser callbacks (httptools)
    def on_message_begin(self) -> None:
        if self.mode == 4:  # bytes past the answer: never reuse the connection
            raise _Stop

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.mode == 0:  # trailers (after the chunks) are not kept
            key = name.decode("latin-1").lower()
            self.fields.setdefault(key, []).append(value.decode("latin-1").strip(" \t"))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status <= 199:  # informational (100 Continue, 103 Early Hints): skip
            if status == 101:
                raise MalformedResponse("101 Switching Protocols to a GET")
            self.fields = {}
            self.reason = ""
            return
        headers = Headers(self.fields)
        declared = _content_length(headers)
        self.head = (status, self.reason, headers, declared)
        self.reusable = self.parser.should_keep_alive()
        if not 200 <= status <= 299:
            self._finish(None)  # its body is not read: the connection goes
            raise _Stop
        self._start_body(status, headers, declared)

    def _start_body(self, status: int, headers: Headers, declared: int | None) -> None:
        """What frames the body: llhttp does it; this decides what to keep of it, or that
        aiohttp must do the hop."""
        encoding = headers.get("content-encoding", "identity") or "identity"
        if encoding.strip().lower() != "identity":
            raise Unsupported(f"Content-Encoding {encoding}")
        coding = ",".join(headers.getall("transfer-encoding", ())).strip().lower()
        self.cap = min(self.max_bytes, self.spool_above, _STREAM_CAP)
        if status in _NO_BODY:
            self.mode = 1  # llhttp completes the message at once
        elif coding:
            if coding != "chunked":
                raise Unsupported(f"Transfer-Encoding {coding}")
            self.mode = 2
        elif declared is not None:
            if declared > self.max_bytes:
                self._finish(None)
                raise _Stop
            if declared > self.spool_above:
                raise Unsupported("a body to spool")
            self.mode, self.cap = 1, declared
        else:
            self.mode = 3

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.total += len(body)
        if self.total > self.cap:
            if self.total > self.max_bytes:
                raise BodyOverLimit(f"body exceeds max_bytes {self.max_bytes}")
            raise Unsupported("a long body without a Content-Length")

    def on_message_complete(self) -> None:
        if self.mode == 0:  # the end of an informational answer
            return
        chunks = self.chunks
        self._finish(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _finish(self, body: bytes | None) -> None:
        assert self.head is not None
        assert self.url is not None
        assert self.waiter is not None
        url = self.url
        status, reason, headers, declared = self.head
        if body is None:
            self.reusable = False  # the body is left unread
        # a kept connection holds nothing of the answer it delivered (the body lives as long
        # as the item that holds it, not as long as the connection)
        self.chunks = []
        self.fields = {}
        self.head = self.url = None
        self.mode = 4
        if not self.waiter.done():
            self.waiter.set_result(Response(url, status, reason, headers, declared, body))

    # -- one request
    def send(
        self,
        request: bytes,
        url: URL,
        waiter: asyncio.Future[Response],
        limits: tuple[int, int],
        deadline: float,
        read_timeout: float,
    ) -> None:
        self.chunks = []
        self.fields = {}
        self.reason = ""
        self.head = None
        self.mode = self.total = self.fed = 0
        self.seen = False
        self.reusable = False
        self.url, self.waiter = url, waiter
        self.max_bytes, self.spool_above = limits
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.last = self.loop.time()
        assert self.transport is not None
        self.transport.write(request)

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self.lost = True


def _content_length(headers: Headers) -> int | None:
    """The Content-Length as a number: llhttp refused an answer with several, an empty one,
    anything but digits, or one over 2**64."""
    values = headers.getall("content-length", ())
    return int(values[0]) if values else None


class _Slots:
    """At most ``limit`` requests in flight, ``per_host`` per host; first come, first served
    among the waiters that can go (a request never overtakes a waiter of its own host, nor
    any waiter while the global limit is what holds them)."""

    def __init__(self, limit: int, per_host: int) -> None:
        self.limit = limit
        self.per_host = per_host
        self.used = 0
        self.hosts: dict[tuple[str, str, int], int] = {}
        self.waiters: deque[tuple[tuple[str, str, int], asyncio.Future[None]]] = deque()
        self.waiting: dict[tuple[str, str, int], int] = {}  # waiters per host

    def _free(self, key: tuple[str, str, int]) -> bool:
        return self.used < self.limit and self.hosts.get(key, 0) < self.per_host

    def try_acquire(self, key: tuple[str, str, int]) -> bool:
        if not self._free(key) or self.waiting.get(key):
            return False
        self.used += 1
        self.hosts[key] = self.hosts.get(key, 0) + 1
        return True

    async def acquire(self, key: tuple[str, str, int]) -> None:
        if not self.try_acquire(key):
            fut = asyncio.get_running_loop().create_future()
            entry = (key, fut)
            self.waiters.append(entry)
            self.waiting[key] = self.waiting.get(key, 0) + 1
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self.release(key)  # granted as we were cancelled: pass it on
                else:
                    self.waiters.remove(entry)
                    self._unwait(key)
                raise
            # release() counted us in and took us off the waiters

    def _unwait(self, key: tuple[str, str, int]) -> None:
        left = self.waiting[key] - 1
        if left:
            self.waiting[key] = left
        else:
            del self.waiting[key]

    def release(self, key: tuple[str, str, int]) -> None:
        self.used -= 1
        left = self.hosts[key] - 1
        if left:
            self.hosts[key] = left
        else:
            del self.hosts[key]
        for entry in self.waiters:
            other, fut = entry
            if not fut.done() and self._free(other):
                self.waiters.remove(entry)
                self._unwait(other)
                self.used += 1
                self.hosts[other] = self.hosts.get(other, 0) + 1
                fut.set_result(None)
                return
            if self.used >= self.limit:
                return


class Http1Client:
    """Pooled keep-alive GETs; see the module docstring. Make it inside the running loop."""

    def __init__(
        self,
        resolver: AbstractResolver,
        *,
        limit: int,
        limit_per_host: int,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.resolver = resolver
        self.slots = _Slots(limit, limit_per_host)
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}  # per host, newest last
        self.lru: dict[_Conn, None] = {}  # every idle connection, oldest first
        self.open: set[_Conn] = set()
        self.keep = limit_per_host
        self.keep_all = limit
        self.closed = False
        self._tls: ssl.SSLContext | None = None
        self._host_lines: dict[tuple[str, str, int], bytes] = {}

    def close(self) -> None:
        """Drop every connection (idle and in use) at once."""
        self.closed = True
        self.idle.clear()
        self.lru.clear()
        for conn in list(self.open):
            conn.close()

    async def wait_closed(self) -> None:
        """Wait (1 s at most) until the event loop has closed the sockets of :meth:`close`."""
        gone = [conn.gone for conn in self.open]
        if gone:
            await asyncio.wait(gone, timeout=1.0)

    @contextlib.asynccontextmanager
    async def slot(self, url: URL) -> AsyncIterator[None]:
        """Hold a request slot of ``url``'s host (for a hop made with aiohttp instead)."""
        key = _key(url)
        await self.slots.acquire(key)
        try:
            yield
        finally:
            self.slots.release(key)

    async def get(
        self,
        url: URL,
        user_agent: str,
        *,
        deadline: float,
        timeouts: tuple[float, float],
        max_bytes: int,
        spool_above: int,
    ) -> Response:
        """One GET of ``url`` (http or https, checked by the caller), answered before the loop
        time ``deadline``; ``timeouts``: (connect, read) in seconds. TimeoutError, an OSError or
        :class:`Unsupported` otherwise."""
        if self.closed:
            raise ConnectionResetError("client closed")
        if url.raw_fragment:  # never sent; the answer's URL is without it (as aiohttp's)
            url = url.with_fragment(None)
        key = _key(url)
        try:
            request = self._request(url, key, user_agent)
        except UnicodeEncodeError as exc:  # not ASCII / Latin-1: aiohttp encodes it its way
            raise Unsupported(f"cannot encode the request: {exc}") from None
        limits = (max_bytes, spool_above)
        connect_timeout, read_timeout = timeouts
        waited = 0.0
        if not self.slots.try_acquire(key):
            # a wait in our own queue (the host's connections all busy): the deadline starts
            # once the request can go, or a slow host's URLs would time out before being asked
            queued = self.loop.time()
            await self.slots.acquire(key)
            waited = self.loop.time() - queued
            deadline += waited
        try:  # (inline, not a helper: one coroutine less per URL)
            conn = self._take_idle(key)
            if conn is not None:
                try:
                    answer = await self._exchange(
                        conn, request, url, limits, deadline, read_timeout
                    )
                    answer.waited = waited
                    return answer
                except ConnectionResetError:
                    if conn.seen:
                        raise
                    # the server had closed the kept connection: once more, on a new one
            async with asyncio.timeout_at(deadline):
                conn = await self._connect(url, key, connect_timeout)
            answer = await self._exchange(conn, request, url, limits, deadline, read_timeout)
            answer.waited = waited
            return answer
        finally:
            self.slots.release(key)

    def _request(self, url: URL, key: tuple[str, str, int], user_agent: str) -> bytes:
        lines = self._host_lines.get(key)
        if lines is None:
            host = url.raw_host or ""
            if ":" in host:
                host = f"[{host}]"
            port = url.port
            if port is not None and port != {"http": 80, "https": 443}[key[0]]:
                host = f"{host}:{port}"
            lines = (
                f"Host: {host}\r\nAccept: */*\r\nAccept-Encoding: identity\r\n"
                "Connection: keep-alive\r\n"
            ).encode("ascii")
            if len(self._host_lines) < 1024:
                self._host_lines[key] = lines
        target = url.raw_path_qs or "/"
        if url.raw_user is not None:  # http://user:pw@host/…: Basic credentials, as aiohttp
            lines += _basic_auth(url.user or "", url.password or "")
        return b"".join(
            (
                b"GET ",
                target.encode("ascii"),
                b" HTTP/1.1\r\n",
                lines,
                b"User-Agent: ",
                user_agent.encode("latin-1"),
                b"\r\n\r\n",
            )
        )

    def _take_idle(self, key: tuple[str, str, int]) -> _Conn | None:
        conns = self.idle.get(key)
        if not conns:
            return None
        now = self.loop.time()
        found = None
        while conns:
            conn = conns.pop()
            del self.lru[conn]
            closing = conn.transport is None or conn.transport.is_closing()
            if conn.lost or closing or now - conn.idle_since > _IDLE_SECONDS:
                conn.close()
                continue
            found = conn
            break
        if not conns:
            del self.idle[key]
        return found

    def _keep_idle(self, conn: _Conn) -> None:
        """Keep ``conn`` for the next request to its host. At most ``limit_per_host`` idle
        connections per host and ``limit`` in all, none idle longer than ``_IDLE_SECONDS``:
        the oldest go first (a run over a million hosts keeps no million sockets)."""
        now = self.loop.time()
        conn.idle_since = now
        conns = self.idle.setdefault(conn.key, [])
        conns.append(conn)
        self.lru[conn] = None
        if len(conns) > self.keep:
            self._drop_idle(conns[0])
        lru = self.lru
        while lru:
            oldest = next(iter(lru))
            if len(lru) <= self.keep_all and now - oldest.idle_since <= _IDLE_SECONDS:
                break
            self._drop_idle(oldest)

    def _drop_idle(self, conn: _Conn) -> None:
        del self.lru[conn]
        conns = self.idle[conn.key]
        conns.remove(conn)
        if not conns:
            del self.idle[conn.key]
        conn.close()

    async def _connect(self, url: URL, key: tuple[str, str, int], limit: float) -> _Conn:
        host = url.raw_host or ""
        port = url.port or 0
        tls = self._tls_context() if key[0] == "https" else None
        try:
            literal = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            literal = None
        if literal is not None:
            addresses = [(host, port)]
        else:
            found = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
            addresses = [(str(r["host"]), int(r["port"])) for r in found]
        error: OSError | None = None
        for address, where in addresses:
            try:
                async with asyncio.timeout(limit):
                    _, conn = await self.loop.create_connection(
                        lambda: _Conn(self.loop, key, self.open),
                        address,
                        where,
                        ssl=tls,
                        server_hostname=host if tls is not None else None,
                    )
            except OSError as exc:  # TimeoutError too: try the next address
                error = exc
                continue
            if self.closed:  # closed while this connection was being made
                conn.close()
                raise ConnectionResetError("client closed")
            return conn
        raise error or OSError(f"no address for {host}")

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def _exchange(
        self,
        conn: _Conn,
        request: bytes,
        url: URL,
        limits: tuple[int, int],
        deadline: float,
        read_timeout: float,
    ) -> Response:
        waiter: asyncio.Future[Response] = self.loop.create_future()
        conn.send(request, url, waiter, limits, deadline, read_timeout)
        due = min(deadline, conn.last + read_timeout)
        conn.timer = self.loop.call_at(due, self._check, conn, waiter)
        try:
            response = await waiter
        except BaseException:
            conn.close()
            raise
        finally:
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
            conn.waiter = None
        if conn.reusable and not conn.lost and not self.closed:
            self._keep_idle(conn)
        else:
            conn.close()
        return response

    def _check(self, conn: _Conn, waiter: asyncio.Future[Response]) -> None:
        """The request's one timer: fail it at the deadline, or when nothing came for
        ``read_timeout``; else re-arm it for the next of the two."""
        if waiter.done():
            return
        now = self.loop.time()
        if now >= conn.deadline:
            waiter.set_exception(TimeoutError("total timeout of the hop"))
            return
        due = conn.last + conn.read_timeout
        if now >= due:
            waiter.set_exception(TimeoutError(f"no data for {conn.read_timeout:g} s (read)"))
            return
        conn.timer = self.loop.call_at(min(due, conn.deadline), self._check, conn, waiter)


def _key(url: URL) -> tuple[str, str, int]:
    return (url.scheme.lower(), (url.raw_host or "").lower(), url.port or 0)
