"""The protocol's compiled argument check agrees with the JSON-Schema type rules it compiles."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rodscli.envs.base import check_arguments, type_matches

TYPES = ["string", "integer", "number", "boolean", "array", "object", "null", "any", "weird"]
json_types = st.one_of(st.none(), st.sampled_from(TYPES), st.lists(st.sampled_from(TYPES), min_size=1, max_size=3))
values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


def reference_problem(schema: dict, arguments) -> str | None:
    """The rules written out plainly, one type name at a time (type_matches)."""
    if not isinstance(arguments, dict):
        return "not an object"
    params = schema["function"]["parameters"]
    if any(name not in arguments for name in params["required"]):
        return "missing"
    for name, value in arguments.items():
        if name not in params["properties"]:
            return "unexpected"
        if value is None and name not in params["required"]:
            continue
        if not type_matches(value, params["properties"][name].get("type")):
            return "mistyped"
    return None


@settings(max_examples=200, deadline=None)
@given(props=st.dictionaries(st.sampled_from("abc"), json_types, max_size=3), data=st.data())
def test_compiled_check_matches_type_matches(props, data):
    required = data.draw(st.lists(st.sampled_from(sorted(props) or ["a"]), unique=True, max_size=2))
    schema = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {k: ({} if t is None else {"type": t}) for k, t in props.items()},
        "required": [r for r in required if r in props]}}}
    arguments = data.draw(st.one_of(st.dictionaries(st.sampled_from("abcd"), values, max_size=4), values))
    assert (check_arguments(schema, arguments) is None) == (reference_problem(schema, arguments) is None)


def test_bool_is_not_a_number_but_int_is():
    schema = {"function": {"name": "f", "parameters": {"properties": {"n": {"type": "number"}, "b": {"type": ["integer", "boolean"]}}, "required": []}}}
    assert check_arguments(schema, {"n": True}) == "argument 'n' should be number, got bool"
    assert check_arguments(schema, {"n": 3, "b": True}) is None
    assert check_arguments(schema, {"n": 2.5, "b": 1}) is None


def test_a_family_that_saves_state_must_restore_it():
    import pytest

    from rodscli.envs.base import Episode

    with pytest.raises(TypeError, match="save_state and restore_state together"):
        class SavesOnly(Episode):  # noqa: F841 - defining it is the test
            def save_state(self, owner):
                return b""


def test_filters_and_writers_must_define_their_one_method():
    import pytest

    from rodscli.synth.filters import Filter
    from rodscli.synth.write.base import Writer

    class NoKeep(Filter):
        reason = "x"

    class NoTurns(Writer):
        name = "x"

    for cls in (NoKeep, NoTurns):
        with pytest.raises(TypeError, match="abstract"):
            cls()
