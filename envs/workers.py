"""MetaWorld tasks stepped in worker processes, behind the ``MultiTaskEnv`` interface.

``ParallelMultiTaskEnv(benchmark, seed, workers=N)`` deals the K tasks into N shards balanced by
each task's step cost (``assign_tasks``: longest-processing-time first, with the relative costs of
``envs/task_costs.py``). Tasks differ about 3.5x in cost (coffee, stick, push and pick-place, with a
free object on the table, against buttons and faucets), so shards of equal size are not equally
fast: from the measured costs, MT10 over 4 shards has a compute-bound speed-up of 3.87 balanced
against 3.12 round-robin, MT50 over 16 shards 15.4 against 12.0 (2 shards: 2.00 against 1.89 for
MT10). A lock-step waits for the slowest shard. Worker ``w`` runs an ``mtrl.envs.metaworld.MultiTaskEnv``
over its tasks. Every task is seeded by its benchmark index, so the same seeds give bit-identical
observations, rewards and episode bookkeeping as the in-process env whatever the shards, and a
``state_dict`` of either loads into the other.

Populations of seeds (``mtrl.envs.population.PopulationEnv``, docs/design.md §9) use the same
protocol: ``ShardedEnv`` steps S members x K tasks as S * K rows (row ``s * K + k``: task ``k`` of
member ``s``) dealt into the shards by the same balancing (each row costs its task's cost), and a
shard runs one ``MultiTaskEnv`` per member with rows there (``_Shard``). ``ParallelMultiTaskEnv``
is its one-member case (rows are task indices).

With ``local_shard=True`` (what the trainer uses) the calling process steps the lightest shard
itself while N - 1 worker processes step the others: the process that would otherwise
sleep until the workers answer does a worker's share, one process and one round trip fewer per
step. Measured side by side on the 2-core VM of docs/benchmarks.md (short paired blocks): MT10
1.05x -> 1.18x and MT50 1.44x -> 1.56x over the in-process env with 2 shards.

How it talks (the pattern of gymnasium's ``AsyncVectorEnv``, written for this interface):

* **one pipe per worker, a small command set**: ``step``, ``reset``, ``state``, ``load``,
  ``close``; every command is answered with ``("ok", payload)`` or ``("error", traceback)``.
* **arrays in shared memory**: actions and every ``StepResult`` field live in shared arrays
  (``multiprocessing.RawArray``, passed to the workers when they start); a worker reads its rows
  of the actions and writes its rows of the results, and the pipe carries only the few-byte
  command and reply. Pickling the results instead would cost the parent one serialisation per
  worker per step, serially, which is the part that does not shrink as workers are added (16
  workers x ~40 us against a ~1 ms step on MT50). These arrays are anonymous memory that
  disappears with the processes, so a SIGKILL leaves nothing behind in /dev/shm.
* **start method ``spawn``**: workers are fresh interpreters that import this module and
  ``mtrl.envs.metaworld``, neither of which imports torch (about 1.5 s and 90 MB per worker instead
  of 4.5 s and 280 MB). ``fork`` would copy a parent holding torch's thread pools and possibly
  CUDA, which is unsafe; ``forkserver`` starts faster but its server dies of a SIGTERM sent to the
  process group (SLURM, ``kill -TERM -PGID``), after which the parent can no longer tell whether
  its workers are alive.
* **signals**: workers ignore SIGINT and SIGTERM. A Ctrl-C or a scheduler's SIGTERM reaches the
  whole process group, and the trainer (which catches them) must still fetch the environment
  state for its last checkpoint; the parent ends the workers on ``close``, at exit, or when it
  dies (a worker exits when its pipe closes).
* **spin, then block** (``spin_ms``): a process that waits on a pipe first polls it for up to
  ``spin_ms``, and only then sleeps in the kernel. On a VM an idle vCPU halts, and waking it for
  a message costs the host a reschedule: on the 2-core VM of docs/benchmarks.md a blocking
  round trip after 1 ms of quiet took 0.05 to 1.8 ms (median to 90th percentile) when the host
  was busy, against ~1 us polling, out of a ~5 ms MT10 half-step. Both sides spin: a worker
  after it answered (the next ``step`` often follows within a millisecond: warm-up, policy
  forward passes, evaluation) and the parent after its local shard (its workers' answers follow
  within the imbalance of the shards). The budget adapts like Linux's guest halt-polling: a
  wait longer than ``spin_ms`` halves the budget (then to zero), a wait that ``spin_ms`` would
  have covered restores it, so a trainer whose updates keep the workers waiting for tens of
  milliseconds costs them no spinning. With more stepping processes than usable cores spinning
  would take a core from a worker, so the env then blocks only.
* **launch and gather** (``step_async`` / ``step_wait``, the trainer's ``env.overlap``):
  ``step_async`` writes the actions and sends ``step`` to the workers and returns; the workers
  step while the caller does something else (the update); ``step_wait`` steps the local shard,
  then gathers the answers. ``step`` is the two in a row. Until the gather every other request
  raises ``StepInFlightError``: the next command would otherwise be answered with the answer to
  ``step``, and the shared action rows are the workers' until then. A worker answers ``step``
  with the seconds it spent stepping, so ``last_step_s`` says how long the slowest shard
  stepped, whatever the caller did meanwhile.
* **errors, never a hang**: the parent waits on the pipes and the process sentinels with a
  timeout. A worker that raises, dies (e.g. SIGKILL) or does not answer in time raises
  ``EnvWorkerError`` naming the worker and its tasks; the other workers are shut down and the
  env refuses further use.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import select
import signal
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from mtrl.envs.metaworld import (
    AsyncStepping, MultiTaskEnv, StepInFlightError, StepResult, _check_episode_steps, benchmark_task_names, from_tensors,
    heldout_goal_sets, join_tasks, select_tasks, task_goal_sets, to_tensors,
)
from mtrl.envs.episodes import metaworld_slots
from mtrl.envs.task_costs import balance, step_cost

__all__ = ["EnvWorkerError", "ParallelMultiTaskEnv", "ShardedEnv", "assign_tasks"]

START_METHODS = ("spawn", "forkserver", "fork")
_SPUN = ("step", "episodes")  # the hot commands, whose answers the parent spins for (module docstring)
_RESULT_FIELDS = (
    "obs", "next_obs", "reward", "terminated", "truncated", "success", "episode_done", "episode_success", "episode_return", "unstable",
)


class EnvWorkerError(RuntimeError):
    """An env worker process raised, died or stopped answering."""


def assign_tasks(task_names: list[str], workers: int) -> list[list[int]]:
    """The task indices of each shard, balanced by step cost, at most one shard per task.

    Longest-processing-time first: the costliest task goes to the shard with the least work so
    far (ties: the lower shard). Shards come lightest first (the local shard's, module docstring)
    with their tasks in benchmark order; a task missing from ``envs/task_costs.py`` counts as the
    median task."""
    return balance([step_cost(name) for name in task_names], min(workers, len(task_names)))


def _layout(K: int, obs_dim: int, action_dim: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Shared arrays: name -> (numpy dtype, shape); row k belongs to task k."""
    flags = {name: ("bool", (K,)) for name in ("terminated", "truncated", "success", "episode_done", "episode_success", "unstable")}
    return {
        "actions": ("float32", (K, action_dim)),
        "obs": ("float32", (K, obs_dim)),
        "next_obs": ("float32", (K, obs_dim)),
        "reward": ("float32", (K,)),
        "episode_return": ("float64", (K,)),
        **flags,
    }


def _views(buffers: dict[str, Any], layout: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(buffers[name], dtype=dtype).reshape(shape) for name, (dtype, shape) in layout.items()}


class _Spin:
    """Spin-then-block waiting with an adaptive budget (module docstring).

    ``wait()`` polls the file descriptors ``fds`` (registered once, here) without blocking for
    up to the current budget and returns those that became readable (a closed peer counts: the
    reader then sees EOF); ``learn(seconds)`` adapts the budget to the length of the whole wait,
    spin and block."""

    def __init__(self, limit_s: float, fds: list[int]) -> None:
        self.limit_s = self.budget_s = limit_s
        self._count = len(fds)
        self._poller = select.poll()
        for fd in fds:
            self._poller.register(fd, select.POLLIN)

    def wait(self) -> set[int]:
        if self.budget_s <= 0 or not self._count:
            return set()
        deadline = time.perf_counter() + self.budget_s
        ready: set[int] = set()
        while True:
            ready.update(fd for fd, _ in self._poller.poll(0))
            if len(ready) == self._count or time.perf_counter() >= deadline:
                return ready

    def learn(self, waited_s: float) -> None:
        if waited_s <= self.budget_s:
            return
        if waited_s <= self.limit_s:  # a full budget would have caught it
            self.budget_s = self.limit_s
        else:  # spinning would have been wasted: halve, and stop below an eighth
            self.budget_s = self.budget_s / 2 if self.budget_s > self.limit_s / 8 else 0.0


def _spin_limit(spin_ms: float, stepping_processes: int) -> float:
    """The spin budget in seconds: ``spin_ms``, or 0 with more stepping processes than cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return spin_ms / 1000 if stepping_processes <= cores else 0.0


class _Shard:
    """The envs of one shard, in a worker process or (the local shard) in the calling one.

    A shard holds rows of the shared arrays; row ``s * K + k`` is task ``k`` of member ``s`` (a
    ``ParallelMultiTaskEnv`` has one member, so its rows are its task indices). Each member with
    rows here has one ``MultiTaskEnv`` over its tasks of this shard (a *part*: ``member``, ``rows``
    and the env's keyword arguments ``env``); every task is seeded by its member's seed and its
    benchmark index, so a part steps exactly like those rows of the member's whole env."""

    def __init__(self, parts: list[dict], goal_sets: list[list]) -> None:
        self.members = [int(part["member"]) for part in parts]
        self.rows = [np.asarray(part["rows"], dtype=np.int64) for part in parts]
        self.envs: list[MultiTaskEnv] = []
        for part, goals in zip(parts, goal_sets):
            self.envs.append(MultiTaskEnv(**part["env"], goal_sets=goals))

    def step(self, views: dict[str, np.ndarray]) -> None:
        for env, rows in zip(self.envs, self.rows):
            result = env.step(views["actions"][rows])
            for name in _RESULT_FIELDS:
                views[name][rows] = getattr(result, name)

    def reset(self, views: dict[str, np.ndarray]) -> None:
        for env, rows in zip(self.envs, self.rows):
            views["obs"][rows] = env.reset()

    def state(self, member: int) -> list[dict]:
        """``numpy_state`` of each of ``member``'s parts here, in part order."""
        return [env.numpy_state() for env, s in zip(self.envs, self.members) if s == member]

    def load(self, views: dict[str, np.ndarray], payload: tuple[int, list[dict]]) -> None:
        """Load ``states`` (one per part of ``member`` here, in part order)."""
        member, states = payload
        mine = [(env, rows) for env, rows, s in zip(self.envs, self.rows, self.members) if s == member]
        if len(mine) != len(states):
            raise ValueError(f"{len(states)} states for the {len(mine)} parts of member {member} in this shard")
        for (env, rows), state in zip(mine, states):
            views["obs"][rows] = env.load_numpy_state(state)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn, parts: list[dict], goal_sets, buffers: dict, layout: dict, spin_s: float = 0.0) -> None:
    """A worker process: build its shard, then answer commands until ``close`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (module docstring)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    views = _views(buffers, layout)
    try:
        shard = _Shard(parts, pickle.loads(np.frombuffer(goal_sets, dtype=np.uint8).tobytes()))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    spin = _Spin(spin_s, [conn.fileno()])
    episodes = None  # the episode engine's instances here (mtrl.envs.episodes), made on first use
    while True:
        started = time.perf_counter()
        spin.wait()
        try:
            command, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        spin.learn(time.perf_counter() - started)
        begun = time.perf_counter()
        if command == "close":
            break
        try:
            reply = None
            if command == "step":
                shard.step(views)
                reply = time.perf_counter() - begun  # this shard's stepping time (``last_step_s``)
            elif command == "reset":
                shard.reset(views)
            elif command == "state":
                reply = shard.state(payload)
            elif command == "load":
                shard.load(views, payload)
            elif command == "episodes":
                if episodes is None:  # the shard's instances serve as the first slots (an evaluation env has one member)
                    episodes = metaworld_slots(shard.envs[0])
                reply = episodes.handle(payload)
            else:
                raise ValueError(f"unknown env worker command {command!r}")
            answer = ("ok", reply)
        except Exception:
            answer = ("error", traceback.format_exc())
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):  # the parent is gone or gave up on this worker
            break
    if episodes is not None:
        episodes.close()
    shard.close()


def _shutdown(processes: list, conns: list) -> None:
    """Ask every worker to close, then kill (SIGKILL: they ignore SIGTERM) those still running."""
    for conn in conns:
        try:
            conn.send(("close", None))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 5.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(5.0)
    for conn in conns:
        conn.close()




class ShardedEnv(AsyncStepping):
    """The worker protocol of this module for S members (seeds) x K tasks: the rows (member,
    task) dealt into ``workers`` shards balanced by step cost, each stepped by a worker process or,
    the lightest with ``local_shard``, by this one. ``ParallelMultiTaskEnv`` is its one-member case
    and ``mtrl.envs.population.PopulationEnv`` the population; subclasses give the public shapes.

    Args:
        benchmark, max_episode_steps, terminate_on_success, heldout_goals: as ``MultiTaskEnv``.
        seeds: every member's seed (row ``s * K + k`` is task ``k`` of member ``s``).
        goal_seeds: every member's goal seed (None: its seed); each member's goal sets are
            sampled once here and sent to the workers.
        workers, local_shard, start_method, timeout_s, spin_ms: as ``ParallelMultiTaskEnv``.
        lead: leading shape of the arrays the public methods take and return, ``(K,)`` or ``(S, K)``.
    """

    def __init__(
        self, benchmark: str, seeds: Sequence[int], goal_seeds: Sequence[int], *, workers: int, max_episode_steps: int,
        terminate_on_success: bool, local_shard: bool, start_method: str, timeout_s: float, spin_ms: float,
        heldout_goals: bool, lead: tuple[int, ...],
    ) -> None:
        names = benchmark_task_names(benchmark)
        _check_episode_steps(max_episode_steps)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if not isinstance(local_shard, bool):
            raise ValueError(f"local_shard must be a bool, got {local_shard!r}")
        if isinstance(spin_ms, bool) or not isinstance(spin_ms, (int, float)) or not 0 <= spin_ms < float("inf"):
            raise ValueError(f"spin_ms must be a number >= 0, got {spin_ms!r}")
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}; got {start_method!r}")
        self.benchmark = benchmark
        self.task_names = names
        self.num_tasks = K = len(names)
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.heldout_goals = bool(heldout_goals)
        self._seeds = [int(seed) for seed in seeds]
        self._goal_seeds = [int(seed) for seed in goal_seeds]
        self._lead = lead
        S = len(self._seeds)
        sets = heldout_goal_sets if self.heldout_goals else task_goal_sets
        by_goal_seed: dict[int, list] = {}
        for goal_seed in self._goal_seeds:  # sampled once per goal seed here, sent to the workers
            if goal_seed not in by_goal_seed:
                by_goal_seed[goal_seed] = sets(benchmark, goal_seed)
        self._goal_sets = [by_goal_seed[goal_seed] for goal_seed in self._goal_seeds]
        self.timeout_s = timeout_s
        probe = ALL_V3_ENVIRONMENTS[names[0]]()  # the spaces, to size the shared arrays before the workers start
        self.action_low = np.asarray(probe.action_space.low, dtype=np.float32)
        self.action_high = np.asarray(probe.action_space.high, dtype=np.float32)
        self.action_dim = int(probe.action_space.shape[0])
        self.obs_dim = int(probe.observation_space.shape[0])
        probe.close()

        # each row costs its task's step: the lightest shard first (the local one, with local_shard)
        self._shards = assign_tasks([names[r % K] for r in range(S * K)], workers)
        self.workers = len(self._shards)
        self._parts = [self._shard_parts(rows, max_episode_steps, terminate_on_success) for rows in self._shards]
        self._local_tasks = self._shards[0] if local_shard else []  # rows (task indices with one member)
        self._tasks = self._shards[1:] if local_shard else self._shards  # one per worker process
        worker_parts = self._parts[1:] if local_shard else self._parts
        self._local: _Shard | None = None
        # every shard's process steps at once, and without a local shard this one waits beside them
        self.spin_s = _spin_limit(spin_ms, self.workers + (0 if local_shard else 1))
        context = multiprocessing.get_context(start_method)
        layout = _layout(S * K, self.obs_dim, self.action_dim)
        buffers = {name: context.RawArray("B", int(np.prod(shape)) * np.dtype(dtype).itemsize) for name, (dtype, shape) in layout.items()}
        self._views = _views(buffers, layout)
        self._processes: list = []
        self._conns: list = []
        self._error: str | None = None
        self.last_step_s = 0.0  # the slowest shard's own stepping time in the latest step (module docstring)
        # runs on close(), on garbage collection and at interpreter exit, before multiprocessing's
        # own exit handler (which would SIGTERM the workers, which they ignore, and join forever)
        self._finalizer = multiprocessing.util.Finalize(self, _shutdown, args=(self._processes, self._conns), exitpriority=10)
        for w, parts in enumerate(worker_parts):
            # The goal variations (about 16 KB per task) travel in shared memory, not as arguments:
            # spawn writes the arguments into a pipe whose reading end the parent keeps open, so an
            # argument larger than the pipe buffer hangs Process.start() for good if the child dies
            # before reading it (for example in an unguarded main module).
            blob = pickle.dumps(self._part_goal_sets(parts))
            goal_sets = context.RawArray("B", len(blob))
            np.frombuffer(goal_sets, dtype=np.uint8)[:] = np.frombuffer(blob, dtype=np.uint8)
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker, args=(child_end, parts, goal_sets, buffers, layout, self.spin_s),
                name=f"mtrl-env-worker-{w}", daemon=True,
            )
            process.start()
            child_end.close()
            self._processes.append(process)
            self._conns.append(parent_end)
        self._spin = _Spin(self.spin_s, [conn.fileno() for conn in self._conns])
        if local_shard:  # built while the workers start
            self._local = _Shard(self._parts[0], self._part_goal_sets(self._parts[0]))
        self._gather("start")

    def _shard_parts(self, rows: list[int], max_episode_steps: int, terminate_on_success: bool) -> list[dict]:
        """A shard's parts (``_Shard``): one per member with rows in it, in member order."""
        K = self.num_tasks
        parts = []
        for s in sorted({r // K for r in rows}):
            mine = [r for r in rows if r // K == s]
            env = dict(
                benchmark=self.benchmark, seed=self._seeds[s], max_episode_steps=max_episode_steps,
                terminate_on_success=terminate_on_success, goal_seed=self._goal_seeds[s], tasks=[r - s * K for r in mine],
                heldout_goals=self.heldout_goals,
            )
            parts.append({"member": s, "rows": mine, "env": env})
        return parts

    def _part_goal_sets(self, parts: list[dict]) -> list[list]:
        return [[self._goal_sets[part["member"]][k] for k in part["env"]["tasks"]] for part in parts]

    # ---- talking to the workers -----------------------------------------------------------
    def _describe_rows(self, rows: list[int]) -> str:
        """Rows in words, for error messages: ``tasks reach-v3, push-v3`` (one member)."""
        return "tasks " + ", ".join(self.task_names[r % self.num_tasks] for r in rows)

    def _describe(self, w: int) -> str:
        return f"env worker {w} (pid {self._processes[w].pid}, {self._describe_rows(self._tasks[w])})"

    def _fail(self, message: str) -> None:
        self._error = message
        self._finalizer()
        raise EnvWorkerError(message)

    def _request(self, command: str, payloads: list | None = None, local: Callable[[], Any] | None = None) -> list:
        """Send ``command`` to every worker, run ``local`` (the local shard's part) meanwhile,
        then gather the answers; returns the workers' payloads and, last, ``local()``'s result."""
        self._send(command, payloads)
        return self._finish(command, local)

    def _send(self, command: str, payloads: list | None = None) -> None:
        """Send ``command`` (with ``payloads[w]`` to worker ``w``) to every worker; ``_finish``
        reads the answers."""
        self._idle(command)
        if self._error is not None:
            raise EnvWorkerError(f"the env workers were shut down after an earlier error: {self._error.splitlines()[0]}")
        if not self._finalizer.still_active():
            raise EnvWorkerError("the environment is closed")
        try:
            for w, conn in enumerate(self._conns):
                try:
                    conn.send((command, None if payloads is None else payloads[w]))
                except (BrokenPipeError, OSError):
                    pass  # a dead worker: _gather reports it
        except (KeyboardInterrupt, SystemExit):  # some workers have it, some not: their answers would be out of step
            self._error = f"interrupted while sending {command!r} to the env workers"
            self._finalizer()
            raise

    def _finish(self, command: str, local: Callable[[], Any] | None = None) -> list:
        """Run ``local`` while the workers work on ``command``, then gather their answers:
        the workers' payloads and, last, ``local()``'s result."""
        try:
            try:
                mine = None if local is None else local()
            except Exception as error:  # the workers' answers would answer the next command
                self._error = f"the local shard ({self._describe_rows(self._local_tasks)}) raised during {command!r}: {error!r}"
                self._finalizer()
                raise
            return [*self._gather(command), mine]
        except (KeyboardInterrupt, SystemExit):  # answers still on their way would answer the next command
            self._error = f"interrupted while the env workers ran {command!r}"
            self._finalizer()
            raise

    def _gather(self, command: str) -> list:
        """Every worker's answer to ``command``, waiting on pipes and process sentinels."""
        replies: list = [None] * len(self._conns)
        pending = set(range(len(self._conns)))
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        failures = []
        # the hot path: answers usually follow within the shards' imbalance
        all_spun = command in _SPUN and len(self._spin.wait()) == len(self._conns)
        while pending:
            if all_spun:  # every answer is in: no need to ask the kernel
                ready, all_spun = self._conns, False
            else:
                waitables = [self._conns[w] for w in pending] + [self._processes[w].sentinel for w in pending]
                ready = multiprocessing.connection.wait(waitables, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = ", ".join(self._describe(w) for w in sorted(pending))
                self._fail(f"{late} did not answer {command!r} within {self.timeout_s:.0f} s")
            for w in sorted(pending):
                conn, process = self._conns[w], self._processes[w]
                if conn in ready or (process.sentinel in ready and conn.poll()):
                    try:
                        status, payload = conn.recv()
                    except (EOFError, OSError):
                        status, payload = "died", None
                elif process.sentinel in ready:
                    status, payload = "died", None
                else:
                    continue
                pending.discard(w)
                if status == "ok":
                    replies[w] = payload
                elif status == "error":
                    failures.append(f"{self._describe(w)} raised during {command!r}:\n{payload}")
                else:
                    process.join(1.0)
                    code = process.exitcode
                    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                    hint = ""
                    if command == "start":
                        hint = (" (its own traceback is above; a script that starts training at import time must do so "
                                "under `if __name__ == '__main__':`, since workers import the main module)")
                    failures.append(f"{self._describe(w)} died ({how}) during {command!r}{hint}")
        if command in _SPUN:
            self._spin.learn(time.perf_counter() - started)
        if failures:
            self._fail("\n".join(failures))
        return replies

    # ---- every shard at once --------------------------------------------------------------
    def _on_local(self, work: Callable[[_Shard], Any]) -> Callable[[], Any] | None:
        """``work`` on the local shard, or None without one."""
        return None if self._local is None else (lambda: work(self._local))

    def _shaped(self, array: np.ndarray) -> np.ndarray:
        """A copy of a shared array with the public leading shape (``lead``)."""
        return array.reshape(*self._lead, *array.shape[1:]).copy()

    def _checked_actions(self, actions: np.ndarray) -> np.ndarray:
        actions = np.array(actions, dtype=np.float32)  # a copy: the caller may reuse its array before step_wait
        if actions.shape != (*self._lead, self.action_dim):
            raise ValueError(f"actions must have shape {(*self._lead, self.action_dim)}, got {actions.shape}")
        return actions

    def reset(self) -> np.ndarray:
        """Start a new episode on every row; returns the observations [*lead, obs_dim] float32."""
        self._request("reset", local=self._on_local(lambda shard: shard.reset(self._views)))
        return self._shaped(self._views["obs"])

    def step(self, actions: np.ndarray):
        self._idle("step")
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Launch a step: the worker processes start on their rows and this returns at once
        (module docstring); ``step_wait`` steps the local shard and returns the result."""
        self._idle("step_async")  # in flight, the action rows are the workers'
        actions = self._checked_actions(actions)  # [*lead, A]
        self._views["actions"][:] = actions.reshape(-1, self.action_dim)
        self._send("step")
        self._pending_actions = actions

    def step_wait(self):
        """The local shard's step (if any), then the workers' answers: the result."""
        if self._pending_actions is None:
            raise StepInFlightError(f"{type(self).__name__}.step_wait: no step in flight; call step_async(actions) first")
        self._pending_actions = None
        local_s = 0.0

        def step_local(shard: _Shard) -> None:  # as a worker does (_worker)
            nonlocal local_s
            begun = time.perf_counter()
            shard.step(self._views)
            local_s = time.perf_counter() - begun

        *worker_s, _ = self._finish("step", local=self._on_local(step_local))
        self.last_step_s = max([local_s, *worker_s])
        return self._result({name: self._shaped(self._views[name]) for name in _RESULT_FIELDS})

    def _result(self, fields: dict[str, np.ndarray]):
        """The public step result from the ``StepResult`` fields with the leading shape ``lead``."""
        raise NotImplementedError

    # ---- one member's state ---------------------------------------------------------------
    def _check_member(self, s: Any) -> int:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < len(self._seeds):
            raise ValueError(f"member must be an int in [0, {len(self._seeds)}), got {s!r}")
        return int(s)

    def _member_state(self, s: int) -> dict:
        """Member ``s``'s state in numpy, its shards' parts joined in task order: exactly
        ``MultiTaskEnv(benchmark, seeds[s], ...).numpy_state()``."""
        s = self._check_member(s)
        *replies, mine = self._request("state", [s] * len(self._conns), local=self._on_local(lambda shard: shard.state(s)))
        local_parts = self._parts[0] if self._local is not None else []
        shard_parts = [local_parts, *(self._parts[1:] if self._local is not None else self._parts)]
        states, tasks = [], []
        for parts, answer in zip(shard_parts, [mine or [], *replies]):
            ours = [part for part in parts if part["member"] == s]
            states.extend(answer)
            tasks.extend(part["env"]["tasks"] for part in ours)
        return join_tasks(states, tasks, self.num_tasks)

    def _load_member(self, s: int, state: dict) -> np.ndarray:
        """Restore member ``s`` from a numpy state of a single run's env (or of a member);
        returns its observations [K, obs_dim]."""
        s = self._check_member(s)
        K = len(state["task_rng"])
        if K != self.num_tasks:
            raise ValueError(f"environment state is for {K} tasks, this env has {self.num_tasks}")

        def payload(parts: list[dict]) -> tuple[int, list[dict]]:
            return s, [select_tasks(state, part["env"]["tasks"]) for part in parts if part["member"] == s]

        worker_parts = self._parts[1:] if self._local is not None else self._parts
        local = self._on_local(lambda shard: shard.load(self._views, payload(self._parts[0])))
        self._request("load", [payload(parts) for parts in worker_parts], local=local)
        return self._views["obs"][s * K:(s + 1) * K].copy()

    def close(self) -> None:
        self._finalizer()
        if self._local is not None:
            self._local.close()

    def episodes(self, payloads: list, local: Callable[[], Any] | None = None) -> list:
        """One command of the episode engine (``mtrl.envs.episodes.EpisodeRunner``): ``payloads[w]``
        to worker process ``w``, whose instances of any task play the episodes it is given;
        ``local`` (the local shard's part) runs meanwhile. Returns the workers' replies and, last,
        ``local()``'s result."""
        return self._request("episodes", payloads, local=local)

    @property
    def local_shard(self) -> MultiTaskEnv | None:
        """The env of the shard this process steps (``local_shard=True``; its first member's, the
        only one of a ``ParallelMultiTaskEnv``), else None."""
        return None if self._local is None else self._local.envs[0]

    @property
    def pids(self) -> list[int]:
        """Process ids of the worker processes (tests kill them; not the local shard's)."""
        return [process.pid for process in self._processes]


class ParallelMultiTaskEnv(ShardedEnv):
    """The tasks of a MetaWorld benchmark in ``workers`` processes (see the module docstring).

    Args:
        benchmark, seed, max_episode_steps, terminate_on_success, goal_seed, heldout_goals: as ``MultiTaskEnv``.
        workers: number of shards the tasks are dealt into, at most one per task (more are not
            made); each shard runs in its own worker process, except the first with ``local_shard``.
        local_shard: step the lightest shard in this process (``workers - 1`` worker processes).
        start_method: ``spawn`` (default), ``forkserver`` or ``fork`` (module docstring).
        timeout_s: longest wait for one answer (startup included) before a worker counts as hung.
        spin_ms: longest a process polls a pipe before it blocks (module docstring; 0: block at
            once); off when the stepping processes outnumber the usable cores.
    """

    def __init__(
        self, benchmark: str, seed: int, *, workers: int, max_episode_steps: int = 500,
        terminate_on_success: bool = False, goal_seed: int | None = None, local_shard: bool = False,
        start_method: str = "spawn", timeout_s: float = 600.0, spin_ms: float = 5.0, heldout_goals: bool = False,
    ) -> None:
        self.goal_seed = seed if goal_seed is None else goal_seed
        super().__init__(
            benchmark, [seed], [self.goal_seed], workers=workers, max_episode_steps=max_episode_steps,
            terminate_on_success=terminate_on_success, local_shard=local_shard, start_method=start_method,
            timeout_s=timeout_s, spin_ms=spin_ms, heldout_goals=heldout_goals, lead=(len(benchmark_task_names(benchmark)),),
        )
        self.goal_sets = self._goal_sets[0]

    def _result(self, fields: dict[str, np.ndarray]) -> StepResult:
        return StepResult(**fields)

    def state_dict(self) -> dict:
        """The shards' states joined in task order: the same format as ``MultiTaskEnv.state_dict``."""
        return to_tensors(self._member_state(0))

    def load_state_dict(self, state: dict) -> np.ndarray:
        """Restore a state of this env, of another worker count or of an in-process env."""
        return self._load_member(0, from_tensors(state))
