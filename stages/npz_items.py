"""The items of an ``.npz`` input, local or at a storage URL: one per array (``key:name``)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from pipeline import Item, Record, Status

from .sniff import HEAD_BYTES, image_format

__all__ = ["npz_items"]


def npz_items(
    key: str,
    source: str,
    identity: dict[str, Any] | None,
    opener: Callable[[], IO[bytes]],
    image: Callable[[], object],
    array: Callable[[str], object],
) -> Iterator[Item | Record]:
    """One item per ``.npy`` member of the zip ``opener()`` opens (value: ``array(member)``);
    an image so named is one image item (``image()``); a file that is no zip is a failed
    record naming why, one without arrays a skipped one."""
    try:
        with opener() as fh:
            is_image = image_format(fh.read(HEAD_BYTES)) is not None
            members = [] if is_image else _arrays(fh)
    except (OSError, zipfile.BadZipFile) as exc:
        yield Record(
            key=key,
            status=Status.FAILED,
            source=source,
            stage="sources",
            error_type=type(exc).__name__,
            error=f"not a readable .npz (zip) file: {exc}",
            attempts=1,
            identity=identity,  # the file it was, so a later run knows when it is gone
        )
        return
    if is_image:
        yield Item(key=key, value=image(), source=source, identity=identity)
        return
    if not members:
        yield Record(key, Status.SKIPPED, source, reason="no arrays in .npz", identity=identity)
    for member in members:
        name = f"{key}:{member.removesuffix('.npy')}"
        yield Item(key=name, value=array(member), source=source, identity=identity)


def _arrays(fh: IO[bytes]) -> list[str]:
    with zipfile.ZipFile(fh) as zf:
        return [n for n in zf.namelist() if n.endswith(".npy")]
