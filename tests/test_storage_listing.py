"""The remote walk's listing on a real S3 API (moto's server): page by page (``PAGE_KEYS`` set
low), subfolders walked as the listing meets them, a folder's names spilled to a temporary
SQLite file above ``SPILL_NAMES`` (set low) with the same keys, tags and identities as in memory
and as the local walk of the same tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.asyn import sync

import stages.remote_sources as remote
import stages.storage as storage
from pipeline import Item, Record
from stages.naming import OUTPUT_EXTENSIONS, Folder, choose_tag, name_tag, written_as
from stages.sources import walk_inputs
from stages.storage import ObjectInfo, StorageURL, iter_folder, list_folder
from tests.s3_server import S3, s3

pytestmark = pytest.mark.timeout(60)

#: A folder whose names need tags (rule 3): a.gif beside a.gif.jpg, B.PNG beside b.png.jpg,
#: e.jpg beside a folder e.jpg.png/; more files and subfolders than a page (PAGE = 50).
COLLISIONS = ["a.gif", "a.gif.jpg", "B.PNG", "b.png.jpg", "c.png", "e.jpg", "e.jpg.png/x.jpg"]
TREE = [
    *COLLISIONS,
    *(f"f{i:03}.png" for i in range(70)),
    *(f"d{i:03}/x.png" for i in range(60)),
    "d000/deep/a.gif",
    "d000/deep/A.GIF.WEBP",
    *("t.jpg", "T.JPG", "P/x.png", "p/x.png"),  # twins: one where case is ignored
    ".pipeline/manifest.jsonl",
]
PAGE = 50


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3]:
    with s3(tmp_path) as srv:
        yield srv


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Pages of PAGE keys; each ListObjectsV2 request made, in order."""
    made: list[dict[str, Any]] = []
    real = storage._list_page

    def counted(fs: Any, request: dict[str, Any]) -> dict[str, Any]:
        made.append(dict(request))
        return real(fs, request)

    monkeypatch.setattr(storage, "PAGE_KEYS", PAGE)
    monkeypatch.setattr(storage, "_list_page", counted)
    return made


@pytest.fixture
def spill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the spill files go to; a folder's names spill above 10."""
    folder = tmp_path / "spill"
    folder.mkdir()
    monkeypatch.setattr(remote.tempfile, "tempdir", str(folder))
    monkeypatch.setattr(remote, "SPILL_NAMES", 10)
    return folder


def put(server: S3, url: str, rels: list[str]) -> StorageURL:
    server.bucket(url.removeprefix("s3://").partition("/")[0])
    server.fs().pipe({f"{url}/{rel}": rel.encode() * 3 for rel in rels})
    return StorageURL(url + "/", server.options)


def walk(root: str | Path) -> tuple[dict[str, str | None], list[str]]:
    """Key -> tag of each item, and every key in the order walked."""
    tags: dict[str, str | None] = {}
    order: list[str] = []
    for out in walk_inputs([root]):
        order.append(out.key)
        if isinstance(out, Item):
            tags[out.key] = out.value.tag  # type: ignore[attr-defined]
    return tags, order


def places(root: str | Path) -> dict[str, str]:
    """Key -> the item's place below the size folders."""
    return {o.key: o.value.rel for o in walk_inputs([root]) if isinstance(o, Item)}


def identities(root: str) -> dict[str, dict[str, Any]]:
    return {o.key: o.identity for o in walk_inputs([root]) if isinstance(o, Item)}


def test_a_paged_listing_gives_what_ls_gives(server: S3, calls: list[dict[str, Any]]) -> None:
    rels = [f"k{i:03}.jpg" for i in range(120)] + [f"s{i:03}/x.jpg" for i in range(60)]
    url = put(server, "s3://pix-list/p", rels)
    fs = server.fs()
    for marker in ("p/", "p/s000/"):  # folder markers: left out of both
        sync(fs.loop, fs._call_s3, "put_object", Bucket="pix-list", Key=marker, Body=b"")
    paged = list(iter_folder(url))
    assert len(calls) == 4  # 180 entries, 50 a page
    assert [c.get("ContinuationToken") is None for c in calls] == [True, False, False, False]
    files, folders = list_folder(url)
    assert [o for o in paged if isinstance(o, ObjectInfo)] == files  # identity, size, URL
    assert [o for o in paged if not isinstance(o, ObjectInfo)] == folders
    assert files[0].identity == {"size": 24, "etag": files[0].identity["etag"]}
    assert all(f.options == server.options for f in folders)


def test_the_walk_yields_before_the_listing_is_done(
    server: S3, calls: list[dict[str, Any]], spill: Path
) -> None:
    url = put(server, "s3://pix-list/flat", [f"f{i:03}.png" for i in range(120)])
    items = walk_inputs([url])
    first = next(items)
    assert first.key == "f000.png"
    assert len(calls) == 3 + 1  # the names pass, then the walk's first page
    assert len(list(spill.iterdir())) == 1  # the names are on disk
    rest = list(items)
    assert len(rest) == 119
    assert len(calls) == 3 + 3
    assert list(spill.iterdir()) == []  # removed with the folder
    # a walk stopped early removes its spill file too
    items = walk_inputs([url])
    next(items)
    items.close()
    assert list(spill.iterdir()) == []


@pytest.mark.parametrize("spill_at", [10_000, 10], ids=["in-memory", "spilled"])
def test_keys_tags_and_identities_are_the_same_in_memory_spilled_and_local(
    server: S3,
    calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    spill_at: int,
) -> None:
    url = put(server, "s3://pix-list/tree", TREE)
    local = tmp_path / "local"  # the local walk skips a folder holding .pipeline/, not it
    for rel in TREE[:-1]:
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(rel.encode() * 3)
    expected, local_order = walk(local)
    monkeypatch.setattr(remote, "SPILL_NAMES", spill_at)
    tags, order = walk(url)
    assert tags == expected
    # the store's key order, depth first; another run's ledger is skipped, not walked
    assert order == sorted(order) == sorted([*local_order, ".pipeline/"])
    for name in ("a.gif", "B.PNG", "e.jpg", "d000/deep/a.gif"):
        tag = tags[name]
        assert tag is not None, name
        assert name_tag(name.rpartition("/")[2], 40).startswith(tag), name
    for name in ("a.gif.jpg", "b.png.jpg", "c.png", "f000.png", "d000/deep/A.GIF.WEBP"):
        assert tags[name] is None, name
    where = places(url)
    assert where == places(local)
    assert where["t.jpg"] == f"t~{name_tag('t.jpg')}.jpg"  # twins: each under its tagged name
    assert where["T.JPG"] == f"T~{name_tag('T.JPG')}.JPG"
    assert where["f000.png"] == "f000.png"
    assert where["P/x.png"] == f"P~{name_tag('P')}/x.png"
    assert where["p/x.png"] == f"p~{name_tag('p')}/x.png"
    assert where["d000/x.png"] == "d000/x.png"
    monkeypatch.setattr(remote, "SPILL_NAMES", 10_000)
    in_memory = identities(url)
    monkeypatch.setattr(remote, "SPILL_NAMES", spill_at)
    assert identities(url) == in_memory
    files, _ = list_folder(url)
    assert {o.rel: o.identity for o in files} == {
        k: v for k, v in in_memory.items() if "/" not in k
    }


def test_a_skipped_record_is_still_a_record(server: S3) -> None:
    url = put(server, "s3://pix-list/led", ["x.png", ".pipeline/m.jsonl"])
    out = list(walk_inputs([url]))
    assert [type(o) for o in out] == [Record, Item]


def test_a_listing_that_fails_midway_raises_and_leaves_no_spill_file(
    server: S3, calls: list[dict[str, Any]], spill: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = put(server, "s3://pix-gone/flat", [f"f{i:03}.png" for i in range(120)])
    listing = storage._list_page

    def bucket_gone_after_one_page(fs: Any, request: dict[str, Any]) -> dict[str, Any]:
        if "ContinuationToken" in request:  # the store loses the bucket mid-listing
            gone = server.fs()
            gone.rm("pix-gone", recursive=True)
        return listing(fs, request)

    monkeypatch.setattr(storage, "_list_page", bucket_gone_after_one_page)
    with pytest.raises(FileNotFoundError):
        list(walk_inputs([url]))
    assert list(spill.iterdir()) == []


def test_the_spilled_names_answer_as_the_folder_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a.gif", "A.GIF.JPG", "Ünï.PNG", "ünï.png.webp", "x", "x.avif.png", "dir.jpg"]
    names += ["A.GIF", "Ünï.png"]  # twins of names above
    monkeypatch.setattr(remote.tempfile, "tempdir", str(tmp_path))
    spilled = remote.SpilledNames()
    try:
        spilled.add(iter(names))
        memory = Folder(names)
        taken = {n.lower() + ext for n in names for ext in ("", *OUTPUT_EXTENSIONS)}
        probes = {p for n in taken for p in (n, n + ".jpg", n.upper(), n[:-1])}
        for probe in sorted(probes | {"", ".jpg", "nothing"}):
            assert spilled.is_name(probe) == memory.is_name(probe), probe
            assert spilled.is_taken(probe) == memory.is_taken(probe), probe
        for name in names:
            assert choose_tag(name, spilled) == choose_tag(name, memory), name
            assert written_as(name, spilled) == written_as(name, memory), name
        assert [n for n in names if spilled.is_twin(n)] == ["a.gif", "Ünï.PNG", "A.GIF", "Ünï.png"]
        assert not spilled.is_twin("nothing")
    finally:
        spilled.close()
    assert list(tmp_path.iterdir()) == []
