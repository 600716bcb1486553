"""The ``process`` command: folders in, thumbnails, statistics and a manifest out.

    sources (walk, lazy) -> [download (async)] -> read (thread: plan a data file, read an
        object in storage) -> resize + crunch + write (process, fused: check+read+decode+
        resize+stats+write a local image file, which skips read / data chunk statistics)
        -> ledger

Numeric data files (``.npy``, ``.npz``, CSV/TSV) found among the inputs go through the same
stages (see :mod:`stages.steps`): the read stage splits each into chunks that the process
workers crunch in parallel, merged back into one record per array or file.

:class:`~app.config.ProcessConfig` holds every option; :func:`build_pipeline` turns it into a
:class:`~pipeline.Pipeline`; :func:`run_process` runs it with resume, the end-of-run tables
(:mod:`app.collectors`), and writes ``report.html`` (:mod:`app.report`) at the end of every run.
The tables and the report are built while the run goes, from one feed of the records
(:mod:`app.endofrun`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline import (
    Collector,
    ConfigError,
    FatalRunError,
    Item,
    LedgerError,
    Pipeline,
    Record,
    RunResult,
    Stage,
    Status,
    hold_folder,
    shown,
    stage,
)
from stages import steps
from stages.files import Loaded
from stages.parts import is_data_result
from stages.sources import (
    DATA_EXTENSIONS,
    DataFile,
    InputPlan,
    SourceFile,
    plan_inputs,
    walk_inputs,
)
from stages.storage import StorageError, StorageURL, is_url, process_local, use_options
from stages.thumbs import Rendered, outputs_intact, renamed_output

from .collectors import (
    DataAggregate,
    DataTable,
    FailureList,
    MadeBy,
    NearDuplicates,
    StatsTable,
)
from .config import ProcessConfig
from .endofrun import RecordFeed
from .gone import REASON_GONE, mark_gone
from .input_keys import earlier_inputs, remember_inputs
from .leftovers import after_run, remove_stale_temps, unfinished
from .report import ReportSheet, write_report
from .shard_folder import KEPT_TYPES, UnrecordedShards, check_shard_folder, refuse_moved_rows
from .stale import StaleOutputs
from .storage_config import shown_argv

log = logging.getLogger("app")

__all__ = ["REASON_GONE", "build_pipeline", "mark_gone", "run_process"]


def build_pipeline(cfg: ProcessConfig) -> Pipeline:
    """The ``process`` pipeline. Each stage takes its own kind of value (``accepts``): the engine
    routes URLs, image files and data files each through the stages that work on them."""
    if cfg.output_format != "files":
        return Pipeline(_shard_stages(cfg), name="process")
    downloading = [_download_stage(cfg)] if cfg.download is not None else []
    return Pipeline(
        [*downloading, _read_stage(cfg), *_cpu_stages(cfg), _write_stage(cfg)], name="process"
    )


def _download_stage(cfg: ProcessConfig) -> Stage:
    """One aiohttp session per run (the stage's context); fetch enforces connect/read/total
    timeouts and retries itself, so the stage has no engine timeout of its own."""
    from stages.fetching import UrlSource, download, session_factory

    assert cfg.download is not None
    return stage(
        download,
        cfg.download,
        kind="async",
        name="download",
        accepts=UrlSource,
        workers=cfg.workers["download"],
        capacity=64,
        context=session_factory(cfg.download),
        context_arg="session",
    )


def _read_stage(cfg: ProcessConfig) -> Stage:
    """Inbox of small path records; batches of checks go to the threads (an image's first
    bytes and size: its worker reads it); data files are planned here (header only) and split
    into chunks for the process workers."""
    return stage(
        steps.read,
        cfg.max_file_size,
        cfg.data,
        kind="thread",
        name="read",
        accepts=(SourceFile, DataFile),
        workers=cfg.workers["read"],
        capacity=64,
        timeout=cfg.timeout,
        retries=1,
        retry_on=(InterruptedError,),
    )


def _cpu_stages(cfg: ProcessConfig) -> list[Stage]:
    """resize (images) and crunch (data chunks): adjacent process stages, fused into one worker
    call with write (:func:`_write_stage`)."""
    w = cfg.workers
    resize = _resize_stage(
        cfg,
        steps.resize,
        cfg.resize,
        cfg.max_file_size,
        cfg.data,
        accepts=steps.IMAGES,
        small=True,
    )
    crunch = stage(
        steps.crunch,
        kind="process",
        name="crunch",
        accepts=steps.PARTS,
        workers=w["crunch"],
        capacity=2 * w["crunch"],
        timeout=cfg.timeout,
        # a fused group's batch is the least of its stages' max_batch: the batcher's ~20 ms
        # per call keeps batches of big chunks short anyway
        max_batch=RESIZE_BATCH,
    )
    return [resize, crunch]


#: Items per worker call of the resize group, at most: a local image's item is a path, so a
#: worker takes several at once (the batcher aims at ~20 ms per call: 4-6 small images, one
#: 12 MP photo), and the parent's cost per call (a message each way, a driver's turn on the
#: loop) is shared by the batch. 2,000 web JPEGs -> 256 px: see bench/cost.py.
RESIZE_BATCH = 16


def _resize_stage(
    cfg: ProcessConfig,
    fn: Callable[..., object],
    *args: object,
    accepts: type | tuple[type, ...] = Loaded,
    small: bool = False,
) -> Stage:
    """The decode-and-resize stage, one per core (files and shards alike): ``fn(value,
    *args)``. Its inbox holds 2 items per worker when they are whole files (up to
    max_file_size each: downloads, shard rows); ``small`` (local files, read by the worker
    itself, unless the run downloads too): 2 batches per worker."""
    workers = cfg.workers["resize"]
    paths_only = cfg.download is None and not any(is_url(i) for i in cfg.inputs)
    per_worker = 2 * RESIZE_BATCH if small and paths_only else 2
    return stage(
        fn,
        *args,
        kind="process",
        name="resize",
        accepts=accepts,
        workers=workers,
        capacity=per_worker * workers,
        timeout=cfg.timeout,
        max_batch=RESIZE_BATCH if small else 4,
    )


def _write_stage(cfg: ProcessConfig) -> Stage:
    """Atomic writes of the encoded thumbnails, in the worker that made them: a process stage
    next to resize, so the two are one worker call and the outputs' bytes never reach the
    parent. It runs on the resize group's workers (a fused group has the most workers any of
    its stages asks for): ``--workers write=N`` gives it no processes of its own.

    An output in a store private to each process (``memory://``) is written by the parent's
    threads instead (``--workers write=N`` of them): a worker's writes there would be lost."""
    in_parent = process_local(cfg.output)
    return stage(
        steps.write,
        cfg.output,  # a path, or a storage URL holding its options (stages.storage)
        kind="thread" if in_parent else "process",
        name="write",
        accepts=Rendered,
        workers=cfg.workers["write" if in_parent else "resize"],
        capacity=32 if in_parent else None,
        timeout=cfg.timeout,
    )


def _shard_stages(cfg: ProcessConfig) -> list[Stage]:
    """Rows to shards (:mod:`stages.samples`, :mod:`stages.shards`): download and resize,
    which turn a bad input into a ``Rejected`` value, then the shard stages."""
    from stages.download import make_session
    from stages.sample_fetch import download_sample
    from stages.samples import SampleFilters, SampleSource, render_sample

    assert cfg.download is not None
    w = cfg.workers
    return [
        stage(
            download_sample,
            cfg.download,
            kind="async",
            name="download",
            accepts=SampleSource,
            workers=w["download"],
            capacity=64,
            context=functools.partial(make_session, cfg.download),
            context_arg="session",
        ),
        _resize_stage(
            cfg, render_sample, cfg.resize, SampleFilters(cfg.min_image_size, cfg.max_aspect_ratio)
        ),
        *_writing_shards(cfg),
    ]


def _sample_options(cfg: ProcessConfig) -> dict[str, Any]:
    """What a training set's folder holds of its runs (:mod:`app.shard_folder`): the sample
    options, and the types its kept columns have in the shards."""
    held = dict(cfg.sample_options())
    if cfg.output_format != "files" and cfg.keep_columns:
        from stages.shards import kept_types

        types = kept_types(cfg.urls, cfg.keep_columns)
        held[KEPT_TYPES] = {c: str(t) for c, t in types.items()}
    return held


def _writing_shards(cfg: ProcessConfig) -> list[Stage]:
    """``write`` (one coroutine owns the open shard) and ``commit``, where each input waits
    until its shard is renamed. Every input of the open shard must be able to wait at once, or
    the shard would never fill: ``commit`` has up to ``COMMIT_WORKERS`` workers, and an inbox
    that holds a shard, where the inputs that find no worker wait (a channel grows with what
    it holds, workers cost memory and start-up time each, whatever the table's size). Those
    of earlier shards are ahead in the inbox, so workers never all wait while a committed
    input stays behind them. Its values are small records (the image bytes are in the shard
    by then). The kept columns' types are read from the tables here, so that every shard has
    the same schema."""
    from stages.samples import Rejected
    from stages.shards import COMMIT_WORKERS, Packed, commit, kept_types, open_shards, pack

    per_shard = cfg.samples_per_shard
    opener = functools.partial(
        open_shards,
        str(cfg.output),
        per_shard,
        cfg.output_format,
        cfg.backend == "dask",
        kept_types(cfg.urls, cfg.keep_columns),
        cfg.caption_col is not None,
    )
    commits = min(per_shard + 1, COMMIT_WORKERS)
    return [
        stage(
            pack,
            kind="async",
            name="write",
            accepts=(Rendered, Rejected),
            workers=1,
            capacity=32,
            context=opener,
            context_arg="shards",
        ),
        stage(
            commit, kind="async", name="commit", accepts=Packed, workers=commits, capacity=per_shard
        ),
    ]


def _url_inputs(cfg: ProcessConfig) -> Iterator[Item | Record]:
    """The ``--urls`` inputs: tables as rows keyed by row number when writing shards; URL
    lists (and, for ``files``, CSV/JSON lists) as URLs keyed by themselves."""
    if cfg.output_format != "files":  # every table at once: the second's keys are 1_…
        from stages.samples import sample_inputs

        yield from sample_inputs(
            cfg.urls, url_col=cfg.url_col, caption_col=cfg.caption_col, keep=cfg.keep_columns
        )
        return
    for path in cfg.urls:
        if cfg.reads_table(path):
            yield from _table_urls(cfg, path)
        else:
            from stages.fetching import url_inputs

            yield from url_inputs([path])


def _table_urls(cfg: ProcessConfig, path: str) -> Iterator[Item | Record]:
    """A table's rows as URL items for the ``files`` output (keyed by URL, as URL lists; a
    row without a good URL by ``TABLE#rowN``, as a URL list's bad line is ``LIST#lineN``)."""
    from stages.download import url_to_relpath
    from stages.fetching import UrlSource
    from stages.samples import sample_inputs

    rows = sample_inputs(
        [path], url_col=cfg.url_col, caption_col=cfg.caption_col, keep=cfg.keep_columns
    )
    for obj in rows:
        if isinstance(obj, Item):
            src = obj.value
            meta = {**src.extra, **({"caption": src.caption} if src.caption is not None else {})}
            extra = {k: str(v) for k, v in meta.items()}
            value = UrlSource(src.url, url_to_relpath(src.url), extra)
            yield Item(key=src.url, value=value, source=obj.source, meta=meta)
        else:  # a bad row: keyed by its table and row (a bare row number is a file's name)
            obj.key = f"{path}#row{int(obj.key)}"
            yield obj


def run_process(
    cfg: ProcessConfig, *, limit: int | None = None, stop_helpers: bool = False
) -> RunResult:
    """Run ``process``; ``limit`` takes only the first inputs (``profile`` samples that way).
    ``stop_helpers``: stop the workers' forkserver and the resource tracker as soon as the
    workers are gone, before the end-of-run work (``Pipeline.run``'s option; the command line
    runs one pipeline per process).

    The output folder is held for the whole command (run, tables, report): a second command
    into it stops at once with :class:`~pipeline.FolderBusy` (exit 2).
    """
    use_options(cfg.storage_options)  # for storage URLs held as plain strings (records' sources)
    out, mirror = _output_folder(cfg)
    with hold_folder(out, argv=shown_argv(command_line())), mirror:
        remove_stale_temps(out, below=unfinished(out))
        check_shard_folder(
            out, cfg.output_format, cfg.fingerprint(), _sample_options(cfg), force=cfg.force
        )
        earlier = earlier_inputs(out)  # the keys the folder's files have: kept (app.input_keys)
        try:
            plan = plan_inputs(cfg.inputs, earlier)
        except (OSError, StorageError) as exc:  # an input in storage that stopped answering
            raise ConfigError(f"cannot look at the inputs: {exc}") from exc
        remember_inputs(out, plan, earlier)
        # the tables and the report: sinks of the one feed of the folder's records (see
        # app.endofrun), built while the run goes
        feed = RecordFeed(out)
        sheet = ReportSheet(feed)
        table = StatsTable(out, feed)
        dups = NearDuplicates(table)
        files = cfg.output_format == "files"
        stale: list[Collector] = (
            [StaleOutputs(_output_root(cfg, out), out, feed)]
            if files
            else [UnrecordedShards(out, cfg.output_format, feed)]
        )
        try:
            try:
                tables: list[Collector] = [feed, table, dups, DataTable(out, feed), *stale]
                taken = stale[0].taken if isinstance(stale[0], StaleOutputs) else None
                result = _run(cfg, out, plan, limit, tables, taken, stop_helpers=stop_helpers)
            finally:
                dups.close()  # its child, if one still runs; the table's temporary files
                _write_report(out, sheet, dups)
        except (FatalRunError, KeyboardInterrupt):
            # a run that failed (too many worker crashes, an engine error) or a Ctrl-C at its
            # end: its workers are gone, and one may have been stopped mid-write
            remove_stale_temps(out, below=True)
            raise
        after_run(out, result)
        return result


def command_line() -> list[str]:
    """This process's command line as it was typed, for the lock file and ``summary.json``:
    Python's own (``sys.orig_argv``: ``python -m pipeline process …``, where ``sys.argv[0]``
    is only the path of ``pipeline/__main__.py``), when it ends with ``sys.argv``'s arguments;
    else ``sys.argv``."""
    typed, args = list(sys.orig_argv), sys.argv[1:]
    if len(typed) > len(args) and typed[len(typed) - len(args) :] == args:
        return typed
    return list(sys.argv)


def _output_folder(cfg: ProcessConfig) -> tuple[Path, contextlib.AbstractContextManager[None]]:
    """The folder of the run's own files (ledger, manifest, tables, report): the output, or
    for a storage URL a working folder mirrored to it (:mod:`app.remote_output`)."""
    if not is_url(cfg.output):
        return Path(cfg.output), contextlib.nullcontext()
    from .remote_output import mirrored, working_folder

    local = working_folder(cfg.output)
    local.mkdir(parents=True, exist_ok=True)
    return local, mirrored(StorageURL(cfg.output, cfg.storage_options), local, cfg.mirror_every)


def _run(
    cfg: ProcessConfig,
    out: Path,
    plan: InputPlan,
    limit: int | None,
    tables: Sequence[Collector],
    taken: Callable[[str], bool] | None,
    *,
    stop_helpers: bool,
) -> RunResult:
    pipe = build_pipeline(cfg)
    inputs: Iterator[Item | Record] = itertools.chain(
        walk_inputs(
            plan,
            include=cfg.include,
            exclude=cfg.exclude,
            case_sensitive_globs=cfg.case_sensitive_globs,
            data_extensions=DATA_EXTENSIONS,
            never=[out, *([cfg.output] if is_url(cfg.output) else [])],
            verify_content=cfg.verify_content,
            follow_symlinks=cfg.follow_symlinks,
        ),
        _url_inputs(cfg),
    )
    if limit is not None:
        inputs = itertools.islice(inputs, limit)
    inputs = _prepared(inputs, cfg)
    backend = None
    if cfg.backend == "dask":
        from pipeline.backends.dask import DaskBackend

        backend = DaskBackend(cfg.scheduler, shard_size=cfg.shard_size)
    return pipe.run(
        inputs,
        backend=backend,
        autoscale=cfg.auto_workers,
        output=out,
        collectors=[*tables, DataAggregate(), FailureList(), MadeBy(shown_argv(command_line()))],
        fingerprint=cfg.fingerprint(),  # items carry their own (see _prepared)
        is_done=_is_done(cfg, out),
        outdated=_outdated(cfg),
        retry_failed=cfg.retry_failed,
        force=cfg.force,
        progress=False if cfg.quiet else cfg.progress,
        revisit=None
        if limit is not None
        else functools.partial(mark_gone, taken=taken, lists=frozenset(cfg.urls)),
        stop_helpers=stop_helpers,
    )


def _is_done(cfg: ProcessConfig, out: Path) -> Callable[[Record], bool]:
    """Resume's test of an ``ok`` record: its outputs (files) still there as written, or its
    shard still there. A training set's row that a stage declined (a filter, an opt-out) is
    done while its shard holds it: it was downloaded again on every run, into a new shard, and
    the one before was set aside as unrecorded. A file's skipped record is not done: an
    input without identity (a URL) is asked again."""
    if cfg.output_format != "files":
        from stages.shards import shard_done

        in_shard = shard_done(out)  # (a skipped row's shard is in its record's meta)
        return lambda rec: in_shard(rec.meta if rec.status is Status.SKIPPED else rec.value)
    root = _output_root(cfg, out)
    return lambda rec: (
        rec.status is not Status.SKIPPED
        and (is_data_result(rec.value) or outputs_intact(root, rec.value))
    )


def _output_root(cfg: ProcessConfig, out: Path) -> str:
    """Where the outputs are: the output folder, or a storage URL of this run's own, which
    keeps its options and the folder listings it reads."""
    return StorageURL(cfg.output, cfg.storage_options) if is_url(cfg.output) else str(out)


def _outdated(cfg: ProcessConfig) -> Callable[[Item, Record], str | None]:
    """Resume's test of a done record that the input's identity and the options leave done:
    a shard's row as it was (:func:`~app.shard_folder.refuse_moved_rows`); a file's output
    names as today's (:func:`_renamed`), and, unless ``--ignore-noai``, no image of a site
    that opts out of AI use, kept by an earlier run that ignored it (redone, it is skipped,
    and its outputs go)."""
    if cfg.output_format != "files":
        return refuse_moved_rows
    if cfg.ignore_noai:
        return _renamed

    def outdated(item: Item, rec: Record) -> str | None:
        got = rec.value.get("download") if isinstance(rec.value, dict) else None
        if isinstance(got, dict) and got.get("noai"):
            return f"X-Robots-Tag: {got['noai']}, kept by a run with --ignore-noai"
        return _renamed(item, rec)

    return outdated


def _renamed(item: Item, rec: Record) -> str | None:
    """Resume's test of a done record's output names: an input whose outputs this run would
    write elsewhere (its tag changed: a sibling named like one of its outputs came or went;
    a twin appeared) is redone under today's names, so no two records ever list one file."""
    place = steps.output_place(item.value)
    moved = None if place is None else renamed_output(*place, rec.value)
    return None if moved is None else f"output names changed (was {shown(moved)})"


def _prepared(inputs: Iterable[Item | Record], cfg: ProcessConfig) -> Iterator[Item | Record]:
    """Each item with the fingerprint of the options its kind depends on (data files: the data
    options; images: the image options), known from the source rather than guessed from the
    key (a key may hold ``.npz:`` and still be an image); a local file named as an image goes
    to the resize workers unopened (:func:`stages.steps.to_worker`)."""
    image, data = cfg.fingerprint(), cfg.data_fingerprint()
    arrays = cfg.data_fingerprint(csv=False)
    to_worker = steps.to_worker
    for obj in inputs:
        if isinstance(obj, Item):
            if isinstance(obj.value, DataFile):
                obj.fingerprint = data if obj.value.is_table() else arrays
            else:
                obj.fingerprint = image
                obj.value = to_worker(obj.value)
        yield obj


def _write_report(out: Path, sheet: ReportSheet, dups: NearDuplicates) -> None:
    """``report.html`` after every run (failed and interrupted ones too); never raises.

    From ``sheet`` and the groups' thumbnails when the run got as far as its end, else from
    the manifest as it is (by :func:`~app.report.write_report`)."""
    if not (out / "summary.json").exists():
        return  # the run never got as far as its output folder
    try:
        write_report(out, sheet, dups.thumbs)
    except (OSError, ValueError, LedgerError) as exc:
        log.warning("could not write %s: %s", out / "report.html", exc)
