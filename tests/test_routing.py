"""Routing by type (stage(..., accepts=...)): each item runs through the stages that take it.

The stage functions below fail on a value of another type, so an item routed to the wrong stage
would show up as a failure; the process ones are module-level so workers can import them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import DefinitionError, Pipeline, Split, stage
from tests.conftest import by_key


@dataclass(frozen=True)
class Chunk:
    """A part of a "data file": the numbers lo..hi-1."""

    lo: int
    hi: int


def inc(x: int) -> int:
    if not isinstance(x, int):
        raise TypeError(f"inc got {type(x).__name__}")
    return x + 1


def shout(s: str) -> str:
    if not isinstance(s, str):
        raise TypeError(f"shout got {type(s).__name__}")
    return s.upper() + "!"


def to_text(x: int) -> str:
    if not isinstance(x, int):
        raise TypeError(f"to_text got {type(x).__name__}")
    return f"n{x}"


def plan(value: int | str, parts: int = 4) -> Split | int | str:
    """Ints of at least 100 are "data files": split into chunks that merge by summing."""
    if isinstance(value, int) and value >= 100:
        step = -(-value // parts)
        chunks = [Chunk(lo, min(value, lo + step)) for lo in range(0, value, step)]
        return Split(chunks, sum, through="crunch")
    return value


def crunch(chunk: Chunk) -> int:
    if not isinstance(chunk, Chunk):
        raise TypeError(f"crunch got {type(chunk).__name__}")
    return sum(range(chunk.lo, chunk.hi))


def stages_by_name(result: object) -> dict[str, object]:
    return {s.name: s for s in result.stages}  # type: ignore[attr-defined]


MIXED = [("a", 1), ("b", "x"), ("c", 2), ("d", "yz"), ("e", 3)]


def test_a_stage_counts_only_the_items_it_accepted(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(inc, kind="thread", workers=2, accepts=int),
            stage(shout, kind="thread", workers=2, accepts=str),
        ]
    )
    result = pipe.run(MIXED, output=out, progress=False)
    assert result.counts == {"ok": 5}
    assert {k: r["result"] for k, r in by_key(out).items()} == {
        "a": 2,
        "b": "X!",
        "c": 3,
        "d": "YZ!",
        "e": 4,
    }
    got = stages_by_name(result)
    assert (got["inc"].items, got["inc"].ok) == (3, 3)  # type: ignore[attr-defined]
    assert (got["shout"].items, got["shout"].ok) == (2, 2)  # type: ignore[attr-defined]
    assert "inc [int]: thread x2" in pipe.describe()


def test_a_value_no_stage_further_on_accepts_ends_ok_with_that_value(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(inc, kind="thread", accepts=int, name="first"),
            stage(inc, kind="thread", accepts=int, name="second"),
        ]
    )
    result = pipe.run([("i", 1), ("f", 2.5), ("t", "text")], output=out, progress=False)
    assert result.counts == {"ok": 3}
    recs = by_key(out)
    assert recs["i"]["result"] == 3
    assert recs["f"]["result"] == 2.5
    assert recs["t"]["result"] == "text"  # untouched
    got = stages_by_name(result)
    assert got["first"].items == got["second"].items == 1  # type: ignore[attr-defined]


def test_a_value_made_by_one_stage_goes_to_the_next_that_accepts_it(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(to_text, kind="thread", accepts=int),
            stage(inc, kind="inline", accepts=int),  # no int comes out of to_text
            stage(shout, kind="thread", accepts=str),
        ]
    )
    result = pipe.run([("a", 1), ("b", "x")], output=out, progress=False)
    assert {k: r["result"] for k, r in by_key(out).items()} == {"a": "N1!", "b": "X!"}
    got = stages_by_name(result)
    assert got["inc"].items == 0  # type: ignore[attr-defined]
    assert got["shout"].items == 2  # type: ignore[attr-defined]


def test_a_fused_process_group_skips_the_steps_that_do_not_accept(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(inc, kind="process", workers=2, accepts=int),
            stage(to_text, kind="process", workers=2, accepts=int, name="text"),
            stage(shout, kind="process", workers=2, accepts=str),
        ]
    )
    assert "(fused: one worker call)" in pipe.describe()
    result = pipe.run(MIXED, output=out, progress=False)
    assert result.counts == {"ok": 5}
    assert {k: r["result"] for k, r in by_key(out).items()} == {
        "a": "N2!",
        "b": "X!",
        "c": "N3!",
        "d": "YZ!",
        "e": "N4!",
    }
    got = stages_by_name(result)
    assert got["inc"].items == got["text"].items == 3  # type: ignore[attr-defined]
    assert got["shout"].items == 5  # type: ignore[attr-defined]  # strings made on the way too
    assert got["inc"].fused_with == ["inc", "text", "shout"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_split_parts_are_routed_past_stages_that_do_not_take_them(kind: str, out: Path) -> None:
    # like the process command: images (strings here) are resized, data files (big ints) are
    # planned into chunks that skip resize, are crunched, and merge after crunch
    pipe = Pipeline(
        [
            stage(plan, kind="thread", name="read"),
            stage(shout, kind=kind, workers=2, accepts=str, name="resize"),
            stage(crunch, kind=kind, workers=2, accepts=Chunk, name="crunch"),
            stage(inc, kind="thread", accepts=int, name="write"),
        ]
    )
    items = [("img1", "a"), ("data", 1000), ("img2", "b"), ("small", 7)]
    result = pipe.run(items, output=out, progress=False)
    assert result.counts == {"ok": 4}, by_key(out)
    assert {k: r["result"] for k, r in by_key(out).items()} == {
        "img1": "A!",
        "img2": "B!",
        "data": sum(range(1000)) + 1,  # merged after crunch, then on to write
        "small": 8,  # not split: straight from read to write
    }
    got = stages_by_name(result)
    assert got["resize"].items == 2  # type: ignore[attr-defined]  # the images only
    assert got["crunch"].items == 4  # type: ignore[attr-defined]  # the four chunks
    assert got["write"].items == 2  # type: ignore[attr-defined]


def test_parts_with_no_through_join_after_the_first_stage_that_takes_them(out: Path) -> None:
    pipe = Pipeline(
        [
            stage(functools.partial(_split_plain, 3), kind="thread", name="plan"),
            stage(shout, kind="thread", accepts=str),
            stage(crunch, kind="thread", accepts=Chunk),
            stage(inc, kind="thread", accepts=int),
        ]
    )
    pipe.run([("n", 30)], output=out, progress=False)
    assert by_key(out)["n"]["result"] == sum(range(30)) + 1


def _split_plain(parts: int, n: int) -> Split:
    step = -(-n // parts)
    return Split([Chunk(lo, min(n, lo + step)) for lo in range(0, n, step)], sum)


def test_accepts_is_checked_when_the_stage_is_defined() -> None:
    assert stage(inc, accepts=int).accepts == (int,)
    assert stage(inc, accepts=(int, float)).accepts == (int, float)
    assert stage(inc).accepts is None
    for bad in ((), "int", (int, "str")):
        with pytest.raises(DefinitionError, match="accepts"):
            stage(inc, accepts=bad)  # type: ignore[arg-type]
