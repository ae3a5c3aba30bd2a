"""The CLI's conventions: help, schemas, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from rodscli.cli import main


def test_help_lists_the_six_stages(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("rollout", "score", "detect", "synthesize", "merge-buffer", "train-step"):
        assert stage in out


def test_schema_prints_valid_json(capsys):
    assert main(["schema", "task"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "task"
    assert "user_turns" in schema["required"]


def test_unknown_schema_is_a_user_error(capsys):
    assert main(["schema", "nope"]) == 2
    assert "unknown schema" in capsys.readouterr().err


def test_bad_option_exits_2(capsys):
    assert main(["validate"]) == 2


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "rodscli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("rods ")


def test_progress_in_a_log_is_plain_lines(capsys, monkeypatch):
    from rodscli import console

    monkeypatch.setattr(console, "LOG_EVERY_S", 0.0)
    assert list(console.progress(range(3), "work")) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["work: 1/3 (33%)", "work: 2/3 (67%)", "work: 3/3 (100%)"]
    assert "left" in lines[0] and "left" not in lines[-1]

    monkeypatch.setattr(console, "LOG_EVERY_S", 3600.0)  # a long interval: only the closing line
    assert sum(1 for _ in console.progress(iter(range(5)), "stream")) == 5
    assert capsys.readouterr().err.strip() == "stream: 5 done, 0:00:00 elapsed"

    seen = []
    for i in console.progress(range(2), "train", status=lambda: f"loss {seen[-1]}"):
        seen.append(i * 0.5)
    assert capsys.readouterr().err.splitlines()[-1].endswith("elapsed, loss 0.5")

    monkeypatch.setattr(console, "VERBOSITY", 0)  # --quiet: nothing
    assert list(console.progress(range(2), "quiet")) == [0, 1]
    assert capsys.readouterr().err == ""


def test_library_code_reports_only_through_its_reporter():
    """The CLI/library line (docs/architecture.md section 1): outside cli/ and console.py no module
    imports the console, prints, or lowers the verbosity; the one global warning filter rods
    needs is set inside a catch_warnings block."""
    import re
    from pathlib import Path

    import rodscli

    root = Path(rodscli.__file__).parent
    checked = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "cli" or rel.name == "console.py":
            continue
        text = path.read_text()
        checked += 1
        imports = r"^\s*(from rodscli import [^\n]*\bconsole\b|import rodscli\.console|from rodscli\.console import)"
        assert not re.search(imports, text, re.M) and not re.search(r"(?<![\w.])print\(|VERBOSITY", text), rel
        if "filterwarnings(" in text:
            assert "catch_warnings()" in text, rel
    assert checked > 50


def test_the_cli_reporter_draws_bars_and_warnings(capsys, monkeypatch):
    from rodscli import console
    from rodscli.reporter import Silent

    monkeypatch.setattr(console, "LOG_EVERY_S", 3600.0)
    assert list(console.BARS.track(iter("ab"), "steps", total=2, status=lambda: "loss 1")) == ["a", "b"]
    console.BARS.warn("odd [input]")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("steps: 2/2 (100%)") and err[0].endswith("loss 1")
    assert err[1] == "warning: odd [input]"  # plain text: no rich markup is read in it
    silent = Silent()
    assert list(silent.track([1, 2], "x")) == [1, 2]
    silent.warn("kept")
    assert silent.warnings == ["kept"] and capsys.readouterr() == ("", "")


def test_a_long_message_is_one_line_in_a_log(capsys):
    """A message longer than the console's width (a deep temp path, say) is not cut into lines:
    a log keeps it whole, so it can be searched and copied."""
    from rodscli import console

    long = "wrote 3 records " + "-> /tmp/" + "d/" * 120 + "out.parquet"
    console.info(long)
    console.warn(long)
    err = capsys.readouterr().err
    assert long + "\n" in err and f"warning: {long}\n" in err
