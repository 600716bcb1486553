"""URL table in, WebDataset shards out: pixpipe against img2dataset itself, same table, same
loopback server, same output size and format, same core count.

Inputs: 2,000 distinct photo-like JPEGs (:func:`bench.photos.photo_array`), each side 480-800 px
drawn per image from a fixed seed, quality 80, 24-84 KB (49 KB mean: web-sized files), made once
and cached under ``bench/.data/datasets/images``; served from memory by the aiohttp app of
:mod:`bench.downloads` in a spawned process on 127.0.0.1 (the same server for every method; its
CPU is not counted against anyone). A Parquet table holds ``url`` and ``caption`` columns.

Methods, each a subprocess timed from start to exit (interpreter start-up included) with its whole
process tree measured by :mod:`bench.measure` (CPU seconds, peaks of the summed RSS and PSS):

* **img2dataset** (its CLI from the bench-only environment ``bench/.peers-venv``, made by
  ``make bench-peers`` from ``bench/requirements-img2dataset.txt``; never a dependency of pixpipe):
  ``--processes_count CORES --thread_count 64 --image_size 256 --encode_format jpg
  --encode_quality 85 --output_format webdataset --number_sample_per_shard S`` (S =
  min(1000, N/2): at least two shards, so both processes work), ``--input_format parquet
  --url_col url --caption_col caption``, with
  ``--resize_mode keep_ratio`` (the issue's reference: the *shorter* side becomes 256 px) and
  again with ``keep_ratio_largest`` (the longer side becomes 256 px: the geometry of pixpipe's
  ``--mode fit``, ~1.8x fewer output pixels). Its extras: ``--extract_exif False`` (pixpipe
  records no EXIF), ``--compute_hash sha256`` kept (pixpipe writes a SHA-256 per sample too),
  ``X-Robots-Tag`` checks kept (pixpipe honours them too), ``--retries 0``, ``--timeout 10``,
  ``--enable_wandb False``; albumentations' update check and wandb are switched off by env.
* **pixpipe**: ``python -m pipeline process --urls T.parquet --url-col url --caption-col caption
  --output-format webdataset --samples-per-shard S --size 256 --mode fit --format jpeg
  --quality 85 --workers CORES --limit-per-host 64 --allow-private-hosts --quiet --force``
  (left out with a message when this checkout's CLI has no ``--output-format``).
* **pixpipe, files** (a reference, always available): today's ``process --urls LIST.txt`` with
  the same size, mode, format, workers and connections, writing one JPEG file per URL (plus its
  manifest, stats and report) instead of shards: what the shard writer is compared with.
* **floor, download only**: bare aiohttp (``python -m bench.downloads client aiohttp 64``): one
  session, 64 coroutines, get + read, nothing else.
* **floor, decode + resize + encode only**: the cached files read from the page cache by a
  spawned ``multiprocessing.Pool(CORES)``: Pillow ``draft`` (DCT scaling) + Lanczos fit into
  256 px + JPEG q85 into memory; no download, no container, no record.

Rates are successful samples (images inside ``**/*.tar`` under the output folder; for the floors
the items they report) per wall second, median over the runs; methods alternate, their order
rotating from run to run (the machine is shared). A method that does not deliver every sample
shows the count instead of a rate.

A second table gives each tool's fixed cost: the same command over the table's first
:data:`FIXED_ROWS` rows (interpreter and worker start-up, imports, end-of-run files), and the rate
of the rest of the table once that is taken out of the whole run's wall time.

``python -m bench.datasets --rows 10000`` makes the table longer than the image set (the images
again under ``/img/<copy>/<name>``: distinct URLs and keys, same bodies), to see the tools' steady
state apart from their start-up.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import Measured, measure

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / ".data" / "datasets"
IMAGES = DATA / "images"
_TMP = DATA / "tmp"
PEER_VENV = Path(__file__).resolve().parent / ".peers-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_SETUP = "`make bench-peers` makes it from bench/requirements-img2dataset.txt"

X = "\N{MULTIPLICATION SIGN}"
SIZE = 256
QUALITY = 85  # of the outputs
SOURCE_QUALITY = 80  # of the served JPEGs: 24-84 KB at 480-800 px, like web photos
THREADS = 64  # img2dataset threads per process; pixpipe's connections to the one host
FIXED_ROWS = 20  # the table's first rows: each tool's start-up and end-of-run cost
TARGET = 1.5  # pixpipe items/s over img2dataset's, at no more peak RSS
GENERATOR = "1"  # bump when the images change: the cache is then made again
_SEED = 70_000
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".webp", ".png")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

# --------------------------------------------------------------------------- inputs


def image_size(i: int) -> tuple[int, int]:
    """Width and height of image ``i``: each side 480-800 px, fixed per index."""
    import numpy as np

    w, h = np.random.default_rng(_SEED + i).integers(480, 801, 2)
    return int(w), int(h)


def make_image(i: int, path: str) -> str:
    """Write image ``i`` to ``path`` atomically (a module-level function: runs in a pool)."""
    from PIL import Image

    from bench.photos import photo_array

    w, h = image_size(i)
    buf = io.BytesIO()
    Image.fromarray(photo_array(w, h, seed=_SEED + i)).save(buf, "JPEG", quality=SOURCE_QUALITY)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, target)
    return path


def ensure_images(n: int) -> list[Path]:
    """The first ``n`` cached JPEGs, made (in a process pool) when missing or outdated."""
    stamp = DATA / "images.generator"
    if not (stamp.is_file() and stamp.read_text().strip() == GENERATOR):
        shutil.rmtree(IMAGES, ignore_errors=True)
        DATA.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{GENERATOR}\n")
    IMAGES.mkdir(parents=True, exist_ok=True)
    paths = [IMAGES / f"{i:05d}.jpg" for i in range(n)]
    missing = [(i, str(p)) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"bench.datasets: generating {len(missing)} JPEGs under {IMAGES}", file=sys.stderr)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=ctx) as pool:
            for _ in pool.map(make_image, *zip(*missing, strict=True), chunksize=16):
                pass
    return paths


def write_table(urls: Sequence[str], path: Path) -> None:
    """The URL table: ``url`` and ``caption`` columns, one row per image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    captions = [f"a photo-like test image, number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": list(urls), "caption": captions}), path)


def base_env() -> dict[str, str]:
    """The environment of every method: no proxies (loopback stays loopback), no phoning home."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env.update(
        no_proxy="127.0.0.1,localhost",
        NO_PROXY="127.0.0.1,localhost",
        NO_ALBUMENTATIONS_UPDATE="1",  # albumentations asks PyPI for a newer version on import
        WANDB_MODE="disabled",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


# --------------------------------------------------------------------------- counting outputs


@dataclass(frozen=True)
class Output:
    samples: int  # images delivered
    kpx: float = float("nan")  # mean output pixels per image, thousands
    note: str = ""


def count_shards(folder: Path) -> Output:
    """Samples inside the ``*.tar`` shards anywhere under ``folder``, and their mean size."""
    from PIL import Image

    samples, pixels = 0, 0
    for shard in sorted(folder.glob("**/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                body = tar.extractfile(member)
                if body is None:
                    continue
                with Image.open(io.BytesIO(body.read())) as im:
                    pixels += im.width * im.height
                samples += 1
    return Output(samples, pixels / samples / 1000 if samples else float("nan"))


def count_files(folder: Path) -> Output:
    """Images written as files under ``folder/<SIZE>/`` (the ``files`` output), mean size."""
    from PIL import Image

    samples, pixels = 0, 0
    for path in (folder / str(SIZE)).glob("**/*"):
        if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
            with Image.open(path) as im:
                pixels += im.width * im.height
            samples += 1
    return Output(samples, pixels / samples / 1000 if samples else float("nan"))


def count_reported(log: Path) -> Output:
    """A floor's own report: the last JSON line of its output (``ok``, optionally ``kpx``)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("{")]
    if not lines:
        return Output(0, note="no report")
    got = json.loads(lines[-1])
    return Output(int(got["ok"]), float(got.get("kpx", "nan")))


# --------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class Job:
    table: Path
    url_file: Path
    n: int
    cores: int

    @property
    def per_shard(self) -> int:
        # at least two shards, so that both of img2dataset's processes get one; 1,000 (the
        # issue's setting) from 2,000 rows on
        return max(1, min(1000, self.n // 2))


@dataclass
class Method:
    key: str
    label: str
    command: Callable[[Job, Path], list[str]]  # (job, output folder) -> argv
    count: Callable[[Path, Path], Output]  # (output folder, log) -> what it delivered
    env: Mapping[str, str] = field(default_factory=dict)
    tool: bool = True  # a tool (its fixed cost is measured too), not a floor
    runs: list[tuple[Measured, Output]] = field(default_factory=list)
    fixed: list[tuple[Measured, Output]] = field(default_factory=list)  # over FIXED_ROWS rows

    def median(self, value: Callable[[Measured, Output], float]) -> float:
        return statistics.median(value(m, o) for m, o in self.runs)


def _img2dataset(mode: str) -> Callable[[Job, Path], list[str]]:
    def command(job: Job, out: Path) -> list[str]:
        return [
            str(PEER_VENV / "bin" / "img2dataset"),
            f"--url_list={job.table}",
            "--input_format=parquet",
            "--url_col=url",
            "--caption_col=caption",
            f"--output_folder={out / 'shards'}",
            "--output_format=webdataset",
            f"--processes_count={job.cores}",
            f"--thread_count={THREADS}",
            f"--image_size={SIZE}",
            f"--resize_mode={mode}",
            "--encode_format=jpg",
            f"--encode_quality={QUALITY}",
            f"--number_sample_per_shard={job.per_shard}",
            "--extract_exif=False",
            "--compute_hash=sha256",
            "--retries=0",
            "--timeout=10",
            "--enable_wandb=False",
            "--distributor=multiprocessing",
        ]

    return command


def _pixpipe(job: Job, out: Path) -> list[str]:
    table = ["--urls", str(job.table), "--url-col", "url", "--caption-col", "caption"]
    shards = ["--output-format", "webdataset", "--samples-per-shard", str(job.per_shard)]
    return _pixpipe_command(job, out, *table, *shards)


def _pixpipe_files(job: Job, out: Path) -> list[str]:
    return _pixpipe_command(job, out, "--urls", str(job.url_file))


def _pixpipe_command(job: Job, out: Path, *inputs: str) -> list[str]:
    """``process`` with ``inputs``, and what every pixpipe row shares: size, mode, format,
    quality, workers, connections per host."""
    image = ["--size", str(SIZE), "--mode", "fit", "--format", "jpeg", "--quality", str(QUALITY)]
    run = ["--workers", str(job.cores), "--limit-per-host", str(THREADS)]
    return [
        *(sys.executable, "-m", "pipeline", "process", *inputs, *image, *run),
        *("--allow-private-hosts", "--quiet", "--force", "--output", str(out)),
    ]


def _floor_download(job: Job, out: Path) -> list[str]:
    client = ["-m", "bench.downloads", "client", "aiohttp"]
    return [sys.executable, *client, str(THREADS), str(job.url_file)]


def _floor_cpu(job: Job, out: Path) -> list[str]:
    floor = ["-m", "bench.datasets", "floor-cpu"]
    return [sys.executable, *floor, str(IMAGES), str(job.n), str(job.cores)]


def peer_status() -> str:
    """'' when img2dataset runs from the bench-only environment, else why not."""
    if not PEER_PYTHON.exists():
        return f"img2dataset: not installed (no {PEER_VENV.relative_to(REPO)}; {PEER_SETUP})"
    probe = subprocess.run(
        [str(PEER_PYTHON), "-c", "import img2dataset.main"],
        env=base_env(),
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        tail = probe.stderr.strip().splitlines()[-1:] or ["?"]
        return f"img2dataset: does not import from {PEER_VENV.relative_to(REPO)} ({tail[0]})"
    return ""


def peer_version() -> str:
    probe = subprocess.run(
        [str(PEER_PYTHON), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() or "?"


def pixpipe_status() -> str:
    """'' when this checkout's ``process`` writes WebDataset shards from a URL table."""
    probe = subprocess.run(
        [sys.executable, "-m", "pipeline", "process", "--help"],
        cwd=REPO,
        env={**base_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    wanted = ("--output-format", "--samples-per-shard", "--url-col", "--caption-col")
    missing = [flag for flag in wanted if flag not in probe.stdout]
    if probe.returncode or missing:
        return (
            "pixpipe webdataset output: not available in this checkout "
            f"(`process --help` lacks {', '.join(missing) or 'nothing, but it failed'})"
        )
    return ""


def methods() -> tuple[list[Method], list[str]]:
    """The methods that can run here, and a message per method left out."""
    env = base_env()
    ours = {**env, "PYTHONPATH": str(REPO)}
    peer = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    found: list[Method] = []
    peer_missing, ours_missing = peer_status(), pixpipe_status()
    skipped = [s for s in (peer_missing, ours_missing) if s]
    if not peer_missing:
        version = peer_version()
        for mode in ("keep_ratio", "keep_ratio_largest"):
            label = f"img2dataset {version} ({mode})"
            found.append(Method(mode, label, _img2dataset(mode), _shards, peer))
    if not ours_missing:
        label = "pixpipe, table → webdataset (fit)"
        found.append(Method("pixpipe", label, _pixpipe, _shards, ours))
    label = "pixpipe, plain URL list → files (reference: not shards)"
    found.append(Method("files", label, _pixpipe_files, _files, ours))
    floors = (
        ("dl", "floor: bare aiohttp download only", _floor_download),
        ("cpu", "floor: decode+resize+encode only", _floor_cpu),
    )
    found += [Method(key, label, cmd, _reported, ours, tool=False) for key, label, cmd in floors]
    return found, skipped


def _shards(out: Path, log: Path) -> Output:
    return count_shards(out)


def _files(out: Path, log: Path) -> Output:
    return count_files(out)


def _reported(out: Path, log: Path) -> Output:
    return count_reported(log)


# --------------------------------------------------------------------------- the floor of CPU
# python -m bench.datasets floor-cpu <folder> <n> <cores>: prints {"ok": ..., "kpx": ...}


def fit(w: int, h: int, box: int = SIZE) -> tuple[int, int]:
    s = min(box / w, box / h, 1.0)
    return max(1, round(w * s)), max(1, round(h * s))


def resize_one(path: str) -> int:
    """Read, decode at the smallest DCT scale covering the box, fit, encode; output pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(Path(path).read_bytes())) as im:
        im.draft("RGB", (SIZE, SIZE))
        rgb = im.convert("RGB")
    small = rgb.resize(fit(*rgb.size), Image.Resampling.LANCZOS)
    small.save(io.BytesIO(), "JPEG", quality=QUALITY)
    return small.width * small.height


def floor_cpu(folder: Path, n: int, cores: int) -> dict[str, float]:
    """``n`` items over the folder's JPEGs (cycling through them when ``n`` is larger)."""
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    paths = [files[i % len(files)] for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pixels = pool.map(resize_one, paths, chunksize=16)
    return {"ok": len(pixels), "kpx": sum(pixels) / max(1, len(pixels)) / 1000}


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def scratch(prefix: str = "run-") -> Iterator[Path]:
    """A fresh folder under ``bench/.data/tmp`` (the disk the data sets are on), removed after."""
    _TMP.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_TMP))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_once(method: Method, job: Job) -> tuple[Measured, Output]:
    with scratch() as work:
        out, log = work / "out", work / "log.txt"
        out.mkdir()
        got = measure(method.command(job, out), cwd=REPO, env=method.env, log=log)
        counted = method.count(out, log)
        if got.returncode not in (0, 1):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            counted = Output(counted.samples, counted.kpx, f"exit {got.returncode}: {tail[0]}")
    return got, counted


def _job(work: Path, urls: Sequence[str], cores: int) -> Job:
    """Write the table and the plain URL list of ``urls`` under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    job = Job(work / "urls.parquet", work / "urls.txt", len(urls), cores)
    write_table(urls, job.table)
    job.url_file.write_text("\n".join(urls) + "\n")
    return job


def _one_round(found: Sequence[Method], job: Job, small: Job, r: int, repeats: int) -> None:
    """Every method once over the whole table, every tool once over its first rows; the order
    rotates with ``r``."""
    shift = r % len(found)
    for method in [*found[shift:], *found[:shift]]:
        method.runs.append(run_once(method, job))
        m, o = method.runs[-1]
        print(
            f"bench.datasets: run {r + 1}/{repeats} {method.label}: {o.samples} in "
            f"{m.wall:.1f} s, {m.cpu:.1f} CPU s, {m.peak_rss / 2**20:,.0f} MB RSS, "
            f"{m.peak_pss / 2**20:,.0f} MB PSS, {m.peak_procs} processes {o.note}",
            file=sys.stderr,
            flush=True,
        )
        if method.tool:
            method.fixed.append(run_once(method, small))


def url_paths(paths: Sequence[Path], rows: int) -> list[str]:
    """Server paths of ``rows`` table rows: the images in order, then again under /img/<copy>/
    (distinct URLs and output names, same bodies) when the table is longer than the image set."""
    out = []
    for i in range(rows):
        copy, name = divmod(i, len(paths))
        out.append(f"/img/{paths[name].name}" if copy == 0 else f"/img/{copy}/{paths[name].name}")
    return out


def main(*, quick: bool = False, rows: int | None = None) -> str:
    """The tables; ``rows`` (default: one per image) makes a longer table over the same images
    (``python -m bench.datasets --rows 10000``), to see the tools' steady state."""
    from bench.downloads import _warm_up, server

    images, repeats = (400, 1) if quick else (2_000, 3)
    n = rows or images
    cores = os.cpu_count() or 1
    paths = ensure_images(images)
    found, skipped = methods()
    load_before = os.getloadavg()
    with scratch() as work, server(IMAGES) as srv:
        urls = [f"http://127.0.0.1:{srv.port}{path}" for path in url_paths(paths, n)]
        _warm_up(urls[:20])
        job = _job(work / "all", urls, cores)
        small = _job(work / "first", urls[:FIXED_ROWS], cores)
        for r in range(repeats):
            _one_round(found, job, small, r, repeats)
    load = f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"
    sources = sum(p.stat().st_size for p in paths) // len(paths)
    info = Info(n=n, images=images, repeats=repeats, cores=cores, load=load, mean_bytes=sources)
    return render(found, skipped, info)


# --------------------------------------------------------------------------- the report


def _rate(m: Measured, o: Output) -> float:
    return o.samples / m.wall


def _complete(method: Method, n: int) -> bool:
    return bool(method.runs) and all(o.samples == n and not o.note for _, o in method.runs)


def _ratio(method: Method, base: Method | None, n: int, value: Callable[..., float]) -> str:
    if base is None or not _complete(method, n) or not _complete(base, n):
        return "—"
    return f"{method.median(value) / base.median(value):.2f}"


def _mb(field: str) -> Callable[[Measured, Output], float]:
    return lambda m, o: float(getattr(m, field)) / 2**20


def _row(method: Method, bases: Sequence[Method | None], n: int) -> str:
    complete = _complete(method, n)
    worst = min(o.samples for _, o in method.runs)
    notes = sorted({o.note for _, o in method.runs if o.note})
    rate = f"{method.median(_rate):,.0f}" if complete else f"— ({worst:,}/{n:,} samples!)"
    label = method.label + (f" ({'; '.join(notes)})" if notes else "")
    ratios = " | ".join(_ratio(method, b, n, _rate) for b in bases)
    rss, pss = method.median(_mb("peak_rss")), method.median(_mb("peak_pss"))
    cpu = method.median(lambda m, o: m.cpu)
    procs = max(m.peak_procs for m, _ in method.runs)
    kpx = method.median(lambda m, o: o.kpx)
    return (
        f"| {label} | {rate} | {ratios} | {rss:,.0f} | {pss:,.0f} | "
        f"{_ratio(method, bases[0], n, _mb('peak_rss'))} | {cpu:.1f} | "
        f"{cpu / n * 1000:.1f} | {procs} | {worst:,} | {'—' if kpx != kpx else f'{kpx:.0f}'} |"
    )


def _goal(by: Mapping[str, Method], n: int) -> list[str]:
    ours = by.get("pixpipe")
    if ours is None or not _complete(ours, n):
        return [f"Goal (pixpipe ≥ {TARGET:g}{X} img2dataset items/s, no more RSS): not measured."]
    out = []
    for key in ("keep_ratio", "keep_ratio_largest"):
        base = by.get(key)
        if base is None or not _complete(base, n):
            continue
        speed = ours.median(_rate) / base.median(_rate)
        rss = ours.median(_mb("peak_rss")) / base.median(_mb("peak_rss"))
        pss = ours.median(_mb("peak_pss")) / base.median(_mb("peak_pss"))
        cpu = ours.median(lambda m, o: m.cpu) / base.median(lambda m, o: m.cpu)
        met = speed >= TARGET and rss <= 1.0
        out.append(
            f"vs img2dataset {key}: {speed:.2f}{X} items/s at {rss:.2f}{X} its peak RSS "
            f"({pss:.2f}{X} its peak PSS, {cpu:.2f}{X} its CPU) — {'met' if met else 'NOT met'}"
        )
    return [f"Goal (≥ {TARGET:g}{X} img2dataset items/s at no more peak RSS): " + "; ".join(out)]


@dataclass(frozen=True)
class Info:
    n: int  # rows of the table
    images: int  # distinct images behind them
    repeats: int
    cores: int
    load: str  # load average before / after
    mean_bytes: int  # of the source JPEGs


def render(found: Sequence[Method], skipped: Sequence[str], info: Info) -> str:
    by = {m.key: m for m in found}
    bases = (by.get("keep_ratio"), by.get("keep_ratio_largest"))
    n, repeats, load = info.n, info.repeats, info.load
    rows = f"{n:,} rows over {info.images:,}" if n != info.images else f"{n:,}"
    lines = [
        f"## URL table → WebDataset shards: {rows} JPEGs of 480-800 px "
        f"({info.mean_bytes / 1000:.0f} KB mean) from loopback, {SIZE} px JPEG q{QUALITY}, "
        f"{info.cores} cores, median of {repeats} run{'s' if repeats > 1 else ''}",
        "",
        f"| method | items/s | {X} img2dataset keep_ratio | {X} img2dataset keep_ratio_largest "
        f"| peak RSS MB | peak PSS MB | {X} RSS keep_ratio | CPU s | CPU ms/item | processes "
        "| samples (fewest) | output kpx/sample |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(m, bases, n) for m in found]
    for why in skipped:
        name, _, reason = why.partition(":")
        lines.append(f"| {name} | skipped: {reason.strip()} |||||||||||")
    walls = "; ".join(f"{m.key} " + "/".join(f"{r.wall:.1f}" for r, _ in m.runs) for m in found)
    lines += [
        "",
        "Items/s: samples in the output shards (files row: image files; floors: items they "
        "report) over the wall time of the whole subprocess, start-up included. Peak RSS: the "
        "largest sum over the process tree, sampled every 50 ms (shared pages counted in every "
        "process); peak PSS: the same with shared pages split (every 0.25 s); processes: most "
        "alive at once. CPU: user + system of the whole tree. keep_ratio makes the shorter side "
        "256 px, keep_ratio_largest and pixpipe's fit the longer one (output kpx). "
        f"Wall seconds per run: {walls}. Load average before/after: {load}.",
        "",
        *_goal(by, n),
        "",
        *_fixed_table(found, n),
    ]
    return "\n".join(lines)


def _fixed_table(found: Sequence[Method], n: int) -> list[str]:
    """Each tool over the table's first rows (start-up, end-of-run work), and the rate of the
    rest of the table once that is taken out of the whole run's wall time."""
    tools = [m for m in found if m.fixed]
    if not tools:
        return []
    lines = [
        f"### Fixed cost: each tool over the first {FIXED_ROWS} rows of the same table",
        "",
        f"| method | wall s ({FIXED_ROWS} rows) | CPU s | peak RSS MB "
        f"| items/s of the other {n - FIXED_ROWS:,} (wall minus fixed) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in tools:
        fixed = statistics.median(r.wall for r, _ in m.fixed)
        cpu = statistics.median(r.cpu for r, _ in m.fixed)
        rss = statistics.median(r.peak_rss for r, _ in m.fixed) / 2**20
        short = [o.samples for _, o in m.fixed if o.samples != FIXED_ROWS or o.note]
        rest = m.median(lambda r, o: r.wall) - fixed
        ok = _complete(m, n) and not short and rest > 0
        rate = f"{(n - FIXED_ROWS) / rest:,.0f}" if ok else "—"
        mark = f" ({min(short)}/{FIXED_ROWS} samples!)" if short else ""
        lines.append(f"| {m.label}{mark} | {fixed:.2f} | {cpu:.1f} | {rss:,.0f} | {rate} |")
    return [*lines, ""]


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["floor-cpu"]:
        print(json.dumps(floor_cpu(Path(args[1]), int(args[2]), int(args[3]))))
    else:
        rows = int(args[args.index("--rows") + 1]) if "--rows" in args else None
        print(main(quick="--quick" in args, rows=rows))
