"""Pixel limits through the real CLI: ``--max-pixels`` above Pillow's own limit is honoured by
the workers (a real 200 MP image decodes), the default refuses it with our message; a guard on
output pixels (``--max-output-pixels``, on by default) fails the items whose outputs would be
too large, and a ``--size`` whose every output would be is a usage error before the run."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image

import stages
from stages.imaging import process_image
from stages.options import ResizeOptions
from tests.conftest import by_key
from tests.trees import cli

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--quiet", timeout=110)


def write_bilevel_png(path: Path, width: int, height: int) -> None:
    """A real 1-bit PNG of one colour, written row by row (a few kB on disk; the test process
    never holds its pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter 0, white pixels
    packer = zlib.compressobj(9)
    with path.open("wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        for _ in range(height // 100):
            fh.write(chunk(b"IDAT", packer.compress(row * 100)))
        fh.write(chunk(b"IDAT", packer.compress(row * (height % 100)) + packer.flush()))
        fh.write(chunk(b"IEND", b""))


def test_max_pixels_above_pillows_own_limit_is_honoured(tmp_path: Path) -> None:
    # 200 MP: above twice Pillow's MAX_IMAGE_PIXELS (2 x 89.5 MP), where Pillow itself refuses
    # to open an image whatever our limit says. Decoding it takes ~400 MB in the worker (1 byte
    # a pixel, then converted once); the test process never decodes it.
    src = tmp_path / "in"
    src.mkdir()
    write_bilevel_png(src / "huge.png", 20_000, 10_000)
    assert 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 10_000  # type: ignore[operator]
    refused = _cli(src, "-o", tmp_path / "default")
    assert refused.returncode == 1, refused.stderr
    rec = by_key(tmp_path / "default")["huge.png"]
    assert rec["status"] == "failed"
    assert rec["error_type"] == "DecompressionBomb"
    assert "20000x10000 = 200000000 pixels, more than max_pixels=100000000" in rec["error"]
    out = tmp_path / "raised"
    done = _cli(src, "-o", out, "--max-pixels", "250000000", "--workers", "1")
    assert done.returncode == 0, done.stderr
    rec = by_key(out)["huge.png"]
    assert rec["status"] == "ok", rec
    (made,) = rec["result"]["outputs"]
    assert (made["width"], made["height"]) == (512, 256)
    with Image.open(out / made["path"]) as im:
        assert im.size == (512, 256)
        assert im.convert("L").getextrema() == (255, 255)


def test_outputs_over_max_output_pixels_fail_with_a_clear_record(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(IMAGES / "640x480_rgb.jpg", src / "wide.jpg")  # 2000x1500 = 3 MP: fine
    shutil.copy(IMAGES / "800x1200_portrait.jpg", src / "tall.jpg")  # 2000x3000 = 6 MP: too many
    out = tmp_path / "out"
    args = ("--size", "2000x", "--upscale", "--max-output-pixels", "4000000")
    done = _cli(src, "-o", out, *args)
    assert done.returncode == 1, done.stderr
    records = by_key(out)
    assert records["wide.jpg"]["status"] == "ok"
    (made,) = records["wide.jpg"]["result"]["outputs"]
    assert (made["width"], made["height"]) == (2000, 1500)
    tall = records["tall.jpg"]
    assert tall["status"] == "failed"
    assert tall["error_type"] == "OutputTooLarge"
    assert (
        "2000x3000 output = 6000000 pixels, more than max_output_pixels=4000000" in (tall["error"])
    )
    assert not list((out / "2000x").glob("tall*"))


def test_the_output_guard_is_on_by_default(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(IMAGES / "800x1200_portrait.jpg", src / "tall.jpg")  # 8200x12300 = 100 MP
    out = tmp_path / "out"
    done = _cli(src, "-o", out, "--size", "8200x", "--upscale")
    assert done.returncode == 1, done.stderr
    tall = by_key(out)["tall.jpg"]
    assert tall["error_type"] == "OutputTooLarge"
    assert "max_output_pixels=67108864" in tall["error"]


def test_a_size_whose_every_output_is_too_large_is_a_usage_error(tmp_path: Path) -> None:
    for flags, why in [
        (["--size", "10000", "--upscale"], "size 10000 with upscale"),
        (["--size", "9000x8000", "--mode", "pad"], "size 9000x8000 with mode pad"),
        (["--size", "3000", "--upscale", "--max-output-pixels", "1000000"], "size 3000 with"),
    ]:
        out = tmp_path / "out"
        done = _cli(IMAGES, "-o", out, *flags)
        assert done.returncode == 2, done.stderr
        assert why in done.stderr
        assert "more than max_output_pixels=" in done.stderr
        assert not out.exists()
    conf = tmp_path / "big.toml"
    conf.write_text('size = ["10000"]\nupscale = true\n')
    done = _cli(IMAGES, "-o", tmp_path / "out", "--config", conf)
    assert done.returncode == 2, done.stderr
    assert "size 10000 with upscale makes outputs of up to 10000x10000" in done.stderr
    # without upscale, a large box only caps: the images keep their size
    done = _cli(IMAGES, "-o", tmp_path / "out", "--size", "10000")
    assert done.returncode == 0, done.stderr


def test_pillows_limit_is_raised_only_during_a_call_and_restored() -> None:
    before = Image.MAX_IMAGE_PIXELS
    data = (IMAGES / "640x480_rgb.jpg").read_bytes()
    result = process_image(data, ResizeOptions(max_pixels=10**9))
    assert result.outputs
    assert before == Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # a program that turned Pillow's check off keeps it off
    try:
        process_image(data, ResizeOptions(max_pixels=10**9))
        assert Image.MAX_IMAGE_PIXELS is None
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_the_guards_in_the_python_api() -> None:
    photo = IMAGES / "640x480_rgb.jpg"
    with pytest.raises(stages.OutputTooLarge, match="1280x960 output = 1228800 pixels"):
        stages.thumbnail(photo, "1280x", upscale=True, max_output_pixels=1_000_000)
    assert stages.thumbnail(photo, 1280, max_output_pixels=1_000_000).size == (640, 480)
    with pytest.raises(ValueError, match="size 2000 with upscale makes outputs of up to"):
        stages.thumbnail(photo, 2000, upscale=True, max_output_pixels=1_000_000)
    with pytest.raises(ValueError, match="max_output_pixels must be a positive int"):
        ResizeOptions(max_output_pixels=0)
    with pytest.raises(stages.OutputTooLarge):  # the resize stage's worker refuses it too
        process_image(photo.read_bytes(), ResizeOptions(max_output_pixels=100_000))


@pytest.mark.parametrize("limit", [100_000_000, 500_000_000])
def test_a_bomb_far_above_the_limit_is_refused_naming_our_limit(limit: int) -> None:
    """900 MP declared: Pillow refuses it when it opens it (above twice the limit), and the
    message names the --max-pixels in force, not Pillow's own figure."""
    data = (ROOT / "sample_data" / "edge" / "bomb.png").read_bytes()
    said = f"^image declares (30000x30000 = )?900000000 pixels, more than max_pixels={limit}; "
    with pytest.raises(stages.DecompressionBomb, match=said + "not decoded$"):
        process_image(data, ResizeOptions(max_pixels=limit))
