"""Download stage: fetch one URL with per-phase timeouts, retries, a byte cap and an address policy.

Data flow: one :func:`make_session` per run (its connector holds the global and per-host
connection limits, the address-checking resolver and a lean HTTP/1.1 client,
:mod:`stages.http1`, closed with the session); the stage calls :func:`fetch` once per URL and
gets a :class:`Downloaded` record, or a :class:`DownloadError` that the engine turns into a
``failed`` ledger record. Each hop goes through the lean client (a keep-alive GET with one timer,
~1/3 of aiohttp's CPU per request), and through aiohttp when the lean client declines the
answer (a ``Content-Encoding``, a body to spool: asked for again there).
:func:`url_to_relpath` names the output file for a URL. A body over ``spool_above`` bytes is
written to an unnamed temporary file as it arrives (:mod:`stages.spool`) instead of being held
in memory: ``Downloaded.data`` is then a :class:`~stages.spool.SpooledBody` (``len()``,
``bytes()``; it pickles as the bytes).

One attempt = the request, every redirect hop and the whole body, bounded by ``total_timeout``.
Attempts are repeated with exponential backoff and full jitter (or the server's ``Retry-After``)
on transient failures, up to ``1 + retries`` attempts in all.

Exception hierarchy::

    DownloadError            base class; .url, .attempts, .status (last HTTP status seen or None)
    ├── BadURL               not http(s), malformed, or a redirect to such a URL       (no retry)
    ├── ForbiddenAddress     host is / resolves only to a non-public address         (no retry)
    ├── HTTPStatusError      a non-2xx final status; .status, .retry_after   (retry 429 and 5xx)
    ├── TooLarge             Content-Length or the streamed body exceeds max_bytes     (no retry)
    ├── TruncatedBody        the body ended before Content-Length / the last chunk       (retry)
    ├── TooManyRedirects     more than max_redirects redirects                         (no retry)
    ├── DownloadTimeout      DNS/connect, socket read or total (per attempt) timeout     (retry)
    └── ConnectionFailed     refused, reset, DNS failure, malformed HTTP  (retry, except TLS
                             certificate/handshake errors)

Every error raised by :func:`fetch` is the one from the last attempt, with ``attempts`` and the
last HTTP status written into it and shown in ``str(exc)``. The errors pickle (``args`` is just
the message; the attributes travel in ``__dict__``), because they cross process boundaries.
Cancellation (``asyncio.CancelledError``) is never caught or retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import ipaddress
import logging
import math
import os
import random
import re
import socket
import ssl
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError
from aiohttp.resolver import DefaultResolver
from yarl import URL

from . import http1
from .spool import WRITE_BYTES, Spool, SpooledBody

__all__ = [
    "BadURL",
    "ConnectionFailed",
    "DownloadConfig",
    "DownloadError",
    "DownloadTimeout",
    "Downloaded",
    "ForbiddenAddress",
    "HTTPStatusError",
    "TooLarge",
    "TooManyRedirects",
    "TruncatedBody",
    "fetch",
    "is_forbidden_address",
    "make_session",
    "noai",
    "opted_out",
    "parse_retry_after",
    "url_to_relpath",
]

logger = logging.getLogger(__name__)

# Read the body in 64 KiB pieces: aiohttp's own buffer is the same size, so memory per download
# stays at (bytes received so far, at most max_bytes) + one chunk.
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")
_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadConfig:
    """Download settings; validated on creation. Times are seconds, sizes bytes."""

    connect_timeout: float = 10.0  # DNS resolution, then each TCP(+TLS) connect
    read_timeout: float = 30.0  # longest wait for the next bytes from the socket
    total_timeout: float = 120.0  # one attempt: all redirect hops and the whole body
    retries: int = 3  # extra attempts after the first one (so at most 1 + retries)
    backoff: float = 0.5  # base delay: attempt n waits uniform(0, backoff * 2**(n-1))
    # Not in the spec'd field list: the cap on one wait, for the backoff and for Retry-After.
    backoff_max: float = 30.0
    max_redirects: int = 5
    max_bytes: int = 50 * 2**20
    limit: int = 64  # connections in the whole session
    limit_per_host: int = 8
    allow_private_hosts: bool = False
    user_agent: str = "pixpipe/0.1 (+batch image pipeline)"
    # A body bigger than this goes to an unnamed temporary file in spool_dir (None: TMPDIR) as
    # it arrives, not into memory (stages.spool); None keeps every body in memory. 4 MiB: most
    # photos stay in memory, and `limit` downloads at once hold at most limit x 4 MiB.
    spool_above: int | None = 4 * 2**20
    spool_dir: str | None = None
    # skip (pipeline.Skip) a response whose X-Robots-Tag says noai / noimageai (the caller of
    # fetch decides: stages.fetching, stages.sample_fetch; see opted_out())
    respect_noai: bool = True

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, low in (
            ("retries", 0),
            ("max_redirects", 0),
            ("max_bytes", 1),
            ("limit", 1),
            ("limit_per_host", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.limit_per_host > self.limit:
            raise ValueError(f"limit_per_host ({self.limit_per_host}) > limit ({self.limit})")
        if not isinstance(self.allow_private_hosts, bool):
            raise ValueError(
                f"allow_private_hosts must be a bool, got {self.allow_private_hosts!r}"
            )
        ua = self.user_agent
        if not isinstance(ua, str) or not ua.strip() or any(ord(c) < 32 for c in ua):
            raise ValueError(f"user_agent must be a non-empty single-line string, got {ua!r}")
        spool = self.spool_above
        if spool is not None and (
            isinstance(spool, bool) or not isinstance(spool, int) or spool < 0
        ):
            raise ValueError(f"spool_above must be an int >= 0 or None, got {spool!r}")
        if self.spool_dir is not None and not (
            isinstance(self.spool_dir, str) and os.path.isdir(self.spool_dir)
        ):
            raise ValueError(f"spool_dir must be an existing folder, got {self.spool_dir!r}")


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A successful download. ``content_type`` is the media type without parameters, lowercased,
    ``""`` when the server sent none. It is reported, not checked: a ``text/html`` answer to an
    image URL is still a successful download; the caller (the decode stage) decides whether the
    bytes are usable. ``elapsed`` covers all attempts and backoff waits. ``data`` is the body's
    bytes, or a :class:`~stages.spool.SpooledBody` for a body over ``spool_above``."""

    url: str
    final_url: str
    status: int
    content_type: str
    data: bytes | SpooledBody = field(repr=False)
    attempts: int
    elapsed: float
    robots: str = ""  # the X-Robots-Tag header(s), joined by ", " ("" when none)


# --------------------------------------------------------------------------- exceptions


class DownloadError(Exception):
    """Base class of every error :func:`fetch` raises."""

    def __init__(
        self, message: str, *, url: str = "", attempts: int = 1, status: int | None = None
    ) -> None:
        # Only the message goes into args: unpickling calls cls(*args) and then restores
        # __dict__, so subclasses keep working however their keyword arguments look.
        super().__init__(message)
        self.message = message
        self.url = url
        self.attempts = attempts
        self.status = status

    @property
    def details(self) -> dict[str, object]:
        """Small fields the engine adds to the failed record (the last HTTP status)."""
        return {"http_status": self.status} if self.status is not None else {}

    def __str__(self) -> str:
        details = f"attempts={self.attempts}"
        if self.status is not None:
            details += f", last status={self.status}"
        return f"{self.message} [{details}]"


class BadURL(DownloadError):
    """The URL (or a redirect target) is malformed or not http/https."""


class ForbiddenAddress(DownloadError):
    """The host is, or resolves only to, a loopback/private/link-local/reserved address. The
    message says how such hosts are fetched all the same (an intranet's image server)."""

    HINT = " (private hosts are fetched with --allow-private-hosts)"

    def __init__(self, message: str, **kwargs: Any) -> None:
        if not message.endswith(self.HINT):  # unpickling passes the message it made
            message += self.HINT
        super().__init__(message, **kwargs)


class HTTPStatusError(DownloadError):
    """The final response had a non-2xx status (``.status``)."""

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        attempts: int = 1,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url, attempts=attempts, status=status)
        self.retry_after = retry_after


class TooLarge(DownloadError):
    """The declared or streamed body is larger than ``max_bytes``."""


class TruncatedBody(DownloadError):
    """The connection ended before the body was complete (short of Content-Length)."""


class TooManyRedirects(DownloadError):
    """More than ``max_redirects`` redirects (this includes redirect loops)."""


class DownloadTimeout(DownloadError):
    """A connect, read or total timeout expired."""


class ConnectionFailed(DownloadError):
    """The connection could not be made or broke (refused, reset, DNS, malformed HTTP)."""


# --------------------------------------------------------------------------- address policy

# 64:ff9b::/96 is the NAT64 well-known prefix: the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_forbidden_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for anything but a public unicast address: loopback, private, link-local,
    multicast, reserved, unspecified, shared (CGNAT) and documentation ranges, including IPv4
    addresses embedded in IPv6 (mapped, 6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_forbidden_address(embedded)
        if ip.is_site_local:
            return True
    # is_global alone differs between Python versions; the explicit checks make it certain.
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _address_forbidden(host: str) -> bool:
    try:
        return is_forbidden_address(ipaddress.ip_address(host))
    except ValueError:
        return True  # not an address we can classify: refuse rather than connect


class _ForbiddenResolution(OSError):
    """Raised inside aiohttp's connector; fetch maps it to ForbiddenAddress."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(f"{host} resolves only to non-public addresses: {', '.join(addresses)}")
        self.host = host


class _PolicyResolver(AbstractResolver):
    """Wraps the default resolver: bounds resolution by a timeout and, unless private hosts are
    allowed, drops non-public addresses. The connector connects only to what this returns, so
    the check applies to the address actually used (no second lookup a DNS rebinding attacker
    could answer differently)."""

    def __init__(self, inner: AbstractResolver, *, allow_private: bool, timeout: float) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._timeout = timeout

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # A TimeoutError raised here passes through aiohttp's connector unchanged.
        async with asyncio.timeout(self._timeout):
            results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        allowed = [r for r in results if not _address_forbidden(r["host"])]
        if not allowed:
            raise _ForbiddenResolution(host, [r["host"] for r in results])
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _client_timeout(config: DownloadConfig, total: float | None = None) -> aiohttp.ClientTimeout:
    # `connect` is left unset: it would include waiting for a free pooled connection, which is
    # queueing behind our own limits, not a slow server. DNS has its own bound in the resolver.
    # `total` is aiohttp's own timer over one request: connection, headers and the whole body
    # (aiohttp rounds a deadline of 5 s or more up to a whole second of loop time).
    return aiohttp.ClientTimeout(
        total=config.total_timeout if total is None else total,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What every request of one (session, config) pair needs, built once, not per request."""

    config: DownloadConfig
    timeout: aiohttp.ClientTimeout
    headers: dict[str, str] | None  # None: the session already sends the configured User-Agent
    lean: http1.Http1Client | None  # the session's lean client (None: aiohttp only)
    timeouts: tuple[float, float]  # (connect, read), for the lean client
    limits: tuple[int, int]  # (max_bytes, spool_above or max_bytes), for the lean client


# Sessions made by make_session, with the config they were made from. fetch refuses to run a
# no-private-hosts config on a session whose resolver does not enforce it.
_SESSIONS: weakref.WeakKeyDictionary[aiohttp.ClientSession, _Prepared] = weakref.WeakKeyDictionary()


def _prepare(config: DownloadConfig, made: _Prepared | None) -> _Prepared:
    """The per-request arguments for ``config`` on a session made from ``made`` (None: a session
    from elsewhere); ValueError if that session cannot enforce the config's address policy."""
    session_allows_private = made is None or made.config.allow_private_hosts
    if not config.allow_private_hosts and session_allows_private:
        raise ValueError(
            "fetch with allow_private_hosts=False needs a session from "
            "make_session(config) made with allow_private_hosts=False"
        )
    same_agent = made is not None and made.config.user_agent == config.user_agent
    headers = None if same_agent else {"User-Agent": config.user_agent}
    return _prepared(config, headers, made.lean if made is not None else None)


def _prepared(
    config: DownloadConfig, headers: dict[str, str] | None, lean: http1.Http1Client | None
) -> _Prepared:
    spool = config.max_bytes if config.spool_above is None else config.spool_above
    return _Prepared(
        config,
        _client_timeout(config),
        headers,
        lean,
        (config.connect_timeout, config.read_timeout),
        (config.max_bytes, min(spool, config.max_bytes)),
    )


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, which also closes the session's lean client (the session closes
    its connector): one ``async with make_session(...)`` owns both."""

    lean: http1.Http1Client | None = None

    def _close(self, *, abort_ssl: bool = False) -> list[Any]:
        if self.lean is not None:
            self.lean.close()
        return super()._close(abort_ssl=abort_ssl)

    async def close(self, *, abort_ssl: bool = False) -> None:
        await super().close(abort_ssl=abort_ssl)
        if self.lean is not None:  # its sockets closed before the loop may close
            await self.lean.wait_closed()


def make_session(config: DownloadConfig) -> aiohttp.ClientSession:
    """One session per run; call it inside the running event loop and close it at the end
    (``async with make_session(cfg) as session:``)."""
    resolver = _PolicyResolver(
        DefaultResolver(),
        allow_private=config.allow_private_hosts,
        timeout=config.connect_timeout,
    )
    connector = _Connector(
        limit=config.limit, limit_per_host=config.limit_per_host, resolver=resolver
    )
    connector.lean = http1.Http1Client(
        resolver, limit=config.limit, limit_per_host=config.limit_per_host
    )
    timeout = _client_timeout(config)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": config.user_agent},
        # Unrelated downloads share nothing: no cookies (also keeps a long run's memory flat).
        cookie_jar=aiohttp.DummyCookieJar(),
        # No proxies from the environment: a proxy would resolve names itself, around our
        # resolver and its address policy.
        trust_env=False,
    )
    _SESSIONS[session] = _prepared(config, None, connector.lean)
    return session


# --------------------------------------------------------------------------- fetch


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)  # the RFC says integer; accepting "1.5" costs nothing
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _backoff_delay(config: DownloadConfig, attempt: int, retry_after: float | None) -> float:
    # Retry-After longer than backoff_max is cut to backoff_max: the run must not stall for an
    # hour on one host. (The alternative, giving up at once, would lose items a server only
    # wanted slowed down.)
    if retry_after is not None:
        return min(retry_after, config.backoff_max)
    ceiling = min(config.backoff_max, config.backoff * 2.0 ** min(attempt - 1, 60))
    return random.uniform(0.0, ceiling)  # full jitter


def _is_retryable(exc: DownloadError) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.status == 429 or (exc.status is not None and 500 <= exc.status <= 599)
    if isinstance(exc, ConnectionFailed):
        # A bad certificate stays bad: retrying only wastes the backoff time.
        return not isinstance(exc.__cause__, aiohttp.ClientSSLError | ssl.SSLError)
    return isinstance(exc, DownloadTimeout | TruncatedBody)


def _parse_url(raw: str, *, url: str, status: int | None = None) -> URL:
    """Parse and check an http(s) URL; BadURL otherwise."""
    if _CONTROL_CHARS.search(raw):
        raise BadURL(f"control character in URL {raw!r}", url=url, status=status)
    try:
        parsed = URL(raw)
        host, port = parsed.raw_host, parsed.port
    except (ValueError, TypeError) as exc:
        raise BadURL(f"malformed URL {raw!r}: {exc}", url=url, status=status) from exc
    if parsed.scheme.lower() not in _SCHEMES:
        raise BadURL(f"not an http(s) URL: {raw!r}", url=url, status=status)
    if not host or port is None:
        raise BadURL(f"URL has no host: {raw!r}", url=url, status=status)
    why = _bad_host_name(host)
    if why is not None:
        raise BadURL(f"not a host name ({why}): {raw!r}", url=url, status=status)
    return parsed


def _bad_host_name(host: str) -> str | None:
    """Why ``host`` (as the URL parser gives it: IDNA-encoded) cannot be looked up, or None:
    a space, an empty label, a label over 63 characters, a name over 253 (DNS's limits; the
    lookup failed with a bare ``UnicodeError`` or a resolver error that said nothing of it)."""
    if host.startswith("["):  # an IPv6 literal: the parser checked it
        return None
    if _SPACE.search(host):
        return "a space in it"
    if len(host) <= 63 and ".." not in host and not host.startswith("."):
        return None  # (every URL comes here: the usual name in one look)
    name = host[:-1] if host.endswith(".") else host  # a trailing dot: the root, fully named
    if len(name) > 253:
        return f"{len(name)} characters, more than 253"
    for label in name.split("."):
        if not label:
            return "an empty label"
        if len(label) > 63:
            return f"a label of {len(label)} characters, more than 63"
    return None


def _check_ip_literal(target: URL, *, url: str) -> None:
    # aiohttp's connector does not call the resolver for IP-literal hosts, so the policy is
    # applied here, before connecting (by the caller, when private hosts are not allowed).
    # (Names, including odd numeric forms like "127.1", go through the resolver; aiohttp 3.14
    # also rejects non-canonical IPv4 literals itself.)
    host = target.raw_host or ""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: the resolver decides
    if is_forbidden_address(ip):
        raise ForbiddenAddress(f"{host} is not a public address", url=url)


class _HeaderLookup(Protocol):
    """What is read of a response's headers: aiohttp's and the lean client's alike."""

    def get(self, key: str, /) -> str | None: ...


def _media_type(headers: _HeaderLookup) -> str:
    header = headers.get("Content-Type") or ""
    return header.split(";", 1)[0].strip().lower()


async def _read_body(
    response: aiohttp.ClientResponse, config: DownloadConfig, url: str
) -> bytes | SpooledBody:
    status = response.status
    declared = response.content_length
    headers = response.headers
    if declared is not None:
        if declared > config.max_bytes:
            raise TooLarge(
                f"Content-Length {declared} exceeds max_bytes {config.max_bytes}",
                url=url,
                status=status,
            )
        small = config.spool_above is None or declared <= config.spool_above
        if small and "Content-Encoding" not in headers and "Transfer-Encoding" not in headers:
            return await _read_framed(response, config, url, declared)
    return await _read_streamed(response, config, url, declared)


async def _read_framed(
    response: aiohttp.ClientResponse, config: DownloadConfig, url: str, declared: int
) -> bytes:
    """A Content-Length within the cap and nothing to decode: aiohttp's parser frames the body
    by that length and hands over at most ``declared`` bytes whatever the server sends after
    them, so one read() is bounded by the cap too, and cheaper than reading chunk by chunk."""
    data = await response.read()
    if len(data) < declared:  # aiohttp raises first on an early EOF; a second check
        raise TruncatedBody(
            f"got {len(data)} of {declared} bytes (Content-Length)", url=url, status=response.status
        )
    if len(data) > config.max_bytes:  # cannot happen (framed by Content-Length): belt and braces
        raise TooLarge(
            f"body exceeds max_bytes {config.max_bytes}", url=url, status=response.status
        )
    return data


async def _read_streamed(
    response: aiohttp.ClientResponse, config: DownloadConfig, url: str, declared: int | None
) -> bytes | SpooledBody:
    """No Content-Length, a body to decode, or one to spool: stream it and count. The cap
    counts decoded bytes: with a Content-Encoding, aiohttp (3.14) inflates in bounded pieces, so
    a small compressed body cannot expand past the cap in memory. Over ``spool_above`` the body
    goes to a file, in pieces of ``WRITE_BYTES`` (from the start when the length says so)."""
    status, max_bytes = response.status, config.max_bytes
    body = bytearray()
    total = 0
    spool: Spool | None = None
    threshold = math.inf if config.spool_above is None else config.spool_above
    spool_at = 0 if declared is not None and declared > threshold else threshold
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(
                    f"body exceeds max_bytes {max_bytes} (no or false Content-Length)",
                    url=url,
                    status=status,
                )
            body += chunk
            if total > spool_at and len(body) >= WRITE_BYTES:
                spool = spool or Spool.create(config.spool_dir)
                await spool.write(body)
                body.clear()
        # aiohttp raises ClientPayloadError for a short body; this is a second check. With a
        # Content-Encoding the length is that of the encoded body, so it cannot be compared.
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        if declared is not None and not encoded and total < declared:
            raise TruncatedBody(
                f"got {total} of {declared} bytes (Content-Length)", url=url, status=status
            )
        if spool is None and total <= threshold:
            return bytes(body)
        spool = spool or Spool.create(config.spool_dir)
        if body:
            await spool.write(body)
        done, spool = await spool.finish(), None
        return done
    finally:
        # Drop the partial body at once: on an error the traceback keeps this frame alive for
        # as long as anyone holds the exception. (Not body.clear(): after a cancellation, the
        # thread of the write it interrupted may still be reading the buffer, which then goes
        # when that write is done.) A spool left here is an error's or a cancellation's: its
        # file goes.
        del body
        if spool is not None:
            await spool.discard()


Answer = tuple[str, int, str, bytes | SpooledBody, str]  # final URL, status, type, body, robots


async def _attempt(
    session: aiohttp.ClientSession, url: str, config: DownloadConfig, prep: _Prepared
) -> Answer:
    """One attempt: follow redirects by hand, so that every hop is checked; read the body.

    A hop goes through the session's lean client (:mod:`stages.http1`) when it has one, and
    through aiohttp when the lean client says :class:`~stages.http1.Unsupported` (a body to
    decode or to spool) or the session has none. The attempt's time limit: the first hop gets
    ``total_timeout``, each redirect hop what is left of it (aiohttp: its own ``total`` timer;
    the lean client: the same deadline).
    """
    last: list[int | None] = [None]  # the last HTTP status seen, for errors that come after it
    try:
        target = _parse_url(url, url=url)
        timeout = prep.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.total_timeout
        for hop in range(config.max_redirects + 1):
            if hop:
                left = deadline - loop.time()
                if left <= 0:
                    raise DownloadTimeout(
                        f"timed out: total_timeout of {config.total_timeout:g} s used up by "
                        "redirects",
                        url=url,
                    )
                timeout = _client_timeout(config, left)
            if not config.allow_private_hosts:
                _check_ip_literal(target, url=url)
            lean = None
            if prep.lean is not None:  # (inline, not a helper: one coroutine less per URL)
                try:
                    lean = await prep.lean.get(
                        target,
                        config.user_agent,
                        deadline=deadline,
                        timeouts=prep.timeouts,
                        max_bytes=prep.limits[0],
                        spool_above=prep.limits[1],
                    )
                except http1.Unsupported as exc:  # a body to decode or spool: aiohttp's job
                    logger.debug("%s: through aiohttp (%s)", target, exc)
            if lean is not None:
                deadline += lean.waited  # (the next hop's share: the deadline the hop had)
                last[0] = lean.status
                got = _lean_answer(lean, target, config, url)
            else:
                got = await _aiohttp_hop(session, prep, target, timeout, url, last)
            if not isinstance(got, URL):
                return got
            target = got
        raise TooManyRedirects(f"more than {config.max_redirects} redirects", url=url)
    except DownloadError as exc:
        if exc.status is None:
            exc.status = last[0]
        raise
    except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
        error = _translate(exc, url)
        error.status = exc.status if isinstance(exc, http1.HopError) and exc.status else last[0]
        raise error from exc


def _lean_answer(
    lean: http1.Response, target: URL, config: DownloadConfig, url: str
) -> Answer | URL:
    """The lean client's answer: the next hop's URL (a redirect), or the download."""
    after = _redirect_or_raise(target, lean.status, lean.reason, lean.headers, url)
    if after is not None:
        return after
    if lean.body is None:  # the Content-Length said too much
        raise TooLarge(
            f"Content-Length {lean.declared} exceeds max_bytes {config.max_bytes}",
            url=url,
            status=lean.status,
        )
    robots = ", ".join(lean.headers.getall("X-Robots-Tag", ()))
    return str(lean.url), lean.status, _media_type(lean.headers), lean.body, robots


async def _aiohttp_hop(
    session: aiohttp.ClientSession,
    prep: _Prepared,
    target: URL,
    client_timeout: aiohttp.ClientTimeout,
    url: str,
    last: list[int | None],
) -> Answer | URL:
    """One hop through aiohttp: the next hop's URL (a redirect), or the download (a body to
    decode, or to spool: :func:`_read_body`)."""
    async with (
        _slot(prep, target),
        session.get(
            target, allow_redirects=False, timeout=client_timeout, headers=prep.headers
        ) as resp,
    ):
        last[0] = status = resp.status
        after = _redirect_or_raise(target, status, resp.reason, resp.headers, url)
        if after is not None:
            return after
        data = await _read_body(resp, prep.config, url)
        robots = ", ".join(resp.headers.getall("X-Robots-Tag", ()))
        return str(resp.url), status, _media_type(resp.headers), data, robots


def _slot(prep: _Prepared, target: URL) -> contextlib.AbstractAsyncContextManager[None]:
    """An aiohttp hop holds a request slot of the lean client too: the per-host limit counts
    the requests of both."""
    return prep.lean.slot(target) if prep.lean is not None else contextlib.nullcontext()


def _redirect_or_raise(
    target: URL, status: int, reason: str | None, headers: _HeaderLookup, url: str
) -> URL | None:
    """The next hop's URL for a redirect; None for a 2xx; HTTPStatusError for the rest."""
    if status in _REDIRECT_STATUSES:
        location = headers.get("Location")
        if location is not None:
            try:
                joined = str(target.join(URL(location)))
            except (ValueError, TypeError) as exc:
                raise BadURL(f"bad redirect {location!r}", url=url, status=status) from exc
            return _parse_url(joined, url=url, status=status)
    if not 200 <= status <= 299:
        raise HTTPStatusError(
            f"HTTP {status} {reason or ''}".rstrip(),
            url=url,
            status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    return None


def _translate(exc: Exception, url: str) -> DownloadError:
    """Map aiohttp/OS errors to our hierarchy (the original becomes __cause__ at the raise)."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts subclass it too
        return DownloadTimeout(f"timed out: {exc or type(exc).__name__}", url=url)
    if isinstance(exc, _ForbiddenResolution):  # from the lean client's connect
        return ForbiddenAddress(str(exc), url=url)
    if isinstance(exc, http1.PayloadIncomplete):
        return TruncatedBody(f"body incomplete: {exc}", url=url)
    if isinstance(exc, http1.BodyOverLimit):
        return TooLarge(f"{exc} (no or false Content-Length)", url=url)
    if isinstance(exc, http1.MalformedResponse):
        return ConnectionFailed(f"malformed response: {exc}", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error if isinstance(exc.os_error, _ForbiddenResolution) else exc.__cause__
        if isinstance(cause, _ForbiddenResolution):
            return ForbiddenAddress(str(cause), url=url)
        return ConnectionFailed(f"cannot connect: {exc}", url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return BadURL(f"invalid URL: {exc}", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        # ContentLengthError / TransferEncodingError: the connection ended mid-body.
        if isinstance(exc.__cause__, ContentLengthError | TransferEncodingError):
            return TruncatedBody(f"body incomplete: {exc}", url=url)
        return ConnectionFailed(f"malformed body: {exc}", url=url)
    return ConnectionFailed(f"connection failed: {type(exc).__name__}: {exc}", url=url)


async def fetch(session: aiohttp.ClientSession, url: str, config: DownloadConfig) -> Downloaded:
    """Download ``url`` (into memory, or to a file over ``spool_above``); retry transient
    failures; raise a DownloadError otherwise.

    ``session`` must come from :func:`make_session` when ``config.allow_private_hosts`` is False
    (a ValueError says so otherwise): the address policy lives in that session's resolver.
    """
    prep = _SESSIONS.get(session)
    if prep is None or (prep.config is not config and prep.config != config):
        prep = _prepare(config, prep)
    started = time.monotonic()
    last_status: int | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            final_url, status, content_type, data, robots = await _attempt(
                session, url, config, prep
            )
        except DownloadError as exc:
            last_status = exc.status if exc.status is not None else last_status
            if attempt > config.retries or not _is_retryable(exc):
                exc.attempts, exc.status = attempt, last_status
                raise
            retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
            delay = _backoff_delay(config, attempt, retry_after)
            logger.debug("retrying %s in %.2fs after attempt %d: %s", url, delay, attempt, exc)
            await asyncio.sleep(delay)
            continue
        return Downloaded(
            url=url,
            final_url=final_url,
            status=status,
            content_type=content_type,
            data=data,
            attempts=attempt,
            elapsed=time.monotonic() - started,
            robots=robots,
        )


_NOAI = re.compile(r"\b(noai|noimageai)\b", re.IGNORECASE)


def noai(robots: str) -> str | None:
    """The ``noai`` / ``noimageai`` directive of an ``X-Robots-Tag`` value, or None. A
    directive for a named user agent (``otherbot: noai``) counts too: the tool cannot know
    which crawler names stand for it, so it errs on the side of the site."""
    m = _NOAI.search(robots)
    return m.group(1).lower() if m else None


def opted_out(got: Downloaded, config: DownloadConfig) -> str | None:
    """Why ``got`` is left out (skipped) under ``config.respect_noai``, or None: the one wording
    of the files and the shard downloads."""
    directive = noai(got.robots) if config.respect_noai else None
    if directive is None:
        return None
    return f"X-Robots-Tag: {directive} (the site opts out of AI use; --ignore-noai)"


# --------------------------------------------------------------------------- output names

_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SEGMENT = 80  # chars per path segment; ASCII only, so also bytes (NAME_MAX is 255)
_MAX_DIRS = 8  # directory levels kept below the host; deeper ones are dropped (the hash stays)
_HASH_LEN = 10
# Windows device names are refused as file names whatever the extension.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)


def _clean_segment(text: str) -> str:
    """Sanitise one path segment; "" means drop it (empty, "." or ".." and other all-dots)."""
    seg = _UNSAFE_RUN.sub("_", text)[:_MAX_SEGMENT]
    if not seg.strip("."):
        return ""
    # No hidden files, nothing that looks like a command-line option, no device names.
    if seg[0] in ".-" or seg.split(".", 1)[0].upper() in _RESERVED:
        seg = ("_" + seg)[:_MAX_SEGMENT]
    return seg


def url_to_relpath(url: str) -> str:
    """A relative output path for ``url``: ``host[_port]/dirs.../stem_<hash>.ext``.

    Every segment is ``[A-Za-z0-9._-]``, at most 80 chars, never empty/``.``/``..``; the result
    is never absolute. The hash is the first 10 hex digits of the SHA-1 of the whole URL (query
    and fragment included, which is how the query is folded in), so distinct URLs get distinct
    paths even when sanitising maps them to the same text. Defined for any string.
    """
    digest = hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    try:
        parts = urlsplit(url)
        netloc, path = parts.netloc, parts.path
    except ValueError:  # e.g. an unbalanced "[" in the host
        netloc, path = "", url
    host = netloc.rpartition("@")[2].lower()
    # bücher.example -> xn--bcher-kva.example; not a valid IDN (or no name at all): kept as is.
    with contextlib.suppress(UnicodeError):
        host = host.encode("idna").decode("ascii")
    host = _clean_segment(host) or "_nohost"
    segments = [_clean_segment(unquote(s, errors="replace")) for s in path.split("/")]
    name = "" if path.endswith("/") else next((s for s in reversed(segments) if s), "")
    dirs = [s for s in segments if s]
    if name:
        dirs.pop()
    stem, dot, ext = (name or "index").rpartition(".")
    if not (dot and stem and 1 <= len(ext) <= 8 and ext.isalnum()):
        stem, ext = name or "index", ""
    suffix = f"_{digest}" + (f".{ext}" if ext else "")
    filename = stem[: _MAX_SEGMENT - len(suffix)] + suffix
    return "/".join([host, *dirs[:_MAX_DIRS], filename])
