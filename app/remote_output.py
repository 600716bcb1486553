"""A run whose ``--output`` is a storage URL (``s3://bucket/prefix/``).

**Where each file lives.** The outputs (thumbnails) are written by the write stage straight to
the store, one whole object each (:func:`stages.storage.write_object`). The run's own files,
the ledger journal, ``manifest.jsonl``, ``summary.json``, the tables and ``report.html``, are
written as for a local output into a *working folder* on this machine, and *mirrored* to the
same names below the output URL:

* the working folder is ``$PIXPIPE_WORK_DIR/<hash of the URL>/`` (default
  ``$XDG_CACHE_HOME/pixpipe/outputs/``, else ``~/.cache/pixpipe/outputs/``); it holds the
  folder lock, so two runs into one output URL from the same machine exclude each other (from
  two machines they are not excluded: give each run its own output);
* while the run goes, a consistent snapshot of the journal (SQLite's backup API) is uploaded
  to ``<output>/.pipeline/ledger.sqlite`` every ``--mirror-every`` seconds when it changed,
  followed by ``.pipeline/inputs.json`` when that changed (the keys the journal's records
  have, :mod:`app.input_keys`), so a run that crashes (or a machine that is lost) can be
  resumed elsewhere;
* when the run ends (finished, failed, interrupted), the journal snapshot and every file of the
  working folder's top level are uploaded, ``summary.json`` last;
* when a run starts, the journal (and the inputs file beside it) is downloaded from the
  output when the working folder has none, or when the one below the output is not the one
  this folder last uploaded or downloaded (another machine ran since): resume works from a
  fresh machine, against what the output holds.

Uploads go through :func:`stages.storage.write_object` (one whole object each). Failing
uploads while the run goes are logged and tried again at the next period; at the end they
raise (the run's outputs are there, its record is not: the command says so, exit 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import FatalRunError
from stages.storage import (
    StorageURL,
    get_file,
    join_url,
    object_info,
    put_file,
)

from .input_keys import INPUTS_FILE

log = logging.getLogger("app")

__all__ = ["mirrored", "working_folder"]

JOURNAL = ".pipeline/ledger.sqlite"
#: The ETag of the journal below the output that this working folder last sent or received.
_SEEN = ".pipeline/remote-journal-etag"
_LAST = "summary.json"  # uploaded last: its presence marks a finished run


def working_folder(url: str) -> Path:
    """This machine's working folder for the output ``url`` (see the module docstring)."""
    base = os.environ.get("PIXPIPE_WORK_DIR")
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        base = os.path.join(cache, "pixpipe", "outputs")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return Path(base) / digest


@contextlib.contextmanager
def mirrored(url: StorageURL, local: Path, every: float) -> Iterator[None]:
    """Mirror the working folder ``local`` to ``url`` for the ``with`` block, the journal
    every ``every`` seconds (see above)."""
    mirror = _Mirror(url, local)
    mirror.fetch()
    stop = threading.Event()
    args = (stop, every)
    thread = threading.Thread(target=mirror.every, args=args, name="mirror", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        mirror.upload_all()
        log.info("outputs, manifest, summary and report are in %s (working folder %s)", url, local)


class _Mirror:
    def __init__(self, url: StorageURL, local: Path) -> None:
        self.url, self.local = url, local
        self.sent_state: tuple[int, ...] | None = None
        self.sent_inputs: tuple[int, int] | None = None  # the inputs file's, when last sent

    # -- start -------------------------------------------------------------------------------
    def fetch(self) -> None:
        """The journal below the output, when this folder has none or another one."""
        remote = object_info(join_url(self.url, JOURNAL))
        journal = self.local / JOURNAL
        seen = self.local / _SEEN
        if remote is None:
            if not journal.exists():
                self._fetch_manifest()
            return
        etag = _etag(remote)
        if journal.exists() and seen.exists() and seen.read_text() == etag:
            return
        journal.parent.mkdir(parents=True, exist_ok=True)
        for extra in ("-wal", "-shm"):
            Path(f"{journal}{extra}").unlink(missing_ok=True)
        get_file(join_url(self.url, JOURNAL), str(journal))
        self._fetch_inputs()
        seen.write_text(etag)
        log.info("resuming from the journal of %s", self.url)

    def _fetch_inputs(self) -> None:
        """The inputs the output's runs knew, which go with its journal (:mod:`app.input_keys`):
        the output's, or none (this folder's would be another run's)."""
        local = self.local / INPUTS_FILE
        local.unlink(missing_ok=True)
        get_file(join_url(self.url, INPUTS_FILE.as_posix()), str(local))

    def _fetch_manifest(self) -> None:
        """An output written before journals were mirrored: its manifest (the ledger adopts a
        manifest when it has no journal)."""
        if get_file(join_url(self.url, "manifest.jsonl"), str(self.local / "manifest.jsonl")):
            log.info("resuming from the manifest of %s", self.url)

    # -- while the run goes ------------------------------------------------------------------
    def every(self, stop: threading.Event, period: float) -> None:
        while not stop.wait(period):
            try:
                self.upload_journal()
            # Broad by design: the store's client raises its own errors (botocore's
            # EndpointConnectionError is no OSError), and the thread must live on to the
            # next try: it ended at the first, and nothing was uploaded again
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "could not upload the journal to %s (next try in %.0f s): %s",
                    self.url,
                    period,
                    exc,
                )

    def upload_journal(self) -> None:
        """A consistent snapshot of the journal, uploaded when it changed since the last."""
        journal = self.local / JOURNAL
        if not journal.exists():
            return
        state = tuple(
            int(st.st_mtime_ns) ^ st.st_size
            for p in (journal, Path(f"{journal}-wal"))
            if (st := _stat(p)) is not None
        )
        if state == self.sent_state:
            return
        with tempfile.TemporaryDirectory(dir=journal.parent, prefix=".snap-") as tmp:
            snap = os.path.join(tmp, "ledger.sqlite")
            src = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
            dst = sqlite3.connect(snap)
            try:
                with dst:
                    src.backup(dst)
            finally:
                src.close()
                dst.close()
            put_file(snap, join_url(self.url, JOURNAL))
        (self.local / _SEEN).write_text(_etag(object_info(join_url(self.url, JOURNAL)) or {}))
        self.sent_state = state
        self.upload_inputs()

    def upload_inputs(self) -> None:
        """The inputs file (:mod:`app.input_keys`), when it changed since the last upload: the
        journal's keys need it to be resumed from another machine."""
        st = _stat(self.local / INPUTS_FILE)
        state = None if st is None else (st.st_mtime_ns, st.st_size)
        if state is None or state == self.sent_inputs:
            return
        put_file(str(self.local / INPUTS_FILE), join_url(self.url, INPUTS_FILE.as_posix()))
        self.sent_inputs = state

    # -- end -----------------------------------------------------------------------------------
    def upload_all(self) -> None:
        """The journal and the inputs file, then the top-level files of the working folder,
        ``summary.json`` last."""
        try:
            self.upload_journal()
            self.upload_inputs()
            files = sorted(p for p in self.local.iterdir() if p.is_file())
            for path in sorted(files, key=lambda p: p.name == _LAST):
                put_file(str(path), join_url(self.url, path.name))
        except Exception as exc:  # as in every(): whatever the store raises
            raise FatalRunError(
                f"the run's records could not be uploaded to {self.url} (they are in "
                f"{self.local}): {exc}"
            ) from exc


def _etag(info: dict[str, Any]) -> str:
    """What tells one upload of the journal from another: its ETag (else its size)."""
    return str(info.get("ETag") or info.get("etag") or info.get("size"))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
