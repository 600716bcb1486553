"""The public API of ``stages``: plain functions, stage factories, and pipelines that mix them with
a user's own stages (local folders and a loopback server)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import stages
from pipeline import ConfigError, Pipeline, Record, Skip, Stage, run_stage, stage
from stages.files import Loaded
from stages.imaging import ResizeOptions, process_image, thumbnail_image
from stages.options import Size, as_size, as_sizes
from tests.conftest import by_key
from tests.http_server import serve
from tests.images import EDGE, IMAGES, edge

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {
    "thumbnail",
    "image_stats",
    "encode",
    "walk",
    "read_stage",
    "resize_stage",
    "download_stage",
    "write_stage",
    "Loaded",
    "Rendered",
    "ImageError",
    "DecodeError",
    "TruncatedImage",
    "DecompressionBomb",
    "OutputTooLarge",
    "UnsupportedImage",
}


# --------------------------------------------------------------------------- the package


def test_the_package_exports_exactly_the_api() -> None:
    assert set(stages.__all__) == PUBLIC
    for name in stages.__all__:
        value = getattr(stages, name)
        assert not isinstance(value, type(stages)), name  # never a submodule of that name
        assert name in dir(stages)
    with pytest.raises(AttributeError):
        _ = stages.no_such_name
    assert issubclass(stages.DecodeError, stages.ImageError)


def _imported_after(code: str) -> list[str]:
    probe = (
        f"{code}\nimport sys\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'aiohttp', 'pyarrow', 'asyncio', 'stages.api',"
        " 'stages.factories') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().replace("'", '"'))
    return found


def test_import_stages_imports_nothing_and_building_stages_no_image_library() -> None:
    assert _imported_after("import stages") == []
    built = _imported_after(
        "import stages\n"
        "stages.walk('sample_data/images'); stages.read_stage(); stages.resize_stage(256)\n"
        "stages.write_stage('out'); stages.Loaded, stages.Rendered, stages.ImageError"
    )
    assert built == ["stages.factories"]
    # the download stage brings aiohttp (and asyncio), still no image library
    assert "PIL" not in _imported_after("import stages; stages.download_stage()")


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (512, Size(width=512, height=512)),
        ("512", Size(width=512, height=512)),
        ("640x480", Size(width=640, height=480)),
        ((640, 480), Size(width=640, height=480)),
        ((640, None), Size(width=640, height=None)),
        ("x480", Size(width=None, height=480)),
        (Size(width=3, height=4), Size(width=3, height=4)),
    ],
)
def test_a_size_in_any_spelling(value: Any, expected: Size) -> None:
    assert as_size(value) == expected
    assert as_sizes(value) == (expected,)


def test_several_sizes_are_a_list() -> None:
    assert as_sizes([256, "640x480", (10, 20)]) == (
        Size(width=256, height=256),
        Size(width=640, height=480),
        Size(width=10, height=20),
    )
    assert as_sizes((256, 512)) == (Size(width=256, height=512),)  # a tuple of two ints: one box
    assert as_sizes((256, "64")) == (Size(width=256, height=256), Size(width=64, height=64))


@pytest.mark.parametrize(
    "bad", [0, -1, True, 2.5, "big", "0x0", [(1, 2, 3)], (None, None), [], None]
)
def test_invalid_sizes_are_value_errors(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"(?i)size"):
        as_sizes(bad)


# --------------------------------------------------------------------------- plain functions


def test_thumbnail_takes_a_path_or_bytes_and_is_the_resize_stages_image() -> None:
    path = IMAGES / "640x480_rgb.jpg"
    data = path.read_bytes()
    expected = thumbnail_image(data, ResizeOptions(sizes=(Size(width=200, height=200),)))
    for source in (path, str(path), data, bytearray(data), memoryview(data)):
        image = stages.thumbnail(source, 200)
        assert image.size == (200, 150)
        assert image.tobytes() == expected.tobytes()
    filled = stages.thumbnail(data, "100x100", mode="fill")
    assert filled.size == (100, 100)
    assert stages.thumbnail(data, (64, 64), mode="pad").size == (64, 64)
    assert stages.thumbnail(data, "1000x").size == (640, 480)  # no upscale
    assert stages.thumbnail(data, "1000x", upscale=True).size == (1000, 750)


def test_thumbnail_careful_decode_orientation_colour_and_bombs() -> None:
    # stored 160x240 with EXIF orientation 6: shown (and returned) 240x160
    assert stages.thumbnail(EDGE / "exif_rot6.jpg", 64).size == (64, 43)
    assert stages.thumbnail(EDGE / "cmyk.jpg", 64).mode == "RGB"
    assert stages.thumbnail(EDGE / "la_alpha.png", 64).mode == "LA"
    assert stages.thumbnail(EDGE / "gray16.png", 64).mode == "L"
    assert stages.thumbnail(EDGE / "icc_adobergb.jpg", 64).info == {}  # profile applied
    with pytest.raises(stages.DecompressionBomb):
        stages.thumbnail(IMAGES / "640x480_rgb.jpg", 64, max_pixels=1000)
    with pytest.raises(stages.DecodeError):
        stages.thumbnail(edge("not_an_image.jpg"), 64)
    with pytest.raises(stages.TruncatedImage):
        stages.thumbnail(edge("truncated.jpg"), 64)
    assert stages.thumbnail(edge("truncated.jpg"), 64, allow_truncated=True).width <= 64


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": "huge"}, ValueError),
        ({"size": 0}, ValueError),
        ({"mode": "zoom"}, ValueError),
        ({"pad_color": (1, 2)}, ValueError),
        ({"max_pixels": 0}, ValueError),
        ({"source": 42}, TypeError),
    ],
)
def test_thumbnail_refuses_bad_arguments_before_any_work(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    args: dict[str, Any] = {"source": IMAGES / "640x480_rgb.jpg", "size": 64, **kwargs}
    with pytest.raises(error):
        stages.thumbnail(args.pop("source"), args.pop("size"), **args)


def test_encode_formats_quality_and_validation() -> None:
    image = stages.thumbnail(IMAGES / "1024x768_rgba.png", 64)
    assert image.mode == "RGBA"
    for fmt, pillow in (("jpeg", "JPEG"), ("JPG", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        with Image.open(io.BytesIO(stages.encode(image, fmt))) as out:
            assert out.format == pillow
            assert out.mode == ("RGB" if pillow == "JPEG" else "RGBA")  # alpha flattened for JPEG
    small, big = (len(stages.encode(image, "jpeg", quality=q)) for q in (10, 95))
    assert small < big
    for bad in (
        {"format": "gif"},
        {"format": 3},
        {"quality": 0},
        {"quality": 101},
        {"quality": 9.5},
    ):
        (name,) = bad
        with pytest.raises(ValueError, match=f"^{name} must be "):
            stages.encode(image, **bad)


def test_image_stats_of_the_thumbnail_are_the_manifests_statistics() -> None:
    data = (IMAGES / "800x1200_portrait.jpg").read_bytes()
    result = process_image(data, ResizeOptions(sizes=(Size(width=256, height=256),)))
    stats = stages.image_stats(stages.thumbnail(data, 256))
    assert stats == result.stats
    assert set(stats) == {
        "width",
        "height",
        "mode",
        "mean",
        "std",
        "histogram",
        "sharpness",
        "dhash",
    }
    json.dumps(stats)


# --------------------------------------------------------------------------- factories


def test_factories_give_stages_of_the_right_kind() -> None:
    read, resize = stages.read_stage(), stages.resize_stage([256, "64x48"], workers=3)
    download, write = stages.download_stage(workers=5), stages.write_stage("out")
    assert all(isinstance(s, Stage) for s in (read, resize, download, write))
    assert (read.kind, resize.kind, download.kind, write.kind) == (
        "thread",
        "process",
        "async",
        "thread",
    )
    assert (read.name, resize.name, download.name, write.name) == (
        "read",
        "resize",
        "download",
        "write",
    )
    assert resize.workers == 3
    assert resize.capacity == 6
    (options,) = resize.args
    assert [s.label for s in options.sizes] == ["256", "64x48"]
    assert download.workers == 5
    assert download.context is not None
    assert download.context_arg == "session"
    assert stages.resize_stage(256, format="JPG").args[0].format == "jpeg"
    assert stages.resize_stage(64, name="small").name == "small"


@pytest.mark.parametrize(
    "build",
    [
        lambda: stages.resize_stage("huge"),
        lambda: stages.resize_stage([]),
        lambda: stages.resize_stage(256, mode="zoom"),  # type: ignore[arg-type]
        lambda: stages.resize_stage(256, format="gif"),
        lambda: stages.resize_stage(256, quality=0),
        lambda: stages.resize_stage(256, workers=0),
        lambda: stages.resize_stage(256, workers="2"),  # type: ignore[arg-type]
        lambda: stages.resize_stage(256, timeout=-1),
        lambda: stages.read_stage(max_bytes=0),
        lambda: stages.read_stage(name=""),
        lambda: stages.download_stage(connect_timeout=0),
        lambda: stages.download_stage(retries=-1),
        lambda: stages.download_stage(limit_per_host=0),
        lambda: stages.download_stage(workers=0),
        lambda: stages.download_stage(user_agent="two\nlines"),
        lambda: stages.write_stage(""),
        lambda: stages.write_stage(IMAGES / "640x480_rgb.jpg"),  # a file, not a folder
        lambda: stages.walk(),
        lambda: stages.walk("no/such/folder"),
        lambda: stages.walk(IMAGES, include=[3]),  # type: ignore[list-item]
        lambda: stages.walk(IMAGES, output=IMAGES),  # outputs would be read back
        lambda: stages.walk(IMAGES / "nested", output=IMAGES),
    ],
)
def test_factories_refuse_bad_options_when_called(build: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert isinstance(info.value, ValueError)
    assert str(info.value)


# --------------------------------------------------------------------------- pipelines


def mark_gifs(loaded: Loaded) -> Loaded:
    """A user's own thread stage between read and resize."""
    if loaded.rel.endswith(".gif"):
        raise Skip("no GIFs here")
    return loaded


def only_sharp(rendered: stages.Rendered) -> stages.Rendered:
    """A user's own stage after resize, on the statistics."""
    sharpness = rendered.result.stats["sharpness"]
    assert isinstance(sharpness, float)
    if sharpness < 1.0:
        raise Skip("blurry")
    return rendered


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(IMAGES, folder)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "flat.png").write_bytes(_png(Image.new("RGB", (40, 30), (90, 90, 90))))
    return folder


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_a_user_pipeline_over_a_folder(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipe = Pipeline(
        [
            stages.read_stage(),
            stage(mark_gifs, kind="thread"),
            stages.resize_stage([128, "64x48"], mode="fill", workers=2),
            stage(only_sharp, kind="thread"),
            stages.write_stage(out),
        ]
    )
    result = pipe.run(stages.walk(photos), output=out, progress=False)
    assert result.exit_code == 0
    recs = by_key(out)
    gif = recs["500x500_palette.gif"]
    assert (gif["status"], gif["stage"], gif["reason"]) == ("skipped", "mark_gifs", "no GIFs here")
    flat = recs["flat.png"]
    assert (flat["status"], flat["stage"], flat["reason"]) == ("skipped", "only_sharp", "blurry")
    notes = recs["notes.txt"]
    assert (notes["status"], notes["stage"]) == ("skipped", "read")
    assert notes["reason"].startswith("not an image or data file: text")
    rec = recs["nested/1000x667_nested.jpg"]
    assert rec["status"] == "ok"
    paths = sorted(o["path"] for o in rec["result"]["outputs"])
    assert paths == ["128/nested/1000x667_nested.jpg", "64x48/nested/1000x667_nested.jpg"]
    with Image.open(out / paths[1]) as im:
        assert im.size == (64, 48)
    # the record's statistics are those of the largest output, as stages.image_stats gives them
    thumb = stages.thumbnail(photos / "nested" / "1000x667_nested.jpg", 128, mode="fill")
    assert rec["result"]["stats"] == stages.image_stats(thumb)
    ok = [k for k, r in recs.items() if r["status"] == "ok"]
    assert len(ok) == len(list(IMAGES.rglob("*.*"))) - 1  # every sample image but the GIF

    again = pipe.run(stages.walk(photos), output=out, progress=False)
    # resume: nothing to redo; what a stage declined (the GIF, the flat image, the notes) is
    # skipped again, with the same reason
    skipped = {k for k, r in recs.items() if r["status"] == "skipped"}
    assert skipped == {"500x500_palette.gif", "flat.png", "notes.txt"}
    assert again.counts == {"reused": len(recs) - len(skipped), "skipped": len(skipped)}
    assert {k for k, r in by_key(out).items() if r["status"] == "skipped"} == skipped


def test_walk_leaves_the_output_folder_out(photos: Path) -> None:
    out = photos / "out"
    (out / "256").mkdir(parents=True)
    (out / "256" / "old.jpg").write_bytes((IMAGES / "640x480_rgb.jpg").read_bytes())
    found = {x.key: x for x in stages.walk(photos, output=out)}
    skipped = found["out/"]
    assert isinstance(skipped, Record)
    assert (skipped.reason or "").startswith("the output folder")
    assert not any(k.startswith("out/256") for k in found)
    jpegs = {x.key for x in stages.walk(photos, output=out, include="*.jpg")}  # one glob
    assert "640x480_rgb.jpg" in jpegs
    assert "300x300_small.png" not in jpegs


def test_read_stage_takes_paths_and_passes_downloads(tmp_path: Path) -> None:
    npy = tmp_path / "array.jpg"
    npy.write_bytes(b"\x93NUMPY" + b"\0" * 100)  # an array whatever its name
    loaded = Loaded("x.jpg", b"bytes")
    values = [str(IMAGES / "640x480_rgb.jpg"), IMAGES / "900x600.webp", str(npy), loaded, 42]
    recs = {
        r.key: r
        for r in run_stage(stages.read_stage(), [(str(i), v) for i, v in enumerate(values)])
    }
    assert recs["0"].value.rel == "640x480_rgb.jpg"
    assert recs["0"].value.data == (IMAGES / "640x480_rgb.jpg").read_bytes()
    assert recs["1"].value.rel == "900x600.webp"
    assert (recs["2"].status, recs["2"].reason) == ("skipped", "not an image: a NumPy array (.npy)")
    assert recs["3"].value is loaded
    assert recs["4"].status == "failed"
    assert recs["4"].error_type == "TypeError"
    assert "stages.walk()" in (recs["4"].error or "")


def test_stages_say_what_they_take(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipe = Pipeline([stages.resize_stage(64, workers=1), stages.write_stage(out)])
    (rec,) = pipe.iter([("k", "not loaded bytes")])
    assert rec.status == "failed"
    assert rec.error_type == "TypeError"
    assert "read_stage or download_stage" in (rec.error or "")
    (rec,) = run_stage(stages.write_stage(out), [("k", b"bytes")])
    assert "resize_stage" in (rec.error or "")


def test_a_user_pipeline_over_urls_from_a_loopback_server(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve(IMAGES) as base:
        urls = [f"{base}/640x480_rgb.jpg", f"{base}/nested/1000x667_nested.jpg", f"{base}/gone.jpg"]
        pipe = Pipeline(
            [
                stages.download_stage(allow_private_hosts=True, retries=0, total_timeout=10),
                stages.resize_stage(96, format="webp", workers=1),
                stages.write_stage(out),
            ]
        )
        result = pipe.run(urls, output=out, progress=False)
        refused = Pipeline([stages.download_stage(), stages.resize_stage(96)]).run(
            urls[:1], progress=False
        )
    assert result.exit_code == 1  # the missing one
    recs = by_key(out)
    gone = recs[urls[2]]
    assert (gone["status"], gone["error_type"], gone["stage"]) == (
        "failed",
        "HTTPStatusError",
        "download",
    )
    rec = recs[urls[1]]
    assert rec["status"] == "ok"
    assert rec["result"]["download"]["http_status"] == 200
    (output,) = rec["result"]["outputs"]
    assert output["path"].startswith("96/127.0.0.1_")
    assert output["path"].endswith(".webp")
    with Image.open(out / output["path"]) as im:
        assert im.format == "WEBP"
        assert max(im.size) == 96
    assert refused.counts == {"failed": 1}  # loopback is private: refused by default
