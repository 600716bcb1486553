"""Outputs on resume: one file per record, none that no record lists, never another's picture.

A redo may name an input's outputs otherwise (another format or size, a sibling or a twin that
came or went); a changed input may now fail. The earlier files must not stay behind looking
current, and no file may be listed by two records (the second one's picture under the first
one's name): :mod:`app.stale`, and resume's ``outdated`` test in :mod:`app.process`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app.stale import Listed, StaleOutputs
from stages.naming import name_tag
from stages.thumbs import remove_output
from tests.trees import cli, files_below, image_bytes, looks, write
from tests.trees import output_paths as outputs
from tests.trees import records_by_bytes as records

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(120)


def listed(out: Path) -> dict[bytes, bytes]:
    """Every output path the manifest lists -> the key listing it (no path listed twice)."""
    found: dict[bytes, bytes] = {}
    for key, rec in records(out).items():
        for path in outputs(rec):
            assert path not in found, f"{path!r} listed by {found[path]!r} and {key!r}"
            found[path] = key
    return found


def images_below(out: Path) -> set[bytes]:
    """The image files in the output folder (its own files left out)."""
    return {p for p in files_below(os.fsencode(out)) if b"/" in p and not p.startswith(b".")}


def stale_counts(out: Path) -> dict[str, Any]:
    counts: dict[str, Any] = json.loads((out / "summary.json").read_text())["collected"][
        "stale_outputs"
    ]
    return counts


def shows(out: Path, path: bytes, colour: str) -> bool:
    return looks(os.path.join(os.fsencode(out), path), colour)


def test_a_sibling_named_like_a_done_inputs_output_never_takes_its_thumbnail(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "x.png", image_bytes("red", "PNG"))
    jpeg = ("--output", out, "--format", "jpeg", "--quiet")
    assert cli(src, *jpeg).returncode == 0
    assert outputs(records(out)[b"x.png"]) == [b"512/x.png.jpg"]
    # a JPEG whose own name is x.png's output name: it writes there, so x.png moves away
    sibling = write(src, "x.png.jpg", image_bytes("blue"))
    assert cli(src, *jpeg).returncode == 0
    recs = records(out)
    assert recs[b"x.png"]["redo"] == "output names changed (was 512/x.png.jpg)"
    tagged = f"512/x.png~{name_tag('x.png')}.jpg".encode()
    assert outputs(recs[b"x.png"]) == [tagged]
    assert outputs(recs[b"x.png.jpg"]) == [b"512/x.png.jpg"]
    assert shows(out, tagged, "red")
    assert shows(out, b"512/x.png.jpg", "blue")
    assert images_below(out) == set(listed(out))
    # x.png's earlier path is the sibling's now: listed, so never removed
    assert stale_counts(out)["removed"] == 0
    assert stale_counts(out)["listed"] + stale_counts(out)["newer"] == 1
    # the sibling gone: x.png takes its plain name back; the gone record stops listing the
    # file that now holds x.png's picture, and the tagged file goes
    os.unlink(sibling)
    assert cli(src, *jpeg).returncode == 0
    recs = records(out)
    assert recs[b"x.png"]["redo"].startswith("output names changed")
    assert outputs(recs[b"x.png"]) == [b"512/x.png.jpg"]
    assert shows(out, b"512/x.png.jpg", "red")
    gone = recs[b"x.png.jpg"]
    assert gone["status"] == "skipped"
    assert gone["reason"].startswith("input gone")
    assert outputs(gone) == []
    assert images_below(out) == set(listed(out)) == {b"512/x.png.jpg"}
    assert stale_counts(out)["removed"] == 1
    # and then nothing moves any more
    assert cli(src, *jpeg).returncode == 0
    assert records(out)[b"x.png"]["status"] == "reused"


def test_a_gone_inputs_output_never_stays_beside_a_current_one_that_differs_only_in_case(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "x", image_bytes("red"))  # no extension: x.jpg, unless a sibling is so named
    gone = write(src, "x.JPG", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    assert outputs(records(out)[b"x.JPG"]) == [b"512/x.JPG"]
    assert outputs(records(out)[b"x"]) == [f"512/x~{name_tag('x')}.jpg".encode()]
    # x.JPG gone: x takes its plain name, x.jpg, which on macOS or Windows is x.JPG's file
    os.unlink(gone)
    assert cli(src, "--output", out, "--quiet").returncode == 0
    recs = records(out)
    assert outputs(recs[b"x"]) == [b"512/x.jpg"]
    assert shows(out, b"512/x.jpg", "red")
    assert recs[b"x.JPG"]["reason"].startswith("input gone")
    assert outputs(recs[b"x.JPG"]) == []  # its output's name is x's now
    assert images_below(out) == set(listed(out)) == {b"512/x.jpg"}
    assert stale_counts(out)["removed"] == 2  # x's tagged output, x.JPG's


def test_a_twin_that_appears_renames_the_done_inputs_outputs(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.jpg", image_bytes("red"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    assert outputs(records(out)[b"a.jpg"]) == [b"512/a.jpg"]
    write(src, "A.JPG", image_bytes("blue"))
    done = cli(src, "--output", out)
    assert done.returncode == 0, done.stderr
    recs = records(out)
    assert recs[b"a.jpg"]["redo"] == "output names changed (was 512/a.jpg)"
    paths = listed(out)
    assert len(paths) == 2
    assert {p.lower() for p in paths} == {p.lower() for p in images_below(out)}
    assert len({p.lower() for p in paths}) == 2  # no two differ only in case
    (a,), (b,) = outputs(recs[b"a.jpg"]), outputs(recs[b"A.JPG"])
    assert shows(out, a, "red")
    assert shows(out, b, "blue")
    assert not (out / "512" / "a.jpg").exists()
    assert "removed: 1 earlier output(s) of redone inputs" in done.stderr


@pytest.mark.parametrize(
    ("then", "expect"),
    [
        (("--format", "png"), {b"512/a.jpg.png", b"512/b.jpg.png"}),
        (("--size", "64"), {b"64/a.jpg", b"64/b.jpg"}),
    ],
    ids=["format", "size"],
)
def test_a_redo_with_other_options_removes_the_outputs_it_replaced(
    tmp_path: Path, then: tuple[str, ...], expect: set[bytes]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.jpg", image_bytes("red"))
    write(src / "sub", "b.jpg", image_bytes("blue"))
    expect = {p.replace(b"/b.", b"/sub/b.") for p in expect}
    assert cli(src, "--output", out, "--quiet").returncode == 0
    before = images_below(out)
    assert before == {b"512/a.jpg", b"512/sub/b.jpg"}
    done = cli(src, "--output", out, *then)
    assert done.returncode == 0, done.stderr
    assert "removed: 2 earlier output(s)" in done.stderr
    assert images_below(out) == set(listed(out)) == expect
    assert not (out / "512").exists() or then[0] == "--format"  # emptied folders go too
    counts = stale_counts(out)
    assert sorted(counts.pop("first")) == sorted(p.decode() for p in before)
    assert counts == {
        "removed": 2,
        "listed": 0,
        "newer": 0,
        "missing": 0,
        "failed": 0,
        "errors": [],
    }
    assert all(r["redo"] == "options changed" for r in records(out).values())


def test_a_changed_input_that_now_fails_loses_its_old_thumbnail(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    path = write(src, "a.jpg", image_bytes("red"))
    write(src, "b.jpg", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    whole = image_bytes("green", size=(400, 300))
    with open(path, "wb") as fh:  # edited, then cut short by a failed copy
        fh.write(whole[: len(whole) // 2])
    done = cli(src, "--output", out)
    assert done.returncode == 1
    rec = records(out)[b"a.jpg"]
    assert rec["status"] == "failed"
    assert not (out / "512" / "a.jpg").exists()  # no red thumbnail for a green, broken file
    assert images_below(out) == {b"512/b.jpg"}
    assert stale_counts(out)["removed"] == 1


def test_a_redo_that_fails_on_the_same_input_keeps_its_earlier_outputs(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.jpg", image_bytes("red", size=(400, 300)))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    # redone, the same file over a new size limit: not processed, and still a true thumbnail
    done = cli(src, "--output", out, "--force", "--max-file-size", "100", "--quiet")
    rec = records(out)[b"a.jpg"]
    assert rec["status"] in ("skipped", "failed"), done.stderr
    assert rec["redo"] == "force"
    assert shows(out, b"512/a.jpg", "red")
    assert stale_counts(out)["removed"] == 0
    # and its record still lists them (the earlier result kept): a redo that succeeds later
    # removes them. Before, no record listed them any more, and they stayed for good.
    assert images_below(out) == set(listed(out)) == {b"512/a.jpg"}
    done = cli(src, "--output", out, "--size", "256", "--quiet")
    assert done.returncode == 0, done.stderr
    assert images_below(out) == set(listed(out)) == {b"256/a.jpg"}
    assert stale_counts(out)["removed"] == 1


def _slow_images(src: Path, n: int) -> Path:
    """``n`` names of one 6 MP PNG, slow to decode (a worker is inside one for a while)."""
    import numpy as np
    from PIL import Image

    src.mkdir()
    x = np.linspace(0, 255, 3000, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, 2000, dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(src / "p000.png", compress_level=1)
    for i in range(1, n):
        os.link(src / "p000.png", src / f"p{i:03d}.png")
    return src


def test_a_redo_killed_outright_leaves_its_replaced_outputs_to_the_next_run(
    tmp_path: Path,
) -> None:
    """A redo with another size SIGKILLed half-way: its records of the keys it redid are in
    the ledger, and no longer say what they replaced; the run that finishes the redo removes
    those outputs all the same (the paths to remove were written, as they came, beside the
    ledger). Before, the old size's thumbnails of those keys stayed for good."""
    src, out = _slow_images(tmp_path / "in", 40), tmp_path / "out"
    assert cli(src, "--output", out, "--size", "64", "--quiet").returncode == 0
    argv = [sys.executable, "-m", "pipeline", "process", str(src), "--output", str(out)]
    with subprocess.Popen([*argv, "--size", "32", "--quiet"], cwd=ROOT) as redo:
        deadline = time.monotonic() + 60
        while len(list((out / "32").glob("*.png"))) < 6:  # some redone, their records in
            assert redo.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # the ledger commits every 0.1 s
        redo.kill()
    with contextlib.closing(sqlite3.connect(out / ".pipeline" / "ledger.sqlite")) as journal:
        # (the manifest is written at a run's end: the journal says what the killed run did)
        rows = [json.loads(text) for (text,) in journal.execute("SELECT json FROM records")]
    redone = [r for r in rows if r["result"]["outputs"][0]["size"] == "32"]
    assert 0 < len(redone) < 40
    done = cli(src, "--output", out, "--size", "32", "--quiet")
    assert done.returncode == 0, done.stderr
    assert images_below(out) == set(listed(out)) == {f"32/p{i:03d}.png".encode() for i in range(40)}
    assert not (out / "64").exists()
    assert not (out / ".pipeline" / "stale-outputs").exists()  # all done


def test_a_redo_cut_short_by_ctrl_c_leaves_no_output_unlisted(tmp_path: Path) -> None:
    """A redo with another size stopped by Ctrl-C twice: its cancelled keys keep their earlier
    result, so their earlier thumbnails stay listed, and the run that finishes the redo removes
    them. Before, the cancelled record replaced the earlier one and listed nothing: those
    thumbnails stayed in the folder for good, listed by no record."""
    src, out = _slow_images(tmp_path / "in", 40), tmp_path / "out"
    assert cli(src, "--output", out, "--size", "64", "--quiet").returncode == 0
    argv = [sys.executable, "-m", "pipeline", "process", str(src), "--output", str(out)]
    redo = subprocess.Popen([*argv, "--size", "32", "--quiet"], cwd=ROOT, stderr=subprocess.PIPE)
    with redo:
        deadline = time.monotonic() + 60
        while not list((out / "32").glob("*.png")):  # the redo is under way
            assert redo.poll() is None, redo.stderr.read() if redo.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        redo.send_signal(signal.SIGINT)
        time.sleep(0.05)
        redo.send_signal(signal.SIGINT)  # again: at once, the items in flight cancelled
        _, errors = redo.communicate(timeout=60)
    statuses = {r["status"] for r in records(out).values()}
    assert "cancelled" in statuses, errors
    assert images_below(out) == set(listed(out))  # the 64 ones of the cancelled keys too
    done = cli(src, "--output", out, "--size", "32", "--quiet")
    assert done.returncode == 0, done.stderr
    assert images_below(out) == set(listed(out)) == {f"32/p{i:03d}.png".encode() for i in range(40)}
    assert not (out / "64").exists()


def test_a_changed_inputs_redo_cut_short_by_ctrl_c_leaves_no_output_unlisted(
    tmp_path: Path,
) -> None:
    """The inputs changed (touched), their redo stopped by Ctrl-C twice: a changed input's
    cancelled record keeps no earlier result (its thumbnail shows what the input no longer
    is), so that thumbnail is removed too. Before, it stayed listed by no record, for good: a
    later run in another format left it beside the new ones."""
    src, out = _slow_images(tmp_path / "in", 40), tmp_path / "out"
    assert cli(src, "--output", out, "--size", "64", "--quiet").returncode == 0
    later = time.time_ns() + 10**9
    os.utime(src / "p000.png", ns=(later, later))  # (one inode: every name changes)
    argv = [sys.executable, "-m", "pipeline", "process", str(src), "--output", str(out)]
    redo = subprocess.Popen([*argv, "--size", "64", "--quiet"], cwd=ROOT, stderr=subprocess.PIPE)
    with redo:
        deadline = time.monotonic() + 60
        while not any(str(r.get("redo")).startswith("input changed") for r in _journal(out)):
            assert redo.poll() is None, redo.stderr.read() if redo.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        redo.send_signal(signal.SIGINT)
        time.sleep(0.05)
        redo.send_signal(signal.SIGINT)
        _, errors = redo.communicate(timeout=60)
    assert "cancelled" in {r["status"] for r in records(out).values()}, errors
    done = cli(src, "--output", out, "--size", "32", "--quiet")
    assert done.returncode == 0, done.stderr
    assert images_below(out) == set(listed(out)) == {f"32/p{i:03d}.png".encode() for i in range(40)}
    assert not (out / "64").exists()


def _journal(out: Path) -> list[dict[str, Any]]:
    """The records the ledger's journal holds so far (none before it exists)."""
    path = out / ".pipeline" / "ledger.sqlite"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return [json.loads(t) for (t,) in db.execute("SELECT json FROM records")]
    except sqlite3.Error:
        return []


def test_a_file_given_alone_never_takes_the_output_of_an_earlier_folders_file(
    tmp_path: Path,
) -> None:
    """``process a`` (its files keyed without a prefix: ``x.jpg`` -> ``512/x.jpg``), then
    ``process f/x`` (a JPEG without an extension: keyed ``x``, written ``x.jpg`` by rule 2):
    the file takes a tag, as beside ``a``'s files in one run. Before, it was written over
    ``a``'s thumbnail: two records listed ``512/x.jpg``, and a later run reused ``x.jpg``'s
    record with the other picture under its name."""
    a, f, out = tmp_path / "a", tmp_path / "f", tmp_path / "out"
    write(a, "x.jpg", image_bytes("red"))
    write(f, "x", image_bytes("blue"))
    assert cli(a, "--output", out, "--quiet").returncode == 0
    assert cli(f / "x", "--output", out, "--quiet").returncode == 0
    paths = listed(out)  # no path listed twice
    assert paths[b"512/x.jpg"] == b"x.jpg"
    assert shows(out, b"512/x.jpg", "red")
    (blue,) = [p for p, key in paths.items() if key == b"x"]
    assert shows(out, blue, "blue")
    again = cli(a, f / "x", "--output", out)
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in records(out).values()} == {"reused"}
    assert shows(out, b"512/x.jpg", "red")


def test_a_run_into_a_fresh_folder_keeps_no_filter() -> None:
    from app.endofrun import RecordFeed

    fresh = Path("/nonexistent-folder-for-this-test")
    stale = StaleOutputs(str(fresh), fresh, RecordFeed(fresh))
    assert stale.listed is None
    assert stale.result()["removed"] == 0


def test_the_filter_never_forgets_a_path_and_rarely_invents_one() -> None:
    seen = Listed()
    paths = [f"512/folder{i % 97}/image_{i:06d}.jpg" for i in range(50_000)]
    for p in paths:
        seen.add(p)
    assert all(seen.maybe(p) for p in paths)
    others = [f"256/other{i % 89}/picture_{i:06d}.png" for i in range(50_000)]
    false = sum(seen.maybe(p) for p in others)
    assert false < 50  # ~0.01 % expected at 50,000 paths


def test_an_output_written_since_the_run_started_is_never_removed(tmp_path: Path) -> None:
    (tmp_path / "512").mkdir()
    old, new = tmp_path / "512" / "old.jpg", tmp_path / "512" / "new.jpg"
    old.write_bytes(b"x")
    started = time.time_ns()
    os.utime(old, ns=(started - 10**9, started - 10**9))
    new.write_bytes(b"y")
    os.utime(new, ns=(started + 1, started + 1))
    with pytest.raises(FileExistsError):
        remove_output(str(tmp_path), "512/new.jpg", started)
    with pytest.raises(FileExistsError):
        remove_output(str(tmp_path), "512", started)  # not a file
    assert remove_output(str(tmp_path), "512/old.jpg", started)
    assert not remove_output(str(tmp_path), "512/old.jpg", started)
    assert new.exists()
    assert not old.exists()


def test_many_stale_objects_in_storage_are_removed_chunk_by_chunk(tmp_path: Path) -> None:
    import fsspec

    from app.endofrun import RecordFeed
    from app.stale import STORAGE_CHUNK
    from pipeline import Record, Status

    (tmp_path / "manifest.jsonl").write_text("")  # a folder with a ledger: resume is on
    root = "memory://stale-test/out"
    fs = fsspec.filesystem("memory")
    n = 2 * STORAGE_CHUNK + 7
    old = [f"512/img{i:04d}.jpg" for i in range(n)]
    for rel in old:
        fs.pipe_file(f"{root}/{rel}", b"x")
    fs.pipe_file(f"{root}/512/kept.jpg", b"y")
    feed = RecordFeed(tmp_path)
    stale = StaleOutputs(root, tmp_path, feed)
    feed.add(Record("kept", Status.REUSED, value={"outputs": [{"path": "512/kept.jpg"}]}))
    for i, rel in enumerate(old):
        earlier = Record(
            f"k{i}", Status.OK, value={"outputs": [{"path": rel}, {"path": "512/kept.jpg"}]}
        )
        record = Record(f"k{i}", Status.OK, value={"outputs": [{"path": rel + ".png"}]})
        record.earlier = earlier
        feed.add(record)
        stale.add(record)
    try:
        counts = stale.result()
        assert counts["removed"] == n
        assert counts["listed"] == n  # kept.jpg, listed by another record, each time
        assert fs.find(f"{root}/512") == ["/stale-test/out/512/kept.jpg"]
    finally:
        fs.rm(root, recursive=True)
