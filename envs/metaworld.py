"""MetaWorld v3 multi-task environments: MT10, MT50 and ``MT1-<task>``.

One MetaWorld env per task, stepped in lock-step. The envs are driven directly rather than
through gymnasium's ``SyncVectorEnv`` (which is the same Python loop) so that this wrapper
controls three things the vector API hides (docs/design.md §2, "MetaWorld v3 facts"):

* **the transition to store**: when an episode ends, ``StepResult.next_obs`` is the true last
  observation and ``StepResult.obs`` the first observation of the next episode (same-step
  autoreset); ``success`` comes from the step that ended the episode;
* **truncation vs termination**: episodes end by truncation after ``max_episode_steps``
  (``terminated`` stays False, so SAC bootstraps through it); with ``terminate_on_success``
  (MetaWorld's own evaluation protocol) a success terminates the episode;
* **exact checkpoints at any step**: ``state_dict`` holds, per task, the RNG states, the RNG
  states from just before the task's latest reset, MuJoCo's integration state
  (``mj_getState(..., mjSTATE_INTEGRATION)``) and every plain-data attribute of MetaWorld's env
  object (step counter, previous-frame observation, last stable observation, goal, random
  vector, ...). ``load_state_dict`` replays the latest reset from its RNG snapshot (which
  rebuilds what MetaWorld derives from the goal outside plain attributes, such as the object and
  goal positions it writes into the MuJoCo *model*), then writes the attributes and the
  simulator state back. The next ``step`` is then bit-identical to the original env's; the
  tests step a twin of every MT10 task and a sample of MT50 tasks through the rest of an episode
  and compare the env objects field by field.

Unstable simulation: MetaWorld 3.1.1 never sets its own instability flag, but MuJoCo counts a
NaN, Inf or huge value in qpos, qvel, qacc or ctrl in ``data.warning`` (for the first three it
also resets the simulator to the model's initial state). ``StepResult.unstable`` flags the tasks
whose step raised any of them; those counters are zeroed after each step, so a flag belongs to
its own step (the trainer logs the per-task totals).

Goals: every reset draws one of the task's 50 goal variations (MetaWorld v3's
``RandomTaskSelectWrapper`` behaviour) with this wrapper's own seeded generator. The 50
variations themselves come from ``metaworld.MT10(goal_seed)`` (``MT50``, ``MT1``); like
MetaWorld's ``make_vec(..., seed=s)`` they follow the run's seed, and an evaluation env built with
the training env's ``goal_seed`` evaluates on the training goals. ``heldout_goals=True`` gives
another 50 per task instead, disjoint from the training set of ``goal_seed`` by construction
(``heldout_goal_sets``). Observations are the 39
MetaWorld floats without a task one-hot; the agent encodes the task id itself.

This module imports no torch at the top: env worker processes (``envs/workers.py``) run it and
exchange states as numpy; only ``state_dict`` / ``load_state_dict`` convert to tensors.
"""

from __future__ import annotations

import functools
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import metaworld
import mujoco
import numpy as np
from metaworld import env_dict
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

__all__ = [
    "MultiTaskEnv", "StepResult", "benchmark_task_names", "disjoint_goal_sets", "end_of_step", "heldout_goal_sets",
    "heldout_seed", "task_goal_sets",
    "rng_state_to_tensor", "rng_state_from_tensor", "select_tasks", "join_tasks", "to_tensors", "from_tensors",
    "AsyncStepping", "StepInFlightError",
]

MAX_PATH_LENGTH = 500  # MetaWorld v3 refuses to step past this
_SIM_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads: time, qpos, qvel, act, warm start, mocap, ctrl, applied forces, eq_active
#: MuJoCo's warnings whose message reads "Nan, Inf or huge value in ... The simulation is unstable"
_BADQPOS, _BADQVEL, _BADQACC, _BADCTRL = (int(w) for w in (
    mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADCTRL,
))
_UNSTABLE_WARNINGS = np.array([_BADQPOS, _BADQVEL, _BADQACC, _BADCTRL])
_ARRAY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float32, np.float64)  # what torch stores


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
        unstable: [K] bool, MuJoCo reported an unstable simulation during this step (module
            docstring); always False for the synthetic env.
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
    unstable: np.ndarray


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


class StepInFlightError(RuntimeError):
    """A request reached an env whose step was launched (``step_async``) and not yet gathered."""


class AsyncStepping:
    """``step_async`` / ``step_wait``, the launch and the gather of one ``step``, for every env of
    this package (the trainer's ``env.overlap``: the envs step while the learner updates).

    Between the two calls a step is in flight: ``step``, ``step_async``, ``reset``, ``state_dict``
    and ``load_state_dict`` raise ``StepInFlightError`` (an env state or an evaluation taken then
    would belong to no step), and ``step_wait`` is the only way on. An env that steps in this
    process (this class's own methods) does the whole step in ``step_wait``: what runs between
    the two calls (an update launched on a GPU) runs before it, and the same actions give the
    same ``StepResult`` as ``step``. ``ParallelMultiTaskEnv`` launches its worker processes in
    ``step_async``."""

    _pending_actions: np.ndarray | None = None

    def _idle(self, request: str) -> None:
        """Raise ``StepInFlightError`` if a step is in flight (``request`` names the refused call)."""
        if self._pending_actions is not None:
            raise StepInFlightError(
                f"{type(self).__name__}.{request}: a step is in flight (step_async without step_wait); "
                f"call step_wait() first"
            )

    def _checked_actions(self, actions: np.ndarray) -> np.ndarray:
        actions = np.array(actions, dtype=np.float32)  # a copy: the caller may reuse its array before step_wait
        if actions.shape != (self.num_tasks, self.action_dim):
            raise ValueError(f"actions must have shape {(self.num_tasks, self.action_dim)}, got {actions.shape}")
        return actions

    @property
    def step_in_flight(self) -> bool:
        return self._pending_actions is not None

    def step_async(self, actions: np.ndarray) -> None:
        """Launch ``step(actions)``; ``step_wait`` returns its result."""
        self._idle("step_async")
        self._pending_actions = self._checked_actions(actions)

    def step_wait(self) -> StepResult:
        """The result of the step ``step_async`` launched."""
        if self._pending_actions is None:
            raise StepInFlightError(f"{type(self).__name__}.step_wait: no step in flight; call step_async(actions) first")
        actions, self._pending_actions = self._pending_actions, None
        return self.step(actions)


def benchmark_task_names(benchmark: str) -> list[str]:
    """MetaWorld task names of ``benchmark`` in its order, e.g. ``['reach-v3', 'push-v3', ...]``."""
    if benchmark == "MT10":
        return list(env_dict.MT10_V3)  # the classes metaworld.MT10 trains on, in its order
    if benchmark == "MT50":
        return list(env_dict.MT50_V3)
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


@functools.lru_cache(maxsize=64)
def _benchmark(benchmark: str, seed: int | tuple[int, ...]) -> metaworld.Benchmark:
    """MetaWorld benchmark object (classes and the 50 goal variations per task); cached because
    sampling the goals instantiates every env (about 4.5 s for MT10). Sized for populations: a
    population of S members asks for each member's seed twice (training env, evaluation runner)
    and each held-out set for a few draws more; an entry holds about 0.3 MB (MT10) to 1.6 MB (MT50)."""
    if benchmark.startswith("MT1-"):
        return metaworld.MT1(benchmark[4:], seed=seed)
    return getattr(metaworld, benchmark)(seed=seed)


def task_goal_sets(benchmark: str, goal_seed: int | tuple[int, ...]) -> list[list[metaworld.Task]]:
    """The 50 goal variations of every task of ``benchmark`` (in task order) that
    ``metaworld.<benchmark>(seed=goal_seed)`` samples; the same seed gives the same goals.

    MetaWorld seeds numpy's legacy global generator with ``goal_seed``: an int (a run's seed)
    goes through MT19937's ``init_genrand``, a tuple of ints through ``init_by_array``."""
    names = benchmark_task_names(benchmark)
    bench = _benchmark(benchmark, goal_seed)
    return [[task for task in bench.train_tasks if task.env_name == name] for name in names]


#: Spawn key of the held-out goal stream (a SeedSequence child no run's own streams use).
HELDOUT_KEY = 0x676F616C  # "goal"


def heldout_seed(seed: int, attempt: int = 0) -> tuple[int, ...]:
    """The MetaWorld seed of the ``attempt``-th held-out draw for run seed ``seed``: eight 32-bit
    words of ``SeedSequence(seed, spawn_key=(HELDOUT_KEY, attempt))``. A tuple seeds MetaWorld's
    sampler through ``init_by_array``, a path no run seed (an int: ``init_genrand``) takes."""
    words = np.random.SeedSequence(int(seed), spawn_key=(HELDOUT_KEY, int(attempt))).generate_state(8)
    return tuple(int(w) for w in words)


def _goal_key(task: metaworld.Task) -> bytes:
    """What makes a goal variation: its random vector (object and goal positions), as bytes."""
    return np.asarray(pickle.loads(task.data)["rand_vec"], dtype=np.float64).tobytes()


def disjoint_goal_sets(
    exclude: Sequence[Sequence[metaworld.Task]], draw: Callable[[int], Sequence[Sequence[metaworld.Task]]],
    per_task: int = 50, max_draws: int = 16,
) -> list[list[metaworld.Task]]:
    """``per_task`` goal variations per task, none equal to a goal of ``exclude`` (per task) or to
    another one chosen: taken in order from ``draw(0)``, then ``draw(1)``, ... (called only while a
    task still lacks goals). Raises ``RuntimeError`` after ``max_draws`` draws."""
    excluded = [{_goal_key(task) for task in goals} for goals in exclude]
    chosen: list[list[metaworld.Task]] = [[] for _ in exclude]
    seen: list[set[bytes]] = [set() for _ in exclude]
    for attempt in range(max_draws):
        if all(len(goals) >= per_task for goals in chosen):
            break
        drawn = draw(attempt)
        if len(drawn) != len(exclude):
            raise ValueError(f"draw({attempt}) gave goal sets for {len(drawn)} tasks, expected {len(exclude)}")
        for k, goals in enumerate(drawn):
            for task in goals:
                if len(chosen[k]) >= per_task:
                    break
                key = _goal_key(task)
                if key not in excluded[k] and key not in seen[k]:
                    seen[k].add(key)
                    chosen[k].append(task)
    if not all(len(goals) >= per_task for goals in chosen):
        raise RuntimeError(f"no {per_task} goals per task disjoint from the excluded ones in {max_draws} draws")
    return chosen


def heldout_goal_sets(benchmark: str, seed: int) -> list[list[metaworld.Task]]:
    """50 goal variations per task of ``benchmark``, disjoint by construction from the training
    goals of run seed ``seed`` (``task_goal_sets(benchmark, seed)``): MetaWorld's own sampler
    seeded with ``heldout_seed(seed, 0)``, any goal equal to a training goal (or repeated) replaced
    by the next one of ``heldout_seed(seed, 1)``, and so on. The held-out sets of different seeds
    are different streams too, so they are not another run's training set (the earlier held-out
    set, the training goals of seed + 10000, was)."""
    return disjoint_goal_sets(task_goal_sets(benchmark, seed), lambda attempt: task_goal_sets(benchmark, heldout_seed(seed, attempt)))


def _check_episode_steps(max_episode_steps: Any) -> None:
    if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
        raise ValueError(f"max_episode_steps must be an int in [1, {MAX_PATH_LENGTH}], got {max_episode_steps!r}")


# ---- RNG states and tensors ---------------------------------------------------------------------
def _rng_words(state: dict) -> np.ndarray:
    """A numpy PCG64 bit-generator state as 10 int64 words (32 bits used each)."""
    words = []
    for value in (state["state"]["state"], state["state"]["inc"]):
        words.extend((int(value) >> (32 * i)) & 0xFFFFFFFF for i in range(4))
    words.extend([int(state["has_uint32"]), int(state["uinteger"])])
    return np.array(words, dtype=np.int64)


def rng_state_to_tensor(state: dict):
    """A numpy PCG64 bit-generator state as an int64 tensor of 32-bit words (for weights_only loads)."""
    import torch

    return torch.from_numpy(_rng_words(state))


def rng_state_from_tensor(words) -> dict:
    """Inverse of ``rng_state_to_tensor`` (also takes the words as a numpy array)."""
    values = [int(w) for w in words.tolist()]

    def join(ws: list[int]) -> int:
        return sum(w << (32 * i) for i, w in enumerate(ws))

    return {
        "bit_generator": "PCG64",
        "state": {"state": join(values[:4]), "inc": join(values[4:8])},
        "has_uint32": values[8],
        "uinteger": values[9],
    }


def to_tensors(value: Any) -> Any:
    """A nested state of numpy arrays and numpy scalars as tensors (0-d for scalars); other leaves
    (python numbers, bools, None, strings) stay as they are, so ``torch.load(weights_only=True)``
    reads it back."""
    import torch

    if isinstance(value, dict):
        return {key: to_tensors(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_tensors(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.array(value))
    return value


def from_tensors(value: Any) -> Any:
    """Inverse of ``to_tensors``: tensors back to numpy arrays, 0-d tensors to numpy scalars."""
    if isinstance(value, dict):
        return {key: from_tensors(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_tensors(item) for item in value]
    if hasattr(value, "numpy") and hasattr(value, "dim"):  # a tensor (torch itself is not imported here)
        array = value.detach().cpu().numpy().copy()
        return array[()] if array.ndim == 0 else array
    return value


def select_tasks(state: dict, tasks: Sequence[int]) -> dict:
    """The part of a (numpy) state that belongs to ``tasks`` (row indices); every value of a state
    has the task as its first dimension (arrays) or is a per-task list."""
    index = np.asarray(tasks, dtype=np.int64)
    return {key: [value[k] for k in tasks] if isinstance(value, list) else np.asarray(value)[index] for key, value in state.items()}


def join_tasks(parts: Sequence[dict], tasks: Sequence[Sequence[int]], num_tasks: int) -> dict:
    """Inverse of ``select_tasks``: one state of ``num_tasks`` tasks from parts holding the rows
    ``tasks[i]`` each."""
    out: dict = {}
    for key, first in parts[0].items():
        if isinstance(first, list):
            joined: Any = [None] * num_tasks
            for part, rows in zip(parts, tasks):
                for k, item in zip(rows, part[key]):
                    joined[k] = item
        else:
            joined = np.empty((num_tasks, *np.shape(first)[1:]), dtype=np.asarray(first).dtype)
            for part, rows in zip(parts, tasks):
                joined[np.asarray(rows, dtype=np.int64)] = part[key]
        out[key] = joined
    return out


# ---- MetaWorld's env object ---------------------------------------------------------------------
def _numpy_owned(array: np.ndarray) -> bool:
    """False for arrays viewing memory numpy does not own, such as MuJoCo's ``MjData`` (MetaWorld's
    ``init_left_pad`` is a live view of ``data.xpos``): those follow the simulator state."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, np.ndarray)


def _plain_attributes(env: Any) -> dict[str, Any]:
    """Copies of the env object's plain-data attributes: None, bools, numbers, numeric numpy
    scalars and numpy-owned numeric arrays (of at least one dimension). Objects (model, data,
    spaces, RNGs, renderer), strings and containers are configuration or handled elsewhere."""
    out = {}
    for name, value in vars(env).items():
        if isinstance(value, np.generic):
            if isinstance(value, _ARRAY_DTYPES):
                out[name] = value.copy()
        elif isinstance(value, np.ndarray):
            if value.ndim >= 1 and value.dtype.type in _ARRAY_DTYPES and _numpy_owned(value):
                out[name] = value.copy()
        elif value is None or isinstance(value, (bool, int, float)):
            out[name] = value
    return out


def _pack_attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Plain attributes in a compact, ``weights_only``-loadable form: every numpy array and numpy
    scalar whose values float64 holds exactly goes into one float64 array (``values``, described
    by ``layout``: name, dtype, shape; shape () marks a numpy scalar); python values and anything
    else stay in ``other``. One array per task instead of one tensor per attribute keeps a
    state small (each tensor costs about 265 bytes in a checkpoint)."""
    layout, chunks, other = [], [], {}
    for name in sorted(values):
        value = values[name]
        if isinstance(value, (np.ndarray, np.generic)):
            flat = np.asarray(value).reshape(-1)
            as_float = flat.astype(np.float64)
            if as_float.astype(flat.dtype).tobytes() == flat.tobytes():
                layout.append((name, flat.dtype.name, tuple(int(n) for n in np.shape(value))))
                chunks.append(as_float)
                continue
        other[name] = value
    packed = np.concatenate(chunks) if chunks else np.zeros(0)
    return {"layout": layout, "values": packed, "other": other}


def _unpack_attributes(packed: dict[str, Any]) -> dict[str, Any]:
    out = dict(packed["other"])
    values, start = np.asarray(packed["values"], dtype=np.float64), 0
    for name, dtype, shape in packed["layout"]:
        size = int(np.prod(shape, dtype=np.int64))
        array = values[start:start + size].astype(dtype).reshape(shape)
        out[name] = array[()] if array.ndim == 0 else array
        start += size
    return out


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two plain values (0.0 and -0.0 differ, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        return a.shape == b.shape and a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    if isinstance(a, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return a == b


def _set_plain_attributes(env: Any, values: dict[str, Any]) -> None:
    """Write saved attributes back; an array that must change is written in place where it can be,
    which keeps MetaWorld's aliasing (``_target_pos`` is a view of ``_last_rand_vec``)."""
    current = vars(env)
    for name, value in values.items():
        old = current.get(name, _MISSING)
        if old is not _MISSING and _same(old, value):
            continue
        if (isinstance(value, np.ndarray) and isinstance(old, np.ndarray) and old.shape == value.shape
                and old.dtype == value.dtype and old.flags.writeable and _numpy_owned(old)):
            old[...] = value
        else:
            setattr(env, name, value.copy() if isinstance(value, (np.ndarray, np.generic)) else value)


_MISSING = object()


def _sim_state(env: Any) -> np.ndarray:
    state = np.empty(mujoco.mj_stateSize(env.model, _SIM_STATE), dtype=np.float64)
    mujoco.mj_getState(env.model, env.data, state, _SIM_STATE)
    return state


def _set_sim_state(env: Any, state: np.ndarray, task: str) -> None:
    size = mujoco.mj_stateSize(env.model, _SIM_STATE)
    if state.shape != (size,):
        raise ValueError(f"MuJoCo state of {task} must have {size} floats, got shape {tuple(state.shape)}")
    state = np.ascontiguousarray(state, dtype=np.float64)
    mujoco.mj_setState(env.model, env.data, state, _SIM_STATE)
    # recompute positions, contacts and sites (what MetaWorld left after its step) for anyone who
    # reads them before the next step; mj_forward also overwrites the solver's warm start, which
    # is part of the saved state (the next step's result depends on it), so set the state again
    mujoco.mj_forward(env.model, env.data)
    mujoco.mj_setState(env.model, env.data, state, _SIM_STATE)


def describe_goal_set(state: dict) -> str | None:
    """The goal set an env state was written on, in words (None for states that record none, such
    as the synthetic env's): ``training goal set of seed S`` or ``held-out goal set of seed S``;
    states written before held-out sets were built disjoint record only the seed (a held-out env
    then wrote seed + 10000, and reads as the training goal set of that seed, which it was)."""
    if "goal_seed" not in state:
        return None
    seeds = sorted({int(seed) for seed in np.asarray(state["goal_seed"]).reshape(-1)})
    heldout = sorted({bool(h) for h in np.asarray(state.get("heldout_goals", [False])).reshape(-1)})
    kind = "held-out" if heldout == [True] else "training" if heldout == [False] else "mixed"
    return f"{kind} goal set of seed {seeds[0] if len(seeds) == 1 else seeds}"


class MultiTaskEnv(AsyncStepping):
    """K MetaWorld tasks stepped in lock-step (see the module docstring); ``step_async`` /
    ``step_wait`` as ``AsyncStepping``.

    Args:
        benchmark: "MT10", "MT50" or "MT1-<task>".
        seed: seeds goal sampling and the envs' own RNGs, and the goal set unless ``goal_seed``
            is given (0 is a seed).
        max_episode_steps: episode length, at most 500 (MetaWorld v3's limit).
        terminate_on_success: end an episode at its first success (evaluation protocol).
        goal_seed: seed of the benchmark's 50 goal variations per task (default ``seed``); an
            evaluation env passes the training env's to evaluate on the training goals.
        heldout_goals: draw from ``heldout_goal_sets(benchmark, goal_seed)`` instead, a set
            disjoint from the training goals of ``goal_seed``.
        tasks: indices (in benchmark order) of the tasks this env runs, default all. Env worker
            processes run subsets; every task is seeded by its benchmark index, so a subset steps
            exactly like those rows of the whole env.
        goal_sets: the goal variations of each task of ``tasks`` (default: sampled from
            ``goal_seed``); worker processes get them from the parent instead of resampling.
    """

    def __init__(
        self, benchmark: str, seed: int, *, max_episode_steps: int = 500, terminate_on_success: bool = False,
        goal_seed: int | None = None, tasks: Sequence[int] | None = None,
        goal_sets: Sequence[Sequence[metaworld.Task]] | None = None, heldout_goals: bool = False,
    ) -> None:
        names = benchmark_task_names(benchmark)
        _check_episode_steps(max_episode_steps)
        task_ids = list(range(len(names))) if tasks is None else [int(k) for k in tasks]
        if not task_ids or len(set(task_ids)) != len(task_ids) or not all(0 <= k < len(names) for k in task_ids):
            raise ValueError(f"tasks must be distinct indices in [0, {len(names)}) of {benchmark}, got {list(tasks or [])}")
        self.benchmark = benchmark
        self.task_ids = task_ids
        self.task_names = [names[k] for k in task_ids]
        self.num_tasks = len(task_ids)
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.goal_seed = seed if goal_seed is None else goal_seed
        self.heldout_goals = bool(heldout_goals)
        if goal_sets is None:
            every = (heldout_goal_sets if self.heldout_goals else task_goal_sets)(benchmark, self.goal_seed)
            goal_sets = [every[k] for k in task_ids]
        if len(goal_sets) != self.num_tasks:
            raise ValueError(f"goal_sets has {len(goal_sets)} entries for {self.num_tasks} tasks")
        self.goal_sets = [list(goals) for goals in goal_sets]
        self._envs = []
        for k, name in zip(task_ids, self.task_names):
            env = ALL_V3_ENVIRONMENTS[name]()
            env.seed(seed * 1000 + k)
            self._envs.append(env)
        self._task_rngs = [np.random.default_rng([seed, k]) for k in task_ids]
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
        self._started = np.zeros(K, dtype=bool)  # a task without a reset yet has no episode to save
        self._pre_reset = [self._rng_snapshot(k) for k in range(K)]

    # ---- resets ---------------------------------------------------------------------------
    def _rng_snapshot(self, k: int) -> tuple[dict, dict]:
        return (self._task_rngs[k].bit_generator.state, self._envs[k].np_random.bit_generator.state)

    def _set_rngs(self, k: int, task_state: dict, env_state: dict) -> None:
        self._task_rngs[k].bit_generator.state = task_state
        self._envs[k].np_random.bit_generator.state = env_state

    def _reset_task(self, k: int) -> None:
        self._pre_reset[k] = self._rng_snapshot(k)
        goals = self.goal_sets[k]
        self._envs[k].set_task(goals[int(self._task_rngs[k].integers(len(goals)))])
        obs, _ = self._envs[k].reset()
        self._obs[k] = obs
        self._t[k] = 0
        self._succeeded[k] = False
        self._return[k] = 0.0
        self._started[k] = True

    def reset(self) -> np.ndarray:
        """Start a new episode on every task; returns observations [K, obs_dim] float32."""
        self._idle("reset")
        for k in range(self.num_tasks):
            self._reset_task(k)
        return self._obs.copy()

    # ---- stepping -------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> StepResult:
        self._idle("step")
        actions = np.asarray(actions, dtype=np.float32)  # [K, A]
        if actions.shape != (self.num_tasks, self.action_dim):
            raise ValueError(f"actions must have shape {(self.num_tasks, self.action_dim)}, got {actions.shape}")
        K = self.num_tasks
        next_obs = np.empty((K, self.obs_dim), dtype=np.float32)
        reward = np.empty(K, dtype=np.float32)
        success = np.empty(K, dtype=bool)
        unstable = np.zeros(K, dtype=bool)
        for k, env in enumerate(self._envs):
            try:
                obs, r, _, _, info = env.step(actions[k])
            except Exception as err:
                if hasattr(err, "add_note"):  # Python >= 3.11
                    err.add_note(f"(while stepping MetaWorld task {self.task_names[k]})")
                raise
            next_obs[k] = obs
            reward[k] = r
            success[k] = bool(info["success"])
            counts = env.data.warning.number  # a view of MuJoCo's warning counters
            # four scalar reads, with the view: about 2 us per task, half of numpy's any() on the four
            if counts[_BADQPOS] or counts[_BADQVEL] or counts[_BADQACC] or counts[_BADCTRL]:
                unstable[k] = True
                counts[_UNSTABLE_WARNINGS] = 0
        ends = end_of_step(self._t, self._succeeded, self._return, reward, success, self.max_episode_steps, self.terminate_on_success)
        self._obs[:] = next_obs
        for k in np.flatnonzero(ends["episode_done"]):
            self._reset_task(int(k))
        return StepResult(obs=self._obs.copy(), next_obs=next_obs, reward=reward, success=success, unstable=unstable, **ends)

    # ---- checkpoints ----------------------------------------------------------------------
    def numpy_state(self) -> dict:
        """``state_dict`` in numpy (what worker processes send); every value is per task."""
        self._idle("state_dict")
        started = self._started.copy()
        return {
            "task_rng": np.stack([_rng_words(rng.bit_generator.state) for rng in self._task_rngs]),
            "env_rng": np.stack([_rng_words(env.np_random.bit_generator.state) for env in self._envs]),
            "reset_task_rng": np.stack([_rng_words(s[0]) for s in self._pre_reset]),
            "reset_env_rng": np.stack([_rng_words(s[1]) for s in self._pre_reset]),
            "started": started,
            "goal_seed": np.full(self.num_tasks, self.goal_seed, dtype=np.int64),
            "heldout_goals": np.full(self.num_tasks, self.heldout_goals, dtype=bool),
            "episode_step": self._t.copy(),
            "succeeded": self._succeeded.copy(),
            "return": self._return.copy(),
            "obs": self._obs.copy(),
            "sim": [_sim_state(env) if s else np.zeros(0) for env, s in zip(self._envs, started)],
            "attributes": [_pack_attributes(_plain_attributes(env) if s else {}) for env, s in zip(self._envs, started)],
        }

    def numpy_state_goals(self) -> dict:
        """The goal-set part of ``numpy_state`` (which goal set the env draws from)."""
        return {
            "goal_seed": np.full(self.num_tasks, self.goal_seed, dtype=np.int64),
            "heldout_goals": np.full(self.num_tasks, self.heldout_goals, dtype=bool),
        }

    def load_numpy_state(self, state: dict) -> np.ndarray:
        """``load_state_dict`` from a ``numpy_state``; returns the observations [K, obs_dim]."""
        self._idle("load_state_dict")
        K = len(state["task_rng"])
        if K != self.num_tasks:
            raise ValueError(f"environment state is for {K} tasks, this env has {self.num_tasks}")
        if "sim" not in state:  # written before environment states were complete
            return self._load_reset_snapshots(state)
        written = describe_goal_set(state)
        if written != describe_goal_set(self.numpy_state_goals()):
            warnings.warn(
                f"environment state was written by an env on the {written}, this env draws from the "
                f"{describe_goal_set(self.numpy_state_goals())}: the episodes in progress do not continue exactly", stacklevel=3,
            )
        for k in range(K):
            if state["started"][k]:  # replay the latest reset, then the episode's state on top
                self._set_rngs(k, rng_state_from_tensor(state["reset_task_rng"][k]), rng_state_from_tensor(state["reset_env_rng"][k]))
                self._reset_task(k)
                _set_plain_attributes(self._envs[k], _unpack_attributes(state["attributes"][k]))
                _set_sim_state(self._envs[k], np.asarray(state["sim"][k]), self.task_names[k])
            self._pre_reset[k] = (rng_state_from_tensor(state["reset_task_rng"][k]), rng_state_from_tensor(state["reset_env_rng"][k]))
            self._set_rngs(k, rng_state_from_tensor(state["task_rng"][k]), rng_state_from_tensor(state["env_rng"][k]))
        self._started[:] = np.asarray(state["started"], dtype=bool)
        self._t[:] = np.asarray(state["episode_step"])
        self._succeeded[:] = np.asarray(state["succeeded"], dtype=bool)
        self._return[:] = np.asarray(state["return"])
        self._obs[:] = np.asarray(state["obs"])
        return self._obs.copy()

    def _load_reset_snapshots(self, state: dict) -> np.ndarray:
        """A state of the earlier format (RNG snapshots of the latest resets only): replay those
        resets, so episodes in progress restart from their beginning."""
        if np.any(np.asarray(state["episode_step"]) != 0):
            warnings.warn("environment state from an older checkpoint holds no simulator state: the episodes in progress restart", stacklevel=3)
        for k in range(self.num_tasks):
            self._set_rngs(k, rng_state_from_tensor(state["task_rng"][k]), rng_state_from_tensor(state["env_rng"][k]))
            self._reset_task(k)
        return self._obs.copy()

    def state_dict(self) -> dict:
        """Everything the next ``step`` depends on (module docstring), tensors and plain values."""
        return to_tensors(self.numpy_state())

    def load_state_dict(self, state: dict) -> np.ndarray:
        """Restore a ``state_dict`` (of this env or of a twin with the same benchmark, goal set and
        episode length); the next ``step`` continues exactly. Returns the observations [K, obs_dim]."""
        return self.load_numpy_state(from_tensors(state))

    def close(self) -> None:
        for env in self._envs:
            env.close()
