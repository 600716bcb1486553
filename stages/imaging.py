"""Decode, orient, colour-manage, resize and encode one image: the hot path of the resize stage.

:func:`process_image` is the fused call a process worker runs for one item: bytes in, a small
:class:`ImageResult` (encoded outputs + statistics) out, so decoded pixels never cross a process
boundary. It is a plain module-level function of picklable arguments. :func:`thumbnail_image`
runs the same decode and resize for one size and returns the image instead of its encoding;
:func:`encode_image` encodes an image as the outputs of :func:`process_image` are encoded (the
public ``stages.thumbnail`` and ``stages.encode`` are these two).

Data flow inside :func:`process_image`::

    bytes ─▶ Image.open (header only; formats limited to ALLOWED_FORMATS)
          ─▶ pixel-count check from the header (DecompressionBomb, nothing decoded yet)
          ─▶ output geometry for every requested size, from the oriented original size
             (OutputTooLarge when one would exceed max_output_pixels, nothing decoded yet)
          ─▶ JPEG: draft() = DCT-domain downscale by 1/2, 1/4 or 1/8, never below the largest
             size needed ─▶ load (decode)
          ─▶ normalise mode to L / LA / RGB / RGBA (1, P + transparency, 16-bit, CMYK, …)
          ─▶ reduce() by an integer factor while still ≥ 2x the largest size needed
          ─▶ embedded ICC profile → sRGB (on the reduced image: cheap)
          ─▶ EXIF orientation (a transpose of the reduced image)
          ─▶ per size: resample the source box (fit / fill crop / exact; Lanczos, or Hamming for
             the last ≤ 2x of a shrink, see LAST_STEP_FILTER_RATIO; an image not resampled has
             its invisible pixels made transparent black, as resampling leaves them), pad canvas,
             alpha flattened onto white for JPEG, encode (metadata stripped)
          ─▶ statistics (stages.stats.image_stats) on the largest output, before padding

Exception hierarchy (each takes a single message string, so all pickle round-trip)::

    ImageError(Exception)          base of everything raised for a bad input
    ├── DecodeError                empty input, not an image, corrupt data
    ├── TruncatedImage             the data ends before the image does (allow_truncated=False)
    ├── DecompressionBomb          the header declares more than max_pixels pixels
    ├── OutputTooLarge             an output would have more than max_output_pixels pixels
    └── UnsupportedImage           identified, but a codec/mode this module cannot render

``ValueError`` is raised for invalid options (:class:`Size`, :class:`ResizeOptions`), never for a
bad input image. The options, the result classes and the exceptions are defined in
:mod:`stages.options` (no numpy, no Pillow, for the process that only builds and collects a run)
and re-exported here.

Process-global state - three pieces are involved, and none is left changed after a call:

* ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is read by Pillow while opening and decoding. A call
  with ``allow_truncated=True`` sets it for the duration of its decode only, holding the exclusive
  side of a module-level reader/writer lock; normal calls hold the shared side, so they never
  observe the flag (and run concurrently with each other when called from threads). In a process
  worker, one call at a time, the lock is uncontended. If *other* code sets the flag globally,
  truncation can no longer be detected.
* ``warnings``: during the decode, Pillow's ``DecompressionBombWarning`` (our own ``max_pixels``
  check replaces Pillow's ``Image.MAX_IMAGE_PIXELS`` one) and Pillow's ``UserWarning``\\s about
  dubious metadata (corrupt EXIF, ...) are ignored, through two filter entries that are inserted
  by the first concurrent call and removed by the last one (``warnings.catch_warnings`` is not
  thread-safe before Python 3.14). While any call is decoding, those two Pillow warnings are
  ignored process-wide.
* ``Image.MAX_IMAGE_PIXELS``: Pillow refuses images above twice this limit when it opens them,
  whatever our ``max_pixels`` says. While calls decode, it is raised to the largest
  ``max_pixels`` among them (never lowered; Pillow's ``None``, no limit, stays), so that our
  check is the one that decides, and restored by the last one (reference-counted, as above).
  Frames Pillow checks on its own (a GIF frame larger than its screen) above twice our
  ``max_pixels`` are refused by Pillow; that is reported as :class:`DecompressionBomb` too.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import io
import logging
import math
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from PIL import ExifTags, Image, ImageChops, ImageCms, ImageFile, UnidentifiedImageError

from stages import heif
from stages.options import (
    DecodeError,
    DecompressionBomb,
    EncodedFormat,
    EncodedImage,
    ImageError,
    ImageResult,
    OutputFormat,
    OutputTooLarge,
    ResizeMode,
    ResizeOptions,
    Size,
    TruncatedImage,
    UnsupportedImage,
    parse_size,
)
from stages.sniff import HEAD_BYTES, image_format
from stages.stats import image_stats

__all__ = [
    "ALLOWED_FORMATS",
    "DecodeError",
    "DecompressionBomb",
    "EncodedImage",
    "ImageError",
    "ImageResult",
    "OutputFormat",
    "OutputTooLarge",
    "ResizeMode",
    "ResizeOptions",
    "Size",
    "TruncatedImage",
    "UnsupportedImage",
    "encode_image",
    "parse_size",
    "process_image",
    "thumbnail_image",
]

log = logging.getLogger(__name__)

# The formats process_image opens, each with the Pillow plugin that registers it (the JPEG plugin
# also opens MPO, registered by its own plugin), imported here rather than by Image.init(),
# which imports all ~45 plugins (a tenth of a second per process).
_PLUGIN_OF = {
    "JPEG": ("JpegImagePlugin", "MpoImagePlugin"),
    "PNG": ("PngImagePlugin",),
    "GIF": ("GifImagePlugin",),
    "WEBP": ("WebPImagePlugin",),
    "TIFF": ("TiffImagePlugin",),
    "BMP": ("BmpImagePlugin",),
    "ICO": ("IcoImagePlugin",),
    "PPM": ("PpmImagePlugin",),
    "AVIF": ("AvifImagePlugin",),
    "JPEG2000": ("Jpeg2KImagePlugin",),
}
_WANTED_FORMATS = tuple(_PLUGIN_OF)
for _plugin in (p for plugins in _PLUGIN_OF.values() for p in plugins):
    with contextlib.suppress(ImportError):  # a plugin this Pillow build lacks
        importlib.import_module(f"PIL.{_plugin}")
# HEIC/HEIF: the optional pillow-heif plugin, registered by the first file that may be one
# (stages.heif.register_for). HEIF last: for the generic container brands (mif1, msf1) both it
# and AVIF accept, Pillow's AVIF plugin must be tried first (it declines a HEVC file;
# pillow-heif fails an AV1 one outright)
_WITHOUT_HEIF: tuple[str, ...] = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
ALLOWED_FORMATS: tuple[str, ...] = _WITHOUT_HEIF + ((heif.FORMAT,) if heif.installed() else ())
"""Pillow formats :func:`process_image` will open (those of ``_WANTED_FORMATS`` this Pillow build
supports; ``JPEG`` includes MPO, the multi-picture JPEGs many phones write; ``HEIF`` when the
``heif`` extra is installed: its plugin is imported by the first file that may be HEIF).
Deliberately excludes formats that shell out (EPS -> Ghostscript) and formats without a reliable
magic number (TGA), which would turn random bytes into garbage images instead of a
:class:`DecodeError`. Only the plugins of these formats are imported (``Image.init()`` is never
called): every format passed to ``Image.open`` is registered, so Pillow never falls back to
importing the others."""

AVIF_SPEED = 6
"""libavif's encoder speed (0 slowest .. 10 fastest) for AVIF outputs: Pillow's default. A
512 px photo thumbnail at quality 70 (one thread, ``python -m bench formats``): speed 6 takes
50-80 ms and is ~2.6x smaller than JPEG at the same PSNR; speed 8 takes ~20 ms but loses most of
that gain (~1.6x smaller). People choose AVIF for the bytes, so the bytes win."""

PNG_COMPRESS_LEVEL = 2
"""zlib level for PNG outputs: low for speed (level 2 is ~3x faster than 6 for a few % size)."""

REDUCING_GAP = 2.0
"""Integer box reduction is used while the image stays ≥ this x the target; Lanczos does the rest
(Pillow's ``reducing_gap``: 2.0 is visually identical to a full Lanczos, see the tests' PSNR)."""

LAST_STEP_FILTER_RATIO = 2.0
"""A resample that shrinks by at most this factor (on both axes) uses Pillow's Hamming filter
instead of Lanczos. That is the usual last step after a JPEG ``draft`` (the DCT-domain downscale
leaves 1-2x to go: 4000x3000 → 1000x750 → 512x384), where Lanczos' 3-lobe kernel costs about
twice as much as Hamming's 1-lobe one (12 vs 6 ms here) for no visible gain: against a
full-resolution Lanczos reference the draft + Hamming output scores 52.3 dB PSNR (Lanczos 53.1)
and keeps the reference's Laplacian sharpness (ratio 1.00; Lanczos 1.05, bilinear 0.78) on the
benchmark photos; after the q85 encode both score 40.8 dB. Larger shrinks and enlargements keep
Lanczos (with :data:`REDUCING_GAP`)."""

# --------------------------------------------------------------------------- global-state guards


class _TruncationLock:
    """Reader/writer lock around Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` global.

    Strict decodes are readers (shared); a lenient decode is the writer (exclusive) and is the only
    code that sets the flag, restoring it before releasing. Waiting writers block new readers, so a
    lenient call cannot starve.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def strict(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def lenient(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_TRUNCATION_LOCK = _TruncationLock()


class _PillowWarningFilter:
    """Thread-safe, reference-counted "ignore" filters for Pillow's advisory warnings.

    ``warnings.catch_warnings`` saves and restores the whole process-wide filter list, so two
    threads interleaving enter/exit can leave one thread's temporary filters installed for good.
    Instead, the first concurrent user inserts two precise filters and the last one removes exactly
    those entries, leaving any other filter change alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._entries: list[tuple[object, ...]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                bomb = warnings.filters[0]
                warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
                self._entries = [warnings.filters[0], bomb]
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for entry in self._entries:
                        with contextlib.suppress(ValueError):
                            cast(list[object], warnings.filters).remove(entry)
                    self._entries = []
                    mutated = getattr(warnings, "_filters_mutated", None)
                    if mutated is not None:
                        mutated()


_PILLOW_WARNINGS = _PillowWarningFilter()


class _PillowPixelLimit:
    """``Image.MAX_IMAGE_PIXELS`` raised to the ``max_pixels`` of the calls decoding, and
    restored by the last one (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: collections.Counter[int] = collections.Counter()
        self._saved: int | None = None

    @contextlib.contextmanager
    def at_least(self, pixels: int) -> Iterator[None]:
        with self._lock:
            if not self._active:
                self._saved = Image.MAX_IMAGE_PIXELS
            self._active[pixels] += 1
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._active[pixels] -= 1
                if not self._active[pixels]:
                    del self._active[pixels]
                self._apply()

    def _apply(self) -> None:
        saved = self._saved
        if saved is None or not self._active:
            Image.MAX_IMAGE_PIXELS = saved
        else:
            Image.MAX_IMAGE_PIXELS = max(saved, *self._active)


_PILLOW_LIMIT = _PillowPixelLimit()


@contextlib.contextmanager
def _decode_guard(allow_truncated: bool, max_pixels: int) -> Iterator[None]:
    """Scope Pillow's truncation flag and pixel limit, silence Pillow's advisory warnings (see
    the module docstring)."""
    lock = _TRUNCATION_LOCK.lenient() if allow_truncated else _TRUNCATION_LOCK.strict()
    with lock, _PILLOW_WARNINGS.active(), _PILLOW_LIMIT.at_least(max_pixels):
        yield


def _as_image_error(exc: Exception) -> ImageError:
    """Map an exception raised by Pillow while opening/decoding to our hierarchy."""
    if isinstance(exc, ImageError):
        return exc
    msg = str(exc)
    if isinstance(exc, Image.DecompressionBombError):
        return DecompressionBomb(msg)
    if isinstance(exc, UnidentifiedImageError):
        return DecodeError(
            "cannot identify image data: not an image, or not one of the supported formats "
            f"({', '.join(ALLOWED_FORMATS)})"
        )
    low = msg.lower()
    # "unexpected end of file": libheif's (pillow-heif) word for a HEIC cut short
    if "truncated" in low or "end of file" in low or isinstance(exc, EOFError):
        return TruncatedImage(f"truncated image data: {msg or type(exc).__name__}")
    if "not available" in low or "unsupported" in low or "not supported" in low:
        return UnsupportedImage(f"cannot decode this image: {msg}")
    return DecodeError(f"corrupt image data ({type(exc).__name__}: {msg})")


# Exceptions Pillow's parsers and decoders raise for bad data (fuzzing finds all of these).
_DECODE_EXCEPTIONS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    Image.DecompressionBombError,
)
# (struct.error is a subclass of Exception only; Pillow wraps it in most plugins, and the
# remaining cases are covered by the generic catch in process_image's decode block.)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    """One output, in coordinates of the oriented full-size original."""

    label: str
    box: tuple[float, float, float, float]  # source region to resample
    content: tuple[int, int]  # size of the resampled content
    canvas: tuple[int, int]  # output size (== content unless pad)
    offset: tuple[int, int]  # where content goes on the canvas


def _shrink_box_to_image(bw: int, bh: int, w: int, h: int) -> tuple[int, int]:
    """Scale a box uniformly down until it fits inside wxh (no-upscale for fill/exact)."""
    if bw <= w and bh <= h:
        return bw, bh
    k = min(w / bw, h / bh)
    return max(1, min(w, round(bw * k))), max(1, min(h, round(bh * k)))


def _geometry(w: int, h: int, size: Size, mode: ResizeMode, upscale: bool) -> _Geometry:
    if size.width is None:
        bh = size.height if size.height is not None else h
        bw = max(1, round(w * bh / h))
    else:
        bw = size.width
        bh = size.height if size.height is not None else max(1, round(h * bw / w))
    full = (0.0, 0.0, float(w), float(h))
    if mode in ("fit", "pad"):
        s = min(bw / w, bh / h)
        if not upscale:
            s = min(s, 1.0)
        cw = max(1, min(bw, round(w * s)))
        ch = max(1, min(bh, round(h * s)))
        if mode == "pad":
            return _Geometry(size.label, full, (cw, ch), (bw, bh), ((bw - cw) // 2, (bh - ch) // 2))
        return _Geometry(size.label, full, (cw, ch), (cw, ch), (0, 0))
    tw, th = (bw, bh) if upscale else _shrink_box_to_image(bw, bh, w, h)
    if mode == "exact":
        return _Geometry(size.label, full, (tw, th), (tw, th), (0, 0))
    # fill: the largest centred region of the target's aspect ratio
    if w * th > h * tw:
        crop_w, crop_h = h * tw / th, float(h)
    else:
        crop_w, crop_h = float(w), w * th / tw
    x0, y0 = (w - crop_w) / 2, (h - crop_h) / 2
    return _Geometry(size.label, (x0, y0, x0 + crop_w, y0 + crop_h), (tw, th), (tw, th), (0, 0))


def _needed_resolution(w: int, h: int, geoms: list[_Geometry]) -> tuple[int, int]:
    """Smallest full-image resolution from which every output is a downscale (or 1:1)."""
    need_w = need_h = 1.0
    for g in geoms:
        bx0, by0, bx1, by1 = g.box
        need_w = max(need_w, w * g.content[0] / (bx1 - bx0))
        need_h = max(need_h, h * g.content[1] / (by1 - by0))
    return min(w, math.ceil(need_w - 1e-9)), min(h, math.ceil(need_h - 1e-9))


# --------------------------------------------------------------------------- decoding helpers

_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_JPEG_FORMATS = ("JPEG", "MPO")
_KEEP_FORMAT: dict[str, EncodedFormat] = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "AVIF": "avif",
}  # anything else (HEIF, TIFF, GIF, BMP, ...): png with alpha, jpeg without
_EXT: dict[EncodedFormat, str] = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "avif": ".avif"}
_WHITE = (255, 255, 255)  # what alpha is flattened onto for JPEG


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent, invalid or unreadable)."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    # The design: a corrupt EXIF block (whatever Pillow's EXIF parser raises for it) must never
    # fail the image, whose pixels are fine; it is read as "no orientation"
    except Exception:  # noqa: BLE001
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_SRGB = ImageCms.createProfile("sRGB")
_PROFILE_SPACE = {"RGB": "RGB", "RGBA": "RGB", "L": "GRAY", "CMYK": "CMYK"}


SRGB_TOLERANCE = 1
"""An RGB profile whose conversion to sRGB moves no colour of :func:`_srgb_probe` by more than
this many levels is taken as sRGB and not applied. The sRGB profiles that cameras and editors
embed (HP's "sRGB IEC61966-2.1" with its 1024-entry curves, Argyll's, Little CMS's) round a
level differently here and there, and applying them would change nothing visible. Their names
decide nothing: GIMP's "GIMP built-in Linear sRGB" and Krita's "sRGB-elle-V2-g10" are
linear-light profiles, a "...sRGB..." name may hold other primaries."""


@functools.cache
def _srgb_probe() -> Image.Image:
    """RGB colours that tell a profile from sRGB: a 16-level cube (mixtures, primaries,
    secondaries) and every level of grey, red, green and blue (the curves): 5120 pixels."""
    cube = [
        (r, g, b) for r in range(0, 256, 17) for g in range(0, 256, 17) for b in range(0, 256, 17)
    ]
    ramps = [c for v in range(256) for c in ((v, v, v), (v, 0, 0), (0, v, 0), (0, 0, v))]
    probe = Image.new("RGB", (len(cube) + len(ramps), 1))
    probe.putdata(cube + ramps)
    return probe


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    """Whether an RGB profile's conversion to sRGB leaves every colour of the probe within
    :data:`SRGB_TOLERANCE`: decided by the profile's content (colorants, white point, curves,
    or tables), never by its name. ~3-8 ms, once per profile (see :func:`_icc_transform`)."""
    transform = ImageCms.buildTransform(
        profile, _SRGB, "RGB", "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
    )
    probe = _srgb_probe()
    out = ImageCms.applyTransform(probe, transform)
    assert out is not None
    diff = ImageChops.difference(out, probe).getextrema()
    return all(high <= SRGB_TOLERANCE for _, high in cast("tuple[tuple[int, int], ...]", diff))


@functools.lru_cache(maxsize=32)
def _icc_transform(icc: bytes, in_mode: str) -> ImageCms.ImageCmsTransform | None:
    """Transform from an embedded profile to sRGB (None: no-op, mismatched or unreadable).

    Cached per profile, so the usual case (one camera, many files) parses the profile, and tells
    whether it is sRGB already (:func:`_is_srgb`), once per worker. Built with NOCACHE so a
    transform may be applied from several threads at once. A broken or mismatched profile is
    ignored (the pixels are taken as sRGB), as browsers do.
    """
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        if space != _PROFILE_SPACE.get(in_mode):
            log.debug("ignoring %s ICC profile on a %s image", space, in_mode)
            return None
        if in_mode in ("RGB", "RGBA") and _is_srgb(profile):
            return None  # already sRGB: skip the work
        out_mode = in_mode if in_mode in ("RGB", "RGBA") else "RGB"
        return ImageCms.buildTransform(
            profile,
            _SRGB,
            in_mode,
            out_mode,
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            flags=ImageCms.Flags.NOCACHE,
        )
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError) as exc:
        log.debug("ignoring unusable ICC profile: %s", exc)
        return None


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert an L/LA/RGB/RGBA image from its embedded profile to sRGB."""
    if not icc:
        return img
    alpha: Image.Image | None = None
    base = img
    if img.mode == "LA":
        alpha, base = img.getchannel("A"), img.getchannel("L")
    transform = _icc_transform(icc, base.mode)
    if transform is None:
        return img
    out = ImageCms.applyTransform(base, transform)
    assert out is not None
    if base.mode == "L":
        out = out.convert("L")
        if alpha is not None:
            out.putalpha(alpha)
    return out


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey → 8-bit L, scaled (not clipped).

    In its nominal range, I;16* and I are taken as 0..65535 (what 16-bit PNG/TIFF hold) and
    scaled by 255/65535 with rounding; F as 0..1 when its maximum is ≤ 1, else as 0..255. Values
    outside it (an F elevation map in metres, a -1..1 F, an I of counts over 65535 or negative)
    are stretched from the image's minimum to its maximum: clipped, most of such an image came
    out flat white or black. NaN and ±inf are left out of the range and drawn black; an image of
    one value has no range to stretch and is clipped. A tRNS grey level in 16-bit PNGs becomes
    an alpha channel (LA). numpy, imported here: the only use of it on an image's path, for these
    rare modes (see :mod:`stages.stats`).
    """
    import numpy as np

    arr = np.asarray(im)
    is_float = im.mode == "F"
    finite = np.isfinite(arr) if is_float else None  # (integers are all finite)
    seen = arr if finite is None else arr[finite]
    low, high = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 0.0)
    top = (1.0 if high <= 1.0 else 255.0) if is_float else 65535.0
    if (low < 0.0 or high > top) and high > low:
        levels = (arr.astype(np.float64) - low) * (255.0 / (high - low))
    elif is_float:
        levels = arr.astype(np.float64) * (255.0 / top)
    else:  # exact integers: rounded v * 255 / 65535
        levels = ((np.clip(arr.astype(np.int64), 0, 65535) * 255 + 32767) // 65535).astype(float)
    if finite is not None:
        levels = np.where(finite, levels, 0.0)
    grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    out = Image.fromarray(grey)
    trns = im.info.get("transparency")
    if isinstance(trns, int) and im.mode != "F":
        out.putalpha(Image.fromarray(np.where(arr == trns, 0, 255).astype(np.uint8)))
    return out


def _normalise_mode(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """Any decoded image → L, LA, RGB or RGBA. Returns (image, icc_already_applied)."""
    mode = im.mode
    has_trns = "transparency" in im.info
    if mode in ("L", "RGB"):
        return (im.convert(mode + "A") if has_trns else im), False
    if mode in ("LA", "RGBA"):
        return im, False
    if mode == "1":
        return im.convert("L"), False
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or im.has_transparency_data else "RGB"), False
    if mode in ("La", "RGBa"):
        return im.convert(mode[:-1] + "A"), False
    if mode == "RGBX":
        return im.convert("RGB"), False
    if mode == "I" or mode.startswith("I;16") or mode == "F":
        return _to_8bit_grey(im), False
    if mode == "CMYK":
        cmyk = im
        if im.format in _JPEG_FORMATS and "adobe" not in im.info:
            # Pillow assumes Adobe's inverted CMYK for every JPEG; without an Adobe APP14 marker
            # the values are plain (as browsers and libvips assume), so undo Pillow's inversion.
            cmyk = ImageChops.invert(im)
        transform = _icc_transform(icc, "CMYK") if icc else None
        if transform is not None:
            out = ImageCms.applyTransform(cmyk, transform)
            assert out is not None
            return out, True
        return cmyk.convert("RGB"), True
    try:
        return im.convert("RGBA" if im.has_transparency_data else "RGB"), False
    except ValueError as exc:
        raise UnsupportedImage(f"cannot convert pixel mode {mode!r} to RGB: {exc}") from exc


def _flatten(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Composite LA/RGBA onto an opaque colour (for formats without alpha)."""
    if img.mode == "LA":
        grey = Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))
        bg = Image.new("L", img.size, grey)
        bg.paste(img.getchannel("L"), mask=img.getchannel("A"))
        return bg
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, colour)
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img


def _pad(content: Image.Image, g: _Geometry, colour: tuple[int, int, int]) -> Image.Image:
    if content.size == g.canvas:
        return content
    img = content
    is_grey_colour = colour[0] == colour[1] == colour[2]
    if img.mode in ("L", "LA") and not is_grey_colour:
        img = img.convert("RGBA" if img.mode == "LA" else "RGB")
    fill: int | tuple[int, ...]
    if img.mode == "L":
        fill = colour[0]
    elif img.mode == "LA":
        fill = (colour[0], 0)
    elif img.mode == "RGBA":
        fill = (*colour, 0)
    else:
        fill = colour
    canvas = Image.new(img.mode, g.canvas, fill)
    canvas.paste(img, g.offset)
    return canvas


def _encode(img: Image.Image, fmt: EncodedFormat, quality: int) -> bytes:
    img.info = {}  # never carry source metadata (ICC, EXIF, transparency keys) into outputs
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "avif":
        # one encoder thread: the process workers already use every core (as decode_threads=1
        # for HEIF, stages.heif); alpha is kept, L is written as 4:0:0 grey
        img.save(buf, "AVIF", quality=quality, speed=AVIF_SPEED, max_threads=1)
    else:
        img.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


# --------------------------------------------------------------------------- the hot path


def process_image(data: bytes, options: ResizeOptions) -> ImageResult:
    """Decode ``data`` once and render every size in ``options``; see the module docstring.

    Raises :class:`ImageError` subclasses for bad inputs: :class:`DecodeError` (empty, not an
    image, corrupt), :class:`TruncatedImage`, :class:`DecompressionBomb` (checked from the header,
    before decoding) and :class:`UnsupportedImage`.
    """
    with _decoded(data, options) as decoded:
        return _render(decoded, options)


def thumbnail_image(data: bytes, options: ResizeOptions) -> Image.Image:
    """The first size of ``options`` as an image: :func:`process_image`'s decode and resize, not
    encoded (``format`` and ``quality`` are not used).

    The image is L, LA, RGB or RGBA, in sRGB, upright, without metadata (``info`` is empty: the
    embedded profile and the EXIF orientation are applied already); alpha is kept, and ``pad``
    pads it with transparency. :func:`encode_image` makes of it what :func:`process_image` writes
    (the same bytes, except that ``pad`` on an image with alpha pads with white, not
    ``pad_color``, once flattened for JPEG). Raises what :func:`process_image` raises.
    """
    with _decoded(data, options) as decoded:
        work, scale = _prepare(decoded)
        g = decoded.geoms[0]
        content = _resample(work, scale, g)
        if options.mode == "pad":
            content = _pad(content, g, options.pad_color)
        if isinstance(content, ImageFile.ImageFile):
            # still the decoded file itself (nothing to convert or resize): closing the file
            # would take its pixels with it
            content = content.copy()
    content.info = {}
    return content


def encode_image(img: Image.Image, fmt: EncodedFormat, quality: int) -> bytes:
    """Encode ``img`` as :func:`process_image` encodes its outputs: any mode normalised (as when
    decoding) and an embedded ICC profile converted to sRGB, alpha flattened onto white for JPEG,
    no metadata. ``img`` itself is left unchanged."""
    icc = img.info.get("icc_profile") or None
    work, icc_done = _normalise_mode(img, icc)
    if not icc_done:
        work = _to_srgb(work, icc)
    if work is img and img.info:
        work = img.copy()  # _encode drops the metadata of what it encodes, never the caller's
    return _encode(_flatten(work, _WHITE) if fmt == "jpeg" else work, fmt, quality)


@contextlib.contextmanager
def _decoded(data: bytes, options: ResizeOptions) -> Iterator[_Decoded]:
    """Open and decode ``data`` (header checks, draft, mode normalisation) and keep the file
    image open while the caller renders from it, so the decoded pixels are never copied."""
    if not data:
        raise DecodeError("empty input (0 bytes)")
    heif_missing = heif.register_for(data[:12])
    if heif_missing and image_format(data[:HEAD_BYTES]) == heif.FORMAT:
        raise UnsupportedImage(heif_missing)
    # only registered formats: one that is not would make Pillow import all its plugins
    formats = ALLOWED_FORMATS if heif.FORMAT in Image.OPEN else _WITHOUT_HEIF
    with contextlib.ExitStack() as stack:
        # The guard covers only open + decode; the file image stays open (ExitStack) until the
        # outputs are rendered.
        with _decode_guard(options.allow_truncated, options.max_pixels):
            try:
                im = stack.enter_context(Image.open(io.BytesIO(data), formats=formats))
                decoded = _decode(im, options)
            except ImageError:
                raise
            except Image.DecompressionBombError as exc:
                raise _pillow_bomb(exc, options.max_pixels) from exc
            except _DECODE_EXCEPTIONS as exc:
                raise _as_image_error(exc) from exc
            except Exception as exc:  # e.g. struct.error from a fuzzed header: still the input's
                raise DecodeError(f"corrupt image data ({type(exc).__name__}: {exc})") from exc
        yield decoded


def _pillow_bomb(exc: Image.DecompressionBombError, max_pixels: int) -> DecompressionBomb:
    """Pillow refused the image when it opened it (over twice its limit, which we raised to
    ``max_pixels``): say so with our limit, as our own check does, not Pillow's internal one."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found is None:  # a frame Pillow checks on its own, or a message we do not know
        return DecompressionBomb(f"{exc} (max_pixels={max_pixels})")
    return DecompressionBomb(
        f"image declares {found.group(1)} pixels, more than max_pixels={max_pixels}; not decoded"
    )


@dataclass
class _Decoded:
    work: Image.Image  # L/LA/RGB/RGBA, stored orientation, `scale` times smaller than original
    scale: int
    orientation: int
    icc: bytes | None  # profile still to apply (None: none, or already applied)
    geoms: list[_Geometry]
    need: tuple[int, int]  # resolution needed, oriented coordinates
    original_size: tuple[int, int]  # oriented
    original_mode: str
    original_format: str


def _decode(im: ImageFile.ImageFile, options: ResizeOptions) -> _Decoded:
    """Header checks, draft and decode, mode normalisation. Runs under the decode guard."""
    w, h = im.size
    original_mode = im.mode
    if w < 1 or h < 1:
        raise DecodeError(f"image header declares an empty size {w}x{h}")
    if w * h > options.max_pixels:
        raise DecompressionBomb(
            f"image declares {w}x{h} = {w * h} pixels, "
            f"more than max_pixels={options.max_pixels}; not decoded"
        )
    is_jpeg = im.format in _JPEG_FORMATS
    if is_jpeg:
        orientation = _orientation(im)  # JPEG EXIF is in the header: read it before decoding
    else:
        im.load()  # other formats may store EXIF after the pixels
        orientation = _orientation(im)
    swapped = orientation >= 5
    ow, oh = (h, w) if swapped else (w, h)
    geoms = [_geometry(ow, oh, s, options.mode, options.upscale) for s in options.sizes]
    _check_output_pixels(geoms, options.max_output_pixels)
    need_w, need_h = _needed_resolution(ow, oh, geoms)
    scale = 1
    if is_jpeg:
        draft_size = (need_h, need_w) if swapped else (need_w, need_h)
        if draft_size != (w, h):
            # Smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= draft_size.
            drafted = im.draft(im.mode if im.mode in ("RGB", "L") else None, draft_size)
            if drafted is not None:
                scale = round(w / drafted[1][2])
        im.load()
    icc = im.info.get("icc_profile") or None
    work, icc_done = _normalise_mode(im, icc)
    return _Decoded(
        work=work,
        scale=scale,
        orientation=orientation,
        icc=None if icc_done else icc,
        geoms=geoms,
        need=(need_w, need_h),
        original_size=(ow, oh),
        original_mode=original_mode,
        original_format=(im.format or "unknown").lower(),
    )


def _check_output_pixels(geoms: list[_Geometry], limit: int) -> None:
    for g in geoms:
        w, h = g.canvas
        if w * h > limit:
            raise OutputTooLarge(
                f"size {g.label} would make a {w}x{h} output = {w * h} pixels, more than "
                f"max_output_pixels={limit}; not decoded"
            )


def _resample_filter(box_w: float, box_h: float, size: tuple[int, int]) -> Image.Resampling:
    """Hamming for a shrink of at most LAST_STEP_FILTER_RATIO on both axes, else Lanczos."""
    rx, ry = box_w / size[0], box_h / size[1]
    if min(rx, ry) >= 1.0 and max(rx, ry) <= LAST_STEP_FILTER_RATIO:
        return Image.Resampling.HAMMING
    return Image.Resampling.LANCZOS


def _prepare(d: _Decoded) -> tuple[Image.Image, int]:
    """Reduce, colour-manage and orient the decoded image: (image, its scale to the original)."""
    work, scale = d.work, d.scale
    # integer box reduction while >= REDUCING_GAP x what is needed (stored orientation)
    need_w, need_h = (d.need[1], d.need[0]) if d.orientation >= 5 else d.need
    factor = int(min(work.width / (REDUCING_GAP * need_w), work.height / (REDUCING_GAP * need_h)))
    if factor >= 2:
        work = work.reduce(factor)
        scale *= factor
    work = _to_srgb(work, d.icc)
    if d.orientation in _ORIENTATION_TRANSPOSE:
        work = work.transpose(_ORIENTATION_TRANSPOSE[d.orientation])
    return work, scale


def _resample(work: Image.Image, scale: int, g: _Geometry) -> Image.Image:
    """One output's content: its source box of ``work`` resampled to its size."""
    x0, y0 = g.box[0] / scale, g.box[1] / scale
    x1, y1 = min(g.box[2] / scale, work.width), min(g.box[3] / scale, work.height)
    whole = x0 == 0 and y0 == 0 and x1 == work.width and y1 == work.height
    if whole and g.content == work.size:
        return _clear_invisible(work)
    return work.resize(
        g.content,
        _resample_filter(x1 - x0, y1 - y0, g.content),
        box=(x0, y0, x1, y1),
        reducing_gap=REDUCING_GAP,
    )


_INVISIBLE = [255] + [0] * 255  # a point() table: 255 where alpha is 0


def _clear_invisible(img: Image.Image) -> Image.Image:
    """``img`` with the colour of its fully transparent pixels black (transparent black), as
    Pillow's resampling leaves them (it premultiplies by alpha).

    For an image that is not resampled (it fits the size already): its invisible pixels keep
    whatever colour the file holds, which the statistics (alpha left out) and the difference
    hash count, so the same picture gave other figures, and another near-duplicate group, at
    another size. Visible pixels are left as they are; ``img`` itself is not changed.
    """
    if img.mode not in ("LA", "RGBA"):
        return img
    alpha = img.getchannel("A")
    if cast("tuple[int, int]", alpha.getextrema())[0] > 0:
        return img
    out = img.copy()
    out.paste((0, 0) if img.mode == "LA" else (0, 0, 0, 0), mask=alpha.point(_INVISIBLE))
    return out


def _render(d: _Decoded, options: ResizeOptions) -> ImageResult:
    """Reduce, colour-manage, orient, then resize/crop/pad/encode every output."""
    work, scale = _prepare(d)
    has_alpha = work.mode in ("LA", "RGBA")

    fmt: EncodedFormat
    if options.format == "keep":
        fmt = _KEEP_FORMAT.get(d.original_format.upper(), "png" if has_alpha else "jpeg")
    else:
        fmt = options.format

    outputs: list[EncodedImage] = []
    stats_source = work
    stats_of: tuple[int, str] = (-1, "")
    for g in d.geoms:
        content = _resample(work, scale, g)
        # the largest output's statistics, whatever the order of the sizes (a tie: by label)
        if (of := (g.content[0] * g.content[1], g.label)) > stats_of:
            stats_source, stats_of = content, of
        out = _flatten(content, _WHITE) if fmt == "jpeg" else content
        if options.mode == "pad":
            out = _pad(out, g, options.pad_color)
        outputs.append(
            EncodedImage(
                width=out.width,
                height=out.height,
                format=fmt,
                ext=_EXT[fmt],
                data=_encode(out, fmt, options.quality),
                label=g.label,
            )
        )
    return ImageResult(
        original_size=d.original_size,
        original_mode=d.original_mode,
        original_format=d.original_format,
        outputs=tuple(outputs),
        stats=image_stats(stats_source),
    )
