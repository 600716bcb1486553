"""Regenerate the committed sample inputs: ``python sample_data/make_samples.py``.

Deterministic (fixed seeds, no clock, no network): running it twice with the same Pillow/numpy
builds writes the same files. ``images/`` holds clean photo-like inputs for ``make process``;
``edge/`` holds the awkward cases the tests check pixel by pixel (EXIF orientation, CMYK, ICC,
16-bit, palette transparency, animation, truncation, bombs, ...). ``README.md`` next to this script
lists every file and what it should become.
"""

from __future__ import annotations

import argparse
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageOps

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- pixel generators


def photo_like(width: int, height: int, *, seed: int, grain: float = 3.0) -> npt.NDArray[np.uint8]:
    """An RGB uint8 array that compresses like a photo: smooth structure, gradients, grain."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (max(2, height // 90), max(2, width // 90), 3), dtype=np.uint8)
    smooth = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    base = np.asarray(smooth, dtype=np.float32) * 0.7
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    base += 60.0 * yy + 40.0 * xx * np.array([1.0, 0.5, -0.5], dtype=np.float32)
    if grain:
        base += rng.normal(0.0, grain, (height, width, 1)).astype(np.float32)
    return np.asarray(np.clip(base, 0, 255), dtype=np.uint8)


def photo(width: int, height: int, *, seed: int, grain: float = 3.0) -> Image.Image:
    return Image.fromarray(photo_like(width, height, seed=seed, grain=grain))


# --------------------------------------------------------------------------- binary helpers


def _s15f16(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


# Adobe RGB (1998): linear RGB -> XYZ under D65 (the published matrix), and gamma 563/256.
ADOBE_RGB_TO_XYZ_D65 = np.array(
    [
        [0.5767309, 0.1855540, 0.1881852],
        [0.2973769, 0.6273491, 0.0752741],
        [0.0270343, 0.0706872, 0.9911085],
    ]
)
ADOBE_GAMMA = 563 / 256
_D65 = np.array([0.95047, 1.0, 1.08883])
_D50 = np.array([0.96422, 1.0, 0.82521])
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def adobe_rgb_icc() -> bytes:
    """A minimal ICC v2 display profile equivalent to Adobe RGB (1998), built by hand.

    Matrix/TRC profile: colorants adapted to the D50 PCS with Bradford, one gamma curve per
    channel. Pillow cannot create such a profile and none ships with it, so it is written here.
    """
    src, dst = _BRADFORD @ _D65, _BRADFORD @ _D50
    colorants = np.linalg.inv(_BRADFORD) @ np.diag(dst / src) @ _BRADFORD @ ADOBE_RGB_TO_XYZ_D65

    def xyz(v: npt.NDArray[np.float64]) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(_s15f16(float(c)) for c in v)

    def curve(gamma: float) -> bytes:
        return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)

    def desc(text: str) -> bytes:
        ascii_ = text.encode("ascii") + b"\0"
        return (
            b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)
        )

    tags = [
        (b"desc", desc("Adobe RGB (1998) compatible (pixpipe sample)")),
        (b"cprt", b"text" + bytes(4) + b"Public domain\0"),
        (b"wtpt", xyz(_D50)),
        (b"rXYZ", xyz(colorants[:, 0])),
        (b"gXYZ", xyz(colorants[:, 1])),
        (b"bXYZ", xyz(colorants[:, 2])),
        (b"rTRC", curve(ADOBE_GAMMA)),
        (b"gTRC", curve(ADOBE_GAMMA)),
        (b"bTRC", curve(ADOBE_GAMMA)),
    ]
    data_start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        body += bytes(-(data_start + len(body)) % 4)
        table += sig + struct.pack(">II", data_start + len(body), len(data))
        body += data
    total = data_start + len(body)
    header = (
        struct.pack(">I", total)
        + b"none"
        + struct.pack(">I", 0x02100000)
        + b"mntr"
        + b"RGB "
        + b"XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8 + 4)
        + b"".join(_s15f16(float(c)) for c in _D50)
        + bytes(4 + 16 + 28)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def strip_adobe_marker(jpeg: bytes) -> bytes:
    """Remove the APP14 "Adobe" segment from a JPEG (segments before the scan only)."""
    assert jpeg[:2] == b"\xff\xd8"
    out, i = [jpeg[:2]], 2
    while i < len(jpeg):
        marker = jpeg[i : i + 2]
        if marker == b"\xff\xda":  # start of scan: the rest is entropy-coded data
            out.append(jpeg[i:])
            break
        (length,) = struct.unpack(">H", jpeg[i + 2 : i + 4])
        segment = jpeg[i : i + 2 + length]
        if not (marker == b"\xff\xee" and segment[4:9] == b"Adobe"):
            out.append(segment)
        i += 2 + length
    return b"".join(out)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(side: int = 30_000) -> bytes:
    """A real, complete 1-bit PNG of side x side black pixels: ~100 KB on disk, 900 MP declared."""
    row = bytes(1 + (side + 7) // 8)  # filter byte 0 + packed zero bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 1000) for _ in range(side // 1000)]
    parts.append(comp.compress(row * (side % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bytes(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


# --------------------------------------------------------------------------- orientation

# transpose that a reader applies for each EXIF orientation (as PIL.ImageOps.exif_transpose)
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}
_INVERSE[Image.Transpose.ROTATE_270] = Image.Transpose.ROTATE_90


def oriented_pattern(width: int = 240, height: int = 160) -> Image.Image:
    """The correctly oriented test card: red block top-left, green top-right, blue bottom-left."""
    im = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    bw, bh = width // 4, height // 4
    draw.rectangle((0, 0, bw - 1, bh - 1), fill=(255, 0, 0))
    draw.rectangle((width - bw, 0, width - 1, bh - 1), fill=(0, 255, 0))
    draw.rectangle((0, height - bh, bw - 1, height - 1), fill=(0, 0, 255))
    return im


def exif_oriented_jpeg(orientation: int, correct: Image.Image) -> bytes:
    """A JPEG that displays as ``correct`` once its EXIF ``orientation`` is applied."""
    stored = correct
    if orientation in ORIENTATION_TRANSPOSE:
        method = ORIENTATION_TRANSPOSE[orientation]
        stored = correct.transpose(_INVERSE.get(method, method))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(stored, quality=95, exif=exif.tobytes())


# --------------------------------------------------------------------------- the sets


def make_images() -> dict[str, bytes]:
    files: dict[str, bytes] = {}

    def save(name: str, im: Image.Image, fmt: str, **params: object) -> None:
        buf = io.BytesIO()
        im.save(buf, fmt, **params)
        files[name] = buf.getvalue()

    save("640x480_rgb.jpg", photo(640, 480, seed=1), "JPEG", quality=85)
    save("1200x800_landscape.jpg", photo(1200, 800, seed=2), "JPEG", quality=85)
    save("800x1200_portrait.jpg", photo(800, 1200, seed=3), "JPEG", quality=85)
    save("300x300_small.png", photo(300, 300, seed=4, grain=1.5), "PNG")
    rgba = photo(1024, 768, seed=5, grain=0).convert("RGBA")
    yy, xx = np.mgrid[0:768, 0:1024]
    disc = ((xx - 512) ** 2 + (yy - 384) ** 2) <= 340**2
    alpha = np.where(disc, 255, (xx * 255 // 1023) // 2).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    save("1024x768_rgba.png", rgba, "PNG")
    save("600x400_gray.jpg", photo(600, 400, seed=6).convert("L"), "JPEG", quality=85)
    palette = photo(500, 500, seed=7, grain=0).quantize(64, dither=Image.Dither.NONE)
    save("500x500_palette.gif", palette, "GIF")
    save("900x600.webp", photo(900, 600, seed=8), "WEBP", quality=80)
    save("nested/1000x667_nested.jpg", photo(1000, 667, seed=9), "JPEG", quality=85)
    save("nested/deeper/480x640_portrait.webp", photo(480, 640, seed=10), "WEBP", quality=80)
    return files


def make_edge() -> dict[str, bytes]:
    files: dict[str, bytes] = {}

    def save(name: str, im: Image.Image, fmt: str, **params: object) -> None:
        buf = io.BytesIO()
        im.save(buf, fmt, **params)
        files[name] = buf.getvalue()

    correct = oriented_pattern()
    for n in range(1, 9):
        files[f"exif_rot{n}.jpg"] = exif_oriented_jpeg(n, correct)

    # CMYK: four flat quadrants (C, M, Y, K)
    quadrants = [(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 128), (50, 100, 150, 30)]
    cmyk = np.zeros((128, 192, 4), dtype=np.uint8)
    cmyk[:64, :96], cmyk[:64, 96:], cmyk[64:, :96], cmyk[64:, 96:] = quadrants
    adobe = Image.frombytes("CMYK", (192, 128), cmyk.tobytes())
    files["cmyk_adobe_inverted.jpg"] = jpeg_bytes(adobe, quality=95)  # Pillow writes Adobe style
    # plain CMYK: pre-invert so the stored samples are the true values, then drop the Adobe marker
    plain = Image.frombytes("CMYK", (192, 128), (255 - cmyk).tobytes())
    files["cmyk.jpg"] = strip_adobe_marker(jpeg_bytes(plain, quality=95))

    grey16 = np.zeros((128, 256), dtype=np.uint16)
    for i, v in enumerate((0, 16384, 32768, 65535)):
        grey16[:64, i * 64 : (i + 1) * 64] = v
    grey16[64:] = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :]
    save("gray16.png", Image.fromarray(grey16), "PNG")

    pal = Image.new("P", (200, 150), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0, 0, 0] * 253)
    draw = ImageDraw.Draw(pal)
    draw.ellipse((50, 25, 150, 125), fill=1)
    draw.rectangle((0, 120, 40, 149), fill=2)
    save("palette_transparent.png", pal, "PNG", transparency=0)

    frames = [Image.new("RGB", (120, 80), c) for c in ((0, 0, 255), (255, 0, 0), (0, 255, 0))]
    save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    save(
        "animated.webp",
        frames[0],
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        lossless=True,
    )

    save("gray.jpg", photo(320, 240, seed=11).convert("L"), "JPEG", quality=90)

    bw = np.zeros((100, 200), dtype=bool)
    bw[:, 100:] = True
    bw[40:60, 20:40] = True
    save("bw_1bit.png", Image.fromarray(bw), "PNG")

    # Adobe RGB flat patches tagged with the hand-built profile
    icc = adobe_rgb_icc()
    patches = Image.new("RGB", (240, 80))
    for i, colour in enumerate(((150, 120, 90), (110, 160, 200), (200, 60, 90))):
        patches.paste(colour, (i * 80, 0, (i + 1) * 80, 80))
    files["icc_adobergb.jpg"] = jpeg_bytes(patches, quality=95, icc_profile=icc)

    la = np.zeros((100, 200, 2), dtype=np.uint8)
    la[..., 0] = np.linspace(0, 255, 200).round().astype(np.uint8)[None, :]
    la[:, 100:, 1] = 255
    la[:, 80:100, 1] = 128
    save("la_alpha.png", Image.fromarray(la), "PNG")

    full = jpeg_bytes(photo(400, 300, seed=12), quality=90)
    files["truncated.jpg"] = full[: len(full) * 6 // 10]
    rng = np.random.default_rng(13)
    files["not_an_image.jpg"] = b"NOTANIMAGE" + rng.bytes(2038)
    files["zero_bytes.jpg"] = b""
    files["bomb.png"] = bomb_png()
    return files


def make_data() -> dict[str, bytes]:
    """Numeric data files: an .npy, an .npz with two arrays and a CSV with the usual blemishes."""
    rng = np.random.default_rng(21)
    files: dict[str, bytes] = {}

    def npy(a: npt.NDArray[Any]) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    grid = rng.normal(15.0, 4.0, (120, 160)).astype(np.float32)
    grid[10, 10:14] = np.nan  # four missing readings
    files["temperature_grid.npy"] = npy(grid)
    buf = io.BytesIO()
    np.savez(buf, counts=rng.poisson(7.0, 5000), weights=rng.random((50, 40)))
    files["arrays.npz"] = buf.getvalue()
    lines = ["station,temp_c,load_kw,note"]
    for i in range(1000):
        temp = f"{rng.normal(12.0, 5.0):.2f}" if i % 97 else ""  # a few missing
        note = '"ok, checked"' if i % 10 == 0 else "ok"
        lines.append(f"s{i % 17},{temp},{rng.gamma(2.0, 3.0):.3f},{note}")
    lines[500] = "s3,n/a?,4.2,typo in temp_c"  # a bad cell: counted, not fatal
    files["sensors.csv"] = ("\n".join(lines) + "\n").encode()
    return files


def _check(files: dict[str, bytes]) -> None:
    """Sanity checks that the generated edge cases are what their names say."""
    correct = oriented_pattern()
    for n in range(1, 9):
        with Image.open(io.BytesIO(files[f"exif_rot{n}.jpg"])) as im:
            shown = ImageOps.exif_transpose(im)
            assert shown.size == correct.size, n
            assert shown.getpixel((5, 5))[0] > 200, n  # type: ignore[index]
    with Image.open(io.BytesIO(files["cmyk.jpg"])) as im:
        assert im.mode == "CMYK"
        assert "adobe" not in im.info
    with Image.open(io.BytesIO(files["cmyk_adobe_inverted.jpg"])) as im:
        assert im.mode == "CMYK"
        assert "adobe" in im.info
    with Image.open(io.BytesIO(files["gray16.png"])) as im:
        assert im.mode.startswith("I"), im.mode


def write(root: Path, files: dict[str, bytes]) -> int:
    total = 0
    for name, data in sorted(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="target folder (default: here)")
    args = parser.parse_args(argv)
    images, edge, data = make_images(), make_edge(), make_data()
    _check(edge)
    n_images = write(args.out / "images", images)
    n_edge = write(args.out / "edge", edge)
    n_data = write(args.out / "data", data)
    print(f"images/: {len(images)} files, {n_images / 1e6:.2f} MB")
    print(f"edge/:   {len(edge)} files, {n_edge / 1e6:.2f} MB")
    print(f"data/:   {len(data)} files, {n_data / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
