"""Options objects: every stage has one dataclass whose field docs are its `--help` text."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", join: str | None = None, **kw: Any) -> Any:  # noqa: A002
    """A dataclass field that carries its `--help` text.

    `join`: the field is a string, but its command-line option may be repeated; the values
    are joined with this separator (e.g. several `--base-url` into one comma-separated list).
    """
    metadata = {"help": help} if join is None else {"help": help, "join": join}
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


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
                into: str = "opts", prefix: str = "",
                callbacks: dict[str, Callable[[Any], Any]] | None = None,
                aliases: dict[str, tuple[str, ...]] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a typer command one option per field of the options dataclass `cls`.

    Each option is `--field-name` (or the names in `flags`; booleans get `--x/--no-x`), with the
    field's default and help text. The command receives one checked `cls` instance in its
    parameter `into` instead of the separate values, so an option is declared once, in the
    dataclass, and checked once, in its `check()`. Fields in `skip` are left to the command.
    `prefix` goes before every generated flag (`prefix="teacher-"`: `--teacher-url`) except
    those in `flags`; `callbacks` are typer callbacks of some fields (e.g. an output-path check);
    `aliases` are old flag names of a field, still accepted but hidden from `--help`.
    Decorators stack: two options classes, each with its own `into`, give one command both.
    """
    flags = flags or {}
    callbacks = callbacks or {}
    aliases = aliases or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in skip]
    param_of = {f.name: prefix.replace("-", "_") + f.name for f in fields}
    unknown = (set(flags) | set(callbacks) | set(aliases) | set(skip)) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command)
        own_hints = typing.get_type_hints(command)
        params = [p.replace(annotation=own_hints.get(p.name, p.annotation))
                  for p in own.parameters.values() if p.name != into]
        taken = {p.name for p in params}
        for f in fields:
            if param_of[f.name] in taken:
                raise TypeError(f"{command.__name__}: option {param_of[f.name]!r} is declared twice")
            cli_name = prefix + f.name.replace("_", "-")
            names = flags.get(f.name) or ((f"--{cli_name}/--no-{cli_name}",) if hints[f.name] is bool else (f"--{cli_name}",))
            params += _field_parameters(cls, f, hints[f.name], param_of[f.name], names, callbacks.get(f.name), aliases.get(f.name))

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            opts = _checked_options(cls, fields, param_of, set(aliases), kwargs)  # pops the fields' values
            return command(**kwargs, **{into: opts})

        del run.__wrapped__  # typer must read the generated signature, not the command's
        run.__signature__ = own.replace(parameters=params, return_annotation=own_hints.get("return", None))
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


def _field_parameters(cls: type, f: dataclasses.Field, annotation: Any, name: str, names: tuple[str, ...],
                      callback: Callable[[Any], Any] | None, old_names: tuple[str, ...] | None) -> list[inspect.Parameter]:
    """The command parameter(s) of field `f`: its typer option, and a hidden one for its old names."""
    import typer

    default = field_default(cls, f.name)
    if "join" in f.metadata:
        default, annotation = [default], list[str]
    params = [inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
        default=typer.Option(default, *names, help=f.metadata.get("help", ""), callback=callback))]
    if old_names:
        params.append(inspect.Parameter(
            name + "_alias", inspect.Parameter.KEYWORD_ONLY, annotation=annotation | None,
            default=typer.Option(None, *old_names, hidden=True, help=f"Old name of {names[0]}.")))
    return params


def _checked_options(cls: type, fields: list[dataclasses.Field], param_of: dict[str, str], aliased: set[str],
                     kwargs: dict[str, Any]) -> Any:
    """Take the fields' values out of the command's `kwargs`: one `cls` instance, checked."""
    values = {f.name: kwargs.pop(param_of[f.name]) for f in fields}
    for f in fields:
        old = kwargs.pop(param_of[f.name] + "_alias") if f.name in aliased else None
        if old is not None:  # given under its old name
            values[f.name] = old
        if "join" in f.metadata:
            values[f.name] = f.metadata["join"].join(values[f.name])
    opts = cls(**values)
    check = getattr(opts, "check", None)
    if check is not None:
        check()
    return opts
