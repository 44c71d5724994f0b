"""Command-line flags generated from config dataclasses.

Every flag of every tool comes from a dataclass field declared with :func:`arg`: the flag is
the kebab-case field name, the help text and default come from the field, and the parsed
values are returned as the dataclass (whose ``__post_init__`` validates them). Tools therefore
never declare a shared flag by hand, and one flag means the same thing everywhere. A tool
that wants another default for a shared flag (a probe reads shorter micro-batches than
training) passes it to its :class:`Command`; the flag's meaning and help stay the same.

This module imports nothing heavy: a tool answers ``--help`` and rejects bad flags before
torch or megatron-core are imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from megatron_adept.errors import AdeptError, ConfigError

T = TypeVar("T")

REQUIRED: Any = dataclasses.MISSING
"""A per-tool default that makes an otherwise optional flag required for that tool."""


def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: tuple[Any, ...] | None = None,
    nargs: str | None = None,
    default_factory: Callable[[], Any] | None = None,
    hidden: bool = False,
) -> Any:
    """Declare a config field that is also a command-line flag.

    Args:
        default: default value; omit to make the flag required.
        help: help text shown by ``--help``.
        flag: the flag spelling when it is not the kebab-case field name.
        choices: allowed values.
        nargs: argparse ``nargs`` for list-valued fields.
        default_factory: for mutable defaults.
        hidden: leave the flag out of ``--help`` (test hooks such as fault injection).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "nargs": nargs,
        "hidden": hidden,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """Resolve ``Optional[X]``/``X | None`` and ``list[X]`` to (X, is_list)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags (declared with :func:`arg`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def add_dataclass_group(
    parser: argparse.ArgumentParser, cls: type, defaults: Mapping[str, Any] | None = None
) -> None:
    """Add one argparse group holding a flag per field of ``cls``.

    Args:
        parser: the parser to extend.
        cls: the config dataclass.
        defaults: field name -> this tool's default (:data:`REQUIRED` makes it required).
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").split("\n")[0])
    for field in flag_fields(cls):
        kind, is_list = _base_type(hints[field.name])
        default = defaults.get(field.name, _field_default(field))
        required = default is dataclasses.MISSING
        if required:
            default = None
        kwargs: dict[str, Any] = {
            "dest": f"{cls.__name__}.{field.name}",
            "help": field.metadata["help"],
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default
        else:
            kwargs.update(type=kind, default=default, required=required)
            if is_list or field.metadata.get("nargs"):
                kwargs["nargs"] = field.metadata.get("nargs") or "+"
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            kwargs["metavar"] = field.name.upper() if not kwargs.get("choices") else None
        if not required and kind is not bool and default is not None:
            kwargs["help"] += f" (default: {default})"
        if field.metadata.get("hidden"):
            kwargs["help"] = argparse.SUPPRESS
        group.add_argument(flag_name(field), **kwargs)


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad flag as one ``error: ...`` line (exit 2), like every other user error."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(
    description: str, *groups: type, defaults: Mapping[str, Any] | None = None
) -> argparse.ArgumentParser:
    """A parser with one group per config dataclass; ``defaults`` are the tool's own."""
    known = {f.name for cls in groups for f in flag_fields(cls)}
    unknown = sorted(set(defaults or {}) - known)
    if unknown:
        raise TypeError(f"defaults for fields that no group declares: {unknown}")
    parser = _OneLineErrorParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for cls in groups:
        add_dataclass_group(parser, cls, defaults)
    return parser


def extract(namespace: argparse.Namespace, cls: type[T]) -> T:
    """Build ``cls`` from the parsed flags of its group (runs its validation)."""
    values = {
        f.name: getattr(namespace, f"{cls.__name__}.{f.name}")
        for f in dataclasses.fields(cls)
        if hasattr(namespace, f"{cls.__name__}.{f.name}")
    }
    return cls(**values)


@dataclass(frozen=True)
class Command:
    """One tool's command line: its description, flag groups and per-tool defaults."""

    description: str
    groups: tuple[type, ...]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Field name -> this tool's default (:data:`REQUIRED` makes the flag required)."""

    def parser(self) -> argparse.ArgumentParser:
        return build_parser(self.description, *self.groups, defaults=self.defaults)

    def parse(self, argv: list[str] | None = None) -> tuple[Any, ...]:
        """Parse ``argv`` (default: ``sys.argv``) into one validated dataclass per group."""
        namespace = self.parser().parse_args(argv)
        return tuple(extract(namespace, cls) for cls in self.groups)


def require_positive(config: Any, *names: str) -> None:
    """Refuse non-positive values of ``config``'s fields, naming the flag (None is unset).

    Integers must be at least 1; floats positive and finite (which also refuses NaN).
    """
    by_name = {f.name: f for f in dataclasses.fields(config)}
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        flag = flag_name(by_name[name])
        if isinstance(value, int):
            if value < 1:
                raise ConfigError(f"{flag}={value} must be at least 1")
        elif not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag}={value} must be a positive finite number")


def run_cli(main: Callable[[], Any]) -> None:
    """Run a tool's ``main``; user errors become one line on stderr and exit code 2.

    Under torchrun every rank meets the same bad input; only global rank 0 reports it, so a
    job prints one line, not one per rank.
    """
    try:
        result = main()
    except AdeptError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
