"""Every stage checks its output paths when it reads its options, before any work: a path
under a regular file, an existing directory where a file goes, a place that cannot be
written, an unknown file type — exit 2, one line naming the path, nothing created."""

from __future__ import annotations

import pytest

from rodscli import records
from rodscli.cli import main
from rodscli.errors import InputError

# each stage with its other arguments naming inputs that do not exist: the output check
# must come first, so the error is about the output, never about a missing input
STAGES = {
    "convert": lambda out: ["convert", "missing.jsonl", out],
    "tasks builtin": lambda out: ["tasks", "builtin", "--out", out],
    "tasks bfcl": lambda out: ["tasks", "bfcl", "--out", out],
    "tasks tau2": lambda out: ["tasks", "tau2", "--out", out],
    "rollout": lambda out: ["rollout", "--out", out, "--policy", "missing", "--tasks", "missing.jsonl"],
    "score": lambda out: ["score", "--out", out, "--rollouts", "missing.jsonl", "--tasks", "missing.jsonl"],
    "detect": lambda out: ["detect", "--out", out, "--scored", "missing.jsonl"],
    "synthesize": lambda out: ["synthesize", "--out", out, "--seed-tasks", "missing.jsonl"],
    "merge-buffer": lambda out: ["merge-buffer", "--out", out, "--next-batch", "next.jsonl", "--init-from", "missing.jsonl"],
    "merge-buffer next": lambda out: ["merge-buffer", "--next-batch", out, "--out", "buf.jsonl", "--init-from", "missing.jsonl"],
    "eval": lambda out: ["eval", "--out", out, "--policy", "missing", "--tasks", "missing.jsonl"],
}
FOLDER_STAGES = {
    "init-policy": lambda out: ["init-policy", "--out", out],
    "train-step": lambda out: ["train-step", "--out", out, "--policy", "missing"],
    "report": lambda out: ["report", "missing-run", "--out", out],
}


def bad_places(tmp_path, folder: bool) -> dict[str, tuple[str, str]]:
    """name -> (path, words the error says)."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir.jsonl"
    a_dir.mkdir()
    places = {
        "under_a_file": (str(a_file / "deeper" / "out.jsonl"), "is a file"),
        "unwritable": ("/proc/rods-test/out.jsonl", "cannot write in /proc"),
    }
    if folder:
        places["is_a_file"] = (str(a_file), "not a folder")
    else:
        places["is_a_directory"] = (str(a_dir), "is a directory")
        places["unknown_type"] = (str(tmp_path / "out.csv"), "unknown file type")
    return places


def check(argv, path, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert path in err and words in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made, not even a folder


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("place", ["under_a_file", "unwritable", "is_a_directory", "unknown_type"])
def test_bad_output_file_fails_before_the_work(stage, place, tmp_path, capsys, monkeypatch):
    path, words = bad_places(tmp_path, folder=False)[place]
    check(STAGES[stage](path), path, words, capsys, tmp_path, monkeypatch)


@pytest.mark.parametrize("stage", sorted(FOLDER_STAGES))
@pytest.mark.parametrize("place", ["under_a_file", "unwritable", "is_a_file"])
def test_bad_output_folder_fails_before_the_work(stage, place, tmp_path, capsys, monkeypatch):
    path, words = bad_places(tmp_path, folder=True)[place]
    check(FOLDER_STAGES[stage](path), path, words, capsys, tmp_path, monkeypatch)


def test_good_outputs_pass_and_nothing_is_created(tmp_path):
    for path in (tmp_path / "new" / "deeper" / "out.parquet", tmp_path / "out.jsonl", "-"):
        assert records.check_output(path) == str(path)
    assert records.check_output(tmp_path / "ckpt", folder=True)
    assert records.check_output(tmp_path, folder=True)  # an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="stdout"):
        records.check_output("-", folder=True)
