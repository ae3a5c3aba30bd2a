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


@dataclasses.dataclass
class _Other:
    url: str | None = option(None, help="Server URL.")
    paraphrases: int = option(1, help="Copies.")
    servers: str = option("http://a", join=",", help="Servers, repeated or comma-separated.")

    def check(self) -> None:
        if self.paraphrases < 0:
            raise OptionError("must be >= 0", field="--paraphrases")


def _stacked_app(seen: list) -> typer.Typer:
    app = typer.Typer()

    def shout(value: str | None) -> str | None:
        return value.upper() if value else value

    @app.command()
    @cli_options(_Other, prefix="teacher-", flags={"paraphrases": ("--paraphrases",)}, into="other",
                 callbacks={"url": shout})
    @cli_options(_Opts, skip=("name",))
    def go(out: str = typer.Option("o", "--out"), opts: _Opts | None = None, other: _Other | None = None) -> None:
        seen.append((out, opts, other))

    @app.command()
    def other() -> None:
        pass

    return app


def test_two_options_classes_stack_on_one_command():
    seen: list = []
    result = CliRunner().invoke(_stacked_app(seen), ["go", "--help"])
    assert result.exit_code == 0
    for text in ("--teacher-url", "--paraphrases", "--teacher-servers", "--group-size", "--greedy"):
        assert text in result.output
    assert "--name" not in result.output and "--teacher-paraphrases" not in result.output
    argv = ["go", "--group-size", "2", "--teacher-url", "http://t", "--paraphrases", "3",
            "--teacher-servers", "http://b", "--teacher-servers", "http://c,http://d"]
    result = CliRunner().invoke(_stacked_app(seen), argv)
    assert result.exit_code == 0, result.output
    # the callback ran on --teacher-url; repeated values of a `join` field are joined into one string
    assert seen[-1] == ("o", _Opts(group_size=2), _Other(url="HTTP://T", paraphrases=3, servers="http://b,http://c,http://d"))
    result = CliRunner().invoke(_stacked_app(seen), ["go"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("o", _Opts(), _Other())
    result = CliRunner().invoke(_stacked_app(seen), ["go", "--paraphrases", "-1"])
    assert isinstance(result.exception, OptionError)  # the outer class's check() ran too
    assert len(seen) == 2


def test_names_of_fields_that_do_not_exist_are_refused():
    with pytest.raises(TypeError, match="no field"):
        cli_options(_Opts, skip=("nope",))
    with pytest.raises(TypeError, match="declared twice"):
        @cli_options(_Opts, into="again")
        @cli_options(_Opts)
        def go(opts: _Opts | None = None, again: _Opts | None = None) -> None:
            pass


def test_each_options_class_checks_its_own_values():
    from rodscli.envs.bfcl import BFCLTasksOptions
    from rodscli.stages.buffer import MergeOptions
    from rodscli.stages.detect import DetectConfig
    from rodscli.stages.report import ReportOptions
    from rodscli.stages.score import ScoreConfig

    bad = [MergeOptions(inject_frac=1.5), MergeOptions(floor=0), ReportOptions(study=True, n_boot=10),
           ScoreConfig(reward="nope"), ScoreConfig(weights="coverage=x"), DetectConfig(alpha_low=0.9, alpha_high=0.1)]
    for opts in bad:
        with pytest.raises(OptionError):
            opts.check()
    for opts in (MergeOptions(), ReportOptions(n_boot=10), ScoreConfig(), DetectConfig()):
        opts.check()  # the defaults are good; --n-boot only matters with --study
    # `--categories base,long_context --categories miss_func`: both forms, one list
    assert BFCLTasksOptions(categories=["base,long_context", " miss_func"]).categories == ["base", "long_context", "miss_func"]


@pytest.mark.parametrize("argv, flag", [
    (["merge-buffer", "--inject-frac", "1.5"], "--inject-frac"),
    (["merge-buffer", "--beta", "1.5"], "--inject-frac"),  # the old name, hidden from --help
    (["score", "--rollouts", "r.jsonl", "--tasks", "t.jsonl", "--weights", "coverage=x"], "--weights"),
    (["eval", "--policy", "p", "--tasks", "t.jsonl", "--k", "2"], "--no-greedy"),
    (["eval", "--policy", "p", "--tasks", "t.jsonl", "--no-greedy", "--top-p", "0"], "--top-p"),
])
def test_a_bad_option_stops_the_command_before_any_work(tmp_path, monkeypatch, capsys, argv, flag):
    from rodscli.cli import main

    monkeypatch.chdir(tmp_path)
    out = ["--out", "o.jsonl"] + (["--init-from", "missing.jsonl", "--next-batch", "n.jsonl"] if argv[0] == "merge-buffer" else [])
    assert main(argv + out) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # the input files do not exist: the check came first


def test_an_old_flag_name_still_works_but_is_hidden():
    seen: list = []
    app = typer.Typer()

    @app.command()
    @cli_options(_Opts, aliases={"group_size": ("--size",)})
    def go(opts: _Opts | None = None) -> None:
        seen.append(opts)

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["go", "--help"])
    assert "--group-size" in result.output and "--size" not in result.output
    for argv, size in ((["go", "--size", "7"], 7), (["go", "--group-size", "5"], 5), (["go"], 4)):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert seen[-1].group_size == size


def test_renamed_seed_options_keep_their_old_spelling_hidden(tmp_path):
    """One word per concept: world numbers are `tasks builtin --worlds`, a file of seed tasks is
    `synthesize --seed-tasks`; the old `--seeds` of both still works (old recipes) but is not in --help."""
    from rodscli import records
    from rodscli.cli import app, main

    for argv, new in ((["tasks", "builtin"], "--worlds"), (["synthesize"], "--seed-tasks")):
        shown = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "200"}).output
        assert new in shown and "--seeds" not in shown, shown
    made = {}
    for flag in ("--worlds", "--seeds"):
        out = tmp_path / f"tasks{flag}.jsonl"
        assert main(["--quiet", "tasks", "builtin", flag, "2,1", "--domain", "retail", "--per-skill", "1",
                     "--no-profile", "--out", str(out)]) == 0
        made[flag] = records.read_all(out, "task")
    assert made["--seeds"] == made["--worlds"] and len(made["--worlds"]) == 8
    assert {t["id"].rsplit("-", 1)[1] for t in made["--worlds"]} == {"s1", "s2"}
    seeds = tmp_path / "tasks--worlds.jsonl"
    for flag in ("--seed-tasks", "--seeds"):
        assert main(["--quiet", "synthesize", flag, str(seeds), "--per-seed", "1", "--out", str(tmp_path / f"c{flag}.jsonl")]) == 0
    assert records.read_all(tmp_path / "c--seeds.jsonl", "task") == records.read_all(tmp_path / "c--seed-tasks.jsonl", "task") != []
