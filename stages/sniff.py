"""What a file is, from its first bytes: inputs are recognised by content, not by name.

:func:`image_format` answers with the Pillow format that :func:`stages.imaging.process_image`
will open (``"JPEG"``, ``"PNG"``…), using the same tests as those formats' Pillow plugins
(their ``_accept`` functions; ``tests/test_sniff.py`` checks that the two agree), so the read
stage can tell an image from anything else without importing Pillow into the parent process.
:func:`describe` names what something else is, for the ``skipped`` record's reason.

:data:`HEAD_BYTES` is how much of a file is looked at: every magic number here sits in the first
16 bytes; the rest lets :func:`describe` tell text from binary data.
"""

from __future__ import annotations

__all__ = ["HEAD_BYTES", "NPY_MAGIC", "describe", "image_format", "is_zip"]

HEAD_BYTES = 512

NPY_MAGIC = b"\x93NUMPY"

_TIFF = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")
_JP2 = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \x0d\x0a\x87\x0a")
# the AVIF plugin's brands: coding brands and the HEIF container brands it tries
_AVIF_BRANDS = (b"avif", b"avis", b"mif1", b"msf1")
_WEBP_MODES = (b"VP8 ", b"VP8X", b"VP8L")
_HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")


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
    if head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:
        return "AVIF"
    if head.startswith(_JP2):
        return "JPEG2000"
    return None


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
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIC_BRANDS:
            return "a HEIC/HEIF image: not a supported format"
        return f"an ISO media file (brand {brand.decode('latin-1')!r}), not an image"
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
