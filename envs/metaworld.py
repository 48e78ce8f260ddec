"""MetaWorld v3 multi-task environments: MT10, MT50 and ``MT1-<task>``.

One MetaWorld env per task, stepped in lock-step. The envs are driven directly rather than
through gymnasium's ``SyncVectorEnv`` (which is the same Python loop) so that this wrapper
controls three things the vector API hides (notes/metaworld-v3.md):

* **the transition to store**: when an episode ends, ``StepResult.next_obs`` is the true last
  observation and ``StepResult.obs`` the first observation of the next episode (same-step
  autoreset); ``success`` comes from the step that ended the episode;
* **truncation vs termination**: episodes end by truncation after ``max_episode_steps``
  (``terminated`` stays False, so SAC bootstraps through it); with ``terminate_on_success``
  (MetaWorld's own evaluation protocol) a success terminates the episode;
* **exact checkpoints**: every reset first snapshots the RNG states it is about to consume.
  ``load_state_dict`` restores those snapshots and resets again, which reproduces the same goal
  and the same MuJoCo start state. At an episode boundary (where periodic checkpoints fall) this
  is exact; in the middle of an episode the episode in progress restarts from its beginning.

Goals: every reset draws one of the task's 50 goal variations (MetaWorld v3's
``RandomTaskSelectWrapper`` behaviour) with this wrapper's own seeded generator. Observations
are the 39 MetaWorld floats without a task one-hot; the agent encodes the task id itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import metaworld
import numpy as np
import torch
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

__all__ = ["MultiTaskEnv", "StepResult", "benchmark_task_names", "end_of_step", "rng_state_to_tensor", "rng_state_from_tensor"]

MAX_PATH_LENGTH = 500  # MetaWorld v3 refuses to step past this


@dataclass(frozen=True)
class StepResult:
    """One lock-step of K tasks (every array has leading dimension K).

    Attributes:
        obs: observation to act on next (the next episode's first one where an episode ended).
        next_obs: the true next observation of this transition (store this in the replay).
        reward: [K] float32.
        terminated: [K] bool, a true terminal state (only with terminate_on_success).
        truncated: [K] bool, the episode hit the time limit (bootstrap through it).
        success: [K] bool, this step's ``info["success"]``.
        episode_done: [K] bool, an episode ended at this step.
        episode_success: [K] bool, any step of the ended episode succeeded (valid where done).
        episode_return: [K] float, undiscounted return of the ended episode (valid where done).
    """

    obs: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    episode_done: np.ndarray
    episode_success: np.ndarray
    episode_return: np.ndarray


def end_of_step(
    t: np.ndarray, succeeded: np.ndarray, returns: np.ndarray, reward: np.ndarray, success: np.ndarray,
    max_episode_steps: int, terminate_on_success: bool,
) -> dict[str, np.ndarray]:
    """Episode bookkeeping of one lock-step, shared by every env of this package.

    Advances the per-task step counters ``t``, success flags and returns in place and returns the
    ``terminated``, ``truncated``, ``episode_done``, ``episode_success`` and ``episode_return``
    fields of the ``StepResult`` (read before the caller resets the finished tasks)."""
    t += 1
    succeeded |= success
    returns += reward
    terminated = success.copy() if terminate_on_success else np.zeros(len(t), dtype=bool)
    truncated = (t >= max_episode_steps) & ~terminated
    return dict(
        terminated=terminated, truncated=truncated, episode_done=terminated | truncated,
        episode_success=succeeded.copy(), episode_return=returns.copy(),
    )


def _mt1_names() -> list[str]:
    return [f"MT1-{name}" for name in ALL_V3_ENVIRONMENTS]


def benchmark_task_names(benchmark: str) -> list[str]:
    """MetaWorld task names of ``benchmark`` in its order, e.g. ``['reach-v3', 'push-v3', ...]``."""
    if benchmark in ("MT10", "MT50"):
        return list(_benchmark(benchmark, 0).train_classes)
    if benchmark.startswith("MT1-"):
        task = benchmark[4:]
        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"unknown MetaWorld task {task!r} in benchmark {benchmark!r}; valid tasks: {', '.join(ALL_V3_ENVIRONMENTS)}"
            )
        return [task]
    raise ValueError(
        f"unknown benchmark {benchmark!r}; valid: MT10, MT50, MT1-<task> with <task> one of {', '.join(ALL_V3_ENVIRONMENTS)}"
    )


@functools.lru_cache(maxsize=4)
def _benchmark(benchmark: str, seed: int) -> metaworld.Benchmark:
    """MetaWorld benchmark object (classes and the 50 goal variations per task); cached because
    sampling the goals instantiates every env (about 4.5 s for MT10)."""
    if benchmark.startswith("MT1-"):
        return metaworld.MT1(benchmark[4:], seed=seed)
    return getattr(metaworld, benchmark)(seed=seed)


def rng_state_to_tensor(state: dict) -> torch.Tensor:
    """A numpy PCG64 bit-generator state as an int64 tensor of 32-bit words (for weights_only loads)."""
    words = []
    for value in (state["state"]["state"], state["state"]["inc"]):
        words.extend((int(value) >> (32 * i)) & 0xFFFFFFFF for i in range(4))
    words.extend([int(state["has_uint32"]), int(state["uinteger"])])
    return torch.tensor(words, dtype=torch.int64)


def rng_state_from_tensor(words: torch.Tensor) -> dict:
    values = [int(w) for w in words.tolist()]

    def join(ws: list[int]) -> int:
        return sum(w << (32 * i) for i, w in enumerate(ws))

    return {
        "bit_generator": "PCG64",
        "state": {"state": join(values[:4]), "inc": join(values[4:8])},
        "has_uint32": values[8],
        "uinteger": values[9],
    }


class MultiTaskEnv:
    """K MetaWorld tasks stepped in lock-step (see the module docstring).

    Args:
        benchmark: "MT10", "MT50" or "MT1-<task>".
        seed: seeds the goal sets, goal sampling and the envs' own RNGs (0 is a seed).
        max_episode_steps: episode length, at most 500 (MetaWorld v3's limit).
        terminate_on_success: end an episode at its first success (evaluation protocol).
    """

    def __init__(
        self, benchmark: str, seed: int, *, max_episode_steps: int = 500, terminate_on_success: bool = False
    ) -> None:
        self.task_names = benchmark_task_names(benchmark)
        if not isinstance(max_episode_steps, int) or not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_episode_steps must be an int in [1, {MAX_PATH_LENGTH}], got {max_episode_steps!r}")
        self.benchmark = benchmark
        self.num_tasks = len(self.task_names)
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        bench = _benchmark(benchmark, 0 if benchmark.startswith("MT1-") else seed)
        self._envs = []
        self._goals = []
        for k, name in enumerate(self.task_names):
            env = bench.train_classes[name]()
            env.seed(seed * 1000 + k)
            self._envs.append(env)
            self._goals.append([task for task in bench.train_tasks if task.env_name == name])
        self._task_rngs = [np.random.default_rng([seed, k]) for k in range(self.num_tasks)]
        space = self._envs[0].action_space
        self.action_low = np.asarray(space.low, dtype=np.float32)
        self.action_high = np.asarray(space.high, dtype=np.float32)
        self.action_dim = int(space.shape[0])
        self.obs_dim = int(self._envs[0].observation_space.shape[0])
        K = self.num_tasks
        self._obs = np.zeros((K, self.obs_dim), dtype=np.float32)
        self._t = np.zeros(K, dtype=np.int64)
        self._succeeded = np.zeros(K, dtype=bool)
        self._return = np.zeros(K, dtype=np.float64)
        self._pre_reset = [self._rng_snapshot(k) for k in range(K)]

    # ---- resets ---------------------------------------------------------------------------
    def _rng_snapshot(self, k: int) -> tuple[dict, dict]:
        return (self._task_rngs[k].bit_generator.state, self._envs[k].np_random.bit_generator.state)

    def _reset_task(self, k: int) -> None:
        self._pre_reset[k] = self._rng_snapshot(k)
        goals = self._goals[k]
        self._envs[k].set_task(goals[int(self._task_rngs[k].integers(len(goals)))])
        obs, _ = self._envs[k].reset()
        self._obs[k] = obs
        self._t[k] = 0
        self._succeeded[k] = False
        self._return[k] = 0.0

    def reset(self) -> np.ndarray:
        """Start a new episode on every task; returns observations [K, obs_dim] float32."""
        for k in range(self.num_tasks):
            self._reset_task(k)
        return self._obs.copy()

    # ---- stepping -------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.float32)  # [K, A]
        if actions.shape != (self.num_tasks, self.action_dim):
            raise ValueError(f"actions must have shape {(self.num_tasks, self.action_dim)}, got {actions.shape}")
        K = self.num_tasks
        next_obs = np.empty((K, self.obs_dim), dtype=np.float32)
        reward = np.empty(K, dtype=np.float32)
        success = np.empty(K, dtype=bool)
        for k, env in enumerate(self._envs):
            obs, r, _, _, info = env.step(actions[k])
            next_obs[k] = obs
            reward[k] = r
            success[k] = bool(info["success"])
        ends = end_of_step(self._t, self._succeeded, self._return, reward, success, self.max_episode_steps, self.terminate_on_success)
        self._obs[:] = next_obs
        for k in np.flatnonzero(ends["episode_done"]):
            self._reset_task(int(k))
        return StepResult(obs=self._obs.copy(), next_obs=next_obs, reward=reward, success=success, **ends)

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """RNG snapshots taken before each task's latest reset, and the step within the episode."""
        return {
            "task_rng": torch.stack([rng_state_to_tensor(s[0]) for s in self._pre_reset]),
            "env_rng": torch.stack([rng_state_to_tensor(s[1]) for s in self._pre_reset]),
            "episode_step": torch.from_numpy(self._t.copy()),
        }

    def load_state_dict(self, state: dict) -> np.ndarray:
        """Replay each task's latest reset from its snapshot; returns the observations [K, obs_dim].

        Exact where the checkpoint was taken at an episode boundary (``episode_step == 0``);
        otherwise that task's episode restarts from its beginning.
        """
        if state["task_rng"].shape[0] != self.num_tasks:
            raise ValueError(f"environment state is for {state['task_rng'].shape[0]} tasks, this env has {self.num_tasks}")
        for k in range(self.num_tasks):
            self._task_rngs[k].bit_generator.state = rng_state_from_tensor(state["task_rng"][k])
            self._envs[k].np_random.bit_generator.state = rng_state_from_tensor(state["env_rng"][k])
            self._reset_task(k)
        return self._obs.copy()

    def close(self) -> None:
        for env in self._envs:
            env.close()
