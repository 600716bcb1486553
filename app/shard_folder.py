"""One training set per output folder: a shard run refuses a folder whose shards another run
wrote in another format or with other image options (and ``--force`` into one).

Resume goes by key: a record is done while its shard exists. A run that redoes every input
(other image options, ``--force``) would write each sample again into new shards beside the old
ones, and a reader of ``*.tar`` would see it twice; a run in the other shard format would find
every input "done" in a shard of the first format and write nothing. Both are refused before
anything starts (exit 2), naming what differs; a new ``--output`` is the way out.

A shard that no record names (a run killed between renaming a shard into place and recording
its inputs; a retried Dask task's first attempt) is set aside at the end of the next run, once
every record of the folder is known (:class:`UnrecordedShards`): its inputs were not done, so
they are written again into new shards, and a reader of ``*.tar`` would see them twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import ConfigError, Record
from stages.shards import set_aside_unrecorded

from .endofrun import RecordFeed

__all__ = ["UnrecordedShards", "check_shard_folder"]

_FORMAT_OF = {".tar": "webdataset", ".parquet": "parquet"}


def check_shard_folder(out: Path, output_format: str, fingerprint: str, *, force: bool) -> None:
    """Raise :class:`~pipeline.ConfigError` when a ``output_format`` run (image options
    ``fingerprint``) into ``out`` would mix its samples with the shards already there."""
    if output_format == "files":
        return
    earlier = _earlier_shard(out)
    if earlier is None:
        return
    shard, its_fingerprint = earlier
    where = f"{out} holds shards of an earlier run ({shard}, …)"
    fmt = _FORMAT_OF.get(Path(shard).suffix)
    if fmt is not None and fmt != output_format:
        raise ConfigError(
            f"{where} in --output-format {fmt}: a {output_format} run would find every input "
            "done there and write nothing; choose a new --output"
        )
    if force:
        raise ConfigError(
            f"{where}: --force would write every input again into new shards beside them (each "
            "sample twice for a reader); choose a new --output, or remove the old shards"
        )
    if its_fingerprint is not None and its_fingerprint != fingerprint:
        raise ConfigError(
            f"{where} made with other image options (--size, --mode, --format, --quality, …): "
            "every input would be written again into new shards beside them (each sample twice "
            "for a reader); choose a new --output, or run with the earlier options"
        )


def _earlier_shard(out: Path) -> tuple[str, str | None] | None:
    """The shard and options fingerprint of the first manifest record that names a shard
    that is still there (reads the manifest only up to it)."""
    try:
        fh = (out / "manifest.jsonl").open(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    with fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a crash: the ledger's reader skips it too
                continue
            result = rec.get("result") if isinstance(rec, dict) else None
            shard = result.get("shard") if isinstance(result, dict) else None
            if isinstance(shard, str) and "/" not in shard and (out / shard).is_file():
                fingerprint = rec.get("fingerprint")
                return shard, fingerprint if isinstance(fingerprint, str) else None
    return None


class UnrecordedShards:
    """A collector and a sink of ``feed`` (every record of the folder): the shards its records
    name; at the end, every other shard of the folder is set aside
    (:func:`stages.shards.set_aside_unrecorded`). Nothing is set aside when the feed failed
    (the records are then not all known)."""

    name = "unrecorded_shards"

    def __init__(self, folder: Path, output_format: str, feed: RecordFeed) -> None:
        self.folder = folder
        self.format = output_format
        self.feed = feed
        self.named: set[str] = set()
        feed.add_sink(self)

    def take(self, record: dict[str, Any]) -> None:
        for part in (record.get("result"), record.get("meta")):  # ok; failed or skipped
            shard = part.get("shard") if isinstance(part, dict) else None
            if isinstance(shard, str):
                self.named.add(shard)

    def finish(self) -> None:
        return None

    def discard(self) -> None:
        return None

    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        self.feed.check(self)
        return {"set_aside": set_aside_unrecorded(self.folder, self.format, self.named)}
