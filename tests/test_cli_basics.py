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
