"""Trust in everyday use, case by case, on a real file system: any file name, no output
collisions, no stale results on resume, the output folder never read back, every directory
entry recorded, one run per output folder."""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.naming import fold, name_tag
from tests.trees import (
    ROOT,
    cli,
    image_bytes,
    looks,
    run_id,
    source_bytes,
    write,
)
from tests.trees import output_paths as outputs
from tests.trees import records_by_bytes as records

pytestmark = pytest.mark.timeout(120)


# -- names ----------------------------------------------------------------------------------
def test_a_name_that_is_not_utf8_works_end_to_end(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, b"caf\xe9.jpg", image_bytes("red"))
    write(src, b"sub\xff/b.jpg", image_bytes("blue"))
    write(src, b"\xfe.jpg", image_bytes("green")[:300])  # truncated: a failure that quotes it
    done = cli(src, "--output", out, "--quiet")
    assert done.returncode == 1, done.stderr  # the truncated one failed; nothing fatal
    recs = records(out)  # strict UTF-8 JSON lines
    assert set(recs) == {b"caf\xe9.jpg", b"sub\xff/b.jpg", b"\xfe.jpg"}
    cafe = recs[b"caf\xe9.jpg"]
    assert cafe["status"] == "ok"
    assert cafe["key"] == "caf\\xe9.jpg"  # shown escaped; the exact bytes in key_b64
    assert source_bytes(cafe) == os.path.join(os.fsencode(src), b"caf\xe9.jpg")
    (thumb,) = outputs(cafe)
    assert thumb == b"512/caf\xe9.jpg"
    assert looks(os.path.join(os.fsencode(out), thumb), "red")
    (nested,) = outputs(recs[b"sub\xff/b.jpg"])
    assert looks(os.path.join(os.fsencode(out), nested), "blue")
    bad = recs[b"\xfe.jpg"]
    assert bad["status"] == "failed"
    assert bad["error_type"] == "TruncatedImage"
    # the text outputs stay valid UTF-8 and show the names escaped
    stats = (out / "stats.csv").read_bytes().decode("utf-8")
    assert "caf\\xe9.jpg" in stats
    report = (out / "report.html").read_bytes().decode("utf-8")
    assert 'src="512/caf%E9.jpg"' in report  # the exact bytes, which a browser opens on disk
    assert json.loads((out / "summary.json").read_text())["finished"] is True
    # and a second run resumes them: the failure is tried again, the rest is done
    assert cli(src, "--output", out, "--quiet").returncode == 1
    again = records(out)
    assert again[b"caf\xe9.jpg"]["status"] == "reused"
    assert again[b"sub\xff/b.jpg"]["status"] == "reused"
    assert again[b"\xfe.jpg"]["redo"] == "earlier record failed (TruncatedImage)"


def test_nfc_and_nfd_spellings_are_two_inputs(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "caf\u00e9.jpg", image_bytes("red"))  # NFC
    write(src, "cafe\u0301.jpg", image_bytes("blue"))  # NFD
    assert cli(src, "--output", out, "--quiet").returncode == 0
    recs = records(out)
    assert len(recs) == 2
    assert all(r["status"] == "ok" for r in recs.values())
    nfc, nfd = (outputs(recs[n.encode()])[0] for n in ("caf\u00e9.jpg", "cafe\u0301.jpg"))
    # distinct on macOS too, whose file systems take both spellings for one name
    assert fold(nfc.decode()) != fold(nfd.decode())
    assert looks(os.path.join(os.fsencode(out), nfc), "red")
    assert looks(os.path.join(os.fsencode(out), nfd), "blue")


@pytest.mark.parametrize("fmt", ["keep", "png"])
def test_names_that_differ_only_in_case_never_share_an_output(tmp_path: Path, fmt: str) -> None:
    # a.jpg and A.JPG are two files here, one on macOS, Windows, exFAT or an SMB share: the
    # output folder, written there or copied there, must not lose one thumbnail to the other
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.jpg", image_bytes("red"))
    write(src, "A.JPG", image_bytes("blue"))
    write(src, "b.png", image_bytes("green", "PNG"))
    write(src, "B.PNG", image_bytes("yellow", "PNG"))
    write(src, "c.jpg", image_bytes("red"))  # no twin: its own name
    write(src, "Sub/x.jpg", image_bytes("green"))  # twin folders
    write(src, "sub/x.jpg", image_bytes("blue"))
    write(src, "d.npy", image_bytes("green"))  # data names that hold images
    write(src, "D.NPY", image_bytes("yellow"))
    write(src, "e.npz", image_bytes("red"))
    write(src, "E.NPZ", image_bytes("blue"))
    done = cli(src, "--output", out, "--format", fmt, "--quiet")
    assert done.returncode == 0, done.stderr
    recs = records(out)
    ext = ".png" if fmt == "png" else ""
    keys = [b"A.JPG", b"B.PNG", b"D.NPY", b"E.NPZ", b"Sub/x.jpg", b"a.jpg", b"b.png", b"c.jpg"]
    assert sorted(recs) == [*keys, b"d.npy", b"e.npz", b"sub/x.jpg"]  # keys: the names
    paths = [p.decode() for r in recs.values() for p in outputs(r)]
    assert len({fold(p) for p in paths}) == 11
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"E.NPZ"])[0]), "blue")
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"e.npz"])[0]), "red")
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"D.NPY"])[0]), "yellow")
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"d.npy"])[0]), "green")
    assert outputs(recs[b"Sub/x.jpg"]) == [f"512/Sub~{name_tag('Sub')}/x.jpg{ext}".encode()]
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"sub/x.jpg"])[0]), "blue")
    assert outputs(recs[b"c.jpg"]) == [f"512/c.jpg{ext}".encode()]
    assert outputs(recs[b"A.JPG"]) == [f"512/A~{name_tag('A.JPG')}.JPG{ext}".encode()]
    for key, colour in ((b"a.jpg", "red"), (b"A.JPG", "blue"), (b"b.png", "green")):
        (path,) = outputs(recs[key])
        assert looks(os.path.join(os.fsencode(out), path), colour), key
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"B.PNG"])[0]), "yellow")
    again = cli(src, "--output", out, "--format", fmt, "--quiet")
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in records(out).values()} == {"reused"}


def test_names_up_to_255_bytes_write(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    same = "s" * 251 + ".jpg"  # 255 bytes, a JPEG kept as JPEG: the very same name
    grown = "g" * 251 + ".png"  # 255 bytes, written as JPEG: "<name>.jpg" would be 259
    accents = "\u00e9" * 125 + ".png"  # 254 bytes of two-byte characters
    write(src, same, image_bytes("red"))
    write(src, grown, image_bytes("green", "PNG"))
    write(src, accents, image_bytes("blue", "PNG"))
    done = cli(src, "--output", out, "--format", "jpeg", "--quiet")
    assert done.returncode == 0, done.stderr
    recs = records(out)
    assert outputs(recs[same.encode()]) == [b"512/" + same.encode()]
    for name, colour in ((same, "red"), (grown, "green"), (accents, "blue")):
        (path,) = outputs(recs[name.encode()])
        leaf = path.rpartition(b"/")[2]
        assert len(leaf) <= 255
        assert leaf.endswith(b".jpg")
        leaf.decode("utf-8")  # never cut inside a character
        assert looks(os.path.join(os.fsencode(out), path), colour)
    assert not list(out.rglob(".pp-*")), "a temporary file was left behind"


# -- output names ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jpeg", "keep"])
def test_a_gif_beside_a_gif_jpg_never_share_an_output(tmp_path: Path, fmt: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.gif", image_bytes("red", "GIF"))
    write(src, "a.gif.jpg", image_bytes("blue"))
    write(src, "x", image_bytes("green"))  # no extension, a JPEG: "x.jpg" ...
    write(src, "x.jpg", image_bytes("yellow"))  # ... is this one's own name
    done = cli(src, "--output", out, "--format", fmt, "--quiet")
    assert done.returncode == 0, done.stderr
    recs = records(out)
    paths = [p for r in recs.values() for p in outputs(r)]
    assert len(paths) == len(set(paths)) == 4
    assert outputs(recs[b"a.gif.jpg"]) == [b"512/a.gif.jpg"]  # its own name, untouched
    assert outputs(recs[b"x.jpg"]) == [b"512/x.jpg"]
    for key, colour in ((b"a.gif", "red"), (b"a.gif.jpg", "blue"), (b"x", "green")):
        (path,) = outputs(recs[key])
        assert looks(os.path.join(os.fsencode(out), path), colour), key
    if fmt == "jpeg":
        assert outputs(recs[b"a.gif"])[0].startswith(b"512/a.gif~")


def test_file_arguments_are_flat_and_names_do_not_depend_on_their_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "x.jpg", image_bytes("red"))
    b = write(tmp_path / "b", "x.jpg", image_bytes("blue"))
    c = write(tmp_path / "c", "y.jpg", image_bytes("green"))
    maps = []
    for order, out in (((a, b, c), tmp_path / "o1"), ((c, b, a), tmp_path / "o2")):
        assert cli(*order, "--output", out, "--quiet").returncode == 0
        recs = records(out)
        maps.append({source_bytes(r): (k, outputs(r)) for k, r in recs.items()})
        assert outputs(recs[b"y.jpg"]) == [b"512/y.jpg"]  # flat: no folder per file
        assert not (out / "512" / "y.jpg").is_dir()
        for src, colour in ((a, "red"), (b, "blue")):
            key, (path,) = maps[-1][src]
            assert path.startswith(b"512/x~")
            assert path.endswith(b".jpg")
            assert key != b"x.jpg"
            assert looks(os.path.join(os.fsencode(out), path), colour)
    assert maps[0] == maps[1]


def test_two_input_folders_with_one_name_get_distinct_prefixes(tmp_path: Path) -> None:
    one = tmp_path / "p" / "photos"
    two = tmp_path / "q" / "photos"
    write(one, "a.jpg", image_bytes("red"))
    write(two, "a.jpg", image_bytes("blue"))
    keys = []
    for order in ((one, two), (two, one)):
        out = tmp_path / f"out{len(keys)}"
        assert cli(*order, "--output", out, "--quiet").returncode == 0
        recs = records(out)
        keys.append({source_bytes(r): k for k, r in recs.items()})
        assert all(k.startswith(b"photos~") for k in recs)
    assert keys[0] == keys[1]


# -- resume ---------------------------------------------------------------------------------
def test_an_edited_file_is_redone_and_its_output_replaced(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    path = write(src, "a.bmp", image_bytes("red", "BMP"))
    write(src, "b.bmp", image_bytes("green", "BMP"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    (thumb,) = outputs(records(out)[b"a.bmp"])
    before = os.stat(path)
    # the same size, within the same second: only mtime_ns tells
    write(src, "a.bmp", image_bytes("blue", "BMP"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert os.stat(path).st_size == before.st_size
    assert cli(src, "--output", out, "--quiet").returncode == 0
    recs = records(out)
    assert recs[b"a.bmp"]["status"] == "ok"
    assert recs[b"a.bmp"]["run"] == run_id(out)
    assert recs[b"a.bmp"]["redo"] == "input changed (mtime_ns)"
    assert looks(os.path.join(os.fsencode(out), thumb), "blue")
    assert recs[b"b.bmp"]["status"] == "reused"
    # a deleted output is made again, and the record says why
    os.unlink(os.path.join(os.fsencode(out), outputs(recs[b"b.bmp"])[0]))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    assert records(out)[b"b.bmp"]["redo"] == "earlier outputs missing or changed"


def test_an_output_cut_short_or_written_over_is_made_again(tmp_path: Path) -> None:
    """An output that is there but not as it was written (truncated by a copy or a sync that
    stopped half-way, or written over by another program) is not reused: resume made a wrong
    thumbnail look done. Redone, and the record says why."""
    src, out = tmp_path / "in", tmp_path / "out"
    for name, colour in (("a.png", "red"), ("b.png", "green"), ("c.png", "blue")):
        write(src, name, image_bytes(colour, "PNG"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    recs = records(out)
    path = {k: os.path.join(os.fsencode(out), outputs(r)[0]) for k, r in recs.items()}
    with open(path[b"a.png"], "r+b") as fh:  # cut short
        fh.truncate(os.path.getsize(path[b"a.png"]) // 2)
    with open(path[b"b.png"], "wb") as fh:  # written over (another image, another size)
        fh.write(image_bytes("blue", "BMP"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    again = records(out)
    for key in (b"a.png", b"b.png"):
        assert again[key]["status"] == "ok", again[key]
        assert again[key]["redo"] == "earlier outputs missing or changed"
    assert again[b"c.png"]["status"] == "reused"
    assert looks(path[b"a.png"], "red")
    assert looks(path[b"b.png"], "green")
    for key, rec in again.items():  # as written, now
        assert os.path.getsize(path[key]) == rec["result"]["outputs"][0]["bytes"]


def test_verify_content_catches_an_edit_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    path = write(src, "a.bmp", image_bytes("red", "BMP"))
    assert cli(src, "--output", out, "--verify-content", "--quiet").returncode == 0
    assert "sha256" in records(out)[b"a.bmp"]["identity"]
    before = os.stat(path)
    write(src, "a.bmp", image_bytes("blue", "BMP"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as they were
    assert cli(src, "--output", out, "--verify-content", "--quiet").returncode == 0
    rec = records(out)[b"a.bmp"]
    assert rec["status"] == "ok"
    assert rec["redo"] == "input changed (sha256)"
    (thumb,) = outputs(rec)
    assert looks(os.path.join(os.fsencode(out), thumb), "blue")


def test_verify_content_on_or_off_alone_redoes_nothing(tmp_path: Path) -> None:
    """An earlier record without a SHA-256 (or a run without one) is compared on what both
    have: turning --verify-content on or off redid every input, "input changed (sha256)"."""
    src, out = tmp_path / "in", tmp_path / "out"
    path = write(src, "a.bmp", image_bytes("red", "BMP"))
    write(src, "b.jpg", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    for flags in (["--verify-content"], [], ["--verify-content"]):
        assert cli(src, "--output", out, "--quiet", *flags).returncode == 0
        assert {r["status"] for r in records(out).values()} == {"reused"}
        # the SHA-256 taken once is kept, for the next run that compares content
        assert "sha256" in records(out)[b"a.bmp"]["identity"]
    before = os.stat(path)
    write(src, "a.bmp", image_bytes("green", "BMP"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as they were
    assert cli(src, "--output", out, "--quiet", "--verify-content").returncode == 0
    assert records(out)[b"a.bmp"]["redo"] == "input changed (sha256)"


def test_the_same_path_under_another_root_is_not_taken_for_done(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(tmp_path / "one", "x.jpg", image_bytes("red"))
    write(tmp_path / "two", "x.jpg", image_bytes("blue"))
    assert cli(tmp_path / "one", "--output", out, "--quiet").returncode == 0
    assert cli(tmp_path / "two", "--output", out, "--quiet").returncode == 0
    # one is still there: the folder keeps its keys, and two is keyed beside it
    recs = records(out)
    assert set(recs) == {b"x.jpg", b"two/x.jpg"}
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"x.jpg"])[0]), "red")
    assert recs[b"two/x.jpg"]["status"] == "ok"
    assert looks(os.path.join(os.fsencode(out), outputs(recs[b"two/x.jpg"])[0]), "blue")
    # one gone: two alone holds the folder's keys, as a first run would give them
    (tmp_path / "out2").mkdir()
    assert cli(tmp_path / "one", "--output", tmp_path / "out2", "--quiet").returncode == 0
    os.rename(tmp_path / "one", tmp_path / "gone")
    assert cli(tmp_path / "two", "--output", tmp_path / "out2", "--quiet").returncode == 0
    rec = records(tmp_path / "out2")[b"x.jpg"]
    assert rec["status"] == "ok"
    assert rec["redo"].startswith("another input under this key")
    assert looks(os.path.join(os.fsencode(tmp_path / "out2"), outputs(rec)[0]), "blue")


def test_the_same_folder_by_another_path_is_done(tmp_path: Path) -> None:
    """The input folder given through a symlink to it, or spelled another way, holds the same
    files: they are reused, not redone as another input under their keys (a folder elsewhere
    with the same names is: test_the_same_path_under_another_root_is_not_taken_for_done)."""
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "x.jpg", image_bytes("red"))
    write(src, "sub/y.jpg", image_bytes("blue"))
    os.symlink(src, tmp_path / "alias")
    assert cli(src, "--output", out, "--quiet").returncode == 0
    for spelling in (tmp_path / "alias", f"{tmp_path}/./in/", f"{tmp_path}/alias/sub/../"):
        assert cli(spelling, "--output", out, "--quiet").returncode == 0
        recs = records(out)
        assert {k: r["status"] for k, r in recs.items()} == {
            b"x.jpg": "reused",
            b"sub/y.jpg": "reused",
        }, spelling


@pytest.mark.parametrize("verify", [True, False])
def test_a_moved_folder_is_done_when_its_content_proves_it(tmp_path: Path, verify: bool) -> None:
    """A folder renamed (or a drive mounted elsewhere): with ``--verify-content`` each file's
    SHA-256, size and ``mtime_ns`` prove it is the file its record was made from, so it is
    reused. Without it, size and ``mtime_ns`` alone prove nothing across paths (files unpacked
    from archives share made-up times; arrays of one shape share sizes): redone, as another
    input under its key."""
    flags = ["--verify-content"] if verify else []
    src, out = tmp_path / "photos", tmp_path / "out"
    write(src, "x.jpg", image_bytes("red"))
    write(src, "sub/y.jpg", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet", *flags).returncode == 0
    moved = tmp_path / "photos-2023"
    os.rename(src, moved)
    assert cli(moved, "--output", out, "--quiet", *flags).returncode == 0
    recs = records(out)
    status = "reused" if verify else "ok"
    assert {k: r["status"] for k, r in recs.items()} == {b"x.jpg": status, b"sub/y.jpg": status}
    assert {r["source"] for r in recs.values()} == {str(moved / "x.jpg"), str(moved / "sub/y.jpg")}
    if not verify:
        assert all(r["redo"].startswith("another input under this key") for r in recs.values())
        return
    # the same content copied (cp without -p: a new mtime_ns) is another file: redone
    shutil.copytree(moved, src, copy_function=shutil.copyfile)
    shutil.rmtree(moved)
    assert cli(src, "--output", out, "--quiet", *flags).returncode == 0
    assert {r["status"] for r in records(out).values()} == {"ok"}


def test_an_input_that_is_gone_is_reported_and_its_outputs_kept(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    gone = write(src, "gone.jpg", image_bytes("red"))
    write(src, "kept.jpg", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    os.unlink(gone)
    assert cli(src, "--output", out, "--quiet").returncode == 0
    rec = records(out)[b"gone.jpg"]
    assert rec["status"] == "skipped"
    assert rec["reason"].startswith("input gone")
    assert os.path.exists(os.path.join(os.fsencode(out), outputs(rec)[0]))
    assert records(out)[b"kept.jpg"]["status"] == "reused"


def test_an_input_file_replaced_by_a_folder_of_its_name_and_back(tmp_path: Path) -> None:
    """x.jpg becomes a folder x.jpg/ (and back): the earlier output stands where the new one's
    folder (or the new one) must be. It is removed, the new input written, the gone one's
    record lists nothing; before, the new input failed on every run (NotADirectoryError, then
    IsADirectoryError) and the gone one stayed ``ok``, its folder taken for its file."""
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "x.jpg", image_bytes("red"))
    write(src, "y.jpg", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    os.unlink(src / "x.jpg")
    write(src, "x.jpg/z.jpg", image_bytes("green"))
    for _ in range(2):  # the second run reuses it all
        assert cli(src, "--output", out, "--quiet").returncode == 0
    recs = records(out)
    assert recs[b"x.jpg/z.jpg"]["status"] in ("ok", "reused")
    assert looks(os.fsencode(out / "512/x.jpg/z.jpg"), "green")
    assert recs[b"x.jpg"]["status"] == "skipped"
    assert recs[b"x.jpg"]["reason"].startswith("input gone")
    assert outputs(recs[b"x.jpg"]) == []
    assert recs[b"y.jpg"]["status"] == "reused"
    # and back: a file where the folder was
    shutil.rmtree(src / "x.jpg")
    write(src, "x.jpg", image_bytes("red"))
    assert cli(src, "--output", out, "--quiet").returncode == 0
    recs = records(out)
    assert recs[b"x.jpg"]["status"] == "ok"
    assert looks(os.fsencode(out / "512/x.jpg"), "red")
    assert recs[b"x.jpg/z.jpg"]["status"] == "skipped"
    assert outputs(recs[b"x.jpg/z.jpg"]) == []
    assert cli(src, "--output", out, "--quiet").returncode == 0
    assert {r["status"] for k, r in records(out).items() if k != b"x.jpg/z.jpg"} == {"reused"}
    listed = {p for r in records(out).values() for p in outputs(r)}
    on_disk = {
        os.fsencode(p.relative_to(out).as_posix()) for p in (out / "512").rglob("*") if p.is_file()
    }
    assert listed == on_disk == {b"512/x.jpg", b"512/y.jpg"}


def test_what_stands_in_an_outputs_way_is_removed_only_if_ours(tmp_path: Path) -> None:
    from stages.files import clear_way, write_output

    root = tmp_path / "out"
    write(root, "512/a.jpg", b"old")  # a file where a folder must be
    write_output(root, "512/a.jpg/b.jpg", b"new")
    assert (root / "512/a.jpg/b.jpg").read_bytes() == b"new"
    write_output(root, "512/a.jpg", b"back")  # a folder where the file must be
    assert (root / "512/a.jpg").read_bytes() == b"back"
    # a link, or a first-level entry (a size's folder), is never removed: the write fails
    target = Path(os.fsdecode(write(root, "512/keep.jpg", b"mine")))
    os.symlink(target, root / "512/link.jpg")
    with pytest.raises(NotADirectoryError):
        write_output(root, "512/link.jpg/c.jpg", b"new")
    assert target.read_bytes() == b"mine"
    write(root, "256", b"not a folder")
    with pytest.raises(NotADirectoryError):
        write_output(root, "256/c.jpg", b"new")
    assert clear_way(root, "512/nothing/there.jpg") is None


def test_an_input_the_walk_now_declines_keeps_its_outputs_listed(tmp_path: Path) -> None:
    """A symlink followed once (--follow-symlinks) and then not, a file replaced by a dangling
    symlink: the walk's own ``skipped`` record keeps the key's earlier result, as an input
    gone does, so the earlier output stays listed; it was left on disk listed by no record."""
    src, out = tmp_path / "in", tmp_path / "out"
    write(tmp_path / "outside", "x.jpg", image_bytes("red"))
    write(src, "a.jpg", image_bytes("blue"))
    write(src, "b.jpg", image_bytes("green"))
    os.symlink(tmp_path / "outside" / "x.jpg", src / "link.jpg")
    assert cli(src, "--output", out, "--quiet", "--follow-symlinks").returncode == 0
    os.unlink(src / "a.jpg")
    os.symlink("nowhere.jpg", src / "a.jpg")
    for _ in range(2):
        assert cli(src, "--output", out, "--quiet").returncode == 0
        recs = records(out)
        assert {k: r["status"] for k, r in recs.items()} == {
            b"a.jpg": "skipped",
            b"b.jpg": "reused",
            b"link.jpg": "skipped",
        }
        assert recs[b"a.jpg"]["reason"] == "dangling symlink: its target does not exist"
        listed = {p for r in recs.values() for p in outputs(r)}
        on_disk = {os.fsencode(f"512/{p.name}") for p in (out / "512").iterdir()}
        assert listed == on_disk == {b"512/a.jpg", b"512/b.jpg", b"512/link.jpg"}
    assert looks(os.fsencode(out / "512" / "link.jpg"), "red")


def test_a_failed_input_that_is_gone_is_reported_gone_too(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    bad = write(src, "a.npz", b"not a zip at all\n")  # fails as the walk lists it
    write(src, "b.jpg", image_bytes("blue"))
    assert cli(src, "--output", out, "--quiet").returncode == 1
    assert records(out)[b"a.npz"]["status"] == "failed"
    os.unlink(bad)
    assert cli(src, "--output", out, "--quiet").returncode == 0  # no failure left to report
    rec = records(out)[b"a.npz"]
    assert rec["status"] == "skipped"
    assert rec["reason"].startswith("input gone")


# -- the output folder is never input ---------------------------------------------------------
def test_an_output_folder_inside_the_input_is_never_walked(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write(photos, "a.jpg", image_bytes("red"))
    write(photos, "sub/b.jpg", image_bytes("blue"))
    for _ in range(2):
        done = cli(photos, "--output", photos / "thumbs", "--quiet")
        assert done.returncode == 0, done.stderr
    recs = records(photos / "thumbs")
    assert set(recs) == {b"a.jpg", b"sub/b.jpg", b"thumbs/"}
    assert recs[b"thumbs/"]["status"] == "skipped"
    assert "output folder" in recs[b"thumbs/"]["reason"]
    assert not (photos / "thumbs" / "512" / "thumbs").exists()
    # another run's output folder met inside an input is not walked either
    assert cli(photos, "--output", tmp_path / "elsewhere", "--quiet").returncode == 0
    other = records(tmp_path / "elsewhere")
    assert "another run's output folder" in other[b"thumbs/"]["reason"]
    assert set(other) == {b"a.jpg", b"sub/b.jpg", b"thumbs/"}


@pytest.mark.parametrize("where", ["same", "inside", "earlier-output"])
def test_inputs_that_are_outputs_are_refused(tmp_path: Path, where: str) -> None:
    photos = tmp_path / "photos"
    write(photos, "a.jpg", image_bytes("red"))
    if where == "same":
        done = cli(photos, "--output", photos)
    elif where == "inside":
        assert cli(photos, "--output", tmp_path / "out", "--quiet").returncode == 0
        done = cli(tmp_path / "out" / "512", "--output", tmp_path / "out")
    else:
        assert cli(photos, "--output", tmp_path / "out", "--quiet").returncode == 0
        done = cli(tmp_path / "out", "--output", tmp_path / "again")
    assert done.returncode == 2, done.stderr
    assert "output folder" in done.stderr


# -- recognised by content --------------------------------------------------------------------
def test_inputs_are_recognised_by_their_content(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("1", (40, 30), 1).save(src / "bw.pbm")
    write(src, "jpeg_named.png", image_bytes("red"))
    write(src, "png_named.jpg", image_bytes("blue", "PNG"))
    write(src, "no_extension", image_bytes("green", "WEBP"))
    write(src, "photo.jfif", image_bytes("yellow"))
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 0, 0), (0, 0, 200))]
    frames[0].save(src / "anim.apng", save_all=True, append_images=frames[1:])
    write(src, "notes.jpg", b"just some text, not a picture\n")
    write(src, "empty.png", b"")
    buf = io.BytesIO()
    np.save(buf, np.arange(10.0))
    write(src, "array_without_extension", buf.getvalue())
    done = cli(src, "--output", out, "--quiet")
    assert done.returncode == 0, done.stderr
    recs = records(out)
    formats = {
        b"bw.pbm": "ppm",
        b"jpeg_named.png": "jpeg",
        b"png_named.jpg": "png",
        b"no_extension": "webp",
        b"photo.jfif": "jpeg",
        b"anim.apng": "png",
    }
    for key, fmt in formats.items():
        assert recs[key]["status"] == "ok", recs[key]
        assert recs[key]["result"]["original"]["format"] == fmt, key
    assert recs[b"notes.jpg"]["reason"] == "not an image or data file: text (named .jpg)"
    assert recs[b"empty.png"]["reason"].startswith("not an image or data file: an empty file")
    array = recs[b"array_without_extension"]
    assert array["status"] == "ok"
    assert array["result"]["stats"]["sum"] == 45.0


# -- special entries --------------------------------------------------------------------------
@pytest.fixture
def odd_folder(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "in"
    write(src, "a.jpg", image_bytes("red"))
    os.mkfifo(src / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(src / "sock.jpg"))
    (src / "dangling.jpg").symlink_to(src / "nowhere.jpg")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    write(tmp_path / "outside", "secret.jpg", image_bytes("blue"))
    (src / "outside.jpg").symlink_to(tmp_path / "outside" / "secret.jpg")
    (src / "inside.jpg").symlink_to(src / "a.jpg")
    (src / "subdir_link").symlink_to(src / "sub")
    write(src, "sub/c.jpg", image_bytes("green"))
    if os.geteuid() == 0:  # only root may make a device node: the same branch as the others
        os.mknod(src / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    try:
        yield src
    finally:
        sock.close()


def test_every_entry_gets_one_record_and_special_files_are_never_opened(
    odd_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = cli(odd_folder, "--output", out, "--quiet", timeout=60)  # a FIFO opened would hang
    assert done.returncode == 0, done.stderr
    recs = records(out)
    expected = {
        b"a.jpg": "ok",
        b"inside.jpg": "ok",
        b"sub/c.jpg": "ok",
        b"pipe.jpg": "a named pipe (FIFO): not a regular file; never opened",
        b"sock.jpg": "a socket: not a regular file; never opened",
        b"dangling.jpg": "dangling symlink: its target does not exist",
        b"loop.jpg": "symlink loop: it leads back to itself",
        b"outside.jpg": "symlink leads outside its input root; not followed (--follow-symlinks "
        "does)",
        b"subdir_link": "symlink to a folder inside the input root: its files are recorded "
        "at their own path",
    }
    if os.geteuid() == 0:
        expected[b"null.jpg"] = "a character device: not a regular file; never opened"
    assert set(recs) == set(expected)
    for key, want in expected.items():
        if want == "ok":
            assert recs[key]["status"] == "ok", recs[key]
        else:
            assert recs[key]["status"] == "skipped", recs[key]
            assert recs[key]["reason"] == want, recs[key]
    # such entries gone, their records say so (not what the entries were, forever)
    for name in ("pipe.jpg", "dangling.jpg", "outside.jpg"):
        os.unlink(odd_folder / name)
    assert cli(odd_folder, "--output", out, "--quiet", timeout=60).returncode == 0
    recs = records(out)
    for key in (b"pipe.jpg", b"dangling.jpg", b"outside.jpg"):
        assert recs[key]["reason"].startswith("input gone"), recs[key]
    assert recs[b"sock.jpg"]["reason"] == expected[b"sock.jpg"]


def test_follow_symlinks_takes_files_outside_the_folder_never_the_output_folder(
    tmp_path: Path,
) -> None:
    """A folder of links into a pool elsewhere (a subset made with ``ln -s``, a git-annex tree
    given below its root): by default each link is skipped with its reason, which names the
    option; with ``--follow-symlinks`` each is an input of its own, read through the link. A link
    to a folder outside, or into the output folder, is skipped either way."""
    pool, src, out = tmp_path / "pool", tmp_path / "subset", tmp_path / "out"
    write(pool, "red.jpg", image_bytes("red"))
    write(pool, "blue.jpg", image_bytes("blue"))
    src.mkdir()
    (src / "a.jpg").symlink_to(pool / "red.jpg")
    (src / "b.jpg").symlink_to(pool / "blue.jpg")
    (src / "more").symlink_to(pool, target_is_directory=True)
    first = cli(src, "--output", out, "--quiet")
    assert first.returncode == 0, first.stderr
    recs = records(out)
    assert recs[b"a.jpg"]["reason"] == (
        "symlink leads outside its input root; not followed (--follow-symlinks does)"
    )
    done = cli(src, "--output", out, "--quiet", "--follow-symlinks")
    assert done.returncode == 0, done.stderr
    recs = records(out)
    for key, colour in ((b"a.jpg", "red"), (b"b.jpg", "blue")):
        assert recs[key]["status"] == "ok", recs[key]
        (path,) = outputs(recs[key])
        assert looks(os.path.join(os.fsencode(out), path), colour)
    assert recs[b"more"]["reason"] == (
        "symlink to a folder outside its input root: not walked (give it as an input)"
    )
    # a link to this run's own output: never read back, with the option or without
    (thumb,) = outputs(recs[b"a.jpg"])
    (src / "thumb.jpg").symlink_to(out / os.fsdecode(thumb))
    for follow in ((), ("--follow-symlinks",)):
        again = cli(src, "--output", out, "--quiet", *follow)
        assert again.returncode == 0, again.stderr
        assert records(out)[b"thumb.jpg"]["reason"] == (
            "symlink into the output folder: outputs are never read back as inputs"
        )


def _without_root_file_access() -> None:
    """In the child, before exec: drop the capabilities that let root ignore file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the bounding set, so the command runs as a
    root that permissions apply to. Other users: nothing to drop."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_files_and_folders_fail_with_their_reason(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.jpg", image_bytes("red"))
    write(src, "secret.jpg", image_bytes("blue"))
    write(src, "locked/b.jpg", image_bytes("green"))
    os.chmod(src / "secret.jpg", 0)
    os.chmod(src / "locked", 0)
    try:
        done = cli(src, "--output", out, "--quiet", preexec_fn=_without_root_file_access)
    finally:
        os.chmod(src / "secret.jpg", 0o644)
        os.chmod(src / "locked", 0o755)
    assert done.returncode == 1, done.stderr
    recs = records(out)
    assert set(recs) == {b"a.jpg", b"secret.jpg", b"locked/"}
    assert recs[b"a.jpg"]["status"] == "ok"
    secret = recs[b"secret.jpg"]
    assert secret["status"] == "failed"
    assert secret["error_type"] == "PermissionError"
    assert secret["stage"] == "resize"  # the resize worker opens a local file
    locked = recs[b"locked/"]
    assert locked["status"] == "failed"
    assert locked["error_type"] == "UnreadableFolder"
    assert "PermissionError" in locked["error"]
    # the folder gone, no failure is left to report
    shutil.rmtree(src / "locked")
    assert cli(src, "--output", out, "--quiet").returncode == 0
    assert records(out)[b"locked/"]["reason"].startswith("input gone")


# -- one run per output folder ----------------------------------------------------------------
HOLD = """
import sys
from pipeline import hold_folder
with hold_folder(sys.argv[1], run="holder-run"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_into_a_held_folder_exits_2_and_a_dead_holder_does_not_block(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write(src, "a.jpg", image_bytes("red"))
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        _held_while(holder, src, out)


def _held_while(holder: subprocess.Popen[str], src: Path, out: Path) -> None:
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        done = cli(src, "--output", out, "--quiet")
        assert done.returncode == 2, done.stderr
        assert "in use by another run" in done.stderr
        assert f"pid {holder.pid}" in done.stderr
        assert "holder-run" in done.stderr
        assert not (out / "manifest.jsonl").exists()  # it wrote nothing
        holder.send_signal(signal.SIGKILL)  # a crashed run: its lock goes with it
        holder.wait(10)
        done = cli(src, "--output", out, "--quiet")
        assert done.returncode == 0, done.stderr
        assert records(out)[b"a.jpg"]["status"] == "ok"
    finally:
        holder.kill()
        holder.wait(10)
