"""Object storage (``s3://`` in and out) against local files, and the driver's cost on Dask.

Inputs: 2 MP photo-like JPEGs from :mod:`bench.photos` (40; quick: 12), uploaded once to a local
S3 API server (moto's ``ThreadedMotoServer`` on 127.0.0.1, in this process: it shares the
machine's cores with the run, as a store on the same host would). Every run is the real command
(``python -m pipeline process ... --size 256``) in a fresh subprocess into a fresh output:

* **local files**: a folder in, a folder out;
* **s3 -> s3**: the same photos from ``s3://bench-in/``, thumbnails to ``s3://bench-out/<run>/``
  (the run's own files mirrored there at the end).

The first table gives images/s (wall time of the command, start-up included, median) and the
ratio s3 / local. The second runs ``--backend dask`` against a scheduler and 2 one-thread
workers started here (so the driver's own CPU time is the command's: ``RUSAGE_CHILDREN``), with
local folders and with s3 -> s3: the driver's CPU seconds per item, which is what caps how many
workers one driver can feed (it schedules keys and receives small records; with storage URLs
the workers read and write the store themselves).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import photos

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY, SECRET = "AKIABENCH", "bench-secret"
SIZE = "256"


@contextlib.contextmanager
def _server() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _options(endpoint: str) -> str:
    return json.dumps({"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}})


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(REPO), AWS_DEFAULT_REGION="us-east-1", PIXPIPE_WORK_DIR=str(work))
    return env


def _run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one command (its own process and what it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "process", *args, "--size", SIZE, "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def main(*, quick: bool = False) -> str:
    n, repeats = (12, 1) if quick else (40, 3)
    sizes = (n, 3 * n)
    every = photos.ensure(["2mp"], verbose=False)["2mp"]
    tmp = Path(tempfile.mkdtemp(prefix="pixpipe-bench-storage-"))
    try:
        folders = {k: photos.link_folder(tmp / f"photos-{k}", every[:k]) for k in sizes}
        with _server() as endpoint:
            opts = _options(endpoint)
            _upload(endpoint, folders)
            lines = _throughput(folders[n], opts, tmp, n, repeats)
            lines += ["", *_driver_cost(folders, opts, tmp, repeats)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(lines)


def _upload(endpoint: str, folders: dict[int, Path]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bench-in")
    fs.mkdir("bench-out")
    for k, folder in folders.items():
        for path in sorted(folder.iterdir()):
            fs.pipe_file(f"bench-in/n{k}/{path.name}", path.read_bytes())


def _throughput(folder: Path, opts: str, tmp: Path, n: int, repeats: int) -> list[str]:
    runs: dict[str, list[float]] = {"local": [], "s3": []}
    for r in range(repeats):
        for kind in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
            env = _env(tmp / f"work-{kind}-{r}")
            if kind == "local":
                args = [str(folder), "-o", str(tmp / f"out-{r}")]
            else:
                args = [
                    f"s3://bench-in/n{n}/",
                    "-o",
                    f"s3://bench-out/run-{r}",
                    "--storage-options",
                    opts,
                ]
            runs[kind].append(_run(args, env)[0])
        runs.setdefault("floor", []).append(_s3_floor(opts, n, r))
    local, s3 = statistics.median(runs["local"]), statistics.median(runs["s3"])
    floor = statistics.median(runs["floor"])
    return [
        f"## Object storage: {n} photos of 2 MP, {SIZE} px thumbnails, local S3 server (moto) "
        f"vs local files, {os.cpu_count()} cores, median of {repeats}",
        "",
        "| inputs -> output | wall s | images/s | vs local |",
        "|---|---:|---:|---:|",
        f"| local folder -> local folder | {local:.2f} | {n / local:.1f} | 1.00x |",
        f"| s3:// -> s3:// (moto on 127.0.0.1) | {s3:.2f} | {n / s3:.1f} | "
        f"{(n / s3) / (n / local):.2f}x |",
        f"| floor: bare s3fs, {FLOOR_THREADS} threads, GET each photo + PUT one 20 KB object "
        f"(no decode) | {floor:.2f} | {n / floor:.1f} | {(n / floor) / (n / local):.2f}x |",
        "",
        f"`process` s3 -> s3 reaches {(n / s3) / (n / floor):.2f}x the floor's rate. The floor "
        "is what this server allows with no decoding at all (moto answers every request in "
        "Python, on the same two cores): the gap from local files down to the floor is the "
        "server's, the gap below the floor is ours (decode and resize, and the run's own "
        "uploads: journal, manifest, tables, report).",
    ]


#: Threads of the floor client (the read stage's default on 2 cores is 2-8).
FLOOR_THREADS = 8


def _s3_floor(opts: str, n: int, r: int) -> float:
    """Seconds for a bare s3fs client to GET the ``n`` photos and PUT an object of 20 KB for
    each (what ``process`` asks of the server at the least, with no decoding), in threads,
    interpreter start-up and s3fs import included as for ``process``."""
    script = (
        "import json, sys, s3fs\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "o = json.loads(sys.argv[1])\n"
        "fs = s3fs.S3FileSystem(key=o['key'], secret=o['secret'],\n"
        "                       client_kwargs=o['client_kwargs'])\n"
        "keys = sorted(fs.find(sys.argv[2]))\n"
        "def one(k):\n"
        "    fs.cat_file(k)\n"
        "    fs.pipe_file(sys.argv[3] + k.rpartition('/')[2], bytes(20_000))\n"
        f"with ThreadPoolExecutor({FLOOR_THREADS}) as pool:\n"
        "    list(pool.map(one, keys))\n"
    )
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", script, opts, f"bench-in/n{n}/", f"bench-out/floor-{r}/"],
        cwd=REPO,
        env=_env(Path(tempfile.gettempdir())),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


@contextlib.contextmanager
def _cluster(tmp: Path, env: dict[str, str]) -> Iterator[str]:
    sched_file = tmp / "scheduler.json"
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str]) -> None:
        procs.append(
            subprocess.Popen(
                [str(BIN / "dask"), *args, *common],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        spawn(["scheduler", "--port", "0", "--scheduler-file", str(sched_file)])
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("no Dask scheduler within 60 s")
            time.sleep(0.1)
        spawn(["worker", "--scheduler-file", str(sched_file), "--nworkers", "2", "--nthreads", "1"])
        yield str(json.loads(sched_file.read_text())["address"])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _driver_cost(folders: dict[int, Path], opts: str, tmp: Path, repeats: int) -> list[str]:
    """The driver's CPU for each input count and kind; per item: the total over the count, and
    the marginal cost (the difference between the two counts over the difference in items),
    which leaves out the fixed start-up and end of the run."""
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with _cluster(tmp, _env(tmp / "work-cluster")) as address:
        dask = ["--backend", "dask", "--scheduler", address, "--shard-size", "8"]
        for r in range(repeats):
            for k, folder in folders.items():
                env = _env(tmp / f"work-dask-{r}-{k}")
                local = [str(folder), "-o", str(tmp / f"dask-out-{r}-{k}"), *dask]
                remote = [f"s3://bench-in/n{k}/", "-o", f"s3://bench-out/dask-{r}-{k}"]
                res.setdefault(("local", k), []).append(_run(local, env))
                res.setdefault(("s3", k), []).append(
                    _run([*remote, "--storage-options", opts, *dask], env)
                )
    small, big = sorted(folders)
    lines = [
        f"## The driver's CPU on the Dask backend: {small} and {big} photos, a scheduler and 2 "
        f"one-thread workers on this machine, shard size 8, median of {repeats}",
        "",
        "| inputs -> output | photos | wall s | driver CPU s | driver CPU ms / item "
        "| marginal ms / item |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {"local": "local folder -> local folder", "s3": "s3:// -> s3:// (moto)"}
    for kind, label in labels.items():
        cpu = {k: statistics.median(c for _, c in res[(kind, k)]) for k in (small, big)}
        marginal = 1000 * (cpu[big] - cpu[small]) / (big - small)
        for k in (small, big):
            wall = statistics.median(w for w, _ in res[(kind, k)])
            last = f"{marginal:.1f}" if k == big else ""
            lines.append(
                f"| {label} | {k} | {wall:.2f} | {cpu[k]:.2f} | {1000 * cpu[k] / k:.1f} | {last} |"
            )
    lines.append("")
    lines.append(
        "Driver CPU includes its start-up (imports, connecting) and the end of the run "
        "(manifest, tables, report; for s3 the uploads of the run's files); the marginal cost "
        "leaves those out."
    )
    return lines
