"""stages.imaging: decode/orient/colour/resize/encode, checked on real pixels."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from stages.imaging import (
    DecodeError,
    DecompressionBomb,
    EncodedImage,
    ImageError,
    ImageResult,
    ResizeOptions,
    Size,
    TruncatedImage,
    UnsupportedImage,
    parse_size,
    process_image,
)
from tests.images import (
    IMAGES,
    adobe_rgb_to_srgb,
    cmyk_to_rgb,
    decode,
    edge,
    encode,
    fmt_of,
    photo_like,
    pixels,
    png_header_only,
    psnr,
    region_mean,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def opts(*sizes: str, **kw: Any) -> ResizeOptions:
    return ResizeOptions(sizes=tuple(parse_size(s) for s in sizes or ("512",)), **kw)


def one(data: bytes, *sizes: str, **kw: Any) -> tuple[ImageResult, Image.Image]:
    result = process_image(data, opts(*sizes, **kw))
    assert len(result.outputs) == 1
    return result, decode(result.outputs[0].data)


def close_to(actual: Any, expected: Any, tol: float) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, float) - np.asarray(expected, float)) <= tol))


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "width", "height", "label"),
    [
        ("512", 512, 512, "512"),
        ("640x480", 640, 480, "640x480"),
        (" 640X480 ", 640, 480, "640x480"),
        ("640x", 640, None, "640x"),
        ("x480", None, 480, "x480"),
        ("300x300", 300, 300, "300"),
    ],
)
def test_parse_size(text: str, width: int | None, height: int | None, label: str) -> None:
    size = parse_size(text)
    assert (size.width, size.height, size.label) == (width, height, label)
    assert parse_size(size.label) == size


@pytest.mark.parametrize("text", ["", "x", "0", "abc", "-5", "10x0", "1x2x3", "99999", "5.5"])
def test_parse_size_rejects(text: str) -> None:
    """In the words of the text given (a side out of range used to be reported as
    ``Size.width must be ...``, the name of a class the command-line user never sees)."""
    with pytest.raises(ValueError, match=rf"^invalid size '{re.escape(text)}': "):
        parse_size(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": ()}, "sizes must be a non-empty tuple of Size"),
        ({"sizes": [Size(width=10, height=10)]}, "sizes must be a non-empty tuple of Size"),
        ({"sizes": ("512",)}, "sizes must contain Size objects"),
        (
            {"sizes": (Size(width=10, height=10), Size(width=10, height=10))},
            "sizes must be distinct",
        ),
        ({"mode": "crop"}, "mode must be one of"),
        ({"format": "gif"}, "format must be one of"),
        ({"quality": 0}, "quality must be an int between 1 and 100"),
        ({"quality": 101}, "quality must be an int between 1 and 100"),
        ({"quality": True}, "quality must be an int between 1 and 100"),
        ({"max_pixels": 0}, "max_pixels must be a positive int"),
        ({"upscale": "yes"}, "upscale must be a bool"),
        ({"pad_color": (0, 0)}, "pad_color must be a tuple of three ints"),
        ({"pad_color": (0, 0, 256)}, "pad_color must be a tuple of three ints"),
        ({"pad_color": [0, 0, 0]}, "pad_color must be a tuple of three ints"),
    ],
)
def test_options_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        ResizeOptions(**kwargs)


def test_options_frozen_keyword_only_picklable() -> None:
    o = ResizeOptions()
    assert o.sizes == (Size(width=512, height=512),)
    assert o.mode == "fit"
    assert o.quality == 85
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.quality = 50  # type: ignore[misc]
    with pytest.raises(TypeError):
        Size(1, 2)  # type: ignore[call-arg]
    assert pickle.loads(pickle.dumps(o)) == o
    assert pickle.loads(pickle.dumps(process_image)) is process_image


@pytest.mark.parametrize(
    "cls", [ImageError, DecodeError, TruncatedImage, DecompressionBomb, UnsupportedImage]
)
def test_exceptions_pickle(cls: type[ImageError]) -> None:
    exc = cls("bad image: reason")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == "bad image: reason"
    assert isinstance(back, ImageError)


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("n", range(1, 9))
def test_exif_orientation(n: int) -> None:
    result, out = one(edge(f"exif_rot{n}.jpg"), "512", format="png")
    assert result.original_size == (240, 160)
    assert out.size == (240, 160)  # w/h swapped back for 5..8, no upscale
    assert close_to(region_mean(out, (0.02, 0.03, 0.2, 0.2)), RED, 12)
    assert close_to(region_mean(out, (0.8, 0.03, 0.98, 0.2)), GREEN, 12)
    assert close_to(region_mean(out, (0.02, 0.8, 0.2, 0.97)), BLUE, 12)
    assert close_to(region_mean(out, (0.4, 0.4, 0.6, 0.6)), (128, 128, 128), 8)


def _big_oriented_jpeg(orientation: int) -> bytes:
    from sample_data.make_samples import exif_oriented_jpeg, oriented_pattern

    return exif_oriented_jpeg(orientation, oriented_pattern(2400, 1600))


@pytest.mark.parametrize("n", [3, 5, 6, 8])
def test_exif_orientation_with_draft(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    drafts = _spy_draft(monkeypatch)
    result, out = one(_big_oriented_jpeg(n), "300", format="png")
    assert drafts
    assert drafts[0] is not None
    assert result.original_size == (2400, 1600)
    assert out.size == (300, 200)
    assert close_to(region_mean(out, (0.02, 0.03, 0.2, 0.2)), RED, 12)
    assert close_to(region_mean(out, (0.8, 0.03, 0.98, 0.2)), GREEN, 12)
    assert close_to(region_mean(out, (0.02, 0.8, 0.2, 0.97)), BLUE, 12)


# --------------------------------------------------------------------------- colour and modes


CMYK_QUADRANTS = [
    ((0.1, 0.1, 0.4, 0.4), (0, 255, 255, 0)),
    ((0.6, 0.1, 0.9, 0.4), (255, 0, 255, 0)),
    ((0.1, 0.6, 0.4, 0.9), (0, 0, 0, 128)),
    ((0.6, 0.6, 0.9, 0.9), (50, 100, 150, 30)),
]


@pytest.mark.parametrize("name", ["cmyk.jpg", "cmyk_adobe_inverted.jpg"])
def test_cmyk_jpeg_to_rgb(name: str) -> None:
    result, out = one(edge(name), "512", format="png")
    assert result.original_mode == "CMYK"
    assert out.mode == "RGB"
    for box, cmyk in CMYK_QUADRANTS:
        assert close_to(region_mean(out, box), cmyk_to_rgb(*cmyk), 6), (box, cmyk)


def test_icc_profile_converted_to_srgb() -> None:
    data = edge("icc_adobergb.jpg")
    with Image.open(io.BytesIO(data)) as src:
        assert src.info.get("icc_profile")
    _, out = one(data, "512", format="png")
    assert "icc_profile" not in out.info  # sRGB output carries no (stale) profile
    for i, adobe in enumerate([(150, 120, 90), (110, 160, 200), (200, 60, 90)]):
        got = region_mean(out, (i / 3 + 0.05, 0.2, (i + 1) / 3 - 0.05, 0.8))
        expected = adobe_rgb_to_srgb(adobe)
        assert close_to(got, expected, 3), (adobe, got, expected)
        assert np.max(np.abs(got - np.asarray(adobe))) >= 8  # really converted


def test_gray16_scaled_not_clipped() -> None:
    result, out = one(edge("gray16.png"), "512", format="png")
    assert result.original_mode.startswith("I")
    assert out.mode == "L"
    for i, expected in enumerate((0, 64, 128, 255)):
        assert close_to(region_mean(out, (i / 4 + 0.03, 0.1, (i + 1) / 4 - 0.03, 0.4)), expected, 1)
    ramp = pixels(out)[100]
    assert ramp[0] <= 1
    assert ramp[-1] >= 254
    assert np.all(np.diff(ramp) >= 0)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 16384, 32768, 65535]], dtype=np.int32), [0, 64, 128, 255]),  # mode I
        (np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32), [0, 64, 128, 255]),  # F in 0..1
        (np.array([[0.0, 64.0, 128.0, 255.0]], dtype=np.float32), [0, 64, 128, 255]),  # F 0..255
    ],
)
def test_wide_grey_modes_scaled(array: Any, expected: list[int]) -> None:
    src = Image.fromarray(np.repeat(np.repeat(array, 16, axis=0), 16, axis=1))
    assert src.mode in ("I", "F")
    _, out = one(encode(src, "TIFF"), "512", format="png")
    assert out.mode == "L"
    assert close_to(pixels(out)[8, 8::16], expected, 1)


def test_rgb_colour_key_transparency_becomes_alpha() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((200, 100, 50), (20, 0, 40, 20))
    _, out = one(encode(im, "PNG", transparency=(0, 0, 0)), "512")
    assert out.mode == "RGBA"
    assert pixels(out)[10, 5, 3] == 0
    assert close_to(pixels(out)[10, 30], (200, 100, 50, 255), 0)


def test_palette_transparency_kept_in_png_flattened_in_jpeg() -> None:
    data = edge("palette_transparent.png")
    _, png = one(data, "512")  # keep -> png
    assert png.mode == "RGBA"
    assert pixels(png)[2, 2, 3] == 0  # transparent background
    assert close_to(pixels(png)[75, 100], (*RED, 255), 0)
    assert close_to(pixels(png)[140, 10], (*BLUE, 255), 0)
    _, jpg = one(data, "512", format="jpeg")
    assert jpg.mode == "RGB"
    assert close_to(region_mean(jpg, (0.85, 0.02, 0.98, 0.15)), (255, 255, 255), 3)
    assert close_to(region_mean(jpg, (0.45, 0.45, 0.55, 0.55)), RED, 6)


def test_la_alpha_kept_or_flattened_onto_white() -> None:
    data = edge("la_alpha.png")
    _, png = one(data, "512")
    assert png.mode == "LA"
    px = pixels(png)
    assert np.all(px[:, :80, 1] == 0)
    assert np.all(px[:, 100:, 1] == 255)
    _, jpg = one(data, "512", format="jpeg")
    assert jpg.mode == "L"
    j = pixels(jpg)
    assert close_to(j[50, 10:70].mean(), 255, 2)  # transparent -> white
    assert close_to(j[50, 150], 150 * 255 / 199, 4)  # opaque -> its own grey


def test_webp_output_keeps_alpha() -> None:
    _, out = one(edge("palette_transparent.png"), "512", format="webp")
    assert out.mode == "RGBA"
    assert pixels(out)[2, 2, 3] == 0


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp"])
def test_animated_first_frame(name: str) -> None:
    _, out = one(edge(name), "512", format="png")
    assert close_to(region_mean(out, (0, 0, 1, 1)), BLUE, 2)


def test_one_bit_becomes_l() -> None:
    result, out = one(edge("bw_1bit.png"), "512", format="png")
    assert result.original_mode == "1"
    assert out.mode == "L"
    px = pixels(out)
    assert set(np.unique(px)) == {0.0, 255.0}
    assert px[10, 10] == 0
    assert px[10, 150] == 255
    assert px[50, 30] == 255


def test_gray_jpeg_stays_gray() -> None:
    result, out = one(edge("gray.jpg"), "160")
    assert result.outputs[0].format == "jpeg"
    assert out.mode == "L"
    assert out.size == (160, 120)


# --------------------------------------------------------------------------- geometry


def _stripes(width: int = 400, height: int = 200, alpha: bool = False) -> bytes:
    """Left quarter red, middle half green, right quarter blue (PNG)."""
    im = Image.new("RGBA" if alpha else "RGB", (width, height), GREEN)
    im.paste(RED, (0, 0, width // 4, height))
    im.paste(BLUE, (width * 3 // 4, 0, width, height))
    return encode(im, "PNG")


@pytest.mark.parametrize(
    ("mode", "size", "upscale", "expected"),
    [
        ("fit", "100", False, (100, 50)),
        ("fill", "100", False, (100, 100)),
        ("pad", "100", False, (100, 100)),
        ("exact", "100", False, (100, 100)),
        ("fit", "100x", False, (100, 50)),
        ("fit", "x100", False, (200, 100)),
        ("fill", "50x100", False, (50, 100)),
        # box bigger than the image, no upscaling
        ("fit", "800", False, (400, 200)),
        ("fill", "800", False, (200, 200)),
        ("pad", "800", False, (800, 800)),
        ("exact", "800", False, (200, 200)),
        ("exact", "800x100", False, (400, 50)),
        # upscaling allowed
        ("fit", "800", True, (800, 400)),
        ("fill", "800", True, (800, 800)),
        ("pad", "800", True, (800, 800)),
        ("exact", "800", True, (800, 800)),
    ],
)
def test_mode_sizes(mode: str, size: str, upscale: bool, expected: tuple[int, int]) -> None:
    result, out = one(_stripes(), size, mode=mode, upscale=upscale, format="png")
    assert out.size == expected
    assert (result.outputs[0].width, result.outputs[0].height) == expected


def test_fill_crops_centre() -> None:
    _, out = one(_stripes(), "100", mode="fill", format="png")
    assert close_to(region_mean(out, (0, 0, 1, 1)), GREEN, 1)


def test_fit_keeps_everything_and_exact_stretches() -> None:
    _, fit = one(_stripes(), "100", format="png")
    assert close_to(region_mean(fit, (0, 0, 0.2, 1)), RED, 2)
    assert close_to(region_mean(fit, (0.8, 0, 1, 1)), BLUE, 2)
    _, exact = one(_stripes(), "100", mode="exact", format="png")
    assert close_to(region_mean(exact, (0, 0, 0.2, 1)), RED, 2)
    assert close_to(region_mean(exact, (0.3, 0, 0.7, 1)), GREEN, 2)


def test_pad_colour_and_centring() -> None:
    _, out = one(_stripes(), "100", mode="pad", pad_color=(10, 20, 30), format="png")
    px = pixels(out)
    assert close_to(px[:25].reshape(-1, 3).mean(axis=0), (10, 20, 30), 0)
    assert close_to(px[75:].reshape(-1, 3).mean(axis=0), (10, 20, 30), 0)
    assert close_to(px[50, 50], GREEN, 1)
    # small image, no upscale: kept at its size, centred on the full box
    _, small = one(_stripes(40, 20), "100", mode="pad", format="png")
    assert small.size == (100, 100)
    assert close_to(pixels(small)[50, 50], GREEN, 0)
    assert close_to(pixels(small)[5, 5], (255,) * 3, 0)


def test_pad_transparent_when_alpha_kept() -> None:
    _, out = one(_stripes(alpha=True), "100", mode="pad", format="png")
    assert out.mode == "RGBA"
    assert pixels(out)[5, 50, 3] == 0
    assert pixels(out)[50, 50, 3] == 255


def test_small_image_not_upscaled() -> None:
    data = (IMAGES / "300x300_small.png").read_bytes()
    result, out = one(data, "512")
    assert out.size == (300, 300)
    assert result.outputs[0].format == "png"
    assert psnr(out, decode(data)) == float("inf")  # untouched pixels


def test_several_sizes_from_one_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    real_open = Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    data = (IMAGES / "1200x800_landscape.jpg").read_bytes()
    result = process_image(data, opts("512", "256", "64x64", "100x", mode="fit"))
    assert len(opened) == 1
    assert [(o.label, o.width, o.height) for o in result.outputs] == [
        ("512", 512, 341),
        ("256", 256, 171),
        ("64", 64, 43),
        ("100x", 100, 67),
    ]
    for o in result.outputs:
        assert decode(o.data).size == (o.width, o.height)
    assert result.stats["width"] == 512  # stats from the largest output


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (encode(photo_like(64, 48), "JPEG"), "jpeg"),
        (encode(photo_like(64, 48), "PNG"), "png"),
        (encode(photo_like(64, 48), "WEBP"), "webp"),
        (encode(photo_like(64, 48), "BMP"), "jpeg"),
        (encode(photo_like(64, 48), "TIFF"), "jpeg"),
        (encode(photo_like(64, 48).convert("RGBA"), "TIFF"), "png"),
        (encode(photo_like(64, 48).quantize(16), "GIF"), "jpeg"),
        (encode(photo_like(64, 48).quantize(16), "GIF", transparency=0), "png"),
    ],
)
def test_keep_format(source: bytes, expected: str) -> None:
    result = process_image(source, opts("32"))
    out = result.outputs[0]
    assert out.format == expected
    assert out.ext == {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}[expected]
    assert fmt_of(out.data) == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[expected]


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_convert_format(fmt: str) -> None:
    out = process_image(edge("exif_rot6.jpg"), opts("100", format=fmt)).outputs[0]
    assert out.format == fmt
    assert fmt_of(out.data) == fmt.upper()


def test_quality_changes_size_and_metadata_stripped() -> None:
    data = edge("exif_rot6.jpg")
    lo = process_image(data, opts("240", quality=20)).outputs[0]
    hi = process_image(data, opts("240", quality=95)).outputs[0]
    assert len(lo.data) < len(hi.data)
    for out in (lo, hi):
        with Image.open(io.BytesIO(out.data)) as im:
            assert not im.getexif()
            assert "icc_profile" not in im.info
            assert not im.info.get("progressive")


def test_result_is_small_picklable_and_json_stats() -> None:
    result = process_image((IMAGES / "640x480_rgb.jpg").read_bytes(), opts("128"))
    back = pickle.loads(pickle.dumps(result))
    assert back == result
    assert isinstance(back.outputs[0], EncodedImage)
    assert "data" not in repr(result.outputs[0])  # bytes kept out of logs
    stats = json.loads(json.dumps(result.stats))
    assert stats["width"] == 128
    assert stats["height"] == 96
    assert len(stats["dhash"]) == 16
    assert result.original_size == (640, 480)
    assert result.original_format == "jpeg"


# --------------------------------------------------------------------------- draft / accuracy


def _spy_draft(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: Any) -> Any:
        res = real(self, mode, size)
        calls.append(res)
        return res

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(photo_like(2400, 1800, seed=3), "JPEG", quality=90)


def test_draft_used_for_big_jpeg_and_accurate(
    big_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    drafts = _spy_draft(monkeypatch)
    _, out = one(big_jpeg, "512", format="png")
    assert out.size == (512, 384)
    assert drafts
    assert drafts[0] is not None
    _, box = drafts[0]
    assert box[2] == 2400 / 4  # decoded at 1/4 scale: 600x450, still >= 512x384
    with Image.open(io.BytesIO(big_jpeg)) as full:
        full.load()
        reference = full.resize((512, 384), Image.Resampling.LANCZOS)
    assert psnr(out, reference) >= 38.0


def test_draft_keeps_largest_of_several_sizes(
    big_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    drafts = _spy_draft(monkeypatch)
    result = process_image(big_jpeg, opts("128", "1000", format="png"))
    assert drafts[0][1][2] == 2400 / 2  # 1/2 scale: 1200 >= 1000
    big = decode(result.outputs[1].data)
    assert big.size == (1000, 750)
    with Image.open(io.BytesIO(big_jpeg)) as full:
        full.load()
        reference = full.resize((1000, 750), Image.Resampling.LANCZOS)
    assert psnr(big, reference) >= 38.0


def test_reduce_path_for_png_accurate() -> None:
    src = photo_like(2000, 1500, seed=5)
    _, out = one(encode(src, "PNG", compress_level=1), "256", format="png")
    assert out.size == (256, 192)
    assert psnr(out, src.resize((256, 192), Image.Resampling.LANCZOS)) >= 38.0


def test_fill_box_accurate_after_draft(big_jpeg: bytes) -> None:
    _, out = one(big_jpeg, "300x100", mode="fill", format="png")
    with Image.open(io.BytesIO(big_jpeg)) as full:
        full.load()
        # the centred 2400x800 band of the 2400x1800 image
        reference = full.resize((300, 100), Image.Resampling.LANCZOS, box=(0, 500, 2400, 1300))
    assert psnr(out, reference) >= 38.0


# --------------------------------------------------------------------------- bad inputs


def test_truncated_jpeg_refused() -> None:
    with pytest.raises(TruncatedImage, match="truncated"):
        process_image(edge("truncated.jpg"), opts())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_refused() -> None:
    data = encode(photo_like(300, 200), "PNG")
    with pytest.raises(TruncatedImage):
        process_image(data[: len(data) * 6 // 10], opts())


def test_truncated_allowed() -> None:
    _, out = one(edge("truncated.jpg"), "512", allow_truncated=True, format="png")
    assert out.size == (400, 300)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global restored
    # the missing bottom is filled, the top is real picture
    assert pixels(out)[:100].std() > 10


def test_truncation_flag_scoped_across_threads() -> None:
    """Strict calls never see the flag a concurrent lenient call sets."""
    data = edge("truncated.jpg")
    filters_before = list(warnings.filters)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> str:
        lenient = i % 2 == 0
        try:
            process_image(data, opts("64", allow_truncated=lenient))
            return "ok" if lenient else "BUG: strict call accepted a truncated image"
        except TruncatedImage:
            return "BUG: lenient call refused" if lenient else "ok"
        except BaseException as exc:  # pragma: no cover - reported below
            with lock:
                errors.append(exc)
            raise

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(40)))
    assert not errors
    assert set(results) == {"ok"}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert warnings.filters == filters_before  # the temporary Pillow filters are gone


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (edge("zero_bytes.jpg"), "empty"),
        (edge("not_an_image.jpg"), "cannot identify"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "cannot identify|corrupt"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "cannot identify"),  # EPS is never opened
    ],
)
def test_not_an_image(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        process_image(data, opts())


def _no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any) -> Any:
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_bomb_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_decode(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(DecompressionBomb):
        process_image(edge("bomb.png"), opts())
    assert time.perf_counter() - start < 1.0


def test_max_pixels_checked_from_header(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (IMAGES / "640x480_rgb.jpg").read_bytes()
    process_image(data, opts(max_pixels=640 * 480))  # exactly at the limit: fine
    _no_decode(monkeypatch)
    with pytest.raises(DecompressionBomb, match="max_pixels=1000"):
        process_image(data, opts(max_pixels=1000))


def test_pillow_bomb_warning_does_not_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    # 95 MP: above Pillow's warning threshold (89 MP) but below its hard limit; warnings are
    # errors in this test suite, so an escaping DecompressionBombWarning would fail here.
    _no_decode(monkeypatch)
    data = png_header_only(10_000, 9_500)
    with pytest.raises(DecompressionBomb, match="max_pixels"):
        process_image(data, opts(max_pixels=90_000_000))


def test_header_only_png_is_an_error_not_a_grey_image() -> None:
    with pytest.raises((TruncatedImage, DecodeError)):
        process_image(png_header_only(100, 100), opts())


# --------------------------------------------------------------------------- sample set


def test_every_sample_image_processes() -> None:
    files = sorted(p for p in IMAGES.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(files) >= 8
    for path in files:
        expected_w, expected_h = (int(v) for v in path.name.split("_")[0].split(".")[0].split("x"))
        result = process_image(path.read_bytes(), opts())
        assert result.original_size == (expected_w, expected_h), path.name
        out = result.outputs[0]
        scale = min(512 / expected_w, 512 / expected_h, 1.0)
        assert (out.width, out.height) == (round(expected_w * scale), round(expected_h * scale))


def test_last_step_filter_hamming_only_for_shrinks_up_to_2x(
    big_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages import imaging

    used: list[tuple[tuple[int, int], Image.Resampling | None]] = []
    real = Image.Image.resize

    def spy(self: Image.Image, size: Any, resample: Any = None, *a: Any, **k: Any) -> Any:
        used.append((tuple(size), resample))
        return real(self, size, resample, *a, **k)

    monkeypatch.setattr(Image.Image, "resize", spy)
    process_image(big_jpeg, opts("512", "100", format="png"))
    # 2400x1800 drafted to 600x450: 512x384 is a 1.17x shrink, 100x75 a 6x one
    assert ((512, 384), Image.Resampling.HAMMING) in used
    assert ((100, 75), Image.Resampling.LANCZOS) in used
    assert imaging._resample_filter(500, 400, (1000, 800)) is Image.Resampling.LANCZOS  # upscale
    assert imaging._resample_filter(2000, 1500, (1000, 750)) is Image.Resampling.HAMMING
    assert imaging._resample_filter(2001, 1500, (1000, 750)) is Image.Resampling.LANCZOS


# --------------------------------------------------------------------------- thumbnail, encode

_EVERY_SAMPLE = [
    *sorted(p.name for p in IMAGES.iterdir() if p.is_file()),
    "animated.gif",
    "bw_1bit.png",
    "cmyk.jpg",
    "cmyk_adobe_inverted.jpg",
    "exif_rot6.jpg",
    "exif_rot7.jpg",
    "gray16.png",
    "icc_adobergb.jpg",
    "la_alpha.png",
    "palette_transparent.png",
]


def _sample(name: str) -> bytes:
    return (IMAGES / name).read_bytes() if (IMAGES / name).exists() else edge(name)


@pytest.mark.parametrize("name", _EVERY_SAMPLE)
@pytest.mark.parametrize(
    ("size", "mode", "fmt"),
    [
        ("128", "fit", "jpeg"),
        ("96x64", "fill", "png"),
        ("100x60", "pad", "webp"),
        ("2000", "fit", "jpeg"),
    ],
)
def test_thumbnail_then_encode_is_what_process_image_writes(
    name: str, size: str, mode: str, fmt: str
) -> None:
    from stages.imaging import encode_image, thumbnail_image

    data = _sample(name)
    options = opts(size, mode=mode, format=fmt, quality=80, pad_color=(10, 20, 30))
    (expected,) = process_image(data, options).outputs
    image = thumbnail_image(data, options)
    assert image.mode in ("L", "LA", "RGB", "RGBA")
    assert image.info == {}
    assert image.size == (expected.width, expected.height)
    # byte for byte (pad + JPEG would differ for images with alpha: see thumbnail_image)
    assert encode_image(image, fmt, 80) == expected.data


def test_thumbnail_image_of_an_image_that_needs_no_work_outlives_its_file() -> None:
    from stages.imaging import thumbnail_image

    data = encode(photo_like(64, 48), "PNG")  # RGB, no resize (no upscale): the file's own image
    image = thumbnail_image(data, opts("512"))
    assert type(image) is Image.Image
    assert image.size == (64, 48)
    assert close_to(pixels(image), pixels(decode(data)), 0)


def test_thumbnail_image_keeps_alpha_and_pads_with_transparency() -> None:
    from stages.imaging import thumbnail_image

    image = thumbnail_image(edge("la_alpha.png"), opts("100x60", mode="pad"))
    assert image.mode == "LA"
    assert image.size == (100, 60)
    assert image.getpixel((0, 0))[1] == 0  # type: ignore[index]


def test_encode_image_leaves_its_argument_alone_and_converts_what_it_must() -> None:
    from stages.imaging import encode_image

    with Image.open(io.BytesIO(edge("icc_adobergb.jpg"))) as im:
        im.load()
        info = dict(im.info)
        data = encode_image(im, "jpeg", 90)
        assert im.info == info  # the caller's image keeps its profile
    with Image.open(io.BytesIO(data)) as out:
        assert "icc_profile" not in out.info
        assert out.mode == "RGB"
    p_image = Image.new("P", (8, 8))
    assert fmt_of(encode_image(p_image, "jpeg", 90)) == "JPEG"
    assert decode(encode_image(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "jpeg", 90)).getpixel(
        (1, 1)
    ) == pytest.approx((255, 255, 255), abs=2)
    assert fmt_of(encode_image(Image.new("I;16", (4, 4), 1000), "png", 90)) == "PNG"
