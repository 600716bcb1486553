"""What the command line prints: the one module of the application that writes to the terminal.

The end-of-run summary goes to stderr (stdout stays free for a command's own output); the
``profile`` command's stage table and the ``failures`` command's list go to stdout, since they
are those commands' results.

The end of a ``process`` run reads, outcome first (the README's "Your first run" shows it
whole, and a test compares)::

    done: 36 input(s) in 0.39 s (93.1 inputs/s): ok 18, reused 14, failed 2, skipped 2
    reused: 14 done by an earlier run and unchanged: not processed again (--force redoes them)
    failed: 2
      edge/truncated.jpg: TruncatedImage in resize: truncated image data: ...
      edge/bomb.png: DecompressionBomb in resize: Image size (900000000 pixels) ...
      all of them, with whole messages: .venv/bin/python -m pipeline failures out
    skipped: 2 not processed; why: .venv/bin/python -m pipeline failures out --status skipped
    images:   out/512/  (one per size, mirroring the input folders)
    report:   out/report.html  (open it in a browser)
    manifest: out/manifest.jsonl  (one line per input)
    also:     stats.csv, stats.parquet, data_stats.csv, summary.json (in the same folder)

    <the stage table>
    bottleneck: <stage>
    advice:
      <the verdict of each stage that is not only waiting for another (starved, idle)>

At most 20 failures are listed (:class:`~app.collectors.FailureList` keeps them), then
``… and N more: <command>``.
Every name and message is printed with :func:`pipeline.printable` (undecodable bytes and
control characters as ``\\xNN``): one line per input, whatever its file name holds.
``--quiet`` prints nothing after a run, except one line when inputs failed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import printable, read_manifest

if TYPE_CHECKING:
    from pipeline import RunResult

__all__ = [
    "LISTED",
    "failures_command",
    "print_profile",
    "print_records",
    "print_summary",
    "record_line",
    "summary_lines",
]

#: statuses in the order the counts are printed (any other after them, sorted)
ORDER = ("ok", "reused", "failed", "skipped", "cancelled")
#: what ``python -m pipeline failures --status`` lists
LISTED = ("failed", "skipped", "cancelled")
#: a failure's message on the summary is cut to this many characters (whole in ``failures``)
MESSAGE_WIDTH = 160
#: files of the output folder named on the summary when they are there
TABLES = ("stats.csv", "stats.parquet", "data_stats.csv", "summary.json")
#: verdicts left out of the console's advice (in report.html and summary.json all the same)
QUIET_VERDICTS = ("starved", "idle", "brief")
#: said instead of the advice when every stage that saw items was too briefly busy to judge
TOO_BRIEF = "advice: none: each stage was busy under {:g} s, too little to tell (a longer run says)"
#: the output folders of the images: one per ``--size`` (``512``, ``640x480``, ``640x``, ``x480``)
SIZE_FOLDER = re.compile(r"\d+|\d+x\d*|x\d+")


def print_summary(
    result: RunResult, *, quiet: bool, elapsed: float | None = None, stored_at: str | None = None
) -> None:
    """The end-of-run summary on stderr (:func:`summary_lines`); with ``quiet``, only a line
    naming the failures, when there are some. ``elapsed``: the command's seconds (default: the
    run's); ``stored_at``: the storage URL of the output, when it is one (the run's files
    named then are its local working copies)."""
    if quiet:
        if result.failed and result.output is not None:
            print(
                f"{result.failed} input(s) failed; list them: {failures_command(result.output)}",
                file=sys.stderr,
            )
        return
    print("\n".join(summary_lines(result, elapsed, stored_at)), file=sys.stderr)


def summary_lines(
    result: RunResult, elapsed: float | None = None, stored_at: str | None = None
) -> list[str]:
    """The outcome (counts, failures, what was reused, the files to open), then the stages."""
    from pipeline.advice import MIN_BUSY, render_advice

    seconds = result.duration if elapsed is None else elapsed
    lines = ["", _headline(result, seconds)]
    lines += _outcome(result)
    url = None
    if stored_at is not None:
        url = stored_at.rstrip("/") + "/"
        lines.append(f"stored:   {url}  (the images, one folder per size, and the run's files)")
        lines.append("          below: the run's files' local working copies")
    if result.output is not None:
        lines += _files(result.output, url)
    if result.stages and any(s.items for s in result.stages):
        lines += ["", result.table()]
        if result.bottleneck:
            lines.append(f"bottleneck: {result.bottleneck}")
        # a stage only waiting for another says nothing new: its verdict is in the report
        said = [v for v in result.advice if v.kind not in QUIET_VERDICTS]
        if said:
            lines += ["advice:", render_advice(said)]
        elif any(v.kind == "brief" for v in result.advice):
            lines.append(TOO_BRIEF.format(MIN_BUSY))
    return lines


def _headline(result: RunResult, seconds: float) -> str:
    known = [k for k in ORDER if result.counts.get(k)]
    others = sorted(k for k in result.counts if k not in ORDER and result.counts[k])
    counts = ", ".join(f"{k} {result.counts[k]}" for k in [*known, *others]) or "nothing to do"
    rate = f" ({result.seen / seconds:.1f} inputs/s)" if result.seen and seconds > 0 else ""
    done = f"{result.seen} input(s) in {_duration(seconds)}{rate}: {counts}"
    if result.duplicates:  # the counts are of records: one per key
        done += f"; {result.duplicates} duplicate(s) of an earlier input's key ignored"
    if result.interrupted:
        by = f" by {result.stopped_by}" if result.stopped_by not in (None, "SIGINT") else ""
        return f"interrupted{by}: {done} (a re-run into the same folder resumes)"
    if result.error is not None:
        return f"stopped by an error: {done}\n  {printable(result.error)}"
    return f"done: {done}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _outcome(result: RunResult) -> list[str]:
    lines = []
    cmd = failures_command(result.output) if result.output is not None else None
    if result.reused:
        lines.append(
            f"reused: {result.reused} done by an earlier run and unchanged: not processed "
            "again (--force redoes them)"
        )
    if result.failed:
        lines += _failures(result, cmd)
    if result.skipped:
        why = f"; why: {cmd} --status skipped" if cmd else ""
        lines.append(f"skipped: {result.skipped} not processed{why}")
    revisited = result.collected.get("revisited")
    if isinstance(revisited, int) and revisited:  # (not in the counts: this run's inputs)
        why = f": {cmd} --status skipped" if cmd else ""
        lines.append(
            f"gone: {revisited} earlier record(s) now skipped, their inputs gone (or bad "
            f"entries mended){why}"
        )
    if result.cancelled:
        lines.append(f"cancelled: {result.cancelled} in flight when the run stopped")
    if result.not_started:
        lines.append(f"not started: {result.not_started}")
    stale = result.collected.get("stale_outputs") or {}
    if stale.get("removed"):
        lines.append(
            f"removed: {stale['removed']} earlier output(s) of redone inputs that no record "
            "lists any more (other names, format or sizes; or the input changed and failed)"
        )
    if stale.get("failed"):
        lines.append(f"not removed: {stale['failed']} stale output(s) (summary.json says why)")
    groups = (result.collected.get("near_duplicates") or {}).get("groups") or []
    if groups:
        lines.append(f"near-duplicates: {len(groups)} group(s) of similar images (in the report)")
    return lines


def _failures(result: RunResult, cmd: str | None) -> list[str]:
    """``failed: N``, a line per failure (the first 20) and the command that lists them all."""
    found = result.collected.get("failures") or {}
    first = [f for f in found.get("first") or () if isinstance(f, Mapping)]
    lines = [f"failed: {result.failed}"]
    lines += [f"  {record_line(f, 'failed', width=MESSAGE_WIDTH)}" for f in first]
    more = result.failed - len(first)
    if cmd is None:
        return lines + ([f"  … and {more} more"] if more > 0 else [])
    if more > 0:
        lines.append(f"  … and {more} more: {cmd}")
    else:
        lines.append(f"  all of them, with whole messages: {cmd}")
    return lines


def _files(output: Path, stored: str | None = None) -> list[str]:
    """The files to open. With ``stored`` (the output's storage URL) the report named is the
    stored one: the working copy's thumbnails are not beside it."""
    lines = []
    sizes = sorted(d.name for d in _folders(output) if SIZE_FOLDER.fullmatch(d.name))
    if sizes:
        shown = ", ".join(_path(output / name) + os.sep for name in sizes)
        lines.append(f"images:   {shown}  (one per size, mirroring the input folders)")
    lines += _shards(output)
    if stored is not None:
        lines.append(f"report:   {stored}report.html  (its thumbnails are beside it there)")
    elif (output / "report.html").is_file():
        lines.append(f"report:   {_path(output / 'report.html')}  (open it in a browser)")
    lines.append(f"manifest: {_path(output / 'manifest.jsonl')}  (one line per input)")
    tables = [name for name in TABLES if (output / name).is_file()]
    if tables:
        lines.append(f"also:     {', '.join(tables)} (in the same folder)")
    return lines


def _shards(output: Path) -> list[str]:
    """Training-set shards (stages.shards): ``*.tar`` (WebDataset, a metadata ``.parquet``
    beside each) or Parquet shards (``*.parquet`` beside their ``*_meta.parquet``)."""
    tars = sorted(output.glob("*.tar"))
    metas = sorted(output.glob("*_meta.parquet"))
    data = tars or [m.with_name(m.name.removesuffix("_meta.parquet") + ".parquet") for m in metas]
    if not data:
        return []
    kind = "WebDataset tar" if tars else "Parquet"
    first = _path(data[0]) + (" …" if len(data) > 1 else "")
    return [f"shards:   {len(data)} {kind} shard(s): {first}  (metadata and stats beside each)"]


def _folders(output: Path) -> list[Path]:
    try:
        return [d for d in output.iterdir() if d.is_dir()]
    except OSError:
        return []


def _path(path: Path) -> str:
    return printable(os.fspath(path))


def record_line(record: Mapping[str, Any], status: str, *, width: int | None = None) -> str:
    """One line for a manifest record (or a :class:`~app.collectors.FailureList` entry):
    ``key: ErrorType in stage: message`` for a failure, ``key: reason`` otherwise. ``width``
    cuts the message (its first line) to that many characters."""
    key = printable(str(record.get("key", "")))
    if status == "failed":
        kind, stage = str(record.get("error_type") or "Error"), record.get("stage")
        message = str(record.get("error") or "")
        where = f"{kind} in {stage}" if stage else kind
    else:
        where, message = "", str(record.get("reason") or "")
        if record.get("stage"):
            message += f" (stage {record['stage']})"
    if width is not None:
        first = message.strip().split("\n", 1)[0]
        message = first if len(first) <= width else first[: width - 1] + "…"
    message = printable(message)
    if message and message != where:
        return f"{key}: {where}: {message}" if where else f"{key}: {message}"
    return f"{key}: {where}" if where else key


def failures_command(output: Path) -> str:
    """The command that lists the failed inputs of ``output``, as this very interpreter (or
    the ``pixpipe`` script) runs it: copied into a shell, it works."""
    return f"{_interpreter()} failures {_shell_word(os.fspath(output))}"


def _shell_word(text: str) -> str:
    """``text`` quoted for a shell; a name with bytes that are not UTF-8, or with control
    characters, in bash's ``$'...'`` with ``\\xNN`` (quoted as it was, a surrogate was printed
    that names no folder)."""
    raw = os.fsencode(text)
    try:
        if raw.decode("utf-8").isprintable():
            return shlex.quote(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    kept = "".join(chr(b) if 32 <= b < 127 and b not in b"'\\" else f"\\x{b:02x}" for b in raw)
    return f"$'{kept}'"


def _interpreter() -> str:
    """The ``pixpipe`` script when that runs us (by name when the PATH finds it, else by its
    path); else this Python, named as short as it can be while still being this one: relative
    to the current folder (``.venv/bin/python``), the ``python3``/``python`` of the PATH when
    that is this interpreter, or its absolute path."""
    script = Path(sys.argv[0])
    if script.name == "pixpipe":
        found = shutil.which("pixpipe")
        on_path = found is not None and Path(found).resolve() == script.resolve()
        return "pixpipe" if on_path else shlex.quote(_short(script))
    exe = Path(sys.executable)
    if not exe.absolute().is_relative_to(Path.cwd()):
        for name in ("python3", "python"):
            found = shutil.which(name)
            if found is not None and _same(Path(found), exe):
                return f"{name} -m pipeline"
    return f"{shlex.quote(_short(exe))} -m pipeline"


def _short(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, else absolute."""
    path = path.absolute()
    cwd = Path.cwd()
    return os.fspath(path.relative_to(cwd) if path.is_relative_to(cwd) else path)


def _same(a: Path, b: Path) -> bool:
    """The same interpreter: in the same folder (a venv's ``bin``: its python is a symlink to
    the base one, whose ``sys.prefix`` differs) and the same file once symlinks are followed."""
    return a.absolute().parent == b.absolute().parent and a.resolve() == b.resolve()


def print_records(output: str | Path, status: str) -> int:
    """``failures``: each record of ``output/manifest.jsonl`` with ``status`` on stdout, one
    line each (:func:`record_line`, whole messages); a count on stderr. Exit code: 0, or 2 when
    the folder has no manifest. A storage output is read from this machine's working copy of
    its files (as a ``Path``, ``s3://b/run`` became ``s3:/b/run``: "no manifest")."""
    from stages.storage import is_url

    from .remote_output import working_folder

    folder = Path(output)
    if is_url(output):
        folder = working_folder(str(output))
        if not (folder / "manifest.jsonl").is_file():
            print(
                f"no manifest of {output} on this machine (its working folder {folder} has "
                "none): a run into a storage output keeps its files there; run this where the "
                "run ran, or give a folder holding a copy of its manifest.jsonl",
                file=sys.stderr,
            )
            return 2
    path = folder / "manifest.jsonl"
    if not path.is_file():
        print(
            f"no manifest in {_path(Path(folder))}: give the output folder of a process run",
            file=sys.stderr,
        )
        return 2
    n = 0
    for line in _listed(read_manifest(path), status):
        print(line)
        n += 1
    print(f"{n} {status} input(s) in {_path(path)}", file=sys.stderr)
    return 0


def _listed(records: Iterable[Mapping[str, Any]], status: str) -> Iterator[str]:
    for rec in records:
        if rec.get("status") == status:
            yield record_line(rec, status)


def print_profile(result: RunResult) -> None:
    """``profile``: the sample's rate, the stage table, the bottleneck and the advice, on stdout."""
    lines = [
        f"profile of {result.seen} input(s) in {result.duration:.2f} s "
        f"({result.seen / max(result.duration, 1e-9):.1f} inputs/s, outputs discarded)",
        result.table(),
        f"bottleneck: {result.bottleneck}",
        "advice:",
        result.advice_text(),
    ]
    print("\n".join(lines))
