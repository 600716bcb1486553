"""Formats people have on their disks: HEIC/HEIF input (the ``heif`` extra: pillow-heif) and AVIF
output, through the real command line, and the recognition and decode they rely on.

The HEIC files are made here with pillow-heif (a dev dependency), with what phones put in them:
an orientation (which pillow-heif writes into the container, as phones do), an ICC profile that
is not sRGB, alpha, a file without extension, one whose major brand is the generic ``mif1``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sample_data.make_samples import (
    ORIENTATION_TRANSPOSE,
    adobe_rgb_icc,
    oriented_pattern,
)
from stages import heif, sniff
from stages.api import encode
from stages.imaging import (
    DecompressionBomb,
    ResizeOptions,
    TruncatedImage,
    parse_size,
    process_image,
)
from tests.conftest import by_key
from tests.images import EDGE, IMAGES, adobe_rgb_to_srgb, decode, fmt_of, photo_like, region_mean

ROOT = Path(__file__).resolve().parents[1]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
ADOBE_PATCHES = ((150, 120, 90), (110, 160, 200), (200, 60, 90))


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "process", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def heic(im: Image.Image, *, orientation: int | None = None, **params: Any) -> bytes:
    """``im`` saved as HEIC by pillow-heif; with ``orientation``, stored so that it *displays*
    as ``im`` (pillow-heif turns the EXIF tag into the container's rotation, as phones write)."""
    assert heif.register() is None  # pillow-heif is a dev dependency: these tests always run
    if orientation is not None:
        method = ORIENTATION_TRANSPOSE[orientation]
        inverse = {
            Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
            Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
        }
        im = im.transpose(inverse.get(method, method))
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, "HEIF", **params)
    return buf.getvalue()


def lossless_heic(im: Image.Image, **params: Any) -> bytes:
    return heic(im, quality=-1, chroma=444, **params)


def adobe_patches() -> Image.Image:
    patches = Image.new("RGB", (240, 80))
    for i, colour in enumerate(ADOBE_PATCHES):
        patches.paste(colour, (i * 80, 0, (i + 1) * 80, 80))
    return patches


def half_transparent() -> Image.Image:
    im = Image.new("RGBA", (200, 100), (20, 90, 200, 255))
    im.paste((20, 90, 200, 0), (100, 0, 200, 100))  # right half fully transparent
    return im


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of HEIC files as phones and cameras write them."""
    folder = tmp_path_factory.mktemp("phone")
    # stored 160x240 with orientation 6: displays as the 240x160 test card
    (folder / "rot6.heic").write_bytes(heic(oriented_pattern(240, 160), orientation=6, quality=95))
    (folder / "adobe.HEIF").write_bytes(lossless_heic(adobe_patches(), icc_profile=adobe_rgb_icc()))
    (folder / "alpha.heic").write_bytes(lossless_heic(half_transparent()))
    (folder / "photo").write_bytes(heic(photo_like(320, 240, seed=5), quality=80))
    data = heic(photo_like(300, 200, seed=6), quality=80)
    assert data[8:12] == b"heic"
    assert b"mif1" in data[16:32]
    (folder / "generic.hif").write_bytes(data[:8] + b"mif1" + data[12:])  # major brand mif1
    return folder


# -- recognition --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\0\0\0\x1cftypheic\0\0\0\0mif1heicmiaf", "HEIF"),
        (b"\0\0\0\x18ftypheix\0\0\0\0mif1heix", "HEIF"),
        (b"\0\0\0\x18ftyphevc\0\0\0\0msf1hevc", "HEIF"),
        (b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "HEIF"),  # generic brand, HEVC compatible
        (b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif", "AVIF"),  # generic brand, AV1 compatible
        (b"\0\0\0\x14ftypmif1\0\0\0\0mif1\0\0\0\x08heic", "AVIF"),  # heic outside the box
        (b"\0\0\0\x20ftypavif\0\0\0\0avifmif1miaf", "AVIF"),
        (b"\0\0\0\x18ftypisom\0\0\0\0isomavc1", None),  # an MP4 video
    ],
)
def test_iso_media_brands(head: bytes, expected: str | None) -> None:
    assert sniff.image_format(head) == expected
    # the HEIF plugin is imported for what it may open: every major brand but AV1's and video's
    assert sniff.may_be_heif(head) == (head[8:12] not in (b"avif", b"isom"))
    if expected is None:
        assert sniff.describe(head, 1000) == "an ISO media file (brand 'isom'), not an image"


def test_heic_and_avif_files_are_recognised_by_content(phone: Path) -> None:
    for path in phone.iterdir():
        assert sniff.image_format(path.read_bytes()[: sniff.HEAD_BYTES]) == "HEIF", path.name
    avif = encode(photo_like(64, 48), "avif")
    assert sniff.image_format(avif[: sniff.HEAD_BYTES]) == "AVIF"


_LAZY_PLUGIN = """
import sys
from pathlib import Path
import stages.imaging as imaging
from stages import samples
from PIL import Image

seen = ["pillow_heif" in sys.modules]
for path in sorted(Path(sys.argv[1]).iterdir()):  # JPEG, PNG, AVIF...: the plugin stays out
    imaging.process_image(path.read_bytes(), imaging.ResizeOptions())
seen.append("pillow_heif" in sys.modules)
data = Path(sys.argv[2]).read_bytes()
seen.append(samples._header_size(data))  # a shard filter reads a HEIC's header first
seen.append(imaging.process_image(data, imaging.ResizeOptions()).original_size)
print(seen)
"""


@pytest.mark.timeout(60)
def test_the_heif_plugin_is_imported_by_the_first_iso_media_file(
    phone: Path, tmp_path: Path
) -> None:
    """A process that decodes no HEIC never imports pillow-heif (some 6 MB, 20 ms); the first
    file that may be one registers it, for its header as for its decode."""
    others = tmp_path / "others"
    others.mkdir()
    im = photo_like(120, 90)
    for fmt in ("jpeg", "png", "avif"):
        (others / f"a.{fmt}").write_bytes(encode(im, fmt))
    first = phone / "generic.hif"  # major brand mif1: AVIF's plugin is tried first, and declines
    with Image.open(first) as probe:  # the test process has the plugin registered
        size = probe.size
    done = subprocess.run(
        [sys.executable, "-c", _LAZY_PLUGIN, str(others), str(first)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([False, False, size, size])


# -- decode (in process) ------------------------------------------------------------------------


def test_a_heic_bomb_is_refused_from_its_header() -> None:
    data = heic(Image.new("RGB", (300, 200)), quality=50)
    options = ResizeOptions(max_pixels=300 * 200 - 1)
    with pytest.raises(DecompressionBomb, match="300x200"):
        process_image(data, options)


def test_a_heic_cut_short_is_truncated() -> None:
    data = heic(photo_like(320, 240), quality=80)
    with pytest.raises(TruncatedImage, match="end of file"):
        process_image(data[: len(data) * 3 // 4], ResizeOptions())


def test_a_10_bit_heic_is_decoded_to_8_bits() -> None:
    import pillow_heif  # a dev dependency

    ramp = np.tile(np.linspace(0, 65535, 64), (32, 1)).astype("<u2")  # left to right
    rgb16 = pillow_heif.from_bytes(
        mode="RGB;16", size=(64, 32), data=np.dstack([ramp, ramp, ramp]).tobytes()
    )
    buf = io.BytesIO()
    rgb16.save(buf, quality=90)  # 10 bits per sample, as phones write HDR photos
    result = process_image(buf.getvalue(), ResizeOptions(format="png"))
    assert result.original_mode == "RGB"
    img = decode(result.outputs[0].data)
    assert img.mode == "RGB"
    row = np.asarray(img, dtype=float)[16, :, 0]
    assert row[0] <= 8
    assert row[-1] >= 247
    assert np.all(np.diff(row) >= -3)  # a ramp, not wrapped or clipped


def test_avif_input_orientation_applied_once_and_kept_as_avif() -> None:
    # Pillow writes the EXIF orientation into the container (irot/imir) and reads it back as
    # an EXIF tag, which the decode applies
    stored = oriented_pattern(240, 160).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "AVIF", quality=95, exif=exif.tobytes())
    result = process_image(buf.getvalue(), ResizeOptions(sizes=(parse_size("120"),)))
    (out,) = result.outputs
    assert (result.original_format, out.format, out.ext) == ("avif", "avif", ".avif")
    assert (out.width, out.height) == (120, 80)
    img = decode(out.data)
    assert img.getexif().get(0x0112, 1) == 1  # no orientation left to apply twice
    assert_test_card(img.convert("RGB"))


def test_avif_encode_keeps_alpha_and_grey() -> None:
    data = encode(half_transparent(), "avif", quality=90)
    assert fmt_of(data) == "AVIF"
    rgba = decode(data)
    assert rgba.mode == "RGBA"
    alpha = np.asarray(rgba.getchannel("A"), dtype=float)
    assert alpha[:, :90].min() >= 250
    assert alpha[:, 110:].max() <= 5
    grey = decode(encode(Image.new("L", (40, 30), 77), "avif", quality=90))
    assert np.abs(np.asarray(grey.convert("L"), dtype=float) - 77).max() <= 3


# -- the command line -----------------------------------------------------------------------


def assert_test_card(img: Image.Image, tol: float = 24) -> None:
    """``img`` is oriented_pattern's card, upright: red top-left, green top-right, blue
    bottom-left (a card rotated twice, or not at all, fails on two corners at least)."""
    for box, colour in (
        ((0.02, 0.03, 0.2, 0.2), RED),
        ((0.8, 0.03, 0.98, 0.2), GREEN),
        ((0.02, 0.8, 0.2, 0.97), BLUE),
    ):
        got = region_mean(img, box)
        assert np.abs(got - np.asarray(colour)).max() <= tol, (box, colour, got)


def test_heic_inputs_become_thumbnails(phone: Path, out: Path) -> None:
    done = cli(phone, "--output", out, "--size", "200", "--quiet")
    assert done.returncode == 0, done.stderr
    recs = by_key(out)
    assert set(recs) == {"rot6.heic", "adobe.HEIF", "alpha.heic", "photo", "generic.hif"}
    for rec in recs.values():
        assert rec["status"] == "ok", rec
        assert rec["result"]["original"]["format"] == "heif"
    outputs = {key: rec["result"]["outputs"][0] for key, rec in recs.items()}
    # keep: opaque HEIC → JPEG, HEIC with alpha → PNG; the naming rule adds the extension
    assert {k: o["path"] for k, o in outputs.items()} == {
        "rot6.heic": "200/rot6.heic.jpg",
        "adobe.HEIF": "200/adobe.HEIF.jpg",
        "alpha.heic": "200/alpha.heic.png",
        "photo": "200/photo.jpg",
        "generic.hif": "200/generic.hif.jpg",
    }

    # stored 160x240 with orientation 6: 240x160 upright, rotated exactly once
    assert recs["rot6.heic"]["result"]["original"] | {"mode": "-"} == {
        "width": 240,
        "height": 160,
        "mode": "-",
        "format": "heif",
    }
    with Image.open(out / outputs["rot6.heic"]["path"]) as im:
        assert im.format == "JPEG"
        assert im.size == (200, 133)
        assert im.getexif().get(0x0112, 1) == 1
        assert_test_card(im.convert("RGB"))

    # the Adobe RGB profile converted to sRGB (and not embedded: the output is plain sRGB)
    with Image.open(out / outputs["adobe.HEIF"]["path"]) as im:
        assert "icc_profile" not in im.info
        for i, adobe in enumerate(ADOBE_PATCHES):
            got = region_mean(im.convert("RGB"), (i / 3 + 0.05, 0.2, (i + 1) / 3 - 0.05, 0.8))
            expected = adobe_rgb_to_srgb(adobe)
            assert np.abs(got - expected).max() <= 5, (adobe, got, expected)
            assert np.abs(got - np.asarray(adobe)).max() >= 8  # really converted

    with Image.open(out / outputs["alpha.heic"]["path"]) as im:
        assert (im.mode, im.size) == ("RGBA", (200, 100))
        alpha = np.asarray(im.getchannel("A"))
        assert alpha[:, :95].min() >= 250
        assert alpha[:, 105:].max() <= 5

    for key, size in (("photo", (200, 150)), ("generic.hif", (200, 133))):
        with Image.open(out / outputs[key]["path"]) as im:
            assert (im.format, im.size) == ("JPEG", size)


def _avif_run(out: Path, quality: int) -> dict[str, dict[str, Any]]:
    inputs = (IMAGES, EDGE / "icc_adobergb.jpg", EDGE / "exif_rot6.jpg", EDGE / "la_alpha.png")
    done = cli(*inputs, "--output", out, "--size", "128", "--format", "avif",
               "--quality", str(quality), "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    recs = by_key(out)
    assert all(rec["status"] == "ok" for rec in recs.values()), recs
    return {key: rec["result"]["outputs"][0] for key, rec in recs.items()}


def test_avif_output(tmp_path: Path) -> None:
    high = _avif_run(tmp_path / "q90", 90)
    assert len(high) == sum(1 for p in IMAGES.rglob("*") if p.is_file()) + 3
    for key, o in high.items():
        assert o["format"] == "avif"
        assert o["path"].endswith(".avif")
        data = (tmp_path / "q90" / o["path"]).read_bytes()
        assert data[4:12] == b"ftypavif", key
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "AVIF"
            assert im.size == (o["width"], o["height"])
            assert max(im.size) <= 128
            # the JPEG outputs' policy: sRGB pixels, no EXIF, no ICC profile
            assert "icc_profile" not in im.info
            assert not im.info.get("exif")
    assert high["images/1024x768_rgba.png"]["path"] == "128/images/1024x768_rgba.png.avif"
    assert (high["exif_rot6.jpg"]["width"], high["exif_rot6.jpg"]["height"]) == (128, 85)
    outputs = tmp_path / "q90"
    with Image.open(outputs / high["exif_rot6.jpg"]["path"]) as im:
        assert_test_card(im.convert("RGB"))
    with Image.open(outputs / high["images/1024x768_rgba.png"]["path"]) as im:
        assert im.mode == "RGBA"  # alpha kept
    with Image.open(outputs / high["la_alpha.png"]["path"]) as im:
        assert im.mode == "RGBA"
        assert np.asarray(im.getchannel("A")).min() <= 5  # its transparent half stays so
    with Image.open(outputs / high["icc_adobergb.jpg"]["path"]) as im:
        rgb = im.convert("RGB")
        for i, adobe in enumerate(ADOBE_PATCHES):
            got = region_mean(rgb, (i / 3 + 0.08, 0.2, (i + 1) / 3 - 0.08, 0.8))
            assert np.abs(got - adobe_rgb_to_srgb(adobe)).max() <= 6, (adobe, got)

    low = _avif_run(tmp_path / "q30", 30)
    assert set(low) == set(high)
    photos = [k for k in high if k.endswith(".jpg")]
    assert photos
    for key in photos:
        assert low[key]["bytes"] < high[key]["bytes"], key
    assert sum(o["bytes"] for o in low.values()) < 0.7 * sum(o["bytes"] for o in high.values())


def test_heic_without_the_plugin_names_the_extra(phone: Path, out: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "pillow_heif.py").write_text('raise ImportError("pillow-heif blocked by a test")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    done = cli(phone, EDGE / "exif_rot6.jpg", "--output", out, "--size", "64", env=env)
    assert done.returncode == 1, done.stderr  # item failures, not a crash
    assert "Traceback" not in done.stderr
    recs = by_key(out)
    assert recs["exif_rot6.jpg"]["status"] == "ok"
    heics = {k: r for k, r in recs.items() if k != "exif_rot6.jpg"}
    assert len(heics) == 5
    for rec in heics.values():
        assert rec["status"] == "failed", rec
        assert rec["stage"] == "resize"
        assert rec["error_type"] == "UnsupportedImage"
        assert "pip install 'pixpipe[heif]'" in rec["error"]
        assert "blocked by a test" in rec["error"]
        assert "not an image" not in rec["error"]
    assert not (out / "64" / "rot6.heic.jpg").exists()
