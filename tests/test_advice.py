"""Verdicts from measured behaviour: stages with known behaviour must get the right advice."""

from __future__ import annotations

import pytest

from pipeline import Pipeline, stage
from pipeline.advice import advise
from pipeline.metrics import StageSnapshot
from tests import fns


def keyed(n: int) -> list[tuple[str, int]]:
    return [(f"k{i}", i) for i in range(n)]


def verdict_of(fn: object, *args: object, kind: str, workers: int, n: int) -> str:
    st = stage(fn, *args, kind=kind, workers=workers, name="s")  # type: ignore[arg-type]
    result = Pipeline([st]).run(keyed(n), progress=False)
    (v,) = result.advice
    return v.kind


def test_sleeping_thread_stage_is_io_bound() -> None:
    assert verdict_of(fns.sleep_each, 0.02, kind="thread", workers=4, n=40) == "io-bound"


def test_sleeping_process_stage_is_io_in_process() -> None:
    assert verdict_of(fns.sleep_each, 0.05, kind="process", workers=2, n=20) == "io-in-process"


def test_python_spin_in_threads_is_gil_bound() -> None:
    """Two threads of pure Python never get beyond one core, and the verdict says ``cpu-python``
    when both were busy at once. On a machine busy with other work the event loop (which needs
    the GIL too) may not keep two threads busy at once; the verdict then says it cannot tell
    (``cpu``), or that the threads waited for a core (``contended``), never ``cpu-c``. Up to
    three tries for the ``cpu-python`` case; every try checks that the verdict follows what
    was measured."""
    from pipeline.advice import CONTENDED_ABOVE, GIL_RELEASED_ABOVE

    for _ in range(3):
        st = stage(fns.py_spin, 0.03, kind="thread", workers=2, name="s")
        result = Pipeline([st]).run(keyed(40), progress=False)
        (v,) = result.advice
        (snap,) = result.stages
        assert snap.parallelism is not None
        assert snap.parallelism <= GIL_RELEASED_ABOVE
        concurrent = snap.busy / snap.wall
        if v.kind == "cpu-python":
            assert concurrent > 1.5
            return
        if v.kind == "contended":  # other work held the cores: measured, so said
            assert snap.core_wait is not None
            assert snap.core_wait >= CONTENDED_ABOVE
            continue
        assert v.kind == "cpu", v
        assert "too few threads ran at once" in v.reason, v
        assert concurrent <= 1.5


@pytest.mark.parametrize("fn", [fns.c_spin, fns.np_spin])
def test_c_code_releasing_the_gil_scales_in_threads(fn: object) -> None:
    """Two threads of GIL-releasing C code use two cores: ``cpu-c`` — when the machine has two
    cores to give. On a machine busy with other work the stage cannot get them, and the verdict
    (honestly) follows what was measured; then the test checks, in up to three tries, that plain
    threads running the same code could not get two cores either (the engine is not the cause).
    """
    for _ in range(3):
        st = stage(fn, 0.03, kind="thread", workers=2, name="s")  # type: ignore[arg-type]
        result = Pipeline([st]).run(keyed(40), progress=False)
        (v,) = result.advice
        (snap,) = result.stages
        assert snap.parallelism is not None
        if v.kind == "cpu-c":
            assert snap.parallelism > 1.0
            return
    # never two cores: then two plain threads running the same code must not get them either
    raw = _raw_thread_cores(fn)
    assert raw < 1.5, f"plain threads got {raw:.2f} cores, the stage {snap.parallelism:.2f}"


def _raw_thread_cores(fn: object) -> float:
    import threading
    import time

    started, cpu = time.perf_counter(), time.process_time()
    threads = [
        threading.Thread(target=lambda: [fn(0, 0.03) for _ in range(20)])  # type: ignore[operator]
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.process_time() - cpu) / (time.perf_counter() - started)


def test_spin_in_processes_is_cpu_bound() -> None:
    """Computing: ``cpu``, or ``contended`` when other work holds the cores (then its workers
    waited for a core, not for I/O); never an I/O verdict."""
    assert verdict_of(fns.spin, 0.03, kind="process", workers=2, n=20) in ("cpu", "contended")


def test_stage_after_the_bottleneck_is_starved_and_workers_balance() -> None:
    pipe = Pipeline(
        [
            stage(fns.spin, 0.02, kind="process", workers=2, name="crunch"),
            stage(fns.noop, kind="thread", workers=8, name="after"),
        ]
    )
    result = pipe.run(keyed(60), progress=False)
    got = {v.stage: v for v in result.advice}
    assert result.bottleneck == "crunch"
    assert got["crunch"].kind in ("cpu", "contended")  # computing, on a machine shared or not
    assert got["crunch"].suggested_workers <= 2
    assert got["after"].kind == "starved"
    assert got["after"].suggested_workers <= 8


def _snap(name: str, kind: str, **kw: float) -> StageSnapshot:
    base = dict(
        workers=2,
        items=100,
        ok=100,
        failed=0,
        wall=10.0,
        items_per_s=10.0,
        busy=10.0,
        utilisation=0.5,
        wait_inbox=0.0,
        blocked_outbox=0.0,
        cpu=9.0,
        cpu_per_busy=0.9,
        parallelism=0.9,
        mean_batch=1.0,
    )
    base.update(kw)
    return StageSnapshot(name=name, kind=kind, fused_with=[], **base)  # type: ignore[arg-type]


def test_advice_from_figures_alone() -> None:
    io = _snap("io", "thread", cpu=0.5, cpu_per_busy=0.05, parallelism=0.05)
    gil = _snap(
        "gil", "thread", busy=19.0, utilisation=0.95, cpu=9.5, cpu_per_busy=0.5, parallelism=0.95
    )
    cee = _snap(
        "c", "thread", busy=19.0, utilisation=0.95, cpu=18.0, cpu_per_busy=0.95, parallelism=1.8
    )
    inline = _snap("loop", "inline", workers=1)
    kinds = {v.stage: (v.kind, v.suggested_kind) for v in advise([io, gil, cee, inline], cores=2)}
    assert kinds["io"][0] == "io-bound"
    assert kinds["gil"] == ("cpu-python", "process")
    assert kinds["c"] == ("cpu-c", "thread")
    assert kinds["loop"] == ("blocks-loop", "process")


def test_too_little_work_gets_no_verdict_but_a_starved_stage_still_does() -> None:
    """Busy under MIN_BUSY seconds in all: ``brief``, no change suggested (the same figures
    with ten times the work say ``cpu-python``); a stage idling for the bottleneck is told by
    its waits, however little it computed."""
    from pipeline.advice import MIN_BUSY

    small = dict(busy=MIN_BUSY / 2, wall=0.13, utilisation=0.95, cpu=0.12, cpu_per_busy=0.5)
    gil = _snap("gil", "thread", parallelism=0.95, **small)
    (v,) = advise([gil], cores=2)
    assert (v.kind, v.suggested_kind, v.suggested_workers) == ("brief", "thread", 2)
    assert "too little work to tell" in v.reason
    ten = {k: x * 10 for k, x in small.items() if k in ("busy", "wall", "cpu")}
    (more,) = advise([_snap("gil", "thread", parallelism=0.95, **{**small, **ten})], cores=2)
    assert more.kind == "cpu-python"
    top = _snap("top", "process", busy=20.0, utilisation=0.95)
    after = _snap("after", "thread", busy=0.01, utilisation=0.01, wait_inbox=9.0)
    kinds = {v.stage: v.kind for v in advise([top, after], cores=2)}
    assert kinds["after"] == "starved"


def test_a_brief_stage_is_contended_only_when_it_waited_long_enough_to_tell() -> None:
    """A few items, a few milliseconds of waiting for a core: ``brief`` (the noop stage of
    the next test read ``contended`` once, in a full suite on a loaded machine: its workers'
    waits were a large share of almost nothing). The README's first run, 0.14 s of waits in
    0.4 s busy, stays ``contended``."""
    from pipeline.advice import MIN_WAIT

    tiny = dict(busy=0.004, wall=0.01, utilisation=0.2, cpu=0.002, cpu_per_busy=0.5)
    (v,) = advise([_snap("s", "thread", run_wait=0.0025, **tiny)], cores=2)
    assert v.kind == "brief"
    first = dict(busy=0.42, wall=0.3, utilisation=0.7, cpu=0.13, cpu_per_busy=0.31)
    (v,) = advise([_snap("read", "thread", run_wait=0.14, **first)], cores=2)
    assert v.kind == "contended"
    assert MIN_WAIT < 0.14


def test_the_console_says_when_the_run_was_too_brief_to_advise() -> None:
    from app.console import summary_lines

    result = Pipeline([stage(fns.noop, kind="thread", workers=2, name="s")]).run(
        keyed(5), progress=False
    )
    assert [v.kind for v in result.advice] == ["brief"]
    lines = summary_lines(result)
    assert lines[-1].startswith("advice: none: each stage was busy under 0.5 s")
    assert "advice:" not in lines


def test_workers_auto_grows_the_bottleneck_and_says_why() -> None:
    pipe = Pipeline(
        [
            stage(fns.sleep_each, 0.02, kind="thread", workers=16, name="io"),
            stage(fns.noop, kind="thread", workers=4, name="after"),
        ]
    )
    result = pipe.run(keyed(300), progress=False, autoscale=True)
    assert result.ok == 300
    auto = result.collected["autoscale"]
    assert auto["final"]["io"] > 2  # the sleeping stage was grown
    assert auto["final"]["after"] == 2  # the idle one stayed where it started
    first = auto["decisions"][0]
    assert first["stage"] == "io"
    assert "busy" in first["reason"]


def test_workers_auto_never_exceeds_the_cores_for_processes() -> None:
    import os

    pipe = Pipeline([stage(fns.spin, 0.02, kind="process", workers=8, name="cpu")])
    result = pipe.run(keyed(120), progress=False, autoscale=True)
    assert result.ok == 120
    assert result.collected["autoscale"]["final"]["cpu"] <= (os.cpu_count() or 1)
