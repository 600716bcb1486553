"""The photo set of the image benchmark: large photo-like JPEGs, generated once and cached.

``python -m bench.photos`` (or :func:`ensure`) writes, under ``bench/.data/photos/`` (git-ignored):

* ``12mp/``: 100 JPEGs of 4000x3000,
* ``2mp/``: 200 JPEGs of 1732x1155,

all quality 90, 4:2:0, baseline (Pillow's defaults), no metadata. Only missing files are made, in
a process pool; files are written atomically, so an interrupted run leaves no partial JPEG.

The pixels adapt ``photo_like`` of ``sample_data/make_samples.py`` (smooth structure, gradients,
grain) so that the files compress and decode like photos (1.5-2 bits per pixel at q90, i.e.
2-3 MB per 12 MP file) rather than like flat test cards: large smooth colour cells of a varied
size, gradients, a finer octave of luminance texture and luma plus a little chroma grain (the
grain is what a downscaler without proper low-pass filtering aliases into its output).

No hard-edged shapes on purpose: with a few dozen saturated objects the 4:2:0 q85 encode of the
512 px output alone (before any resampling error) drops to ~33-36 dB PSNR for every method, which
hides the resamplers' differences. Deterministic: image ``i`` of a set always uses the same seed.
When :data:`GENERATOR` changes, the cached files of a set are made again.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / ".data" / "photos"
QUALITY = 90
GENERATOR = "2"  # bump when photo_array changes: cached sets are then regenerated


@dataclass(frozen=True)
class PhotoSet:
    name: str
    width: int
    height: int
    count: int
    seed: int

    @property
    def folder(self) -> Path:
        return DATA / self.name

    def path(self, i: int) -> Path:
        return self.folder / f"{self.name}_{i:04d}.jpg"

    def paths(self) -> list[Path]:
        return [self.path(i) for i in range(self.count)]

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


SETS: dict[str, PhotoSet] = {
    "12mp": PhotoSet("12mp", 4000, 3000, 100, seed=12_000),
    "2mp": PhotoSet("2mp", 1732, 1155, 200, seed=2_000),
}


def _cells(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Random colours on a grid of ``cell``-pixel cells, bicubic-interpolated to full size."""
    grid = rng.integers(0, 256, (max(2, height // cell), max(2, width // cell), 3), dtype=np.uint8)
    smooth = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32)


def photo_array(width: int, height: int, *, seed: int) -> np.ndarray:
    """An RGB uint8 array that compresses like a photo (see the module docstring)."""
    rng = np.random.default_rng(seed)
    # smooth structure + gradients: photo_like of sample_data/make_samples.py, varied cell size
    img = _cells(rng, width, height, int(rng.integers(70, 120)))
    img *= 0.6
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    img += 60.0 * yy + 40.0 * xx * np.array([1.0, 0.5, -0.5], dtype=np.float32)
    # a finer octave of luminance texture (still a few pixels wide at 512 px), centred on zero
    cell = int(rng.integers(24, 40))
    grid = rng.integers(0, 256, (height // cell, width // cell), dtype=np.uint8)
    texture = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    detail = np.asarray(texture, dtype=np.float32)
    detail -= 128.0
    detail *= float(rng.uniform(0.06, 0.12))
    img += detail[:, :, None]
    del detail
    # grain: mostly luma, a little chroma (float32 normals: several times faster than float64)
    grain = float(rng.uniform(3.0, 5.0))
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    noise *= grain
    img += noise
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    noise *= grain / 3
    img += noise
    del noise
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def make_one(width: int, height: int, seed: int, path: str) -> str:
    """Generate one JPEG at ``path`` (atomically); returns the path."""
    buf = io.BytesIO()
    Image.fromarray(photo_array(width, height, seed=seed)).save(buf, "JPEG", quality=QUALITY)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, target)
    return path


def ensure(names: Sequence[str] = tuple(SETS), *, verbose: bool = True) -> dict[str, list[Path]]:
    """Make the missing files of the named sets; return every set's file list (sorted)."""
    for name in names:
        stamp = DATA / f"{name}.generator"  # outside the folder, which holds only the JPEGs
        if stamp.is_file() and stamp.read_text().strip() == GENERATOR:
            continue
        for old in SETS[name].folder.glob("*.jpg"):
            old.unlink()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{GENERATOR}\n")  # before generating: an interrupted run resumes
    jobs = [
        (s.width, s.height, s.seed + i, str(s.path(i)))
        for s in (SETS[n] for n in names)
        for i in range(s.count)
        if not s.path(i).exists()
    ]
    if jobs:
        started = time.perf_counter()
        if verbose:
            print(f"bench.photos: generating {len(jobs)} JPEGs under {DATA} ...", file=sys.stderr)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=ctx) as pool:
            for _ in pool.map(make_one, *zip(*jobs, strict=True)):
                pass
        if verbose:
            took = time.perf_counter() - started
            print(f"bench.photos: done in {took:.0f} s", file=sys.stderr)
    return {n: SETS[n].paths() for n in names}


if __name__ == "__main__":
    sets = ensure(sys.argv[1:] or tuple(SETS))
    for name, files in sets.items():
        total = sum(p.stat().st_size for p in files)
        print(f"{name}: {len(files)} files, {total / 1e6:.0f} MB, {SETS[name].folder}")


def _same(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_size, sa.st_mtime_ns) == (sb.st_size, sb.st_mtime_ns)


def link_folder(folder: Path, files: Sequence[Path]) -> Path:
    """``folder`` holding exactly ``files`` (hard links, or copies where links fail); rebuilt
    only when its content differs."""
    present = sorted(p.name for p in folder.glob("*.jpg"))
    if present != sorted(p.name for p in files) or not all(
        _same(folder / p.name, p) for p in files
    ):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for src in files:
            try:
                os.link(src, folder / src.name)
            except OSError:
                shutil.copy2(src, folder / src.name)
    return folder
