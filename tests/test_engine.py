"""Engine behaviour: kinds, failures, retries, fusion, crashes, timeouts, pickling, the ledger."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import pipeline.feeder
import pipeline.writer
from pipeline import (
    CrashBudgetExceeded,
    DefinitionError,
    FatalRunError,
    OutOfSpace,
    Pipeline,
    Record,
    RunResult,
    Skip,
    Status,
    Withdraw,
    run_stage,
    stage,
)
from tests import fns
from tests.conftest import by_key


def keyed(n: int) -> list[tuple[str, int]]:
    return [(f"k{i:04d}", i) for i in range(n)]


@pytest.mark.parametrize("kind", ["inline", "thread", "process"])
def test_each_kind_transforms_every_item(kind: str, out: Path) -> None:
    result = Pipeline([stage(fns.double, kind=kind, workers=None if kind == "inline" else 2)]).run(
        keyed(50), output=out, progress=False
    )
    assert result.counts == {"ok": 50}
    recs = by_key(out)
    assert len(recs) == 50
    assert all(recs[f"k{i:04d}"]["result"] == 2 * i for i in range(50))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    assert summary["counts"] == {"ok": 50}


def test_async_stage_and_mixed_chain(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.ainc, kind="async", workers=8),
            stage(fns.double, kind="thread", workers=2),
            stage(fns.inc, kind="process", workers=2),
            stage(fns.inc, kind="inline", name="inc2"),
        ]
    )
    result = pipe.run(keyed(100), output=out, progress=False)
    assert result.ok == 100
    assert {k: r["result"] for k, r in by_key(out).items()} == {
        f"k{i:04d}": (i + 1) * 2 + 2 for i in range(100)
    }


@pytest.mark.parametrize("kind", ["inline", "thread", "process"])
def test_an_exception_fails_one_item_and_the_run_goes_on(kind: str, out: Path) -> None:
    pipe = Pipeline([stage(fns.fail_on_multiple_of_7, kind=kind, name="check"), stage(fns.inc)])
    result = pipe.run(keyed(30), output=out, progress=False)
    bad = {i for i in range(30) if i % 7 == 0}
    assert result.failed == len(bad)
    assert result.ok == 30 - len(bad)
    assert result.exit_code == 1
    for key, rec in by_key(out).items():
        i = int(key[1:])
        if i in bad:
            assert rec["status"] == "failed"
            assert rec["stage"] == "check"
            assert rec["error_type"] == "ValueError"
            assert rec["error"] == f"{i} is a multiple of 7"
            assert rec["attempts"] == 1
        else:
            assert rec["status"] == "ok"
            assert rec["result"] == i + 1


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_retries_on_the_given_types_with_attempts_recorded(
    kind: str, out: Path, tmp_path: Path
) -> None:
    counters = tmp_path / "counters"
    counters.mkdir()
    flaky = stage(
        fns.flaky, str(counters), 2, kind=kind, retries=3, retry_on=ConnectionError, backoff=0.01
    )
    result = Pipeline([flaky]).run(keyed(5), output=out, progress=False)
    assert result.ok == 5
    assert all(r["attempts"] == 3 for r in by_key(out).values())

    out2 = tmp_path / "out2"
    strict = stage(
        fns.flaky,
        str(counters / "x"),
        9,
        kind=kind,
        retries=2,
        backoff=0.01,
        retry_on=ConnectionError,
    )
    (counters / "x").mkdir()
    Pipeline([strict]).run(keyed(2), output=out2, progress=False)
    assert all(
        r["attempts"] == 3 and r["error_type"] == "ConnectionError" for r in by_key(out2).values()
    )


def test_one_retry_rule_for_every_kind() -> None:
    from pipeline.calls import retry_delay, steps_of

    (step,) = steps_of([stage(fns.inc, retries=2, retry_on=OSError, backoff=0.01)])
    assert retry_delay(step, ConnectionError("x"), 1) is not None  # a subclass of OSError
    assert retry_delay(step, ConnectionError("x"), 3) is None  # 1 + 2 attempts made
    assert retry_delay(step, KeyError("x"), 1) is None  # not in retry_on
    (anything,) = steps_of([stage(fns.inc, retries=2)])  # retry_on=Exception
    assert retry_delay(anything, Skip("no"), 1) is None  # a stage that declines is final


def test_an_async_stage_that_declines_is_not_retried(out: Path) -> None:
    calls: list[int] = []

    async def decline(x: int) -> int:
        calls.append(x)
        raise Skip("not mine")

    st = stage(decline, kind="async", retries=3, backoff=0.01)
    result = Pipeline([st]).run(keyed(2), output=out, progress=False)
    assert result.skipped == 2
    assert len(calls) == 2
    assert {r["reason"] for r in by_key(out).values()} == {"not mine"}


class _NotMine(Skip):
    """A stage's own kind of Skip."""


def test_a_subclass_of_skip_is_a_skip(out: Path) -> None:
    """A stage's own subclass of Skip declines the item as Skip does (it was recorded
    ``failed``, error_type ``_NotMine``, although never retried as a failure would be)."""

    async def decline(x: int) -> int:
        raise _NotMine(f"not mine: {x}")

    result = Pipeline([stage(decline, kind="async", retries=3)]).run(keyed(2), output=out)
    assert result.skipped == 2
    assert {r["status"] for r in by_key(out).values()} == {"skipped"}


def test_a_withdrawn_input_keeps_no_earlier_result(out: Path) -> None:
    """A redo of an unchanged input that a stage declines keeps the earlier record's result (its
    outputs still listed); one a stage withdraws (pipeline.Withdraw) does not."""
    first = Pipeline([stage(fns.inc)]).run(keyed(2), output=out, progress=False)
    assert first.ok == 2

    def withdraw(x: int) -> int:
        raise Withdraw("taken back") if x == 0 else Skip("not now")

    again = Pipeline([stage(withdraw)]).run(keyed(2), output=out, progress=False, force=True)
    assert again.skipped == 2
    records = by_key(out)
    assert "result" not in records["k0000"]  # withdrawn
    assert records["k0001"]["result"] == 2  # declined: the earlier result stays listed


def test_no_retry_for_other_exception_types(out: Path) -> None:
    st = stage(fns.wrong_type_error, kind="thread", retries=5, retry_on=ConnectionError)
    Pipeline([st]).run(keyed(3), output=out, progress=False)
    assert all(r["attempts"] == 1 and r["error_type"] == "KeyError" for r in by_key(out).values())


def test_adjacent_process_stages_are_fused(out: Path) -> None:
    # make_lock returns a value that cannot be pickled: it only works if use_lock runs in the
    # same worker call, i.e. nothing crosses a process boundary between the two stages.
    pipe = Pipeline(
        [
            stage(fns.make_lock, kind="process", workers=2),
            stage(fns.use_lock, kind="process", workers=2),
            stage(fns.pid_of, kind="process", workers=2),
            stage(fns.same_pid, kind="process", workers=2),
        ]
    )
    assert "fused" in pipe.describe()
    result = pipe.run(keyed(20), output=out, progress=False)
    assert result.ok == 20, by_key(out)
    assert next(s.fused_with for s in result.stages) == [
        "make_lock",
        "use_lock",
        "pid_of",
        "same_pid",
    ]


@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
def test_worker_death_fails_that_item_only(how: str, out: Path) -> None:
    pipe = Pipeline([stage(fns.crash_on, 7, how, kind="process", workers=2, name="crashy")])
    result = pipe.run(keyed(40), output=out, progress=False)
    recs = by_key(out)
    assert len(recs) == 40
    assert recs["k0007"]["status"] == "failed"
    assert recs["k0007"]["error_type"] == "WorkerCrashed"
    assert recs["k0007"]["stage"] == "crashy"
    assert result.ok == 39
    assert result.failed == 1
    assert len(result.crashes) == 1


def test_crash_storm_hits_the_budget_and_stops_the_run(out: Path) -> None:
    pipe = Pipeline([stage(fns.always_crash, kind="process", workers=2)])
    with pytest.raises(CrashBudgetExceeded):
        pipe.run(keyed(50), output=out, progress=False, crash_budget=3)
    recs = by_key(out)
    assert len(recs) <= 50
    assert {r["status"] for r in recs.values()} <= {"failed", "cancelled"}
    # every item a crash killed is failed, the one past the budget too (4 crashes at least)
    crashed = [r for r in recs.values() if r.get("error_type") == "WorkerCrashed"]
    assert len(crashed) >= 4
    assert all(r["status"] == "failed" for r in crashed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    assert "CrashBudgetExceeded" in summary["error"]
    assert summary["exit_code"] == 3


@pytest.mark.parametrize("kind", ["inline", "thread", "async", "process"])
def test_sys_exit_in_a_stage_fails_that_item_only(kind: str, out: Path) -> None:
    """``sys.exit()`` in a stage's code (a library's way to give up) is that item's failure:
    in a thread, inline or async stage it ended the run mid-way, no manifest, the summary
    ``finished: false``."""
    fn = fns.aexit_on if kind == "async" else fns.exit_on
    pipe = Pipeline([stage(fn, 3, kind=kind, name="exits")])
    result = pipe.run(keyed(8), output=out, progress=False)
    recs = by_key(out)
    assert (recs["k0003"]["status"], recs["k0003"]["error_type"]) == ("failed", "SystemExit")
    assert result.ok == 7
    assert json.loads((out / "summary.json").read_text())["finished"] is True


def test_the_crash_past_the_budget_fails_its_item(out: Path) -> None:
    """The item whose worker's crash stops the run is ``failed`` (WorkerCrashed), not
    ``cancelled`` with the items after it: a rerun then knows which input kills workers."""
    pipe = Pipeline([stage(fns.crash_on, 0, "exit", kind="process", workers=1, name="crashy")])
    with pytest.raises(CrashBudgetExceeded):
        pipe.run(keyed(3), output=out, progress=False, crash_budget=0)
    recs = by_key(out)
    assert (recs["k0000"]["status"], recs["k0000"]["error_type"]) == ("failed", "WorkerCrashed")
    assert {recs[k]["status"] for k in ("k0001", "k0002")} == {"cancelled"}


@pytest.mark.parametrize("kind", ["thread", "process", "async"])
def test_timeout_fails_the_item_and_the_rest_finish(kind: str, out: Path) -> None:
    fn = fns.asleep_on if kind == "async" else fns.sleep_on
    st = stage(fn, 3, 60.0, kind=kind, workers=2, timeout=0.5, name="sleepy")
    result = Pipeline([st]).run(keyed(12), output=out, progress=False)
    recs = by_key(out)
    assert recs["k0003"]["status"] == "failed"
    assert recs["k0003"]["error_type"] == "ItemTimeout"
    assert result.ok == 11
    assert result.duration < 30  # a hang would hit the test timeout; this is a sanity bound


@pytest.mark.parametrize(
    ("tool", "options", "error_type"),
    [
        (fns.run_tool_on, {"timeout": 1.0}, "ItemTimeout"),  # the worker killed at the timeout
        (fns.run_tool_then_crash_on, {}, "WorkerCrashed"),  # the worker died on its own
    ],
    ids=["timed-out", "died"],
)
def test_a_program_a_stage_started_goes_with_its_worker(
    out: Path, tmp_path: Path, tool: Any, options: dict[str, Any], error_type: str
) -> None:
    """What a stage started (an external tool that hangs on input 3) goes with its worker: one
    killed at its item's timeout takes its whole process group with it, and one that dies on
    its own (SIGKILL: the OOM killer) has what is left of its group killed when the pool finds
    it dead. Left behind, the tool would run on, an orphan, after the run."""
    pids = tmp_path / "pids"
    pids.mkdir()
    st = stage(tool, 3, str(pids), kind="process", workers=2, **options)
    Pipeline([st]).run(keyed(6), output=out, progress=False)
    assert by_key(out)["k0003"]["error_type"] == error_type
    _assert_gone(int((pids / "3.pid").read_text()))


def test_a_program_a_stage_started_and_left_running_ends_with_the_run(
    out: Path, tmp_path: Path
) -> None:
    """A stage that starts a program and leaves it running (a helper server): the workers'
    process groups are killed when the run closes its pool, so nothing of the run is left."""
    pids = tmp_path / "pids"
    pids.mkdir()
    st = stage(fns.start_tool_and_leave, str(pids), kind="process", workers=2)
    assert Pipeline([st]).run(keyed(4), output=out, progress=False).ok == 4
    for pid in sorted(pids.iterdir()):
        _assert_gone(int(pid.read_text()))


def _assert_gone(pid: int) -> None:
    """Process ``pid`` is gone (dead or a zombie) within 10 s."""
    import psutil

    deadline = time.monotonic() + 10
    while True:
        try:
            gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, not reaped
        except psutil.NoSuchProcess:
            gone = True
        if gone or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert gone, "the stage's external program outlived its worker"


def test_unpicklable_result_and_exception(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.unpicklable_result, kind="process", workers=1),
            stage(fns.noop, kind="thread"),
            stage(fns.raise_picky, kind="process", workers=1),
        ]
    )
    result = pipe.run(keyed(5), output=out, progress=False)
    recs = by_key(out)
    assert recs["k0001"]["error_type"] == "Unpicklable"
    assert "cannot be pickled" in recs["k0001"]["error"]
    assert recs["k0002"]["error_type"] == "PickyError"
    assert "picky 2" in recs["k0002"]["error"]
    assert result.ok == 3


def test_unpicklable_input_to_a_process_stage(out: Path) -> None:
    pipe = Pipeline([stage(fns.make_lock, kind="thread"), stage(fns.use_lock, kind="process")])
    result = pipe.run(keyed(3), output=out, progress=False)
    assert result.failed == 3
    assert {r["error_type"] for r in by_key(out).values()} == {"Unpicklable"}


def test_process_stage_refuses_lambdas_and_local_functions() -> None:
    with pytest.raises(DefinitionError, match="top level"):
        stage(lambda x: x, kind="process")

    def local(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match="nested"):
        stage(local, kind="process")
    stage(functools.partial(fns.crash_on, bad=1, how="exit"), kind="process")  # fine
    with pytest.raises(DefinitionError, match="coroutine"):
        stage(fns.double, kind="async")
    with pytest.raises(DefinitionError, match="async"):
        stage(fns.ainc, kind="thread")
    with pytest.raises(DefinitionError, match="capacity"):
        stage(fns.double, capacity=0)


def test_resume_skips_done_and_redoes_the_rest(out: Path) -> None:
    pipe = Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread")])
    first = pipe.run(keyed(20), output=out, progress=False)
    assert first.failed == 3
    second = pipe.run(keyed(25), output=out, progress=False)
    # ok ones reused, failed ones retried (and fail again), five new ones processed
    assert second.counts == {"reused": 17, "failed": 4, "ok": 4}
    assert (second.reused, second.skipped, second.exit_code) == (17, 0, 1)
    recs = by_key(out)
    assert len(recs) == 25
    assert recs["k0001"]["status"] == "reused"
    assert "reason" not in recs["k0001"]
    assert recs["k0001"]["result"] == 1  # the earlier result is carried over
    third = pipe.run(keyed(25), output=out, progress=False)  # a reused record is done too
    assert third.counts == {"reused": 21, "failed": 4}
    assert by_key(out)["k0001"]["result"] == 1


def test_retry_failed_redoes_only_failures(out: Path) -> None:
    pipe = Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread")])
    pipe.run(keyed(15), output=out, progress=False)
    result = pipe.run(keyed(20), output=out, progress=False, retry_failed=True)
    assert result.counts == {"reused": 12, "skipped": 5, "failed": 3}
    recs = by_key(out)
    assert recs["k0016"]["status"] == "skipped"
    assert "retry-failed" in recs["k0016"]["reason"]
    forced = pipe.run(keyed(20), output=out, progress=False, force=True)
    assert forced.counts == {"ok": 17, "failed": 3}


def test_fingerprint_change_redoes_items(out: Path) -> None:
    pipe = Pipeline([stage(fns.inc, kind="thread")])
    pipe.run(keyed(5), output=out, progress=False, fingerprint="a")
    assert pipe.run(keyed(5), output=out, progress=False, fingerprint="a").reused == 5
    assert pipe.run(keyed(5), output=out, progress=False, fingerprint="b").ok == 5


def test_duplicate_keys_get_one_record(out: Path) -> None:
    inputs = [("same", 1), ("other", 2), ("same", 3)]
    result = Pipeline([stage(fns.inc, kind="thread")]).run(inputs, output=out, progress=False)
    assert result.duplicates == 1
    assert len(by_key(out)) == 2


def test_many_duplicates_are_counted_and_named_a_few_at_most(
    out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A list with every input twice: each duplicate counted, the first few named in warnings,
    then one line says more follow (not a warning per line of a long list); the summary's
    headline says how many were ignored, since its counts are of records, one per key."""
    from app.console import summary_lines
    from pipeline.feeder import DUPLICATES_SHOWN

    n = DUPLICATES_SHOWN + 15
    inputs = [(f"k{i}", i) for i in range(n)] * 2
    with caplog.at_level("WARNING", logger="pipeline"):
        result = Pipeline([stage(fns.inc, kind="thread")]).run(inputs, output=out, progress=False)
    assert (result.duplicates, result.counts) == (n, {"ok": n})
    warned = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(warned) == DUPLICATES_SHOWN + 1
    assert warned[0] == "duplicate input key 'k0' ignored"
    assert warned[-1].startswith("more duplicate input keys ignored")
    headline = summary_lines(result)[1]
    assert headline.endswith(f"ok {n}; {n} duplicate(s) of an earlier input's key ignored")


@pytest.mark.timeout(60)
def test_a_duplicate_of_a_key_recorded_but_not_yet_committed_is_a_duplicate(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first "same" is done and its record waits in the writer's channel (a long interval:
    nothing after the writer's first transaction is committed before the stream ends). A look-up
    does not find it, it is no longer in flight, and yet the second "same" is a duplicate, not
    done again and counted twice."""
    monkeypatch.setattr(pipeline.writer, "LEDGER_INTERVAL", 60.0)
    chunk = pipeline.feeder.FEED_CHUNK  # the feeder admits inputs a chunk at a time

    async def inputs() -> AsyncIterator[tuple[str, int]]:
        for i in range(chunk):
            yield (f"a{i}", i)
        await asyncio.sleep(0.3)  # the writer's first transaction is over
        yield ("same", 1)
        for i in range(chunk - 1):
            yield (f"b{i}", i)
        await asyncio.sleep(0.5)  # "same" is done by now, its record not committed
        yield ("same", 2)

    result = Pipeline([stage(fns.inc, kind="thread")]).run(inputs(), output=out, progress=False)
    assert result.duplicates == 1
    assert result.counts == {"ok": 2 * chunk}
    assert by_key(out)["same"]["result"] == 2  # the first one's (inc of 1)


@pytest.mark.timeout(60)
def test_inputs_that_trickle_in_are_processed_as_they_come() -> None:
    """An async source that gives its next input only once the one before is done (a queue of
    incoming work): nothing waits for a chunk's worth of inputs to arrive."""
    done: dict[str, asyncio.Event] = {}

    async def inputs() -> AsyncIterator[tuple[str, int]]:
        for i in range(3):
            key = f"k{i}"
            done[key] = asyncio.Event()
            yield (key, i)
            await asyncio.wait_for(done[key].wait(), 10)  # TimeoutError: it was held back

    async def on_record(rec: Record) -> None:
        done[rec.key].set()

    async def go() -> RunResult:
        pipe = Pipeline([stage(fns.inc, kind="thread")])
        return await pipe.run_async(inputs(), progress=False, on_record=on_record)

    result = asyncio.run(go())
    assert result.counts == {"ok": 3}


@pytest.mark.timeout(60)
def test_inputs_that_trickle_in_from_a_plain_generator_are_processed_as_they_come() -> None:
    """The same with a plain generator over a queue of incoming work (read on a thread): it
    blocks for its next input until the one before is done."""
    done = {f"k{i}": threading.Event() for i in range(3)}

    def inputs() -> Iterator[tuple[str, int]]:
        for i, (key, event) in enumerate(done.items()):
            yield (key, i)
            assert event.wait(10), f"{key} was held back"

    async def on_record(rec: Record) -> None:
        done[rec.key].set()

    async def go() -> RunResult:
        pipe = Pipeline([stage(fns.inc, kind="thread")])
        return await pipe.run_async(inputs(), progress=False, on_record=on_record)

    assert asyncio.run(go()).counts == {"ok": 3}


def test_a_plain_sources_error_ends_the_run_after_the_inputs_before_it(out: Path) -> None:
    def inputs() -> Iterator[tuple[str, int]]:
        yield from keyed(100)
        raise OSError("the walk hit a bad disk")

    with pytest.raises(FatalRunError, match="the walk hit a bad disk"):
        Pipeline([stage(fns.inc, kind="thread")]).run(inputs(), output=out, progress=False)
    assert len(by_key(out)) == 100  # every input before it has its record


def test_an_async_sources_error_ends_the_run() -> None:
    async def inputs() -> AsyncIterator[tuple[str, int]]:
        yield ("k0", 0)
        raise OSError("the queue went away")

    with pytest.raises(FatalRunError, match="the queue went away"):
        Pipeline([stage(fns.inc, kind="thread")]).run(inputs(), progress=False)


class _FailsAtTheFifth:
    """A collector with a bug: it raises at the fifth record it is shown."""

    name = "fails"

    def __init__(self) -> None:
        self.seen = 0

    def add(self, record: Record) -> None:
        self.seen += 1
        if self.seen == 5:
            raise ValueError("a bug in the collector")

    def result(self) -> int:
        return self.seen


def test_a_failing_collector_stops_the_run_with_what_it_was_shown_committed(out: Path) -> None:
    """The records a collector was shown are in the journal first: its bug stops the run (a
    fatal error), and a re-run reuses them rather than doing them again."""
    inputs = keyed(100)
    pipe = Pipeline([stage(fns.inc, kind="thread")])
    with pytest.raises(FatalRunError, match="a bug in the collector"):
        pipe.run(inputs, output=out, progress=False, collectors=[_FailsAtTheFifth()])
    recorded = by_key(out)
    assert len(recorded) >= 5
    again = pipe.run(inputs, output=out, progress=False)
    assert again.reused == sum(r["status"] == "ok" for r in recorded.values())
    assert again.reused >= 5
    assert again.reused + again.ok == 100


@pytest.mark.parametrize("wrapped", ["odd", "all"])
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_an_item_that_finds_the_disk_full_stops_the_run(kind: str, wrapped: str, out: Path) -> None:
    """Every item after the first that failed for want of space would fail alike: the run stops
    there (exit 3), with that item's record and what to do; those still in flight are
    cancelled, the rest never started, and a run with room again does them. ``all``: every
    error is the stage's own, raised from the ENOSPC (a process worker's exception comes back
    without its cause: the worker tells)."""
    inputs = keyed(400)
    full = Pipeline([stage(fns.disk_full_from, 40, wrapped, kind=kind, workers=2)])
    with pytest.raises(OutOfSpace, match=r"No space left on device.*free some space") as got:
        full.run(inputs, output=out, progress=False)
    assert got.value.exit_code == 3
    recorded = by_key(out)
    failed = [k for k, r in recorded.items() if r["status"] == "failed"]
    assert failed, recorded
    assert all(int(k[1:]) >= 40 for k in failed)
    assert len(recorded) < 400  # it stopped: the inputs after the first failures never started
    assert {r["status"] for r in recorded.values()} <= {"ok", "failed", "cancelled"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"].startswith("OutOfSpace: ")

    room = Pipeline([stage(fns.disk_full_from, 10_000, kind=kind, workers=2)])
    again = room.run(inputs, output=out, progress=False)
    assert again.ok + again.reused == 400


def test_what_says_a_disk_is_full() -> None:
    import errno

    from pipeline.errors import is_out_of_space

    def raised_from(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except OSError as exc:
                raise RuntimeError("cannot write the output") from exc
        except RuntimeError as outer:
            return outer

    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_out_of_space(raised_from(OSError(errno.ENOSPC, "No space left on device")))
    assert not is_out_of_space(raised_from(OSError(errno.ENOENT, "No such file")))
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_out_of_space(ValueError("no space"))
    assert not is_out_of_space("No space left on device")


def test_iter_and_run_stage_yield_records_with_values() -> None:
    recs = list(run_stage(stage(fns.double, kind="process", workers=2), keyed(10)))
    assert sorted(r.value for r in recs if r.status is Status.OK) == [2 * i for i in range(10)]
    pipe = Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread"), stage(fns.inc)])
    got = {r.key: r for r in pipe.iter(keyed(10))}
    assert got["k0007"].status is Status.FAILED
    assert got["k0003"].value == 4


def test_leaving_iter_early_stops_the_run(caplog: pytest.LogCaptureFixture) -> None:
    pipe = Pipeline([stage(fns.sleep_each, 0.01, kind="process", workers=2)])
    it = pipe.iter(keyed(10_000))
    first = [next(it) for _ in range(5)]
    it.close()  # must not hang
    assert len(first) == 5
    # no grace: the log says so (it spoke of one, "for up to 2.0 s", and cancelled in 0.06 s)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted")]
    assert said == ["interrupted: in-flight items cancelled at once"]


def test_the_run_methods_take_the_run_options_by_name() -> None:
    import dataclasses
    import inspect

    from pipeline import RunOptions

    fields = {f.name for f in dataclasses.fields(RunOptions)}
    where = {"collectors", "on_record"}  # where the records go, beside the options
    for method, extra in (
        (Pipeline.run, {"collectors"}),
        (Pipeline.run_async, {"collectors", "on_record"}),
        (Pipeline.iter, {"collectors"}),
        (run_stage, {"collectors"}),
    ):
        params = inspect.signature(method).parameters
        named = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # every option but handle_signals and stop_helpers: run's own (run_async and iter never
        # own SIGINT, and are not a program's one run)
        own = {"handle_signals", "stop_helpers"}
        assert named - where == (fields if method is Pipeline.run else fields - own)
        assert named & where == extra
        for name in named - where:  # the same defaults as RunOptions (iter: no progress bars)
            default = next(f for f in dataclasses.fields(RunOptions) if f.name == name).default
            if not (method in (Pipeline.iter, run_stage) and name == "progress"):
                assert params[name].default == default, (method.__name__, name)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Pipeline([stage(fns.inc)]).run([1], progres=False)  # type: ignore[call-arg]


def test_run_async_inside_a_loop(out: Path) -> None:
    async def main() -> int:
        pipe = Pipeline([stage(fns.ainc, kind="async"), stage(fns.double, kind="thread")])
        result = await pipe.run_async(keyed(10), output=out, progress=False)
        return result.ok

    assert asyncio.run(main()) == 10


def test_lazy_generator_input_is_not_listed_first(out: Path) -> None:
    pulled = 0

    def gen():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield (f"k{i}", i)

    for got, _ in enumerate(Pipeline([stage(fns.noop, kind="thread", capacity=8)]).iter(gen())):
        if got == 9:
            break
    assert pulled < 2_000  # bounded by channel capacities and feed chunks, not by 100k


def test_a_crashed_runs_journal_is_picked_up(out: Path) -> None:
    pipe = Pipeline([stage(fns.inc, kind="thread")])
    pipe.run(keyed(10), output=out, progress=False)
    # simulate a run that died after journalling but before exporting the manifest
    (out / "manifest.jsonl").write_text("")
    result = pipe.run(keyed(12), output=out, progress=False)
    assert result.counts == {"reused": 10, "ok": 2}
    assert len(by_key(out)) == 12


def test_stage_metrics_name_the_bottleneck() -> None:
    pipe = Pipeline(
        [
            stage(fns.noop, kind="thread", workers=2, name="fast"),
            stage(fns.sleep_each, 0.02, kind="thread", workers=1, name="slow"),
        ]
    )
    result = pipe.run(keyed(40), progress=False)
    assert result.bottleneck == "slow"
    assert "<- bottleneck" in result.table()
    slow = result.stages[1]
    assert slow.busy > 0.5
    assert slow.items == 40


def test_a_run_shorter_than_the_sampling_interval_still_has_a_timeline(out: Path) -> None:
    Pipeline([stage(fns.double, kind="thread", workers=2)]).run(
        keyed(5), output=out, progress=False
    )
    timeline = json.loads((out / "summary.json").read_text())["timeline"]
    assert timeline["interval"] > 0.0
    assert len(timeline["t"]) >= 1
    # the last sample is taken when the run ends: every item is counted in it
    assert timeline["stages"]["double"]["done"][-1] == 5
    assert timeline["stages"]["double"]["inbox"][-1] == 0


@pytest.mark.timeout(20)
def test_the_last_records_are_written_when_the_run_ends_not_an_interval_later(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ledger writer gathers records for up to LEDGER_INTERVAL; the end of the stream must
    # cut that short (a Dask shard waited the interval for its last records)
    monkeypatch.setattr(pipeline.writer, "LEDGER_INTERVAL", 60.0)
    for output in (out, None):
        result = Pipeline([stage(fns.double, kind="thread", workers=2)]).run(
            keyed(20), output=output, progress=False
        )
        assert result.ok == 20
    assert len(by_key(out)) == 20


@pytest.mark.timeout(30)
def test_a_full_records_channel_is_committed_at_once_not_an_interval_later(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # records settled without work (a resumed run: every input reused) come faster than the
    # writer's interval lets through: it took at most a channel (LEDGER_CAPACITY) an interval,
    # 5,120 records/s, its senders waiting on the full channel while it slept
    monkeypatch.setattr(pipeline.writer, "LEDGER_INTERVAL", 60.0)
    n = 3 * pipeline.writer.LEDGER_CAPACITY + 1
    pipe = Pipeline([stage(fns.double, kind="thread", workers=2)])
    assert pipe.run(keyed(n), output=out, progress=False).ok == n
    again = pipe.run(keyed(n), output=out, progress=False)
    assert again.counts == {"reused": n}
    assert {rec["status"] for rec in by_key(out).values()} == {"reused"}


@pytest.mark.timeout(60)
def test_batches_to_a_worker_process_are_capped_by_bytes_as_well_as_by_time() -> None:
    from pipeline.batching import BATCH_BYTES

    # quick items of 3 MB: by time alone they would go max_batch (8) at once, 24 MB a batch;
    # the lane tells the batcher what each batch carried, and batches stay near BATCH_BYTES
    big = BATCH_BYTES * 3 // 8
    items = [(f"k{i}", bytes([i]) * big) for i in range(16)]
    run = Pipeline([stage(fns.size_of, kind="process", workers=1, max_batch=8)]).run(
        items, progress=False
    )
    assert run.ok == 16
    (snap,) = run.stages
    assert snap.mean_batch <= 2.0, snap
    # small items still go by time: many to a batch
    small = [(f"k{i}", bytes(1000)) for i in range(400)]
    run = Pipeline([stage(fns.size_of, kind="process", workers=1, max_batch=8)]).run(
        small, progress=False
    )
    (snap,) = run.stages
    assert snap.mean_batch > 4.0, snap


def test_process_cpu_time_is_measured() -> None:
    result = Pipeline([stage(fns.spin, 0.05, kind="process", workers=2)]).run(
        keyed(8), progress=False
    )
    (snap,) = result.stages
    # CPU time does not depend on how loaded the machine is; the ratio to wall time does
    assert snap.cpu is not None
    assert snap.cpu >= 0.35
    assert snap.cpu_per_busy is not None
    assert 0 < snap.cpu_per_busy <= 1.2


def test_no_worker_processes_left_after_a_run() -> None:
    import psutil

    Pipeline([stage(fns.double, kind="process", workers=2)]).run(keyed(10), progress=False)
    children = [
        p
        for p in psutil.Process(os.getpid()).children(recursive=True)
        if "forkserver" not in " ".join(p.cmdline())
        and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert children == []


def test_a_stage_context_is_opened_once_and_passed_to_every_call() -> None:
    fns.Session.opened = fns.Session.closed = 0
    st = stage(fns.with_session, kind="async", context=fns.Session, context_arg="session")
    result = Pipeline([st]).run(keyed(20), progress=False)
    assert result.ok == 20
    assert (fns.Session.opened, fns.Session.closed) == (1, 1)
    with pytest.raises(DefinitionError, match="context"):
        stage(fns.double, kind="process", context=fns.Session)


# --------------------------------------------------------------------------- worker start-up

#: pid of the process that imported this module: a worker forked from a forkserver that
#: preloaded the module inherits the forkserver's pid here instead of its own
IMPORTED_IN = os.getpid()


def imported_in(x: int) -> tuple[int, int]:
    return IMPORTED_IN, os.getpid()


def test_process_lane_starts_its_worker_before_the_first_item() -> None:
    from pipeline.calls import steps_of
    from pipeline.procpool import ProcessLane
    from pipeline.records import Item

    async def main() -> None:
        lane = ProcessLane(steps_of([stage(fns.double, kind="process")]), on_crash=print)
        try:
            await asyncio.wait_for(lane.wait_started(), 30)  # up to 30 s on a loaded machine
            assert lane.started == 1  # no item was sent
            done, again = await lane.run([Item("k", 21)])
            assert [out.value for _, out in done] == [42]
            assert again == []
            assert lane.started == 1  # the eagerly started worker ran it
        finally:
            await lane.close(graceful=True)

    asyncio.run(main())


def _forkserver_children() -> list[Any]:
    import psutil

    return [
        worker
        for server in psutil.Process(os.getpid()).children()
        if "forkserver" in " ".join(server.cmdline())
        for worker in server.children()
    ]


def test_lane_closed_while_its_worker_is_starting_leaves_no_process() -> None:
    from pipeline.calls import steps_of
    from pipeline.procpool import ProcessLane

    async def main() -> None:
        lane = ProcessLane(steps_of([stage(fns.double, kind="process")]), on_crash=print)
        await lane.close(graceful=True)  # at once: the start is still in progress
        assert lane.started == 1  # close waited for it, then stopped that worker

    asyncio.run(main())
    import psutil

    # the forkserver reaps its exited children on SIGCHLD
    _, alive = psutil.wait_procs(_forkserver_children(), timeout=10)
    assert alive == []


def test_preload_names_the_stage_modules() -> None:
    from pipeline.calls import steps_of
    from pipeline.procpool import preload_modules

    steps = steps_of(
        [
            stage(fns.double, kind="process"),
            stage(functools.partial(imported_in), kind="process", name="p"),
        ]
    )
    assert preload_modules(steps) == ["pipeline.worker", "tests.fns", "tests.test_engine"]


_ROOT = Path(__file__).resolve().parents[1]

_PRELOAD_SCRIPT = """
import json
from pipeline import Pipeline, stage
{imports}
recs = list(Pipeline([stage({fn}, kind="process", workers=2)]).iter([("a", 1), ("b", 2)]))
print(json.dumps(sorted([r.status, r.value] for r in recs)))
"""


def _run_script(cwd: Path, imports: str, fn: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: the forkserver is global and starts once per parent process. It
    # imports its preload list with the sys.path of ``python -c`` (the working directory first).
    code = _PRELOAD_SCRIPT.format(imports=imports, fn=fn)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_workers_are_forked_from_a_forkserver_that_preloaded_the_stage_module() -> None:
    done = _run_script(_ROOT, "from tests.test_engine import imported_in", "imported_in")
    assert done.returncode == 0, done.stderr
    recs = json.loads(done.stdout)
    assert [status for status, _ in recs] == ["ok", "ok"]
    for _, (imported, worker) in recs:
        assert imported != worker  # imported once, in the forkserver, before the fork


_TOUCHY = """
import multiprocessing, os
# Imports in the test's parent and in workers (while they unpickle their task), but raises
# something else than ImportError in the forkserver's preload, which only catches that.
if os.environ.get("TOUCHY_PARENT") != str(os.getpid()) and not getattr(
    multiprocessing.current_process(), "_inheriting", False
):
    raise RuntimeError("touchy refuses to be preloaded")

def triple(x):
    return 3 * x
"""


def test_a_module_that_breaks_the_forkserver_preload_breaks_nothing(tmp_path: Path) -> None:
    (tmp_path / "touchy.py").write_text(_TOUCHY)
    imports = "import os; os.environ['TOUCHY_PARENT'] = str(os.getpid()); import touchy"
    done = _run_script(tmp_path, imports, "touchy.triple")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["ok", 3], ["ok", 6]]
    assert "touchy refuses to be preloaded" in done.stderr  # the forkserver's traceback
    assert "starting it again without that list" in done.stderr  # and the lane's warning


def test_preload_skips_a_module_the_forkserver_would_take_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.calls import steps_of
    from pipeline.procpool import preload_modules

    # the forkserver searches its working directory first: a ``tests`` package there would
    # shadow ours, so ``tests.fns`` must not be preloaded (its workers import it as before)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert "tests.fns" not in preload_modules(steps_of([stage(fns.double, kind="process")]))


def test_warm_up_starts_the_forkserver_with_the_modules_before_any_stage() -> None:
    # the CLI calls warm_up before importing the stages: the forkserver imports them meanwhile
    imports = (
        "import tests; from pipeline.procpool import warm_up; "
        "import multiprocessing.forkserver as fs; "
        "warm_up(['tests.test_engine']); assert fs._forkserver._forkserver_pid; "
        "from tests.test_engine import imported_in"
    )
    done = _run_script(_ROOT, imports, "imported_in")
    assert done.returncode == 0, done.stderr
    for status, (imported, worker) in json.loads(done.stdout):
        assert status == "ok"
        assert imported != worker  # imported in the warmed-up forkserver


#: How a warmed-up forkserver was started: "fork" (a fork of the script, whose command line it
#: keeps) or "exec" (a new interpreter); printed by the script before its run's records.
_HOW_STARTED = (
    "import psutil; fs_pid = fs._forkserver._forkserver_pid; "
    "me = psutil.Process(); server = psutil.Process(fs_pid); "
    "print('fork' if server.cmdline() == me.cmdline() else 'exec'); "
)


@pytest.mark.parametrize(("thread", "how"), [(False, "fork"), (True, "exec")])
def test_warm_up_forks_the_forkserver_of_a_process_without_threads(thread: bool, how: str) -> None:
    # warm_up(fork=True), as python -m pipeline calls it first thing: a fork of the process,
    # not a new interpreter, unless another thread runs (a fork would copy its locks held)
    imports = (
        "import threading, time; import tests; from pipeline.procpool import warm_up; "
        "import multiprocessing.forkserver as fs; "
        + ("threading.Thread(target=time.sleep, args=(5,), daemon=True).start(); " * thread)
        + "warm_up(['tests.test_engine'], fork=True); "
        + _HOW_STARTED
        + "from tests.test_engine import imported_in"
    )
    done = _run_script(_ROOT, imports, "imported_in")
    assert done.returncode == 0, done.stderr
    started, records = done.stdout.splitlines()
    assert started == how
    for status, (imported, worker) in json.loads(records):
        assert status == "ok"
        assert imported != worker  # imported in the warmed-up forkserver, whichever it is


def test_a_forked_forkserver_broken_by_its_preload_breaks_nothing(tmp_path: Path) -> None:
    # the fork imports what the process had not imported yet; one that raises there kills it,
    # with the traceback a new interpreter would print, and the first worker start goes on
    # without the preload list (pipeline.forkserver.spawn)
    (tmp_path / "touchy").mkdir()
    (tmp_path / "touchy" / "__init__.py").write_text("")
    (tmp_path / "touchy" / "mod.py").write_text(_TOUCHY)
    imports = (
        "import os, touchy; from pipeline.procpool import warm_up; "
        "warm_up(['touchy.mod'], fork=True); "  # no other thread: a fork (test above)
        "os.environ['TOUCHY_PARENT'] = str(os.getpid()); import touchy.mod"
    )
    done = _run_script(tmp_path, imports, "touchy.mod.triple")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["ok", 3], ["ok", 6]]
    assert "touchy refuses to be preloaded" in done.stderr  # the forked forkserver's traceback
    assert "starting it again without that list" in done.stderr  # and the lane's warning


# -- big payloads: the lane's shared-memory arena and the socket ---------------------------------


def _payloads(sizes: list[int]) -> list[bytes]:
    return [bytes([i % 251]) * n + os.urandom(16) for i, n in enumerate(sizes)]


def test_out_of_band_bytes_fill_the_arena_then_go_by_socket() -> None:
    from pipeline.procpool import _dumps_values
    from pipeline.worker import OUT_OF_BAND_BYTES

    small, a, b, big, c = _payloads([100, 300_000, 300_000, 600_000, 200_000])
    _, p = _dumps_values([small, a, {"x": b}, big, c], (0, 1 << 20))
    # in order: a and b fill 600 kB, big does not fit in the rest, c does
    assert [(off, len(d)) for off, d in p.copies] == [
        (0, 300_016),
        (300_016, 300_016),
        (600_032, 200_016),
    ]
    assert p.buffers == [big]
    assert len(small) < OUT_OF_BAND_BYTES  # stays in the pickle
    _, second = _dumps_values([a, b], (1 << 20, 1_500_000))  # the second region of the arena
    assert [(off, len(d)) for off, d in second.copies] == [(1 << 20, 300_016)]
    assert second.buffers == [b]
    _, without = _dumps_values([a, b], (0, 0))  # no arena
    assert without.copies == []
    assert without.buffers == [a, b]


def test_big_payloads_reach_the_worker_intact_through_arena_and_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline import procpool
    from pipeline.calls import steps_of
    from pipeline.records import Item

    monkeypatch.setattr(procpool, "ARENA_BYTES", 1 << 20)  # 1 MB: some of the batch overflows
    datas = _payloads([10, 70_000, 400_000, 700_000, 900_000, 2_500_000, 300_000, 50])

    async def main() -> None:
        lane = procpool.ProcessLane(steps_of([stage(fns.digest, kind="process")]), on_crash=print)
        try:
            for _ in range(3):  # the arena is reused from offset 0 by every batch
                done, again = await lane.run([Item(f"k{i}", d) for i, d in enumerate(datas)])
                assert again == []
                assert [out.value for _, out in done] == [fns.digest(d) for d in datas]
        finally:
            await lane.close(graceful=True)

    asyncio.run(main())


def test_a_worker_killed_holding_arena_payloads_loses_only_its_item(out: Path) -> None:
    datas = _payloads([3_000_000, 2_000_000, 1_000_000, 4_000_000, 500_000] * 4)
    bad = len(datas[7])  # 1_000_016 bytes: items 2, 7, 12 and 17 have that size
    pipe = Pipeline(
        [stage(fns.digest_crash_on, bad, kind="process", workers=1, max_batch=5, name="sha")]
    )
    items = [(f"k{i:02d}", d) for i, d in enumerate(datas)]
    result = pipe.run(items, output=out, progress=False)
    recs = by_key(out)
    for i, d in enumerate(datas):
        rec = recs[f"k{i:02d}"]
        if len(d) == bad:
            assert rec["status"] == "failed"
            assert rec["error_type"] == "WorkerCrashed"
        else:
            assert rec["status"] == "ok", i
            assert rec["result"] == list(fns.digest(d)), i
    assert result.ok == 16
    assert result.failed == 4


def test_arena_memory_beyond_the_keep_size_is_given_back() -> None:
    from pipeline.worker import Arena

    arena = Arena.create(16 << 20)
    assert arena is not None

    def resident() -> int:
        return os.fstat(arena.fd).st_blocks * 512

    try:
        arena.put([(0, b"x" * (6 << 20)), (6 << 20, b"y" * (4 << 20))], start=0, keep=1 << 20)
        assert resident() >= 10 << 20
        arena.put([(0, b"z" * 1000)], start=0, keep=1 << 20)  # frees the 9 MB beyond the first
        assert resident() <= (1 << 20) + 64 * 1024
        assert arena.view[:1000] == b"z" * 1000
        assert arena.view[(1 << 20) - 1 : (1 << 20) + 1] == b"x\0"  # freed pages read as zeros
    finally:
        arena.close()


# -- a process lane keeps a second batch in flight ------------------------------------------------


def test_a_crash_with_a_batch_queued_behind_it_fails_one_item_and_counts_once(out: Path) -> None:
    from pipeline.procpool import DEPTH

    assert DEPTH >= 2
    st = stage(fns.pace_then_crash_on, 5, kind="process", workers=1, max_batch=1, name="paced")
    result = Pipeline([st]).run(keyed(12), output=out, progress=False)
    recs = by_key(out)
    assert recs["k0005"]["status"] == "failed"
    assert recs["k0005"]["error_type"] == "WorkerCrashed"
    assert all(recs[f"k{i:04d}"]["status"] == "ok" for i in range(12) if i != 5)
    assert len(result.crashes) == 1  # the queued batch went back to the new worker, uncounted
    pids = {recs[f"k{i:04d}"]["result"][1] for i in range(12) if i != 5}
    assert len(pids) == 2  # the worker before the crash and its replacement


def test_a_timeout_kill_with_a_batch_queued_is_not_a_crash(out: Path) -> None:
    st = stage(fns.sleep_on, 3, 60.0, kind="process", workers=1, max_batch=1, timeout=0.5)
    result = Pipeline([st]).run(keyed(8), output=out, progress=False)
    recs = by_key(out)
    assert recs["k0003"]["error_type"] == "ItemTimeout"
    assert result.ok == 7
    assert not result.crashes


def test_two_batches_in_flight_on_one_lane_come_back_whole_and_in_order() -> None:
    from pipeline.calls import steps_of
    from pipeline.procpool import ProcessLane
    from pipeline.records import Item

    datas = _payloads([200_000, 5_000, 3_000_000, 70_000, 1_000_000, 10])

    async def main() -> None:
        lane = ProcessLane(steps_of([stage(fns.digest, kind="process")]), on_crash=print)
        try:
            runs = [
                lane.run([Item(f"k{i}{j}", d) for j, d in enumerate(datas[i::2])]) for i in range(2)
            ] * 3
            results = await asyncio.gather(*runs)
            for n, (done, again) in enumerate(results):
                assert again == []
                want = datas[n % 2 :: 2]
                assert [out.value for _, out in done] == [fns.digest(d) for d in want]
            assert lane.started == 1
        finally:
            await lane.close(graceful=True)

    asyncio.run(main())


_NO_MAIN_GUARD = """
from pipeline import Pipeline, stage
from tests.fns import double

Pipeline([stage(double, kind="process", workers=1)]).run(range(3), progress=False)
"""

_MAIN_GUARDS = {
    "if": """
from pipeline import Pipeline, stage
from tests.fns import double

if __name__ == "__main__":
    print(Pipeline([stage(double, kind="process", workers=1)]).run(range(3), progress=False).ok)
""",
    "function": """
import asyncio
from pipeline import Pipeline, run_stage, stage
from tests.fns import double

def main():
    pipe = Pipeline([stage(double, kind="process", workers=1)])
    ok = pipe.run(range(3), progress=False).ok
    ok += sum(r.ok for r in run_stage(pipe.stages[0], range(3)))
    print(ok + asyncio.run(pipe.run_async(range(3), progress=False)).ok - 6)

if "__main__" == __name__:
    main()
""",
    "threads only": """
from pipeline import Pipeline, stage
from tests.fns import double

print(Pipeline([stage(double, kind="thread", workers=1)]).run(range(3), progress=False).ok)
""",
}


def _script(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_a_script_without_a_main_guard_is_told_so_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    """Every worker imports the script: run at its top level, the pipeline would run again in
    each of them, and each died with a traceback (a screenful, interleaved). The script's own
    source says so before any worker starts: one error, where, and what to do."""
    script = tmp_path / "no_guard.py"
    script.write_text(_NO_MAIN_GUARD)
    done = _script(script)
    assert done.returncode != 0
    assert f"DefinitionError: {script}, line 5: runs a pipeline with process stages" in done.stderr
    assert "if __name__ == '__main__':" in done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr  # the script's, no worker's
    assert "without ever answering" not in done.stderr


_DEFINED_UNDER_THE_GUARD = """
import functools
from pipeline import Pipeline, stage

if __name__ == "__main__":
    def double(x, n=2):
        return x * n

    print(Pipeline([stage(functools.partial(double, n=3), kind="process")]).run(range(3)).ok)
"""


def test_a_stage_defined_under_the_main_guard_is_refused_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    """A worker imports the script without running its ``if __name__ == "__main__":`` block:
    a process stage's function defined there cannot be found, and every worker died with an
    AttributeError (and a hint to add the guard that was there) until the crash budget."""
    script = tmp_path / "under_guard.py"
    script.write_text(_DEFINED_UNDER_THE_GUARD)
    done = _script(script)
    assert done.returncode != 0
    assert f"DefinitionError: {script}, line 6: process stage 'double': double is defined" in (
        done.stderr
    )
    assert "define it above that block" in done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr  # the script's, no worker's


@pytest.mark.parametrize("how", sorted(_MAIN_GUARDS))
def test_a_script_with_a_main_guard_runs(tmp_path: Path, how: str) -> None:
    script = tmp_path / "guarded.py"
    script.write_text(_MAIN_GUARDS[how])
    done = _script(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_a_script_without_a_main_guard_nor_its_source_still_stops(tmp_path: Path) -> None:
    """Where the source cannot be read (run from a .pyc), the workers' deaths say it: the run
    stops on its crash budget, with the hint; it does not hang."""
    import py_compile

    script = tmp_path / "no_guard.py"
    script.write_text(_NO_MAIN_GUARD)
    compiled = tmp_path / "no_guard.pyc"
    py_compile.compile(str(script), cfile=str(compiled), doraise=True)
    script.unlink()
    done = _script(compiled)
    assert done.returncode != 0
    assert "CrashBudgetExceeded" in done.stderr  # it stops; it does not hang
    assert "if __name__ == '__main__':" in done.stderr
    assert "without ever answering" in done.stderr


def test_process_workers_keep_freed_buffers_for_the_next_item() -> None:
    # four 3 MB buffers freed per round: 3,000 page faults a round if glibc trimmed them (its
    # default), none once the worker's malloc keeps them (pipeline.worker.tune_malloc)
    (rec,) = run_stage(stage(fns.fault_churn, kind="process", workers=1), [("k", 0)])
    assert rec.status is Status.OK
    assert rec.value < 500, f"{rec.value} page faults in 5 rounds"


def test_malloc_settings_given_in_the_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.worker import tune_malloc

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_malloc() is False


def test_describe_counts_the_second_batch_a_process_lane_keeps_in_flight() -> None:
    from pipeline.procpool import DEPTH

    pipe = Pipeline(
        [
            stage(fns.double, kind="thread", workers=3, capacity=8, max_batch=2, name="t"),
            stage(fns.inc, kind="process", workers=2, capacity=4, max_batch=1, name="p"),
        ]
    )
    text = pipe.describe()
    assert "t: thread x3, up to 6 items in flight" in text
    assert f"p: process x2, up to {2 * DEPTH} items in flight" in text
    assert f"at most {8 + 6 + 4 + 2 * DEPTH} items held" in text


def test_run_inside_a_running_event_loop_says_what_works_there() -> None:
    """A notebook's cell runs in an event loop: ``run`` (which starts its own) is refused with
    what to use instead, not asyncio's bare RuntimeError and a never-awaited coroutine."""
    from pipeline import DefinitionError

    pipe = Pipeline([stage(fns.double, kind="thread", workers=1)])

    async def cell() -> list[int]:
        with pytest.raises(DefinitionError, match=r"await pipe\.run_async"):
            pipe.run(range(3), progress=False)
        done = await pipe.run_async(range(3), progress=False)
        return [done.ok, sum(1 for r in pipe.iter(range(3), progress=False) if r.status == "ok")]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (a coroutine never awaited)
        assert asyncio.run(cell()) == [3, 3]
