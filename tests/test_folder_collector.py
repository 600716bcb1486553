"""The end of a run's one pass over the records a run did not write: a collector with
``add_earlier`` (:class:`pipeline.FolderCollector`) sees every record of the output folder once,
this run's as they are committed and the others from the ledger's end pass (after ``revisit``
changed them); a plain collector sees this run's only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import FolderCollector, Pipeline, Record, Status, stage
from tests import fns


class Seen:
    name = "seen"

    def __init__(self) -> None:
        self.now: list[str] = []
        self.earlier: list[tuple[str, str]] = []

    def add(self, record: Record) -> None:
        self.now.append(record.key)

    def add_earlier(self, record: Record) -> None:
        self.earlier.append((record.key, str(record.status)))

    def result(self) -> Any:
        return {"now": len(self.now), "earlier": len(self.earlier)}


class Plain:
    name = "plain"

    def __init__(self) -> None:
        self.keys: list[str] = []

    def add(self, record: Record) -> None:
        self.keys.append(record.key)

    def result(self) -> Any:
        return len(self.keys)


def _run(out: Path, keys: range, *collectors: Any, revisit: Any = None) -> Any:
    pipe = Pipeline([stage(fns.double, kind="thread", workers=2)])
    inputs = [(f"k{i}", i) for i in keys]
    return pipe.run(inputs, output=out, progress=False, collectors=collectors, revisit=revisit)


def test_a_folder_collector_sees_every_record_of_the_folder_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(out, range(6))
    seen, plain = Seen(), Plain()
    assert isinstance(seen, FolderCollector)
    assert not isinstance(plain, FolderCollector)

    def gone(rec: Record) -> Record | None:  # the revisit: k0 and k1 changed, the rest kept
        if rec.key in ("k0", "k1"):
            return Record(key=rec.key, status=Status.SKIPPED, reason="gone")
        return None

    result = _run(out, range(4, 8), seen, plain, revisit=gone)
    assert sorted(seen.now) == sorted(plain.keys) == ["k4", "k5", "k6", "k7"]
    assert sorted(seen.earlier) == [
        ("k0", "skipped"),
        ("k1", "skipped"),
        ("k2", "ok"),
        ("k3", "ok"),
    ]
    assert result.collected == {"seen": {"now": 4, "earlier": 4}, "plain": 4, "revisited": 2}


def test_after_an_incomplete_run_the_others_are_seen_unchanged(tmp_path: Path) -> None:
    """No revisit after a run that did not see all its inputs (here: none given), yet the
    folder collector still gets the records the run did not write."""
    out = tmp_path / "out"
    _run(out, range(3))
    seen = Seen()
    result = _run(out, range(2, 4), seen)
    assert sorted(seen.earlier) == [("k0", "ok"), ("k1", "ok")]
    assert "revisited" not in result.collected
