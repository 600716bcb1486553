"""Stage factories: the pipeline's image stages, ready to compose with your own in a ``Pipeline``.

::

    walk(folders) ─▶ read_stage() ─────▶ [yours] ─▶ resize_stage(256) ─▶ [yours] ─▶ write_stage(out)
    urls ──────────▶ download_stage() ─▶
                     (thread / async)             (process: decode, resize,       (thread)
                                                   encode, statistics: one call)

Each factory returns a :class:`pipeline.Stage` with the kind and worker count the ``process``
command uses, options keyword-only and checked when the factory is called (a
:class:`pipeline.ConfigError`, which is a ``ValueError``). Values between the stages:

* :func:`walk` yields one item per file (keys: paths relative to the folder) or a record
  (special files, dangling symlinks: ``skipped`` with the reason); plain paths work too;
* :func:`read_stage` and :func:`download_stage` give a :class:`~stages.files.Loaded` (``rel``:
  where its outputs go below each size folder, ``data``: the file's bytes, ``origin``: for a
  download, its final URL, status and attempts). A file that is not an image is ``skipped``;
* :func:`resize_stage` gives a :class:`~stages.thumbs.Rendered` (``result.outputs``: the
  encoded images, one per size; ``result.stats``: :func:`stages.image_stats` of the largest);
* :func:`write_stage` writes each output atomically under ``<output>/<size>/<rel>`` (the naming
  rule of :mod:`stages.naming`) and returns the JSON record the manifest keeps.

A stage of yours between two of these takes and returns those values (or raises
``pipeline.Skip("why")`` to leave an item out). The per-item functions below are module-level,
so the process stage pickles by reference; this module imports neither numpy, Pillow nor
aiohttp (:func:`download_stage` imports aiohttp when called).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline import ConfigError, Item, Record, Skip, Stage, stage

from .files import DEFAULT_MAX_FILE_BYTES, Loaded, NumpyFile, read_file
from .options import OutputFormat, ResizeMode, ResizeOptions, SizeLike, as_sizes
from .sources import SourceFile, walk_inputs
from .thumbs import Rendered, render, write_outputs

__all__ = [
    "download_stage",
    "read_image",
    "read_stage",
    "resize_image",
    "resize_stage",
    "walk",
    "write_rendered",
    "write_stage",
]

_DEFAULTS = ResizeOptions()
#: Seconds one item may take in a stage before it fails with ItemTimeout (as ``process``).
DEFAULT_TIMEOUT = 120.0


def _cores() -> int:
    return os.cpu_count() or 1


def _workers(workers: int | None, default: int) -> int:
    if workers is None:
        return default
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    return workers


def _check(name: str, timeout: float | None) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name must be a non-empty string, got {name!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise ConfigError(f"timeout must be a number of seconds > 0, or None; got {timeout!r}")


def _globs(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    globs = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(g, str) for g in globs):
        raise ConfigError(f"{what} must be a glob or a list of globs, got {value!r}")
    return globs


# --------------------------------------------------------------------------- source


def walk(
    *paths: str | os.PathLike[str],
    include: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    output: str | os.PathLike[str] | None = None,
    verify_content: bool = False,
    case_sensitive_globs: bool = False,
) -> Iterator[Item | Record]:
    """Every entry under the folders (and files) ``paths``, lazily, as ``Pipeline`` inputs.

    A regular file becomes an item keyed by its path relative to its folder (several folders:
    each folder's name first); anything else one record: special files, dangling, looping or
    outside symlinks ``skipped`` with the reason, an unreadable folder ``failed``. Items carry
    the file's size and ``mtime_ns``, so a re-run into the same output folder redoes changed
    files (``verify_content``: a SHA-256 too). ``include``/``exclude``: globs on the key or the
    name, in either case unless ``case_sensitive_globs`` (left-out files get no record).
    ``output``: a folder never walked (the run's output folder, when it lies inside an input
    folder). The paths must exist (``ConfigError``).
    """
    if not paths:
        raise ConfigError("walk needs at least one folder or file")
    for path in paths:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"walk takes paths, got {path!r}")
        if not os.path.lexists(path):
            raise ConfigError(f"input {os.fspath(path)!r} does not exist")
    flags = {"verify_content": verify_content, "case_sensitive_globs": case_sensitive_globs}
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} must be a bool, got {value!r}")
    if output is not None:
        _check_apart(paths, output)
    return walk_inputs(
        paths,
        include=_globs(include, "include"),
        exclude=_globs(exclude, "exclude"),
        never=() if output is None else (output,),
        verify_content=verify_content,
        case_sensitive_globs=case_sensitive_globs,
    )


def _check_apart(paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> None:
    """An input that is the output folder, or lies inside it, would read outputs back."""
    out = os.path.realpath(output)
    for path in paths:
        real = os.path.realpath(path)
        if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"input {os.fspath(path)!r} is the output folder {os.fspath(output)!r} or inside "
                "it: its outputs would be read back as inputs"
            )


# --------------------------------------------------------------------------- read


def read_image(value: SourceFile | Loaded | str | os.PathLike[str], max_bytes: int) -> Loaded:
    """The read stage's function: a file's bytes (a ``Loaded``); downloaded bytes pass through.

    A plain path is named by its file name alone (use :func:`walk` for folders, and for files
    that may share a name). A file whose content is not an image raises ``Skip``.
    """
    if isinstance(value, Loaded):
        return value
    if isinstance(value, str | os.PathLike):
        path = os.path.abspath(os.fsdecode(value))
        value = SourceFile(path, os.path.basename(path))
    if not isinstance(value, SourceFile):
        raise TypeError(
            f"read_stage reads paths and the items of stages.walk(), got {type(value).__name__}"
        )
    try:
        return read_file(value, max_bytes)
    except NumpyFile:
        raise Skip("not an image: a NumPy array (.npy)") from None


def read_stage(
    *,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    name: str = "read",
) -> Stage:
    """A thread stage that reads image files (the items of :func:`walk`, or paths).

    Images are recognised by their first bytes, whatever their name; anything else is
    ``skipped`` with what it is (text, a PDF, ...), before the rest is read. A file over
    ``max_bytes`` fails (``FileTooLarge``). Downloaded bytes (from :func:`download_stage`)
    pass through. Workers: ``max(2, cores)`` threads by default; they only keep the resize
    workers fed.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError(f"max_bytes must be a positive int, got {max_bytes!r}")
    _check(name, timeout)
    return stage(
        read_image,
        max_bytes,
        kind="thread",
        name=name,
        workers=_workers(workers, max(2, _cores())),
        capacity=64,  # paths: small
        timeout=timeout,
        retries=1,
        retry_on=(InterruptedError,),
    )


# --------------------------------------------------------------------------- resize


def resize_image(value: Loaded, options: ResizeOptions) -> Rendered:
    """The resize stage's function: decode, resize to every size, encode, statistics."""
    if not isinstance(value, Loaded):
        raise TypeError(
            "resize_stage takes what read_stage or download_stage give (stages.Loaded), "
            f"got {type(value).__name__}"
        )
    return render(value, options)


def resize_stage(
    size_or_sizes: SizeLike | Sequence[SizeLike],
    *,
    mode: ResizeMode = "fit",
    upscale: bool = False,
    format: OutputFormat | str = "keep",
    quality: int = _DEFAULTS.quality,
    allow_truncated: bool = False,
    max_pixels: int = _DEFAULTS.max_pixels,
    max_output_pixels: int = _DEFAULTS.max_output_pixels,
    pad_color: tuple[int, int, int] = _DEFAULTS.pad_color,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    name: str = "resize",
) -> Stage:
    """A process stage: decode each image once, render every size, encode, measure: one call
    per image in a worker process, so decoded pixels never cross a process boundary.

    ``size_or_sizes``: one size (``512``, ``"640x480"``, ``(640, 480)``) or a list of them.
    ``mode``, ``upscale``, ``allow_truncated``, ``max_pixels``, ``max_output_pixels``,
    ``pad_color``: as :func:`stages.thumbnail`. ``format``: ``"keep"`` (JPEG, PNG, WebP and
    AVIF inputs keep theirs, others become PNG when they have alpha, else JPEG), ``"jpeg"``,
    ``"png"``, ``"webp"`` or ``"avif"``; ``quality`` 1..100. Workers: one process per core by
    default. ``timeout``: seconds per image, after which its worker is killed and replaced and
    the item fails.

    A script that runs this stage must start its pipeline under ``if __name__ == "__main__":``
    (the worker processes import the script).
    """
    fmt = format.lower() if isinstance(format, str) else format
    try:
        options = ResizeOptions(
            sizes=as_sizes(size_or_sizes),
            mode=mode,
            upscale=upscale,
            format="jpeg" if fmt == "jpg" else fmt,  # type: ignore[arg-type]
            quality=quality,
            allow_truncated=allow_truncated,
            max_pixels=max_pixels,
            max_output_pixels=max_output_pixels,
            pad_color=pad_color,
        )
    except ValueError as exc:
        raise ConfigError(f"resize_stage: {exc}") from exc
    _check(name, timeout)
    n = _workers(workers, _cores())
    return stage(
        resize_image,
        options,
        kind="process",
        name=name,
        workers=n,
        capacity=2 * n,  # whole files: two per worker keep them busy
        timeout=timeout,
        max_batch=4,
        fingerprint=options.fingerprint(),  # resume redoes images when these options change
    )


# --------------------------------------------------------------------------- download


def download_stage(
    *,
    workers: int = 64,
    connect_timeout: float = 10.0,
    read_timeout: float = 30.0,
    total_timeout: float = 120.0,
    retries: int = 3,
    max_bytes: int = 50 * 2**20,
    limit_per_host: int = 8,
    allow_private_hosts: bool = False,
    user_agent: str | None = None,
    spool_above: int | None = 4 * 2**20,
    spool_dir: str | os.PathLike[str] | None = None,
    name: str = "download",
) -> Stage:
    """An async stage that downloads URLs (the inputs: URL strings, each its own key).

    One ``aiohttp`` session for the stage, opened when the run starts and closed when it ends
    (the stage's context). Per attempt: ``connect_timeout`` (DNS, then each connect),
    ``read_timeout`` (the longest wait for the next bytes) and ``total_timeout`` (the request,
    its redirects and the whole body). ``retries`` extra attempts with exponential backoff and
    jitter on connection errors, timeouts, 429 and 5xx (honouring ``Retry-After``); at most 5
    redirects; bodies over ``max_bytes`` fail (checked while streaming); ``workers`` downloads
    at once, at most ``limit_per_host`` to one host. Hosts on loopback, private or link-local
    addresses are refused unless ``allow_private_hosts``. Each output is named after its URL:
    ``<host>/<path>_<hash>.<ext>`` below each size folder.

    A body over ``spool_above`` bytes (None: never) is written to an unnamed temporary file in
    ``spool_dir`` (default: ``TMPDIR``) as it arrives, instead of memory: ``Loaded.data`` is
    then a ``SpooledBody`` (``len()``, ``bytes()``), which the resize workers receive as bytes.
    So memory stays near ``workers`` x ``spool_above`` whatever ``max_bytes`` allows.
    """
    from .download import DownloadConfig
    from .fetching import download_url, session_factory

    _check(name, None)
    n = _workers(workers, 64)
    agent: dict[str, Any] = {} if user_agent is None else {"user_agent": user_agent}
    try:
        config = DownloadConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            total_timeout=total_timeout,
            retries=retries,
            max_bytes=max_bytes,
            limit=max(n, limit_per_host) if isinstance(limit_per_host, int) else n,
            limit_per_host=limit_per_host,
            allow_private_hosts=allow_private_hosts,
            spool_above=spool_above,
            spool_dir=None if spool_dir is None else os.fsdecode(spool_dir),
            **agent,
        )
    except ValueError as exc:
        raise ConfigError(f"download_stage: {exc}") from exc
    # fetch bounds every phase and retries itself: no engine timeout or retries on top
    return stage(
        download_url,
        config,
        kind="async",
        name=name,
        workers=n,
        capacity=64,  # URLs: small
        context=session_factory(config),
        context_arg="session",
    )


# --------------------------------------------------------------------------- write


def write_rendered(value: Rendered, root: str) -> dict[str, Any]:
    """The write stage's function: every output written atomically; the manifest's record."""
    if not isinstance(value, Rendered):
        raise TypeError(
            f"write_stage writes what resize_stage gives (stages.Rendered), got "
            f"{type(value).__name__}"
        )
    return write_outputs(value, root)


def write_stage(
    output_folder: str | os.PathLike[str],
    *,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    name: str = "write",
) -> Stage:
    """A thread stage that writes each image's outputs under ``output_folder``.

    ``<output_folder>/<size>/<rel>``: one folder per size label (``256``, ``640x480``), the
    input tree mirrored below it; names by the rule of :mod:`stages.naming` (``b.jpg`` stays
    ``b.jpg``, ``b.png`` written as JPEG is ``b.png.jpg``). Every file is written to a
    temporary name and renamed: never half a file. The item's value becomes the manifest's
    ``result``: the original's size, mode and format, each output's path, size and bytes, and
    the statistics. Workers: ``max(1, cores // 2)`` threads by default.
    """
    if not isinstance(output_folder, str | os.PathLike) or not os.fspath(output_folder):
        raise ConfigError(f"write_stage needs an output folder, got {output_folder!r}")
    root = os.fsdecode(output_folder)
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"write_stage: {root!r} exists and is not a folder")
    _check(name, timeout)
    return stage(
        write_rendered,
        root,
        kind="thread",
        name=name,
        workers=_workers(workers, max(1, _cores() // 2)),
        capacity=32,  # encoded thumbnails: small
        timeout=timeout,
    )
