"""rods' BFCL reward agrees with BFCL's own checker (bfcl_eval's multi_turn_checker).

Perturbed ground-truth trajectories of BFCL tasks (every kind in bfcl_agreement.KINDS) are
executed for real and judged by `rods score` and by the official checker; the verdicts
must agree on at least 99.5% of trajectories, at task level and on the first failing turn.
A sample runs in the normal suite; all 800 tasks run as a slow test. The numbers of
docs/bfcl-reward.md come from `python tests/bfcl_agreement.py`.
"""

from __future__ import annotations

import pytest
from bfcl_agreement import KINDS, measure, perturb, trajectories

from rodscli.envs import bfcl

pytest.importorskip("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker")


def assert_agrees(agreement, at_least: float = 0.995) -> None:
    task_level, first_turn = agreement.rates()
    shown = [(d[0], d[1], d[2], d[3]) for d in (agreement.disagreements or [])[:5]]
    assert task_level >= at_least, (task_level, shown)
    assert first_turn >= at_least, (first_turn, shown)


def sample_tasks(per_category: int) -> list[dict]:
    """Tasks spread over each category's ids (every class combination shows up)."""
    out = []
    for category in bfcl.CATEGORIES:
        tasks = bfcl.load_tasks([category])
        step = len(tasks) // per_category
        out.extend(tasks[::step][:per_category])
    return out


def test_every_perturbation_kind_applies_somewhere():
    import random

    tasks = sample_tasks(10)
    for kind in KINDS:
        assert any(perturb(t, kind, random.Random(0)) is not None for t in tasks), kind
    made = [kind for t in tasks[:5] for kind, _ in trajectories(t, len(KINDS))]
    assert made.count("reference") == 5 and len(set(made)) > 8


@pytest.mark.parametrize("rule", ["official", "v3"])
def test_agreement_on_a_sample(rule):
    agreement = measure(sample_tasks(5), per_task=len(KINDS), official=rule == "official")
    assert agreement.trajectories > 150
    assert_agrees(agreement)


@pytest.mark.slow
def test_agreement_on_all_800_tasks():
    agreement = measure(bfcl.load_tasks(), per_task=8, official=True)
    assert agreement.trajectories > 5000
    assert_agrees(agreement)
