"""One training set per output folder: a shard run refuses a folder whose shards another run
wrote in another format, with other image options or with other sample options (and
``--force`` into one).

Resume goes by key: a record is done while its shard exists. A run that redoes every input
(other image options, ``--force``) would write each sample again into new shards beside the old
ones, and a reader of ``*.tar`` would see it twice; a run in the other shard format would find
every input "done" in a shard of the first format and write nothing. Both are refused before
anything starts (exit 2), naming what differs; a new ``--output`` is the way out. The sample
options (filters, the URL and caption columns, the kept columns: ``SAMPLE_OPTIONS``) are held
in the folder (``.pipeline/training-set.json``, written by the first shard run, or by the first
run that finds shards made before it was kept): a run with others would keep the samples already
there beside new ones chosen or described otherwise, so it is refused too.

The kept columns' types are held with the sample options (:data:`KEPT_TYPES`): every shard of
the set has one schema.

A training set's keys are its table's row numbers: a row whose URL is not the one its sample
was made from (rows inserted, removed or reordered since) stops the run
(:func:`refuse_moved_rows`, :class:`TableChanged`), before it writes that row: reused, the
sample of another URL would stand under its key; redone, the key would be in two shards. So
does a row whose caption or kept columns were edited since (a digest in its record): reused,
its sample would keep the old ones.

A shard that no record names (a run killed between renaming a shard into place and recording
its inputs; a retried Dask task's first attempt) is set aside at the end of the next run, once
every record of the folder is known (:class:`UnrecordedShards`): its inputs were not done, so
they are written again into new shards, and a reader of ``*.tar`` would see them twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import ConfigError, FatalRunError, Item, Record, atomic_write_text, shown
from stages.shards import set_aside_unrecorded

from .endofrun import RecordFeed

__all__ = [
    "KEPT_TYPES",
    "SAMPLES_FILE",
    "TableChanged",
    "UnrecordedShards",
    "check_shard_folder",
    "refuse_moved_rows",
]

log = logging.getLogger("app")

#: The sample options of the folder's training set (see the module's text).
SAMPLES_FILE = Path(".pipeline") / "training-set.json"

#: Held with them: the types of the kept columns in the shards (column -> Arrow type), so that
#: a later run whose tables hold others (an int32 column where int64 was, a CSV table where a
#: Parquet one was) is refused, not written in shards that no longer read as one dataset. A
#: folder held before it was kept takes its next run's.
KEPT_TYPES = "kept_types"

_FORMAT_OF = {".tar": "webdataset", ".parquet": "parquet"}


def check_shard_folder(
    out: Path,
    output_format: str,
    fingerprint: str,
    samples: Mapping[str, Any],
    *,
    force: bool,
) -> None:
    """Raise :class:`~pipeline.ConfigError` when a ``output_format`` run (image options
    ``fingerprint``, sample options ``samples``) into ``out`` would mix its samples with the
    shards already there; else hold ``samples`` as the folder's."""
    if output_format == "files":
        return
    earlier = _earlier_shard(out)
    held = _held_samples(out)
    if earlier is not None:
        _check_earlier(out, earlier, output_format, fingerprint, force=force)
        if held is not None:
            _check_samples(out, earlier[0], held, samples)
    if held != samples:
        (out / SAMPLES_FILE).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SAMPLES_FILE, json.dumps(samples, indent=1, sort_keys=True))


class TableChanged(FatalRunError):
    """A row of a training set's table holds another URL than when its sample was made."""


def refuse_moved_rows(item: Item, done: Record) -> str | None:
    """Resume's test of a done row (its sample in a shard): the same URL, caption and kept
    columns as then, or the run stops (:class:`TableChanged`, exit 3; the folder is left as it
    is). A folder's records from before rows were described (no ``described`` digest) are
    taken as they are."""
    shard = done.value.get("shard") if isinstance(done.value, dict) else None
    was, now = done.meta.get("url"), item.meta.get("url")
    if was is not None and now is not None and was != now:
        raise TableChanged(
            f"{item.source}: row {item.key} is {shown(str(now))}, but its sample in "
            f"{shard or 'a shard'} was made from {shown(str(was))}: the table's rows were "
            "inserted, removed or reordered since. A training set's keys are its rows' "
            "numbers: give the table as it was, or choose a new --output"
        )
    described = done.meta.get("described")
    if described is not None and described != item.meta.get("described"):
        raise TableChanged(
            f"{item.source}: row {item.key} ({shown(str(now))}) has another caption or other "
            f"kept columns than its sample in {shard or 'a shard'}, written before they were "
            "edited: a shard is written once, and the sample there would keep the old ones. "
            "Give the table as it was, or build the set again into a new --output"
        )
    return None


def _check_earlier(
    out: Path, earlier: tuple[str, str | None], output_format: str, fingerprint: str, *, force: bool
) -> None:
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


def _check_samples(
    out: Path, shard: str, held: Mapping[str, Any], samples: Mapping[str, Any]
) -> None:
    differ = [
        f"{_flag(name, samples.get(name))} (the folder's: {_flag(name, held.get(name), bare=True)})"
        for name in sorted(set(held) | set(samples))
        if held.get(name) != samples.get(name) and (name in held or name != KEPT_TYPES)
    ]
    if differ:
        raise ConfigError(
            f"{out} holds shards of an earlier run ({shard}, …) made with other sample options: "
            f"{'; '.join(differ)}. The samples there would stay as they are beside new ones "
            "chosen or described otherwise; choose a new --output, or run with the folder's "
            "options"
        )


def _flag(name: str, value: Any, *, bare: bool = False) -> str:
    """``--min-image-size 30``; ``bare``: the value alone."""
    if name == KEPT_TYPES:  # not an option: what the tables' kept columns hold
        text = ", ".join(f"{c}: {t}" for c, t in (value or {}).items()) or "none"
        return text if bare else f"the kept columns' types {text}"
    if value is None or value == []:
        text = "none"
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, list):
        text = ",".join(map(str, value))
    else:
        text = str(value)
    return text if bare else f"--{name.replace('_', '-')} {text}"


def _held_samples(out: Path) -> dict[str, Any] | None:
    """The sample options the folder holds (None: none held, or a file no longer readable,
    which the run then writes anew)."""
    path = out / SAMPLES_FILE
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): it is written anew", shown(str(path)), exc)
        return None
    return held if isinstance(held, dict) else None


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
