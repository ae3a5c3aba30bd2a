"""rodscli.stats on constructed examples whose answers are known by hand or by theory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rodscli import stats


def test_t_interval_of_three_values_by_hand():
    # mean 2, s = 1, t_{0.975,2} = 4.3027: half-width 4.3027 / sqrt(3) = 2.4842
    mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert lo == pytest.approx(2 - 2.48416, abs=1e-4) and hi == pytest.approx(2 + 2.48416, abs=1e-4)


def test_t_interval_degenerate_cases():
    assert stats.t_interval([]) == (None, None, None)
    assert stats.t_interval([0.25]) == (0.25, None, None)
    assert stats.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert stats.t_interval([None, 1.0, 3.0])[0] == 2.0  # a missing value is left out


def test_t_quantile_continues_the_table_smoothly():
    # t_{0.975, 31} = 2.0395, t_{0.975, 60} = 2.0003, t_{0.975, 120} = 1.9799 (published tables)
    assert stats.t_quantile(30) == 2.0423
    assert stats.t_quantile(31) == pytest.approx(2.0395, abs=2e-4)
    assert stats.t_quantile(60) == pytest.approx(2.0003, abs=2e-4)
    assert stats.t_quantile(120) == pytest.approx(1.9799, abs=2e-4)
    with pytest.raises(ValueError):
        stats.t_quantile(0)


def test_bootstrap_of_a_constant_difference_is_that_constant():
    rng = np.random.default_rng(1)
    b = rng.random((3, 20))
    mean, lo, hi = stats.paired_bootstrap(b + 0.1, b, n_boot=500)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_bootstrap_of_two_tasks_by_hand():
    # one seed, differences (0, 1): a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5th percentile is 0 and the 97.5th is 1
    mean, lo, hi = stats.paired_bootstrap(np.array([[0.0, 1.0]]), np.zeros((1, 2)), n_boot=4000)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)


def test_bootstrap_over_tasks_matches_the_normal_interval():
    # one seed, 400 tasks, differences +1 on 60% of them and -1 on the rest: mean 0.2, and the
    # sampling sd of the mean is sqrt(1 - 0.2^2 = 0.96) / 20 = 0.04899, so the interval is about
    # 0.2 +- 1.96 x 0.04899 = [0.104, 0.296]
    d = np.array([[1.0] * 240 + [-1.0] * 160])
    mean, lo, hi = stats.paired_bootstrap(d, np.zeros_like(d), n_boot=20_000, seed=3)
    half = 1.959964 * math.sqrt(0.96) / 20
    assert mean == pytest.approx(0.2)
    assert lo == pytest.approx(0.2 - half, abs=0.01) and hi == pytest.approx(0.2 + half, abs=0.01)


def test_bootstrap_keeps_pairs_together():
    # the two arms share a large per-task effect (task difficulty) and differ by 0.05 everywhere but
    # for a small noise: paired, the interval is narrow around 0.05 and excludes 0; unpaired (the
    # baseline's tasks shuffled against the arm's) it would be dominated by the difficulty spread
    rng = np.random.default_rng(0)
    difficulty = rng.random(96)
    b = np.stack([difficulty + rng.normal(0, 0.01, 96) for _ in range(3)])
    a = b + 0.05 + rng.normal(0, 0.01, b.shape)
    mean, lo, hi = stats.paired_bootstrap(a, b, n_boot=5000)
    assert 0.04 < lo < mean < hi < 0.06


def test_bootstrap_resamples_seeds_too():
    # every task agrees within a seed, but the seeds disagree (+0.3, -0.1, +0.1): resampling only
    # tasks would give a zero-width interval at 0.1; resampling seeds widens it to the seeds' spread
    d = np.repeat(np.array([[0.3], [-0.1], [0.1]]), 50, axis=1)
    mean, lo, hi = stats.paired_bootstrap(d, np.zeros_like(d), n_boot=4000)
    assert mean == pytest.approx(0.1)
    assert lo < 0.0 < 0.2 < hi


def test_bootstrap_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        stats.paired_bootstrap(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        stats.paired_bootstrap(np.zeros(3), np.zeros(3))
