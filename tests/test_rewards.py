"""The reward formulas (rods.rewards) on hand-computed numbers."""

from __future__ import annotations

import pytest

from rodscli import rewards
from rodscli.envs.base import BAD_ARGUMENTS, PARSE_ERROR, TOOL_ERROR, UNKNOWN_TOOL, ReferenceTrace
from rodscli.errors import OptionError
from rodscli.stages.score import ScoreConfig, parse_weights, reward_name, score

# three user turns: two reference calls, then one, then none (the agent should ask)
REFERENCE = [
    [{"name": "find", "arguments": {"q": "a"}}, {"name": "move", "arguments": {"src": "a", "dst": "b"}}],
    [{"name": "find", "arguments": {"q": "b"}}],
    [],
]
TRACE = ReferenceTrace(results=[["A", "moved"], ["B"], []], errors=[[None, None], [None], []],
                       state_hashes=["s1", "s2", "s2"])


def call(turn, name, result, error=None, arguments=None):
    return {"turn": turn, "step": 0, "name": name, "arguments": {} if arguments is None else arguments,
            "raw": None, "result": result, "error": error}


PERFECT = [call(0, "find", "A"), call(0, "move", "moved"), call(1, "find", "B")]


def scores(calls, hashes=("s1", "s2", "s2"), reached=3):
    return rewards.turn_scores(calls, REFERENCE, TRACE, list(hashes), reached)


def test_reference_trajectory_passes_every_turn():
    assert scores(PERFECT) == [1, 1, 1]
    assert rewards.progress_reward([1, 1, 1]) == 1.0
    assert rewards.outcome_reward([1, 1, 1]) == 1.0


def test_missing_result_fails_only_its_turn():
    assert scores(PERFECT[:1] + PERFECT[2:]) == [0, 1, 1]


def test_state_mismatch_fails_the_turn():
    assert scores(PERFECT, hashes=("s1", "sX", "s2")) == [1, 0, 1]


def test_results_are_a_multiset_obtained_so_far():
    # 'B' obtained in turn 0 counts for turn 1; turn 1's own call may then be anything
    early = [call(0, "find", "A"), call(0, "move", "moved"), call(0, "find", "B")]
    assert scores(early + [call(1, "find", "A")]) == [1, 1, 1]
    # a result obtained only in a later turn does not count for an earlier one
    late = [call(0, "move", "moved"), call(1, "find", "A"), call(1, "find", "B")]
    assert scores(late) == [0, 1, 1]
    # multiplicity: a turn that needs 'x' twice is not satisfied by one 'x'
    trace = ReferenceTrace(results=[["x", "x"]], errors=[[None, None]], state_hashes=["h"])
    ref = [[{"name": "f", "arguments": {}}, {"name": "f", "arguments": {}}]]
    assert rewards.turn_scores([call(0, "f", "x")], ref, trace, ["h"], 1) == [0]
    assert rewards.turn_scores([call(0, "f", "x"), call(0, "f", "x")], ref, trace, ["h"], 1) == [1]


def test_a_turn_whose_reference_makes_calls_fails_without_a_call():
    # BFCL's empty_turn_model_response: results obtained in earlier turns do not excuse it
    early = [call(0, "find", "A"), call(0, "move", "moved"), call(0, "find", "B")]
    assert scores(early) == [1, 0, 1]
    # a call that could not be parsed is no call (BFCL's decoder drops it)
    unparseable = {**call(1, None, None, PARSE_ERROR), "arguments": None, "raw": "<tool_call>{oops"}
    assert scores(early + [unparseable]) == [1, 0, 1]
    # any parsed call counts, even one that failed
    assert scores(early + [call(1, "nope", "Error: unknown tool 'nope'", UNKNOWN_TOOL)]) == [1, 1, 1]


def test_empty_reference_turn_passes_only_without_a_call():
    assert scores(PERFECT + [call(2, "find", "B")]) == [1, 1, 0]
    unparseable = {**call(2, None, None, PARSE_ERROR), "arguments": None, "raw": "<tool_call>{oops"}
    assert scores(PERFECT + [unparseable]) == [1, 1, 1]  # no call: BFCL's decoder drops it


def test_official_irrelevance_rule_does_not_check_an_empty_reference_turn():
    def official(calls, hashes=("s1", "s2", "s2")):
        return rewards.turn_scores(calls, REFERENCE, TRACE, list(hashes), 3, "official")

    assert official(PERFECT) == [1, 1, 1]
    assert official(PERFECT + [call(2, "find", "B")]) == [1, 1, 1]
    assert official(PERFECT, hashes=("s1", "s2", "sX")) == [1, 1, 1]  # its state is not checked either
    assert official(PERFECT, hashes=("s1", "sX", "s2")) == [1, 0, 1]  # the other turns are as in v3
    assert rewards.turn_scores(PERFECT, REFERENCE, TRACE, ["s1", "s2"], 2, "official") == [1, 1, 0]  # not reached
    with pytest.raises(ValueError):
        rewards.turn_scores(PERFECT, REFERENCE, TRACE, ["s1", "s2", "s2"], 3, "v4")
    with pytest.raises(OptionError):
        list(score([], [], ScoreConfig(irrelevance="v4")))


def test_unreached_turns_score_zero():
    assert scores(PERFECT, hashes=("s1", "s2"), reached=2) == [1, 1, 0]
    assert rewards.progress_reward([1, 1, 0]) == pytest.approx(2 / 3)
    assert rewards.outcome_reward([1, 1, 0]) == 0.0
    assert rewards.progress_reward([]) == 0.0 and rewards.outcome_reward([]) == 0.0


TOOLS = {"find": {"type": "function", "function": {"name": "find", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["q"]}}}}


def test_call_validity_thirds():
    assert rewards.call_validity(call(0, "find", "A", arguments={"q": "a"}), TOOLS) == 1.0
    # right name, wrong type (the environment answered bad_arguments): 1/3
    assert rewards.call_validity(call(0, "find", "E", BAD_ARGUMENTS, {"q": 3}), TOOLS) == pytest.approx(1 / 3)
    # right name and arguments, the tool raised: 2/3
    assert rewards.call_validity(call(0, "find", "E", TOOL_ERROR, {"q": "a", "limit": 2}), TOOLS) == pytest.approx(2 / 3)
    assert rewards.call_validity(call(0, "grep", "E", UNKNOWN_TOOL, {"q": "a"}), TOOLS) == 0.0
    assert rewards.call_validity({**call(0, None, None, PARSE_ERROR), "arguments": None}, TOOLS) == 0.0
    # mean over calls: (1 + 1/3 + 0) / 3
    calls = [call(0, "find", "A", arguments={"q": "a"}), call(0, "find", "E", BAD_ARGUMENTS, {}),
             call(0, "nope", "E", UNKNOWN_TOOL)]
    assert rewards.validity(calls, TOOLS, n_ref=2) == pytest.approx(4 / 9)
    assert rewards.validity([], TOOLS, n_ref=2) == 0.0
    assert rewards.validity([], TOOLS, n_ref=0) == 1.0


def flat(*names):
    return [{"name": n, "arguments": {}} for n in names]


def test_coverage_with_chain_fallback_is_the_reproduced_prefix():
    ref = flat("a", "b", "c")
    parents = rewards.chain_parents(3)
    assert parents == [set(), {0}, {1}]
    agent = [call(0, n, "r") for n in ("a", "c", "b")]
    # a then b matched; c must come after b's call, and it came before
    assert rewards.match_reference(ref, agent, parents) == [0, 2, None]
    assert rewards.coverage([0, 2, None]) == pytest.approx(2 / 3)
    # a failed call covers nothing, and everything after it in the chain is lost too
    failed = [call(0, "a", "E", TOOL_ERROR), call(0, "b", "r"), call(0, "c", "r")]
    assert rewards.match_reference(ref, failed, parents) == [None, None, None]


def test_coverage_respects_only_the_dependency_edges():
    ref = flat("a", "b", "c")  # c depends on a; b is independent
    parents = [set(), set(), {0}]
    agent = [call(0, n, "r") for n in ("b", "a", "c")]
    assert rewards.match_reference(ref, agent, parents) == [1, 0, 2]
    assert rewards.match_reference(ref, [call(0, n, "r") for n in ("c", "a")], parents) == [1, None, None]
    # multiplicity: two reference calls of one tool need two agent calls
    assert rewards.match_reference(flat("a", "a"), [call(0, "a", "r")], [set(), set()]) == [0, None]
    assert rewards.coverage([]) == 1.0


def test_argument_accuracy_on_matched_pairs():
    ref = [{"name": "f", "arguments": {"x": 1, "y": "a"}}, {"name": "g", "arguments": {}},
           {"name": "h", "arguments": {"z": [1, 2]}}]
    agent = [call(0, "f", "r", arguments={"x": 1.0, "y": "b"}), call(0, "g", "r", arguments={"extra": 1})]
    matches = [0, 1, None]
    # f: x equal (1 == 1.0), y differs -> 1/2; g: no reference argument -> 1; h unmatched
    assert rewards.argument_accuracy(ref, agent, matches) == pytest.approx(0.75)
    assert rewards.argument_accuracy(ref, agent, [None, None, None]) == 0.0
    assert rewards.argument_accuracy([], [], []) == 1.0


def test_efficiency_penalty_budget():
    # n_ref = 4: B = 4 + ceil(2) = 6
    assert rewards.efficiency_budget(4, 0.5) == 6
    assert rewards.efficiency_penalty(6, 4) == 0.0
    assert rewards.efficiency_penalty(9, 4) == pytest.approx(-0.5 * 3 / 6)
    # n_ref = 3: B = 3 + ceil(1.5) = 5
    assert rewards.efficiency_penalty(5, 3) == 0.0
    assert rewards.efficiency_penalty(6, 3) == pytest.approx(-0.1)
    # n_ref = 0: budget 0, each call costs alpha
    assert rewards.efficiency_penalty(0, 0) == 0.0
    assert rewards.efficiency_penalty(2, 0) == pytest.approx(-1.0)
    assert rewards.efficiency_penalty(9, 4, alpha=1.0, beta=0.0) == pytest.approx(-5 / 4)


def test_name_precision_and_format_penalty():
    calls = [call(0, "find", "r"), call(0, "ls", "r"), call(0, "find", "r"),
             {**call(0, None, None, PARSE_ERROR), "arguments": None}]
    assert rewards.name_precision(calls, flat("find", "move")) == pytest.approx(2 / 3)
    assert rewards.name_precision([], flat("find")) == 0.0
    assert rewards.name_precision([], []) == 1.0
    assert rewards.format_penalty(calls) == pytest.approx(-0.25)
    assert rewards.format_penalty([]) == 0.0


def test_prove_total_weights_and_clip():
    comps = {"validity": 1.0, "coverage": 0.5, "name_precision": 1.0, "arg_accuracy": 0.5,
             "efficiency": -0.1, "format_penalty": 0.0, "progress": 0.5, "outcome": 0.0}
    # 0.2 + 0.2 + 0.2 + 0.1 - 0.1
    assert rewards.prove_reward(comps, rewards.PROVE_WEIGHTS) == pytest.approx(0.6)
    assert rewards.prove_reward({**comps, "efficiency": -5.0}, rewards.PROVE_WEIGHTS) == 0.0
    w = parse_weights("progress=1, coverage=1")
    assert w["progress"] == 1.0 and w["coverage"] == 1.0 and w["validity"] == 0.2
    assert rewards.prove_reward(comps, w) == 1.0  # clipped


def test_weights_option_and_reward_name():
    assert reward_name(ScoreConfig(), parse_weights("")) == "progress"
    assert reward_name(ScoreConfig(reward="prove"), parse_weights("")) == "prove"
    name = reward_name(ScoreConfig(reward="prove"), parse_weights("coverage=1,validity=0"))
    assert name.startswith("prove(") and "coverage=1" in name and "validity" not in name
    with pytest.raises(OptionError, match="name=value"):
        parse_weights("speed=1")
    with pytest.raises(OptionError, match="needs a number"):
        parse_weights("coverage=lots")
