"""The download stage of a shard run: a table row's image bytes, or a :class:`Rejected` value
for a bad download (see :mod:`stages.samples`). Apart from :mod:`stages.samples` so that the
process workers, which import that module for ``render_sample``, never import aiohttp."""

from __future__ import annotations

import hashlib

import aiohttp

from .download import DownloadConfig, DownloadError, fetch, noai
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
    directive = noai(got.robots) if config.respect_noai else None
    if directive is not None:
        why = f"X-Robots-Tag: {directive} (the site opts out of AI use; --ignore-noai)"
        return Rejected(value.describe(), "skipped", "download", "Skip", why, got.status)
    data = bytes(got.data)
    origin = {
        "sample": value.describe(),
        "download": {
            "final_url": got.final_url,
            "http_status": got.status,
            "content_type": got.content_type,
            "attempts": got.attempts,
            "bytes": len(data),
        },
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return Loaded(value.key, data, origin)
