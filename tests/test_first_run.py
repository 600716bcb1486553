"""The first hour: what ``process`` prints at the end of a run, run as a real subprocess.

* The README's "Your first run" blocks are what ``make process`` prints, a first time and again
  (everything reused): compared line for line, only times, rates, the machine's worker counts,
  which stage was the bottleneck and the verdicts (matters of timing) left out.
* A run with failures lists them with their reasons, at most 20, then the command that lists
  them all; that command, run as printed, does.
* A re-run shows everything ``reused``: on the console, in the manifest, ``stats.csv``,
  ``data_stats.csv`` and the report's contact sheet.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages.parts import is_data_result
from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"
README = (ROOT / "README.md").read_text()
FIRST_RUN = README.split("\n## Your first run\n", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```text\n(.*?)```", FIRST_RUN, flags=re.S)
#: what `make process` runs (Makefile: INPUT and OUTPUT defaults)
MAKE_PROCESS = ["sample_data/images", "sample_data/data", "--output", "out"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=100,
    )


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A folder that looks like a fresh clone for the command: ``sample_data/`` in it."""
    (tmp_path / "sample_data").symlink_to(SAMPLES, target_is_directory=True)
    return tmp_path


# -- normalising what truly varies ---------------------------------------------------------------
_SECONDS = re.compile(r"\d+\.\d+ s\b|\d+ min \d+ s\b")
_RATE = re.compile(r"\(\d+\.\d+ inputs/s\)")


def normalise(text: str) -> list[str]:
    """``text``'s lines with times and rates masked; in the stage table only the stage, its
    kind, items and failures kept (workers depend on the machine's cores, the rest is timing);
    the bottleneck and the advice masked (which stage, which verdicts, or none for too little
    work: timing too)."""
    lines, in_table = [], False
    for line in text.strip("\n").splitlines():
        line = _RATE.sub("(R inputs/s)", _SECONDS.sub("T s", line.rstrip()))
        if line.startswith("stage ") and "items/s" in line:
            in_table = True
        elif in_table and line.startswith("bottleneck: "):
            line = "bottleneck: <stage>"
        elif in_table and line.startswith("advice:"):  # verdicts follow, or none was given
            line = "advice: <verdicts>"
        elif in_table and line.startswith("  "):  # the verdicts: which, and what they say
            continue
        elif in_table and line and not line.startswith("-"):
            name, kind, _workers, items, failed, *_ = line.split()
            line = f"{name} {kind} W {items} {failed} <figures>"
        lines.append(line)
    return lines


def test_normalise_keeps_what_must_not_drift() -> None:
    text = (
        "done: 3 input(s) in 0.52 s (5.8 inputs/s): ok 3\n"
        "stage   kind   wkrs   items failed   items/s\n-----\n"
        "read    thread    8       3      0      5.8   33%  <- bottleneck\n"
        "bottleneck: read\n"
        "advice:\n"
        "  read: io-bound: ...\n"
        "  write: cpu: ...\n"
    )
    assert normalise(text) == [
        "done: 3 input(s) in T s (R inputs/s): ok 3",
        "stage   kind   wkrs   items failed   items/s",
        "-----",
        "read thread W 3 0 <figures>",
        "bottleneck: <stage>",
        "advice: <verdicts>",
    ]
    brief = "advice: none: each stage was busy under 0.5 s, too little to tell (a longer run says)"
    assert normalise(text.split("advice:")[0] + brief) == normalise(text)
    assert normalise(text.replace("ok 3", "ok 2")) != normalise(text)
    assert normalise(text.replace("3      0", "3      1")) != normalise(text)


# -- the README's first run ---------------------------------------------------------------------
def test_the_readme_runs_what_make_process_runs() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "INPUT ?= sample_data/images sample_data/data\n" in make
    assert "OUTPUT ?= out\n" in make
    assert (
        "$(PY) -m pipeline process $(INPUT) $(if $(URLS),--urls $(URLS)) --output $(OUTPUT)" in make
    )
    command = (
        ".venv/bin/python -m pipeline process sample_data/images sample_data/data --output out"
    )
    assert f"```sh\n{command}\n```" in FIRST_RUN
    assert "`pixpipe`" in FIRST_RUN
    assert "the same as `python -m pipeline`" in FIRST_RUN
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'pixpipe = "pipeline.__main__:run"' in pyproject


@pytest.mark.timeout(240)
def test_the_readme_first_run_is_what_the_command_prints(clone: Path) -> None:
    first_block, _failures, again_block = BLOCKS
    first = _cli(clone, "process", *MAKE_PROCESS)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    assert normalise(first.stderr) == normalise(first_block), first.stderr
    made = json.loads((clone / "out" / "summary.json").read_text())["collected"]
    again = _cli(clone, "process", *MAKE_PROCESS)
    assert again.returncode == 0, again.stderr
    assert normalise(again.stderr) == normalise(again_block), again.stderr
    _check_everything_reused(clone / "out", first.stderr)
    # what is built from every record is built from the reused ones the same way
    kept = json.loads((clone / "out" / "summary.json").read_text())["collected"]
    for name in ("data_aggregate", "near_duplicates", "stats_table", "data_table"):
        assert _unordered(kept[name]) == _unordered(made[name]), name
    assert kept["failures"] == {"count": 0, "first": []}


def _unordered(collected: dict[str, Any]) -> dict[str, Any]:
    """A collector's result with its lists in a fixed order (records come in any order)."""
    return {
        k: sorted(json.dumps(v, sort_keys=True) for v in value)
        if isinstance(value, list)
        else value
        for k, value in collected.items()
    }


def _check_everything_reused(out: Path, first_stderr: str) -> None:
    """The re-run reused every input: manifest, tables, summary and report say so."""
    recs = by_key(out)
    assert len(recs) == 14
    assert {r["status"] for r in recs.values()} == {"reused"}
    assert all("reason" not in r and r["result"] for r in recs.values())
    with open(out / "stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = {k for k, r in recs.items() if not is_data_result(r["result"])}
    assert len(images) == 10
    assert {r["key"] for r in rows} == images
    assert {r["status"] for r in rows} == {"reused"}
    assert all(r["sharpness"] and r["dhash"] for r in rows)  # the earlier statistics
    with open(out / "data_stats.csv", newline="") as fh:
        data_rows = list(csv.DictReader(fh))
    assert {r["key"] for r in data_rows} == set(recs) - images
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"reused": 14}
    assert summary["folder_counts"] == {"reused": 14}
    assert summary["exit_code"] == 0
    report = (out / "report.html").read_text()
    tiles = re.findall(r'<figure class="reused"><img src="([^"]+)"', report)
    assert len(tiles) == len(images)
    assert all((out / src).is_file() for src in tiles)
    assert '<figure class="ok">' not in report
    assert "ok 14" in first_stderr


@pytest.mark.timeout(240)
def test_the_readme_failures_block_is_what_a_run_with_failures_prints(clone: Path) -> None:
    (block,) = [b.splitlines() for b in BLOCKS if b.startswith("failed: ")]
    done = _cli(clone, "process", "sample_data/edge", "sample_data/data", "--output", "out")
    assert done.returncode == 1, done.stderr
    printed = done.stderr.splitlines()
    start = printed.index(block[0])
    got = printed[start : start + len(block)]
    want = [line.replace(".venv/bin/python -m pipeline", _interpreter(clone)) for line in block]
    failures = len(block) - 3  # the failures come in the order they happened
    assert (got[0], got[-2:]) == (want[0], want[-2:])
    for line in want[1 : 1 + failures]:
        (match,) = [g for g in got[1 : 1 + failures] if g.startswith(line.removesuffix(" …"))]
        assert match == line or line.endswith(" …"), (line, match)


def _interpreter(cwd: Path) -> str:
    """What the console names this interpreter as (see app.console._interpreter)."""
    try:
        return f"{Path(sys.executable).relative_to(cwd)} -m pipeline"
    except ValueError:
        for name in ("python3", "python"):
            found = shutil.which(name, path=_env().get("PATH"))
            exe = Path(sys.executable)
            if (
                found
                and Path(found).absolute().parent == exe.absolute().parent
                and Path(found).resolve() == exe.resolve()
            ):
                return f"{name} -m pipeline"
        return f"{shlex.quote(sys.executable)} -m pipeline"


# -- failures: listed with their reasons, capped, and the command ---------------------------------
def _bad_folder(tmp_path: Path, n: int, *, hostile: bool = False) -> Path:
    """``n`` truncated JPEGs (they fail in resize), two good images and a text file."""
    src = tmp_path / "in"
    src.mkdir()
    truncated = (SAMPLES / "edge" / "truncated.jpg").read_bytes()
    for i in range(n):
        (src / f"bad_{i:02d}.jpg").write_bytes(truncated)
    if hostile:  # a newline, an escape sequence and a byte that is not UTF-8
        with open(os.path.join(os.fsencode(src), b"evil\n\x1b[31m\xff.jpg"), "wb") as fh:
            fh.write(truncated)
    for name in ("640x480_rgb.jpg", "300x300_small.png"):
        shutil.copy(SAMPLES / "images" / name, src)
    (src / "notes.txt").write_text("not an image\n")
    return src


def _block(lines: list[str], head: str) -> list[str]:
    """The line starting with ``head`` and the indented lines under it."""
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return lines[start:end]


@pytest.mark.timeout(240)
def test_failures_are_capped_at_20_then_the_command_lists_them_all(tmp_path: Path) -> None:
    _bad_folder(tmp_path, 23)
    done = _cli(tmp_path, "process", "in", "--output", "out", "--size", "64")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[1].startswith("done: 26 input(s) in ")
    assert lines[1].endswith(": ok 2, failed 23, skipped 1")
    failed = _block(lines, "failed: ")
    assert failed[0] == "failed: 23"
    shown = failed[1:21]
    pattern = re.compile(r"  bad_\d\d\.jpg: TruncatedImage in resize: truncated image data: .+")
    assert all(pattern.fullmatch(line) for line in shown), shown
    assert len(set(shown)) == 20
    cmd = f"{_interpreter(tmp_path)} failures out"
    assert failed[21:] == [f"  … and 3 more: {cmd}"]
    assert f"skipped: 1 not processed; why: {cmd} --status skipped" in lines
    assert "report:   out/report.html  (open it in a browser)" in lines
    assert "manifest: out/manifest.jsonl  (one line per input)" in lines
    assert "images:   out/64/  (one per size, mirroring the input folders)" in lines
    assert (tmp_path / "out" / "report.html").is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["collected"]["failures"]["count"] == 23
    assert len(summary["collected"]["failures"]["first"]) == 20

    # the command, run as printed, lists every failure: whole messages, one line each
    listed = subprocess.run(
        [*shlex.split(cmd)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert sorted(rows) == sorted(
        f"bad_{i:02d}.jpg: TruncatedImage in resize: {r['error']}"
        for i in range(23)
        for r in [by_key(tmp_path / "out")[f"bad_{i:02d}.jpg"]]
    )
    assert set(shown) <= {f"  {row}" for row in rows}
    assert listed.stderr.strip() == "23 failed input(s) in out/manifest.jsonl"
    skipped = subprocess.run(
        [*shlex.split(cmd), "--status", "skipped"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert skipped.stdout.splitlines() == [
        "notes.txt: not an image or data file: text (named .txt) (stage read)"
    ]


@pytest.mark.timeout(240)
def test_a_hostile_name_is_printed_escaped_on_one_line(tmp_path: Path) -> None:
    _bad_folder(tmp_path, 1, hostile=True)
    done = _cli(tmp_path, "process", "in", "--output", "out", "--size", "64")
    assert done.returncode == 1, done.stderr
    assert "\x1b" not in done.stderr
    failed = _block(done.stderr.splitlines(), "failed: ")
    assert failed[0] == "failed: 2"
    assert "  bad_00.jpg: TruncatedImage in resize: " in "\n".join(failed)
    (evil,) = [line for line in failed if "evil" in line]
    assert evil.startswith("  evil\\x0a\\x1b[31m\\xff.jpg: TruncatedImage in resize: ")
    cmd = f"{_interpreter(tmp_path)} failures out"
    assert failed[-1] == f"  all of them, with whole messages: {cmd}"
    listed = _cli(tmp_path, "failures", "out")
    assert listed.returncode == 0
    assert "\x1b" not in listed.stdout
    assert any(
        row.startswith("evil\\x0a\\x1b[31m\\xff.jpg: ") for row in listed.stdout.splitlines()
    )


def test_the_failures_hint_names_an_output_folder_that_is_not_utf8(tmp_path: Path) -> None:
    """An output folder whose name is not UTF-8: the hint quoted a surrogate ('out\\udcfe'),
    which names no folder; in bash's $'...' it does, and runs."""
    _bad_folder(tmp_path, 1)
    out = os.fsdecode(b"out\xfe 'x'")
    done = _cli(tmp_path, "process", "in", "--output", out, "--size", "64", "--quiet")
    assert done.returncode == 1
    hint = done.stderr.splitlines()[-1]
    assert hint.endswith("failures $'out\\xfe \\x27x\\x27'"), hint
    cmd = hint.split("list them: ", 1)[1]
    listed = subprocess.run(
        ["bash", "-c", cmd], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("bad_00.jpg: TruncatedImage")


@pytest.mark.timeout(240)
def test_quiet_prints_only_the_failures_line(tmp_path: Path) -> None:
    _bad_folder(tmp_path, 2)
    done = _cli(tmp_path, "process", "in", "--output", "out", "--size", "64", "--quiet")
    assert done.returncode == 1
    cmd = f"{_interpreter(tmp_path)} failures out"
    assert done.stderr.splitlines() == [f"2 input(s) failed; list them: {cmd}"]
    for path in (tmp_path / "in").glob("bad_*"):
        path.unlink()
    done = _cli(tmp_path, "process", "in", "--output", "out", "--size", "64", "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_failures_of_a_folder_that_is_no_output_is_a_usage_error(tmp_path: Path) -> None:
    done = _cli(tmp_path, "failures", "nowhere")
    assert done.returncode == 2
    assert done.stderr.strip() == "no manifest in nowhere: give the output folder of a process run"
    bad = _cli(tmp_path, "failures", "out", "--status", "ok")
    assert bad.returncode == 2
    assert "invalid choice: 'ok'" in bad.stderr


def test_failures_on_a_stdout_that_cannot_encode_a_name(tmp_path: Path) -> None:
    """A name that stdout's encoding cannot write (ASCII, Latin-1 locales): written as
    \\uXXXX, as stderr does; it was a UnicodeEncodeError traceback, exit 1."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "日本.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 300)
    assert _cli(tmp_path, "process", "in", "-o", "out", "--quiet").returncode == 1
    env = {**_env(), "PYTHONIOENCODING": "ascii"}
    listed = subprocess.run(
        [sys.executable, "-m", "pipeline", "failures", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("\\u65e5\\u672c.jpg: ")


def test_failures_of_a_damaged_manifest_is_a_clear_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in the manifest: a LedgerError naming the line (exit 3), as a
    cut-off JSON line gives; it was a UnicodeDecodeError traceback."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.jsonl").write_bytes(b"\xff\xfe garbage\n")
    done = _cli(tmp_path, "failures", "out")
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "manifest.jsonl:1: not a JSON record (bytes not UTF-8" in done.stderr


@pytest.mark.parametrize("lines", [3, 20_000])
def test_failures_into_a_pipe_that_closes_early_ends_quietly(tmp_path: Path, lines: int) -> None:
    """``pixpipe failures out | head -1``: the reader leaves after one line. The command stops
    writing and ends as a program that SIGPIPE ended would (141), without a traceback (it
    printed BrokenPipeError's); a list short enough to be written whole before the reader
    leaves ends at its final flush, the same way."""
    out = tmp_path / "out"
    out.mkdir()
    record = {"status": "failed", "stage": "resize", "error_type": "DecodeError"}
    (out / "manifest.jsonl").write_text(
        "".join(
            json.dumps({"key": f"photo-{i:06d}.jpg", **record, "error": "broken " * 8}) + "\n"
            for i in range(lines)
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "failures", "out"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    if lines > 3:
        assert proc.stdout.readline().startswith(b"photo-000000.jpg: DecodeError in resize")
    proc.stdout.close()  # as head does once it has its line
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=100) in (0, 141), err
    if lines > 3:
        assert proc.returncode == 141
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err


@pytest.mark.timeout(240)
def test_inputs_found_gone_are_said(tmp_path: Path) -> None:
    """Records of earlier inputs that a run finds gone become ``skipped`` (stamped with its run)
    but are none of its own inputs' counts: a line says how many, and where to see them."""
    src = _bad_folder(tmp_path, 1)
    assert _cli(tmp_path, "process", "in", "--output", "out", "--size", "64").returncode == 1
    (src / "bad_00.jpg").unlink()
    done = _cli(tmp_path, "process", "in", "--output", "out", "--size", "64")
    assert done.returncode == 0, done.stderr
    cmd = f"{_interpreter(tmp_path)} failures out"
    line = "gone: 1 earlier record(s) now skipped, their inputs gone (or bad entries mended)"
    assert f"{line}: {cmd} --status skipped" in done.stderr.splitlines()
