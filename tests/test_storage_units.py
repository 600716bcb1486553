"""stages.storage and the options' side of it, without a server: a URL's options never shown,
carried through pickling; --storage-options parsed as JSON or TOML; the command line in the lock
file hides them; output keys cannot leave their prefix; memory:// in and out through the
Python API (another fsspec file system than S3)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from app.config import ProcessConfig
from app.process import run_process
from app.storage_config import shown_argv
from pipeline import Item, Record, Status
from stages.storage import (
    StorageError,
    StorageURL,
    is_url,
    join_url,
    options_of,
    parse_options,
    present_size,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "sample_data" / "images"
SECRET = "units-secret-0123456789"


def test_a_storage_url_shows_the_url_only_and_pickles_with_its_options() -> None:
    url = StorageURL("s3://b/p/", {"secret": SECRET, "client_kwargs": {"region_name": "x"}})
    assert url == "s3://b/p/"
    assert SECRET not in repr(url) + str(url) + f"{url}"
    back = pickle.loads(pickle.dumps(url))
    assert isinstance(back, StorageURL)
    assert back.options == url.options
    assert options_of(join_url(url, "64/a.jpg"))["secret"] == SECRET


def test_the_config_repr_never_shows_storage_options(tmp_path: Path) -> None:
    cfg = ProcessConfig(
        inputs=(str(IMAGES),), output=str(tmp_path / "o"), storage_options={"secret": SECRET}
    )
    assert SECRET not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"anon": true}', {"anon": True}),
        (
            'profile = "lab"\n[client_kwargs]\nendpoint_url = "http://x"',
            {"profile": "lab", "client_kwargs": {"endpoint_url": "http://x"}},
        ),
    ],
)
def test_storage_options_are_json_or_toml(text: str, expected: dict[str, object]) -> None:
    assert parse_options(text) == expected


@pytest.mark.parametrize("text", ["{nope", "[1, 2]", "= x"])
def test_storage_options_that_are_neither_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        parse_options(text)


def test_the_lock_files_command_line_hides_storage_options() -> None:
    argv = ["x", "--storage-options", SECRET, "--storage-options=" + SECRET, "-o", "out"]
    shown = shown_argv(argv)
    assert SECRET not in " ".join(shown)
    assert shown[-2:] == ["-o", "out"]


@pytest.mark.parametrize("rel", ["../x.jpg", "/abs.jpg", "a//b.jpg", "a/./b.jpg", ""])
def test_an_output_key_cannot_leave_its_prefix(rel: str) -> None:
    with pytest.raises(StorageError, match="plain relative path"):
        join_url("s3://b/out", rel)


def test_what_is_a_url() -> None:
    for url in ("s3://b/k", "file:///tmp/x", "memory://x"):
        assert is_url(url)
    for path in ("/tmp/x", "photos/", "C:\\x"):
        assert not is_url(path)


@pytest.mark.timeout(60)
def test_memory_urls_in_and_out_through_the_python_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    monkeypatch.setenv("PIXPIPE_WORK_DIR", str(tmp_path / "work"))
    fs = fsspec.filesystem("memory")
    for path in IMAGES.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/units-in/{path.relative_to(IMAGES).as_posix()}", path.read_bytes())
    try:
        cfg = ProcessConfig(
            inputs=("memory://units-in/",),
            output="memory://units-out",
            size=("32",),
            quiet=True,
            workers={"resize": 1},
        )
        result = run_process(cfg)
        n = sum(1 for p in IMAGES.rglob("*") if p.is_file())
        assert result.ok == n
        stored = fs.find("/units-out")
        assert sum(1 for k in stored if k.startswith("/units-out/32/")) == n
        assert "/units-out/manifest.jsonl" in stored
        assert "/units-out/summary.json" in stored
    finally:
        for root in ("/units-in", "/units-out"):
            if fs.exists(root):
                fs.rm(root, recursive=True)


def test_resume_checks_list_each_output_folder_once_per_run() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/units-present/64/a.jpg", b"x" * 5)
    fs.pipe_file("/units-present/64/b.jpg", b"")
    try:
        run_root = StorageURL("memory://units-present", {})
        assert present_size(run_root, "64/a.jpg") == 5
        assert present_size(run_root, "64/b.jpg") == 0
        assert present_size(run_root, "64/c.jpg") is None
        assert present_size(run_root, "128/a.jpg") is None  # no such folder
        fs.rm_file("/units-present/64/a.jpg")
        assert present_size(run_root, "64/a.jpg") == 5  # this run's listing of 64/
        assert present_size(StorageURL("memory://units-present", {}), "64/a.jpg") is None
    finally:
        fs.rm("/units-present", recursive=True)


def test_a_folder_over_the_listing_cap_is_asked_object_by_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resume checks of an output folder bigger than LISTING_MAX keep no listing of it (memory
    stays bounded whatever the folder's size): each output is asked for by itself."""
    import fsspec

    import stages.storage as storage

    monkeypatch.setattr(storage, "LISTING_MAX", 3)
    fs = fsspec.filesystem("memory")
    for i in range(5):
        fs.pipe_file(f"/units-big/64/{i}.jpg", b"x" * (i + 1))
    fs.pipe_file("/units-big/32/a.jpg", b"xy")
    try:
        run_root = StorageURL("memory://units-big", {})
        assert [present_size(run_root, f"64/{i}.jpg") for i in range(5)] == [1, 2, 3, 4, 5]
        assert present_size(run_root, "64/9.jpg") is None
        assert present_size(run_root, "32/a.jpg") == 2
        assert run_root.listings == {
            "memory://units-big/64": None,
            "memory://units-big/32": {"a.jpg": 2},
        }
        fs.rm_file("/units-big/64/0.jpg")  # asked again: the big folder's answers are live
        assert present_size(run_root, "64/0.jpg") is None
    finally:
        fs.rm("/units-big", recursive=True)


def test_npz_objects_walk_as_one_item_per_array_and_a_broken_one_fails() -> None:
    """An .npz object is walked as a local one: one item per array from its zip directory; an
    object that is no zip is a failed record naming why; an image named .npz is an image."""
    import fsspec

    from stages.sources import DATA_EXTENSIONS, DataFile, SourceFile, walk_inputs

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/units-npz/arrays.npz", (ROOT / "sample_data/data/arrays.npz").read_bytes())
    fs.pipe_file("/units-npz/broken.npz", b"not a zip at all")
    jpeg = next((ROOT / "sample_data/images").glob("*.jpg")).read_bytes()
    fs.pipe_file("/units-npz/photo.npz", jpeg)
    try:
        found = list(walk_inputs(["memory://units-npz/"], data_extensions=DATA_EXTENSIONS))
        by_key = {x.key: x for x in found}
        assert sorted(by_key) == [
            "arrays.npz:counts",
            "arrays.npz:weights",
            "broken.npz",
            "photo.npz",
        ]
        counts = by_key["arrays.npz:counts"]
        assert isinstance(counts, Item)
        assert isinstance(counts.value, DataFile)
        assert counts.value.member == "counts.npy"
        broken = by_key["broken.npz"]
        assert isinstance(broken, Record)
        assert broken.status is Status.FAILED
        assert "not a readable .npz" in (broken.error or "")
        photo = by_key["photo.npz"]
        assert isinstance(photo, Item)
        assert isinstance(photo.value, SourceFile)
    finally:
        fs.rm("/units-npz", recursive=True)


@pytest.mark.timeout(60)
def test_an_unreachable_endpoint_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port on this machine where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "process",
            "s3://nowhere/in/",
            "-o",
            str(tmp_path),
            "--storage-options",
            json.dumps(opts),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach s3://nowhere/in/" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_journal_mirror_outlives_an_error_of_the_stores_own() -> None:
    """botocore's EndpointConnectionError (the store unreachable for a while) is no OSError: the
    mirror thread died of the first, and the journal was never uploaded again, so a resume
    from another machine redid everything. It now tries again at the next period."""
    import threading
    import types

    from app.remote_output import _Mirror

    class EndpointConnectionError(Exception):  # as botocore's: not an OSError
        pass

    calls: list[int] = []
    stop = threading.Event()

    def upload_journal() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise EndpointConnectionError("Could not connect to the endpoint URL")
        stop.set()

    mirror = types.SimpleNamespace(url="s3://bucket/out", upload_journal=upload_journal)
    thread = threading.Thread(target=_Mirror.every, args=(mirror, stop, 0.01), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(calls) == 2
