"""The options' side of storage URLs (:mod:`stages.storage`): checked when a
:class:`~app.config.ProcessConfig` is made, so a run that cannot reach its storage fails
before anything starts (exit 2).

* Every URL among the inputs, the ``--urls`` lists and the output becomes a
  :class:`~stages.storage.StorageURL` holding ``--storage-options``: the options travel with
  the URL to whichever process reads or writes (never shown: the config's ``repr`` and the
  records show the bare URL).
* A URL whose protocol needs a package that is not installed: the message names the extra
  (``pip install 'pixpipe[s3]'``).
* An input URL that names nothing (no object, no object below it): "does not exist".
* A storage output takes the ``files`` output format (shards are written to local folders
  only, for now), and no input may lie below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline import ConfigError
from stages.storage import StorageError, StorageURL, is_url, object_info, options_of

__all__ = [
    "attach_storage_options",
    "check_storage_output",
    "check_storage_url",
    "shown_argv",
]

#: The flag whose value is never shown (it may hold keys).
SECRET_FLAG = "--storage-options"


def shown_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of ``--storage-options`` hidden (the lock file shows it)."""
    shown: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            shown.append("(hidden)")
        elif arg.startswith(SECRET_FLAG + "="):
            shown.append(SECRET_FLAG + "=(hidden)")
        else:
            shown.append(arg)
        hide = arg == SECRET_FLAG
    return shown


def attach_storage_options(value: str, options: dict[str, Any]) -> str:
    """``value`` as a :class:`StorageURL` holding ``options`` when it is a URL, else itself."""
    return StorageURL(value, options) if is_url(value) else value


def check_storage_url(url: str) -> bool:
    """Whether something (an object, or objects below it) is at ``url``; ConfigError when the
    URL cannot be used at all (its package is missing, the store refuses)."""
    return _info(url, url) is not None


def _info(url: str, shown: str) -> dict[str, Any] | None:
    """:func:`object_info` of ``url``, its errors as ConfigError (``shown``: the URL named)."""
    try:
        return object_info(url)
    except StorageError as exc:
        raise ConfigError(str(exc)) from None
    # Broad by design: before the run, anything the client library raises means the URL
    # cannot be used; botocore's own errors (an endpoint that refuses connections) are no
    # OSError, and escaped as a traceback.
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot reach {shown}: {exc}") from None


#: The protocols whose URLs start with a bucket (a container) that must exist to be written.
BUCKETED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def check_storage_output(output: str, output_format: str, inputs: Sequence[str]) -> None:
    """A storage output: its file system usable, its bucket there, the ``files`` format, no
    input below it."""
    _info(output, f"--output {output}")
    scheme, _, rest = output.partition("://")
    bucket = rest.split("/", 1)[0]
    if scheme.lower() in BUCKETED and bucket:
        root = StorageURL(f"{scheme}://{bucket}", options_of(output))
        if _info(root, f"--output {output}") is None:
            raise ConfigError(
                f"--output {output}: the bucket {bucket!r} does not exist (or these "
                "credentials cannot see it): every output would fail to be written"
            )
    if output_format != "files":
        raise ConfigError(
            f"--output-format {output_format} writes to a local folder only (for now), "
            f"not to {output}"
        )
    out = output.rstrip("/") + "/"
    for item in inputs:
        if is_url(item) and (item.rstrip("/") + "/").startswith(out):
            raise ConfigError(
                f"input {item!r} is the output {output!r} or inside it: its outputs would "
                "be read back as inputs; choose another --output"
            )
