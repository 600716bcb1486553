"""Advice on a loaded machine: waiting for a core is not waiting for I/O; fused stages get one
verdict, computed from the figures of their fused row, which it carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import Pipeline, stage
from pipeline.advice import CONTENDED_ABOVE, advise, render_advice, unmeasured_load
from pipeline.calls import Outcome, share_run_wait
from pipeline.metrics import StageSnapshot, fuse, render_table
from pipeline.runwait import run_delay
from tests import fns
from tests.images import photo_like

ROOT = Path(__file__).resolve().parents[1]
IO_KINDS = ("io-bound", "io-in-process")


def snap(
    name: str = "s",
    kind: str = "process",
    *,
    cpu: float,
    busy: float = 10.0,
    run_wait: float | None,
    workers: int = 2,
    wall: float = 10.0,
    items: int = 100,
    fused_with: tuple[str, ...] = (),
) -> StageSnapshot:
    """A stage's figures from (cpu, busy, run wait) seconds over ``wall``."""
    return StageSnapshot(
        name=name,
        kind=kind,
        workers=workers,
        items=items,
        ok=items,
        failed=0,
        wall=wall,
        items_per_s=items / wall,
        busy=busy,
        utilisation=min(busy / (wall * workers), 1.0),
        wait_inbox=0.0,
        blocked_outbox=0.0,
        cpu=cpu,
        cpu_per_busy=cpu / busy,
        parallelism=cpu / wall,
        mean_batch=1.0,
        fused_with=list(fused_with),
        run_wait=run_wait,
        entered=items,
    )


# --------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(
    ("cpu", "run_wait", "expected"),
    [
        (9.0, 0.5, "cpu"),  # computes, gets its cores
        (2.0, 7.5, "contended"),  # computes, but waits for a core 75% of the time
        (2.0, 0.3, "io-in-process"),  # really waits: little CPU, little core wait
        (2.0, None, "io-in-process"),  # not measured and no load given: CPU share alone
        (0.5, 3.0, "contended"),  # 5% CPU, 30% waiting for a core: short of cores
        (0.2, 2.6, "io-in-process"),  # 26% core wait, but asleep 72% of the time: I/O
    ],
)
def test_classifier_from_cpu_wall_and_run_delay(
    cpu: float, run_wait: float | None, expected: str
) -> None:
    (v,) = advise([snap(cpu=cpu, busy=10.0, run_wait=run_wait, wall=10.0)], cores=2)
    assert v.kind == expected, v
    if expected == "contended":
        assert v.suggested_kind == "process"
        assert v.suggested_workers <= 2  # never more
        assert "waiting for a core" in v.reason
        assert "more workers will not help" in v.reason


def test_contention_by_other_work_or_by_the_lines_own_workers() -> None:
    other = advise([snap(cpu=3.0, run_wait=6.0, workers=2)], cores=2)[0]
    assert "the CPUs are busy with other work: 60% of worker time" in other.reason
    own = advise([snap(cpu=18.0, busy=40.0, run_wait=20.0, workers=8)], cores=2)[0]
    assert own.kind == "contended"
    assert "the line's own workers fill the 2 cores" in own.reason
    assert own.suggested_workers <= 2  # 8 process workers on 2 cores: back to the cores


def test_without_a_run_delay_the_load_average_stands_in() -> None:
    s = snap(cpu=2.0, run_wait=None)
    (loaded,) = advise([s], cores=2, load=5.0)
    assert loaded.kind == "contended"
    assert "load average 5.0 on 2 cores" in loaded.reason
    (calm,) = advise([s], cores=2, load=0.5)
    assert calm.kind == "io-in-process"
    measured = snap(cpu=2.0, run_wait=0.1)
    assert unmeasured_load([measured]) is None  # measured: the load is not even read
    if hasattr(os, "getloadavg"):
        assert unmeasured_load([s]) == pytest.approx(os.getloadavg()[0], abs=5.0)


def test_run_delay_where_the_system_does_not_report_it() -> None:
    assert run_delay("/nonexistent/schedstat") is None
    before = run_delay()
    if before is not None:  # Linux: a reading that only grows
        after = run_delay()
        assert after is not None
        assert after >= before


def test_a_batchs_run_delay_is_shared_by_busy_time() -> None:
    a = Outcome.success(1, step=0, attempts=1, busy=[0.3])
    b = Outcome.success(2, step=0, attempts=1, busy=[0.1, 0.0])
    now = share_run_wait([a, b], 0.0)
    if now is None:  # not reported here: not measured, rather than 0
        assert (a.run_wait, b.run_wait) == (None, None)
        return
    assert a.run_wait is not None
    assert b.run_wait is not None
    assert a.run_wait == pytest.approx(3 * b.run_wait)
    assert a.run_wait + b.run_wait == pytest.approx(now, rel=1e-6)
    share_run_wait([a, b], None)  # no reading to start from: not measured
    assert (a.run_wait, b.run_wait) == (None, None)


def test_suggested_workers_stay_sane() -> None:
    """A waiting thread stage whose figures ask for thousands of workers gets at most
    max(4 x workers, 8 x cores); a computing process stage at most the cores."""
    io = snap("io", "thread", cpu=0.01, busy=20.0, run_wait=0.0, workers=4, items=10_000)
    crunch = snap("crunch", cpu=0.5, busy=0.6, run_wait=0.0, workers=2, items=10_000)
    got = {v.stage: v for v in advise([io, crunch], cores=2)}
    assert got["io"].kind == "io-bound"
    assert 4 < got["io"].suggested_workers <= 16
    assert got["crunch"].suggested_workers <= 2


# --------------------------------------------------------------------------- the fused row


def test_fused_stages_get_one_verdict_from_their_row() -> None:
    group = ("resize", "crunch")
    resize = snap("resize", cpu=7.0, busy=9.0, run_wait=1.0, items=90, fused_with=group)
    crunch = snap("crunch", cpu=0.2, busy=1.0, run_wait=0.1, items=10, fused_with=group)
    crunch = StageSnapshot(**{**_fields(crunch), "entered": 0})
    resize = StageSnapshot(**{**_fields(resize), "entered": 100})
    (row,) = fuse([resize, crunch])
    assert row.name == "resize+crunch"
    assert (row.items, row.busy, row.cpu, row.run_wait) == (100, 10.0, 7.2, 1.1)
    assert row.utilisation == pytest.approx(10.0 / (10.0 * 2))
    (v,) = advise([resize, crunch], cores=2)
    assert v.stage == "resize+crunch"
    assert v.figures == row.to_json()  # the verdict carries the figures it was computed from
    assert f"busy {100 * row.utilisation:.0f}% of 2 worker(s)" in v.reason
    assert f"CPU {100 * (row.cpu_per_busy or 0):.0f}% of busy time" in v.reason
    table = render_table([resize, crunch])
    assert table.splitlines()[-1].startswith("resize+crunch")
    assert "<- bottleneck" in table.splitlines()[-1]


def _fields(s: StageSnapshot) -> dict[str, Any]:
    return {name: getattr(s, name) for name in StageSnapshot.__dataclass_fields__}


def test_a_real_fused_group_verdict_is_its_rows() -> None:
    pipe = Pipeline(
        [
            stage(fns.spin, 0.01, kind="process", workers=2, name="a"),
            stage(fns.spin, 0.01, kind="process", workers=2, name="b"),
            stage(fns.noop, kind="thread", workers=1, name="after"),
        ]
    )
    result = pipe.run([(f"k{i}", i) for i in range(30)], progress=False)
    assert result.ok == 30
    rows = {r.name: r for r in fuse(result.stages)}
    assert set(rows) == {"a+b", "after"}
    assert rows["a+b"].items == 30  # every item went through both: entered once
    verdicts = {v.stage: v for v in result.advice}
    assert set(verdicts) == {"a+b", "after"}
    assert verdicts["a+b"].figures == rows["a+b"].to_json()
    assert verdicts["a+b"].kind not in IO_KINDS
    assert result.bottleneck in ("a+b", "after")
    assert "a+b:" in render_advice(result.advice)
    summary = result.to_json()
    assert [a["stage"] for a in summary["advice"]] == ["a+b", "after"]


# --------------------------------------------------------------------------- a real loaded run


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes to a core")
def test_a_cpu_bound_resize_beside_cpu_hogs_is_contended_not_io(tmp_path: Path) -> None:
    """The real ``process`` command resizing photos, on one core shared with two busy loops:
    its workers wait for that core most of the time. Everything started here is pinned to
    that one core (children inherit the affinity), so the figures do not depend on how many
    cores the machine has or what else runs on them: with 2 hogs and 2 workers on one core
    each worker gets at most a third of it, far beyond ``CONTENDED_ABOVE`` of waiting."""
    assert run_delay() is not None, "Linux reports the run delay in /proc/thread-self/schedstat"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(12):
        photo_like(1600, 1200, seed=i).save(inputs / f"p{i:02d}.jpg", quality=90)
    saved = os.sched_getaffinity(0)
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        os.sched_setaffinity(0, {min(saved)})
        for _ in range(2):  # one by one: each is killed below even if the next fails to start
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.2)  # let them start spinning (not a timing assertion)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "process", str(inputs), "--output",
             str(tmp_path / "out"), "--workers", "resize=2"],
            cwd=ROOT, capture_output=True, text=True, timeout=110,
        )  # fmt: skip
    finally:
        os.sched_setaffinity(0, saved)
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (verdict,) = [a for a in summary["advice"] if "resize" in a["stage"]]
    assert verdict["kind"] == "contended", verdict
    assert verdict["suggested_kind"] == "process"
    assert verdict["suggested_workers"] <= 2
    assert verdict["figures"]["core_wait"] >= CONTENDED_ABOVE
    assert "waiting for a core" in verdict["reason"]
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith(f"  {verdict['stage']}:")]
    assert "contended" in line
    assert "thread" not in line
    assert " io" not in line


def test_workers_auto_does_not_grow_a_stage_waiting_for_cores() -> None:
    from pipeline.autoscale import Autoscaler, GroupHandle
    from pipeline.metrics import StageMetrics

    m = StageMetrics("t", "thread", 2)
    added: list[int] = []
    inbox: Any = [1, 2, 3]  # work waiting (the autoscaler only asks its length)
    h = GroupHandle("t", "thread", 16, inbox, [m], lambda: added.append(1), lanes=2)
    scaler = Autoscaler([h], cores=2)
    # an interval of about a second: both workers busy, 60% of it waiting for a core
    scaler._last = time.perf_counter() - 1.0
    m.busy, m.cpu, m.run_wait = 2.0, 0.2, 1.2
    scaler.step()
    assert added == []
    assert scaler.decisions == []
    # the next interval, the same work without the wait (I/O): one more worker
    scaler._last = time.perf_counter() - 1.0
    m.busy, m.cpu = 4.0, 0.4
    scaler.step()
    assert added == [1]
    assert scaler.decisions[0]["stage"] == "t"
