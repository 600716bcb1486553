"""Engine behaviour: kinds, failures, retries, fusion, crashes, timeouts, pickling, the ledger."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from pathlib import Path

import pytest

from pipeline import (
    CrashBudgetExceeded,
    DefinitionError,
    Pipeline,
    Status,
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
    assert summary["finished"] is True and summary["counts"] == {"ok": 50}


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
    assert result.failed == len(bad) and result.ok == 30 - len(bad)
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
            assert rec["status"] == "ok" and rec["result"] == i + 1


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
    assert result.ok == 39 and result.failed == 1
    assert len(result.crashes) == 1


def test_crash_storm_hits_the_budget_and_stops_the_run(out: Path) -> None:
    pipe = Pipeline([stage(fns.always_crash, kind="process", workers=2)])
    with pytest.raises(CrashBudgetExceeded):
        pipe.run(keyed(50), output=out, progress=False, crash_budget=3)
    recs = by_key(out)
    assert len(recs) <= 50
    assert {r["status"] for r in recs.values()} <= {"failed", "cancelled"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True and "CrashBudgetExceeded" in summary["error"]
    assert summary["exit_code"] == 3


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
    # ok ones skipped, failed ones retried (and fail again), five new ones processed
    assert second.counts == {"skipped": 17, "failed": 4, "ok": 4}
    recs = by_key(out)
    assert len(recs) == 25
    assert recs["k0001"]["status"] == "skipped" and recs["k0001"]["reason"] == "already done"
    assert recs["k0001"]["result"] == 1  # the earlier result is carried over
    third = pipe.run(keyed(25), output=out, progress=False)
    assert third.counts == {"skipped": 21, "failed": 4}


def test_retry_failed_redoes_only_failures(out: Path) -> None:
    pipe = Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread")])
    pipe.run(keyed(15), output=out, progress=False)
    result = pipe.run(keyed(20), output=out, progress=False, retry_failed=True)
    assert result.counts == {"skipped": 17, "failed": 3}
    recs = by_key(out)
    assert recs["k0016"]["status"] == "skipped" and "retry-failed" in recs["k0016"]["reason"]
    forced = pipe.run(keyed(20), output=out, progress=False, force=True)
    assert forced.counts == {"ok": 17, "failed": 3}


def test_fingerprint_change_redoes_items(out: Path) -> None:
    pipe = Pipeline([stage(fns.inc, kind="thread")])
    pipe.run(keyed(5), output=out, progress=False, fingerprint="a")
    assert pipe.run(keyed(5), output=out, progress=False, fingerprint="a").skipped == 5
    assert pipe.run(keyed(5), output=out, progress=False, fingerprint="b").ok == 5


def test_duplicate_keys_get_one_record(out: Path) -> None:
    inputs = [("same", 1), ("other", 2), ("same", 3)]
    result = Pipeline([stage(fns.inc, kind="thread")]).run(inputs, output=out, progress=False)
    assert result.duplicates == 1
    assert len(by_key(out)) == 2


def test_iter_and_run_stage_yield_records_with_values() -> None:
    recs = list(run_stage(stage(fns.double, kind="process", workers=2), keyed(10)))
    assert sorted(r.value for r in recs if r.status is Status.OK) == [2 * i for i in range(10)]
    pipe = Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread"), stage(fns.inc)])
    got = {r.key: r for r in pipe.iter(keyed(10))}
    assert got["k0007"].status is Status.FAILED and got["k0003"].value == 4


def test_leaving_iter_early_stops_the_run() -> None:
    pipe = Pipeline([stage(fns.sleep_each, 0.01, kind="process", workers=2)])
    it = pipe.iter(keyed(10_000))
    first = [next(it) for _ in range(5)]
    it.close()  # must not hang
    assert len(first) == 5


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
    assert result.counts == {"skipped": 10, "ok": 2}
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
    assert slow.busy > 0.5 and slow.items == 40


def test_process_cpu_time_is_measured() -> None:
    result = Pipeline([stage(fns.spin, 0.05, kind="process", workers=2)]).run(
        keyed(8), progress=False
    )
    (snap,) = result.stages
    # CPU time does not depend on how loaded the machine is; the ratio to wall time does
    assert snap.cpu is not None and snap.cpu >= 0.35
    assert snap.cpu_per_busy is not None and 0 < snap.cpu_per_busy <= 1.2


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
