"""Deterministic-policy evaluation: per-task success rates, by two protocols (docs/evaluation.md).

``evaluate`` (protocol ``mtrl``, what the trainer logs with ``train.eval_mode: sequential``): all
K tasks of one of our envs run in lock-step; each task plays ``episodes_per_task`` episodes. An
episode is a success if any of its steps reported ``info["success"]``. With
``terminate_on_success`` on the evaluation env (the default of ``env.eval_terminate_on_success``,
as MetaWorld's own ``metaworld.evaluation`` does) an episode ends at its first success, which
gives the same success flag in fewer steps. Tasks that finished their episodes keep stepping
until every task has (their extra episodes are ignored), so the loop needs no per-task
bookkeeping of actions.

``evaluate_episodes`` (protocol ``mtrl``, ``train.eval_mode: parallel``, the default): every
episode a pure function of (run seed, evaluation, task, episode), all of them in lock-step on a
pool of env instances (``mtrl.envs.episodes``); the policy takes the task of each row.
``evaluate_population`` plays the evaluations of a population's members (seeds of one config) in
one lock-step, each member's episodes exactly those of its single run's ``evaluate_episodes``.

``evaluate_metaworld`` (protocol ``metaworld``): MetaWorld v3's own
``metaworld.evaluation.evaluation`` on MetaWorld's own vector env, with our policy behind
``MetaWorldAgent``, the adapter to MetaWorld's ``Agent`` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

__all__ = [
    "EvalResult", "MetaWorldAgent", "MetaWorldResult", "env_task_names", "evaluate", "evaluate_episodes", "evaluate_metaworld",
    "evaluate_population", "make_metaworld_envs", "metaworld_obs_dim",
]


@dataclass(frozen=True)
class EvalResult:
    """Per-task evaluation results.

    Attributes:
        task_names: MetaWorld names of the tasks, in row order.
        success_rate: [K] fraction of successful episodes.
        mean_return: [K] mean undiscounted episode return.
        episode_success, episode_return: [K, E] per episode (``evaluate_episodes`` only).
    """

    task_names: list[str]
    success_rate: np.ndarray
    mean_return: np.ndarray
    episode_success: np.ndarray | None = None
    episode_return: np.ndarray | None = None

    @property
    def mean_success(self) -> float:
        return float(np.mean(self.success_rate))

    def to_json(self, episodes_per_task: int) -> dict:
        return result_json("mtrl", episodes_per_task, self.task_names, self.success_rate, float(np.mean(self.mean_return)))


def result_json(protocol: str, episodes_per_task: int, task_names: list[str], success_rate, mean_return: float) -> dict:
    """What ``mtrl evaluate --json`` writes, for either protocol."""
    rates = [float(rate) for rate in success_rate]
    return {
        "protocol": protocol,
        "episodes_per_task": int(episodes_per_task),
        "mean_success": float(np.mean(rates)),
        "success": dict(zip(task_names, rates)),
        "mean_return": float(mean_return),
    }


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env, episodes_per_task: int) -> EvalResult:
    """Run ``policy`` (observations [K, obs_dim] -> actions [K, A]) for ``episodes_per_task``
    episodes of every task of ``env`` (an ``envs`` multi-task environment)."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    K = env.num_tasks
    successes = np.zeros(K)
    returns = np.zeros(K)
    finished = np.zeros(K, dtype=np.int64)
    obs = env.reset()
    while (finished < episodes_per_task).any():
        result = env.step(policy(obs))
        obs = result.obs
        counted = result.episode_done & (finished < episodes_per_task)
        successes += counted * result.episode_success
        returns += np.where(counted, result.episode_return, 0.0)
        finished += counted
    return EvalResult(list(env.task_names), successes / episodes_per_task, returns / episodes_per_task)


def evaluate_episodes(
    policy: Callable[[np.ndarray, np.ndarray], np.ndarray], runner, seed: int, evaluation: int, episodes_per_task: int,
) -> EvalResult:
    """Evaluation ``evaluation`` (the trainer passes the training step) of a run seeded ``seed``:
    ``episodes_per_task`` episodes of every task of ``runner`` (an
    ``mtrl.envs.episodes.EpisodeRunner``), their goals and reset seeds drawn from (seed,
    evaluation, task, episode) alone. ``policy``: observations [N, obs_dim], task ids [N] ->
    actions [N, A]."""
    (result,) = evaluate_population([policy], runner, [seed], evaluation, episodes_per_task)
    return result


def evaluate_population(
    policy: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | Sequence[Callable[[np.ndarray, np.ndarray], np.ndarray]],
    runner, seeds: Sequence[int], evaluation: int, episodes_per_task: int, only: Sequence[int] | None = None,
) -> list[EvalResult]:
    """Evaluation ``evaluation`` of every member of a population, member ``m`` the run seeded
    ``seeds[m]``: its result is exactly ``evaluate_episodes`` of that single run (the same
    episodes: goals from its own goal sets, reset seeds from its seed), given a policy whose
    action for a row depends on that row alone. All members' K x E episodes run in one lock-step
    over the runner's pool (at most ``env.eval_envs`` instances, its worker processes).

    Args:
        policy: one policy of every member, ``policy(obs [N, obs_dim], member_ids [N], task_ids [N])
            -> actions [N, A]``, called once per lock-step on all members' live rows (a
            population's batched actor); or a list of per-member policies ``policies[m](obs,
            task_ids)``, each called once per lock-step on its member's rows.
        runner: an ``mtrl.envs.episodes.EpisodeRunner`` whose member ``m`` has member ``m``'s
            evaluation goal sets (``EpisodeRunner.for_members``,
            ``mtrl.train.make_population_runner``); a runner without member goal sets plays
            every member on its env's goal sets.
        seeds: each member's run seed.
        evaluation: the evaluation's number (the trainer passes the training step).
        episodes_per_task: E.
        only: evaluate these members alone (indices into ``seeds``; a population whose other
            members stopped); ``policy``, when a list, then holds one policy per member of ``only``.

    Returns one ``EvalResult`` per member (of ``only`` when given), in order, with
    ``episode_success`` and ``episode_return`` [K, E].
    """
    from mtrl.envs.episodes import plan_episodes

    seeds = [int(seed) for seed in seeds]
    S, K, E = len(seeds), runner.num_tasks, episodes_per_task
    if not S:
        raise ValueError("a population needs at least one member (seeds is empty)")
    if runner.members is not None and runner.members != S:
        raise ValueError(f"the runner has goal sets for {runner.members} members, got {S} seeds")
    chosen = list(range(S)) if only is None else [int(m) for m in only]
    if not all(0 <= m < S for m in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"only must name distinct members in [0, {S}), got {list(only or [])}")
    if not callable(policy):
        if len(policy) != len(chosen):
            raise ValueError(f"got {len(policy)} policies for {len(chosen)} members")
        by_member: list[Any] = [None] * S
        for m, p in zip(chosen, policy):
            by_member[m] = p
        policy = by_member
    plan = []  # ordered by (member, task, episode)
    for m in chosen:
        plan += plan_episodes(seeds[m], evaluation, runner.num_goals_of(m), E, member=m)
    outcomes = runner.run(policy, plan)
    success = outcomes.success.reshape(len(chosen), K, E)
    returns = outcomes.episode_return.reshape(len(chosen), K, E)
    names = list(runner.task_names)
    return [EvalResult(names, success[i].mean(axis=1), returns[i].mean(axis=1), success[i], returns[i]) for i in range(len(chosen))]


# ---------------------------------------------------------------------------------------------
# MetaWorld's own protocol: metaworld.evaluation.evaluation on MetaWorld's vector env.
# ---------------------------------------------------------------------------------------------
Policy = Callable[[np.ndarray], np.ndarray]


class _EpisodeStatisticsAtTimeLimit(gym.Wrapper):
    """Adds ``info["episode"]`` where an outer ``TimeLimit`` ended the episode.

    ``gymnasium.make`` applies ``max_episode_steps`` as its own ``TimeLimit`` outside MetaWorld's
    ``RecordEpisodeStatistics``, which then never sees those truncations, and
    ``metaworld.evaluation`` raises ``KeyError: 'episode'``. Episodes that end inside (success,
    MetaWorld's own limit) keep MetaWorld's statistics."""

    def reset(self, **kwargs):
        self._return, self._length = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._length += 1
        if (terminated or truncated) and "episode" not in info:
            info = {**info, "episode": {"r": self._return, "l": self._length, "t": 0.0}}
        return obs, reward, terminated, truncated, info


def make_metaworld_envs(benchmark: str, seed: int, max_episode_steps: int = 500, autoreset: str = "same_step"):
    """MetaWorld's own vector env for one of our benchmarks ("MT10", "MT50", "MT1-<task>").

    ``seed`` is MetaWorld's benchmark seed: ``Meta-World/MT10`` with ``seed=s`` samples its goal set
    with ``metaworld.MT10(seed=s)``, the call our training env makes, so the run's seed gives the
    run's training goals. MT10 and MT50 observations carry the task one-hot; MT1 has none.

    MT1 is registered with a plain entry point, so gymnasium vectorises it itself: its autoreset
    mode goes through ``vector_kwargs`` (the default NEXT_STEP breaks ``evaluation``), and its
    ``max_episode_steps`` becomes gymnasium's ``TimeLimit`` outside MetaWorld's wrappers
    (``_EpisodeStatisticsAtTimeLimit`` gives those truncations their episode return).
    """
    import metaworld  # noqa: F401  (registers the Meta-World/* ids)

    modes = {"same_step": gym.vector.AutoresetMode.SAME_STEP, "next_step": gym.vector.AutoresetMode.NEXT_STEP}
    if autoreset not in modes:
        raise ValueError(f"autoreset must be one of {', '.join(modes)}; got {autoreset!r}")
    mode = modes[autoreset]
    if benchmark in ("MT10", "MT50"):
        return gym.make_vec(
            f"Meta-World/{benchmark}", seed=seed, use_one_hot=True, max_episode_steps=max_episode_steps, autoreset_mode=mode
        )
    if benchmark.startswith("MT1-"):
        return gym.make_vec(
            "Meta-World/MT1", env_name=benchmark[4:], seed=seed, max_episode_steps=max_episode_steps,
            vector_kwargs={"autoreset_mode": mode}, wrappers=[_EpisodeStatisticsAtTimeLimit],
        )
    raise ValueError(f"MetaWorld's protocol covers MT10, MT50 and MT1-<task>; got benchmark {benchmark!r}")


def env_task_names(envs) -> list[str]:
    """MetaWorld task names of the rows of a MetaWorld vector env (``reach-v3``, ...)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    by_class = {cls.__name__: name for name, cls in ALL_V3_ENVIRONMENTS.items()}
    return [by_class[class_name] for class_name in envs.get_attr("task_name")]


class MetaWorldAgent:
    """One of our policies in MetaWorld's ``Agent`` protocol (``eval_action``, ``reset``).

    Our policies take observations [K, obs_dim] whose row k is task k of the run (the order of
    ``task_names``) and encode the task themselves. MetaWorld's observations end with its task
    one-hot (index = row of its vector env, in its benchmark order): the adapter strips it, maps
    each row to our task code by name, and hands the actions back in MetaWorld's row order.

    Args:
        policy: observations [K, obs_dim] -> actions [K, A] (deterministic for evaluation).
        task_names: our task order (the run's ``eval.csv`` columns).
        row_names: MetaWorld task name of each row of the vector env (``env_task_names``).
        obs_dim: width of the observations without the one-hot (39 for MetaWorld v3).
    """

    def __init__(self, policy: Policy, task_names: list[str], row_names: list[str], obs_dim: int) -> None:
        if sorted(row_names) != sorted(task_names):
            raise ValueError(f"the MetaWorld env holds tasks {row_names}, the policy was trained on {task_names}")
        self.policy, self.obs_dim, self.num_tasks = policy, obs_dim, len(task_names)
        self._row_names = list(row_names)
        self._code_of_name = {name: k for k, name in enumerate(task_names)}

    def _codes(self, observations: np.ndarray) -> np.ndarray:
        """Our task code of each row: from the one-hot where present, else from the row's name."""
        K = self.num_tasks
        width = observations.shape[1]
        if width == self.obs_dim + K:
            one_hot = observations[:, self.obs_dim:]  # [K, K], index = MetaWorld row order
            names = [self._row_names[j] for j in np.argmax(one_hot, axis=1)]
        elif width == self.obs_dim:
            names = self._row_names
        else:
            raise ValueError(
                f"MetaWorld observations have {width} columns; expected {self.obs_dim} or {self.obs_dim} + a {K}-task one-hot"
            )
        return np.array([self._code_of_name[name] for name in names])

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        observations = np.asarray(observations)
        if observations.shape[0] != self.num_tasks:
            raise ValueError(f"expected one observation row per task ({self.num_tasks}), got {observations.shape[0]}")
        codes = self._codes(observations)  # [K] our task code of each MetaWorld row
        if sorted(codes.tolist()) != list(range(self.num_tasks)):
            raise ValueError(f"each task must appear once in a MetaWorld step; task codes of the rows: {codes.tolist()}")
        ours = np.empty((self.num_tasks, self.obs_dim), dtype=np.float32)
        ours[codes] = observations[:, : self.obs_dim]
        actions = np.asarray(self.policy(ours))  # [K, A] in our task order
        return actions[codes]

    def reset(self, env_mask: np.ndarray) -> None:
        """Our policies keep no per-episode state."""


@dataclass(frozen=True)
class MetaWorldResult:
    """What ``metaworld.evaluation.evaluation`` returned, in our task order."""

    task_names: list[str]
    success_rate: np.ndarray  # [K]
    mean_success: float
    mean_return: float
    episodes_per_task: int

    def to_json(self) -> dict:
        return result_json("metaworld", self.episodes_per_task, self.task_names, self.success_rate, self.mean_return)


def metaworld_obs_dim(envs, benchmark: str) -> int:
    """Width of a MetaWorld vector env's observations without its task one-hot (MT10, MT50)."""
    width = int(envs.single_observation_space.shape[0])
    return width - envs.num_envs if benchmark in ("MT10", "MT50") else width


def evaluate_metaworld(policy: Policy, envs, task_names: list[str], obs_dim: int, episodes_per_task: int = 50) -> MetaWorldResult:
    """Evaluate ``policy`` with MetaWorld's own ``evaluation`` function on ``envs``, MetaWorld's
    vector env (``make_metaworld_envs``).

    ``evaluation`` ends every episode at its first success (it switches
    ``terminate_on_success`` on) and counts ``final_info["success"]``; each reset draws a goal from
    the env's goal set, with replacement (MetaWorld's ``RandomTaskSelectWrapper``).
    """
    from metaworld.evaluation import evaluation

    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    agent = MetaWorldAgent(policy, task_names, env_task_names(envs), obs_dim)
    mean_success, mean_return, per_task, _ = evaluation(agent, envs, episodes_per_task)
    rates = np.array([per_task[name] for name in task_names], dtype=np.float64)
    return MetaWorldResult(list(task_names), rates, float(mean_success), float(mean_return), episodes_per_task)
