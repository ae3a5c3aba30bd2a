"""Statistics of a study: a mean across seeds with its 95% interval, and the paired bootstrap.

Two questions, two tools:
- how much a curve varies between seeds: the Student t interval of the mean over the seeds'
  values at one iteration (`t_interval`), the band around each curve of `rods report --study`;
- whether arm A beats arm B on the held-out tasks: the paired bootstrap of the mean difference
  (`paired_bootstrap`), resampling seeds and held-out tasks with replacement and keeping the
  pairs together (the same task, the same seed index, in both arms), so that what the two arms
  share (a hard task is hard for both) cancels instead of widening the interval.

Only numpy; the level is fixed at 95% (the paper's and the issue's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
# two-sided 95% quantiles t_{0.975, df} of Student's t, df = 1..30 (beyond: Cornish-Fisher)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t_quantile(df: int) -> float:
    """t_{0.975, df}: from the table up to 30 degrees of freedom, then the Cornish-Fisher
    expansion z + (z^3 + z)/(4 df) + (5z^5 + 16z^3 + 3z)/(96 df^2) (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the 95% Student t interval of the mean, mean +- t_{0.975, n-1} s / sqrt(n)
    with s the sample standard deviation (ddof 1). One value: (value, None, None); none: Nones."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None, None, None
    mean = sum(xs) / n
    if n == 1:
        return mean, None, None
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * s / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean difference, low, high): the 95% percentile interval of mean(a - b) under the paired
    bootstrap over seeds and tasks.

    `a` and `b` are [seeds x tasks] arrays of per-task scores, row i of both from the same seed
    index and column j from the same held-out task. Each of the `n_boot` resamples draws the
    seeds (rows) and, independently, the tasks (columns) with replacement and takes the mean of
    a - b over the drawn cells; the interval is the 2.5th and 97.5th percentile of those means.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"need two [seeds x tasks] arrays of one shape, got {a.shape} and {b.shape}")
    d = a - b
    n_seeds, n_tasks = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # in chunks, so that n_boot x seeds x tasks never has to fit in memory at once
    chunk = max(1, 2_000_000 // d.size)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        rows = rng.integers(0, n_seeds, size=(k, n_seeds))
        cols = rng.integers(0, n_tasks, size=(k, n_tasks))
        means[start:start + k] = d[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)
