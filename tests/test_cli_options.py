"""Options declared once: `config.cli_options` turns an options dataclass into typer options."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from rodscli.config import cli_options, option
from rodscli.errors import OptionError


@dataclasses.dataclass
class _Opts:
    group_size: int = option(4, help="Episodes per task.")
    name: str | None = option(None, help="A name.")
    greedy: bool = option(False, help="Greedy decoding.")
    urls: list[str] = option(["http://a"], help="Servers.")

    def check(self) -> None:
        if self.group_size < 1:
            raise OptionError("must be at least 1", field="--group-size")


def _app(seen: list) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @cli_options(_Opts, flags={"group_size": ("--group-size", "-G")})
    def go(out: str = typer.Option(..., "--out"), opts: _Opts | None = None) -> None:
        """Do it."""
        seen.append((out, opts))

    @app.command()
    def other() -> None:  # a second command, so typer keeps `go` as a subcommand
        pass

    return app


def test_fields_become_options_with_their_defaults_and_help():
    seen: list = []
    result = CliRunner().invoke(_app(seen), ["go", "--help"])
    assert result.exit_code == 0
    for text in ("--group-size", "-G", "Episodes per task.", "--no-greedy", "--urls", "--name", "--out"):
        assert text in result.output
    result = CliRunner().invoke(_app(seen), ["go", "--out", "x"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("x", _Opts())


def test_values_reach_the_command_as_one_checked_object():
    seen: list = []
    argv = ["go", "--out", "x", "-G", "3", "--greedy", "--urls", "b", "--urls", "c", "--name", "n"]
    result = CliRunner().invoke(_app(seen), argv)
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("x", _Opts(group_size=3, name="n", greedy=True, urls=["b", "c"]))
    result = CliRunner().invoke(_app(seen), ["go", "--out", "x", "-G", "0"])
    assert isinstance(result.exception, OptionError)  # check() ran before the command
    assert len(seen) == 1


def test_an_option_declared_twice_is_refused():
    with pytest.raises(TypeError, match="declared twice"):
        @cli_options(_Opts)
        def go(group_size: int = 1, opts: _Opts | None = None) -> None:
            pass
