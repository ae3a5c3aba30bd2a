"""Python-class adapter: documented public methods are tools, public attributes are state,
configured by a dotted path and an initial-config dict (classes in tests/toy_envs.py)."""

from __future__ import annotations

import orjson
import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.envs.base import (
    BAD_ARGUMENTS,
    TOOL_ERROR,
    UNKNOWN_TOOL,
    open_episode,
    replay_reference,
    tool_name,
)
from rodscli.errors import InputError
from rodscli.stages.tasks import replay_tasks


def notebook_task(**changes) -> dict:
    task = {
        "id": "toy-notebook-0",
        "env": "pyclass",
        "domain": "notebook",
        "skill": "base",
        "origin": "seed",
        "parent_id": None,
        "generation": 0,
        "user_turns": ["start a todo page", "add milk and tag it"],
        "initial_state": {"Notebook": {"pages": {"ideas": ["fly"]}, "tags": []}},
        "env_config": {"classes": ["toy_envs:Notebook", "toy_envs.Counter"], "loader": None},
        "tools": [],
        "withheld": [],
        "reference": [
            [{"name": "add_page", "arguments": {"title": "todo", "lines": ["eggs"]}}],
            [{"name": "append", "arguments": {"title": "todo", "line": "milk"}},
             {"name": "tag", "arguments": {"label": "draft"}},
             {"name": "increment", "arguments": {"by": 2}}],
        ],
    }
    task.update(changes)
    return task


def test_documented_public_methods_are_the_tools():
    with open_episode(notebook_task()) as ep:
        tools = {tool_name(t): t["function"] for t in ep.tools()}
    # not: helper (no docstring), _wipe (private), Counter.load (no docstring), __init__
    assert set(tools) == {"add_page", "append", "read", "tag", "increment"}
    add = tools["add_page"]
    assert add["description"] == "Add a page; gives its number."
    assert add["parameters"]["required"] == ["title"]
    assert add["parameters"]["properties"]["title"] == {"type": "string", "description": "The page title."}
    assert add["parameters"]["properties"]["lines"]["type"] == "array"
    assert tools["tag"]["parameters"]["properties"]["label"]["enum"] == ["draft", "final"]
    assert tools["tag"]["parameters"]["properties"]["weight"]["type"] == "number"
    assert tools["increment"]["parameters"]["required"] == []


def test_public_attributes_are_the_state_and_the_config_sets_them():
    with open_episode(notebook_task()) as ep:
        snap = ep.snapshot()
        assert snap == {"Counter": {"count": 0}, "Notebook": {"pages": {"ideas": ["fly"]}, "tags": []}}
        assert ep.call("read", {"title": "ideas"}).result == '["fly"]'
        assert ep.snapshot() == snap  # _reads changed, but private attributes are not state


def test_loader_method_gets_the_config():
    task = notebook_task(env_config={"classes": ["toy_envs:Counter"], "loader": "load"},
                         initial_state={"Counter": {"start": 5}})
    with open_episode(task) as ep:
        assert ep.snapshot() == {"Counter": {"count": 5}}
        assert ep.call("increment", {}).result == "6"


def test_episodes_never_share_state():
    task = notebook_task()
    initial = orjson.dumps(task)
    with open_episode(task) as a, open_episode(task) as b:
        lines = ["x"]
        assert a.call("add_page", {"title": "todo", "lines": lines}).ok
        assert a.call("append", {"title": "todo", "line": "y"}).ok
        assert a.call("append", {"title": "ideas", "line": "swim"}).ok  # a list from the initial state
        assert lines == ["x"]  # the call's argument list is not the episode's state
        assert a.snapshot()["Notebook"]["pages"] == {"ideas": ["fly", "swim"], "todo": ["x", "y"]}
        assert b.snapshot()["Notebook"]["pages"] == {"ideas": ["fly"]}
    assert orjson.dumps(task) == initial  # the task record was not written into
    with open_episode(task) as c:
        assert c.snapshot()["Notebook"]["pages"] == {"ideas": ["fly"]}


def test_code_in_a_call_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    with open_episode(notebook_task()) as ep:
        before = ep.snapshot()
        for name in (code, "__init__", "__class__", "__dict__", "_wipe", "helper", "load",
                     "pages.clear", "Notebook.add_page", "add_page.__globals__", "", None, ["add_page"]):
            out = ep.call(name, {})
            assert out.error == UNKNOWN_TOOL, name
        assert ep.call("read", {"title": code}).error == TOOL_ERROR  # just a title that does not exist
        assert ep.call("increment", {"by": code}).error == BAD_ARGUMENTS
        assert ep.call("increment", {"__class__": 1}).error == BAD_ARGUMENTS
        assert ep.call("increment", code).error == BAD_ARGUMENTS
        assert ep.snapshot() == before
    assert not marker.exists()


def test_model_mistakes_are_error_results():
    with open_episode(notebook_task()) as ep:
        assert ep.call("add_page", {}).error == BAD_ARGUMENTS  # missing title
        assert ep.call("add_page", {"title": 3}).error == BAD_ARGUMENTS  # mistyped
        assert ep.call("tag", {"label": "draft", "weight": True}).error == BAD_ARGUMENTS  # a bool is not a number
        out = ep.call("add_page", {"title": "ideas"})  # the method raises
        assert out.error == TOOL_ERROR and out.result == "Error: ValueError: page 'ideas' exists"
        out = ep.call("append", {"title": "nope", "line": "z"})
        assert out.error == TOOL_ERROR and "KeyError" in out.result
        assert ep.call("tag", {"label": "final", "weight": 2}).ok  # an int is a number


@pytest.mark.parametrize("changes,field", [
    ({"env_config": {"classes": []}}, "env_config.classes"),
    ({"env_config": {"classes": ["toy_envs:Nope"]}}, "env_config.classes"),
    ({"env_config": {"classes": ["no_such_module_xyz.Thing"]}}, "env_config.classes"),
    ({"initial_state": {"Notebook": {"_reads": 9}}}, "initial_state"),
    ({"env_config": {"classes": ["toy_envs:Counter"], "loader": "__init__"}}, "env_config.loader"),
    ({"env_config": {"classes": ["toy_envs:Counter"], "loader": "missing"}}, "env_config.loader"),
])
def test_bad_configs_are_user_errors(changes, field):
    with pytest.raises(InputError) as err:
        open_episode(notebook_task(**changes))
    assert err.value.field == field


def test_reference_replays_and_twice_gives_equal_states():
    task = notebook_task()
    first, second = replay_reference(task), replay_reference(task)
    assert first.ok, first.errors
    assert first.results == [['{"page":2,"title":"todo"}'], ["2", '["draft"]', "2"]]
    assert first.state_hashes == second.state_hashes and first.state_hashes[0] != first.state_hashes[1]


def test_replay_catches_state_shared_between_episodes():
    leaky = notebook_task(env_config={"classes": ["toy_envs:Leaky"]}, initial_state={},
                          reference=[[{"name": "bump", "arguments": {}}]], user_turns=["bump"])
    report = replay_tasks([notebook_task(), leaky], ["toys.jsonl:1", "toys.jsonl:2"])
    assert [f.where for f in report.failures] == ["toys.jsonl:2"]
    assert "second replay" in report.failures[0].message


def test_cli_replay_of_a_pyclass_task_file(tmp_path, capsys):
    path = tmp_path / "toys.jsonl"
    good = notebook_task()
    bad = notebook_task(id="toy-bad", reference=[[{"name": "read", "arguments": {"title": "nope"}}]])
    assert schemas.problems("task", good) == []
    records.write_records(path, [good, bad, good | {"id": "toy-2"}], "task")
    capsys.readouterr()
    assert main(["tasks", "replay", str(path)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{path}:2: toy-bad: turn 0 call 0 (read): tool_error: Error: KeyError: 'nope'"]
