"""A small thread pool whose threads can be abandoned and replaced.

Why not ``ThreadPoolExecutor``: Python cannot kill a thread, so a thread stage whose item runs
past its timeout can only *abandon* that thread. ``ThreadPoolExecutor`` threads are joined at
interpreter exit (a stuck one would hang Ctrl-C) and its size is fixed (abandoned threads would
shrink it). Here threads are daemons, a timed-out job's thread retires when its call returns,
and a replacement thread is started at once so the stage keeps its ``workers``.

Submission is unbounded internally but the stage drivers never have more than ``workers`` jobs
submitted, so the queue holds at most that many.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["DaemonThreadPool", "Job"]


class Job:
    """A submitted call; set ``abandoned`` to make its thread retire after the call returns."""

    __slots__ = ("abandoned", "args", "fn", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.future: Future[Any] = Future()
        self.abandoned = False


class DaemonThreadPool:
    _counter = itertools.count()

    def __init__(self, workers: int, *, name: str = "stage") -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._name = name
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._shutdown = False
        for _ in range(workers):
            self._spawn()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        if self._shutdown:
            raise RuntimeError("submit after shutdown")
        job = Job(fn, args)
        self._queue.put(job)
        return job

    def abandon(self, job: Job) -> None:
        """Give up on a running job: its thread retires when the call returns; spawn a new one."""
        job.abandoned = True
        self._spawn()

    def grow(self) -> None:
        """One more thread (``--workers auto``)."""
        self._spawn()

    def shutdown(self) -> None:
        """Ask every thread to exit once idle; never waits (stuck threads are daemons)."""
        with self._lock:
            self._shutdown = True
            n = len(self._threads)
        for _ in range(n):
            self._queue.put(None)

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    def _spawn(self) -> None:
        t = threading.Thread(
            target=self._work, name=f"{self._name}-{next(self._counter)}", daemon=True
        )
        with self._lock:
            self._threads.add(t)
        t.start()

    def _work(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue
                try:
                    job.future.set_result(job.fn(*job.args))
                except BaseException as exc:  # noqa: BLE001 — a thread boundary: to the driver
                    job.future.set_exception(exc)
                if job.abandoned:
                    return
        finally:
            with self._lock:
                self._threads.discard(me)
