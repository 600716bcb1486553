"""Object storage: inputs and outputs at fsspec URLs (``s3://``, ``gs://``, ``az://``,
``file://``, ``memory://``), so that a cluster needs no shared disk.

**A URL and its options travel together.** A :class:`StorageURL` is the URL itself (a ``str``:
keys, records and messages show the URL and nothing else) that also holds the file system's
options (``--storage-options``: an endpoint, a profile, keys). It is what a source puts in an
input's ``path`` and what the write stage gets as its root, so the options reach whichever
process reads or writes (a thread, a process worker, a Dask worker) with the value itself, and
never the manifest, the logs or the report (``repr`` and ``str`` are the bare URL). A plain
``str`` URL uses the options given to :func:`use_options` in this process, else the file
system's own defaults (environment variables such as ``AWS_ACCESS_KEY_ID`` and
``AWS_ENDPOINT_URL``, a profile, an instance role).

**Lazily imported.** fsspec and the protocol's package (s3fs for ``s3://``) are imported when a
URL is first used. Missing, they raise :class:`StorageUnavailable`, whose message names the
extra to install (``pip install 'pixpipe[s3]'``); the command line turns it into exit 2.

**Whole objects only.** :func:`write_object` sends the whole encoded output in one request (on
S3 one ``PutObject``, never a multipart upload, up to S3's 5 GiB limit for one PUT): the store
shows the object once all of it has arrived, so a failure or a Ctrl-C mid-write leaves no
partial object and no unfinished upload behind. ``file://`` URLs are written like local outputs
(temporary file, then rename).

**Listing goes folder by folder and, on S3, page by page** (:func:`iter_folder`: one
``ListObjectsV2`` request of ``PAGE_KEYS`` keys at a time, delimited by ``/``, its objects and
subfolders handed on as each page arrives): memory holds one page, never a whole folder or
tree. Other protocols (``gs://``, ``az://``, ``file://``, ``memory://``) list one folder whole
with ``fs.ls`` (:func:`list_folder`); gcsfs and adlfs have page tokens too and could follow.

**Identity** of an object: its size and ETag (S3, GCS, Azure), else its size and modification
time, so resume redoes an object that was replaced.
"""

from __future__ import annotations

import io
import json
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "EXTRA",
    "ObjectInfo",
    "StorageError",
    "StorageURL",
    "StorageUnavailable",
    "is_url",
    "iter_folder",
    "join_url",
    "list_folder",
    "object_size",
    "open_input",
    "open_text",
    "options_of",
    "present_size",
    "read_range",
    "remove_object",
    "use_options",
    "write_object",
]

#: The optional dependencies that storage URLs need (``pip install 'pixpipe[s3]'``).
EXTRA = "s3"
INSTALL = f"pip install 'pixpipe[{EXTRA}]'"

#: One PUT carries up to 5 GiB on S3; s3fs switches to a multipart upload above twice its
#: ``chunksize``, so this chunk size keeps every output a single request.
_ONE_PUT = 5 * 2**30 // 2

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: Packages of the protocols people use most, named in the message when one is missing.
_PACKAGES = {
    **dict.fromkeys(("s3", "s3a"), "s3fs"),
    **dict.fromkeys(("gs", "gcs"), "gcsfs"),
    **dict.fromkeys(("az", "abfs", "abfss"), "adlfs"),
}

_defaults: dict[str, Any] = {}


class StorageError(Exception):
    """A storage URL that cannot be used (bad URL, an object that is not there)."""


class StorageUnavailable(StorageError):
    """The package a URL's protocol needs is not installed; the message says what to install."""


class StorageURL(str):
    """A URL (the string) with the file system options to reach it (never shown)."""

    options: Mapping[str, Any]
    listings: OrderedDict[str, dict[str, int] | None]  # see present_size

    def __new__(cls, url: str, options: Mapping[str, Any] | None = None) -> StorageURL:
        self = super().__new__(cls, url)
        self.options = dict(options or {})
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # a worker receives the options with the URL
        return (StorageURL, (str(self), dict(self.options)))

    def __repr__(self) -> str:
        return repr(str(self))


def is_url(path: object) -> bool:
    """Whether ``path`` is a storage URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def use_options(options: Mapping[str, Any]) -> None:
    """The options for plain ``str`` URLs in this process (see the module docstring)."""
    _defaults.clear()
    _defaults.update(options)


def options_of(url: str) -> dict[str, Any]:
    """The file system options for ``url``: its own, else this process's defaults."""
    own = getattr(url, "options", None)
    return dict(own if own is not None else _defaults)


def parse_options(text: str) -> dict[str, Any]:
    """``--storage-options``: a JSON object, or TOML (``key = "value"`` lines, tables)."""
    import tomllib

    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
    else:
        try:
            value = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"neither a JSON object nor TOML: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object or a TOML table")
    return value


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The file system for ``url`` and the path within it; :class:`StorageUnavailable` when
    its package is missing. fsspec caches instances per protocol and options."""
    protocol = _protocol(url)
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise StorageUnavailable(
            f"{protocol}:// URLs need fsspec and {_PACKAGES.get(protocol, 'its package')}: "
            f"{INSTALL}"
        ) from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package = _PACKAGES.get(protocol)
        hint = INSTALL if package == "s3fs" else f"pip install {package or '<its package>'}"
        raise StorageUnavailable(
            f"{protocol}:// URLs need the {package or protocol} package ({exc}): {hint}"
        ) from None
    except ValueError as exc:
        raise StorageError(f"{url}: unknown storage protocol {protocol!r} ({exc})") from None
    fs, path = url_to_fs(str(url), **options_of(url))
    return fs, path


def _protocol(url: str) -> str:
    m = _SCHEME.match(url)
    if m is None:
        raise StorageError(f"{url!r} is not a storage URL (scheme://...)")
    return m.group(1).lower()


#: Protocols whose store lives in the memory of one process: what a process worker writes
#: there, the parent never sees.
PROCESS_LOCAL = frozenset({"memory"})


def process_local(path: object) -> bool:
    """Whether ``path`` is a URL of a store private to each process (``memory://``)."""
    return is_url(path) and _protocol(str(path)) in PROCESS_LOCAL


def join_url(root: str, rel: str) -> StorageURL:
    """``root/rel`` with ``root``'s options; ``rel`` must be a plain relative path (no ``..``,
    no empty or ``.`` parts): an output key can never leave its prefix."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise StorageError(f"output path {rel!r} is not a plain relative path")
    return StorageURL(root.rstrip("/") + "/" + rel, options_of(root))


# -- objects ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object of a listing: its URL, its key below the listed prefix, size and identity."""

    url: StorageURL
    rel: str
    size: int
    identity: dict[str, Any]

    @classmethod
    def of(cls, url: StorageURL, rel: str, info: Mapping[str, Any]) -> ObjectInfo:
        """The object whose listing or ``info`` entry is ``info`` (its size: the identity's)."""
        ident = identity(info)
        return cls(url, rel, ident["size"], ident)


def identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """Size plus ETag (or, without one, the modification time) of an object's info."""
    size = int(info.get("size", info.get("Size", 0)) or 0)
    for name in ("ETag", "etag", "md5Hash", "md5_checksum"):
        tag = info.get(name)
        if tag:
            return {"size": size, "etag": str(tag).strip('"')}
    for name in ("LastModified", "mtime", "updated", "last_modified", "created"):
        when = info.get(name)
        if when is not None:
            stamp = when.isoformat() if hasattr(when, "isoformat") else str(when)
            return {"size": size, "mtime": stamp}
    return {"size": size}


def list_folder(prefix: str) -> tuple[list[ObjectInfo], list[StorageURL]]:
    """The objects directly in the "folder" ``prefix`` (sorted by name; ``rel``: the name) and
    its subfolders' URLs (sorted). Folder markers (keys ending in ``/``) are left out. The
    whole folder at once (``fs.ls``): what :func:`iter_folder` uses for the protocols it does
    not page."""
    fs, path = filesystem(prefix)
    base = path.rstrip("/")
    root = str(prefix).rstrip("/")
    opts = options_of(prefix)
    files: list[ObjectInfo] = []
    folders: list[StorageURL] = []
    for info in fs.ls(base, detail=True, refresh=True):
        name = str(info.get("name") or "").rstrip("/")
        leaf = name.rpartition("/")[2]
        if not leaf or name == base:
            continue
        url = StorageURL(f"{root}/{leaf}", opts)
        if info.get("type") == "directory":
            folders.append(url)
        elif not str(info.get("name", "")).endswith("/"):
            files.append(ObjectInfo.of(url, leaf, info))
    files.sort(key=lambda o: o.rel)
    folders.sort()
    return files, folders


#: Keys (objects and subfolders) per page of an S3 listing (``MaxKeys``; S3 sends 1,000 at most).
PAGE_KEYS = 1000


def iter_folder(prefix: str) -> Iterator[ObjectInfo | StorageURL]:
    """The objects (``rel``: the name) and subfolders' URLs directly in the "folder" ``prefix``,
    in the store's key order (a subfolder ``x/`` sorts as ``x/``), without folder markers.
    S3: page by page as they arrive (memory holds one page, the listing's cursor is its
    continuation token), with the same identities as :func:`list_folder`; other protocols:
    :func:`list_folder`'s whole listing, merged."""
    fs, path = filesystem(prefix)
    if _protocol(prefix) in ("s3", "s3a"):
        return _s3_folder(fs, path, prefix)
    files, folders = list_folder(prefix)
    entries: list[ObjectInfo | StorageURL] = [*files, *folders]
    entries.sort(key=lambda e: e.rel if isinstance(e, ObjectInfo) else _leaf(e) + "/")
    return iter(entries)


def _leaf(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def _s3_folder(fs: Any, path: str, prefix: str) -> Iterator[ObjectInfo | StorageURL]:
    bucket, key, _ = fs.split_path(path.rstrip("/"))
    base = f"{key}/" if key else ""
    root = str(prefix).rstrip("/")
    opts = options_of(prefix)
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": base, "Delimiter": "/"}
    request.update(getattr(fs, "req_kw", {}))
    while True:
        page = _list_page(fs, {**request, "MaxKeys": PAGE_KEYS})
        found: list[tuple[str, ObjectInfo | StorageURL]] = []
        for obj in page.get("Contents", ()):
            leaf = str(obj["Key"])[len(base) :]
            if leaf and "/" not in leaf:  # not the folder's own marker
                url = StorageURL(f"{root}/{leaf}", opts)
                found.append((leaf, ObjectInfo.of(url, leaf, obj)))
        for sub in page.get("CommonPrefixes", ()):
            leaf = str(sub["Prefix"])[len(base) :]
            # an empty segment (keys "a//b.jpg"): "root//", a folder with no name, that the
            # walk records as not walked (no file path has one), rather than nothing at all
            name = leaf.rstrip("/")
            found.append((leaf, StorageURL(f"{root}/{name}" if name else f"{root}//", opts)))
        found.sort(key=lambda f: f[0])  # each list is in key order: merge them
        yield from (entry for _, entry in found)
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def _list_page(fs: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One ``ListObjectsV2`` request through s3fs (its retries, its error translation)."""
    from fsspec.asyn import sync

    return dict(sync(fs.loop, fs._call_s3, "list_objects_v2", **request))


def object_size(url: str) -> int | None:
    """The size of the object at ``url``; None when there is none (or it is a prefix)."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") == "directory":
        return None
    return int(info.get("size", 0) or 0)


#: Folder listings a root keeps for :func:`present_size` (the resume checks of one run walk
#: the inputs folder by folder, so their outputs come folder by folder too).
LISTINGS_KEPT = 16


#: The most objects a kept listing holds: the outputs of a bigger folder are looked up one
#: request each (so at most ``LISTINGS_KEPT * LISTING_MAX`` names are held, whatever the size of
#: the output folders).
LISTING_MAX = 20_000


def present_size(root: str, rel: str) -> int | None:
    """The size of the object ``root/rel`` (None: not there), from a listing of its folder
    kept on ``root`` (a :class:`StorageURL`; the ``LISTINGS_KEPT`` latest folders): a run's
    resume checks send one LIST per output folder rather than one HEAD per output. A folder of
    more than ``LISTING_MAX`` objects is not kept: its outputs are asked for one by one. The
    cache lives as long as ``root`` (one run's check); a plain ``str`` root asks each time."""
    url = join_url(root, rel)
    cache: OrderedDict[str, dict[str, int] | None] | None = getattr(root, "listings", None)
    if cache is None:
        if not isinstance(root, StorageURL):
            return object_size(url)
        cache = root.listings = OrderedDict()
    folder, _, name = str(url).rpartition("/")
    if folder in cache:
        cache.move_to_end(folder)
        listing = cache[folder]
    else:
        listing = cache[folder] = _sizes(StorageURL(folder, options_of(root)))
        if len(cache) > LISTINGS_KEPT:
            cache.popitem(last=False)
    return object_size(url) if listing is None else listing.get(name)


def _sizes(folder: str) -> dict[str, int] | None:
    """Name -> size of the objects in ``folder`` (paged on S3); None past ``LISTING_MAX``."""
    sizes: dict[str, int] = {}
    try:
        for entry in iter_folder(folder):
            if isinstance(entry, ObjectInfo):
                sizes[entry.rel] = entry.size
                if len(sizes) > LISTING_MAX:
                    return None
    except FileNotFoundError:
        return {}
    return sizes


def object_info(url: str) -> dict[str, Any] | None:
    """The file system's info of ``url`` (an object or a prefix); None when there is none."""
    fs, path = filesystem(url)
    try:
        return dict(fs.info(path))
    except FileNotFoundError:
        return None


def read_range(url: str, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of the object at ``url`` (fewer at its end; none past it: S3 answers
    a range past the end, an empty object's first bytes too, with 416, an OSError)."""
    fs, path = filesystem(url)
    try:
        return bytes(fs.cat_file(path, start=start, end=end))
    except OSError:
        try:
            size = fs.info(path).get("size")
        except OSError:
            size = None
        if isinstance(size, int) and size <= start:
            return b""
        raise


def open_input(path: str) -> io.BufferedReader:
    """``open(path, "rb")`` for a local path; for a storage URL the object, streamed in blocks
    (buffered, with ``peek``), closed by the caller."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    return io.BufferedReader(fs.open(inner, "rb"))


def open_text(path: str, **text: Any) -> io.TextIOWrapper:
    """``open(path, **text)`` (text: ``encoding``, ``errors``, ``newline``) for a local path or
    a storage URL (see :func:`open_input`)."""
    return io.TextIOWrapper(open_input(path), **text)


def write_object(url: str, data: bytes) -> None:
    """Store ``data`` whole at ``url`` (see the module docstring: one request, no partial
    object; ``file://``: temporary file and rename)."""
    fs, path = filesystem(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        from pathlib import Path

        from pipeline import atomic_write_bytes

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data, fsync=False)
    elif protocol in ("s3", "s3a"):
        fs.pipe_file(path, data, chunksize=_ONE_PUT)
    else:
        fs.pipe_file(path, data)


def remove_object(url: str) -> bool:
    """Remove the object at ``url``; False when there is none."""
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True


def put_file(local: str, url: str) -> None:
    """Upload the local file ``local`` whole to ``url`` (end-of-run files; see
    :func:`write_object`)."""
    with open(local, "rb") as fh:
        write_object(url, fh.read())


def get_file(url: str, local: str) -> bool:
    """Download ``url`` to ``local`` (atomically); False when there is no such object."""
    from pathlib import Path

    from pipeline import atomic_write_bytes

    fs, path = filesystem(url)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return False
    atomic_write_bytes(Path(local), bytes(data))
    return True
