"""URL inputs for ``process``: URL lists become items, the download stage fetches them.

``url_inputs`` reads URL lists lazily (:func:`stages.urls.iter_url_list`); each usable URL is an
item keyed by the URL itself, whose outputs go under ``<size>/<host>/<path>_<hash>.<ext>``
(:func:`stages.download.url_to_relpath`: sanitised, never outside the output folder). A line
that holds no usable URL becomes a ``failed`` record (stage ``sources``) instead of vanishing.

``download`` is an async stage over one shared ``aiohttp.ClientSession`` (opened by
``session_factory``); files from input folders pass through it untouched, so folders and URL
lists mix in one run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline import Item, Record, Status, Withdraw

from .download import DownloadConfig, fetch, make_session, noai, opted_out, url_to_relpath
from .files import Loaded
from .urls import iter_url_list

__all__ = ["UrlSource", "download", "download_url", "session_factory", "url_inputs"]


@dataclass(frozen=True, slots=True)
class UrlSource:
    url: str
    rel: str
    extra: dict[str, str] = field(default_factory=dict)


def url_inputs(lists: Sequence[str | os.PathLike[str]]) -> Iterator[Item | Record]:
    for path in lists:
        for entry in iter_url_list(path):
            where = f"{os.fspath(path)}:{entry.line}"
            if not entry.ok:
                yield Record(
                    key=f"{os.fspath(path)}#line{entry.line}",
                    status=Status.FAILED,
                    source=where,
                    stage="sources",
                    error_type="BadUrlListEntry",
                    error=f"{entry.error}: {entry.url!r}",
                    attempts=1,
                )
                continue
            yield Item(
                key=entry.url,
                value=UrlSource(entry.url, url_to_relpath(entry.url), dict(entry.extra)),
                source=where,
                meta=dict(entry.extra),
            )


def session_factory(config: DownloadConfig) -> Callable[[], aiohttp.ClientSession]:
    """What ``stage(..., context=...)`` opens once per run: the run's one client session.

    A ``functools.partial`` of a module-level function, so it pickles (remote backends).
    """
    return functools.partial(make_session, config)


async def download_url(
    value: UrlSource | str, config: DownloadConfig, *, session: aiohttp.ClientSession
) -> Loaded:
    """Fetch a URL's bytes (retries, timeouts, byte cap inside ``fetch``); a plain URL string is
    named by :func:`~stages.download.url_to_relpath`."""
    if isinstance(value, str):
        value = UrlSource(value, url_to_relpath(value))
    elif not isinstance(value, UrlSource):
        raise TypeError(f"download_stage takes URL strings, got {type(value).__name__}")
    return await download(value, config, session=session)


async def download(
    value: UrlSource, config: DownloadConfig, *, session: aiohttp.ClientSession
) -> Loaded:
    """The ``process`` command's download stage (it takes URLs only): a URL's bytes. (The work
    is here, not in :func:`download_url`: one coroutine less per URL.)"""
    got = await fetch(session, value.url, config)
    why = opted_out(got, config)
    if why is not None:
        raise Withdraw(why)  # an image kept by an --ignore-noai run goes
    origin: dict[str, Any] = {
        "url": got.url,
        "final_url": got.final_url,
        "http_status": got.status,
        "content_type": got.content_type,
        "attempts": got.attempts,
        "bytes": len(got.data),
    }
    if (directive := noai(got.robots)) is not None:  # kept under --ignore-noai: said so
        origin["noai"] = directive
    return Loaded(value.rel, got.data, origin)
