"""HEIC/HEIF input: the optional ``pillow-heif`` plugin, registered with Pillow in the workers.

Phones write HEIC (HEVC-coded HEIF). Pillow cannot read it; the ``pillow-heif`` package adds an
opener. It is an extra (``pip install 'pixpipe[heif]'``), not a core dependency: its wheels
bundle libheif with HEVC codecs (libde265, x265: LGPL/GPL code, under HEVC patents in some
countries; about 26 MB installed), which a user who never meets a HEIC file should not have to
carry. AVIF needs no plugin: Pillow (>= 11.3) reads and writes it.

:func:`register` is called when :mod:`stages.imaging` is imported, which happens in each process
that decodes images (the process workers, which the forkserver preloads with it, a Dask worker, a
script's own process), never in the process that only builds and records a run. It costs about
10 ms once per process. Without the package, :data:`NEEDS_EXTRA` is what a HEIC input's record
says (:class:`~stages.options.UnsupportedImage`): the file is recognised as an image by its
content (:mod:`stages.sniff`), so it is never reported as "not an image".

Options given to the plugin (process-wide, as any Pillow plugin registration is):

* ``thumbnails``, ``depth_images``, ``aux_images`` off: only the primary image is used;
* ``decode_threads=1``: the resize stage runs one process worker per core already, and libheif's
  own threads (4 by default, one per tile of a phone's tiled HEIC) would compete with the other
  workers for the same cores.

Orientation: a HEIF file stores it in its container (``irot``/``imir``), which libheif applies
while decoding; pillow-heif then resets any EXIF orientation tag to 1 (keeping the original in
``info["original_orientation"]``), so the decode's EXIF step sees 1 and an image is never rotated
twice. A script that registered the plugin itself keeps its own registration and options.
"""

from __future__ import annotations

import functools
import logging

from PIL import Image

__all__ = ["FORMAT", "NEEDS_EXTRA", "register"]

log = logging.getLogger(__name__)

#: The Pillow format name pillow-heif registers (``Image.open(...).format``).
FORMAT = "HEIF"

#: Why a HEIC/HEIF input could not be decoded, in its record.
NEEDS_EXTRA = "HEIC/HEIF input needs the pillow-heif package: pip install 'pixpipe[heif]'"


@functools.cache
def register() -> str | None:
    """Register pillow-heif's opener with Pillow, once per process: None when HEIF images can
    be opened, else why not (:data:`NEEDS_EXTRA` and the import error)."""
    if FORMAT in Image.OPEN:
        return None  # registered already (a script's own register_heif_opener)
    try:
        import pillow_heif
    except ImportError as exc:
        log.debug("no HEIF support: %s", exc)
        return f"{NEEDS_EXTRA} ({exc})"
    pillow_heif.register_heif_opener(
        thumbnails=False, depth_images=False, aux_images=False, decode_threads=1
    )
    return None
