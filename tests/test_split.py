"""Split items (pipeline.split): parts fan out over the next stage's workers and merge back."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest

from pipeline import Pipeline, Split, stage
from tests import fns
from tests.conftest import by_key


def gauss(n: int) -> int:
    return n * (n - 1) // 2


@pytest.mark.parametrize("kind", ["inline", "thread", "process"])
def test_parts_run_in_the_next_stage_and_merge_to_one_record(kind: str, out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.split_range, 7, kind="thread", name="plan"),
            stage(fns.range_sum, kind=kind, name="crunch"),
            stage(fns.double, kind="thread", name="after"),
        ]
    )
    sizes = [0, 1, 5, 100, 1000]
    result = pipe.run([(f"n{n}", n) for n in sizes], output=out, progress=False)
    assert result.counts == {"ok": len(sizes)}
    recs = by_key(out)
    assert {k: r["result"] for k, r in recs.items()} == {f"n{n}": 2 * gauss(n) for n in sizes}
    crunch = next(s for s in result.stages if s.name == "crunch")
    assert crunch.items == 0 + 1 + 5 + 7 + 7  # parts of 0, 1, 5, 100 and 1000


def _split_pids(parts: int, n: int) -> Split:
    inner = fns.split_range(n, parts)
    return Split(inner.parts, fns.pids_of_parts)


def test_a_process_stage_runs_the_parts_on_both_workers(tmp_path: Path) -> None:
    met = str(tmp_path)  # each worker's pid, once it has taken a part (see fns.range_sum_pid)
    crunch = stage(fns.range_sum_pid, met, 2, kind="process", workers=2, max_batch=1, name="crunch")
    pipe = Pipeline([stage(functools.partial(_split_pids, 16), kind="thread", name="plan"), crunch])
    (rec,) = list(pipe.iter([("big", 1600)]))
    assert rec.status == "ok", rec.error
    assert len(rec.value) == 2  # the 16 parts ran in two different worker processes


def test_a_split_from_the_last_stage_is_merged_at_the_end(out: Path) -> None:
    result = Pipeline([stage(fns.split_range, 4, kind="thread")]).run(
        [("a", 10), ("b", 0)], output=out, progress=False
    )
    assert result.ok == 2
    # nothing ran on the parts (0, 3), (3, 6), (6, 9), (9, 10): the merge adds their starts
    assert {k: r["result"] for k, r in by_key(out).items()} == {"a": 0 + 3 + 6 + 9, "b": 0}


def test_lazy_parts_and_a_parts_iterator_that_fails(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.split_lazily, 10, kind="thread", name="plan"),
            stage(fns.range_sum, kind="process", workers=2, name="crunch"),
        ]
    )
    ok = pipe.run([("fine", 1000)], output=out / "a", progress=False)
    assert ok.ok == 1
    assert by_key(out / "a")["fine"]["result"] == gauss(1000)

    pipe = Pipeline(
        [
            stage(functools.partial(fns.split_lazily, fail_at=3), 10, kind="thread", name="plan"),
            stage(fns.range_sum, kind="process", workers=2, name="crunch"),
        ]
    )
    result = pipe.run([("broken", 1000), ("small", 3)], output=out / "b", progress=False)
    recs = by_key(out / "b")
    assert recs["broken"]["status"] == "failed"
    assert recs["broken"]["stage"] == "plan"
    assert recs["broken"]["error_type"] == "OSError"
    assert "cannot plan part 3" in recs["broken"]["error"]
    assert recs["small"]["status"] == "ok"
    assert recs["small"]["result"] == gauss(3)
    assert result.counts == {"failed": 1, "ok": 1}


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_one_failing_part_fails_its_item_once(kind: str, out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.split_range, 10, kind="thread", name="plan"),
            stage(fns.range_sum_fail_at, 300, kind=kind, workers=2, name="crunch"),
            stage(fns.inc, kind="thread", name="after"),
        ]
    )
    result = pipe.run([("bad", 1000), ("good", 200)], output=out, progress=False)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2  # exactly one record per key
    recs = by_key(out)
    assert recs["bad"]["status"] == "failed"
    assert recs["bad"]["stage"] == "crunch"
    assert recs["bad"]["error_type"] == "ValueError"
    assert recs["bad"]["meta"]["part"] == 3
    assert recs["good"]["result"] == gauss(200) + 1
    assert result.counts == {"failed": 1, "ok": 1}


def test_a_worker_killed_in_a_part_fails_that_item_only(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.split_range, 8, kind="thread", name="plan"),
            stage(fns.range_sum_crash_at, 500, kind="process", workers=2, name="crunch"),
        ]
    )
    items = [("dies", 1000), *((f"ok{i}", 100 + i) for i in range(5))]
    result = pipe.run(items, output=out, progress=False)
    recs = by_key(out)
    assert recs["dies"]["status"] == "failed"
    assert recs["dies"]["error_type"] == "WorkerCrashed"
    assert all(recs[f"ok{i}"]["result"] == gauss(100 + i) for i in range(5))
    assert result.counts == {"failed": 1, "ok": 5}


def test_a_merge_that_raises_fails_the_item_at_the_splitting_stage(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.split_with_bad_merge, kind="thread", name="plan"),
            stage(fns.range_sum, kind="thread", name="crunch"),
        ]
    )
    pipe.run([("m", 10)], output=out, progress=False)
    rec = by_key(out)["m"]
    assert rec["status"] == "failed"
    assert rec["stage"] == "plan"
    assert rec["error_type"] == "ArithmeticError"


def test_a_part_cannot_split_again(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(fns.split_range, 2, kind="thread", name="plan"),
            stage(fns.split_again, kind="thread", name="crunch"),
        ]
    )
    pipe.run([("x", 10)], output=out, progress=False)
    rec = by_key(out)["x"]
    assert rec["status"] == "failed"
    assert rec["error_type"] == "SplitError"


def test_parts_are_drawn_lazily_under_backpressure(out: Path) -> None:
    drawn: list[int] = []

    def plan(n: int) -> Split:
        def gen() -> object:
            for i in range(n):
                drawn.append(i)
                yield (i, i + 1)

        return Split(gen(), fns.sum_parts)

    seen_ahead: list[int] = []
    done = [0]
    lock = threading.Lock()

    def crunch(bounds: tuple[int, int]) -> int:
        # parts drawn and not yet crunched: not the distance from this part's index, which a
        # crunch thread descheduled for a while (on a loaded machine) lets the other grow
        with lock:
            seen_ahead.append(len(drawn) - done[0])
        total = fns.range_sum(bounds)
        with lock:
            done[0] += 1
        return total

    pipe = Pipeline(
        [
            stage(plan, kind="thread", name="plan"),
            stage(crunch, kind="thread", workers=2, capacity=4, max_batch=1, name="crunch"),
        ]
    )
    result = pipe.run([("many", 20_000)], progress=False)
    assert result.ok == 1
    assert len(drawn) == 20_000
    # never more parts drawn and not crunched than the channel and lanes hold
    assert max(seen_ahead) <= 4 + 2 * 2 + 2


def test_parts_run_through_the_named_stage_before_they_merge(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(functools.partial(_split_through, "second"), kind="thread", name="plan"),
            stage(fns.range_sum, kind="thread", name="first"),
            stage(fns.double, kind="thread", name="second"),
            stage(fns.inc, kind="thread", name="after"),
        ]
    )
    pipe.run([("n", 100), ("z", 0)], output=out, progress=False)
    recs = by_key(out)
    # each part is summed then doubled; the merge adds them; "after" runs once on the total
    assert recs["n"]["result"] == 2 * gauss(100) + 1
    assert recs["z"]["result"] == 0 + 1  # no parts: merged at once, then "after"


def _split_through(through: str, n: int) -> Split:
    inner = fns.split_range(n, 5)
    return Split(inner.parts, fns.sum_parts, through=through)
