"""Options objects: every stage has one dataclass whose field docs are its `--help` text."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:  # noqa: A002
    """A dataclass field that carries its `--help` text."""
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def field_help(cls: type, name: str) -> str:
    """The help text of field `name` of options class `cls`."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return ...
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def cli_options(cls: type, *, flags: dict[str, tuple[str, ...]] | None = None, skip: tuple[str, ...] = (),
                into: str = "opts") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a typer command one option per field of the options dataclass `cls`.

    Each option is `--field-name` (or the names in `flags`; booleans get `--x/--no-x`), with the
    field's default and help text. The command receives one checked `cls` instance in its
    parameter `into` instead of the separate values, so an option is declared once, in the
    dataclass, and checked once, in its `check()`. Fields in `skip` are left to the command.
    """
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in skip]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        import typer

        own = inspect.signature(command)
        own_hints = typing.get_type_hints(command)
        params = [p.replace(annotation=own_hints.get(p.name, p.annotation))
                  for p in own.parameters.values() if p.name != into]
        taken = {p.name for p in params}
        for f in fields:
            if f.name in taken:
                raise TypeError(f"{command.__name__}: option {f.name!r} is declared twice")
            cli_name = f.name.replace("_", "-")
            names = flags.get(f.name) or ((f"--{cli_name}/--no-{cli_name}",) if hints[f.name] is bool else (f"--{cli_name}",))
            default = field_default(cls, f.name)
            params.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                default=typer.Option(default, *names, help=f.metadata.get("help", ""))))

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            opts = cls(**{f.name: kwargs.pop(f.name) for f in fields})
            check = getattr(opts, "check", None)
            if check is not None:
                check()
            return command(**kwargs, **{into: opts})

        del run.__wrapped__  # typer must read the generated signature, not the command's
        run.__signature__ = own.replace(parameters=params, return_annotation=own_hints.get("return", None))
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
