"""HEIC/HEIF input: the optional ``pillow-heif`` plugin, registered with Pillow in the workers.

Phones write HEIC (HEVC-coded HEIF). Pillow cannot read it; the ``pillow-heif`` package adds an
opener. It is an extra (``pip install 'pixpipe[heif]'``), not a core dependency: its wheels
bundle libheif with HEVC codecs (libde265, x265: LGPL/GPL code, under HEVC patents in some
countries; about 26 MB installed), which a user who never meets a HEIC file should not have to
carry. AVIF needs no plugin: Pillow (>= 11.3) reads and writes it.

The plugin is registered on demand (:func:`register_for`), by the first input of a process
whose head is an ISO media file of a brand pillow-heif's opener accepts (HEVC coding brands, and
the generic ``mif1`` / ``msf1``): no other input can be opened by it. Importing it costs 20-25 ms
and about 6 MB of libraries (libheif, x265, libstdc++) per process. Paid at import, by the
forkserver every run preloads, it delayed the first worker of every run and stayed in memory for
the whole run, for nothing on a run without HEIC files. :func:`installed` tells whether it can
be registered, without importing it. Without the package, :data:`NEEDS_EXTRA` is what a HEIC
input's record says (:class:`~stages.options.UnsupportedImage`): the file is recognised as an
image by its content (:mod:`stages.sniff`), so it is never reported as "not an image".

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
import importlib.util
import logging
import threading

from PIL import Image

from .sniff import may_be_heif

__all__ = ["FORMAT", "NEEDS_EXTRA", "installed", "register", "register_for"]

log = logging.getLogger(__name__)

#: The Pillow format name pillow-heif registers (``Image.open(...).format``).
FORMAT = "HEIF"

#: Why a HEIC/HEIF input could not be decoded, in its record.
NEEDS_EXTRA = "HEIC/HEIF input needs the pillow-heif package: pip install 'pixpipe[heif]'"


_lock = threading.Lock()  # a process decoding in threads imports and registers it once


@functools.cache
def installed() -> bool:
    """Whether pillow-heif is installed (found on the path, not imported), or registered."""
    if FORMAT in Image.OPEN:
        return True
    try:
        return importlib.util.find_spec("pillow_heif") is not None
    except (ImportError, ValueError):  # a broken package, or a module without a spec
        return False


def register_for(head: bytes) -> str | None:
    """Before Pillow opens a file that starts with ``head``: register pillow-heif's opener if
    the file may be one it opens (:func:`stages.sniff.may_be_heif`) and it is not registered
    yet. None when nothing stands in the way, else why HEIF images cannot be opened (see
    :func:`register`)."""
    if not may_be_heif(head):
        return None  # pillow-heif's opener would decline it: nothing to register for
    return register()


@functools.cache
def register() -> str | None:
    """Register pillow-heif's opener with Pillow, once per process: None when HEIF images can
    be opened, else why not (:data:`NEEDS_EXTRA` and the import error)."""
    with _lock:
        return _register()


def _register() -> str | None:
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
