"""Command-line options generated from config dataclasses: each field's default, type, choices and help are
written once, on the field (`option(default, help, **meta)`), and `--help` states every default.

A field becomes `--field-name`: required when it has no default (or with `required=True`, for a field Python
callers may leave unset); a bool defaulting to False a switch, one defaulting to True a `--name/--no-name` pair;
`list[float]` numbers separated by commas; `X | None` an optional X. An int field is a count: a value below its
`min` (1 unless the field says `min=0`, as a seed or a worker count does) is refused with a message naming the
option (`check_counts`, which config_from runs, as do the entry points on configs built in Python). Metadata:
`choices`, `metavar`; `none` says what a None default means in `--help` ("all cores"); `positional=True` makes
the field a positional argument; `cli=False` keeps it off the command line (its default is used); `min`.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def option(default=dataclasses.MISSING, help: str = "", **meta):
    """A config field: its default (none: a required option) and the one line `--help` shows for it; `meta` adds
    choices, metavar, none, positional, required or cli (see the module docstring). A list default is copied per
    instance."""
    meta = {"help": help, **meta}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def number_list(text: str) -> list[float]:
    """'16,32,64' -> [16.0, 32.0, 64.0]."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def check_counts(cfg, who: str | None = None) -> None:
    """Refuse (ValueError) an int field of config `cfg` below its `min` (1 unless it says 0); None passes where
    the field's type allows it. who=None: the message names the option (`--steps`), as the command line sees it;
    else the field, after `who`."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _base_type(hints[f.name]) is not int or value is None:
            continue
        least = f.metadata.get("min", 1)
        name = "--" + f.name.replace("_", "-") if who is None else f"{who}: {f.name}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")


def _base_type(hint):
    """The type a value is parsed as: X for `X | None` and `Optional[X]`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default_text(value, none: str = "none") -> str:
    if value is None:
        return none
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_options(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """One option per field of dataclass `cls` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ, default, help_ = _base_type(hints[f.name]), _default(f), f.metadata.get("help", "")
        kw: dict = {"dest": f.name}
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        if default is dataclasses.MISSING or f.metadata.get("required"):
            kw["required"] = True
        elif typ is bool:
            kw.update(action=argparse.BooleanOptionalAction if default else "store_true", default=default)
            help_ += f" (default: {'on' if default else 'off'})"
        else:
            kw["default"] = default
            help_ += f" (default: {_default_text(default, f.metadata.get('none', 'none'))})"
        if typ is not bool:
            kw["type"] = number_list if typing.get_origin(typ) is list else typ
        if f.metadata.get("positional"):
            kw.pop("required", None)
            parser.add_argument(kw.pop("dest"), help=help_, **kw)
        else:
            parser.add_argument(flag, help=help_, **kw)
    return parser


def config_from(cls, args: argparse.Namespace):
    """`cls` built from the parsed options of `add_options(parser, cls)`, its counts checked (check_counts)."""
    cfg = cls(**{f.name: getattr(args, f.name) for f in cli_fields(cls)})
    check_counts(cfg)
    return cfg
