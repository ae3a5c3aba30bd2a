"""Records IO: exact round trips between JSONL and Parquet, atomic writes, provenance, streaming."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rodscli import records, schemas
from rodscli.errors import InputError, RodsError, ValidationError

RECORD_TYPES = ["task", "rollout", "scored", "group", "buffer", "metrics"]

# ---------------------------------------------------------------------------------------
# schema-valid records, generated from the schemas themselves (so new fields are covered)

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _floats | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=5,
)


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values valid under `schema` (the subset of JSON Schema our schemas use)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    return st.one_of([_of_type(t, schema) for t in types]) if types else _json


def _of_type(kind: str, schema: dict) -> st.SearchStrategy:
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**63)), schema.get("maximum", 2**63 - 1))
    if kind == "number":
        # a "number" is a float in both formats (Parquet keeps it as float64)
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        return st.text(st.characters(exclude_categories=("Cs",)), min_size=schema.get("minLength", 0), max_size=12)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0), max_size=5)
    if kind == "object":
        props = schema.get("properties")
        if not props:  # free-form: any JSON object, nested lists and all
            return st.dictionaries(_text, _json, max_size=4)
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    raise AssertionError(f"generator does not know type {kind!r}")


def canonical(record: dict) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def normalized(record: dict, schema: str) -> dict:
    """What any reader gives back: optional fields that are null are absent."""
    optional = set(schemas.load(schema)["properties"]) - set(schemas.load(schema)["required"])
    return {k: v for k, v in record.items() if v is not None or k not in optional}


@pytest.mark.parametrize("schema", RECORD_TYPES)
def test_round_trip_jsonl_parquet_jsonl_is_exact(schema):
    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(from_schema(schemas.load(schema)), min_size=1, max_size=6))
    def check(recs):
        for r in recs:  # the generator makes valid records, or this test proves nothing
            assert schemas.problems(schema, r) == []
        with tempfile.TemporaryDirectory() as d:
            a, b, c, e = (os.path.join(d, n) for n in ("a.jsonl", "b.parquet", "c.jsonl", "e.jsonl"))
            records.write_records(a, recs, schema)
            records.write_records(b, records.read_records(a, schema), schema)
            records.write_records(c, records.read_records(b, schema), schema)
            want = [canonical(normalized(r, schema)) for r in recs]
            assert [canonical(r) for r in records.read_all(b, schema)] == want
            assert [canonical(r) for r in records.read_all(c, schema)] == want
            # once written by rods, a file is a fixed point of the round trip, byte for byte
            records.write_records(b, records.read_records(c, schema), schema)
            records.write_records(e, records.read_records(b, schema), schema)
            assert Path(e).read_bytes() == Path(c).read_bytes()

    check()


def _rollout(i: int, n_tokens: int = 200) -> dict:
    mask = [i % 2] * n_tokens
    return {
        "rollout_id": f"g{i}/0", "task_id": f"t{i}", "group_id": f"g{i}", "sample_index": 0,
        "policy_id": "tiny", "backend": "hf", "iteration": None, "seed": i,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {"x": [1, 2.5, None]}}]}],
        "calls": [{"turn": 0, "step": 0, "name": "f", "arguments": {"x": [1, 2.5, None]}, "raw": None, "result": "ok", "error": None}],
        "token_ids": list(range(i, i + n_tokens)), "logprobs": [-0.5 * m for m in mask], "loss_mask": mask,
        "finish_reason": "done", "n_user_turns": 1, "n_turns_reached": 1, "turn_state_hashes": ["abc"],
    }


def test_nested_nulls_and_required_nulls_survive_parquet(tmp_path):
    task = {
        "id": "t1", "env": "builtin", "domain": "retail", "skill": "base", "origin": "seed", "parent_id": None,
        "generation": 0, "user_turns": ["hi"], "initial_state": {"a": None, "b": [None, {"c": []}]}, "env_config": {},
        "tools": [], "withheld": [], "reference": [[]], "profile": None, "meta": {"k": None},
    }
    records.write_records(tmp_path / "t.parquet", [task], "task")
    (back,) = records.read_all(tmp_path / "t.parquet", "task")
    assert back["parent_id"] is None  # required and nullable: kept
    assert "profile" not in back  # optional and null: the same as absent
    assert back["initial_state"] == {"a": None, "b": [None, {"c": []}]}
    assert back["meta"] == {"k": None}


def test_jsonl_reader_treats_optional_null_as_absent(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(orjson.dumps(_rollout(0)) + b"\n")
    (back,) = records.read_all(path, "rollout")
    assert "iteration" not in back and back["calls"][0]["raw"] is None


def test_unvalidated_fields_outside_the_schema_are_kept(tmp_path):
    recs = [_rollout(0), {**_rollout(1), "surprise": {"x": 1}}, {**_rollout(2), "late": [1]}]
    records.write_records(tmp_path / "x.parquet", recs, "rollout", validate=False)
    back = records.read_all(tmp_path / "x.parquet", "rollout", validate=False)
    assert back[1]["surprise"] == {"x": 1} and back[2]["late"] == [1] and "late" not in back[0]
    with pytest.raises(ValidationError) as err:
        records.read_all(tmp_path / "x.parquet", "rollout")
    assert err.value.where.endswith("x.parquet:row 2")


def test_columns_read_only_the_named_fields_of_a_parquet_file(tmp_path):
    recs = [_rollout(0), {**_rollout(1), "surprise": {"x": 1}}]
    records.write_records(tmp_path / "x.parquet", recs, "rollout", validate=False)
    back = records.read_all(tmp_path / "x.parquet", "rollout", validate=False, columns=["task_id", "calls", "no_such"])
    assert back == [{"task_id": r["task_id"], "calls": r["calls"]} for r in recs]  # JSON columns parsed, extras unread
    records.write_records(tmp_path / "x.jsonl", recs, "rollout", validate=False)
    assert records.read_all(tmp_path / "x.jsonl", "rollout", validate=False, columns=["task_id"])[1]["surprise"] == {"x": 1}
    with pytest.raises(ValueError, match="cannot be validated"):
        records.read_all(tmp_path / "x.parquet", "rollout", columns=["task_id"])


def test_schemaless_parquet_round_trips_any_records(tmp_path):
    recs = [{"a": 1, "b": None}, {"a": [1, {"z": 2}]}, {"c": "x"}]
    records.write_records(tmp_path / "x.parquet", recs, None)
    assert records.read_all(tmp_path / "x.parquet", None) == recs


def test_empty_files_round_trip(tmp_path):
    for name in ("e.parquet", "e.jsonl"):
        assert records.write_records(tmp_path / name, [], "rollout") == 0
        assert records.read_all(tmp_path / name, "rollout") == []
        assert records.detect_schema(tmp_path / name) == "rollout"


def test_provenance_in_parquet_metadata_and_jsonl_sidecar(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"{}\n")
    info = records.provenance([src], seed=7)
    for name in ("o.parquet", "o.jsonl"):
        records.write_records(tmp_path / name, [_rollout(0)], "rollout", provenance_info=info)
        prov = records.read_provenance(tmp_path / name)
        assert prov["rods_version"]
        assert prov["seed"] == 7
        assert prov["inputs"] == {str(src): records.file_hash(src)}
        assert prov["time"].endswith("Z") and isinstance(prov["command"], list)
    assert orjson.loads((tmp_path / "o.jsonl.meta.json").read_bytes())["schema"] == "rollout"


def test_file_hash_changes_with_content(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_bytes(b"a")
    h1 = records.file_hash(p)
    p.write_bytes(b"b")
    assert h1 != records.file_hash(p) and records.file_hash("-") is None


def _failing(n_good: int):
    for i in range(n_good):
        yield _rollout(i)
    raise RuntimeError("stage crashed")


@pytest.mark.parametrize("name", ["out.parquet", "out.jsonl"])
def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, name, monkeypatch):
    monkeypatch.setattr(records, "BATCH", 16)  # so that the crash comes after whole batches were written
    out = tmp_path / name
    with pytest.raises(RuntimeError):
        records.write_records(out, _failing(records.BATCH + 5), "rollout")
    assert not out.exists() and os.listdir(tmp_path) == []
    records.write_records(out, [_rollout(0)], "rollout")
    before = out.read_bytes()
    bad = {**_rollout(1), "sample_index": -1}
    with pytest.raises(ValidationError) as err:
        records.write_records(out, [_rollout(2), bad], "rollout")
    assert err.value.field == "sample_index" and "output record 2" in err.value.where
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted([name] + ([name + ".meta.json"] if name.endswith("jsonl") else []))


def test_outputs_get_ordinary_permissions(tmp_path):
    records.write_records(tmp_path / "o.parquet", [_rollout(0)], "rollout")
    mode = stat.S_IMODE(os.stat(tmp_path / "o.parquet").st_mode)
    assert mode & stat.S_IRGRP, oct(mode)  # not mkstemp's private 0600


def test_record_that_does_not_fit_the_parquet_layout_is_a_user_error(tmp_path):
    with pytest.raises(RodsError, match="Parquet layout"):
        records.write_records(tmp_path / "o.parquet", [{**_rollout(0), "token_ids": ["a"]}], "rollout", validate=False)
    assert not (tmp_path / "o.parquet").exists()


def test_reading_streams_lazily(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BATCH", 16)
    # a bad line far down the file is not reached by reading the first record
    lines = [orjson.dumps(_rollout(i, 4)) for i in range(3 * records.BATCH)] + [b"{oops"]
    (tmp_path / "big.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    it = records.read_records(tmp_path / "big.jsonl", "rollout")
    assert next(it)["rollout_id"] == "g0/0"
    with pytest.raises(InputError, match=rf"big.jsonl:{3 * records.BATCH + 1}: not valid JSON"):
        list(it)


def test_parquet_is_written_in_row_groups_of_a_batch(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(records, "BATCH", 16)
    n = 2 * records.BATCH + 3
    records.write_records(tmp_path / "o.parquet", (_rollout(i, 2) for i in range(n)), "rollout")
    meta = pq.ParquetFile(tmp_path / "o.parquet").metadata
    assert meta.num_rows == n and meta.num_row_groups == 3
    got = [r["rollout_id"] for r in records.read_records(tmp_path / "o.parquet", "rollout")]
    assert got == [f"g{i}/0" for i in range(n)]


def test_bad_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(records.read_records(tmp_path / "missing.parquet", "rollout"))
    with pytest.raises(InputError, match="unknown file type"):
        records.file_format(tmp_path / "x.csv")
    (tmp_path / "t.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        list(records.read_records(tmp_path / "t.parquet", "rollout"))
    (tmp_path / "l.jsonl").write_bytes(b"[1, 2]\n")
    with pytest.raises(InputError, match="l.jsonl:1: expected a JSON object"):
        list(records.read_records(tmp_path / "l.jsonl", "rollout"))


@pytest.mark.parametrize("schema", RECORD_TYPES)
def test_guess_schema_picks_the_one_type_a_record_fits(schema):
    @settings(max_examples=5, deadline=None)
    @given(from_schema(schemas.load(schema)))
    def check(record):
        assert records.guess_schema(record) == schema

    check()


def test_shipped_schemas_are_strict():
    for name in RECORD_TYPES:
        s = schemas.load(name)
        assert s["additionalProperties"] is False and s["required"]
        for field, prop in s["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
