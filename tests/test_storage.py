"""Object storage in and out (stages.storage, app.remote_output) against a real S3 API server
on 127.0.0.1 (moto), through the real command line in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.s3_server import KEY, ROOT, S3, SECRET, decodes, s3

IMAGES = ROOT / "sample_data" / "images"
DATA = ROOT / "sample_data" / "data"
N_IMAGES = sum(1 for p in IMAGES.rglob("*") if p.is_file())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3]:
    with s3(tmp_path) as srv:
        yield srv


def run(srv: S3, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pipeline", "process", *args]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=srv.env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def manifest(srv: S3, url: str) -> dict[str, dict[str, Any]]:
    recs = srv.records(url)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "a key twice in the manifest"
    return {r["key"]: r for r in recs}


def upload_inputs(srv: S3) -> str:
    srv.bucket("pix-in")
    srv.put_tree(IMAGES, "s3://pix-in/photos")
    srv.put_tree(DATA, "s3://pix-in/photos/data")
    return "s3://pix-in/photos/"


def process(
    srv: S3, inputs: str, output: str, *more: str, **env: str
) -> subprocess.CompletedProcess[str]:
    opts = ("--storage-options", srv.options_json)
    sizes = () if "--size" in more else ("--size", "64")
    return run(srv, inputs, "-o", output, *opts, *sizes, *more, **env)


@pytest.mark.timeout(180)
def test_s3_to_s3_outputs_whole_manifest_complete_and_no_secret_anywhere(server: S3) -> None:
    src = upload_inputs(server)
    server.bucket("pix-out")
    out = "s3://pix-out/run1"
    done = process(server, src, out)
    assert done.returncode == 0, done.stderr
    # the end of the run names where everything went: the URL, then the local working copies
    assert f"stored:   {out}/  (the images" in done.stderr
    # the report named is the stored one: the working copy's thumbnails are not beside it
    assert f"report:   {out}/report.html  (its thumbnails are beside it there)" in done.stderr
    # `failures URL` reads this machine's working copy of the run's files (it said "no manifest")
    listed = subprocess.run(
        [sys.executable, "-m", "pipeline", "failures", out, "--status", "skipped"],
        cwd=ROOT,
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.strip().startswith("0 skipped input(s) in ")
    elsewhere = subprocess.run(
        [sys.executable, "-m", "pipeline", "failures", out],
        cwd=ROOT,
        env=server.env(PIXPIPE_WORK_DIR=str(ROOT / "nowhere-such")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert elsewhere.returncode == 2
    assert f"no manifest of {out} on this machine" in elsewhere.stderr
    recs = manifest(server, out)
    inputs = {k for k in server.objects(src)}
    # every object one record: images ok, the .npy and .csv ok (data); the .npz one per array
    assert {k for k in recs} >= inputs - {"data/arrays.npz"}
    for name in ("counts", "weights"):
        array = recs[f"data/arrays.npz:{name}"]
        assert array["status"] == "ok", array
        assert array["result"]["format"] == "npz"
    images = {k: r for k, r in recs.items() if not k.startswith("data/")}
    assert len(images) == N_IMAGES
    assert all(r["status"] == "ok" for r in images.values()), images
    assert recs["data/sensors.csv"]["status"] == "ok"
    assert recs["data/temperature_grid.npy"]["status"] == "ok"
    # identity from the listing: size + ETag; source the bare URL
    one = images["640x480_rgb.jpg"]
    assert set(one["identity"]) == {"size", "etag"}
    assert one["source"] == "s3://pix-in/photos/640x480_rgb.jpg"
    # every output listed is an object that decodes whole, at its recorded size
    stored = server.objects(out)
    for rec in images.values():
        for o in rec["result"]["outputs"]:
            data = server.read(f"{out}/{o['path']}")
            assert decodes(data) == (o["width"], o["height"])
            assert stored[o["path"]] == o["bytes"]
    # the run's own files mirrored below the output
    for name in ("manifest.jsonl", "summary.json", "report.html", ".pipeline/ledger.sqlite"):
        assert stored.get(name, 0) > 0, name
    assert json.loads(server.read(f"{out}/summary.json"))["finished"] is True
    # the secret key: not in what the run printed, wrote locally or stored
    assert SECRET not in done.stdout + done.stderr
    verbose = run(
        server,
        "--verbose",
        src,
        "-o",
        out,
        "--storage-options",
        server.options_json,
        "--size",
        "64",
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG" in verbose.stderr  # pixpipe's own debug lines, none of the clients'
    assert SECRET not in verbose.stdout + verbose.stderr
    assert KEY not in verbose.stdout + verbose.stderr
    for path in server.work.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for name in stored:
        if not name.endswith((".jpg", ".png", ".webp")):
            assert SECRET.encode() not in server.read(f"{out}/{name}"), name


@pytest.mark.timeout(240)
def test_a_rerun_redoes_nothing_and_an_edited_object_is_redone(server: S3) -> None:
    src = upload_inputs(server)
    server.bucket("pix-out")
    out = "s3://pix-out/run"
    assert process(server, src, out).returncode == 0
    again = process(server, src, out)
    assert again.returncode == 0, again.stderr
    recs = manifest(server, out)
    assert {r["status"] for r in recs.values()} == {"reused"}
    # the same from a fresh machine: another working folder, the journal from the output
    fresh = process(server, src, out, PIXPIPE_WORK_DIR=str(server.work / "elsewhere"))
    assert fresh.returncode == 0, fresh.stderr
    recs = manifest(server, out)
    assert {r["status"] for r in recs.values()} == {"reused"}
    # an edited object (a new ETag) is redone; an output gone is redone
    edited = (IMAGES / "600x400_gray.jpg").read_bytes() + b"\0"
    server.fs().pipe_file("pix-in/photos/640x480_rgb.jpg", edited)
    gone = recs["300x300_small.png"]["result"]["outputs"][0]["path"]
    server.fs().rm_file(f"pix-out/run/{gone}")
    # and an output object cut short (written over by another program, say)
    short = recs["1200x800_landscape.jpg"]["result"]["outputs"][0]
    server.fs().pipe_file(f"pix-out/run/{short['path']}", b"\xff\xd8 not the thumbnail")
    third = process(server, src, out)
    assert third.returncode == 0, third.stderr
    recs = manifest(server, out)
    assert recs["640x480_rgb.jpg"]["status"] == "ok"
    assert recs["640x480_rgb.jpg"]["result"]["original"]["width"] == 600
    assert recs["300x300_small.png"]["status"] == "ok"
    assert server.objects(out)[gone] > 0
    assert recs["1200x800_landscape.jpg"]["redo"] == "earlier outputs missing or changed"
    assert server.objects(out)[short["path"]] == short["bytes"]
    others = {k for k, r in recs.items() if r["status"] == "ok"}
    assert others == {"640x480_rgb.jpg", "300x300_small.png", "1200x800_landscape.jpg"}
    # an input object deleted: its record says so and keeps its outputs
    server.fs().rm_file("pix-in/photos/900x600.webp")
    fourth = process(server, src, out)
    assert fourth.returncode == 0, fourth.stderr
    gone_rec = manifest(server, out)["900x600.webp"]
    assert gone_rec["status"] == "skipped"
    assert gone_rec["reason"].startswith("input gone")
    assert all(o["path"] in server.objects(out) for o in gone_rec["result"]["outputs"])
    # another format: the objects it replaces are removed from the store (the gone input's
    # are kept); every image object is one a record lists
    fifth = process(server, src, out, "--format", "png")
    assert fifth.returncode == 0, fifth.stderr
    assert "removed: " in fifth.stderr
    recs = manifest(server, out)
    paths = {
        k: [o["path"] for o in (r.get("result") or {}).get("outputs", [])] for k, r in recs.items()
    }
    stored = {k for k in server.objects(out) if k.startswith("64/")}
    assert stored == {p for listed in paths.values() for p in listed}
    assert all(p.endswith(".png") for k, ps in paths.items() if k != "900x600.webp" for p in ps)


# -- the extra missing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "url", "says"),
    [
        ("s3fs", "s3://pix-in/photos/", "pip install 'pixpipe[s3]'"),
        ("fsspec", "s3://pix-in/photos/", "pip install 'pixpipe[s3]'"),
        (None, "gs://pix-in/photos/", "pip install gcsfs"),
    ],
)
def test_a_url_without_its_package_is_a_usage_error_naming_the_extra(
    tmp_path: Path, module: str | None, url: str, says: str
) -> None:
    """s3fs / fsspec made missing for the subprocess (a module on the path that fails to
    import, as a missing one does); gcsfs is not installed at all."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    if module is not None:
        (shadow / f"{module}.py").write_text(f'raise ImportError("No module named {module}")\n')
    env = {**S3("http://127.0.0.1:1", tmp_path / "work").env()}
    env["PYTHONPATH"] = f"{shadow}:{ROOT}"
    for args in ([url, "-o", str(tmp_path / "out")], [str(IMAGES), "-o", url.replace("in", "out")]):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "process", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert says in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# -- Ctrl-C ----------------------------------------------------------------------------------------
def _wait(cond: Any, what: str, proc: subprocess.Popen[str], limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.05)


def _many_in_bucket(server: S3, tmp_path: Path, copies: int, name: str) -> tuple[int, str]:
    """``copies`` folders of the sample images in ``s3://pix-in/many/``; the number of objects
    and an output URL ``s3://pix-out/<name>``."""
    many = tmp_path / "many"
    for i in range(copies):
        (many / f"d{i}").mkdir(parents=True, exist_ok=True)
        for img in sorted(IMAGES.glob("*.jpg")):
            (many / f"d{i}" / img.name).write_bytes(img.read_bytes())
    server.bucket("pix-in")
    total = server.put_tree(many, "s3://pix-in/many")
    server.bucket("pix-out")
    return total, f"s3://pix-out/{name}"


def _slow_run(server: S3, out: str) -> list[str]:
    """The command of a run s3://pix-in/many/ -> ``out`` with one worker and two sizes."""
    return server.argv(
        "s3://pix-in/many/", out, *("--size", "256", "--size", "64", "--workers", "1")
    )


@pytest.mark.timeout(240)
def test_sigint_mid_run_leaves_no_partial_object_and_the_rerun_finishes(
    server: S3, tmp_path: Path
) -> None:
    total, out = _many_in_bucket(server, tmp_path, 30, "cut")
    argv = _slow_run(server, out)
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait(lambda: len(server.objects(out)) >= 6, "outputs", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    stored = server.objects(out)
    run_files = {"manifest.jsonl", "summary.json", "report.html"}
    outputs = {k: n for k, n in stored.items() if k.split("/")[0] in ("256", "64")}
    assert 0 < len(outputs) < 2 * total
    for key in outputs:  # every output object whole: it decodes to the end
        decodes(server.read(f"{out}/{key}"))
    uploads = server.fs().call_s3("list_multipart_uploads", Bucket="pix-out")
    assert not uploads.get("Uploads"), "an unfinished multipart upload was left behind"
    assert run_files <= set(stored)
    recs = manifest(server, out)  # the inputs seen so far, each once (the rest never listed)
    assert 0 < len(recs) <= total
    assert json.loads(server.read(f"{out}/summary.json"))["inputs_seen"] == len(recs)
    assert {r["status"] for r in recs.values()} <= {"ok", "cancelled"}
    for r in recs.values():
        if r["status"] == "ok":
            assert all(o["path"] in outputs for o in r["result"]["outputs"])
    again = process(server, "s3://pix-in/many/", out, "--size", "256", "--size", "64")
    assert again.returncode == 0, again.stderr
    recs = manifest(server, out)
    assert len(recs) == total
    assert {r["status"] for r in recs.values()} <= {"ok", "reused"}
    assert sum(r["status"] == "reused" for r in recs.values()) > 0


def _mirrored_done(server: S3, out: str, tmp_path: Path) -> int:
    """Records in the journal uploaded to ``out`` (0 before the first upload)."""
    if ".pipeline/ledger.sqlite" not in server.objects(out):
        return 0
    copy = tmp_path / "mirrored.sqlite"
    copy.write_bytes(server.read(f"{out}/.pipeline/ledger.sqlite"))
    with contextlib.closing(sqlite3.connect(copy)) as db:
        return int(db.execute("SELECT count(*) FROM records WHERE status = 'ok'").fetchone()[0])


# -- a crash, resumed from another machine ---------------------------------------------------------
@pytest.mark.timeout(240)
def test_a_killed_run_resumes_from_the_mirrored_journal_on_a_fresh_machine(
    server: S3, tmp_path: Path
) -> None:
    total, out = _many_in_bucket(server, tmp_path, 16, "crash")
    argv = [*_slow_run(server, out), "--mirror-every", "0.5"]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=server.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # the mirrored journal holds done records (the outputs are written before their
        # records reach the ledger, so an upload can come before any record)
        _wait(
            lambda: (
                _mirrored_done(server, out, tmp_path) > 0
                and ".pipeline/inputs.json" in server.objects(out)
            ),  # sent after the journal
            "a journal with records, and the inputs file",
            proc,
        )
        os.killpg(proc.pid, signal.SIGKILL)  # the machine is lost: nothing runs at the end
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    stored = server.objects(out)
    assert "manifest.jsonl" not in stored  # the end of the run never came
    done_before = {k for k in stored if k.startswith("256/")}
    assert done_before
    # another machine: a fresh working folder; it takes the journal from the output
    again = process(
        server,
        "s3://pix-in/many/",
        out,
        "--size",
        "256",
        "--size",
        "64",
        PIXPIPE_WORK_DIR=str(tmp_path / "other-machine"),
    )
    assert again.returncode == 0, again.stderr
    recs = manifest(server, out)
    assert len(recs) == total
    reused = [r for r in recs.values() if r["status"] == "reused"]
    assert reused, "nothing of the killed run was reused"
    assert {r["status"] for r in recs.values()} <= {"ok", "reused"}
    for r in reused:  # what the journal held as done has its outputs in the store
        assert all(o["path"] in stored for o in r["result"]["outputs"])


# -- mixed: one side local -------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["s3-to-folder", "folder-to-s3", "s3-to-file-url"])
def test_one_side_local_the_other_a_url(server: S3, tmp_path: Path, case: str) -> None:
    server.bucket("pix-in")
    server.put_tree(IMAGES, "s3://pix-in/photos")
    server.bucket("pix-out")
    src, out = {
        "s3-to-folder": ("s3://pix-in/photos/", str(tmp_path / "out")),
        "folder-to-s3": (str(IMAGES), "s3://pix-out/mixed"),
        "s3-to-file-url": ("s3://pix-in/photos/", f"file://{tmp_path}/out"),
    }[case]
    done = process(server, src, out)
    assert done.returncode == 0, done.stderr
    if out.startswith("s3://"):
        recs = manifest(server, out)
        stored = server.objects(out)
        assert f"manifest, summary and report are in {out}" in done.stderr
    else:
        folder = tmp_path / "out"
        recs = {
            r["key"]: r
            for r in map(json.loads, (folder / "manifest.jsonl").read_text().splitlines())
        }
        stored = {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in folder.rglob("*")
            if p.is_file()
        }
    assert len(recs) == N_IMAGES
    assert {r["status"] for r in recs.values()} == {"ok"}
    for r in recs.values():
        assert all(stored.get(o["path"]) == o["bytes"] for o in r["result"]["outputs"])
    assert "summary.json" in stored


# -- URL lists and tables at storage URLs ----------------------------------------------------------
def test_url_lists_and_tables_at_storage_urls(server: S3, tmp_path: Path) -> None:
    """A text list and a Parquet table in the bucket, naming images the S3 server also serves
    over plain HTTP (path-style URLs): downloaded, resized, written to the bucket."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    server.bucket("pix-in")
    fs = server.fs()
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))
    for n in names:  # readable without keys, as public images are
        fs.pipe_file(f"pix-in/public/{n}", (IMAGES / n).read_bytes(), ACL="public-read")
    urls = [f"{server.endpoint}/pix-in/public/{n}" for n in names]
    fs.pipe_file("pix-in/lists/some.txt", "\n".join(urls[:3]).encode() + b"\n")
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"url": urls[3:], "caption": ["x"] * len(urls[3:])}), table)
    fs.pipe_file("pix-in/lists/rest.parquet", table.read_bytes())
    server.bucket("pix-out")
    out = "s3://pix-out/fromlists"
    done = run(
        server,
        "--urls",
        "s3://pix-in/lists/some.txt",
        "--urls",
        "s3://pix-in/lists/rest.parquet",
        "-o",
        out,
        "--storage-options",
        server.options_json,
        "--size",
        "64",
        "--allow-private-hosts",
    )
    assert done.returncode == 0, done.stderr
    recs = manifest(server, out)
    assert set(recs) == set(urls)
    assert {r["status"] for r in recs.values()} == {"ok"}
    stored = server.objects(out)
    for r in recs.values():
        assert all(stored.get(o["path"]) == o["bytes"] for o in r["result"]["outputs"])


# -- usage errors, and the output inside the input prefix ----------------------------------------
def test_bad_storage_arguments_are_usage_errors(server: S3, tmp_path: Path) -> None:
    server.bucket("pix-in")
    server.put_tree(IMAGES, "s3://pix-in/photos")
    opts = ["--storage-options", server.options_json]
    cases = [
        (["s3://pix-in/nothing-here/", "-o", str(tmp_path / "o1"), *opts], "does not exist"),
        (
            [
                "s3://pix-in/photos/",
                "-o",
                "s3://pix-in/photos/out",
                *opts,
                "--output-format",
                "parquet",
            ],
            "local folder only",
        ),
        (["s3://pix-in/photos/nested/", "-o", "s3://pix-in/photos/", *opts], "inside it"),
        (
            ["s3://pix-in/photos/", "-o", str(tmp_path / "o2"), "--storage-options", "{nope"],
            "not a JSON object",
        ),
        (["nosuchproto://x/y", "-o", str(tmp_path / "o3")], "unknown storage protocol"),
        (  # before the run: every input was read and resized, then failed at its write
            ["s3://pix-in/photos/", "-o", "s3://no-such-bucket/out", *opts],
            "the bucket 'no-such-bucket' does not exist",
        ),
    ]
    for args, says in cases:
        done = run(server, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not [p for p in tmp_path.glob("o*")]


def test_an_output_inside_the_input_prefix_is_never_read_back(server: S3) -> None:
    server.bucket("pix-in")
    server.put_tree(IMAGES, "s3://pix-in/photos")
    assert process(server, "s3://pix-in/photos/", "s3://pix-in/photos/thumbs").returncode == 0
    again = process(server, "s3://pix-in/photos/", "s3://pix-in/photos/thumbs")
    assert again.returncode == 0, again.stderr
    recs = manifest(server, "s3://pix-in/photos/thumbs")
    assert recs["thumbs/"]["status"] == "skipped"
    assert "output folder" in recs["thumbs/"]["reason"]
    assert {k for k in recs if k.startswith("thumbs/") or k.startswith("64/")} == {"thumbs/"}
    assert len(recs) == N_IMAGES + 1


# -- reading objects: not an image, over the cap, over the first request ----------------------
def _noise_png(side: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def test_objects_read_with_the_same_checks_as_files(server: S3) -> None:
    from stages.files import FIRST_GET_BYTES

    server.bucket("pix-in")
    fs = server.fs()
    mid, big = _noise_png(1250), _noise_png(1800)
    assert FIRST_GET_BYTES < len(mid) < 6 * 2**20 < len(big)
    fs.pipe_file("pix-in/mixed/mid.png", mid)  # two GETs: the first 4 MiB, then the rest
    fs.pipe_file("pix-in/mixed/big.png", big)  # over the cap
    fs.pipe_file("pix-in/mixed/notes.txt", b"shopping list\n" * 1000)
    fs.pipe_file("pix-in/mixed/small.jpg", (IMAGES / "640x480_rgb.jpg").read_bytes())
    fs.pipe_file("pix-in/mixed/empty.jpg", b"")  # S3 answers its first bytes with 416
    server.bucket("pix-out")
    out = "s3://pix-out/checks"
    done = process(server, "s3://pix-in/mixed/", out, "--max-file-size", "6MiB")
    assert done.returncode == 1, done.stderr  # big.png failed
    recs = manifest(server, out)
    assert recs["small.jpg"]["status"] == "ok"
    assert recs["mid.png"]["status"] == "ok"
    assert recs["mid.png"]["result"]["original"]["width"] == 1250
    assert recs["notes.txt"]["status"] == "skipped"
    assert "not an image" in recs["notes.txt"]["reason"]
    assert recs["big.png"]["status"] == "failed"
    assert recs["big.png"]["error_type"] == "FileTooLarge"
    # as an empty local file: skipped, saying so (it was failed, 'range not satisfiable')
    assert recs["empty.jpg"]["status"] == "skipped", recs["empty.jpg"]
    assert "an empty file (0 bytes)" in recs["empty.jpg"]["reason"]


@pytest.mark.timeout(180)
def test_an_object_and_a_prefix_of_the_same_name_get_outputs_of_their_own(
    server: S3, tmp_path: Path
) -> None:
    """``p/a.jpg`` and ``p/a.jpg/b.jpg``, as object storage allows: the object's outputs and
    the prefix's folder took the same tagged name, so on a disk one removed the other, run
    after run, both records ``ok``. The folder now takes the tag of its name with a slash."""
    _put_jpegs(server, "pix-in/p/a.jpg", "pix-in/p/a.jpg/b.jpg", "pix-in/p/c.jpg")
    out = tmp_path / "out"
    for statuses in ({"ok"}, {"reused"}):
        done = process(server, "s3://pix-in/p/", str(out))
        assert done.returncode == 0, done.stderr
        recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert {r["status"] for r in recs} == statuses
        paths = [o["path"] for r in recs for o in r["result"]["outputs"]]
        assert len(recs) == len(set(paths)) == 3
        assert all((out / p).is_file() for p in paths), paths


@pytest.mark.timeout(180)
def test_keys_with_an_empty_segment_are_recorded_not_walked(server: S3, tmp_path: Path) -> None:
    """``p/dbl//d.jpg``: no file path has an empty folder name. Its listing's leaf was "/",
    dropped: the object had no record at all (14 objects, 13 inputs)."""
    _put_jpegs(server, "pix-in/p/a.jpg", "pix-in/p/dbl//d.jpg", "pix-in/p/dbl/e.jpg")
    out = tmp_path / "out"
    done = process(server, "s3://pix-in/p/", str(out))
    assert done.returncode == 0, done.stderr
    recs = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {k: r["status"] for k, r in recs.items()} == {
        "a.jpg": "ok",
        "dbl/e.jpg": "ok",
        "dbl//": "skipped",
    }
    assert "empty path segment" in recs["dbl//"]["reason"]


def _put_jpegs(server: S3, *keys: str) -> None:
    """One JPEG of the sample images at each of ``keys`` (bucket/key) of the bucket pix-in."""
    server.bucket("pix-in")
    fs = server.fs()
    jpeg = (IMAGES / sorted(p.name for p in IMAGES.glob("*.jpg"))[0]).read_bytes()
    for key in keys:
        fs.pipe_file(key, jpeg)
