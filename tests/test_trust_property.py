"""Property test: over generated trees of files whose names are arbitrary bytes, ``process``
keeps its promises (stages.sources, stages.naming, pipeline.names, pipeline.runner resume):

1. every file gets exactly one record, keyed by its exact relative path; ``ok`` for an image,
   ``skipped`` with a reason for anything else, never missing;
2. no two outputs share a path (nor would on a case-insensitive disk), every listed output is
   there, decodes, and shows the colour of its own input; nothing else is left in the tree;
3. a second run redoes nothing and touches no output;
4. after one file changes, a third run redoes exactly that key, with ``redo: input changed``;
5. after the tree or the options change (a file gone, a twin or a sibling named like another
   input's output added, another format), promise 2 still holds — no stale output is left, no
   path is listed twice, no output shows another input's picture — and the run after that
   redoes nothing.

Names mix random bytes, non-UTF-8 bytes, names up to 255 bytes, and deliberate clashes
(``a.gif`` beside ``a.gif.jpg``, ``a.png`` beside ``A.PNG.jpg``, ``x`` beside ``x.jpg``, a
folder ``b.jpg`` beside a file ``b``, a data extension ``c.csv`` holding an image beside
``c.csv.jpg``, a sibling named like another input's tagged output).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.config import ProcessConfig
from app.process import run_process
from stages.naming import name_tag, output_name
from stages.sources import DATA_EXTENSIONS
from stages.steps import IMAGE_NAMES
from tests.trees import (
    PALETTE,
    files_below,
    nearest_colour,
    outputs_of,
    path_bytes,
    records_by_bytes,
    solid,
)

IMAGE_KINDS = ("JPEG", "PNG", "GIF", "WEBP")
OTHER_KINDS = ("text", "binary", "empty")
#: mostly images
KINDS = ("JPEG", "JPEG", "PNG", "PNG", "GIF", "WEBP", "WEBP", "text", "binary", "empty")
SIZE_LABEL = "16"
NAME_MAX = 255
MAX_FILES = 20  # each file takes its own PALETTE colour, one more is kept for a rewrite


@dataclass(frozen=True)
class File:
    rel: bytes  # path below the root, b"/"-separated
    kind: str  # an IMAGE_KINDS format or an OTHER_KINDS content
    side: int  # pixels
    colour: int  # index into PALETTE

    def content(self, colour: int | None = None) -> bytes:
        rgb = PALETTE[self.colour if colour is None else colour]
        if self.kind in IMAGE_KINDS:
            return solid(self.kind, rgb, (self.side, self.side))
        if self.kind == "text":
            return b"just some words, not an image\n" * (1 + self.colour)
        if self.kind == "binary":  # 0x01 starts no magic number stages.sniff knows
            return b"\x01\x02\x03\xfe\xfd" + bytes(rgb) * 40
        return b""


@dataclass(frozen=True)
class Tree:
    dirs: tuple[bytes, ...]  # folders below the root, parents first (some stay empty)
    files: tuple[File, ...]


# -- names ---------------------------------------------------------------------------------------
def _clean(raw: bytes) -> bytes:
    return raw.replace(b"/", b"_").replace(b"\0", b"-")


_PIECES = (
    b"a", b"A", b"b", b"x", b"X", b".", b"~", b"\\", b" ", b"\n", b"-", b"jpg", b"png", b"gif",
    b"\xe9", b"\xff", b"\x80", b"\xfe", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80",
)  # fmt: skip
_STEMS = (b"a", b"A", b"b", b"B", b"x", b"caf\xe9", b"\xff\xfe", b".hidden", b"IMG_0001", b"~")
_EXTS = (
    b".jpg", b".JPG", b".jpeg", b".jpe", b".png", b".PNG", b".gif", b".webp", b".WebP", b".txt",
    b".csv", b".npz", b".npy", b".tsv", b".", b"",
)  # fmt: skip
#: what a sibling adds to a name to clash with its output (``stages.naming.OUTPUT_EXTENSIONS``)
_CLASH_EXTS = (b".jpg", b".JPG", b".Jpg", b".png", b".PNG", b".webp", b".WEBP")

_random_names = st.binary(min_size=1, max_size=24).map(_clean)
_piece_names = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map(b"".join)
_structured_names = st.builds(
    lambda stem, exts: stem + b"".join(exts),
    st.sampled_from(_STEMS),
    st.lists(st.sampled_from(_EXTS), max_size=2),
)
#: named as numeric data (read as an image when it holds one)
_data_names = st.builds(
    lambda stem, ext: stem + ext,
    st.sampled_from(_STEMS),
    st.sampled_from((b".csv", b".CSV", b".npz", b".npy", b".tsv")),
)


@st.composite
def _long_names(draw: st.DrawFn) -> bytes:
    length = draw(st.integers(230, NAME_MAX))
    fill = draw(st.sampled_from((b"L", b"\xe9", b"\xc3\xa9", b"\x80", b"ab\xff")))
    ext = draw(st.sampled_from((b"", b".jpg", b".png", b".gif", b".csv")))
    body = (fill * NAME_MAX)[: length - len(ext)]
    return body + ext


NAMES = st.one_of(
    _random_names, _piece_names, _structured_names, _data_names, _long_names()
).filter(lambda n: n not in (b".", b"..") and 0 < len(n) <= NAME_MAX)


def _depth(rel: bytes) -> int:
    return 0 if rel == b"" else rel.count(b"/") + 1


def _join(parent: bytes, name: bytes) -> bytes:
    return name if parent == b"" else parent + b"/" + name


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """A root with 0-2 levels of sub-folders and ~3-12 files, plus siblings that clash."""
    dirs: list[bytes] = [b""]
    taken: dict[bytes, set[bytes]] = {b"": set()}
    files: list[File] = []

    def claim(parent: bytes, name: bytes) -> bytes | None:
        if name in taken[parent] or not 0 < len(name) <= NAME_MAX or name in (b".", b".."):
            return None
        taken[parent].add(name)
        return _join(parent, name)

    def add_dir(parent: bytes, name: bytes) -> None:
        rel = claim(parent, name)
        if rel is not None:
            dirs.append(rel)
            taken[rel] = set()

    def add_file(parent: bytes, name: bytes, kind: str | None = None) -> None:
        if len(files) >= MAX_FILES:
            return
        rel = claim(parent, name)
        if rel is not None:
            kind = kind or draw(st.sampled_from(KINDS))
            files.append(File(rel, kind, draw(st.integers(8, 32)), len(files)))

    for _ in range(draw(st.integers(0, 3))):
        add_dir(draw(st.sampled_from([d for d in dirs if _depth(d) < 2])), draw(NAMES))
    for _ in range(draw(st.integers(3, 12))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        add_file(parent, name)
        clash = draw(st.sampled_from(("none", "none", "none", "file", "file", "folder", "tag")))
        if clash == "none":
            continue
        sibling = name + draw(st.sampled_from(_CLASH_EXTS))
        if draw(st.booleans()):  # a case-insensitive clash: A.PNG.jpg beside a.png
            sibling = sibling.swapcase()
        if clash == "file":
            add_file(parent, sibling)
        elif clash == "folder" and _depth(parent) < 2:  # a folder b.jpg beside a file b
            add_dir(parent, sibling)
        elif clash == "tag":  # a sibling named as the input's tagged output would be
            add_file(parent, name + b".jpg", "JPEG")
            text = os.fsdecode(name)
            add_file(parent, os.fsencode(output_name(text, ".jpg", name_tag(text))), "JPEG")
    return Tree(tuple(dirs), tuple(files))


# -- runs ----------------------------------------------------------------------------------------
def build(root: bytes, tree: Tree) -> None:
    for rel in tree.dirs[1:]:
        os.mkdir(os.path.join(root, rel))
    for f in tree.files:
        with open(os.path.join(root, f.rel), "wb") as fh:
            fh.write(f.content())


def run(root: bytes, out: Path, fmt: str) -> tuple[str, dict[bytes, dict[str, Any]]]:
    """One ``process`` run: its id and the manifest's records by exact key."""
    cfg = ProcessConfig.from_mapping(
        {
            "inputs": [os.fsdecode(root)],
            "output": str(out),
            "size": [SIZE_LABEL],
            "format": fmt,
            "quiet": True,
        }
    )
    run_process(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    return str(summary["run"]), records_by_bytes(out)


def is_image_name(rel: bytes) -> bool:
    """Named as an image (``stages.steps.IMAGE_NAMES``): such a file goes to a resize worker
    unopened, and is skipped there when it holds no image."""
    name = os.fsdecode(rel.rpartition(b"/")[2])
    return os.path.splitext(name)[1].lower() in IMAGE_NAMES


def is_data_name(rel: bytes) -> bool:
    """Named as a numeric data file (``stages.sources``: such a file is read as data unless its
    content is an image, and may then be ``ok``, ``skipped`` or ``failed``)."""
    name = os.fsdecode(rel.rpartition(b"/")[2])
    return os.path.splitext(name)[1].lower() in DATA_EXTENSIONS


def output_tree(out: Path) -> dict[bytes, int]:
    """Every file below the size folder: relative to the output folder -> ``st_mtime_ns``."""
    top = os.path.join(os.fsencode(out), SIZE_LABEL.encode())
    if not os.path.isdir(top):
        return {}
    return {SIZE_LABEL.encode() + b"/" + rel: ns for rel, ns in files_below(top).items()}


def clash_without_case(a: bytes, b: bytes) -> bool:
    """Whether inputs ``a`` and ``b`` could not both exist on a case-insensitive disk: the same
    path but for case, or in folders that differ only by case (siblings are told apart without
    case by the naming rule; outputs of such inputs may meet without case, nothing else may)."""
    folder_a, folder_b = a.rpartition(b"/")[0], b.rpartition(b"/")[0]
    return a.lower() == b.lower() or (folder_a != folder_b and folder_a.lower() == folder_b.lower())


def check_outputs(
    out: Path,
    recs: dict[bytes, dict[str, Any]],
    files: dict[bytes, File],
    colours: dict[bytes, int],
) -> None:
    """Promise 2: unique output paths (also without case), each there, decoding, in its own
    input's colour; no other file in the output tree."""
    owner: dict[bytes, bytes] = {}
    owner_lower: dict[bytes, bytes] = {}
    for key, rec in recs.items():
        for o in outputs_of(rec):
            path = path_bytes(o)
            assert path.startswith(SIZE_LABEL.encode() + b"/"), (key, o)
            assert path not in owner, f"{key!r} and {owner.get(path)!r} both write {path!r}"
            owner[path] = key
            other = owner_lower.setdefault(path.lower(), key)
            assert other == key or clash_without_case(key, other), (
                f"{key!r} and {other!r} write paths equal without case: {path!r}"
            )
    for path, key in owner.items():
        full = os.path.join(os.fsencode(out), path)
        assert os.path.isfile(full), f"listed output {path!r} of {key!r} is missing"
        expected = PALETTE[colours[key]]
        got = nearest_colour(full)
        assert got == expected, (
            f"output {path!r} of {key!r} shows colour {got}, its input has {expected}"
        )
    assert set(output_tree(out)) == set(owner), "files in the output tree that no record lists"
    for key, rec in recs.items():
        f = files[key]
        if rec["status"] == "ok" and f.kind in IMAGE_KINDS:
            assert len(outputs_of(rec)) == 1, rec


def check_first_run(recs: dict[bytes, dict[str, Any]], files: dict[bytes, File]) -> None:
    """Promise 1: one record per file, each with a terminal status that fits its content."""
    assert set(recs) == set(files), (
        f"missing: {sorted(set(files) - set(recs))}, extra: {sorted(set(recs) - set(files))}"
    )
    for key, rec in recs.items():
        status = rec["status"]
        assert status in ("ok", "skipped", "failed"), rec
        if status == "skipped":
            assert rec.get("reason"), rec
        if status == "failed":
            assert rec.get("error_type"), rec
            assert rec.get("error"), rec
        f = files[key]
        if f.kind in IMAGE_KINDS:  # recognised by content, whatever its name
            assert status == "ok", rec
        elif is_data_name(key):
            continue  # read as data: ok, skipped or failed, all recorded
        else:
            assert status == "skipped", rec
            # a file named as an image is opened first by its resize worker, any other by read
            assert rec.get("stage") == ("resize" if is_image_name(key) else "read"), rec
            assert str(rec["reason"]).startswith("not an image or data file"), rec


def check_nothing_redone(
    before: dict[bytes, dict[str, Any]], after: dict[bytes, dict[str, Any]], *, but: bytes | None
) -> None:
    """Every key except ``but`` settled without work: ``reused`` (or ``skipped`` again, for an
    input a stage declined), its earlier outcome kept.

    A key that failed is redone on every run (resume redoes failures by design), and fails again.
    """
    assert set(after) == set(before)
    for key, rec in after.items():
        if key == but:
            continue
        prev = before[key]
        if prev["status"] == "failed":
            assert rec["status"] == "failed", (key, prev, rec)
            continue
        assert "redo" not in rec, (key, rec)
        if prev["status"] in ("ok", "reused"):
            assert rec["status"] == "reused", (key, prev, rec)
            assert "reason" not in rec, (key, rec)
        else:  # a stage's earlier skip of the same unchanged input is skipped again
            assert rec["status"] == "skipped", (key, prev, rec)
            assert rec["reason"] == prev["reason"], (key, prev, rec)
        assert outputs_of(rec) == outputs_of(prev), (key, prev, rec)


#: What changes before the fourth run (promise 5).
CHANGES = ("gone", "twin", "clash", "format")


def change_tree(root: bytes, files: dict[bytes, File], change: str, pick: int) -> bytes | None:
    """Make ``change`` to the tree (not ``format``): remove a file, or add a file named as an
    existing one's twin or as its output (``files`` gets it, in a colour no file has). Returns
    the key that came or went (None: nothing to change)."""
    names = sorted(files)
    base = files[names[pick % len(names)]]
    if change == "gone":
        os.unlink(os.path.join(root, base.rel))
        return base.rel
    folder, slash, name = base.rel.rpartition(b"/")
    new = name.swapcase() if change == "twin" else name + (b".jpg", b".PNG")[pick % 2]
    rel = folder + slash + new
    if new == name or len(new) > NAME_MAX or os.path.lexists(os.path.join(root, rel)):
        return None
    added = File(rel, "JPEG", 12, len(PALETTE) - 2)  # never taken: len(files) <= MAX_FILES
    with open(os.path.join(root, rel), "wb") as fh:
        fh.write(added.content())
    files[rel] = added
    return rel


def check_change(
    root: bytes,
    out: Path,
    files: dict[bytes, File],
    colours: dict[bytes, int],
    fmt: str,
    change: str,
    pick: int,
) -> None:
    """Promise 5: after ``change``, every output its record's and its input's; then stable.
    ``colours``: each key's colour now (a rewritten file's is not its ``File``'s)."""
    changed = None
    if change == "format":
        fmt = "png" if fmt != "png" else "jpeg"
    else:
        changed = change_tree(root, files, change, pick)
        if changed is None:
            return
        colours.setdefault(changed, files[changed].colour)
    _run4, recs4 = run(root, out, fmt)
    check_outputs(out, recs4, files, colours)
    if changed is not None and change == "gone":
        assert str(recs4[changed]["reason"]).startswith("input gone"), recs4[changed]
    elif changed is not None and files[changed].kind in IMAGE_KINDS:
        assert recs4[changed]["status"] == "ok", recs4[changed]
    mtimes4 = output_tree(out)
    _run5, recs5 = run(root, out, fmt)
    check_nothing_redone(recs4, recs5, but=None)
    assert output_tree(out) == mtimes4, "a run with nothing to do rewrote outputs"


def check_tree(tree: Tree, fmt: str, pick: int, rewrite: bool, change: str | None = None) -> None:
    tmp = tempfile.mkdtemp(prefix="trust-")
    try:
        root = os.path.join(os.fsencode(tmp), b"in")
        out = Path(tmp) / "out"
        os.mkdir(root)
        build(root, tree)
        files = {f.rel: f for f in tree.files}
        colours = {f.rel: f.colour for f in tree.files}

        _run1, recs1 = run(root, out, fmt)
        check_first_run(recs1, files)
        check_outputs(out, recs1, files, colours)
        mtimes1 = output_tree(out)

        _run2, recs2 = run(root, out, fmt)
        check_nothing_redone(recs1, recs2, but=None)
        assert output_tree(out) == mtimes1, "a run with nothing to do rewrote outputs"

        # one file changes: a new mtime, or new content (another colour) and a new mtime
        not_failed = [k for k in sorted(files) if recs2[k]["status"] != "failed"]
        if not not_failed:
            return
        touched = files[not_failed[pick % len(not_failed)]]
        path = os.path.join(root, touched.rel)
        st_before = os.stat(path)
        if rewrite and touched.kind in IMAGE_KINDS:
            colours[touched.rel] = len(PALETTE) - 1  # never taken: len(files) <= MAX_FILES
            with open(path, "wb") as fh:
                fh.write(touched.content(colours[touched.rel]))
        new_ns = st_before.st_mtime_ns + 1_000_000_007
        os.utime(path, ns=(new_ns, new_ns))

        run3, recs3 = run(root, out, fmt)
        rec = recs3[touched.rel]
        assert rec["run"] == run3, rec
        assert str(rec.get("redo", "")).startswith("input changed"), rec
        if touched.kind in IMAGE_KINDS:
            assert rec["status"] == "ok", rec
        check_nothing_redone(recs2, recs3, but=touched.rel)
        check_outputs(out, recs3, files, colours)
        redone = {path_bytes(o) for o in outputs_of(rec)}
        mtimes3 = output_tree(out)
        for p, ns in mtimes1.items():
            if p not in redone:
                assert mtimes3.get(p) == ns, f"output {p!r} of another key was rewritten"
        if change is not None:
            check_change(root, out, files, colours, fmt, change, pick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# deliberate clashes, always run (named after the naming rule's own examples)
_CLASHES = Tree(
    dirs=(b"", b"sub", b"sub/b.jpg"),
    files=(
        File(b"a.gif", "GIF", 12, 0),
        File(b"a.gif.jpg", "JPEG", 20, 1),
        File(b"a.png", "PNG", 9, 2),
        File(b"A.PNG.jpg", "JPEG", 30, 3),
        File(b"x", "WEBP", 16, 4),
        File(b"x.jpg", "PNG", 24, 5),
        File(b"sub/b", "JPEG", 10, 6),
        File(b"sub/b.jpg/inner.png", "PNG", 11, 7),
        File(b"caf\xe9.gif", "GIF", 13, 8),
        File(b"caf\xe9.gif.PNG", "PNG", 14, 9),
        File(b"L" * 251 + b".gif", "GIF", 15, 10),
        File(b"\xe9" * 255, "JPEG", 17, 11),
        File(b"notes.jpg", "text", 8, 12),
        File(b"empty.png", "empty", 8, 13),
    ),
)
_DATA_NAMED_IMAGE = Tree(
    dirs=(b"",),
    files=(File(b"c.csv", "JPEG", 12, 0), File(b"c.csv.jpg", "JPEG", 12, 1)),
)
_BACKSLASH = Tree(
    dirs=(b"", b"a"),
    files=(
        File(b"a\\b.png", "PNG", 12, 0),
        File(b"a/b.png", "PNG", 12, 1),
        File(b"\\", "JPEG", 12, 2),
        File(b"..\\up.gif", "GIF", 12, 3),
    ),
)
_TAG_LOOKALIKE = Tree(
    dirs=(b"",),
    files=(
        File(b"a.gif", "GIF", 12, 0),
        File(b"a.gif.jpg", "JPEG", 12, 1),
        File(os.fsencode(output_name("a.gif", ".jpg", name_tag("a.gif"))), "JPEG", 12, 2),
    ),
)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["jpeg", "keep"])
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
@given(
    tree=trees(),
    pick=st.integers(0, 50),
    rewrite=st.booleans(),
    change=st.sampled_from(CHANGES),
)
@example(tree=_CLASHES, pick=0, rewrite=True, change="clash")
@example(tree=_CLASHES, pick=3, rewrite=False, change="gone")
@example(tree=_DATA_NAMED_IMAGE, pick=0, rewrite=False, change="twin")
@example(tree=_TAG_LOOKALIKE, pick=0, rewrite=False, change="format")
@example(tree=_BACKSLASH, pick=0, rewrite=False, change="twin")
def test_every_name_gets_one_record_its_own_output_and_no_redo(
    fmt: str, tree: Tree, pick: int, rewrite: bool, change: str
) -> None:
    check_tree(tree, fmt, pick, rewrite, change)


def test_the_tree_strategy_makes_clashes_and_wild_names() -> None:
    """The generator itself: the clash shapes and byte names the property relies on occur."""
    seen: dict[str, bool] = {"non_utf8": False, "long": False, "clash": False, "folder": False}

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(tree=trees())
    def look(tree: Tree) -> None:
        names = [f.rel.rpartition(b"/")[2] for f in tree.files]
        lower = {n.lower() for n in names} | {d.rpartition(b"/")[2].lower() for d in tree.dirs}
        for n in names:
            try:
                n.decode("utf-8")
            except UnicodeDecodeError:
                seen["non_utf8"] = True
            seen["long"] |= len(n) > 240
            seen["clash"] |= any(n.lower() + e in lower for e in (b".jpg", b".png", b".webp"))
        seen["folder"] |= len(tree.dirs) > 1
        assert len(tree.files) <= MAX_FILES
        assert len({f.rel for f in tree.files}) == len(tree.files)
        for f in tree.files:
            assert all(0 < len(part) <= NAME_MAX for part in f.rel.split(b"/"))

    look()
    assert all(seen.values()), seen
