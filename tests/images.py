"""Helpers shared by test_imaging.py and test_stats.py: sample paths, generators, pixel checks."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from sample_data.make_samples import photo

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"
EDGE = SAMPLES / "edge"
IMAGES = SAMPLES / "images"


def edge(name: str) -> bytes:
    return (EDGE / name).read_bytes()


def photo_like(width: int, height: int, *, seed: int = 0, grain: float = 3.0) -> Image.Image:
    """Photo-like RGB test image (the generator behind the committed samples)."""
    return photo(width, height, seed=seed, grain=grain)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """Fully decoded copy of an encoded image (file closed)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


def fmt_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return str(im.format)


def pixels(im: Image.Image) -> npt.NDArray[np.float64]:
    return np.asarray(im, dtype=np.float64)


def region_mean(im: Image.Image, box: tuple[float, float, float, float]) -> npt.NDArray[np.float64]:
    """Mean colour of a box given as fractions (x0, y0, x1, y1) of the image size."""
    w, h = im.size
    x0, y0, x1, y1 = (round(f * s) for f, s in zip(box, (w, h, w, h), strict=True))
    arr = pixels(im)[y0:y1, x0:x1]
    return np.asarray(arr.reshape(-1, arr.shape[2]).mean(axis=0) if arr.ndim == 3 else arr.mean())


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    assert a.mode == b.mode
    mse = float(np.mean((pixels(a) - pixels(b)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data (header-check tests)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# Adobe RGB (1998) -> sRGB, computed independently of LittleCMS (published matrices).
_ADOBE_TO_XYZ = np.array(
    [
        [0.5767309, 0.1855540, 0.1881852],
        [0.2973769, 0.6273491, 0.0752741],
        [0.0270343, 0.0706872, 0.9911085],
    ]
)
_XYZ_TO_SRGB = np.array(
    [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
)


def adobe_rgb_to_srgb(rgb: tuple[int, int, int]) -> npt.NDArray[np.float64]:
    linear = (np.asarray(rgb, dtype=np.float64) / 255.0) ** (563 / 256)
    s = np.clip(_XYZ_TO_SRGB @ (_ADOBE_TO_XYZ @ linear), 0.0, 1.0)
    encoded = np.where(s <= 0.0031308, 12.92 * s, 1.055 * s ** (1 / 2.4) - 0.055)
    return np.asarray(encoded * 255.0)


def cmyk_to_rgb(c: int, m: int, y: int, k: int) -> npt.NDArray[np.float64]:
    """Uncalibrated CMYK -> RGB (what Pillow and browsers do without a CMYK profile)."""
    return np.array([(255 - v) * (255 - k) / 255.0 for v in (c, m, y)])
