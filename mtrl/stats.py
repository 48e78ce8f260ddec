"""Aggregate statistics of run x task scores with stratified bootstrap CIs (rliable's definitions).

The definitions follow Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice" (NeurIPS) [AG], as implemented by their library rliable
(github.com/google-research/rliable, ``rliable/metrics.py`` and ``rliable/library.py``) [RL].
rliable 1.2.0, the latest release, fails to import with pandas 3 (its dependency ``arch`` 7.2
breaks on pandas 3's ``deprecate_kwarg``), and it would bring pandas, arch, statsmodels and
seaborn for a few lines of numpy; the definitions are therefore written here, and checked
against hand computations in ``tests/test_report.py``.

A score matrix is ``scores[n, m]``: run (seed) ``n``, task ``m``, shape ``[N, K]``.

* **IQM** [AG §4.3; RL ``aggregate_iqm``]: the 25% trimmed mean of all ``N * K`` scores pooled,
  as ``scipy.stats.trim_mean(scores, 0.25, axis=None)``: sort, drop ``floor(0.25 * N * K)``
  scores at each end, average the rest.
* **Stratified bootstrap** [AG §4.1, App. A.3; RL ``StratifiedBootstrap`` with
  ``task_bootstrap=False``]: a resample draws, for every task separately, ``N`` runs with
  replacement from that task's ``N`` scores (the strata are the tasks; the tasks themselves are
  kept). Percentile intervals [RL ``get_interval_estimates(method="percentile")``]: the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the statistic over the resamples.
* **Probability of improvement** [AG §4.3, Eq. in "Probability of improvement"; RL
  ``probability_of_improvement``]: ``P(X > Y) = (1 / K) sum_m U_m / (N_x N_y)`` where ``U_m`` is
  the Mann-Whitney U statistic of task ``m``: the number of pairs (x run, y run) with
  ``x > y`` plus one half per tie. Its CI resamples X and Y independently, each stratified over
  tasks [RL ``StratifiedIndependentBootstrap``].
* **Performance profile (score distribution)** [AG §4.2; RL ``create_performance_profile`` with
  ``use_score_distribution=True``]: ``F(tau) = (1 / (N K)) sum_{n,m} 1[scores[n, m] > tau]``,
  the fraction of run x task scores strictly above ``tau``, with stratified bootstrap bands.

Differences from rliable, all deliberate: resamples come from a seeded ``np.random.Generator``
(rliable draws from the global ``np.random``), and the default number of resamples is 2000 for
every statistic (rliable uses 50,000 for ``get_interval_estimates`` and 2,000 for profiles).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "BOOTSTRAP_SEED",
    "check_scores",
    "interquartile_mean",
    "iqm",
    "stratified_resample",
    "percentile_interval",
    "interval_estimate",
    "probability_of_improvement",
    "probability_of_improvement_interval",
    "score_distribution",
    "performance_profile",
]

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
_CHUNK = 256  # resamples per vectorised block (bounds memory at K = 50)


def check_scores(scores, name: str = "scores") -> np.ndarray:
    """A finite float array ``[N, K]`` with ``N, K >= 1``; ValueError naming what was found."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must be a [runs, tasks] matrix with at least one of each; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values at (run, task) {np.argwhere(~np.isfinite(array))[:5].tolist()}")
    return array


def interquartile_mean(values, axis: int = -1) -> np.ndarray:
    """The 25% trimmed mean along ``axis``: sort, drop ``floor(n / 4)`` values at each end, average the rest.

    The same number as ``scipy.stats.trim_mean(values, 0.25, axis)`` (which rliable calls), without
    importing scipy.stats (seconds on a loaded 2-core machine).
    """
    values = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = values.shape[axis]
    if n == 0:
        raise ValueError("the interquartile mean of no values is undefined")
    cut = n // 4
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean of the pooled run x task scores [AG §4.3; RL ``aggregate_iqm``].

    ``scores``: ``[..., N, K]``; the IQM is taken over the last two axes together, so a stack of
    bootstrap resamples ``[B, N, K]`` gives ``[B]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return interquartile_mean(scores.reshape(*scores.shape[:-2], -1))  # over [..., N * K]


def stratified_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` resamples ``[reps, N, K]``: each task's column redrawn over runs with replacement.

    Stratified bootstrap over runs within each task [AG App. A.3; RL ``StratifiedBootstrap``,
    ``task_bootstrap=False``]: resample ``[b, n, m] = scores[i, m]`` with ``i`` uniform in
    ``0..N-1``, drawn independently for every ``(b, n, m)``.
    """
    runs, tasks = scores.shape
    rows = rng.integers(0, runs, size=(reps, runs, tasks))  # [reps, N, K]
    return scores[rows, np.arange(tasks)]


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over axis 0 [RL ``get_interval_estimates``, "percentile"]."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1); got {level}")
    low, high = np.quantile(samples, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    return low, high


def interval_estimate(
    scores,
    statistic: Callable[[np.ndarray], np.ndarray],
    reps: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and stratified percentile-bootstrap CI of ``statistic`` (``[..., N, K] -> [...]``).

    Returns ``(point, low, high)``; ``statistic`` must accept a stack of resamples ``[B, N, K]``.
    """
    scores = check_scores(scores)
    if reps < 1:
        raise ValueError(f"bootstrap reps must be >= 1; got {reps}")
    rng = np.random.default_rng(seed)
    samples = np.concatenate(
        [np.asarray(statistic(stratified_resample(scores, min(_CHUNK, reps - done), rng))) for done in range(0, reps, _CHUNK)]
    )
    low, high = percentile_interval(samples, level)
    return np.asarray(statistic(scores)), low, high


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> np.ndarray:
    """P(X > Y): the task-averaged Mann-Whitney U over ``N_x * N_y`` [AG §4.3; RL ``probability_of_improvement``].

    ``scores_x``: ``[..., N_x, K]``, ``scores_y``: ``[..., N_y, K]`` (the leading axes broadcast,
    e.g. stacks of resamples). Per task, ``U / (N_x N_y)`` is the fraction of (x, y) run pairs
    with ``x > y``, ties counting one half; then the mean over tasks.
    """
    x = np.asarray(scores_x, dtype=np.float64)[..., :, None, :]  # [..., N_x, 1, K]
    y = np.asarray(scores_y, dtype=np.float64)[..., None, :, :]  # [..., 1, N_y, K]
    per_task = (x > y).mean(axis=(-3, -2)) + 0.5 * (x == y).mean(axis=(-3, -2))  # [..., K]
    return per_task.mean(axis=-1)


def probability_of_improvement_interval(
    scores_x, scores_y, reps: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """P(X > Y) with a CI from independent stratified resamples of X and of Y [RL ``StratifiedIndependentBootstrap``].

    P(Y > X) = 1 - P(X > Y) holds exactly, resample by resample (ties count one half both ways).
    """
    x, y = check_scores(scores_x, "scores of X"), check_scores(scores_y, "scores of Y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y must score the same tasks; got {x.shape[1]} and {y.shape[1]} tasks")
    if reps < 1:
        raise ValueError(f"bootstrap reps must be >= 1; got {reps}")
    rng = np.random.default_rng(seed)
    samples = []
    for done in range(0, reps, _CHUNK):
        block = min(_CHUNK, reps - done)
        samples.append(probability_of_improvement(stratified_resample(x, block, rng), stratified_resample(y, block, rng)))
    low, high = percentile_interval(np.concatenate(samples), level)
    return float(probability_of_improvement(x, y)), float(low), float(high)


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of run x task scores strictly above each ``tau`` [AG §4.2; RL ``run_score_deviation``].

    ``scores``: ``[..., N, K]``, ``taus``: ``[T]`` -> ``[..., T]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pooled = scores.reshape(*scores.shape[:-2], -1)  # [..., N * K]
    return np.stack([(pooled > tau).mean(axis=-1) for tau in np.asarray(taus, dtype=np.float64)], axis=-1)


def performance_profile(
    scores, taus, reps: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = BOOTSTRAP_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score-distribution profile ``[T]`` at ``taus`` with stratified-bootstrap bands ``(low, high)``."""
    taus = np.asarray(taus, dtype=np.float64)
    if taus.ndim != 1 or taus.size == 0 or not np.all(np.isfinite(taus)):
        raise ValueError(f"taus must be a non-empty 1-D array of finite thresholds; got {taus!r}")
    return interval_estimate(scores, lambda s: score_distribution(s, taus), reps=reps, level=level, seed=seed)
