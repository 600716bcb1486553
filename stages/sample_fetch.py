"""The download stage of a shard run: a table row's image bytes, or a :class:`Rejected` value
for a bad download (see :mod:`stages.samples`). Apart from :mod:`stages.samples` so that the
process workers, which import that module for ``render_sample``, never import aiohttp."""

from __future__ import annotations

import aiohttp

from .download import DownloadConfig, DownloadError, fetch, opted_out
from .files import Loaded
from .samples import Rejected, SampleSource

__all__ = ["download_sample"]


async def download_sample(
    value: SampleSource, config: DownloadConfig, *, session: aiohttp.ClientSession
) -> Loaded | Rejected:
    """A row's image bytes, with the row and the download in ``origin``; a download error is a
    :class:`Rejected` value (it goes into the shard's metadata)."""
    try:
        got = await fetch(session, value.url, config)
    except DownloadError as exc:
        return Rejected(
            value.describe(), "failed", "download", type(exc).__name__, str(exc), exc.status
        )
    why = opted_out(got, config)
    if why is not None:
        return Rejected(value.describe(), "skipped", "download", "Skip", why, got.status)
    # the bytes as fetched (a big body stays spooled); the worker hashes them (render_sample)
    origin = {
        "sample": value.describe(),
        "download": {
            "final_url": got.final_url,
            "http_status": got.status,
            "content_type": got.content_type,
            "attempts": got.attempts,
            "bytes": len(got.data),
        },
    }
    return Loaded(value.key, got.data, origin)
