"""stages.imaging and stages.stats: a profile is sRGB by its content, not its name; 32-bit grey
outside its nominal range is stretched, not clipped; the statistics of an image with
transparency do not depend on its size."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageCms

from stages.imaging import ResizeOptions, process_image
from stages.neardups import hamming
from stages.options import as_sizes
from tests.images import decode, encode, photo_like

pytestmark = pytest.mark.timeout(120)

# --------------------------------------------------------------------------- ICC profiles

# sRGB's colorants adapted to the D50 connection space, as HP's "sRGB IEC61966-2.1" holds them
_SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
_D50 = (0.9642, 1.0, 0.8249)


def _s15f16(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(v: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15f16(c) for c in v)


def _gamma_curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _srgb_curve() -> bytes:
    """sRGB's transfer function as a 1024-entry table, as HP's profile holds it."""
    v = np.linspace(0.0, 1.0, 1024)
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    table = bytes(np.rint(linear * 65535).astype(">u2").tobytes())
    return b"curv" + bytes(4) + struct.pack(">I", 1024) + table


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)


def _rgb_icc(name: str, curve: bytes) -> bytes:
    """An ICC v2 matrix/TRC RGB profile with sRGB's primaries and the given curve, named
    ``name``."""
    tags = [
        (b"desc", _desc(name)),
        (b"wtpt", _xyz(_D50)),
        *((sig, _xyz(c)) for sig, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), _SRGB_D50, strict=True)),
        *((sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC")),
    ]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        body += bytes(-(start + len(body)) % 4)
        table += sig + struct.pack(">II", start + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", start + len(body))
        + b"none"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(28)
        + b"".join(_s15f16(c) for c in _D50)
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + body


def _render(data: bytes, size: int, fmt: str = "png") -> Image.Image:
    options = ResizeOptions(sizes=as_sizes(size), format=fmt)  # type: ignore[arg-type]
    return decode(process_image(data, options).outputs[0].data)


@pytest.mark.parametrize("name", ["GIMP built-in Linear sRGB", "sRGB-elle-V2-g10"])
def test_a_linear_profile_named_srgb_is_converted(name: str) -> None:
    # GIMP 2.10 and Krita embed linear-light profiles with "sRGB" in their names: a linear grey
    # of 50 is sRGB ~122 (it came out 50, the profile taken as sRGB by its name)
    icc = _rgb_icc(name, _gamma_curve(1.0))
    src = Image.new("RGB", (64, 64), (50, 50, 50))
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    want = ImageCms.profileToProfile(src, profile, ImageCms.createProfile("sRGB"))
    assert want is not None
    expected = np.asarray(want, dtype=float)[0, 0]
    assert expected.min() > 110  # the reference itself: far from 50
    out = _render(encode(src, "PNG", icc_profile=icc), 32)
    assert np.abs(np.asarray(out, dtype=float) - expected).max() <= 1


@pytest.mark.parametrize("name", ["sRGB IEC61966-2.1", "Camera RGB"])
def test_an_srgb_profile_under_any_name_leaves_the_pixels_alone(name: str) -> None:
    # HP's sRGB profile (table curves): within a level of the pixels as they are, named or not
    src = photo_like(64, 48, seed=4, grain=0)
    icc = _rgb_icc(name, _srgb_curve())
    out = _render(encode(src, "PNG", icc_profile=icc), 64)
    assert np.abs(np.asarray(out, dtype=float) - np.asarray(src, dtype=float)).max() <= 1


# --------------------------------------------------------------------------- 32-bit grey


def _grey_tiff(a: npt.NDArray[np.generic]) -> bytes:
    return encode(Image.fromarray(a), "TIFF")


def _grey(data: bytes, width: int) -> npt.NDArray[np.float64]:
    out = _render(data, width)
    assert out.mode == "L"
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize(
    ("low", "high", "dtype"),
    [(0, 3000, np.float32), (-1, 1, np.float32), (0, 300_000, np.int32), (-5000, 5000, np.int32)],
)
def test_32bit_grey_outside_its_range_is_stretched_not_clipped(
    low: int, high: int, dtype: type[np.generic]
) -> None:
    # an elevation ramp 0..3000 came out 91% white, a -1..1 ramp lost its negative half
    ramp = np.tile(np.linspace(low, high, 256).astype(dtype), (8, 1))
    grey = _grey(_grey_tiff(ramp), 256)
    expected = np.tile(np.rint(np.linspace(0, 255, 256)), (8, 1))
    assert np.abs(grey - expected).max() <= 1
    assert (grey == 255).mean() < 0.01


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([0.0, 0.5, 1.0], np.float32), [0, 128, 255]),  # 0..1
        (np.array([0.0, 100.0, 255.0], np.float32), [0, 100, 255]),  # 0..255
        (np.array([0, 32768, 65535], np.int32), [0, 128, 255]),  # 0..65535
    ],
)
def test_32bit_grey_in_its_range_is_scaled_as_before(
    values: npt.NDArray[np.generic], expected: list[int]
) -> None:
    grey = _grey(_grey_tiff(np.tile(values, (3, 1))), 3)
    assert grey[0].tolist() == expected


def test_nan_and_inf_are_black_and_left_out_of_the_stretch() -> None:
    row = np.array([np.nan, 0.0, 1500.0, 3000.0, np.inf, -np.inf], np.float32)
    grey = _grey(_grey_tiff(np.tile(row, (3, 1))), 6)
    assert grey[0].tolist() == [0, 0, 128, 255, 0, 0]


# --------------------------------------------------------------------------- alpha statistics


def _logo(width: int, height: int) -> Image.Image:
    """A photo whose left third is invisible but keeps its colour, as many exporters leave it."""
    a = np.asarray(photo_like(width, height, seed=1, grain=0).convert("RGBA")).copy()
    a[:, : width // 3, 3] = 0
    return Image.fromarray(a)


def test_the_statistics_of_an_image_with_alpha_do_not_depend_on_its_size() -> None:
    # 400x300 fits the 512 box (not resized); its 800x600 copy is resized to 512x384, which
    # turned its invisible pixels black: other means, another dhash, no near-duplicate group
    small = _logo(400, 300)
    large = small.resize((800, 600), Image.Resampling.LANCZOS)
    options = ResizeOptions(sizes=as_sizes(512), format="png")
    s_small = process_image(encode(small, "PNG"), options).stats
    s_large = process_image(encode(large, "PNG"), options).stats
    assert (s_small["width"], s_large["width"]) == (400, 512)
    assert np.abs(np.subtract(s_small["mean"], s_large["mean"])).max() < 3
    assert hamming(s_small["dhash"], s_large["dhash"]) <= 4
    json.dumps(s_small)


def test_invisible_pixels_of_an_image_not_resized_are_transparent_black() -> None:
    # what a resize leaves them, so outputs and statistics agree whatever the size; visible
    # pixels are untouched
    small = _logo(40, 30)
    out = _render(encode(small, "PNG"), 64)
    got, src = np.asarray(out), np.asarray(small)
    assert out.size == (40, 30)
    assert not got[:, :13].any()
    assert (got[:, 13:] == src[:, 13:]).all()
