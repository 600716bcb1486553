"""Options declared once, and everything derived from the declaration.

An option is a field of a frozen config dataclass (:class:`app.config.ProcessConfig`) declared
with :func:`option`. The field gives its name, Python type and default; the declaration adds its
:class:`Kind` (how text and config-file values become the value, with their checks), its help,
metavar and unit, and its group. From that one place come:

* the command-line flags (:func:`add_arguments`): the field ``max_file_size`` is the flag
  ``--max-file-size``; a yes/no option is ``--x`` / ``--no-x``; a list option repeats
  (``--size 512 --size 64x64``); every flag's default is "not given", so a flag given wins over
  the config file and one not given leaves the file's value alone;
* the config-file keys (:func:`values_from_mapping`): the flag's name without the dashes
  (``max-file-size``; ``max_file_size`` is the same key), a list as a list or one string;
* validation with a message that names the option and where its value came from:
  ``--quality: expected an integer from 1 to 100, got '0'``,
  ``run.toml:quality: expected an integer from 1 to 100, got "high" (text)``
  (:class:`~pipeline.ConfigError`: exit 2);
* the README's option table (:func:`app.readme.option_table`; ``python -m app.readme`` writes
  it, a test checks it is in step);
* where an option does something (:class:`Needs`: ``--shard-size`` only with
  ``--backend dask``), said in its help and the README, and checked by :func:`inert`: the
  command line refuses such a flag given where it does nothing (exit 2), and a config file's
  key only warns (a file may hold settings shared by runs of several kinds).

Only the standard library and :mod:`pipeline.errors` are imported here: the command line is
parsed before anything heavy is imported.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pipeline import ConfigError

__all__ = [
    "ByteSize",
    "Choice",
    "Color",
    "Declared",
    "Flag",
    "Integer",
    "Kind",
    "Needs",
    "Number",
    "Option",
    "Table",
    "Text",
    "TextList",
    "add_arguments",
    "declared",
    "inert",
    "merge_values",
    "option",
    "parse_bytes",
    "values_from_args",
    "values_from_mapping",
]

T = TypeVar("T")

_METADATA_KEY = "app.option"


# --------------------------------------------------------------------------- value kinds


def _got(value: object) -> str:
    """A value as a config file would show it, with its type when it is not text."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    kinds = {int: "an integer", float: "a number", list: "a list", tuple: "a list", dict: "a table"}
    return f"{value!r} ({kinds.get(type(value), type(value).__name__)})"


class Kind(abc.ABC, Generic[T]):
    """How the values of one option are read and checked.

    A problem is a ``ValueError`` whose message completes ``"<where>: "`` (the flag, or the
    config file and key): the caller adds where the value came from.
    """

    #: "value": a flag with a value; "flag": --x / --no-x; "list": repeatable (a list in a file)
    arity: ClassVar[Literal["value", "flag", "list"]] = "value"
    #: what a value is, for the README table ("an integer from 1 to 100")
    what: str = "a value"
    metavar: str = "VALUE"

    def from_text(self, text: str) -> T:
        """A value given as text on the command line."""
        return self.from_value(text)

    @abc.abstractmethod
    def from_value(self, value: object) -> T:
        """A value from a config file or from Python: the option's type, or its text form."""

    def join(self, values: Sequence[T]) -> T:
        """Several values of one source (a repeated flag, a list): the last one wins."""
        return values[-1]

    def override(self, earlier: T, later: T) -> T:
        """The config file's value, then the flag's: the flag wins."""
        return later

    def show(self, value: T) -> str:
        """A value as one would write it (the README's defaults)."""
        return str(value)


class Text(Kind[str]):
    """Text; ``normalize`` maps spellings (``tab`` -> a tab), ``check`` raises ValueError.
    ``numbers``: a whole number in a file is its digits (``size = 512``)."""

    def __init__(
        self,
        *,
        what: str = "text",
        metavar: str = "TEXT",
        normalize: Callable[[str], str] | None = None,
        check: Callable[[str], object] | None = None,
        numbers: bool = False,
    ) -> None:
        self.what, self.metavar = what, metavar
        self.normalize, self.check, self.numbers = normalize, check, numbers

    def digits(self, value: object) -> object:
        """``value``, or its digits when it is a whole number that this kind takes as text."""
        if self.numbers and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def from_value(self, value: object) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        value = self.digits(value)
        if not isinstance(value, str):
            raise ValueError(f"expected {self.what}, got {_got(value)}")
        if self.normalize is not None:
            value = self.normalize(value)
        if self.check is not None:
            self.check(value)
        return value


class Integer(Kind[int]):
    """An integer, optionally within ``low`` .. ``high``."""

    def __init__(self, *, low: int | None = None, high: int | None = None, metavar: str = "N"):
        self.low, self.high, self.metavar = low, high, metavar
        if low is not None and high is not None:
            self.what = f"an integer from {low} to {high}"
        elif low is not None:
            self.what = f"an integer >= {low}"
        else:
            self.what = "an integer"

    def from_text(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected {self.what}, got {text!r}") from None
        return self._check(value, text)

    def from_value(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):  # "90" in a file is text
            raise ValueError(f"expected {self.what}, got {_got(value)}")
        return self._check(value, value)

    def _check(self, value: int, given: object) -> int:
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise ValueError(f"expected {self.what}, got {_got(given)}")
        return value


class Number(Kind[float]):
    """A finite number > 0 (seconds, for the options that use it)."""

    what = "seconds, > 0"
    metavar = "SECONDS"

    def __init__(self, *, what: str | None = None) -> None:
        if what is not None:  # a number that is not seconds: "a number > 0"
            self.what = what

    def from_text(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected {self.what}, got {text!r}") from None
        return self._check(value, text)

    def from_value(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected {self.what}, got {_got(value)}")
        return self._check(float(value), value)

    def _check(self, value: float, given: object) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"expected {self.what}, got {_got(given)}")
        return value

    def show(self, value: float) -> str:
        return f"{value:g}"


class Flag(Kind[bool]):
    """Yes or no: ``--x`` / ``--no-x`` on the command line, ``true`` / ``false`` in a file."""

    arity = "flag"
    what = "true / false"

    def from_value(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_got(value)}")
        return value

    def show(self, value: bool) -> str:
        return "true" if value else "false"


class Choice(Kind[str]):
    """One of a few words."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = tuple(values)
        self.what = " | ".join(self.values)
        self.metavar = "{" + ",".join(self.values) + "}"

    def from_value(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise ValueError(f"expected one of {', '.join(self.values)}, got {_got(value)}")
        return value


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_bytes(text: str | int) -> int:
    """``"200MB"`` → 200000000; ``"64MiB"`` → 67108864; ints pass through."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"invalid size {text!r}: expected e.g. 200MB, 64MiB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class ByteSize(Kind[int]):
    """A number of bytes: an integer, or text with a unit (``200MB``, ``64MiB``)."""

    metavar = "SIZE"

    def __init__(self, *, low: int = 0) -> None:
        self.low = low
        self.what = f"bytes: 200MB, 64MiB, 1048576 (>= {low})"

    def from_value(self, value: object) -> int:
        if isinstance(value, str):
            n = parse_bytes(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            raise ValueError(f"expected a size in bytes (200MB, 64MiB), got {_got(value)}")
        if n < self.low:
            raise ValueError(f"expected a size of at least {self.low} bytes, got {_got(value)}")
        return n

    def show(self, value: int) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            size = _UNITS[unit.upper()]
            if value and value % size == 0:
                return f"{value // size}{unit}"
        return str(value)


class TextList(Kind[tuple[str, ...]]):
    """Several texts: a repeated flag, a list in a file, or one text. ``commas``: ``a,b`` is
    two items too. ``item`` reads (and checks) each one."""

    arity = "list"

    def __init__(self, item: Text, *, what: str, commas: bool = False) -> None:
        self.item, self.commas = item, commas
        self.metavar = item.metavar + (",..." if commas else "")
        self.what = f"{what}: a list, or one" + (" (a,b is two)" if commas else "")

    def from_text(self, text: str) -> tuple[str, ...]:
        parts = [p.strip() for p in text.split(",")] if self.commas else [text]
        return tuple(self.item.from_value(p) for p in parts if p or not self.commas)

    def from_value(self, value: object) -> tuple[str, ...]:
        value = self.item.digits(value)
        if isinstance(value, str | os.PathLike):
            return self.from_text(os.fspath(value))
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected {self.what}, got {_got(value)}")
        items: list[str] = []
        for v in value:
            v = self.item.digits(v)
            if not isinstance(v, str | os.PathLike):
                raise ValueError(f"expected a list of {self.item.what}, got an item {_got(v)}")
            items.extend(self.from_text(os.fspath(v)))
        return tuple(items)

    def join(self, values: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
        return tuple(v for part in values for v in part)

    def show(self, value: tuple[str, ...]) -> str:
        return ", ".join(value)


_COLOR_NAMES = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
_COLOR_NAMES["gray"] = _COLOR_NAMES["grey"]


class Table(Kind[dict[str, Any]]):
    """A table of settings: a JSON object or TOML (``key = "value"`` lines) on the command
    line, a TOML table in a file; ``parse`` reads the text (and raises ValueError)."""

    what = "a JSON object or TOML table"
    metavar = "JSON|TOML"

    def __init__(self, parse: Callable[[str], dict[str, Any]]) -> None:
        self.parse = parse

    def from_value(self, value: object) -> dict[str, Any]:
        if isinstance(value, str):
            return self.parse(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"expected {self.what}, got {_got(value)}")
        return {str(k): v for k, v in value.items()}

    def show(self, value: dict[str, Any]) -> str:
        return "" if not value else "(given)"


class Color(Kind[tuple[int, int, int]]):
    """An RGB colour: ``#rrggbb``, ``#rgb``, ``r,g,b``, a name (white, black, grey), or in a file
    also a list of three integers 0..255."""

    what = "colour: #rrggbb, #rgb, r,g,b, white, black, grey"
    metavar = "COLOUR"

    def from_value(self, value: object) -> tuple[int, int, int]:
        if isinstance(value, str):
            rgb = self._parse(value.strip().lower())
        elif isinstance(value, list | tuple) and all(
            isinstance(c, int) and not isinstance(c, bool) for c in value
        ):
            rgb = tuple(value)
        else:
            rgb = None
        if rgb is None or len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"expected a {self.what} (components 0..255), got {_got(value)}")
        return (rgb[0], rgb[1], rgb[2])

    @staticmethod
    def _parse(text: str) -> tuple[int, ...] | None:
        if text in _COLOR_NAMES:
            return _COLOR_NAMES[text]
        if re.fullmatch(r"#[0-9a-f]{6}", text):
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        if re.fullmatch(r"#[0-9a-f]{3}", text):
            return tuple(int(c * 2, 16) for c in text[1:])
        if re.fullmatch(r"\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}", text):
            return tuple(int(c) for c in text.split(","))
        return None

    def show(self, value: tuple[int, int, int]) -> str:
        return "#" + "".join(f"{c:02x}" for c in value)


# --------------------------------------------------------------------------- declarations


class Needs:
    """Where an option does something: only when the option named ``option`` (a field name)
    has ``value``, or, without a value, when any of ``options`` is given (has a value other
    than its default: a list that is not empty). ``value`` may be a tuple: any of its values.
    ``Needs("backend", value="dask")``, ``Needs("include", "exclude")``,
    ``Needs("output_format", value=("webdataset", "parquet"))``. Or, with ``test``, when the
    one option's value passes it (``said``: how the help and errors name that):
    ``Needs("output", test=is_url, said="a storage --output")``."""

    def __init__(
        self,
        *options: str,
        value: object = None,
        test: Callable[[Any], bool] | None = None,
        said: str = "",
    ) -> None:
        if not options or ((value is not None or test is not None) and len(options) > 1):
            raise ValueError("Needs: one option with a value or a test, or options to be given")
        self.options, self.value, self.test, self.said = options, value, test, said

    def holds(self, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
        """Whether the options ``values`` (by field name, else ``defaults``) meet the need."""
        got = [values.get(o, defaults[o]) for o in self.options]
        if self.test is not None:
            return self.test(got[0])
        if isinstance(self.value, tuple):
            return got[0] in self.value
        if self.value is not None:
            return bool(got[0] == self.value)
        return any(v != defaults[o] for o, v in zip(self.options, got, strict=True))

    def __str__(self) -> str:
        if self.said:
            return self.said
        flags = " or ".join("--" + o.replace("_", "-") for o in self.options)
        if isinstance(self.value, tuple):
            return f"{flags} " + " or ".join(map(str, self.value))
        return flags if self.value is None else f"{flags} {self.value}"


@dataclass(frozen=True, kw_only=True)
class Option:
    """What a field's declaration adds to its name, type and default."""

    kind: Kind[Any]
    help: str
    group: str
    short: str | None = None  # a one-letter flag as well: "-o"
    metavar: str | None = None  # else the kind's
    unit: str | None = None  # shown after the default: "120 s"
    positional: bool = False  # the command's arguments (INPUTS): a list; key of the same name
    shown_default: str | None = None  # a default computed at run time, in words
    needs: Needs | None = None  # where it does something (else: everywhere)


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    kind: Kind[Any],
    help: str,
    group: str,
    short: str | None = None,
    metavar: str | None = None,
    unit: str | None = None,
    positional: bool = False,
    shown_default: str | None = None,
    needs: Needs | None = None,
    secret: bool = False,
) -> Any:
    """Declare a config field as an option (a ``dataclasses.field`` with the declaration);
    ``secret``: its value is left out of the config's ``repr`` (credentials)."""
    spec = Option(
        kind=kind,
        help=help,
        group=group,
        short=short,
        metavar=metavar,
        unit=unit,
        positional=positional,
        shown_default=shown_default,
        needs=needs,
    )
    metadata = {_METADATA_KEY: spec}
    if default_factory is not None:
        return dataclasses.field(
            default_factory=default_factory, metadata=metadata, repr=not secret
        )
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True)
class Declared:
    """One declared option of a config class: its field's name and default, its declaration."""

    name: str
    option: Option
    default: Any

    @property
    def key(self) -> str:
        """The config-file key: the flag's name without dashes (``max-file-size``)."""
        return self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        """The command-line spellings: ``("--output", "-o")``; the positional's name."""
        if self.option.positional:
            return (self.name,)
        return ("--" + self.key, *((self.option.short,) if self.option.short else ()))

    @property
    def where(self) -> str:
        """How a message names a value given on the command line."""
        return self.key.upper() if self.option.positional else "--" + self.key

    @property
    def meaning(self) -> str:
        """The help, with where the option does something (the README's "meaning")."""
        needs = self.option.needs
        return self.option.help + (f" (only with {needs})" if needs is not None else "")

    def read(self, value: object, where: str) -> Any:
        """A value from a file or Python, checked; a :class:`ConfigError` names ``where``."""
        if value is None and self.default is None:  # an optional option left unset
            return None
        try:
            return self.option.kind.from_value(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def read_text(self, text: str) -> Any:
        """A value given on the command line, checked."""
        try:
            return self.option.kind.from_text(text)
        except ValueError as exc:
            raise ConfigError(f"{self.where}: {exc}") from None

    def shown_default(self) -> str:
        """The default as the help and the README show it ("" when there is none)."""
        if self.option.shown_default is not None:
            return self.option.shown_default
        if self.default is None or self.default == ():
            return ""
        shown = self.option.kind.show(self.default)
        return f"{shown} {self.option.unit}" if self.option.unit else shown


_DECLARED: dict[type, tuple[Declared, ...]] = {}


def declared(cls: type) -> tuple[Declared, ...]:
    """The declared options of a config dataclass, in declaration order."""
    found = _DECLARED.get(cls)
    if found is None:
        found = _DECLARED[cls] = tuple(_declarations(cls))
    return found


def _declarations(cls: type) -> Iterator[Declared]:
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_METADATA_KEY)
        if spec is None:
            continue
        if f.default_factory is not dataclasses.MISSING:
            yield Declared(f.name, spec, f.default_factory())
        else:
            yield Declared(f.name, spec, f.default)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per declared option of ``cls``, in its group; every default is None (not
    given), so :func:`values_from_args` sees only what the command line says."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for d in declared(cls):
        opt = d.option
        shown = "" if d.default is False else d.shown_default()  # --x alone says it is off
        text = d.meaning + (f" (default: {shown})" if shown else "")
        text = text.replace("%", "%%")
        metavar = opt.metavar or opt.kind.metavar
        if opt.positional:
            parser.add_argument(d.name, nargs="*", default=None, metavar=metavar, help=text)
            continue
        group = groups.get(opt.group)
        if group is None:
            group = groups[opt.group] = parser.add_argument_group(opt.group)
        if opt.kind.arity == "flag":
            action: Any = argparse.BooleanOptionalAction
            group.add_argument(*d.flags, dest=d.name, action=action, default=None, help=text)
        else:
            action = "append" if opt.kind.arity == "list" else "store"
            group.add_argument(
                *d.flags, dest=d.name, action=action, default=None, metavar=metavar, help=text
            )


def values_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options the command line gave, by field name, read and checked."""
    values: dict[str, Any] = {}
    for d in declared(cls):
        raw = getattr(args, d.name, None)
        if raw is None or raw == []:
            continue
        if isinstance(raw, bool):
            values[d.name] = raw
        elif isinstance(raw, list):
            values[d.name] = d.option.kind.join([d.read_text(str(r)) for r in raw])
        else:
            values[d.name] = d.read_text(str(raw))
    return values


# --------------------------------------------------------------------------- config files


def values_from_mapping(
    data: Mapping[str, Any], cls: type, *, source: str | None = None
) -> dict[str, Any]:
    """The options of a config file (``source`` names it) or a Python mapping, by field name,
    read and checked. Keys are the flags' names (``max-file-size``, or ``max_file_size``)."""
    by_key = {d.key: d for d in declared(cls)}
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        d = by_key.get(str(key).replace("_", "-"))
        if d is None:
            raise ConfigError(_unknown(str(key), by_key, source))
        if d.name in values:
            raise ConfigError(
                f"{source or 'options'}: {spelled[d.name]!r} and {key!r} are the same option"
            )
        spelled[d.name] = key
        values[d.name] = d.read(value, f"{source}:{key}" if source else f"option {key!r}")
    return values


def _unknown(key: str, by_key: Mapping[str, Declared], source: str | None) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("_", "-"), list(by_key), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"{source}: unknown" if source else "unknown"
    return (
        f"{where} option {key!r}{hint}; the keys are the flags' names without the dashes "
        "(python -m pipeline process --help)"
    )


def inert(cls: type, values: Mapping[str, Any]) -> Iterator[tuple[Declared, Needs]]:
    """The options of ``values`` (by field name) that do nothing there, with what they need."""
    defaults = {d.name: d.default for d in declared(cls)}
    for d in declared(cls):
        needs = d.option.needs
        if needs is not None and d.name in values and not needs.holds(values, defaults):
            yield d, needs


def merge_values(cls: type, earlier: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """A config file's values, then the command line's: the later win (each kind says how)."""
    kinds = {d.name: d.option.kind for d in declared(cls)}
    out = dict(earlier)
    for name, value in later.items():
        out[name] = kinds[name].override(out[name], value) if name in out else value
    return out
