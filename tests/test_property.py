"""Property test: random chains of stage kinds behave exactly like the sequential model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import Pipeline, stage
from tests import fns
from tests.conftest import by_key

KINDS = ["inline", "thread", "process", "async"]

op = st.one_of(
    st.tuples(st.just("affine"), st.integers(-3, 3), st.integers(-5, 5)),
    st.tuples(st.just("fail_if"), st.integers(2, 9), st.integers(0, 8)),
)
chain = st.lists(st.tuples(st.sampled_from(KINDS), op, st.integers(1, 3)), min_size=1, max_size=4)


def build(spec: list[tuple[str, tuple[str, int, int], int]]) -> Pipeline:
    stages = []
    for i, (kind, (name, a, b), workers) in enumerate(spec):
        fn: Any = getattr(fns, ("a" if kind == "async" else "") + name)
        stages.append(
            stage(fn, a, b, kind=kind, name=f"s{i}", workers=1 if kind == "inline" else workers)
        )
    return Pipeline(stages)


def model(spec: list[tuple[str, tuple[str, int, int], int]], x: int) -> tuple[bool, Any]:
    """The sequential reference: (True, value) or (False, name of the failing stage)."""
    for i, (_kind, (name, a, b), _w) in enumerate(spec):
        if name == "affine":
            x = a * x + b
        elif x % a == b:
            return False, f"s{i}"
    return True, x


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=chain, values=st.lists(st.integers(-1000, 1000), max_size=60))
def test_random_chains_match_the_sequential_model(
    spec: list[tuple[str, tuple[str, int, int], int]], values: list[int]
) -> None:
    inputs = [(f"k{i}", v) for i, v in enumerate(values)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        result = build(spec).run(inputs, output=out, progress=False)
        recs = by_key(out) if values else {}
    assert len(recs) == len(values)  # exactly one record per input
    for key, v in inputs:
        ok, expected = model(spec, v)
        rec = recs[key]
        if ok:
            assert rec["status"] == "ok", (spec, v, rec)
            assert rec["result"] == expected, (spec, v, rec)
        else:
            assert rec["status"] == "failed", (spec, v, rec)
            assert rec["stage"] == expected, (spec, v, rec)
    assert result.ok + result.failed == len(values)
