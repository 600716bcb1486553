"""One real ``process`` run (a CLI subprocess) over a few thousand small files: every format this
Pillow build can save, in several modes and encoder options, animated GIF/WebP/APNG/TIFF/AVIF/MPO,
mangled names and non-images, spread over sub-folders (one with a non-UTF-8 name).

Each test checks one promise of that single run (the run is made once, by a module fixture):
one record per file, every record terminal and explained, supported formats made into
thumbnails, the others skipped as not images, unique outputs that open, a finished summary.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stages import heif
from stages.imaging import ALLOWED_FORMATS
from tests.trees import files_below, outputs_of, path_bytes, records_by_bytes

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
#: about how many files the tree holds (a few thousand)
TARGET_FILES = 3000

#: Pillow formats the product makes thumbnails of (MPO files are JPEGs: the JPEG plugin opens them)
SUPPORTED = frozenset(ALLOWED_FORMATS) | ({"MPO"} if "JPEG" in ALLOWED_FORMATS else set())
#: formats whose writer needs a handler or program this build does not have (saving raises
#: anyway; listed so no time goes into trying them)
NEEDS_HANDLER = frozenset({"BUFR", "GRIB", "HDF5", "WMF"})
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "RGBX")
SIZES = ((8, 8), (12, 9), (40, 30), (33, 64), (64, 3), (1, 1))
#: encoder options tried per format, besides the defaults
OPTIONS: dict[str, tuple[dict[str, Any], ...]] = {
    "JPEG": ({"progressive": True}, {"quality": 30, "subsampling": 2}, {"optimize": True}),
    "PNG": ({"optimize": True}, {"compress_level": 0}),
    "TIFF": (
        {"compression": "tiff_lzw"},
        {"compression": "tiff_adobe_deflate"},
        {"compression": "packbits"},
        {"compression": "jpeg"},
        {"compression": "group4"},
    ),
    "WEBP": ({"lossless": True}, {"quality": 10}),
    "JPEG2000": ({"irreversible": True}, {"num_resolutions": 2}),
    "AVIF": ({"quality": 30},),
    "ICO": ({"sizes": [(16, 16)]},),
    "GIF": ({"interlace": False},),
}
#: Mode/format pairs of a supported format that the product may not turn into a thumbnail, with
#: the ``error_type`` its clean ``failed`` record must carry. Measured empty with Pillow 13.0: every
#: mode, option and animation Pillow writes in a supported format here becomes a thumbnail.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}

#: ``Image.save`` warnings that are not about the file written: deprecated plugins (IM)
_DEPRECATED_PLUGIN = r".* image format is deprecated"


@dataclass(frozen=True)
class Made:
    """One input file: what wrote it, and whether the product should make a thumbnail of it."""

    fmt: str  # Pillow format, or "text" / "binary" / "empty"
    mode: str
    image: bool  # a format the product supports


def _base(size: tuple[int, int], seed: int) -> Image.Image:
    """Two colour blocks and a gradient, so every mode has something to keep."""
    rnd = random.Random(seed)
    w, h = size
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
    im.paste(colour, (0, 0, max(1, w // 2), h))
    return im


def _in_mode(im: Image.Image, mode: str) -> Image.Image:
    if mode in ("LA", "PA", "RGBA"):
        rgba = im.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(im.size))
        return rgba if mode == "RGBA" else rgba.convert(mode)
    if mode in ("I;16", "I", "F"):
        wide = im.convert("L").convert("I")
        return wide if mode == "I" else wide.convert(mode)
    return im.convert(mode)


def _encode(im: Image.Image | list[Image.Image], fmt: str, options: dict[str, Any]) -> bytes | None:
    """The encoded file, or None when Pillow cannot write this mode/option in this format."""
    buf = io.BytesIO()
    frames = im if isinstance(im, list) else [im]
    extra = {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _DEPRECATED_PLUGIN, DeprecationWarning)
            frames[0].save(buf, fmt, **extra, **options)
    except Warning:
        raise  # any other warning is an error in this suite
    except Exception:  # Pillow raises OSError, ValueError, KeyError, TypeError… for "can't"
        return None
    return buf.getvalue()


def _extension(fmt: str, mode: str) -> str:
    if fmt == "PPM":
        return {"1": ".pbm", "L": ".pgm", "I;16": ".pgm", "I": ".pgm", "F": ".pfm"}.get(
            mode, ".ppm"
        )
    special = {"JPEG": ".jpg", "TIFF": ".tif", "JPEG2000": ".jp2", "SPIDER": ".spider"}
    if fmt in special:
        return special[fmt]
    found = [e for e, f in Image.registered_extensions().items() if f == fmt]
    return found[0] if found else f".{fmt.lower()}"


def _fits(fmt: str, mode: str, options: dict[str, Any]) -> bool:
    """Skip option/mode pairs libtiff refuses (it says so on stderr before Pillow raises)."""
    compression = options.get("compression") if fmt == "TIFF" else None
    if compression == "jpeg":
        return mode in ("L", "RGB", "YCbCr", "CMYK")
    if compression == "group4":
        return mode == "1"
    return True


def _recipes() -> list[tuple[str, str, dict[str, Any]]]:
    """Every (format, mode, options) this Pillow build writes (tried on a tiny image)."""
    Image.init()
    if heif.installed():  # HEIF is then a supported format: its writer comes with the plugin,
        heif.register()  # which the process registers on demand (this test alone had none)
    found = []
    for fmt in sorted(set(Image.SAVE) - NEEDS_HANDLER):
        for mode in MODES:
            for options in ({}, *OPTIONS.get(fmt, ())):
                if not _fits(fmt, mode, options):
                    continue
                if _encode(_in_mode(_base((8, 8), 0), mode), fmt, options) is not None:
                    found.append((fmt, mode, options))
    return found


@dataclass
class Tree:
    root: Path
    files: dict[bytes, Made]

    def add(self, rel: bytes, data: bytes, made: Made) -> None:
        path = os.path.join(os.fsencode(self.root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        assert rel not in self.files, rel
        self.files[rel] = made


FOLDERS = (b"", b"d0", b"d1/deep", b"d2", b"nested/a/b", b"dir\xe9\xff")


def _animated(tree: Tree, n: int) -> None:
    """Animated files in the formats that have them (the first frame makes the thumbnail)."""
    for i, size in enumerate(SIZES[:4]):
        frames = [_base(size, n + i * 7 + k) for k in range(3)]
        pal = [f.convert("P") for f in frames]
        for fmt, name, images, options in (
            ("GIF", b"anim_%d.gif", pal, {"duration": 40, "loop": 0}),
            ("WEBP", b"anim_%d.webp", frames, {"duration": 40}),
            ("PNG", b"anim_%d.apng", frames, {"duration": 40}),
            ("PNG", b"anim_%d.png", frames, {"duration": 40, "disposal": 1}),
            ("TIFF", b"pages_%d.tif", frames, {}),
            ("AVIF", b"anim_%d.avif", frames, {"duration": 40}),
            ("MPO", b"multi_%d.mpo", frames, {}),
        ):
            data = _encode(images, fmt, options)
            if data is not None:
                tree.add(b"anim/" + name % i, data, Made(fmt, images[0].mode, fmt in SUPPORTED))


def _mangled(tree: Tree) -> None:
    """Names that are hard to get right, each holding a known kind of content."""
    jpeg = _encode(_base((20, 15), 1), "JPEG", {})
    png = _encode(_base((20, 15), 2), "PNG", {})
    gif = _encode(_base((20, 15), 3).convert("P"), "GIF", {})
    webp = _encode(_base((20, 15), 4), "WEBP", {})
    pbm = _encode(_base((20, 15), 5).convert("1"), "PPM", {})
    assert jpeg
    assert png
    assert gif
    assert webp
    assert pbm
    rnd = random.Random(7)
    noise = b"\x01" + rnd.randbytes(300)  # 0x01 starts no magic number
    images = {
        b"caf\xe9_photo.jpg": (jpeg, "JPEG"),
        b"\xff\xfe\xfd.png": (png, "PNG"),
        b"\x80\x81": (gif, "GIF"),
        b"n" * 251 + b".png": (png, "PNG"),
        b"g" * 251 + b".gif": (gif, "GIF"),
        b"\xe9" * 255: (jpeg, "JPEG"),
        b"j" * 255: (jpeg, "JPEG"),
        b"noext_jpeg": (jpeg, "JPEG"),
        b"noext_png": (png, "PNG"),
        b"noext_webp": (webp, "WEBP"),
        b"really_jpeg.png": (jpeg, "JPEG"),
        b"really_png.jpg": (png, "PNG"),
        b"really_gif.webp": (gif, "GIF"),
        b"bitmap.pbm": (pbm, "PPM"),
        b"photo.jfif": (jpeg, "JPEG"),
        b"photo.JPEG": (jpeg, "JPEG"),
        # clashes: an input's output name that is another input's own name
        b"a.gif": (gif, "GIF"),
        b"a.gif.jpg": (jpeg, "JPEG"),
        b"a.gif.png": (png, "PNG"),
        b"A.GIF.webp": (webp, "WEBP"),
        b"x": (jpeg, "JPEG"),
        b"x.jpg": (jpeg, "JPEG"),
        b"y": (png, "PNG"),
        b"Y.PNG": (png, "PNG"),
        b"b": (png, "PNG"),  # beside the folder b.png/
        b"b.png/inside.png": (png, "PNG"),
    }
    for name, (data, fmt) in images.items():
        tree.add(b"mangled/" + name, data, Made(fmt, "", True))
    others = {
        b"notes.txt": (b"some notes, not an image\n" * 20, "text"),
        b"notes.jpg": (b"text named like a JPEG\n", "text"),
        b"noise.bin": (noise, "binary"),
        b"noise.png": (noise, "binary"),
        b"empty.jpg": (b"", "empty"),
        b"empty": (b"", "empty"),
        b"\xfe\xfftext": (b"plain text\n", "text"),
    }
    for name, (data, kind) in others.items():
        tree.add(b"mangled/" + name, data, Made(kind, "", False))


def build_tree(root: Path) -> Tree:
    tree = Tree(root, {})
    _mangled(tree)
    _animated(tree, 100)
    recipes = _recipes()
    n = 0
    while len(tree.files) < TARGET_FILES:
        fmt, mode, options = recipes[n % len(recipes)]
        size = SIZES[(n // len(recipes)) % len(SIZES)]
        data = _encode(_in_mode(_base(size, n), mode), fmt, options)
        if data is not None:  # some sizes are not writable (an ICO of 1x1 pixels…)
            folder = FOLDERS[n % len(FOLDERS)]
            name = b"%05d_%s_%s%s" % (
                n,
                fmt.encode(),
                mode.replace(";", "_").encode(),
                _extension(fmt, mode).encode(),
            )
            rel = name if folder == b"" else folder + b"/" + name
            tree.add(rel, data, Made(fmt, mode, fmt in SUPPORTED))
        n += 1
    return tree


@dataclass(frozen=True)
class Run:
    tree: Tree
    out: Path
    done: subprocess.CompletedProcess[str]
    records: dict[bytes, dict[str, Any]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("many")
    tree = build_tree(base / "in")
    out = base / "out"
    command = [sys.executable, "-m", "pipeline", "process", str(tree.root), "--output", str(out)]
    done = subprocess.run(
        [*command, "--size", str(SIZE), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    records = records_by_bytes(out) if (out / "manifest.jsonl").exists() else {}
    return Run(tree, out, done, records)


def _problems(run: Run, bad: Callable[[bytes, Made, dict[str, Any]], str | None]) -> list[str]:
    found = []
    for key, made in sorted(run.tree.files.items()):
        rec = run.records.get(key)
        if rec is not None:
            why = bad(key, made, rec)
            if why is not None:
                found.append(f"{key!r} ({made.fmt} {made.mode}): {why}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_run_exits_0_or_1(run: Run) -> None:
    assert len(run.tree.files) >= 2000
    assert run.done.returncode in (0, 1), run.done.stderr[-3000:]
    assert "Traceback" not in run.done.stderr, run.done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_record_per_file(run: Run) -> None:
    on_disk = set(files_below(os.fsencode(run.tree.root)))
    assert on_disk == set(run.tree.files)
    missing = sorted(on_disk - set(run.records))
    extra = sorted(set(run.records) - on_disk)
    assert not missing, f"missing {missing[:20]}, extra {extra[:20]}"
    assert not extra, f"missing {missing[:20]}, extra {extra[:20]}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_record_is_terminal_and_explained(run: Run) -> None:
    def bad(_key: bytes, _made: Made, rec: dict[str, Any]) -> str | None:
        status = rec["status"]
        if status == "skipped" and not rec.get("reason"):
            return "skipped without a reason"
        if status == "failed" and not (rec.get("error_type") and rec.get("error")):
            return f"failed without error_type/error: {rec}"
        if status not in ("ok", "skipped", "failed"):
            return f"status {status}"
        return None

    problems = _problems(run, bad)
    assert not problems, "\n".join(problems[:50])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_supported_formats_become_thumbnails(run: Run) -> None:
    def bad(_key: bytes, made: Made, rec: dict[str, Any]) -> str | None:
        if not made.image:
            return None
        known = KNOWN_FAILURES.get((made.fmt, made.mode))
        if rec["status"] == "failed" and rec["error_type"] == known and rec["error"]:
            return None  # a clean failure of a mode the product cannot read (listed above)
        if rec["status"] != "ok":
            why = rec.get("error") or rec.get("reason")
            return f"{rec['status']}: {rec.get('error_type')} {why}"
        outputs = outputs_of(rec)
        if len(outputs) != 1:
            return f"{len(outputs)} outputs"
        o = outputs[0]
        if not (1 <= o["width"] <= SIZE and 1 <= o["height"] <= SIZE):
            return f"output of {o['width']}x{o['height']}"
        return None

    problems = _problems(run, bad)
    assert not problems, "\n".join(problems[:50])
    made_ok = {m.fmt for k, m in run.tree.files.items() if run.records[k]["status"] == "ok"}
    assert made_ok >= SUPPORTED, f"no thumbnail from {sorted(SUPPORTED - made_ok)}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unsupported_formats_are_skipped_as_not_images(run: Run) -> None:
    def bad(_key: bytes, made: Made, rec: dict[str, Any]) -> str | None:
        if made.image:
            return None
        reason = str(rec.get("reason"))
        if rec["status"] != "skipped" or not reason.startswith("not an image or data file"):
            return f"{rec['status']}: {rec.get('error_type')} {rec.get('error') or reason}"
        return None

    problems = _problems(run, bad)
    assert not problems, "\n".join(problems[:50])
    skipped_formats = {m.fmt for m in run.tree.files.values() if not m.image}
    assert {"PDF", "TGA", "PCX", "text", "binary", "empty"} <= skipped_formats


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outputs_are_unique_and_open(run: Run) -> None:
    owner: dict[bytes, bytes] = {}
    clashes = []
    for key, rec in sorted(run.records.items()):
        for o in outputs_of(rec):
            path = path_bytes(o)
            if path in owner:
                clashes.append(f"{key!r} and {owner[path]!r} both write {path!r}")
            owner[path] = key
    assert not clashes, "\n".join(clashes[:50])
    written = set(files_below(os.fsencode(run.out / str(SIZE))))
    listed = {p.removeprefix(b"%d/" % SIZE) for p in owner}
    assert written == listed, (sorted(written - listed)[:20], sorted(listed - written)[:20])
    for path, key in owner.items():
        with Image.open(os.fsdecode(os.path.join(os.fsencode(run.out), path))) as im:
            im.load()
            assert max(im.size) <= SIZE, (key, path, im.size)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_summary_says_finished(run: Run) -> None:
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["finished"] is True
    assert sum(summary["counts"].values()) == len(run.tree.files)
    assert summary["interrupted"] is False
    assert summary["error"] is None
