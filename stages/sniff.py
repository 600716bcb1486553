"""What a file is, from its first bytes: inputs are recognised by content, not by name.

:func:`image_format` answers with the Pillow format that :func:`stages.imaging.process_image`
will open (``"JPEG"``, ``"PNG"``…), using the same tests as those formats' Pillow plugins
(their ``_accept`` functions; ``tests/test_names.py`` checks that the two agree), so the read
stage can tell an image from anything else without importing Pillow into the parent process.
:func:`describe` names what something else is, for the ``skipped`` record's reason.

:data:`HEAD_BYTES` is how much of a file is looked at: every magic number here sits in the first
16 bytes, except the compatible brands of an ISO media file (HEIF, AVIF), listed in its first
box; the rest lets :func:`describe` tell text from binary data.

HEIC/HEIF files (``"HEIF"``, opened by the optional ``pillow-heif`` plugin) are recognised
whether or not that plugin is installed: a HEIC photo is an image, and the worker that cannot
open it says which extra it needs (:mod:`stages.heif`) instead of "not an image".
"""

from __future__ import annotations

__all__ = ["HEAD_BYTES", "NPY_MAGIC", "describe", "image_format", "is_zip", "may_be_heif"]

HEAD_BYTES = 512

NPY_MAGIC = b"\x93NUMPY"

_TIFF = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")
_JP2 = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \x0d\x0a\x87\x0a")
_WEBP_MODES = (b"VP8 ", b"VP8X", b"VP8L")
# ISO media (ftyp) brands. AV1 coding brands: Pillow's AVIF plugin; HEVC coding brands: the
# pillow-heif plugin; the generic HEIF container brands (mif1 images, msf1 sequences) are tried
# by both plugins, so for them the compatible brands decide (HEVC brands and no AV1 one: HEIF)
_AVIF_BRANDS = (b"avif", b"avis")
_HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")
_CONTAINER_BRANDS = (b"mif1", b"msf1")


def image_format(head: bytes) -> str | None:
    """The Pillow format of an image whose file starts with ``head``, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"  # MPO files start alike: the JPEG plugin opens both
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and head[12:16] in _WEBP_MODES:
        return "WEBP"
    if head.startswith(_TIFF):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if len(head) >= 2 and head.startswith(b"P") and head[1] in b"0123456fy":
        return "PPM"  # PBM, PGM, PPM, PNM, PFM
    if head.startswith(_JP2):  # first: a codestream's bytes 4:8 (its Lsiz, Rsiz) may read ftyp
        return "JPEG2000"
    if head[4:8] == b"ftyp":
        return _iso_image_format(head)
    return None


def _iso_image_format(head: bytes) -> str | None:
    """``"AVIF"``, ``"HEIF"`` or None for an ISO media file, from its ``ftyp`` box's brands."""
    major = head[8:12]
    if major in _AVIF_BRANDS:
        return "AVIF"
    if major in _HEIC_BRANDS:
        return "HEIF"
    if major not in _CONTAINER_BRANDS:
        return None  # e.g. an MP4 video
    box_end = min(int.from_bytes(head[:4], "big"), len(head))
    compatible = {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if compatible.intersection(_HEIC_BRANDS) and not compatible.intersection(_AVIF_BRANDS):
        return "HEIF"
    return "AVIF"  # Pillow's AVIF plugin is tried first; pillow-heif after it


def may_be_heif(head: bytes) -> bool:
    """An ISO media file of a major brand the HEIF plugin (pillow-heif) accepts: a HEVC coding
    brand or a generic container one (a generic one may hold AV1 too: Pillow's AVIF plugin is
    tried first). Needs the first 12 bytes."""
    return head[4:8] == b"ftyp" and head[8:12] in (*_HEIC_BRANDS, *_CONTAINER_BRANDS)


def is_zip(head: bytes) -> bool:
    """A zip archive (``.npz`` files are zip archives of ``.npy`` members)."""
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


_OTHER = (
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"8BPS", "a Photoshop document (PSD): not a supported format"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image: not a supported format"),
    (b"\xff\x0a", "a JPEG XL image: not a supported format"),
    (b"OggS", "an Ogg media file"),
    (b"ID3", "an MP3 audio file"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
)


def describe(head: bytes, size: int) -> str:
    """What a file that is not an image is, in a few words (for a ``skipped`` reason)."""
    if size == 0:
        return "an empty file (0 bytes)"
    if is_zip(head):
        return "a zip archive"
    if head.startswith(NPY_MAGIC):
        return "a NumPy array (.npy)"
    if head[4:8] == b"ftyp":  # HEIF and AVIF brands are images (image_format)
        brand = head[8:12].decode("latin-1")
        return f"an ISO media file (brand {brand!r}), not an image"
    for magic, what in _OTHER:
        if head.startswith(magic):
            return what
    if head.lstrip().startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "an SVG drawing: not a supported format"
    return "text" if _looks_like_text(head) else "unrecognised binary data"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the head
            return False
    return True
