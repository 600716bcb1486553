"""The Dask backend: the same stages, run shard by shard on a Dask cluster.

Data flow::

    driver (runner: sources, resume, ledger, progress, Ctrl-C)
      └─ window x DaskLane ── submit(run_packed_shard, stages, values) ──▶ scheduler ──▶ worker
                     ▲                                                              │
                     └──────── ShardResult: one small ShardItem per input ◀─────────┘

* The whole chain is one group (:meth:`DaskBackend.groups`) whose inbox holds at least a shard;
  the runner hands each of ``window`` lanes a *shard* (``shard_size`` items, or fewer at the end
  of the inputs). A lane submits ONE task per shard, :func:`run_packed_shard` (:func:`run_shard`
  on what it unpacks), and awaits it: at most ``window`` shards are in flight, the window is the
  queue. ``window`` defaults to twice the cluster's worker threads (known once
  :meth:`DaskBackend.open` has connected), so every thread has a shard queued behind the one it
  runs.
* On the worker, :func:`run_shard` runs the *local* engine over the shard (no ledger, no
  progress): ``process`` stages become ``thread`` stages of one worker (the Dask worker process
  is the process; a thread rather than ``inline`` so that the stage's ``timeout`` still holds),
  async and thread stages keep their concurrency (downloads stay concurrent within a shard), and
  stage contexts (an HTTP session) are opened there. Routing by type (``stage(...,
  accepts=...)``) happens there too, so each item runs through the stages that accept it. An
  exception for one item is a failed item, never a failed task. Only small per-item results
  travel back: the value on success, or (stage, error type, message, attempts) on failure, and
  the stages the item skipped (left out of their metrics on the driver), plus per-stage busy
  seconds, the worker's address and its wall time for the shard.
* Back on the driver each item becomes an :class:`~pipeline.calls.Outcome`; a failure carries a
  :class:`~pipeline.errors.RemoteError` whose ``error_type`` is the original class name, so the
  ledger reads the same as with the local backend.

Faults:

* A worker that dies mid-shard: Dask reschedules the task on another worker (up to
  ``distributed.scheduler.allowed-failures`` times). Items the first attempt already wrote are
  written again, atomically, by the retry; the driver records each input once, from the one
  result it receives.
* A shard that kills workers every time (``KilledWorker``): counted once against the crash
  budget, then re-submitted one item per task, so that only the item(s) that kill workers fail,
  with :class:`~pipeline.errors.WorkerCrashed` (each one counted against the budget as well).
* A stage (or a value) that a worker cannot load, its module not installed there: the stages
  and values travel packed as bytes (:func:`pack`) and are unpacked inside the task, so the
  ``ImportError`` fails that task, and the run stops with a
  :class:`~pipeline.errors.FatalRunError` that says so (every shard would fail alike). Left to
  Dask, the message failed to load before any task ran, the worker's link to the scheduler died
  on it, and the run waited forever.
* Cancellation (Ctrl-C past the grace period): the lane cancels its Dask future; a worker
  already running the shard notices within :data:`CANCEL_POLL` seconds and stops the local run.
  A :class:`~distributed.LocalCluster` the backend started is closed when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..batching import Batcher
from ..calls import Outcome
from ..errors import RESUMES, ConfigError, FatalRunError, OutOfSpace, RemoteError, WorkerCrashed
from ..lanes import Lane, LaneResult
from ..records import Item, Record, Status
from ..stage import Stage
from . import GroupEnv, Workers

if TYPE_CHECKING:
    from distributed import Client

    from ..result import RunResult

__all__ = [
    "LOCAL_CLUSTER_CONFIG",
    "LOCAL_MALLOC_TRIM_THRESHOLD",
    "DaskBackend",
    "DaskLane",
    "ShardItem",
    "ShardResult",
    "dask_setup",
    "local_stages",
    "pack",
    "run_packed_shard",
    "run_shard",
]

log = logging.getLogger("pipeline.dask")

#: ``MALLOC_TRIM_THRESHOLD_`` for the workers of a LocalCluster the backend starts. Dask sets
#: 65536 by default (``distributed.nanny.pre-spawn-environ``), which also turns off glibc's
#: dynamic mmap threshold: every decoded image buffer is then mmap'ed and unmapped again, page
#: faults included. ``None`` leaves glibc's defaults (see the README and ``bench/dask_backend``).
LOCAL_MALLOC_TRIM_THRESHOLD: int | None = None
#: Dask settings for a LocalCluster the backend starts. Its scheduler, nannies and workers share
#: the cores with the work, and their housekeeping costs about 18% of one core at rest with 2
#: workers (the workers' statistical profiler sampling every 10 ms, the event-loop tick check
#: every 20 ms, the nannies' memory monitor every 100 ms); with these intervals, about 4%. The
#: dashboard's profile pages stay empty.
LOCAL_CLUSTER_CONFIG: dict[str, object] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing-interval": "1s",
}
#: Seconds a running shard waits between checks that its task was cancelled.
CANCEL_POLL = 0.2
#: Seconds to connect to a scheduler, and to wait for a first worker to join it.
CONNECT_TIMEOUT = 30.0
#: Seconds past CONNECT_TIMEOUT that the scheduler's handshake may take, in all.
HANDSHAKE_SLACK = 5.0
#: Seconds between two looks at the cluster's workers while a run goes.
WATCH_WORKERS = 1.0
#: Seconds given to cancelling a future after the lane itself was cancelled.
CANCEL_TIMEOUT = 2.0


# -- the worker side ---------------------------------------------------------------------------
class ShardItem(NamedTuple):
    """One input's result, small enough to travel back with its shard."""

    ok: bool
    value: Any  # the stage chain's result (ok), else None
    step: int  # the failing stage's index (failed), else the last stage's
    attempts: int
    error_type: str = ""
    message: str = ""
    details: dict[str, Any] | None = None  # the record's meta on failure (e.g. an HTTP status)
    bypassed: int = 0  # bit j: stage j did not accept the item's value (routing by type)


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What :func:`run_shard` returns: per-item results plus what the shard cost, and where."""

    items: list[ShardItem]
    busy: list[float]  # seconds inside each stage's function, over the whole shard
    reached: list[int]  # items that reached each stage
    cpu: float  # CPU seconds of the worker process while it ran the shard
    wall: float  # wall seconds of the shard on the worker
    worker: str  # the worker's address
    peak_rss: float = 0.0  # the worker process's peak resident memory so far, MB


class ShardCancelled(Exception):
    """The shard's task was cancelled while it ran; the partial result is dropped."""


def local_stages(stages: Sequence[Stage]) -> list[Stage]:
    """The stages as one Dask worker runs them: process stages become one-thread stages."""
    return [s.with_options(kind="thread", workers=1) if s.kind == "process" else s for s in stages]


def run_shard(
    stages: Sequence[Stage], values: Sequence[Any], keys: Sequence[str] | None = None
) -> ShardResult:
    """Run the local engine over one shard, on a Dask worker; one :class:`ShardItem` per value.
    ``keys``: the run's keys of the values (distinct), which an error that stops the shard's run
    names; by default their places in the shard."""
    started = time.perf_counter()
    cpu = time.process_time()
    address, cancelled = _task_probe()
    chain = local_stages(stages)
    names = [str(i) for i in range(len(values))] if keys is None else keys
    items = [Item(key=k, value=v, source=k) for k, v in zip(names, values, strict=True)]
    records, busy, reached = asyncio.run(_run_local(chain, items, cancelled))
    steps = {s.name: i for i, s in enumerate(chain)}
    out: list[ShardItem] = []
    for item in items:  # the engine notes on each item the stages it skipped
        shard_item = _shard_item(records.get(item.key), steps, len(chain))
        out.append(shard_item._replace(bypassed=item.bypassed))
    return ShardResult(
        items=out,
        busy=busy,
        reached=reached,
        cpu=time.process_time() - cpu,
        wall=time.perf_counter() - started,
        worker=address,
        peak_rss=_peak_rss_mb(),
    )


def pack(obj: Any) -> bytes:
    """``obj`` as Dask would send it (pickle; cloudpickle for what the driver's ``__main__``
    defines), for :func:`run_packed_shard`."""
    from distributed.protocol.pickle import dumps

    return bytes(dumps(obj))  # type: ignore[no-untyped-call]


def run_packed_shard(stages: bytes, shard: bytes) -> ShardResult:
    """:func:`run_shard` over ``stages`` and ``(values, keys)`` packed by :func:`pack`: unpacked
    here, in the task, so that a stage or a value this worker cannot load (its module is not
    installed here) fails the task with its ``ImportError``, which the driver hears of."""
    from distributed.protocol.pickle import loads

    chain, (values, keys) = loads(stages), loads(shard)  # type: ignore[no-untyped-call]
    return run_shard(chain, values, keys)


def _shard_item(rec: Record | None, names: dict[str, int], n: int) -> ShardItem:
    if rec is None:  # cannot happen: the local run records every input it was given
        return ShardItem(False, None, 0, 1, "LostItem", "the worker's run returned no record")
    if rec.status is Status.OK:
        return ShardItem(True, rec.value, n - 1, rec.attempts)
    if rec.status is Status.FAILED:
        return ShardItem(
            False,
            None,
            names.get(rec.stage or "", 0),
            rec.attempts,
            rec.error_type or "Exception",
            rec.error or "",
            dict(rec.meta) or None,
        )
    reason = rec.reason or str(rec.status)
    if rec.status is Status.SKIPPED and rec.stage is not None:  # a stage raised Skip
        return ShardItem(False, None, names.get(rec.stage, 0), max(1, rec.attempts), "Skip", reason)
    return ShardItem(False, None, 0, max(1, rec.attempts), "Cancelled", reason)


async def _run_local(
    stages: Sequence[Stage], items: Sequence[Item], cancelled: Callable[[], bool]
) -> tuple[dict[str, Record], list[float], list[int]]:
    from ..core import Pipeline

    records: dict[str, Record] = {}
    finished = asyncio.Event()

    async def keep(rec: Record) -> None:
        records[rec.key] = rec

    async def run() -> RunResult:
        try:
            pipe = Pipeline(stages, name="shard")
            return await pipe.run_async(items, on_record=keep, progress=False)
        finally:
            finished.set()

    error: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as tasks:  # the watcher's ShardCancelled stops the run
            shard = tasks.create_task(run())
            tasks.create_task(_watch_cancel(cancelled, finished))
    except BaseExceptionGroup as group:  # one error: the run's, or ShardCancelled
        error = group.exceptions[0]
    if error is not None:
        # raised out here, not in the handler: there its context would be the group that holds
        # it, a cycle the task's error cannot be sent back through (Dask pickles an exception's
        # context and traceback with tblib: endless recursion, and the driver got a bare
        # Exception with the text in place of the run's own error, an OutOfSpace say)
        raise error
    result = shard.result()
    return records, [s.busy for s in result.stages], [s.items for s in result.stages]


async def _watch_cancel(cancelled: Callable[[], bool], finished: asyncio.Event) -> None:
    """Raise :class:`ShardCancelled` once the shard's task is cancelled (Dask tells no one:
    its state is looked at every :data:`CANCEL_POLL` seconds), or return when the run ends."""
    while not finished.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_POLL):
                await finished.wait()
        if not finished.is_set() and cancelled():
            raise ShardCancelled("the shard's task was cancelled")


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # not on Unix
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def dask_setup(worker: Any) -> None:
    """Worker preload hook, for the LocalCluster the backend starts: ignore SIGINT, SIGHUP and
    SIGTERM.

    Ctrl-C in a terminal reaches the whole process group, and so does the shell's SIGHUP when
    the terminal hangs up, and a batch scheduler's SIGTERM (``scancel``) or systemd's. The
    driver owns them (it stops feeding, cancels the shards and closes the cluster); a worker
    killed by one on its own would only die mid-shard and be started again by its nanny. The
    nanny stops its worker without them: a "stop" message, then SIGKILL past its timeout.
    """
    with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _task_probe() -> tuple[str, Callable[[], bool]]:
    """This worker's address and a check whether the current task is still wanted."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError, KeyError):  # not in a Dask task (a direct call, a test)
        return f"pid:{os.getpid()}", lambda: False

    def cancelled() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")

    return str(worker.address), cancelled


# -- the driver side ---------------------------------------------------------------------------
@dataclass(slots=True)
class _WorkerStats:
    items: int = 0
    shards: int = 0
    busy: float = 0.0
    cpu: float = 0.0
    peak_rss: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "shards": self.shards,
            "busy_s": round(self.busy, 3),
            "cpu_s": round(self.cpu, 3),
            "items_per_s": round(self.items / self.busy, 3) if self.busy > 0 else None,
            "peak_rss_mb": round(self.peak_rss, 1),
        }


@dataclass(slots=True)
class _Stats:
    workers: dict[str, _WorkerStats] = field(default_factory=dict)
    shards: int = 0
    killed_shards: int = 0  # KilledWorker: Dask gave up on a shard
    crashed_items: int = 0  # items failed with WorkerCrashed
    failed_tasks: int = 0  # tasks that raised (not per-item failures)
    submitted: int = 0

    def add(self, res: ShardResult) -> None:
        self.shards += 1
        w = self.workers.setdefault(res.worker, _WorkerStats())
        w.items += len(res.items)
        w.shards += 1
        w.busy += res.wall
        w.cpu += res.cpu
        w.peak_rss = max(w.peak_rss, res.peak_rss)


class _ItemFailure(RemoteError):
    """A failed item from a worker: the original type name and message, attempts, details."""

    def __init__(
        self, error_type: str, message: str, attempts: int, details: dict[str, Any] | None
    ) -> None:
        super().__init__(error_type, message)
        self.attempts = attempts
        self.details = details


class DaskLane:
    """One of the backend's ``window`` lanes: one shard task in flight at a time."""

    depth = 1

    def __init__(
        self, backend: DaskBackend, stages: Sequence[Stage], on_crash: Callable[[str], None]
    ) -> None:
        self.backend = backend
        self.stages = tuple(stages)
        self.on_crash = on_crash
        self._packed: bytes | None = None  # the stages, packed once (see run_packed_shard)

    async def run(self, batch: Sequence[Item]) -> LaneResult:
        outcomes = await self._shard(list(batch))
        return list(zip(batch, outcomes, strict=True)), []

    async def close(self, *, graceful: bool) -> None:
        return None

    async def _shard(self, batch: list[Item]) -> list[Outcome]:
        client = self.backend.client
        key = f"pipeline-shard-{len(batch)}-{uuid.uuid4().hex}"
        stats = self.backend.stats
        fut: Any = None
        try:
            if self._packed is None:
                self._packed = pack(self.stages)
            shard = pack(([it.value for it in batch], [it.key for it in batch]))
            fut = client.submit(run_packed_shard, self._packed, shard, key=key, pure=False)
            self.backend.inflight.add(fut)
            stats.submitted += 1
            res: ShardResult = await fut
        except asyncio.CancelledError:
            if fut is not None:
                from distributed.client import ClosedClientError

                # best effort: the client may be closing, the scheduler gone or slow to answer
                gone = (ClosedClientError, OSError, TimeoutError, asyncio.CancelledError)
                with contextlib.suppress(*gone):
                    cancel = client.cancel([fut], force=True)  # type: ignore[no-untyped-call]
                    await asyncio.wait_for(cancel, CANCEL_TIMEOUT)
            raise
        except Exception as exc:  # noqa: BLE001 — a worker boundary: what the task raised, any type
            return await self._task_failed(batch, exc)
        finally:
            if fut is not None:
                self.backend.inflight.discard(fut)
                with contextlib.suppress(RuntimeError):  # a future the client no longer knows
                    fut.release()
        stats.add(res)
        return self._outcomes(res)

    async def _task_failed(self, batch: list[Item], exc: Exception) -> list[Outcome]:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        n = len(self.stages)
        stats = self.backend.stats
        if isinstance(exc, FutureCancelledError):  # not by us: the cluster went away
            if self.backend.lost is not None:  # or was left without a worker (the watcher)
                raise FatalRunError(
                    f"{self.backend.lost}: the cluster's workers are gone; start some and {RESUMES}"
                ) from exc
            raise FatalRunError(f"the Dask cluster cancelled a shard: {exc}") from exc
        if isinstance(exc, ImportError):  # unpacking the stages or values: every shard alike
            raise FatalRunError(
                f"the Dask workers cannot load this pipeline: {type(exc).__name__}: {exc}; "
                "install the module on every worker (the same environment as here)"
            ) from exc
        if isinstance(exc, KilledWorker):
            if len(batch) == 1:
                stats.crashed_items += 1
                self.on_crash(f"dask: item {batch[0].key!r} killed its workers ({exc})")
                crash = WorkerCrashed(f"the Dask workers running this item died: {exc}")
                return [Outcome.failure(crash, step=0, attempts=1, busy=[0.0] * n)]
            stats.killed_shards += 1
            self.on_crash(
                f"dask: a shard of {len(batch)} items killed its workers ({exc}); "
                "running its items one per task"
            )
            async with asyncio.TaskGroup() as tg:
                singles = [tg.create_task(self._shard([it])) for it in batch]
            return [t.result()[0] for t in singles]
        # the task itself raised (the worker's engine, or the shard could not be pickled):
        # its items fail with the error's type; the run goes on, unless the worker's run
        # stopped on a full disk (its items' records say so, and this run stops as well)
        stats.failed_tasks += 1
        log.warning("dask shard task failed: %s: %s", type(exc).__name__, exc)
        err = RemoteError(type(exc).__name__, str(exc))
        full = isinstance(exc, OutOfSpace)
        return [
            Outcome.failure(err, step=0, attempts=1, busy=[0.0] * n, out_of_space=full)
            for _ in batch
        ]

    def _outcomes(self, res: ShardResult) -> list[Outcome]:
        n = len(self.stages)
        # per-item busy seconds: the shard's time in each stage shared by the items that got there
        per = [res.busy[j] / res.reached[j] if res.reached[j] else 0.0 for j in range(n)]
        cpu = res.cpu / max(1, len(res.items))
        out: list[Outcome] = []
        for it in res.items:
            last = it.step if not it.ok else n - 1
            skipped = it.bypassed
            busy = [per[j] if j <= last and not skipped >> j & 1 else 0.0 for j in range(n)]
            if it.ok:
                outcome = Outcome.success(it.value, step=n - 1, attempts=it.attempts, busy=busy)
            else:
                err = _ItemFailure(it.error_type, it.message, it.attempts, it.details)
                outcome = Outcome.failure(err, step=it.step, attempts=it.attempts, busy=busy)
            outcome.cpu, outcome.bypassed = cpu, skipped
            out.append(outcome)
        return out


class DaskBackend:
    """Run a pipeline's stages on a Dask cluster, one task per shard of ``shard_size`` inputs.

    ``scheduler``: a scheduler address (``tcp://host:8786``); ``None`` starts a
    :class:`~distributed.LocalCluster` of ``n_workers`` one-thread worker processes (default: one
    per core) on 127.0.0.1 for the duration of the run. ``window``: shards in flight (default
    twice the cluster's worker threads, known once :meth:`open` has connected).
    ``no_workers_timeout``: seconds the cluster may go without a worker while the run goes
    before it stops (:class:`~pipeline.errors.FatalRunError`), as it does at the start.
    """

    name = "dask"

    def __init__(
        self,
        scheduler: str | None = None,
        *,
        shard_size: int = 256,
        window: int | None = None,
        n_workers: int | None = None,
        malloc_trim_threshold: int | None = LOCAL_MALLOC_TRIM_THRESHOLD,
        no_workers_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if window is not None and window < 1:
            raise ValueError("window must be >= 1")
        if n_workers is not None and n_workers < 1:
            raise ValueError("n_workers must be >= 1")
        self.scheduler = scheduler
        self.shard_size = shard_size
        self.n_workers = n_workers
        self.malloc_trim_threshold = malloc_trim_threshold
        self._window = window
        self._client: Client | None = None
        self._threads: int | None = None  # worker threads when the run started
        self._address: str | None = None
        self._opened = 0.0
        self._duration: float | None = None
        self._startup: float | None = None  # seconds to connect (and start a LocalCluster)
        self.stats = _Stats()
        self.no_workers_timeout = no_workers_timeout
        #: the lanes' shard tasks in flight (the watcher cancels them when no worker is left)
        self.inflight: set[Any] = set()
        self.lost: str | None = None  # why the watcher stopped the run

    @property
    def window(self) -> int:
        """Shards in flight; valid once :meth:`open` has connected (the runner asks after)."""
        if self._window is not None:
            return self._window
        if self._threads is None:
            raise RuntimeError("DaskBackend.window is known once open() has connected")
        return 2 * max(1, self._threads)

    @window.setter
    def window(self, value: int) -> None:
        if value < 1:
            raise ValueError("window must be >= 1")
        self._window = value

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("DaskBackend is not open")
        return self._client

    def groups(self, stages: Sequence[Stage]) -> list[list[Stage]]:
        """One group: the whole chain runs in each shard task."""
        return [list(stages)]

    def capacity(self, group: Sequence[Stage]) -> int:
        """Room for one whole shard to gather while the others run."""
        return max(group[0].capacity, self.shard_size)

    @contextlib.asynccontextmanager
    async def workers(self, group: Sequence[Stage], env: GroupEnv) -> AsyncIterator[Workers]:
        """``window`` shard lanes; stage contexts are opened on the workers, not here. The
        group never grows (``--workers auto`` sizes local stages only)."""
        lanes: list[Lane] = [DaskLane(self, group, env.on_crash) for _ in range(self.window)]
        shard = self.shard_size
        yield Workers(lanes, Batcher(max_batch=shard, share=shard, fixed=shard), cap=len(lanes))

    @contextlib.asynccontextmanager
    async def _connect(self, target: Any) -> AsyncIterator[Any]:
        """The client of ``target`` (an address, or a LocalCluster), started, closed at the
        end. Dask's own timeout covers the connection, not the handshake: a listener that
        never answers (another service's port) kept the run waiting for good."""
        from distributed import Client

        client: Any = Client(  # type: ignore[no-untyped-call]
            target, asynchronous=True, timeout=f"{CONNECT_TIMEOUT}s"
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + HANDSHAKE_SLACK):
                await client
        except (OSError, ValueError) as exc:  # (a TimeoutError is an OSError)
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(exc, ValueError):  # "missing port number", an unknown protocol
                raise ConfigError(
                    f"the Dask scheduler address {self.scheduler!r} is not one: {exc}"
                ) from exc
            why = str(exc) or f"no answer within {CONNECT_TIMEOUT + HANDSHAKE_SLACK:g} s"
            raise FatalRunError(
                f"cannot connect to the Dask scheduler {self.scheduler}: {why}"
            ) from exc
        try:
            yield client
        finally:
            await client.close()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[DaskBackend]:
        """Connect to the scheduler, or start a LocalCluster; close what was started on exit."""

        self.stats = _Stats()
        self.inflight, self.lost = set(), None
        self._opened = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(_quiet_logger("distributed", logging.WARNING))
            if self.scheduler is not None:
                target: Any = self.scheduler
            else:
                target = await stack.enter_async_context(self._local_cluster())
            client = await stack.enter_async_context(self._connect(target))
            try:
                await client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except TimeoutError as exc:
                raise FatalRunError(
                    f"no Dask worker joined the scheduler {client.scheduler.address} within "
                    f"{CONNECT_TIMEOUT:g} s"
                ) from exc
            threads = await client.nthreads()
            self._threads = sum(threads.values())
            self._address = str(client.scheduler.address)
            self._client = client
            self._startup = time.perf_counter() - self._opened
            log.info(
                "dask: %s, %d workers, %d threads, window %d shards of up to %d items",
                self._address,
                len(threads),
                self._threads,
                self.window,
                self.shard_size,
            )
            watcher = asyncio.create_task(self._watch_workers(client))
            try:
                yield self
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                self._client = None
                self._duration = time.perf_counter() - self._opened

    async def _watch_workers(self, client: Any) -> None:
        """While the run goes: a cluster left without a worker (an external one whose last
        worker died) is waited for, as Dask would, for :attr:`no_workers_timeout` seconds, with
        a warning; then its shards in flight are cancelled, which stops the run. Dask alone
        would wait forever."""
        since: float | None = None
        while True:
            await asyncio.sleep(WATCH_WORKERS)
            try:
                workers = len(await client.nthreads())
            except OSError:  # the scheduler is gone: the shards' futures say so themselves
                return
            if workers:
                since = None
                continue
            now = time.monotonic()
            if since is None:
                since = now
                log.warning(
                    "dask: no worker left in the cluster at %s: waiting up to %g s for one",
                    self._address,
                    self.no_workers_timeout,
                )
            elif now - since >= self.no_workers_timeout:
                self.lost = f"no Dask worker for {self.no_workers_timeout:g} s"
                futures = list(self.inflight)
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(
                        client.cancel(futures, reason=self.lost, force=True), CANCEL_TIMEOUT
                    )
                return

    @contextlib.asynccontextmanager
    async def _local_cluster(self) -> AsyncIterator[Any]:
        import dask
        from distributed import LocalCluster

        cores = self.n_workers or _cores()
        # the nanny copies its pre-spawn environment into this process too: put it back after
        keys = dask.config.get("distributed.nanny.pre-spawn-environ", {})
        saved = {k: os.environ.get(k) for k in keys}
        trim = self.malloc_trim_threshold
        # the workers' scratch space (lock files, spilled data) in a folder of this run, removed
        # with it: Dask's default, TMPDIR/dask-scratch-space, outlives every run
        scratch = tempfile.TemporaryDirectory(prefix="pixpipe-dask-")
        try:
            with dask.config.set(
                {
                    **LOCAL_CLUSTER_CONFIG,
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": trim,
                    "temporary-directory": scratch.name,
                }
            ):
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    asynchronous=True,
                    processes=True,
                    n_workers=cores,
                    threads_per_worker=1,
                    host="127.0.0.1",
                    dashboard_address=":0",
                    worker_dashboard_address=None,
                    preload=[__name__],  # dask_setup below: the workers leave Ctrl-C to us
                    local_directory=scratch.name,
                )
                async with cluster:
                    yield cluster
        finally:
            scratch.cleanup()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def summary(self) -> dict[str, Any]:
        """Per-worker throughput and the backend's settings (``collected.backend``)."""
        stats = self.stats
        items = sum(w.items for w in stats.workers.values())
        busy = sum(w.busy for w in stats.workers.values())
        duration = self._duration
        if duration is None and self._opened:  # asked while open: the runner does so
            duration = time.perf_counter() - self._opened
        known = self._window is not None or self._threads is not None
        return {
            "name": self.name,
            "scheduler": self._address or self.scheduler,
            "local_cluster": self.scheduler is None,
            "worker_threads": self._threads,
            "shard_size": self.shard_size,
            "window": self.window if known else None,
            "malloc_trim_threshold": self.malloc_trim_threshold if self.scheduler is None else None,
            "shards": stats.shards,
            "tasks_submitted": stats.submitted,
            "items": items,
            "busy_s": round(busy, 3),
            "startup_s": round(self._startup, 3) if self._startup is not None else None,
            "open_s": round(duration, 3) if duration is not None else None,
            "killed_shards": stats.killed_shards,
            "crashed_items": stats.crashed_items,
            "failed_tasks": stats.failed_tasks,
            "workers": {a: w.to_json() for a, w in sorted(stats.workers.items())},
        }


@contextlib.contextmanager
def _quiet_logger(name: str, level: int) -> Iterator[None]:
    """Raise a logger's level to ``level`` for a while (Dask logs every connection at INFO)."""
    logger = logging.getLogger(name)
    saved = logger.level
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


if TYPE_CHECKING:
    from . import Backend

    def _is_a_backend(backend: DaskBackend) -> Backend:  # mypy checks the protocol here
        return backend
