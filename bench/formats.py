"""What the image formats cost: encoding a 512 px thumbnail, decoding a photo to one.

* **encode**: a 512x384 thumbnail of a photo-like image (:mod:`bench.photos`) encoded by the
  pipeline's own encoder (:func:`stages.imaging.encode_image`, one thread, as in a process
  worker) as JPEG, WebP and AVIF at a few qualities, plus AVIF at a faster encoder speed than the
  one the pipeline uses (:data:`stages.imaging.AVIF_SPEED`): time per image (median), bytes,
  PSNR against the thumbnail itself, and the time as a multiple of JPEG's.
* **per image**: one 2 MP photo-like image (1732x1155) stored as JPEG, HEIC and AVIF (quality
  90), turned into one 512 px output by :func:`stages.imaging.process_image` (decode, resize,
  statistics, encode): what each output format, then each input format, costs a worker per
  image. JPEG inputs are decoded at a reduced DCT scale; HEIC and AVIF always at full size
  (HEIC on one thread, ``stages.heif``; AVIF with Pillow's default of one decoder thread per
  core). The HEIC row needs the ``heif`` extra.

It prints a table and asserts nothing (the machine is shared: figures vary from run to run).
"""

from __future__ import annotations

import functools
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from bench import photos
from stages import heif
from stages.imaging import AVIF_SPEED, ResizeOptions, encode_image, process_image
from stages.options import EncodedFormat, parse_size

THUMB = (512, 384)
PHOTO = (1732, 1155)
X = "\N{MULTIPLICATION SIGN}"

# (label, format, quality, AVIF speed or None for the pipeline's)
ENCODINGS: list[tuple[str, EncodedFormat, int, int | None]] = [
    ("JPEG q85", "jpeg", 85, None),
    ("WebP q85", "webp", 85, None),
    ("AVIF q85", "avif", 85, None),
    ("AVIF q70", "avif", 70, None),
    ("AVIF q50", "avif", 50, None),
    ("AVIF q70, speed 8", "avif", 70, 8),
]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: plugin import, codec set-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _psnr(data: bytes, ref: Image.Image) -> float:
    with Image.open(io.BytesIO(data)) as im:
        got = np.asarray(im.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((got - np.asarray(ref, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _encode_avif_at(img: Image.Image, quality: int, speed: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "AVIF", quality=quality, speed=speed, max_threads=1)
    return buf.getvalue()


def encode_table(repeats: int) -> list[str]:
    big = Image.fromarray(photos.photo_array(2000, 1500, seed=7))
    thumb = big.resize(THUMB, Image.Resampling.LANCZOS)
    rows = []
    for label, fmt, quality, speed in ENCODINGS:

        def run(
            fmt: EncodedFormat = fmt, quality: int = quality, speed: int | None = speed
        ) -> bytes:
            if speed is None:
                return encode_image(thumb, fmt, quality)
            return _encode_avif_at(thumb, quality, speed)

        ms = _median_ms(run, repeats)
        data = run()
        rows.append((label, ms, len(data), _psnr(data, thumb)))
    jpeg_ms, jpeg_bytes = rows[0][1], rows[0][2]
    lines = [
        f"Encode a {THUMB[0]}x{THUMB[1]} thumbnail (one thread; AVIF speed {AVIF_SPEED} unless "
        f"said; median of {repeats}):",
        "",
        f"| output | ms | {X} JPEG time | bytes | {X} JPEG bytes | PSNR dB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, ms, size, psnr in rows:
        lines.append(
            f"| {label} | {ms:.1f} | {ms / jpeg_ms:.0f}{X} | {size:,} | "
            f"{size / jpeg_bytes:.2f}{X} | {psnr:.1f} |"
        )
    return [*lines, ""]


def _inputs() -> dict[str, bytes | None]:
    photo = Image.fromarray(photos.photo_array(*PHOTO, seed=8))
    out: dict[str, bytes | None] = {}
    for label, fmt in (("JPEG", "JPEG"), ("HEIC", "HEIF"), ("AVIF", "AVIF")):
        if fmt == "HEIF" and heif.register() is not None:
            out[label] = None  # the heif extra is not installed
            continue
        buf = io.BytesIO()
        photo.save(buf, fmt, quality=90)
        out[label] = buf.getvalue()
    return out


# (input, output) pairs of the per-image table: the cost of an output format, then of an input one
PAIRS: list[tuple[str, EncodedFormat]] = [
    ("JPEG", "jpeg"),
    ("JPEG", "webp"),
    ("JPEG", "avif"),
    ("HEIC", "jpeg"),
    ("AVIF", "jpeg"),
]


def image_table(repeats: int) -> list[str]:
    lines = [
        f"One {PHOTO[0]}x{PHOTO[1]} photo (q90) into one 512 px output with statistics "
        f"(process_image, q85, one call as in a worker; median of {repeats}):",
        "",
        f"| input | output | ms per image | {X} JPEG → JPEG |",
        "|---|---|---:|---:|",
    ]
    inputs = _inputs()
    base = None
    for label, fmt in PAIRS:
        data = inputs[label]
        if data is None:
            lines.append(f"| {label} | {fmt} | not installed: pip install 'pixpipe[heif]' | |")
            continue
        options = ResizeOptions(sizes=(parse_size("512"),), format=fmt)
        ms = _median_ms(functools.partial(process_image, data, options), repeats)
        base = base or ms
        lines.append(f"| {label} | {fmt} | {ms:.1f} | {ms / base:.1f}{X} |")
    return [*lines, ""]


def main(*, quick: bool = False) -> str:
    repeats = 3 if quick else 9
    lines = ["## Formats: what JPEG, WebP, AVIF and HEIC cost", ""]
    lines += encode_table(repeats)
    lines += image_table(repeats)
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(main(quick="--quick" in sys.argv[1:]))
