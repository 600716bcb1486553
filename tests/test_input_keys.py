"""An output folder keeps its inputs' keys from run to run (``app.input_keys``,
``stages.sources.plan_inputs``): a later run with other inputs beside them finds their files
done, never keys them anew, and writes no output twice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.config import ProcessConfig
from app.input_keys import INPUTS_FILE
from app.process import run_process
from pipeline import ConfigError
from stages.sources import InputKey, plan_inputs
from tests.conftest import by_key
from tests.s3_server import s3
from tests.trees import cli, image_bytes, looks, write

pytestmark = pytest.mark.timeout(120)


def run(out: Path, *inputs: Path | str, **kw: object) -> dict[str, dict[str, Any]]:
    cfg = ProcessConfig.from_mapping(
        {"inputs": [str(p) for p in inputs], "output": str(out), "quiet": True, **kw}
    )
    run_process(cfg)
    return by_key(out)


def images_below(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))


@pytest.fixture
def ab(tmp_path: Path) -> tuple[Path, Path]:
    """Two input folders whose files have the same names and different colours."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "x.jpg", image_bytes("red"))
    write(a, "y.jpg", image_bytes("green"))
    write(b, "x.jpg", image_bytes("blue"))
    return a, b


def test_an_input_added_beside_a_done_one_leaves_it_done(
    tmp_path: Path, ab: tuple[Path, ...]
) -> None:
    a, b = ab
    out = tmp_path / "out"
    first = run(out, a)
    assert set(first) == {"x.jpg", "y.jpg"}
    again = run(out, a, b)
    tag = "b"  # a has no entry named b: b's name is free
    assert set(again) == {"x.jpg", "y.jpg", f"{tag}/x.jpg"}
    assert again["x.jpg"]["status"] == again["y.jpg"]["status"] == "reused"
    assert again[f"{tag}/x.jpg"]["status"] == "ok"
    # a's outputs once, where the first run put them; b's apart, each from its own file
    assert images_below(out) == sorted(["512/x.jpg", "512/y.jpg", f"512/{tag}/x.jpg"])
    assert looks(os.fsencode(out / "512" / "x.jpg"), "red")
    assert looks(os.fsencode(out / "512" / tag / "x.jpg"), "blue")
    # and the next runs, with either input or both, key them the same way and redo nothing
    for inputs in ((a, b), (b, a), (b,), (a,)):
        recs = run(out, *inputs)
        assert set(recs) == {"x.jpg", "y.jpg", f"{tag}/x.jpg"}
        for key, rec in recs.items():
            if (b if key.startswith(tag) else a) in inputs:
                assert rec["status"] == "reused", (inputs, key)
    assert images_below(out) == sorted(["512/x.jpg", "512/y.jpg", f"512/{tag}/x.jpg"])


def test_a_folder_of_several_inputs_run_with_one_keeps_its_prefix(
    tmp_path: Path, ab: tuple[Path, ...]
) -> None:
    a, b = ab
    out = tmp_path / "out"
    assert set(run(out, a, b)) == {"a/x.jpg", "a/y.jpg", "b/x.jpg"}
    alone = run(out, a)
    assert {k: r["status"] for k, r in alone.items()} == {
        "a/x.jpg": "reused",
        "a/y.jpg": "reused",
        "b/x.jpg": "ok",  # not in this run: its record stays as it was
    }
    assert images_below(out) == ["512/a/x.jpg", "512/a/y.jpg", "512/b/x.jpg"]


def test_a_new_input_never_takes_keys_an_earlier_input_holds(tmp_path: Path) -> None:
    """``a`` alone holds the unprefixed keys, among them ``b/x.jpg`` (its subfolder ``b``): an
    input folder named ``b`` added later must not be keyed ``b/`` too: it takes its tag."""
    a, b = tmp_path / "a", tmp_path / "in" / "b"
    write(a / "b", "x.jpg", image_bytes("red"))
    write(b, "x.jpg", image_bytes("blue"))
    out = tmp_path / "out"
    assert set(run(out, a)) == {"b/x.jpg"}
    recs = run(out, a, b)
    assert len(recs) == 2
    assert recs["b/x.jpg"]["status"] == "reused"
    new = next(k for k in recs if k != "b/x.jpg")
    assert new.startswith("b~")
    assert new.endswith("/x.jpg")
    assert looks(os.fsencode(out / "512" / "b" / "x.jpg"), "red")
    assert looks(os.fsencode(out / "512" / new), "blue")


def test_an_input_whose_prefix_became_an_earlier_folders_entry_is_keyed_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``a`` alone (unprefixed keys), then ``b`` (beside it: ``b/``), then ``a`` gains a
    folder ``b``: its files' keys ``b/...`` would be ``b``'s too. ``b`` is keyed anew with its
    tag (a warning says so) and its files processed again; each input keeps its own picture.
    Before, one of the two ``b/y.jpg`` was ignored as a duplicate and ``b``'s thumbnail showed
    ``a``'s picture."""
    a, b = tmp_path / "a", tmp_path / "in" / "b"
    write(a, "x.jpg", image_bytes("red"))
    write(b, "y.jpg", image_bytes("blue"))
    out = tmp_path / "out"
    assert set(run(out, a)) == {"x.jpg"}
    assert set(run(out, b)) == {"x.jpg", "b/y.jpg"}
    write(a / "b", "y.jpg", image_bytes("green"))
    with caplog.at_level("WARNING", logger="app"):
        recs = run(out, a, b)
    assert "instead of its prefix 'b/'" in caplog.text
    assert len(recs) == 3
    moved = next(k for k in recs if k.startswith("b~"))
    assert moved.endswith("/y.jpg")
    assert recs["b/y.jpg"]["source"] == str(a / "b" / "y.jpg")
    assert looks(os.fsencode(out / "512" / "b" / "y.jpg"), "green")
    assert looks(os.fsencode(out / "512" / moved), "blue")
    assert {r["status"] for r in run(out, a, b).values()} == {"reused"}  # and it stays so


def test_a_folder_inside_a_known_input_is_keyed_as_it_was_there(tmp_path: Path) -> None:
    a = tmp_path / "a"
    write(a / "2024" / "day", "x.jpg", image_bytes("red"))
    write(a, "top.jpg", image_bytes("green"))
    out = tmp_path / "out"
    assert set(run(out, a)) == {"2024/day/x.jpg", "top.jpg"}
    write(a / "2024", "new.jpg", image_bytes("blue"))
    recs = run(out, a / "2024")
    assert {k: r["status"] for k, r in recs.items()} == {
        "2024/day/x.jpg": "reused",
        "2024/new.jpg": "ok",
        "top.jpg": "ok",  # not in this run: as it was
    }
    assert images_below(out) == ["512/2024/day/x.jpg", "512/2024/new.jpg", "512/top.jpg"]
    assert looks(os.fsencode(out / "512" / "2024" / "new.jpg"), "blue")


def test_a_folder_holding_a_known_input_keeps_that_inputs_keys(tmp_path: Path) -> None:
    """A trial run on one subfolder, then the whole folder: the subfolder's files keep the keys
    (and thumbnails) of the trial run, reused; the rest is keyed beside them."""
    photos = tmp_path / "photos"
    write(photos / "2024" / "day", "x.jpg", image_bytes("red"))
    write(photos / "2023", "y.jpg", image_bytes("green"))
    out = tmp_path / "out"
    assert set(run(out, photos / "2024")) == {"day/x.jpg"}
    for _ in range(2):  # and the next run of the whole, the same
        recs = run(out, photos)
        assert set(recs) == {"day/x.jpg", "photos/2023/y.jpg"}
        assert recs["day/x.jpg"]["status"] == "reused"
    assert recs["photos/2023/y.jpg"]["status"] == "reused"
    assert images_below(out) == ["512/day/x.jpg", "512/photos/2023/y.jpg"]
    assert looks(os.fsencode(out / "512" / "photos" / "2023" / "y.jpg"), "green")


def test_an_input_inside_another_of_the_same_run_is_walked_once(tmp_path: Path) -> None:
    a = tmp_path / "a"
    write(a / "sub", "x.jpg", image_bytes("red"))
    write(a, "y.jpg", image_bytes("green"))
    out = tmp_path / "out"
    recs = run(out, a / "sub", a, a / "sub" / "x.jpg")  # before: x.jpg under three keys
    assert set(recs) == {"sub/x.jpg", "y.jpg"}
    assert images_below(out) == ["512/sub/x.jpg", "512/y.jpg"]


def test_keys_do_not_depend_on_the_order_of_the_inputs(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for folder in (a, b, c):
        folder.mkdir()
    earlier = list(plan_inputs([a]).known)
    one = plan_inputs([a, b, c], earlier)
    other = plan_inputs([c, b, a], earlier)
    assert {r.real: r.prefix for r in one.roots} == {r.real: r.prefix for r in other.roots}
    assert set(one.known) == set(other.known)


def test_an_input_no_longer_there_is_forgotten(tmp_path: Path, ab: tuple[Path, ...]) -> None:
    """A folder moved elsewhere is keyed as a new one alone would be (no prefix), its files
    redone under the same keys, not under a tagged prefix."""
    a, _ = ab
    out = tmp_path / "out"
    run(out, a)
    moved = a.rename(tmp_path / "moved")
    recs = run(out, moved)
    assert set(recs) == {"x.jpg", "y.jpg"}
    assert {r["status"] for r in recs.values()} == {"ok"}  # another file now: redone
    known = json.loads((out / INPUTS_FILE).read_text())["inputs"]
    assert known == [{"real": str(moved), "folder": True, "key": ""}]


def test_files_given_by_themselves_keep_their_keys(tmp_path: Path, ab: tuple[Path, ...]) -> None:
    a, b = ab
    out = tmp_path / "out"
    assert set(run(out, a / "x.jpg")) == {"x.jpg"}
    recs = run(out, a / "x.jpg", b)
    assert recs["x.jpg"]["status"] == "reused"
    assert set(recs) == {"x.jpg", "b/x.jpg"}  # a file holds one key, not the whole namespace


def test_a_name_that_is_not_utf8_is_remembered_exactly(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    write(raw, b"x.jpg", image_bytes("red"))
    other = tmp_path / "other"
    write(other, "z.jpg", image_bytes("blue"))
    out = tmp_path / "out"
    first = cli(raw, "-o", out, "--quiet")
    assert first.returncode == 0, first.stderr
    again = cli(raw, other, "-o", out)
    assert again.returncode == 0, again.stderr
    recs = by_key(out)
    assert recs["x.jpg"]["status"] == "reused"
    assert "keeps the key prefix '' (no prefix)" in again.stderr
    assert "caf\\xe9" in again.stderr  # the undecodable byte shown, not a crash


def test_a_damaged_inputs_file_stops_the_run_before_any_work(
    tmp_path: Path, ab: tuple[Path, ...]
) -> None:
    a, b = ab
    out = tmp_path / "out"
    run(out, a)
    (out / INPUTS_FILE).write_text('{"version": 1, "inputs": [{"real": 3}]')
    before = (out / "manifest.jsonl").read_bytes()
    proc = cli(a, b, "-o", out)
    assert proc.returncode == 3
    assert "inputs.json cannot be read" in proc.stderr
    assert "delete it" in proc.stderr
    assert (out / "manifest.jsonl").read_bytes() == before
    assert images_below(out) == ["512/x.jpg", "512/y.jpg"]
    (out / INPUTS_FILE).write_text('{"version": 2, "inputs": []}')  # a newer program's
    proc = cli(a, b, "-o", out)
    assert proc.returncode == 3
    assert "version 2, this program reads version 1" in proc.stderr
    (out / INPUTS_FILE).unlink()  # what the message says to do: keys from the command line
    assert set(run(out, a, b)) >= {"a/x.jpg", "b/x.jpg"}


def test_the_plan_forgets_nothing_that_is_still_there(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    earlier = [InputKey(str(a), True, ""), InputKey(str(tmp_path / "gone"), True, "gone/")]
    plan = plan_inputs([b], earlier)
    assert set(plan.known) == {InputKey(str(a), True, ""), InputKey(str(b), True, "b/")}
    assert plan.roots[0].prefix == "b/"  # beside a, prefixed; a has no entry named b
    assert [(r.path, k, alone) for r, k, alone in plan.changed] == [
        (str(b), plan.roots[0].prefix, "")
    ]


@pytest.mark.timeout(240)
def test_a_storage_output_keeps_the_keys_on_a_fresh_machine(
    tmp_path: Path, ab: tuple[Path, ...]
) -> None:
    """The inputs file goes with the mirrored journal: another machine's run (a new working
    folder) keys the earlier input as the first run did."""
    a, b = ab
    with s3(tmp_path) as srv:
        srv.bucket("pix-out")
        url = "s3://pix-out/thumbs"
        opts = ("--storage-options", srv.options_json, "--size", "64")

        def process(*inputs: Path, machine: str) -> None:
            proc = cli(
                *inputs, "-o", url, *opts, env=srv.env(PIXPIPE_WORK_DIR=str(tmp_path / machine))
            )
            assert proc.returncode == 0, proc.stderr

        process(a, machine="one")
        assert ".pipeline/inputs.json" in srv.objects(url)
        process(a, b, machine="two")
        recs = {r["key"]: r for r in srv.records(url)}
        assert recs["x.jpg"]["status"] == recs["y.jpg"]["status"] == "reused"
        assert recs["b/x.jpg"]["status"] == "ok"
        assert sorted(k for k in srv.objects(url) if k.startswith("64/")) == [
            "64/b/x.jpg",
            "64/x.jpg",
            "64/y.jpg",
        ]


def test_inputs_that_stop_answering_before_the_walk_are_a_clear_error(
    tmp_path: Path, ab: tuple[Path, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys are planned before the run (an input in storage is asked whether it is a
    folder): an input that stopped answering since the options were checked stops the command
    with ConfigError (exit 2), before any record."""
    import app.process

    def unreachable(*args: object) -> object:
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(app.process, "plan_inputs", unreachable)
    with pytest.raises(ConfigError, match="cannot look at the inputs: connection reset"):
        run(tmp_path / "out", ab[0])
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
