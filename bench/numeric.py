"""Numeric data files: ``process`` crunching a big ``.npy`` and a big CSV, against one numpy pass
and pandas, with throughput and peak memory.

Inputs (made once, cached under ``bench/.data/numeric/``, each file alone in its own folder so
``process`` sees only it; MB = 10**6 bytes throughout):

* a float64 ``.npy`` of 2,000 MB (``--quick``: 256 MB): normal values (mean 0.5, sd 2) with
  about one NaN per million values, written block by block through
  ``np.lib.format.open_memmap`` (never the whole array in memory);
* a CSV of 500 MB (``--quick``: 64 MB) with a header: six float columns ``x0``-``x5`` (4
  decimals, about 2 % of the cells empty = missing), an integer column ``n`` and a short string
  label column ``label``; written in blocks of rows with ``pyarrow.csv.write_csv``;
* a separate 1,000 MB float64 ``.npy`` (same recipe) for the memory case, in both modes.

Methods, each a fresh ``.venv`` interpreter started as a subprocess (page cache warm: one untimed
read of every file first; the method order rotates from run to run, as the machine is shared):

* **process, 1 / 2 workers**: ``python -m pipeline process <folder> --output <tmp> --workers
  resize=N --quiet --force`` (the data stage ``crunch`` is fused with ``resize`` and follows
  its worker count; default 64 MiB chunks); MB/s is the file size over the run's own
  ``duration_s`` from ``summary.json`` (no interpreter start-up);
* **numpy single pass** (the ``.npy``): ``a = np.load(path)`` then ``np.isnan`` count,
  ``np.nanmean``, ``np.nanstd``, ``np.nanmin``, ``np.nanmax``;
* **pandas** (the CSV, when pandas is installed): ``pd.read_csv(path).describe()``.

numpy and pandas are timed inside the child, after their imports, so their MB/s leaves
interpreter start-up out just as ``duration_s`` does; the "wall s" column is the whole
subprocess, start-up included. Peak RSS: the parent samples the child's whole process tree every
~20 ms (children found through ``/proc/<pid>/task/*/children``, psutil's
``children(recursive=True)`` where that file does not exist; the ``process`` workers are
forkserver children) and keeps the biggest single process and the biggest sum over the tree.
RSS counts the file pages a process has mapped (``np.memmap``) and the tree sum counts pages
shared between processes once per process.

The report also gives, per ``process`` row, the CPU seconds of the ``crunch`` stage over all
workers (from ``summary.json``): steadier than rates when other work shares the cores.

Checks, once: the ``.npy`` record's count, NaN count, min and max equal numpy's, its mean and
std agree within 1e-9 relative; the CSV record's rows and each column's count equal pandas',
its mean, min and max agree within 1e-9 of the larger of the value and the column's std; the 1-
and 2-worker records are identical.

Targets: ``.npy`` 2 workers ≥ 1.7x one worker; CSV with 2 workers ≥ pandas; the 1,000 MB
``.npy`` crunched by 2 workers with a peak single-process RSS under 25 % of the file size.

``python -m bench.numeric profile npy|csv [--quick]`` prints a cProfile of one worker's job:
``stages.data.crunch_part`` on the first part of the file's ``stages.data.plan``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / ".data" / "numeric"
_TMP = DATA / "tmp"

X = "\N{MULTIPLICATION SIGN}"
MB = 10**6
SIZES = {False: {"npy": 2000 * MB, "csv": 500 * MB}, True: {"npy": 256 * MB, "csv": 64 * MB}}
RSS_BYTES = 1000 * MB  # the memory case, in both modes
TARGETS = {"scaling": 1.7, "pandas": 1.0, "rss": 0.25}
SAMPLE_S = 0.02
TOLERANCE = 1e-9
_TIMEOUT = 1800.0

# npy recipe
_LOC, _SCALE = 0.5, 2.0
_NAN_EVERY = 1_000_000  # about one NaN per this many values
_GEN_VALUES = 1 << 23  # values per generated block (64 MiB of float64)
# CSV recipe
_FLOATS = 6
_MISSING = 0.02
_LABELS = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta")
_GEN_ROWS = 250_000
_SEED = 20_240


# --------------------------------------------------------------------------- inputs


def _done(tmp: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return path


def ensure_npy(nbytes: int, *, verbose: bool = True) -> Path:
    """The cached float64 ``.npy`` of ``nbytes`` data bytes, alone in its folder."""
    import numpy as np

    path = DATA / f"npy-{nbytes // MB}MB" / "values.npy"
    if path.exists():
        return path
    if verbose:
        print(f"bench.numeric: generating {path} ({nbytes / MB:,.0f} MB)", file=sys.stderr)
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = DATA / f".values-{nbytes // MB}MB.{os.getpid()}.npy"  # outside the input folder
    n = nbytes // 8
    rng = np.random.default_rng(_SEED + n)
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(n,))
    try:
        for lo in range(0, n, _GEN_VALUES):
            block = mm[lo : lo + _GEN_VALUES]
            rng.standard_normal(out=block)
            block *= _SCALE
            block += _LOC
            nans = max(1, block.size // _NAN_EVERY)
            block[rng.integers(0, block.size, nans)] = np.nan
        mm.flush()
    finally:
        del mm
    return _done(tmp, path)


def _csv_block(rng: Any, rows: int) -> Any:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    cols: dict[str, Any] = {}
    for i in range(_FLOATS):
        values = np.round(rng.normal(_LOC * i, 1.0 + i, rows), 4)
        cols[f"x{i}"] = pa.array(values, mask=rng.random(rows) < _MISSING)
    cols["n"] = pa.array(rng.integers(0, 100_000, rows))
    cols["label"] = pc.take(pa.array(_LABELS), pa.array(rng.integers(0, len(_LABELS), rows)))
    return pa.table(cols)


def ensure_csv(nbytes: int, *, verbose: bool = True) -> Path:
    """The cached CSV of at least ``nbytes`` bytes (whole rows), alone in its folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = DATA / f"csv-{nbytes // MB}MB" / "table.csv"
    if path.exists():
        return path
    if verbose:
        print(f"bench.numeric: generating {path} ({nbytes / MB:,.0f} MB)", file=sys.stderr)
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = DATA / f".table-{nbytes // MB}MB.{os.getpid()}.csv"
    rng = np.random.default_rng(_SEED + nbytes)
    header = ",".join([*(f"x{i}" for i in range(_FLOATS)), "n", "label"]).encode() + b"\n"
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    written, rows, per_row = 0, _GEN_ROWS, 0.0
    with open(tmp, "wb") as f:
        written += f.write(header)
        while written < nbytes:
            if per_row:  # the last block: about the rows still missing, not a whole block
                rows = min(_GEN_ROWS, max(1_000, math.ceil((nbytes - written) / per_row)))
            buf = pa.BufferOutputStream()
            pacsv.write_csv(_csv_block(rng, rows), buf, options)
            data = buf.getvalue()
            f.write(data)
            written += data.size
            per_row = data.size / rows
    return _done(tmp, path)


def _warm(path: Path) -> None:
    """One untimed read of the whole file: the timed runs find it in the page cache."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


# --------------------------------------------------------------------------- memory sampling


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/<pid>/task/<tid>/children (any thread may
    be the parent: the forkserver is started by whichever thread first needs a worker)."""
    pids = [root]
    i = 0
    while i < len(pids):
        pid = pids[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return pids


_PROC_CHILDREN = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    wall: float  # seconds, interpreter start-up included
    peak_single: int  # bytes: the biggest RSS of one process of the tree
    peak_tree: int  # bytes: the biggest sum of the tree's RSS


def measured(cmd: Sequence[str]) -> Measured:
    """Run ``cmd`` (cwd: the repo), sampling its process tree's RSS every ~20 ms."""
    import psutil

    handles: dict[int, psutil.Process] = {}

    def rss(pid: int) -> int:
        p = handles.get(pid)
        if p is None:
            p = handles[pid] = psutil.Process(pid)
        return int(p.memory_info().rss)

    peak_single = peak_tree = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        while True:
            try:
                if _PROC_CHILDREN:
                    pids = _tree(proc.pid)
                else:
                    top = psutil.Process(proc.pid)
                    pids = [proc.pid, *(c.pid for c in top.children(recursive=True))]
            except psutil.Error:
                pids = []
            sizes = []
            for pid in pids:
                try:
                    sizes.append(rss(pid))
                except psutil.Error:
                    continue
            if sizes:
                peak_single = max(peak_single, max(sizes))
                peak_tree = max(peak_tree, sum(sizes))
            try:
                proc.wait(SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                if time.perf_counter() - started > _TIMEOUT:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"timed out after {_TIMEOUT:.0f} s: {cmd}") from None
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return Measured(proc.returncode, stdout, stderr, wall, peak_single, peak_tree)


# --------------------------------------------------------------------------- the methods


@dataclass
class Run:
    seconds: float  # the timed section: duration_s, or the child's own timer after imports
    wall: float
    peak_single: int
    peak_tree: int
    result: dict[str, Any]  # the record's value (process) or what the child computed
    crunch_cpu: float = math.nan  # process: CPU seconds of the crunch stage (all workers)


def _process(folder: Path, workers: int) -> Run:
    _TMP.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"process-{workers}-", dir=_TMP))
    try:
        m = measured(
            [
                sys.executable,
                "-m",
                "pipeline",
                "process",
                str(folder),
                "--output",
                str(out),
                "--workers",
                f"resize={workers}",
                "--quiet",
                "--force",
            ]
        )
        summary_path = out / "summary.json"
        if m.returncode != 0 or not summary_path.exists():
            raise RuntimeError(f"process on {folder} exited {m.returncode}:\n{m.stderr[-2000:]}")
        summary = json.loads(summary_path.read_text())
        lines = (out / "manifest.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        if len(records) != 1 or records[0]["status"] != "ok":
            raise RuntimeError(f"process on {folder}: unexpected records {records!r:.2000}")
        cpu = [s.get("cpu", math.nan) for s in summary.get("stages", []) if s["name"] == "crunch"]
        return Run(
            float(summary["duration_s"]),
            m.wall,
            m.peak_single,
            m.peak_tree,
            records[0]["result"],
            float(cpu[0]) if cpu else math.nan,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _child(method: str, path: Path) -> Run:
    m = measured([sys.executable, "-m", "bench.numeric", method, str(path)])
    if m.returncode != 0:
        raise RuntimeError(f"{method} on {path} exited {m.returncode}:\n{m.stderr[-2000:]}")
    got = json.loads(m.stdout.strip().splitlines()[-1])
    return Run(float(got["seconds"]), m.wall, m.peak_single, m.peak_tree, got)


def child_numpy(path: str) -> dict[str, Any]:
    """One numpy pass over the whole array: what a script would do."""
    import numpy as np

    started = time.perf_counter()
    a = np.load(path)
    nans = int(np.count_nonzero(np.isnan(a)))
    mean = float(np.nanmean(a))
    std = float(np.nanstd(a))
    lo = float(np.nanmin(a))
    hi = float(np.nanmax(a))
    seconds = time.perf_counter() - started
    stats = {"count": int(a.size) - nans, "missing": nans, "mean": mean, "std": std}
    return {"seconds": seconds, "stats": stats | {"min": lo, "max": hi}}


def child_pandas(path: str) -> dict[str, Any]:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    started = time.perf_counter()
    df = pd.read_csv(path)
    desc = df.describe()
    seconds = time.perf_counter() - started
    columns = {
        str(name): {k: float(desc[name][k]) for k in ("count", "mean", "min", "max")}
        for name in desc.columns
    }
    return {"seconds": seconds, "rows": len(df), "columns": columns}


CHILDREN = {"numpy": child_numpy, "pandas": child_pandas}


def _has_pandas() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True)
    return probe.returncode == 0


# --------------------------------------------------------------------------- the report

Row = tuple[str, str]  # (input: "npy" | "csv" | "rss", method: "1" | "2" | "numpy" | "pandas")

LABELS = {
    "1": "process, 1 worker",
    "2": "process, 2 workers",
    "numpy": "numpy: np.load + isnan, nanmean, nanstd, nanmin, nanmax",
    "pandas": "pandas: read_csv + describe()",
}


@dataclass
class Inputs:
    npy: Path
    csv: Path
    rss: Path
    sizes: dict[str, int] = field(default_factory=dict)

    def path(self, kind: str) -> Path:
        return {"npy": self.npy, "csv": self.csv, "rss": self.rss}[kind]


def _measure(row: Row, inputs: Inputs) -> Run:
    kind, method = row
    path = inputs.path(kind)
    if method in CHILDREN:
        return _child(method, path)
    return _process(path.parent, int(method))


def _plan(have_pandas: bool) -> list[Row]:
    rows: list[Row] = [("npy", "1"), ("npy", "2"), ("npy", "numpy"), ("csv", "1"), ("csv", "2")]
    if have_pandas:
        rows.append(("csv", "pandas"))
    rows.append(("rss", "2"))
    return rows


def main(*, quick: bool = False) -> str:
    repeats = 1 if quick else 3
    sizes = SIZES[quick]
    inputs = Inputs(ensure_npy(sizes["npy"]), ensure_csv(sizes["csv"]), ensure_npy(RSS_BYTES))
    inputs.sizes = {k: inputs.path(k).stat().st_size for k in ("npy", "csv", "rss")}
    have_pandas = _has_pandas()
    plan = _plan(have_pandas)
    for kind in ("npy", "csv", "rss"):
        _warm(inputs.path(kind))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    runs: dict[Row, list[Run]] = {row: [] for row in plan}
    for r in range(repeats):
        shift = r * len(plan) // repeats
        for row in plan[shift:] + plan[:shift]:
            runs[row].append(_measure(row, inputs))
        done = ", ".join(f"{k} {m} {runs[(k, m)][-1].seconds:.2f}s" for k, m in plan)
        print(f"bench.numeric: run {r + 1}/{repeats}: {done}", file=sys.stderr, flush=True)
    took = time.perf_counter() - started
    load = f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    return _render(runs, plan, inputs, repeats, have_pandas, took, load)


def _close(a: float | None, b: float | None, scale: float = 0.0) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= TOLERANCE * max(abs(a), abs(b), scale)


def _checks(runs: dict[Row, list[Run]], have_pandas: bool) -> tuple[bool, list[str]]:
    notes: list[str] = []
    ok = True
    got = runs[("npy", "2")][0].result["stats"]
    ref = runs[("npy", "numpy")][0].result["stats"]
    bad = [k for k in ("count", "missing", "min", "max") if got[k] != ref[k]]
    bad += [k for k in ("mean", "std") if not _close(got[k], ref[k])]
    if bad:
        ok = False
        notes.append(
            ".npy: process and numpy disagree on "
            + ", ".join(f"{k} ({got[k]!r} vs {ref[k]!r})" for k in bad)
        )
    for kind in ("npy", "csv", "rss"):
        if (kind, "1") in runs and (kind, "2") in runs:
            one, two = runs[(kind, "1")][0].result, runs[(kind, "2")][0].result
            if one != two:
                ok = False
                notes.append(f"{kind}: the 1-worker and 2-worker records differ")
    if have_pandas:
        rec = runs[("csv", "2")][0].result
        pd_ = runs[("csv", "pandas")][0].result
        if rec["rows"] != pd_["rows"]:
            ok = False
            notes.append(f"CSV: {rec['rows']:,} rows vs pandas {pd_['rows']:,}")
        for name, ref_col in pd_["columns"].items():
            col = rec["columns"].get(name)
            if col is None:
                ok = False
                notes.append(f"CSV: column {name} missing from the record")
                continue
            scale = col["std"] or 0.0
            wrong = [] if col["count"] == ref_col["count"] else ["count"]
            wrong += [k for k in ("mean", "min", "max") if not _close(col[k], ref_col[k], scale)]
            if wrong:
                ok = False
                notes.append(f"CSV column {name}: " + ", ".join(wrong) + " differ from pandas")
    return ok, notes


def _parts(n: Any) -> str:
    return f"{n} chunk" if n == 1 else f"{n} chunks"


def _render(
    runs: dict[Row, list[Run]],
    plan: Sequence[Row],
    inputs: Inputs,
    repeats: int,
    have_pandas: bool,
    took: float,
    load: str,
) -> str:
    def med(row: Row, attr: str) -> float:
        return statistics.median(float(getattr(r, attr)) for r in runs[row])

    def rate(row: Row) -> float:
        return inputs.sizes[row[0]] / MB / med(row, "seconds")

    size = {k: v / MB for k, v in inputs.sizes.items()}
    chunks = {k: runs[(k, "2")][0].result.get("chunks", "?") for k in ("npy", "csv", "rss")}
    rows_csv = runs[("csv", "2")][0].result.get("rows", 0)
    cores = os.cpu_count() or 1
    lines = [
        f"## Numeric data: a {size['npy']:,.0f} MB float64 .npy and a {size['csv']:,.0f} MB CSV",
        "",
        f"{cores} cores; median of {repeats} run{'s' if repeats > 1 else ''} per method (order "
        "rotating between runs); page cache warm (one untimed read of each file first); "
        f"MB = 10^6 bytes. .npy: {inputs.sizes['npy'] // 8:,} values in {_parts(chunks['npy'])} "
        f"of 64 MiB (the default chunk size); CSV: {rows_csv:,} rows x 8 columns (6 float, "
        f"1 int, 1 label) in {_parts(chunks['csv'])}. Took {took:.0f} s; {load} (shared machine).",
        "",
        f"| input | method | MB/s | {X} 1 worker | {X} pandas | wall s incl. start-up "
        "| peak RSS single MB | peak RSS tree MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in plan:
        kind, method = row
        if kind == "rss":
            continue
        one = rate((kind, "1"))
        vs_one = f"{rate(row) / one:.2f}"
        vs_pd = (
            f"{rate(row) / rate(('csv', 'pandas')):.2f}" if kind == "csv" and have_pandas else "—"
        )
        name = f".npy {size['npy']:,.0f} MB" if kind == "npy" else f"CSV {size['csv']:,.0f} MB"
        lines.append(
            f"| {name} | {LABELS[method]} | {rate(row):,.0f} | {vs_one} | {vs_pd} "
            f"| {med(row, 'wall'):.2f} | {med(row, 'peak_single') / MB:,.0f} "
            f"| {med(row, 'peak_tree') / MB:,.0f} |"
        )
    spread = "; ".join(
        f"{k} {m}: " + "/".join(f"{r.seconds:.2f}" for r in runs[(k, m)]) for k, m in plan
    )
    lines += [
        "",
        "MB/s: the file size over the run's own `duration_s` (process) or over the child's "
        "timed section after its imports (numpy, pandas): interpreter start-up is left out of "
        "both and is in the wall column. Peak RSS: sampled every ~20 ms over the subprocess and "
        "all its descendants (the forkserver and its workers); it counts mapped file pages, and "
        "the tree sum counts shared pages once per process.",
    ]
    if not have_pandas:
        lines.append("pandas is not installed in this interpreter: its row is left out.")
    if chunks["csv"] == 1:
        lines.append(
            "The CSV is smaller than one 64 MiB chunk: a second worker has nothing to do "
            "(the full suite's 500 MB CSV makes 8 chunks)."
        )
    cpu = "; ".join(
        f"{k} {m} worker{'s' if m != '1' else ''} {med((k, m), 'crunch_cpu'):.2f} s"
        for k, m in plan
        if m in ("1", "2")
    )
    lines += [
        f"Timed seconds per run: {spread}.",
        f"CPU of the crunch stage, all workers (summary.json, median): {cpu}.",
        "",
    ]

    rss_row: Row = ("rss", "2")
    single, tree = med(rss_row, "peak_single"), med(rss_row, "peak_tree")
    worst = max(r.peak_single for r in runs[rss_row])
    lines += [
        f"### Memory: the {size['rss']:,.0f} MB .npy, process with 2 workers "
        f"({_parts(chunks['rss'])} of 64 MiB)",
        "",
        "| method | MB/s | peak RSS single MB | % of file | peak RSS tree MB | % of file |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {LABELS['2']} | {rate(rss_row):,.0f} | {single / MB:,.0f} "
        f"| {single / inputs.sizes['rss']:.1%} | {tree / MB:,.0f} "
        f"| {tree / inputs.sizes['rss']:.1%} |",
        "",
        f"Worst single-process peak over the runs: {worst / MB:,.0f} MB.",
        "",
    ]

    ok, notes = _checks(runs, have_pandas)
    what = (
        "the .npy record's count, NaN count, min, max equal numpy's and its mean, std agree "
        f"within {TOLERANCE:g} relative"
    )
    if have_pandas:
        what += "; the CSV record's rows and per-column count, mean, min, max agree with pandas"
    what += "; 1- and 2-worker records identical"
    lines.append(f"Correctness ({what}): {'checked' if ok else 'MISMATCH'}.")
    lines += [f"* {n}" for n in notes]

    scaling = rate(("npy", "2")) / rate(("npy", "1"))
    marks = [
        f".npy 2 workers / 1 worker {scaling:.2f} (≥ {TARGETS['scaling']}) "
        + ("✓" if scaling >= TARGETS["scaling"] else "✗")
    ]
    if have_pandas:
        vs = rate(("csv", "2")) / rate(("csv", "pandas"))
        marks.append(
            f"CSV 2 workers / pandas {vs:.2f} (≥ {TARGETS['pandas']:.1f}) "
            + ("✓" if vs >= TARGETS["pandas"] else "✗")
        )
    else:
        marks.append("CSV 2 workers / pandas: not measured (pandas missing)")
    share = single / inputs.sizes["rss"]
    marks.append(
        f"{size['rss']:,.0f} MB .npy peak single-process RSS {share:.1%} of the file "
        f"(< {TARGETS['rss']:.0%}) " + ("✓" if share < TARGETS["rss"] else "✗")
    )
    lines += ["", "Targets: " + "; ".join(marks) + ".", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- profiling


def profile(kind: str = "npy", *, quick: bool = False, top: int = 25) -> str:
    """cProfile (CPU time) of one worker's job: ``crunch_part`` on the file's first part."""
    import cProfile
    import pstats

    from stages.data import DataOptions, crunch_part, plan
    from stages.sources import DataFile

    sizes = SIZES[quick]
    path = ensure_npy(sizes["npy"]) if kind == "npy" else ensure_csv(sizes["csv"])
    _warm(path)
    split = plan(DataFile(str(path), path.name), DataOptions())
    part = next(iter(split.parts))
    nbytes = (part.stop - part.start) * (8 if kind == "npy" else 1)
    crunch_part(part)  # warm-up: imports, first touch
    started = time.perf_counter()
    crunch_part(part)
    plain = time.perf_counter() - started
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    crunch_part(part)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    head = (
        f"crunch_part on the first part of {path} ({nbytes / MB:,.0f} MB): "
        f"{plain:.3f} s unprofiled = {nbytes / MB / plain:,.0f} MB/s on one core"
    )
    return head + "\n\n" + buf.getvalue()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] and args[0] in CHILDREN:
        print(json.dumps(CHILDREN[args[0]](args[1])), flush=True)
    elif args[:1] == ["profile"]:
        rest = [a for a in args[1:] if not a.startswith("--")]
        print(profile(rest[0] if rest else "npy", quick="--quick" in args))
    else:
        print(main(quick="--quick" in args))
