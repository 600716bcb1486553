"""The image stages' light half: options, results and errors, without numpy or Pillow.

:mod:`stages.imaging` does the work in the process workers and re-exports all of these. They
live here so that the process that builds a run (parses sizes, validates options) and receives
its results (:class:`ImageResult`) and failures (:class:`ImageError`) never imports the imaging
libraries: only the workers do. Every class here pickles by reference to this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from .stats import ImageStats

__all__ = [
    "RENDER_VERSION",
    "DecodeError",
    "DecompressionBomb",
    "EncodedFormat",
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
    "as_size",
    "as_sizes",
    "parse_size",
]

ResizeMode: TypeAlias = Literal["fit", "fill", "pad", "exact"]
OutputFormat: TypeAlias = Literal["keep", "jpeg", "png", "webp", "avif"]
EncodedFormat: TypeAlias = Literal["jpeg", "png", "webp", "avif"]

_MAX_SIDE = 65_535


# --------------------------------------------------------------------------- exceptions


class ImageError(Exception):
    """Base class of errors for one bad input image (the item fails, the run goes on)."""


class DecodeError(ImageError):
    """Empty input, bytes that are not an image of a supported format, or corrupt image data."""


class TruncatedImage(ImageError):
    """The image data ends early; raised instead of returning a partly grey image."""


class DecompressionBomb(ImageError):
    """The header declares more pixels than allowed; refused before decoding."""


class OutputTooLarge(ImageError):
    """An output would have more pixels than allowed (``max_output_pixels``); refused before
    decoding."""


class UnsupportedImage(ImageError):
    """A recognised image whose codec or pixel mode cannot be rendered to RGB/grey."""


# --------------------------------------------------------------------------- options


_SIZE_RE = re.compile(r"^\s*(?:(\d+)|(\d*)\s*[xX]\s*(\d*))\s*$")


@dataclass(frozen=True, kw_only=True)
class Size:
    """A target box. ``None`` for one side leaves it free (derived from the aspect ratio)."""

    width: int | None
    height: int | None

    def __post_init__(self) -> None:
        if self.width is None and self.height is None:
            raise ValueError("Size needs a width, a height, or both")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"Size.{name} must be an int or None, got {v!r}")
            if not 1 <= v <= _MAX_SIDE:
                raise ValueError(f"Size.{name} must be between 1 and {_MAX_SIDE}, got {v}")

    @property
    def label(self) -> str:
        """``"512"`` for a square box, else ``"640x480"`` (``"640x"`` / ``"x480"`` if free)."""
        if self.width == self.height:
            return str(self.width)
        w = "" if self.width is None else str(self.width)
        h = "" if self.height is None else str(self.height)
        return f"{w}x{h}"


def parse_size(text: str) -> Size:
    """Parse ``"512"`` (max side: a 512x512 box), ``"640x480"``, ``"640x"`` or ``"x480"``."""
    m = _SIZE_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"invalid size {text!r}: expected e.g. '512', '640x480', '640x' or 'x480'")
    side, w, h = m.groups()
    if side is not None:
        w = h = side
    elif not w and not h:
        raise ValueError(f"invalid size {text!r}: give a width, a height or both")
    width, height = (int(v) if v else None for v in (w, h))
    if any(v is not None and not 1 <= v <= _MAX_SIDE for v in (width, height)):
        raise ValueError(f"invalid size {text!r}: each side from 1 to {_MAX_SIDE} pixels")
    return Size(width=width, height=height)


SizeLike: TypeAlias = "int | str | tuple[int | None, int | None] | Size"
"""What the public API takes for a size: ``512`` or ``"512"`` (a 512x512 box), ``"640x480"``,
``"640x"``, ``(640, 480)``, ``(640, None)`` or a :class:`Size`."""


def as_size(value: SizeLike) -> Size:
    """The :class:`Size` of any :data:`SizeLike` value; ``ValueError`` for anything else."""
    if isinstance(value, Size):
        return value
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Size(width=value, height=value)
    if isinstance(value, tuple) and len(value) == 2:
        return Size(width=value[0], height=value[1])
    raise ValueError(f"invalid size {value!r}: expected e.g. 512, '640x480' or (640, 480)")


def _is_box(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value)
    )


def as_sizes(value: SizeLike | Sequence[SizeLike]) -> tuple[Size, ...]:
    """One size or several: a list (or a tuple that is not one ``(width, height)`` box) holds
    several, anything else is one (``(256, 512)`` is one 256x512 box; ``[256, 512]`` two)."""
    if isinstance(value, list) or (isinstance(value, tuple) and not _is_box(value)):
        sizes = tuple(as_size(v) for v in value)
        if not sizes:
            raise ValueError("give at least one size")
        return sizes
    return (as_size(value),)  # type: ignore[arg-type]


_MODES = ("fit", "fill", "pad", "exact")
_FORMATS = ("keep", "jpeg", "png", "webp", "avif")

#: How images are made from the same input and options, as a number: raise it with a change
#: that makes other outputs (a fix to a colour conversion, a new resampling), so that the
#: outputs an older version made are redone on resume (``options changed``) rather than reused
#: as done. Not for a change that leaves every output as it was (speed, memory, messages).
#: 2: profiles judged sRGB by their content, not their name (a linear "…sRGB…" profile was not
#: applied); 32-bit and float grey outside its range stretched, not clipped; the invisible
#: pixels of an image not resized made transparent black (its statistics and hash).
RENDER_VERSION = 2


_DEFAULT_PAD = (255, 255, 255)
_DEFAULT_QUALITY = 85


@dataclass(frozen=True, kw_only=True)
class ResizeOptions:
    """How :func:`~stages.imaging.process_image` renders its outputs. Validated on creation
    (``ValueError``).

    * ``sizes`` — one output per size, from a single decode; labels must be distinct.
    * ``mode`` — ``fit`` inside the box keeping the aspect ratio; ``fill`` covers the box and
      centre-crops to it; ``pad`` fits, then pads to the exact box with ``pad_color`` (transparent
      when the output keeps alpha); ``exact`` stretches to the box.
    * ``upscale`` — when False (default) no output is enlarged: ``fit`` keeps a small image at its
      size; ``pad`` keeps it at its size and still pads to the full box; ``fill`` and ``exact``
      shrink the *box* uniformly until it fits inside the image, so the output keeps the box's
      aspect ratio and no axis is enlarged.
    * ``format`` — ``keep``: JPEG → jpeg, PNG → png, WebP → webp, AVIF → avif, anything else
      (HEIC/HEIF, TIFF, GIF, BMP…) → png when it has alpha, jpeg otherwise. Every output is
      written alike: pixels in sRGB, no metadata (no EXIF, no ICC profile); alpha kept except in
      JPEG (flattened onto white).
    * ``quality`` — 1..100, for JPEG, WebP and AVIF (AVIF's scale is its own: about 70 matches
      JPEG 85's fidelity in a third of the bytes, see ``python -m bench formats``).
    * ``allow_truncated`` — decode truncated files (the missing part comes out grey) instead of
      raising :class:`TruncatedImage`.
    * ``max_pixels`` — refuse images whose header declares more pixels (:class:`DecompressionBomb`).
    * ``max_output_pixels`` — refuse an image one of whose outputs would have more pixels
      (:class:`OutputTooLarge`, from the header, before decoding): a guard against a large box
      with ``upscale`` (or ``pad``) writing huge files. The default, 8192 x 8192 (67 MP), lets
      every photo of today's cameras (61 MP at most below ``max_pixels``) through at full size
      and refuses ``upscale`` to a 10000 box (100 MP). Not part of the fingerprint: it shapes
      no output (a refused image is ``failed``, and failures are redone).
    * ``pad_color`` — RGB padding colour for ``pad`` (also used for grey images; a non-grey colour
      makes a grey image's padded output RGB).
    """

    sizes: tuple[Size, ...] = (Size(width=512, height=512),)
    mode: ResizeMode = "fit"
    upscale: bool = False
    format: OutputFormat = "keep"
    quality: int = _DEFAULT_QUALITY
    allow_truncated: bool = False
    max_pixels: int = 100_000_000
    max_output_pixels: int = 8192 * 8192
    pad_color: tuple[int, int, int] = _DEFAULT_PAD

    def __post_init__(self) -> None:
        if not isinstance(self.sizes, tuple) or not self.sizes:
            raise ValueError(f"sizes must be a non-empty tuple of Size, got {self.sizes!r}")
        for s in self.sizes:
            if not isinstance(s, Size):
                raise ValueError(f"sizes must contain Size objects (see parse_size), got {s!r}")
        labels = [s.label for s in self.sizes]
        if len(set(labels)) != len(labels):
            raise ValueError(f"sizes must be distinct, got {labels}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.format not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {self.format!r}")
        for name in ("upscale", "allow_truncated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        q = self.quality
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
            raise ValueError(f"quality must be an int between 1 and 100, got {q!r}")
        for name in ("max_pixels", "max_output_pixels"):
            mp = getattr(self, name)
            if isinstance(mp, bool) or not isinstance(mp, int) or mp < 1:
                raise ValueError(f"{name} must be a positive int, got {mp!r}")
        self._check_boxes()
        pc = self.pad_color
        if (
            not isinstance(pc, tuple)
            or len(pc) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in pc)
        ):
            raise ValueError(f"pad_color must be a tuple of three ints 0..255, got {pc!r}")

    def _check_boxes(self) -> None:
        """A box whose outputs exceed ``max_output_pixels`` whatever the image: refused here,
        before any work (``upscale`` enlarges to the box, ``pad`` always fills it). Other
        outputs are checked per image (:class:`OutputTooLarge`)."""
        if not (self.upscale or self.mode == "pad"):
            return
        for s in self.sizes:
            if s.width is None or s.height is None:
                continue  # one side free: the image's aspect ratio decides
            if s.width * s.height > self.max_output_pixels:
                why = "upscale" if self.upscale else "mode pad"
                raise ValueError(
                    f"size {s.label} with {why} makes outputs of up to {s.width}x{s.height} = "
                    f"{s.width * s.height} pixels, more than max_output_pixels="
                    f"{self.max_output_pixels}: choose a smaller size or raise max_output_pixels"
                )

    def fingerprint(self) -> str:
        """A short hash of these options, and of :data:`RENDER_VERSION`: outputs made with other
        options, or by a version of the code that made them otherwise, are not done."""
        fields = asdict(self)
        del fields["max_output_pixels"]  # a guard: it shapes no output (see the class)
        # options that shape no output here count as their defaults: the same outputs, the
        # same hash (a pad colour without mode pad, a quality for PNG)
        if self.mode != "pad":
            fields["pad_color"] = _DEFAULT_PAD
        if self.format == "png":
            fields["quality"] = _DEFAULT_QUALITY
        # each size's output is made alone (from one decode): their order shapes none of them
        fields["sizes"] = sorted(fields["sizes"], key=lambda s: json.dumps(s, sort_keys=True))
        if RENDER_VERSION > 1:  # (version 1 is left out: the hashes made before it stay)
            fields["render_version"] = RENDER_VERSION
        doc = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(doc.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class EncodedImage:
    """One encoded output. ``label`` is the size label (``"512"``, ``"640x480"``)."""

    width: int
    height: int
    format: EncodedFormat
    ext: str
    data: bytes = field(repr=False)
    label: str


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    """What :func:`~stages.imaging.process_image` returns: small and picklable.

    ``original_size`` is the displayed size (after EXIF orientation) of the full image;
    ``original_mode`` is Pillow's mode of the file (e.g. ``"CMYK"``, ``"P"``, ``"I;16"``);
    ``original_format`` is Pillow's format name, lower-cased (``"jpeg"``, ``"mpo"``, ``"png"``…).
    ``stats`` comes from :func:`stages.stats.image_stats` on the largest output (by area), after
    resize/crop and before padding or alpha flattening.
    """

    original_size: tuple[int, int]
    original_mode: str
    original_format: str
    outputs: tuple[EncodedImage, ...]
    stats: ImageStats = field(hash=False)
