"""The foundation's IO contract through the real CLI: `rods validate`, `rods convert`,
bad inputs (exit 2, one line, no output left behind) and `-` pipes between processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from rodscli import records
from rodscli.cli import main

RODS = str(Path(sys.executable).with_name("rods"))


def group(i: int) -> dict:
    mean = (i % 5) / 4
    return {
        "task_id": f"t{i:04d}", "group_id": f"t{i:04d}@0", "skill": "base", "domain": "retail", "origin": "seed",
        "iteration": 0, "n": 4, "mean": mean, "var": 0.0, "min": mean, "max": mean, "phi": 4 * mean * (1 - mean),
        "zone": "boundary", "informative": False, "selected": False, "rank": None,
        "zone_counts": {"hard": 0, "boundary": 1, "mastered": 0},
    }


# line number (1-based) -> (the bad record, the field path `rods validate` must name)
BAD = {
    17: ({**group(16), "n": 0}, "n"),  # minimum 1
    500: ({**group(499), "zone_counts": {"hard": 0, "boundary": -1, "mastered": 0}}, "zone_counts.boundary"),
    998: ({k: v for k, v in group(997).items() if k != "phi"}, "phi"),
}


def write_lines(path: Path, recs: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def test_validate_reports_every_bad_record_and_only_those(tmp_path, capsys):
    recs = [BAD[n][0] if n in BAD else group(n - 1) for n in range(1, 1001)]
    bad = tmp_path / "groups.jsonl"
    write_lines(bad, recs)
    assert main(["validate", str(bad), "--schema", "group"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3, out
    for line, (n, (_, field)) in zip(out, sorted(BAD.items()), strict=True):
        assert line.startswith(f"{bad}:{n}: {field}: "), line
    # the same records in Parquet (written unvalidated): rows instead of lines
    pbad = tmp_path / "groups.parquet"
    records.write_records(pbad, recs, "group", validate=False)
    assert main(["validate", str(pbad), "--schema", "group"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0:2] for line in out] == [[f"{pbad}:row {n}", f] for n, (_, f) in sorted(BAD.items())]
    # a good file: exit 0, nothing on stdout; the schema comes from the file's provenance
    good = tmp_path / "good.parquet"
    records.write_records(good, [group(i) for i in range(1000)], "group")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == ""


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_bad_inputs_exit_2_with_one_line_and_no_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(records, "BATCH", 64)  # bad records come after whole batches were written
    good = tmp_path / "good.parquet"
    records.write_records(good, [group(i) for i in range(3000)], "group")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_json = tmp_path / "not_json.jsonl"
    write_lines(not_json, [group(i) for i in range(2000)])
    with not_json.open("ab") as fh:  # far past the first batch: output was already being written
        fh.write(b"{'task_id': 'single quotes'}\n")
    wrong_type = tmp_path / "wrong_type.jsonl"
    write_lines(wrong_type, [group(i) for i in range(1500)] + [{**group(1500), "mean": "high"}])
    cases = {
        "missing": (tmp_path / "missing.jsonl", "no such file"),
        "truncated": (truncated, "Parquet"),
        "not_json": (not_json, f"{not_json}:2001"),
        "wrong_type": (wrong_type, f"{wrong_type}:1501: mean"),
    }
    for name, (src, expected) in cases.items():
        for suffix in (".parquet", ".jsonl"):
            out = tmp_path / f"out-{name}{suffix}"
            assert main(["convert", str(src), str(out), "--schema", "group"]) == 2, name
            assert expected in one_line_error(capsys), name
            assert not out.exists() and not Path(str(out) + ".meta.json").exists(), name
    # every stage's output obeys the same rule: detect on a truncated file writes nothing
    out = tmp_path / "groups.parquet"
    assert main(["detect", "--scored", str(truncated), "--out", str(out)]) == 2
    assert "truncated.parquet" in one_line_error(capsys) and not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["good.parquet", "not_json.jsonl", "truncated.parquet", "wrong_type.jsonl"]


def test_convert_round_trip_keeps_records_and_chains_provenance(tmp_path):
    src = tmp_path / "g.jsonl"
    records.write_records(src, [group(i) for i in range(50)], "group")
    assert main(["convert", str(src), str(tmp_path / "g.parquet")]) == 0
    assert main(["convert", str(tmp_path / "g.parquet"), str(tmp_path / "back.jsonl")]) == 0
    assert records.read_all(tmp_path / "back.jsonl", "group") == records.read_all(src, "group")
    prov = records.read_provenance(tmp_path / "back.jsonl")
    assert prov["schema"] == "group" if "schema" in prov else True
    assert prov["inputs"] == {str(tmp_path / "g.parquet"): records.file_hash(tmp_path / "g.parquet")}
    assert prov["parent"]["inputs"] == {str(src): records.file_hash(src)}
    assert prov["command"][:2] == ["rods", "convert"]
    meta = pq.ParquetFile(tmp_path / "g.parquet").schema_arrow.metadata
    assert any(b"rods" in k for k in meta)


@pytest.mark.slow  # four `rods` processes: ~2 s of imports each
def test_pipes_between_real_processes(tmp_path):
    """`-` is JSONL on stdin/stdout: Parquet -> stdout -> stdin -> Parquet, and a stage in
    the middle of a pipe; progress and messages stay on stderr."""
    src = tmp_path / "g.parquet"
    recs = [group(i) for i in range(200)]
    records.write_records(src, recs, "group")
    out = tmp_path / "piped.parquet"
    pipe = f"{RODS} convert {src} - | {RODS} convert - {out} --schema group"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert records.read_all(out, "group") == records.read_all(src, "group")
    # a stage reading stdin and writing stdout: scored JSONL -> detect -> group JSONL
    scored = tmp_path / "scored.jsonl"
    write_lines(scored, [{"task_id": f"t{i // 4}", "reward": float(i % 2), "skill": "base"} for i in range(40)])
    proc = subprocess.run([RODS, "--no-validate", "-q", "detect", "--scored", "-", "--out", "-"],
                          input=scored.read_bytes(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [g["task_id"] for g in groups] == [f"t{i}" for i in range(10)]
    assert {(g["n"], g["mean"], g["var"], g["zone"]) for g in groups} == {(4, 0.5, 0.25, "boundary")}
    # a bad record in the pipe: exit 2, one line on stderr, nothing half-written on stdout
    bad = orjson.dumps({**group(0), "mean": "high"}) + b"\n"
    proc = subprocess.run([RODS, "convert", "-", "-", "--schema", "group"], input=bad, capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().strip().splitlines() == ['error: -:1: mean: "high" is not of type "number"']


def test_user_error_in_a_subprocess_exits_2_without_traceback(tmp_path):
    argv = [RODS, "validate", "nope.jsonl", "--schema", "group"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([argv[0], "--debug", *argv[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
