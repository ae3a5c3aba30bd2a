"""No BFCL episode can leak into another: a leaking trajectory, then the reference, in one process.

BFCL's simulators can keep state outside their instances: mutable default arguments
(`TwitterAPI.post_tweet(..., mentions=[])`, which `mention` extends in place), class
attributes, module globals (the long-context extras; `get_outside_temperature_from_google`
writes into one). For each simulator class, a trajectory that calls every method of the
class the references use (with and without their optional arguments, in base and
long-context tasks) runs first; then the references of tasks of that class must give the
results and states they give in a fresh process, and nothing outside the instances may
have changed. Everything here runs the real simulators; nothing is mocked.
"""

from __future__ import annotations

import inspect
import json
import pickle
import subprocess
import sys
import types

import pytest

from rodscli.envs import bfcl
from rodscli.envs.base import open_episode, replay_reference

PER_CLASS = 8  # reference tasks replayed per class after the leaking trajectory


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    return bfcl.load_tasks()


def _omits_an_optional_argument(task: dict) -> bool:
    """A reference that lets a method fall back on a default argument (where defaults leak)."""
    return any(c["name"] == "post_tweet" and "mentions" not in c["arguments"] for turn in task["reference"] for c in turn)


def sample(tasks: list[dict], class_name: str) -> list[dict]:
    """Tasks of one class: those relying on default arguments first, base and long-context."""
    mine = [t for t in tasks if class_name in t["env_config"]["involved_classes"]]
    mine.sort(key=lambda t: (not _omits_an_optional_argument(t), t["skill"] != "long_context", t["id"]))
    picked = mine[:PER_CLASS // 2] + [t for t in mine if t["skill"] == "long_context"][:PER_CLASS // 2]
    return list({t["id"]: t for t in picked}.values())


@pytest.fixture(scope="module")
def fresh_traces(tasks) -> dict[str, list]:
    """The sampled references replayed in a fresh process (nothing ran there before)."""
    ids = sorted({t["id"] for c in bfcl.CLASS_MODULES for t in sample(tasks, c)})
    code = (
        "import json, sys\n"
        "from rodscli.envs import bfcl\n"
        "from rodscli.envs.base import replay_reference\n"
        "ids = set(json.loads(sys.argv[1]))\n"
        "out = {t['id']: [replay_reference(t).state_hashes, replay_reference(t).results]\n"
        "       for t in bfcl.load_tasks() if t['id'] in ids}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def outside_bytes(class_name: str) -> dict[str, bytes]:
    """Everything of a simulator class kept outside its instances, as bytes: the defaults of
    its functions, its class attributes, its module's globals (those that pickle)."""
    cls = bfcl.simulator_class(class_name)
    module = sys.modules[cls.__module__]
    out = {}
    for name, member in vars(cls).items():
        func = getattr(member, "__func__", member)
        if isinstance(func, types.FunctionType):
            out[f"{name}.__defaults__"] = pickle.dumps((func.__defaults__, func.__kwdefaults__))
        elif not name.startswith("__"):
            out[f"{class_name}.{name}"] = pickle.dumps(member)
    for name, value in vars(module).items():
        if name.startswith("__") or isinstance(value, types.ModuleType | type | types.FunctionType):
            continue
        try:
            out[f"{module.__name__}.{name}"] = pickle.dumps(value)
        except Exception:  # a typing construct or another unpicklable helper
            continue
    return out


def leaking_trajectory(tasks: list[dict], class_name: str) -> int:
    """Run every reference call of the class's tasks, once as written and once without its
    optional arguments, in one base and one long-context episode; for TwitterAPI also the
    known leak: a tweet posted without mentions, then mentioned. Returns the calls made."""
    cls = bfcl.simulator_class(class_name)
    mine = [t for t in tasks if class_name in t["env_config"]["involved_classes"]]
    methods = {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}
    calls = [c for t in mine for turn in t["reference"] for c in turn if c["name"] in methods]
    made = 0
    for task in (next(t for t in mine if t["skill"] == "base"), next(t for t in mine if t["skill"] == "long_context")):
        with open_episode(task) as ep:
            if class_name == "TwitterAPI":
                sim = ep.instances["TwitterAPI"]
                ep.call("authenticate_twitter", {"username": sim.username, "password": sim.password})
                posted = ep.call("post_tweet", {"content": "leak"})
                tweet_id = json.loads(posted.result)["id"]
                assert ep.call("mention", {"tweet_id": tweet_id, "mentioned_usernames": ["@leak"]}).ok
                made += 2
            for c in calls:
                params = inspect.signature(getattr(cls, c["name"])).parameters
                required = {k: v for k, v in c["arguments"].items()
                            if k in params and params[k].default is inspect.Parameter.empty}
                for arguments in (c["arguments"], required):
                    ep.call(c["name"], arguments)  # errors are fine: only what they leave behind counts
                    made += 1
    return made


@pytest.mark.parametrize("class_name", sorted(bfcl.CLASS_MODULES))
def test_a_leaking_trajectory_changes_no_later_episode(tasks, fresh_traces, class_name):
    before = outside_bytes(class_name)
    assert leaking_trajectory(tasks, class_name) > 0
    for task in sample(tasks, class_name):
        trace = replay_reference(task)
        assert [trace.state_hashes, trace.results] == fresh_traces[task["id"]], task["id"]
    changed = sorted(k for k, v in outside_bytes(class_name).items() if before.get(k) != v)
    assert changed == [], f"{class_name}: calls wrote outside their episode into {changed}"


def test_an_episode_keeps_its_own_default_writes(tasks):
    """Within one episode the simulator behaves as BFCL's does alone in a fresh process: a
    default list written by `mention` is the one the next default-mentions tweet gets."""
    task = next(t for t in tasks if "TwitterAPI" in t["env_config"]["involved_classes"])
    with open_episode(task) as ep:
        sim = ep.instances["TwitterAPI"]
        assert ep.call("authenticate_twitter", {"username": sim.username, "password": sim.password}).ok
        first = json.loads(ep.call("post_tweet", {"content": "a"}).result)["id"]
        assert ep.call("mention", {"tweet_id": first, "mentioned_usernames": ["@x"]}).ok
        second = json.loads(ep.call("post_tweet", {"content": "b"}).result)
        assert second["mentions"] == ["@x"]  # BFCL's own aliasing, kept inside the episode
    with open_episode(task) as ep:
        sim = ep.instances["TwitterAPI"]
        assert ep.call("authenticate_twitter", {"username": sim.username, "password": sim.password}).ok
        assert json.loads(ep.call("post_tweet", {"content": "c"}).result)["mentions"] == []
