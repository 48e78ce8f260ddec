"""Episode-parallel evaluation: every episode a pure function of (run seed, evaluation, task,
episode), all of them played in lock-step on a pool of env instances.

**What an episode is.** ``plan_episodes`` lists the episodes of one evaluation. Episode ``e`` of
task ``k`` in evaluation ``i`` (the trainer uses the training step as ``i``) of a run with seed
``s`` gets

* its goal from the task's evaluation goal set (MetaWorld: the 50 variations of the eval env):
  the goals are visited in a permutation drawn per (s, i, k), so the E episodes of an evaluation
  see E distinct goals (each goal once when E = 50, like MetaWorld's
  ``PseudoRandomTaskSelectWrapper``; episodes past 50 start the next permutation), and every
  evaluation draws another E of them, so a run's evaluations cover the whole set;
* its reset seed, a 64-bit word of ``numpy.random.SeedSequence(s, spawn_key=(tag, i, k, e))``,
  which seeds the instance's own RNG at the episode's reset.

Neither comes from a running RNG, so the order, the timing, the instance and the process that
play an episode, and the policies played before, cannot change it.

**What a reset restores.** A MetaWorld v3 ``reset`` runs ``mj_resetData`` (the whole ``MjData``:
time, positions, velocities, actuation, the solver's warm start ``qacc_warmstart``, mocap,
warnings), then the task's ``reset_model``, which writes the goal's object and target positions
into the model and settles the hand for 50 simulator steps; it sets ``curr_path_length`` to 0
and ``_prev_obs`` to the first frame. It does not restore ``_last_stable_obs`` (the last
step's observation, returned only after a simulator exception) or the env's ``np_random``
(which v3 does not draw from), and it leaves derived ``MjData`` outputs of the last step (the
constraint rows ``efc_*``, island indices, a few ``site_xpos``) that the next ``mj_step``
recomputes. ``MetaWorldInstance.reset`` therefore clears ``_last_stable_obs`` and seeds
``np_random`` from the episode's seed; after that an instance that played other episodes holds
exactly what a fresh one holds (every plain attribute, MuJoCo's integration state, every model
array, measured on all 50 MT50 tasks) and steps bit-identically (tests/test_episodes.py).

**The engine.** ``EpisodeRunner`` plays a list of episodes, tagged (member, task, episode), on at
most ``max_envs`` env instances (an instance plays one task). Each task gets instances in
proportion to its episodes; an instance plays its episodes one after another, starting the next
at the step that ended the previous one (a success ends an episode early with
``terminate_on_success``). Each lock-step calls each member's policy once, on the stacked
observations of that member's live episodes ordered by (task, episode), with their task ids:
``policy(obs [N, obs_dim], task_ids [N]) -> actions [N, A]``, or one policy of all members once
per lock-step, ``policy(obs, member_ids, task_ids)`` (a population's batched actor). A
population's runner (``EpisodeRunner.for_members``) holds each member's own goal sets (those of
its run's evaluation env), so member ``m``'s episodes are exactly its single run's
(``mtrl.evaluate.evaluate_population``); the instances are shared, an instance playing episodes of
any member of its task. In process, or across the worker
processes of an ``mtrl.envs.workers.ParallelMultiTaskEnv`` (its local shard included): the
instances are dealt to the processes by their expected cost (the task's step cost times its
episodes, longest first), so the shards are balanced over the episodes rather than the tasks.
The results (success, return, length per episode) do not depend on ``max_envs``, on the
processes, or on the evaluations before, given a policy whose action for a row depends on that
row only (a CPU matmul may change the last bit of a row with the batch size: measured here for
batches of 1 to 3 rows).

Success follows MetaWorld's rule, as in ``mtrl.envs.metaworld``: an episode succeeds if any of
its steps reported success (``end_of_step``).

This module imports no torch: env worker processes run it.
"""

from __future__ import annotations

import heapq
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from mtrl.envs.metaworld import end_of_step
from mtrl.envs.task_costs import balance, step_cost

__all__ = [
    "Episode", "EpisodeOutcomes", "EpisodeRunner", "EpisodeSlots", "MetaWorldInstance", "episode_seed", "goal_order",
    "plan_episodes", "plan_slots",
]

_SEED_TAG = 0x65706973  # spawn-key tags keep the two derivations apart
_GOAL_TAG = 0x676F616C


@dataclass(frozen=True)
class Episode:
    """One episode of an evaluation.

    Attributes:
        member: which policy plays it (an index into the policies given to ``EpisodeRunner.run``).
        task: row of the evaluation env (MetaWorld: the task's index in its benchmark).
        index: the episode's number among its member's episodes of this task.
        goal: index into the task's evaluation goal set.
        seed: the reset seed.
    """

    member: int
    task: int
    index: int
    goal: int
    seed: int


def _key(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def episode_seed(seed: int, evaluation: int, task: int, index: int) -> int:
    """The reset seed of episode ``index`` of ``task`` in evaluation ``evaluation`` of a run seeded ``seed``."""
    key = (_SEED_TAG, _key("evaluation", evaluation), _key("task", task), _key("episode", index))
    return int(np.random.SeedSequence(_key("seed", seed), spawn_key=key).generate_state(1, np.uint64)[0])


def goal_order(seed: int, evaluation: int, task: int, block: int, num_goals: int) -> np.ndarray:
    """The order [num_goals] in which block ``block`` of a task's episodes (episodes
    ``block * num_goals`` onwards) visits the task's goals."""
    key = (_GOAL_TAG, _key("evaluation", evaluation), _key("task", task), _key("block", block))
    return np.random.default_rng(np.random.SeedSequence(_key("seed", seed), spawn_key=key)).permutation(num_goals)


def plan_episodes(seed: int, evaluation: int, num_goals: Sequence[int], episodes: int, member: int = 0) -> list[Episode]:
    """The episodes of one evaluation: ``episodes`` per task, task ``k`` drawing from
    ``num_goals[k]`` goals, ordered by (task, episode). A population concatenates the plans of
    its members (each with its own ``member`` and its run's seed)."""
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes per task must be an int >= 1, got {episodes!r}")
    plan = []
    for k, n in enumerate(num_goals):
        if n < 1:
            raise ValueError(f"task {k} has {n} goals; it needs at least one")
        orders = [goal_order(seed, evaluation, k, b, n) for b in range((episodes + n - 1) // n)]
        for e in range(episodes):
            plan.append(Episode(member, k, e, int(orders[e // n][e % n]), episode_seed(seed, evaluation, k, e)))
    return plan


# ---- env instances ------------------------------------------------------------------------------
class MetaWorldInstance:
    """A raw MetaWorld v3 env that plays one episode at a time (module docstring: what a reset
    restores). ``env``: the env object, e.g. one of a ``MultiTaskEnv``'s."""

    def __init__(self, env: Any) -> None:
        self.env = env

    @classmethod
    def of_task(cls, name: str) -> MetaWorldInstance:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        return cls(ALL_V3_ENVIRONMENTS[name]())

    def reset(self, goal: Any, seed: int) -> np.ndarray:
        """Start an episode on ``goal`` (a ``metaworld.Task``); returns its first observation [39] float32."""
        env = self.env
        env.set_task(goal)
        env.np_random = np.random.default_rng(seed)
        env._last_stable_obs = None  # what a fresh env holds; MetaWorld's reset keeps the last step's
        obs, _ = env.reset()
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """(observation float32, reward, success) of one step."""
        obs, reward, _, _, info = self.env.step(action)
        return obs.astype(np.float32), reward, bool(info["success"])

    def close(self) -> None:
        self.env.close()


# ---- one process's instances ----------------------------------------------------------------------
class EpisodeSlots:
    """The env instances of one process, each playing queued episodes of its task.

    ``start(groups)`` takes, per task, how many instances play it here and the queue of its
    episodes (plan position, goal, seed); each instance starts the next queued episode as soon as
    its current one ends. Instances are kept (and reused) across evaluations.

    Args:
        make_instance: task -> a new env instance of that task.
        max_episode_steps, terminate_on_success: as the evaluation env's.
        spare: instances to use before making new ones, per task (the evaluation env's own).
    """

    def __init__(
        self, make_instance: Callable[[int], Any], max_episode_steps: int, terminate_on_success: bool,
        spare: dict[int, list[Any]] | None = None,
    ) -> None:
        self.make_instance = make_instance
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self._spare = {task: list(instances) for task, instances in (spare or {}).items()}
        self._made: list[Any] = []  # instances this object made (and closes)
        self._instances: dict[int, list[Any]] = {}  # task -> the instances it has played on, in order
        self._slots: list[tuple[int, Any]] = []  # (task, instance) of every slot of the current evaluation
        self._queues: list[deque] = []  # the episode queue of each slot (shared by a task's slots)
        self._episode = np.zeros(0, dtype=np.int64)  # plan position each slot plays; -1: idle
        self._obs: list[np.ndarray | None] = []  # each slot's latest observation

    def _instance(self, task: int, ordinal: int) -> Any:
        have = self._instances.setdefault(task, [])
        while len(have) <= ordinal:
            spare = self._spare.get(task)
            if spare:
                have.append(spare.pop(0))
            else:
                have.append(self.make_instance(task))
                self._made.append(have[-1])
        return have[ordinal]

    def _begin(self, s: int) -> None:
        """Start slot ``s``'s next queued episode, or leave it idle."""
        queue = self._queues[s]
        if not queue:
            self._episode[s] = -1
            return
        position, goal, seed = queue.popleft()
        task, instance = self._slots[s]
        try:
            self._obs[s] = instance.reset(goal, seed)
        except Exception as err:
            if hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(f"(while resetting an instance of task {task} for episode {position} of the plan)")
            raise
        self._episode[s] = position
        self._t[s] = 0
        self._succeeded[s] = False
        self._return[s] = 0.0

    def start(self, groups: Sequence[tuple[int, int, Sequence[tuple[int, Any, int]]]]) -> tuple[np.ndarray, np.ndarray]:
        """Begin an evaluation: ``groups`` lists (task, instances, [(position, goal, seed), ...]).
        Returns the plan positions [n] and first observations [n, obs_dim] of the live slots."""
        self._slots, self._queues = [], []
        for task, count, episodes in groups:
            queue = deque(episodes)
            for j in range(count):
                self._slots.append((task, self._instance(task, j)))
                self._queues.append(queue)
        S = len(self._slots)
        self._episode = np.full(S, -1, dtype=np.int64)
        self._t = np.zeros(S, dtype=np.int64)
        self._succeeded = np.zeros(S, dtype=bool)
        self._return = np.zeros(S, dtype=np.float64)
        self._obs = [None] * S
        for s in range(S):
            self._begin(s)
        return self._live()

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        live = np.flatnonzero(self._episode >= 0)
        obs = np.stack([self._obs[s] for s in live]) if len(live) else np.zeros((0, 0), dtype=np.float32)
        return self._episode[live].copy(), obs

    def step(self, actions: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
        """Step every live slot with its row of ``actions`` (the order ``start`` / ``step``
        returned). Returns the episodes that ended (positions, success, return, length), then
        the live slots' positions and observations, the next episodes already begun."""
        live = np.flatnonzero(self._episode >= 0)
        actions = np.asarray(actions, dtype=np.float32)
        if len(actions) != len(live):
            raise ValueError(f"expected actions for {len(live)} live episodes, got {len(actions)}")
        reward = np.empty(len(live), dtype=np.float32)
        success = np.empty(len(live), dtype=bool)
        for row, s in enumerate(live):
            task, instance = self._slots[s]
            try:
                self._obs[s], reward[row], success[row] = instance.step(actions[row])
            except Exception as err:
                if hasattr(err, "add_note"):
                    err.add_note(f"(while stepping an instance of task {task}, episode {self._episode[s]} of the plan)")
                raise
        t, succeeded, returns = self._t[live], self._succeeded[live], self._return[live]
        ends = end_of_step(t, succeeded, returns, reward, success, self.max_episode_steps, self.terminate_on_success)
        self._t[live], self._succeeded[live], self._return[live] = t, succeeded, returns
        done = ends["episode_done"]
        finished = (self._episode[live][done].copy(), ends["episode_success"][done], ends["episode_return"][done], t[done].copy())
        for s in live[done]:
            self._begin(int(s))
        return finished, *self._live()

    def handle(self, payload: tuple) -> Any:
        """A command from ``EpisodeRunner`` (in an env worker process): ("start", groups) or ("step", actions)."""
        command, argument = payload
        if command == "start":
            return self.start(argument)
        if command == "step":
            return self.step(argument)
        raise ValueError(f"unknown episode command {command!r}; expected start or step")

    def close(self) -> None:
        for instance in self._made:
            instance.close()
        self._made.clear()


def metaworld_slots(env: Any) -> EpisodeSlots:
    """``EpisodeSlots`` of MetaWorld instances for the tasks of ``env`` (an
    ``mtrl.envs.metaworld.MultiTaskEnv``, in process or in a worker), its own instances first."""
    from mtrl.envs.metaworld import benchmark_task_names

    names = benchmark_task_names(env.benchmark)
    return EpisodeSlots(
        lambda task: MetaWorldInstance.of_task(names[task]), env.max_episode_steps, env.terminate_on_success,
        spare={task: [MetaWorldInstance(instance)] for task, instance in zip(env.task_ids, env._envs)},
    )


#: the instances of each in-process env, kept as long as the env lives: every evaluation (and every
#: runner, e.g. of runs sharing prebuilt envs) reuses them
_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _slots_of(env: Any, make: Callable[[], EpisodeSlots]) -> EpisodeSlots:
    slots = _SLOTS.get(env)
    if slots is None:
        slots = _SLOTS[env] = make()
    return slots


# ---- planning: instances per task, instances per process --------------------------------------------
def plan_slots(tasks: Sequence[int], costs: Sequence[float], max_envs: int, processes: int) -> list[list[tuple[int, int, list[int]]]]:
    """Deal the episodes of a plan to env instances and the instances to processes.

    Args:
        tasks: the task of each episode (in plan order).
        costs: relative step cost of each task (indexed by task).
        max_envs: most instances in all (at least one per task of ``tasks``).
        processes: number of processes.

    Returns, per process, (task, instances, plan positions) groups. Each task gets one instance,
    then the next goes to the task with the most episodes per instance (ties: the costlier,
    then the lower task); a task's episodes are split among its instances in plan order, and
    the instances go to the processes by ``balance`` on (cost x episodes), the lightest process
    first (a local shard, which also runs the policy).
    """
    by_task: dict[int, list[int]] = {}
    for position, task in enumerate(tasks):
        by_task.setdefault(int(task), []).append(position)
    if isinstance(max_envs, bool) or not isinstance(max_envs, (int, np.integer)) or max_envs < len(by_task):
        raise ValueError(
            f"max_envs (env.eval_envs) must be an int >= the number of tasks evaluated ({len(by_task)}): "
            f"an env instance plays one task; got {max_envs!r}"
        )
    count = {task: 1 for task in by_task}
    heap = [(-len(episodes), -costs[task], task) for task, episodes in by_task.items()]
    heapq.heapify(heap)
    for _ in range(min(max_envs, len(tasks)) - len(by_task)):
        _, _, task = heapq.heappop(heap)
        count[task] += 1
        per = -(-len(by_task[task]) // count[task])
        if count[task] < len(by_task[task]):
            heapq.heappush(heap, (-per, -costs[task], task))
    slots = []  # (task, positions)
    for task in sorted(by_task):
        chunks = np.array_split(np.asarray(by_task[task]), count[task])
        slots.extend((task, chunk.tolist()) for chunk in chunks)
    shards = balance([costs[task] * len(positions) for task, positions in slots], processes)
    out = []
    for shard in shards:
        groups: dict[int, tuple[int, list[int]]] = {}
        for s in shard:
            task, positions = slots[s]
            n, merged = groups.get(task, (0, []))
            groups[task] = (n + 1, sorted(merged + positions))
        out.append([(task, n, positions) for task, (n, positions) in sorted(groups.items())])
    return out


@dataclass(frozen=True)
class EpisodeOutcomes:
    """What the episodes of a plan gave, indexed by plan position.

    Attributes:
        success: [n] bool, any step of the episode succeeded.
        episode_return: [n] float64, the undiscounted return.
        length: [n] int64, steps played (less than the limit when a success ended it).
        rounds: lock-steps the engine took.
    """

    success: np.ndarray
    episode_return: np.ndarray
    length: np.ndarray
    rounds: int


class EpisodeRunner:
    """Plays planned episodes on the instances of an evaluation env (module docstring).

    Args:
        env: the evaluation env: ``mtrl.envs.metaworld.MultiTaskEnv`` (in process),
            ``mtrl.envs.workers.ParallelMultiTaskEnv`` (its worker processes and local shard) or
            ``mtrl.envs.synthetic.PointMassEnv``. Its goal sets, episode length and
            ``terminate_on_success`` apply; its own instances are the first of the pool (its
            own episode bookkeeping is not used or kept up to date).
        max_envs: most env instances the evaluation opens (``env.eval_envs``), the env's own included.
        member_goal_sets: a population's goal sets (``for_members``): ``member_goal_sets[m][k]``
            are the evaluation goals of task ``k`` for member ``m``, whose episodes' ``goal``
            index into them. Default: every member plays on the env's own goal sets.
    """

    @classmethod
    def for_members(cls, env: Any, max_envs: int, goal_sets: Sequence[Sequence[Sequence[Any]]]) -> EpisodeRunner:
        """The runner of a population: member ``m`` evaluates on ``goal_sets[m]`` (per task: the
        goal set its own run's evaluation env has, e.g. ``mtrl.train.eval_goal_set`` of its
        seed), on the instances of ``env`` (any member's evaluation env: an instance plays any
        goal it is given, so one pool serves every member). ``mtrl.train.make_population_runner``
        builds one from a config and seeds."""
        return cls(env, max_envs, member_goal_sets=goal_sets)

    def __init__(self, env: Any, max_envs: int, member_goal_sets: Sequence[Sequence[Sequence[Any]]] | None = None) -> None:
        from mtrl.envs.synthetic import PointMassEnv, PointMassInstance
        from mtrl.envs.workers import ParallelMultiTaskEnv

        self.env, self.max_envs = env, max_envs
        self.task_names = list(env.task_names)
        self.num_tasks = len(self.task_names)
        if isinstance(max_envs, bool) or not isinstance(max_envs, (int, np.integer)) or max_envs < self.num_tasks:
            raise ValueError(
                f"env.eval_envs must be an int >= the number of tasks ({self.num_tasks}, one env instance per task at "
                f"least); got {max_envs!r}"
            )
        self._workers = isinstance(env, ParallelMultiTaskEnv)
        self.costs = [step_cost(name) for name in self.task_names]
        if isinstance(env, PointMassEnv):
            self.goal_sets = [[None] for _ in range(self.num_tasks)]
            goals, radius = env.goals, env.success_radius  # not env itself: the cache must not keep it alive
            self._local = _slots_of(env, lambda: EpisodeSlots(
                lambda task: PointMassInstance(goals[task], radius), env.max_episode_steps, env.terminate_on_success,
            ))
        else:
            self.goal_sets = env.goal_sets
            host = env.local_shard if self._workers else env
            self._local = None if host is None else _slots_of(host, lambda: metaworld_slots(host))
        self.num_goals = [len(goals) for goals in self.goal_sets]
        self.member_goal_sets: list[list[list[Any]]] | None = None
        if member_goal_sets is not None:
            self.member_goal_sets = [[list(goals) for goals in sets] for sets in member_goal_sets]
            for m, sets in enumerate(self.member_goal_sets):
                if len(sets) != self.num_tasks or not all(sets):
                    raise ValueError(
                        f"member {m}'s goal sets must hold at least one goal for each of the {self.num_tasks} tasks; "
                        f"got {[len(goals) for goals in sets]}"
                    )
        self._task_keys = [int(k) for k in getattr(env, "task_ids", range(self.num_tasks))]  # what instances know a task by
        self.processes = (len(env.pids) + (self._local is not None)) if self._workers else 1

    @property
    def members(self) -> int | None:
        """How many members have goal sets of their own (``for_members``); None: all play the env's."""
        return None if self.member_goal_sets is None else len(self.member_goal_sets)

    def goal_sets_of(self, member: int) -> list[list[Any]]:
        """The goal sets (per task) member ``member``'s episodes draw from."""
        if self.member_goal_sets is None:
            return self.goal_sets
        if not 0 <= member < len(self.member_goal_sets):
            raise ValueError(f"member {member} has no goal sets: this runner has {len(self.member_goal_sets)} members")
        return self.member_goal_sets[member]

    def num_goals_of(self, member: int) -> list[int]:
        """``len`` of each task's goal set of member ``member`` (``plan_episodes``' ``num_goals``)."""
        return [len(goals) for goals in self.goal_sets_of(member)]

    def _command(self, payloads: list) -> list:
        """Send one command to every process; their replies in process order (the local one first)."""
        if not self._workers:
            return [self._local.handle(payloads[0])]
        if self._local is None:
            return self.env.episodes(payloads)[:-1]
        *replies, mine = self.env.episodes(payloads[1:], local=lambda: self._local.handle(payloads[0]))
        return [mine, *replies]

    def _start(self, episodes: list[Episode]) -> list:
        """Deal ``episodes`` to instances and processes and begin them; the processes' replies."""
        goal_sets = {m: self.goal_sets_of(m) for m in {e.member for e in episodes}}
        for episode in episodes:
            if not 0 <= episode.task < self.num_tasks or not 0 <= episode.goal < len(goal_sets[episode.member][episode.task]):
                raise ValueError(f"{episode} names a task or goal this env does not have ({self.num_tasks} tasks)")
        shards = plan_slots([e.task for e in episodes], self.costs, self.max_envs, self.processes)

        def goal(p: int) -> Any:
            return goal_sets[episodes[p].member][episodes[p].task][episodes[p].goal]

        return self._command([
            ("start", [(self._task_keys[k], count, [(p, goal(p), episodes[p].seed) for p in positions])
                       for k, count, positions in groups])
            for groups in shards
        ])

    def prepare(self, episodes: Sequence[Episode]) -> None:
        """Make (and reset) the instances that playing ``episodes`` needs, without playing them
        (the instances are kept: a run's later evaluations of the same size make none)."""
        self._start(list(episodes))

    def run(
        self, policies: Sequence[Callable[[np.ndarray, np.ndarray], np.ndarray]] | Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
        episodes: Sequence[Episode],
    ) -> EpisodeOutcomes:
        """Play ``episodes``. ``policies``: a list, ``policies[m](obs [N, obs_dim], task_ids [N])``
        acting for the episodes of member ``m`` (called once per lock-step on that member's live
        rows), or one policy of every member, ``policy(obs [N, obs_dim], member_ids [N],
        task_ids [N])``, called once per lock-step on all live rows (a population's batched
        actor). Rows come in plan order either way."""
        episodes = list(episodes)
        n = len(episodes)
        joint = callable(policies)
        for episode in episodes:
            if not joint and not 0 <= episode.member < len(policies):
                raise ValueError(f"{episode} is played by member {episode.member}, but {len(policies)} policies were given")
        member = np.array([e.member for e in episodes], dtype=np.int64)
        task = np.array([e.task for e in episodes], dtype=np.int64)
        success = np.zeros(n, dtype=bool)
        returns = np.zeros(n, dtype=np.float64)
        length = np.zeros(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        replies = [(None, *reply) for reply in self._start(episodes)]
        rounds = 0
        while True:
            for finished, _, _ in replies:
                if finished is not None:
                    positions, ok, ret, steps = finished
                    success[positions], returns[positions], length[positions], done[positions] = ok, ret, steps, True
            ids = [reply[1] for reply in replies]
            counts = [len(i) for i in ids]
            if not sum(counts):
                break
            ids_all = np.concatenate(ids)
            obs_all = np.concatenate([reply[2] for reply in replies if len(reply[1])])
            order = np.argsort(ids_all, kind="stable")  # rows in plan order, whatever process plays them
            if joint:  # every member's rows in one call
                calls = [(order, lambda rows: policies(obs_all[rows], member[ids_all[rows]], task[ids_all[rows]]))]
            else:
                calls = [(order[member[ids_all[order]] == m], lambda rows, m=m: policies[m](obs_all[rows], task[ids_all[rows]]))
                         for m in np.unique(member[ids_all])]
            actions_all: np.ndarray | None = None
            for rows, act in calls:
                actions = np.asarray(act(rows), dtype=np.float32)
                if actions_all is None:
                    actions_all = np.empty((len(ids_all), actions.shape[1]), dtype=np.float32)
                actions_all[rows] = actions
            splits = np.split(actions_all, np.cumsum(counts)[:-1])
            replies = self._command([("step", part) for part in splits])
            rounds += 1
        if not done.all():  # cannot happen unless a process lost episodes
            raise RuntimeError(f"{int((~done).sum())} of {n} episodes never ended")
        return EpisodeOutcomes(success, returns, length, rounds)

