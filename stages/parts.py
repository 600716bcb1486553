"""The numeric data files' light half: options, parts and the record check, without numpy.

:mod:`stages.data` plans and crunches the parts and re-exports all of these. They live here so
that the process that builds a run (and, for images only, never touches numpy) can validate
:class:`DataOptions`, recognise parts (:mod:`stages.steps`) and data records
(:func:`is_data_result`) without importing numpy. Every class here pickles by reference to this
module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CRUNCH_VERSION",
    "DEFAULT_CHUNK_BYTES",
    "ArrayPart",
    "CsvPart",
    "DataOptions",
    "ZipMemberPart",
    "is_data_result",
]

#: Bytes per part of a data file, by default.
DEFAULT_CHUNK_BYTES = 64 * 2**20

#: How a data file's statistics are computed from the same file and options, as a number:
#: raise it with a change that gives other results, so that the results an older version
#: recorded are redone on resume rather than reused (see ``stages.options.RENDER_VERSION``).
#: 2: CSV lines with a quote left open, date/time/boolean columns, the first bad line; exact
#: integer min/max, corrupt .npy headers and float128 beyond float64 refused.
CRUNCH_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """How numeric files are crunched; validated on creation."""

    chunk_size: int = DEFAULT_CHUNK_BYTES  # bytes per part (0: never split)
    columns: tuple[str, ...] = ()  # CSV: only these columns (all numeric ones when empty)
    delimiter: str | None = None  # CSV: None means by extension (.tsv: tab) or sniffed
    bins: int = 64  # histogram bins (at most)

    def __post_init__(self) -> None:
        if self.chunk_size < 0:
            raise ValueError("chunk size must be >= 0 (0: do not split files)")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        if not 1 <= self.bins <= 4096:
            raise ValueError(f"bins must be between 1 and 4096, got {self.bins}")

    def fingerprint_fields(self, *, csv: bool = True) -> dict[str, Any]:
        """The options that change results (the chunk size changes only the rounding), and
        :data:`CRUNCH_VERSION` once it is past 1. An array's (``csv=False``) leave the CSV
        options at their defaults: ``--columns`` redid every ``.npy`` and ``.npz`` array."""
        fields: dict[str, Any] = {
            "columns": list(self.columns) if csv else [],
            "delimiter": self.delimiter if csv else None,
            "bins": self.bins,
        }
        if CRUNCH_VERSION > 1:  # (version 1 is left out: the hashes made before it stay)
            fields["crunch_version"] = CRUNCH_VERSION
        return fields


@dataclass(frozen=True, slots=True)
class ArrayPart:
    """Elements ``[start, stop)`` of an array stored raw at byte ``offset`` of ``path``."""

    path: str
    offset: int
    dtype: str
    start: int
    stop: int
    bins: int


@dataclass(frozen=True, slots=True)
class ZipMemberPart:
    """A compressed ``.npz`` member: streamed whole (deflate cannot seek)."""

    path: str
    member: str
    bins: int


@dataclass(frozen=True, slots=True)
class CsvPart:
    """The lines of a CSV file whose first byte lies in ``[start, stop)``."""

    path: str
    start: int
    stop: int
    data_start: int  # where the first data line starts (after the header)
    names: tuple[str, ...]
    numeric: tuple[str, ...]
    other: tuple[str, ...]
    delimiter: str
    bins: int


def is_data_result(value: Any) -> bool:
    """Whether a record's value is a data file's statistics (not an image's result)."""
    return isinstance(value, dict) and value.get("kind") in ("array", "csv")
