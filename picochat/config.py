"""One config system: typed dataclasses, with the command line derived from their fields.

Each field is declared once with `option(default, "help")`; `--field-name` flags come from it. Values are
applied in order: dataclass defaults, then a preset (e.g. a stage's), then flags the user typed.
Validation lives in each dataclass's __post_init__ and raises ValueError naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from picochat.common import UserError

T = TypeVar("T")


def option(default: Any, help: str, choices: tuple | None = None, const: Any = None, short: str = "",
           positional: bool = False) -> Any:
    """A dataclass field with a one-line help. `const` lets the flag be given bare (`--resume`); `short`
    adds a one-letter alias (`-p`); `positional` also takes it as the command's bare argument
    (`picochat export DIR`)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "const": const,
                                                        "short": short, "positional": positional})


def field_names(cls: type | None) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)} if cls is not None else set()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base_type(annotation: Any) -> type:
    """int | None -> int; plain types pass through."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def add_arguments(parser: argparse.ArgumentParser, cls: type, presets: dict[str, dict] | None = None) -> None:
    """Add one --flag per dataclass field. Unset flags stay absent, so presets are not overridden. The help
    shows each preset's value after the default: `presets` maps a label ("base") to its preset."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = _base_type(hints[field.name])
        meta = field.metadata
        defaults = [f"default: {field.default}"] if field.default != "" else []
        defaults += [f"{label}: {preset[field.name]}" for label, preset in (presets or {}).items()
                     if field.name in preset]
        help_text = meta.get("help", "") + (f" ({'; '.join(defaults)})" if defaults else "")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text,
                                  "type": parse_bool if kind is bool else kind}
        if kind is bool:
            kwargs.update(nargs="?", const=True)  # a bare --force means --force true
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("const") is not None:
            kwargs.update(nargs="?", const=meta["const"])
        names = [meta["short"]] if meta.get("short") else []
        parser.add_argument(*names, flag_name(field.name), dest=field.name, **kwargs)
        if meta.get("positional"):  # also the command's bare argument: `picochat export DIR`
            parser.add_argument(field.name, nargs="?", default=argparse.SUPPRESS, metavar=field.name.upper(),
                                help=f"same as {flag_name(field.name)}")


def build(cls: type[T], args: argparse.Namespace | dict | None = None, preset: dict | None = None) -> T:
    """defaults <- preset <- explicit flags; __post_init__ then checks the result."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    names = field_names(cls)
    values = {k: v for k, v in (preset or {}).items() if k in names}
    values.update({k: v for k, v in given.items() if k in names})
    return cls(**values)


def require_at_least(config: Any, minimum: float, names: tuple[str, ...]) -> None:
    """ValueError naming the first flag among `names` whose value is below minimum."""
    for name in names:
        if getattr(config, name) < minimum:
            raise UserError(f"{flag_name(name)} must be >= {minimum}, got {getattr(config, name)}")


def describe(config: Any) -> str:
    """The resolved config as aligned `name = value` lines, for logs and reports."""
    items = dataclasses.asdict(config)
    width = max(map(len, items), default=0)
    return "\n".join(f"  {name:<{width}} = {value}" for name, value in items.items())
