"""Resize throughput on large photo-like JPEGs: the product vs the usual ways to do the same job.

Sets (made and cached by :mod:`bench.photos`): 12 MP (4000x3000) and 2 MP (1732x1155) JPEGs, q90.
Every method turns each input into a JPEG q85 that fits a 512x512 box (keeping the aspect ratio):

* **process**: the product end to end, ``python -m pipeline process <set> --output <tmp> --size 512
  --quiet --force`` as a subprocess (interpreter start-up, statistics and manifest included);
* **(a) sequential**: a plain Pillow loop: open, convert RGB, Lanczos ``resize`` from the full
  resolution, save;
* **(b) textbook**: a ``ThreadPoolExecutor`` reads the bytes, ``multiprocessing.Pool(cores).map``
  decodes (full resolution), resizes (Lanczos) and saves (spawn context, pool start-up included);
* **(c) vipsthumbnail**: one ``vipsthumbnail -s 512`` process per core over a share of the files
  (left out when the tool is not installed);
* **(d) pyvips**: ``pyvips.Image.thumbnail(path, 512)`` + ``write_to_file`` in a process pool (left
  out when ``import pyvips`` fails);
* **(L) decode-only limit**: each JPEG decoded at the smallest DCT scale that still covers the
  target (``draft`` + ``load``) on all cores, nothing else; timed on an already started pool, so
  it is an upper bound for anything that has to decode the files.

Throughput is images/s and input megapixels/s, median over the runs (the method order rotates
from run to run, as the machine is shared). Quality: PSNR (RGB, 8 bit) of each method's output for
a sample of the images against a reference made by a full-resolution decode + Lanczos resize to
the product's output size, computed on the outputs of the last run.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench import photos

REPO = Path(__file__).resolve().parent.parent
TARGET = 512
QUALITY = 85
SAMPLE = 10
_TMP = photos.DATA.parent / "tmp"

X = "\N{MULTIPLICATION SIGN}"  # of the ratio columns
TARGETS = {"vips": 1.4, "sequential": 8.0, "decode": 0.7, "psnr": 40.0}


def fit_size(w: int, h: int, box: int = TARGET) -> tuple[int, int]:
    """Output size of a ``fit`` into a box x box square, rounded as ``stages.imaging`` does."""
    s = min(box / w, box / h, 1.0)
    return max(1, min(box, round(w * s))), max(1, min(box, round(h * s)))


# --------------------------------------------------------------------------- per-image workers
# module-level functions of picklable arguments: they run in spawned pool workers


def _resize_save(im: Image.Image, out: str) -> None:
    rgb = im.convert("RGB")
    rgb.resize(fit_size(*rgb.size), Image.Resampling.LANCZOS).save(out, "JPEG", quality=QUALITY)


def _textbook_one(job: tuple[bytes, str]) -> None:
    data, out = job
    with Image.open(io.BytesIO(data)) as im:
        _resize_save(im, out)


def _pyvips_one(job: tuple[str, str]) -> None:
    import pyvips

    src, out = job
    pyvips.Image.thumbnail(src, TARGET).write_to_file(f"{out}[Q={QUALITY}]")


def _draft_one(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        im.draft("RGB", fit_size(*im.size))
        im.load()
        return im.size


def _warm(_: int) -> int:
    time.sleep(0.2)  # long enough that every worker of the pool takes one
    return os.getpid()


# --------------------------------------------------------------------------- the methods


@dataclass
class Case:
    name: str
    files: list[Path]
    folder: Path  # holds exactly ``files`` (the input of ``process``)
    size: tuple[int, int]
    fixed: list[float] = field(default_factory=list)  # walls of ``process`` over one image

    @property
    def megapixels(self) -> float:
        return len(self.files) * self.size[0] * self.size[1] / 1e6


@dataclass
class Method:
    key: str
    label: str
    run: Callable[[Case, Path, int], float]  # (case, output dir, cores) -> wall seconds
    output: Callable[[Path, Path], Path]  # (output dir, input file) -> output file
    walls: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    resized: bool = False  # outputs differed in size from the reference and were resized
    short: int = 0  # outputs missing after the last run (should stay 0)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)


def _flat(out: Path, src: Path) -> Path:
    return out / f"{src.stem}.jpg"


def _run_process(case: Case, out: Path, cores: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "process",
        str(case.folder),
        "--output",
        str(out),
        "--size",
        str(TARGET),
        "--quiet",
        "--force",
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    if done.returncode:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"pipeline process exited with {done.returncode}:\n{tail}")
    return wall


def _run_sequential(case: Case, out: Path, cores: int) -> float:
    started = time.perf_counter()
    for src in case.files:
        with Image.open(src) as im:
            _resize_save(im, str(_flat(out, src)))
    return time.perf_counter() - started


def _run_textbook(case: Case, out: Path, cores: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as readers:
        datas = list(readers.map(Path.read_bytes, case.files))
    jobs = [(data, str(_flat(out, src))) for data, src in zip(datas, case.files, strict=True)]
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_textbook_one, jobs)
    return time.perf_counter() - started


def _run_vipsthumbnail(case: Case, out: Path, cores: int) -> float:
    exe = shutil.which("vipsthumbnail")
    if exe is None:
        raise RuntimeError("vipsthumbnail is not on PATH")
    files = [str(f) for f in case.files]
    started = time.perf_counter()
    procs = [
        subprocess.Popen([exe, "-s", str(TARGET), "-o", f"{out}/%s.jpg[Q={QUALITY}]", *chunk])
        for chunk in (files[i::cores] for i in range(cores))
        if chunk
    ]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"vipsthumbnail exited with {codes}")
    return wall


def _run_pyvips(case: Case, out: Path, cores: int) -> float:
    jobs = [(str(src), str(_flat(out, src))) for src in case.files]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_pyvips_one, jobs)
    return time.perf_counter() - started


def _run_decode_only(case: Case, out: Path, cores: int) -> float:
    paths = [str(f) for f in case.files]
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_warm, range(cores), chunksize=1)
        started = time.perf_counter()
        pool.map(_draft_one, paths, chunksize=max(1, len(paths) // (8 * cores)))
        return time.perf_counter() - started


def _has_pyvips() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import pyvips"], capture_output=True)
    return probe.returncode == 0


def methods() -> list[Method]:
    found = [
        Method(
            "P",
            "process (product, subprocess)",
            _run_process,
            lambda out, src: out / str(TARGET) / src.name,
        ),
        Method("a", "(a) sequential Pillow loop", _run_sequential, _flat),
        Method("b", "(b) textbook: threads read + Pool.map", _run_textbook, _flat),
    ]
    if shutil.which("vipsthumbnail"):
        found.append(Method("c", "(c) vipsthumbnail, 1 process/core", _run_vipsthumbnail, _flat))
    if _has_pyvips():
        found.append(Method("d", "(d) pyvips thumbnail, process pool", _run_pyvips, _flat))
    found.append(Method("L", "(L) decode-only limit (draft + load)", _run_decode_only, _flat))
    return found


# --------------------------------------------------------------------------- quality


def _rgb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _references(files: Sequence[Path]) -> dict[Path, Image.Image]:
    refs = {}
    for src in files:
        with Image.open(src) as im:
            rgb = im.convert("RGB")
        refs[src] = rgb.resize(fit_size(*rgb.size), Image.Resampling.LANCZOS)
    return refs


def _score(method: Method, out: Path, refs: dict[Path, Image.Image]) -> None:
    method.psnr = []
    for src, ref in refs.items():
        with Image.open(method.output(out, src)) as im:
            got = im.convert("RGB")
        if got.size != ref.size:
            method.resized = True
            got = got.resize(ref.size, Image.Resampling.LANCZOS)
        method.psnr.append(psnr(_rgb(got), _rgb(ref)))


# --------------------------------------------------------------------------- running a set


def _subset_folder(name: str, files: list[Path]) -> Path:
    """A folder holding exactly ``files`` (hard links, or copies where links fail)."""
    full = photos.SETS[name]
    if len(files) == full.count:
        return full.folder
    return photos.link_folder(photos.DATA / f"{name}-first{len(files)}", files)


def _warm_cache(files: Sequence[Path]) -> None:
    with ThreadPoolExecutor(8) as readers:
        for _ in readers.map(Path.read_bytes, files):
            pass


def run_set(name: str, count: int, runs: int, cores: int) -> tuple[Case, list[Method]]:
    spec = photos.SETS[name]
    files = photos.ensure([name])[name][:count]
    case = Case(name, files, _subset_folder(name, files), (spec.width, spec.height))
    step = max(1, len(files) // SAMPLE)
    refs = _references(files[::step][:SAMPLE])
    _warm_cache(files)
    found = methods()
    _TMP.mkdir(parents=True, exist_ok=True)
    for r in range(runs):
        order = found[r % len(found) :] + found[: r % len(found)]
        for m in order:
            out = Path(tempfile.mkdtemp(prefix=f"{name}-{m.key}-", dir=_TMP))
            try:
                m.walls.append(m.run(case, out, cores))
                if r == runs - 1 and m.key != "L":
                    m.short = sum(not m.output(out, src).is_file() for src in files)
                    _score(m, out, refs)
            finally:
                shutil.rmtree(out, ignore_errors=True)
        done = ", ".join(f"{m.key} {m.walls[-1]:.1f}s" for m in found)
        print(f"bench.images: {name} run {r + 1}/{runs}: {done}", file=sys.stderr, flush=True)
    # the fixed cost of a run (interpreter and worker start-up, the end-of-run exports): one
    # image, so that the rest of process's wall time can be read as per-image throughput
    one = Case(name, files[:1], _subset_folder(name, files[:1]), case.size)
    for _ in range(runs):
        out = Path(tempfile.mkdtemp(prefix=f"{name}-P1-", dir=_TMP))
        try:
            case.fixed.append(_run_process(one, out, cores))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return case, found


def _ratio(wall: float, base: Method | None) -> str:
    """Throughput of a method with median ``wall`` relative to ``base`` (same images)."""
    return "—" if base is None else f"{base.wall / wall:.2f}"


def _psnr_check(proc: Method, seq: Method | None) -> str:
    v = statistics.fmean(proc.psnr)
    ok = "✓" if v >= TARGETS["psnr"] else "✗"
    text = f"mean PSNR {v:.1f} dB (≥ {TARGETS['psnr']:.0f}) {ok}"
    if seq is not None and seq.psnr:
        text += f" (the q{QUALITY} encode alone, row (a), scores {statistics.fmean(seq.psnr):.1f})"
    return text


def _bounds(case: Case, by: dict[str, Method], limit: Method) -> list[str]:
    """What each ratio target leaves for process's decoding, against what decoding costs.

    A target "≥ r x method M" means process finishes within M's wall / r. Process over a single
    image (its fixed cost, one decode included) takes ``fixed``; the other n - 1 images then have
    to fit in the rest, while (L) needs (n - 1) / n of its wall just to decode them, on a started
    pool, with nothing else to do. Below 1.00x the target asks for less than the decode alone.
    """
    n = len(case.files)
    fixed = statistics.median(case.fixed)
    decode_rest = limit.wall * (n - 1) / n
    notes = []
    for key, name, ratio in (("c", "vipsthumbnail", "vips"), ("a", "sequential", "sequential")):
        base = by.get(key)
        if base is None:
            continue
        budget = base.wall / TARGETS[ratio] - fixed
        notes.append(
            f"{TARGETS[ratio]:g}{X} {name} leaves {budget:.2f} s for the other {n - 1} images "
            f"after process's one-image run ({fixed:.2f} s), {budget / decode_rest:.2f}{X} what "
            f"(L) needs to decode them alone ({decode_rest:.2f} s)"
        )
    return ["Bounds: " + "; ".join(notes) + "."] if notes else []


def table(case: Case, found: list[Method]) -> list[str]:
    by = {m.key: m for m in found}
    seq, vips, limit = by.get("a"), by.get("c"), by.get("L")
    n = len(case.files)
    w, h = case.size
    lines = [
        f"### {case.name}: {n} JPEGs of {w}x{h} ({case.megapixels:,.0f} MP in total), "
        f"fit {TARGET} px, JPEG q{QUALITY}",
        "",
        f"| method | images/s | MP/s | {X} sequential | {X} vipsthumbnail | {X} decode-only "
        "| PSNR mean | PSNR min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for m in found:
        ips = n / m.wall
        mps = case.megapixels / m.wall
        label = m.label + (" †" if m.resized else "")
        if m.short:
            label += f" ({m.short} outputs missing!)"
        if m.resized:
            notes.append(
                f"† {m.key}: output size differs from the reference by a pixel; resized "
                "to the reference size (Lanczos) before the PSNR"
            )
        p_mean = f"{statistics.fmean(m.psnr):.2f}" if m.psnr else "—"
        p_min = f"{min(m.psnr):.2f}" if m.psnr else "—"
        lines.append(
            f"| {label} | {ips:,.2f} | {mps:,.1f} | {_ratio(m.wall, seq)} | {_ratio(m.wall, vips)} "
            f"| {_ratio(m.wall, limit)} | {p_mean} | {p_min} |"
        )
    spread = "; ".join(f"{m.key} " + "/".join(f"{x:.1f}" for x in m.walls) for m in found)
    lines += ["", f"Wall seconds per run: {spread}."]
    if case.fixed and n > 1:
        fixed = statistics.median(case.fixed)
        per_image = (by["P"].wall - fixed) / (n - 1)
        cores = os.cpu_count() or 1
        lines.append(
            f"process over a single image takes {fixed:.2f} s (start-up and end-of-run work, "
            f"median of {len(case.fixed)}); the other {n - 1} images add "
            f"{1000 * per_image:.1f} ms of wall time each, i.e. {1000 * per_image * cores:.0f} ms "
            f"of a core with {cores} cores busy."
        )
    lines += [f"{x}." for x in dict.fromkeys(notes)]
    proc = by["P"]
    if case.name == "12mp":
        ips = n / proc.wall
        checks = []
        if vips is not None:
            v = ips * vips.wall / n
            ok = "✓" if v >= TARGETS["vips"] else "✗"
            checks.append(f"{v:.2f}{X} vipsthumbnail (≥ {TARGETS['vips']}) {ok}")
        if seq is not None:
            v = ips * seq.wall / n
            ok = "✓" if v >= TARGETS["sequential"] else "✗"
            checks.append(f"{v:.2f}{X} sequential (≥ {TARGETS['sequential']:.0f}) {ok}")
        if limit is not None:
            v = ips * limit.wall / n
            ok = "✓" if v >= TARGETS["decode"] else "✗"
            checks.append(f"{v:.2f}{X} decode-only (≥ {TARGETS['decode']}) {ok}")
        if proc.psnr:
            checks.append(_psnr_check(proc, seq))
        lines.append("Targets for process on this set: " + ", ".join(checks) + ".")
        if limit is not None and case.fixed and n > 1:
            lines += _bounds(case, by, limit)
    elif proc.psnr:
        lines.append(f"Target for process on this set: {_psnr_check(proc, seq)}.")
    lines.append("")
    return lines


def main(*, quick: bool = False) -> str:
    runs = 1 if quick else 3
    counts = {"12mp": 20, "2mp": 40} if quick else {n: s.count for n, s in photos.SETS.items()}
    cores = os.cpu_count() or 1
    photos.ensure(list(counts))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results = [run_set(name, counts[name], runs, cores) for name in ("12mp", "2mp")]
    found = results[0][1]
    missing = [
        x for x, k in (("vipsthumbnail", "c"), ("pyvips", "d")) if k not in {m.key for m in found}
    ]
    took = time.perf_counter() - started
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    absent = f" Not installed: {', '.join(missing)}." if missing else ""
    lines = [
        f"## Images: resize to fit {TARGET} px, large photo-like JPEGs (q90 in, q{QUALITY} out)",
        "",
        f"{cores} cores; 12 MP set: {len(results[0][0].files)} images, 2 MP set: "
        f"{len(results[1][0].files)} images; median of {runs} run(s) per method. Targets: "
        f"process ≥ {TARGETS['vips']}{X} vipsthumbnail, "
        f"≥ {TARGETS['sequential']:.0f}{X} sequential, "
        f"≥ {TARGETS['decode']}{X} decode-only on the 12 MP set; mean PSNR ≥ "
        f"{TARGETS['psnr']:.0f} dB.{absent} Took {took:.0f} s; {load} (shared machine).",
        "",
    ]
    for case, ms in results:
        lines += table(case, ms)
    lines += [
        "process includes interpreter start-up, statistics and the manifest; (b) and (d) include "
        "their pool start-up; (L) is timed on a started pool. PSNR: RGB, 8 bit, against a "
        f"full-resolution decode + Lanczos resize to the same size, {SAMPLE} images per set "
        f"(outputs of the last run); (a) is that reference saved at q{QUALITY}, so its PSNR is the "
        "ceiling set by the JPEG encode itself; (L) writes no output.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv[1:]))
