"""stages: the concrete stages of the image/data pipeline, each a plain function first.

The public API, for scripts (README, "Use it from Python"), is what this package exports:

* plain functions: :func:`thumbnail` (an image file resized, with the pipeline's careful
  decode), :func:`image_stats` (the statistics the manifest records), :func:`encode`;
* a source and stage factories that compose with :class:`pipeline.Pipeline` next to your own
  stages: :func:`walk`, :func:`read_stage`, :func:`download_stage`, :func:`resize_stage`,
  :func:`write_stage`;
* the values those stages pass on (:class:`Loaded`, :class:`Rendered`) and the errors of a bad
  image (:class:`ImageError` and its subclasses).

The modules of the package are its implementation, used by the ``process`` command (which lives
in the application layer, ``app.process``; this package never imports ``app``); their names are
not re-exported here and may change. Nothing registers itself on import.

The names above are imported on first use (PEP 562): ``import stages`` imports nothing, and
neither the factories nor the values import numpy or Pillow (only :func:`thumbnail`,
:func:`encode` and :func:`image_stats` do, when called), so a process that only builds and
runs pipelines never loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import encode, image_stats, thumbnail
    from .factories import download_stage, read_stage, resize_stage, walk, write_stage
    from .files import Loaded
    from .options import (
        DecodeError,
        DecompressionBomb,
        ImageError,
        OutputTooLarge,
        TruncatedImage,
        UnsupportedImage,
    )
    from .thumbs import Rendered

_WHERE = {
    "encode": "api",
    "image_stats": "api",
    "thumbnail": "api",
    "download_stage": "factories",
    "read_stage": "factories",
    "resize_stage": "factories",
    "walk": "factories",
    "write_stage": "factories",
    "Loaded": "files",
    "Rendered": "thumbs",
    "DecodeError": "options",
    "DecompressionBomb": "options",
    "ImageError": "options",
    "OutputTooLarge": "options",
    "TruncatedImage": "options",
    "UnsupportedImage": "options",
}

__all__ = [
    "DecodeError",
    "DecompressionBomb",
    "ImageError",
    "Loaded",
    "OutputTooLarge",
    "Rendered",
    "TruncatedImage",
    "UnsupportedImage",
    "download_stage",
    "encode",
    "image_stats",
    "read_stage",
    "resize_stage",
    "thumbnail",
    "walk",
    "write_stage",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
