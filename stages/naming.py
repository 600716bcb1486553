"""The output-naming rule: one deterministic name per input and output size, unique in a run.

An image input ``<folder>/<name>`` is written, for each size label, to
``<output>/<label>/<folder>/<output name>`` where ``<folder>`` mirrors the input tree below its
root (with several inputs on the command line, each folder's name comes first; a file given
by itself sits at the top) and the output name is:

1. ``<name>`` when the name's extension is already the output format's (``.jpeg``/``.jpe`` count
   as ``.jpg``): ``b.jpg`` → ``b.jpg``;
2. otherwise ``<name><ext>``, the whole input name kept so ``b.png`` and ``b.gif`` never meet:
   ``b.png`` → ``b.png.jpg``, ``README`` → ``README.jpg``;
3. ``<name cut to fit>~<tag><ext>`` when rule 2's name, for some output extension, could be
   another input's own name in the same folder (a sibling file or folder named ``<name><ext>``,
   compared without case or normalization: ``a.gif`` beside ``a.gif.jpg`` becomes
   ``a.gif~1f0c9a2b.jpg``), or
   would be longer than the file system's limit of 255 bytes. ``<tag>`` is the first 8 hex
   digits of the SHA-1 of the input name's bytes — 16, or all 40, in the unlikely case that the
   tagged name is itself a sibling's name or rule-2 name: the same inputs give the same names,
   in any order.

Names that differ only in case or Unicode normalization (``a.jpg`` and ``A.JPG``; ``café.jpg``
composed and decomposed) are one file on the file systems of macOS and Windows (and exFAT, SMB
shares), where their outputs would overwrite each other: such *twins* are each written under
their tagged name, ``tagged(<name>, <tag>)`` (:func:`twin_name`: ``A~<tag>.JPG``, then the rules
above; twin folders too, ``Photos~<tag>/``: :func:`twin_folder`), so no two outputs differ only
so, on any file system the output folder is copied to. Their keys stay their paths.

Rule 1 names are the input's own name, unique in its folder; rule 2 names are longer than their
input's name, so they can only meet a sibling named exactly so, which rule 3 avoids; rule 3 names
are chosen to be none of the names rules 1 and 2 give in the folder (:func:`choose_tag`). Two files
given on the command line with the same name (``a/x.jpg b/x.jpg``) both take a tag, from the
SHA-1 of their absolute paths (``x~<tag>.jpg``; their keys are ``x.jpg~<tag>``), and so do two
input folders with the same name (``photos~<tag>/``). The record lists every
output's path, so a tag never has to be guessed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

__all__ = [
    "NAME_MAX",
    "OUTPUT_EXTENSIONS",
    "Folder",
    "Siblings",
    "choose_tag",
    "fold",
    "name_tag",
    "needs_tag",
    "output_name",
    "output_rel",
    "placed",
    "tagged",
    "taken_by",
    "twin_folder",
    "twin_name",
    "written_as",
]

#: The longest file name (in bytes) the usual Linux, macOS and Windows file systems hold.
NAME_MAX = 255

#: Extensions an output can have (``stages.imaging`` writes JPEG, PNG, WebP and AVIF).
OUTPUT_EXTENSIONS = (".jpg", ".png", ".webp", ".avif")

_SAME = {".jpeg": ".jpg", ".jpe": ".jpg", ".tif": ".tiff"}


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def name_tag(text: str, digits: int = 8) -> str:
    """The first ``digits`` hex digits of the SHA-1 of ``text``'s bytes."""
    return hashlib.sha1(_bytes(text)).hexdigest()[:digits]


def needs_tag(name: str, siblings_lower: Collection[str] | Callable[[str], bool]) -> bool:
    """Whether ``<name><ext>`` could be a sibling's own name (``siblings_lower``: lower-cased
    names of every entry in the folder, or a test of one: :meth:`Siblings.is_name`, which
    compares names folded, :func:`fold`, normalization too)."""
    is_name = siblings_lower if callable(siblings_lower) else siblings_lower.__contains__
    low = name.lower()
    return any(is_name(low + ext) for ext in OUTPUT_EXTENSIONS)


def fold(name: str) -> str:
    """``name`` as a case- and normalization-insensitive file system compares it (twins, in
    the module docstring, fold to the same string)."""
    return name.lower() if name.isascii() else unicodedata.normalize("NFC", name).lower()


class Siblings(Protocol):
    """What :func:`choose_tag` asks of a folder's names (all lower-cased): :class:`Folder`
    holds them in memory; a disk-backed set can answer the same (``stages.remote_sources``)."""

    def is_name(self, lower: str) -> bool:
        """Whether ``lower`` is the name of an entry of the folder."""
        ...

    def is_twin(self, name: str) -> bool:
        """Whether another entry's name folds (:func:`fold`) to the same as ``name``."""
        ...

    def is_taken(self, lower: str) -> bool:
        """Whether rules 1 or 2 can give the name ``lower`` here: an entry's name, or an
        entry's name plus an output extension (see :func:`taken_by`)."""
        ...


def taken_by(lower: str, is_name: Callable[[str], bool]) -> bool:
    """:meth:`Siblings.is_taken` from :meth:`Siblings.is_name` alone: ``lower`` is a name, or
    a name followed by one of ``OUTPUT_EXTENSIONS``."""
    if is_name(lower):
        return True
    return any(lower.endswith(ext) and is_name(lower[: -len(ext)]) for ext in OUTPUT_EXTENSIONS)


class Folder:
    """The names of one folder's entries, in memory, to choose its files' tags
    (:func:`choose_tag`; a :class:`Siblings`). One lower-cased string a name: the names rules 1
    and 2 can give are tested from them (:func:`taken_by`), not kept too (five times the
    memory, for the few names that need a tag)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.folded: set[str] = set()  # café.gif.jpg composed or decomposed: one name
        self.twins: set[str] = set()  # folded names held by more than one entry (few, mostly none)
        for name in names:
            low = name.lower()
            low = name if low == name else low  # one string, not two, for a lower-case name
            f = low if name.isascii() else fold(name)
            if f in self.folded:
                self.twins.add(f)
            else:
                self.folded.add(f)

    def is_name(self, lower: str) -> bool:
        return fold(lower) in self.folded

    def is_twin(self, name: str) -> bool:
        return bool(self.twins) and fold(name) in self.twins

    def is_taken(self, lower: str) -> bool:
        return taken_by(lower, self.is_name)


def choose_tag(name: str, folder: Siblings, seed: str | None = None) -> str | None:
    """The tag ``name``'s outputs take in ``folder`` (None: rules 1 and 2 do). ``seed``: what
    the tag is a hash of (default: the name)."""
    if not needs_tag(name, folder.is_name) and _appended_fit(name):
        return None
    own = _extension(name)  # written under its own name in that format (rule 1): not a tag's
    for digits in (8, 16, 40):
        tag = name_tag(seed if seed is not None else name, digits)
        names = (output_name(name, ext, tag).lower() for ext in OUTPUT_EXTENSIONS if ext != own)
        if not any(folder.is_taken(n) for n in names):
            break
    return tag


def twin_name(name: str, folder: Siblings, seed: str | None = None) -> str:
    """The name a twin (:meth:`Siblings.is_twin`) is written under: ``tagged(name, tag)``, with
    the tag of its own name (``seed``: of that; longer in the unlikely case that this name, or
    it plus an output extension, is a sibling's name or one that rules 1 and 2 give)."""
    for digits in (8, 16, 40):
        candidate = tagged(name, name_tag(name if seed is None else seed, digits))
        low = candidate.lower()
        if not folder.is_taken(low) and not any(
            folder.is_taken(low + e) for e in OUTPUT_EXTENSIONS
        ):
            break
    return candidate


def twin_folder(name: str, folder: Siblings) -> str:
    """The place of the subfolder ``name`` of ``folder`` in the output, with its slash: its
    name, or a twin's tagged name (``Photos/`` beside ``photos/``: ``Photos~<tag>/``)."""
    return (twin_name(name, folder) if folder.is_twin(name) else name) + "/"


def written_as(name: str, folder: Siblings) -> tuple[str, str | None]:
    """What the outputs of the input ``name`` in ``folder`` are named from, and their tag: a
    twin's tagged name and no tag (:func:`twin_name`), else its own and :func:`choose_tag`'s."""
    if folder.is_twin(name):
        return twin_name(name, folder), None
    return name, choose_tag(name, folder)


def placed(
    name: str, folder: Siblings, prefix: str, place: str, moved: bool
) -> tuple[str | None, str | None]:
    """Where a walk puts the outputs of the entry ``name`` of ``folder`` (its key's folder is
    ``prefix`` + the folder's path; ``place``: that path with twin folders tagged, ``moved``
    when it differs): the entry's place below the size folders when it is not its key (a
    twin's tagged name, or anything below a twin folder; else None), and its tag."""
    written, tag = written_as(name, folder)  # A.JPG beside a.jpg: A~<tag>.JPG
    return (prefix + place + written if moved or written != name else None), tag


#: The longest of ``OUTPUT_EXTENSIONS``, in bytes.
_LONGEST_EXT = max(len(e) for e in OUTPUT_EXTENSIONS)


def _appended_fit(name: str) -> bool:
    """Whether every rule-2 name of ``name`` (``<name><ext>``, for each output extension but
    its own) fits in :data:`NAME_MAX` bytes."""
    if 4 * len(name) + _LONGEST_EXT <= NAME_MAX:  # a character is at most 4 bytes: no encoding
        return True
    own = _extension(name)
    return all(len(_bytes(name + e)) <= NAME_MAX for e in OUTPUT_EXTENSIONS if e != own)


def _extension(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    if not (dot and stem):  # no dot, or a hidden file's leading dot
        return ""
    ext = f".{suffix.lower()}"
    return _SAME.get(ext, ext)


def output_name(name: str, ext: str, tag: str | None = None) -> str:
    """The output file name for input file ``name`` written as ``ext`` (rules in the module doc);
    ``tag`` from :func:`choose_tag` (None: untagged unless the name would not fit)."""
    same = _extension(name) == ext
    if same:
        return name
    if tag is None:
        candidate = name + ext
        if len(_bytes(candidate)) <= NAME_MAX:
            return candidate
        tag = name_tag(name)
    tail = f"~{tag}{ext}"
    return _cut(name, NAME_MAX - len(_bytes(tail))) + tail


def tagged(name: str, tag: str) -> str:
    """``name`` with ``~<tag>`` before its extension, cut to fit: ``x.jpg`` → ``x~<tag>.jpg``
    (what two inputs of one name in one folder are known by)."""
    stem, dot, suffix = name.rpartition(".")
    if not (dot and stem):
        stem, suffix = name, ""
    tail = f"~{tag}" + (f".{suffix}" if suffix else "")
    return _cut(stem, NAME_MAX - len(_bytes(tail))) + tail


def output_rel(rel: str, label: str, ext: str, tag: str | None = None) -> str:
    """Where the ``label`` output of the input at ``rel`` (its path below the size folders)
    goes, relative to the output folder."""
    folder, slash, name = rel.rpartition("/")
    return f"{label}/{folder}{slash}{output_name(name, ext, tag)}"


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes, at a character boundary."""
    raw = _bytes(text)
    if len(raw) <= limit:
        return text
    end = max(0, limit)
    while end > 0 and (raw[end] & 0xC0) == 0x80:  # inside a UTF-8 sequence: back off
        end -= 1
    return raw[:end].decode("utf-8", "surrogateescape")
