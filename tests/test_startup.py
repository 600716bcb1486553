"""Start-up of ``python -m pipeline process``: the early forkserver warm-up, a parent process that
imports neither numpy nor Pillow, and the Pillow plugins ``stages.imaging`` registers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import app.warmup as warmup
from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"

# Runs ``python -m pipeline ARGS`` (as runpy does for -m) and, at exit, prints on one line what
# this process did: whether it started a forkserver, with which preload list, which modules.
_WRAPPER = """
import atexit, json, os, runpy, sys
import multiprocessing.forkserver as fs
import pipeline.forkserver as pf

_stopped = []  # the forkserver pid that pipeline.forkserver.shutdown found (the run stops it)
_shutdown = pf.shutdown

def _recording_shutdown(*args, **kwargs):
    _stopped.append(fs._forkserver._forkserver_pid)
    _shutdown(*args, **kwargs)

pf.shutdown = _recording_shutdown

def _report():
    server = fs._forkserver
    print("STARTUP " + json.dumps({
        "forkserver": any(pid is not None for pid in _stopped),
        "preload": list(server._preload_modules),
        "modules": sorted(m for m in ("numpy", "PIL", "pyarrow") if m in sys.modules),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "arrow_pool": (sys.modules["pyarrow"].default_memory_pool().backend_name
                       if "pyarrow" in sys.modules else None),
    }), flush=True)

atexit.register(_report)
sys.argv = ["pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def _run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("STARTUP ")]
    assert lines, f"no report (exit {done.returncode}): {done.stdout}\n{done.stderr}"
    return done.returncode, json.loads(lines[-1].removeprefix("STARTUP ")), done.stderr


@pytest.fixture
def one_image(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(IMAGES / "640x480_rgb.jpg", folder)
    return folder


# -- the early warm-up ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        (["process", "in", "--output", "out"], True),
        (["profile", "in", "--sample", "5"], True),
        (["process", "in", "--backend", "local"], True),
        (["process", "in", "--backend", "dask"], False),
        (["process", "in", "--backend=dask"], False),
        (["process", "in", "--ba", "dask"], False),  # argparse accepts abbreviations
        (["process", "in", "--config", "run.toml"], False),  # the file may choose Dask
        (["process", "--help"], False),
        (["process", "in", "-h"], False),
        (["--help"], False),
        (["demo", "in"], False),
        ([], False),
    ],
)
def test_warm_up_argv_starts_only_local_process_runs(
    argv: list[str], starts: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks: list[bool] = []
    monkeypatch.setattr(warmup, "start_forkserver", lambda fork=False: forks.append(fork))
    assert warmup.warm_up_argv(argv) is starts
    # ``python -m pipeline`` at its start: the forkserver may be a fork of it
    assert forks == ([True] if starts else [])


def test_config_choosing_dask_starts_no_forkserver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks: list[bool] = []
    monkeypatch.setattr(warmup, "start_forkserver", lambda fork=False: forks.append(fork))
    config = tmp_path / "run.toml"
    config.write_text('backend = "dask"\n')
    warmup.warm_up(None, config)
    assert forks == []
    config.write_text('backend = "local"\n')
    warmup.warm_up(None, config)
    assert forks == [False]  # after parsing, maybe in a program of its own: a new interpreter


@pytest.mark.parametrize("args", [["--help"], ["process", "--help"], ["demo", "--help"]])
def test_help_starts_no_forkserver(args: list[str]) -> None:
    code, seen, _ = _run_cli(*args)
    assert code == 0
    assert not seen["forkserver"]
    assert seen["modules"] == []


def test_local_run_preloads_the_worker_modules_and_the_parent_never_imports_pillow(
    one_image: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, seen, err = _run_cli("process", str(one_image), "--output", str(out), "--quiet")
    assert code == 0, err
    assert seen["forkserver"]
    preload = seen["preload"]
    assert preload[:2] == ["__main__", "pipeline.worker"]
    assert set(warmup.WORKER_MODULES) <= set(preload)
    # pyarrow for stats.parquet, at the end, without numpy (app.tables.pyarrow_without_numpy):
    # the near-duplicate groups of a few images are found in pure Python
    assert seen["modules"] == ["pyarrow"]
    assert by_key(out)["640x480_rgb.jpg"]["status"] == "ok"
    import pyarrow.parquet as pq

    table = pq.read_table(out / "stats.parquet")  # written by that pyarrow: whole and typed
    assert table.column("key").to_pylist() == ["640x480_rgb.jpg"]
    assert table.column("width").to_pylist() == [640]
    assert len(table.column("dhash").to_pylist()[0]) == 16


@pytest.mark.parametrize(
    ("name", "seen_as", "given", "expected"),
    [
        # one BLAS thread per process: there is a worker per core already
        ("OPENBLAS_NUM_THREADS", "blas_threads", None, "1"),
        ("OPENBLAS_NUM_THREADS", "blas_threads", "3", "3"),
        # pyarrow on glibc's malloc, not mimalloc: ~8 MB less at the end of a run, when the
        # parent writes stats.parquet and peaks
        ("ARROW_DEFAULT_MEMORY_POOL", "arrow_pool", None, "system"),
        ("ARROW_DEFAULT_MEMORY_POOL", "arrow_pool", "mimalloc", "mimalloc"),
    ],
)
def test_the_commands_defaults_unless_the_user_says_otherwise(
    name: str, seen_as: str, given: str | None, expected: str, one_image: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != name}
    if given is not None:
        env[name] = given
    out = tmp_path / "out"
    code, seen, err = _run_cli("process", str(one_image), "--output", str(out), "-q", env=env)
    assert code == 0, err
    assert (out / "stats.parquet").exists()
    assert seen[seen_as] == expected


def test_dask_run_starts_no_local_forkserver(one_image: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    code, seen, err = _run_cli(
        "process", str(one_image), "--output", str(out), "--quiet", "--backend", "dask", timeout=90
    )
    assert code == 0, err
    assert not seen["forkserver"]
    assert by_key(out)["640x480_rgb.jpg"]["status"] == "ok"


def test_building_a_run_imports_neither_numpy_nor_pillow() -> None:
    code = (
        "import app.cli, app.commands, app.process, app.collectors, stages.steps, stages.thumbs\n"
        "from app.config import ProcessConfig\n"
        "ProcessConfig(inputs=('sample_data/images',), size=('512', '64x48'))\n"
    )
    assert _imported_by(code, ("numpy", "PIL", "pyarrow")) == []


_NO_PYARROW_DURING_THE_RUN = """
import sys
from pathlib import Path
import app.collectors as collectors
from app.config import ProcessConfig
from app.process import run_process

seen = []
take = collectors.StatsTable.take
def spy(self, record):
    seen.append("pyarrow" in sys.modules)
    take(self, record)
collectors.StatsTable.take = spy
out = Path(sys.argv[1])
result = run_process(ProcessConfig(inputs=("sample_data/images",), output=str(out), quiet=True))
assert result.counts.get("ok"), result.counts
assert seen and not any(seen), seen
assert "pyarrow" in sys.modules and (out / "stats.parquet").stat().st_size > 0
print("OK")
"""


@pytest.mark.timeout(60)
def test_the_parent_imports_pyarrow_only_at_the_end(tmp_path: Path) -> None:
    """While the run goes the parent holds no pyarrow (some 50 MB): stats.parquet is written
    from stats.csv at the end."""
    proc = subprocess.run(
        [sys.executable, "-c", _NO_PYARROW_DURING_THE_RUN, str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "OK", proc.stderr.decode()


# -- Pillow plugins --------------------------------------------------------------------------------
_PLUGINS_CHECK = """
import json, os, sys
from PIL import Image
import stages.imaging as imaging

out = {"initialized_after_import": Image._initialized, "allowed": list(imaging.ALLOWED_FORMATS)}
errors = []
for data in (os.urandom(4096), b"%!PS-Adobe-3.0 EPSF-3.0\\n" + os.urandom(64),
             b"\\x00\\x00\\x02\\x00" + os.urandom(64)):  # random, EPS, TGA-like
    try:
        imaging.process_image(data, imaging.ResizeOptions())
    except imaging.DecodeError as exc:
        errors.append(str(exc))
out["errors"] = errors
out["initialized_after_open"] = Image._initialized
out["heif_imported"] = "pillow_heif" in sys.modules  # imported by the first ISO media file only
Image.init()  # what the module did before: every plugin, then the wanted formats it has
from stages import heif
heif.register()  # as it did too, at import
out["allowed_with_init"] = [f for f in (*imaging._WANTED_FORMATS, "HEIF") if f in Image.OPEN]
print(json.dumps(out))
"""


def test_only_the_wanted_plugins_and_allowed_formats_unchanged() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PLUGINS_CHECK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["initialized_after_import"] < 2  # Image.init() was not called
    assert seen["initialized_after_open"] < 2
    assert not seen["heif_imported"]  # pillow-heif (~6 MB) waits for a file that may be HEIF
    assert seen["allowed"] == seen["allowed_with_init"]
    assert {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"} <= set(seen["allowed"])
    expected = (
        "cannot identify image data: not an image, or not one of the supported formats "
        f"({', '.join(seen['allowed'])})"
    )
    assert seen["errors"] == [expected] * 3
    assert seen["initialized_after_open"] < 2  # and Pillow did not fall back to it either


def test_the_worker_side_imports_no_asyncio_ledger_or_tqdm() -> None:
    # what the forkserver preloads for process: the sooner it is ready, the sooner workers start
    code = "import " + ", ".join(["pipeline.worker", *warmup.WORKER_MODULES])
    assert _imported_by(code, ("asyncio", "tqdm", "sqlite3", "pipeline.runner")) == []


def test_the_images_path_never_imports_numpy() -> None:
    """A worker's whole work on an image (check, decode, resize, statistics, encode) is Pillow
    alone: numpy (some 11 MiB over the processes of a run) waits for a numeric data file."""
    image = next(IMAGES.glob("*.jpg"))
    code = (
        "import " + ", ".join(["pipeline.worker", *warmup.WORKER_MODULES]) + "\n"
        "from stages.imaging import process_image, ResizeOptions\n"
        f"r = process_image(open({str(image)!r}, 'rb').read(), ResizeOptions())\n"
        "assert r.stats['dhash'] and r.stats['sharpness'] > 0, r.stats\n"
    )
    assert _imported_by(code, ("numpy",)) == []


def _imported_by(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().replace("'", '"'))
    return found


def test_pipeline_exports_resolve_lazily_to_their_objects() -> None:
    import pipeline

    for name in pipeline.__all__:
        value = getattr(pipeline, name)
        assert not isinstance(value, type(pipeline)), name  # never a submodule of that name
    assert callable(pipeline.stage)
    assert pipeline.Split.__name__ == "Split"
    with pytest.raises(AttributeError):
        _ = pipeline.no_such_name
