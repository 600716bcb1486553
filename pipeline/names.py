"""Names that are bytes: keys, paths and messages that may not be valid UTF-8.

On POSIX a file name is a string of bytes. Python hands undecodable bytes to us as lone
surrogates (``os.fsdecode``'s ``surrogateescape``: ``b"caf\\xe9.jpg"`` is ``"caf\\udce9.jpg"``),
which keeps them lossless inside the program (open, pickle, dict keys) but cannot be written
as UTF-8 text. At the text boundary (manifest, journal, summary, tables, report, console):

* :func:`shown` gives the readable form: each undecodable byte as ``\\xNN``
  (``caf\\xe9.jpg``);
* :func:`raw_b64` gives the exact bytes, base64-encoded; the manifest stores it beside the
  shown form (``key_b64``, ``source_b64``, an output's ``path_b64``) only when the two differ,
  and :func:`from_b64` turns it back into the program's string
  (``base64.b64decode(record["key_b64"])`` gives the original bytes to any other reader);
* :func:`printable` gives a one-line form for a terminal: :func:`shown`, with control characters
  (a newline, an escape sequence in a file name) written ``\\xNN`` too.

Everything else (clean names, URLs) passes through untouched and costs one scan.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["from_b64", "is_clean", "printable", "raw_b64", "shown", "text_safe", "with_raw"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def is_clean(text: str) -> bool:
    """True when ``text`` can be written as UTF-8 as it is (no lone surrogates)."""
    # ASCII (most keys, paths and manifest lines) is clean: a C scan, without the regex
    return text.isascii() or _SURROGATE.search(text) is None


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def shown(text: str) -> str:
    """``text`` with each undecodable byte written ``\\xNN``: valid UTF-8, for people."""
    if is_clean(text):
        return text
    try:
        return _raw(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte (from elsewhere)
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def printable(text: str) -> str:
    """:func:`shown`, and each control character written ``\\xNN``: one line of valid UTF-8
    that cannot move a terminal's cursor or change its colours (for console output)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", shown(text))


def raw_b64(text: str) -> str:
    """The exact bytes of ``text`` (as the file system holds them), base64-encoded."""
    try:
        return base64.b64encode(_raw(text)).decode("ascii")
    except UnicodeEncodeError:  # not bytes from a file name: keep the code points
        return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def from_b64(data: str) -> str:
    """The program's string for bytes stored with :func:`raw_b64`."""
    return base64.b64decode(data).decode("utf-8", "surrogateescape")


def with_raw(fields: dict[str, Any], name: str, text: str) -> None:
    """Set ``fields[name]`` to the shown form of ``text``, and ``fields[name + "_b64"]`` to its
    exact bytes when the shown form differs (the manifest's convention)."""
    if is_clean(text):
        fields[name] = text
    else:
        fields[name] = shown(text)
        fields[f"{name}_b64"] = raw_b64(text)


def text_safe(value: Any) -> Any:
    """``value`` with every string (keys of mappings included) in its shown form.

    For JSON documents that may hold names from the file system in places no field pairs with
    ``_b64`` (an error message that quotes a path): readable, valid UTF-8, never a crash.
    """
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, Mapping):
        return {text_safe(k): text_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [text_safe(v) for v in value]
    return value
