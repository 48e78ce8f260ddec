"""Evaluations off the training loop's critical path (``train.eval_async: true``, docs/evaluation.md).

``EvaluationProcess`` owns one spawned process that builds the runner the trainer would build
(``train.eval_mode: parallel``: a single run's ``EpisodeRunner`` on its evaluation env, a
population's ``mtrl.train.make_population_runner``: all members' episodes in one lock-step) and an
``MTSAC`` per member. The trainer ``submit``s (step, the actor weights of each member) and goes on
training; the process loads the weights and plays ``mtrl.evaluate.evaluate_episodes`` /
``evaluate_population`` of that step, exactly the evaluation the trainer would have played in
process, since every episode is a pure function of (run seed, step, task, episode) and the
process runs torch on the trainer's thread count (``torch.get_num_threads()`` at start) and device.
``poll`` hands back finished evaluations in submission order without blocking, ``wait`` blocks for
all of them.

A pending evaluation is a pure function of its step and the weights sent, both kept here
(``pending``) until its result is collected, so a checkpoint can hold it and a resume submit it again.

A process that dies (a signal, an exit, an exception) is an ``EvaluatorError`` naming the process
(its pid) and the cause: the signal's name, the exit code, or the child's traceback. Nothing here
blocks without a timeout: every wait checks that the process is alive.

The process ignores the stop signals (SIGINT, SIGTERM, SIGUSR2: a terminal's Ctrl-C and SLURM's
time-limit signal reach every process of a job): the trainer stops, checkpoints and closes it. It
exits by itself when the trainer's end of its request pipe closes (the trainer died).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["EvaluationProcess", "EvaluatorError", "PendingEvaluation"]

#: Test hook: seconds the evaluation process sleeps before each evaluation (tests slow it down
#: to hold an evaluation pending across a checkpoint). Read when a process is started.
TEST_DELAY_S = 0.0

_POLL_S = 0.05  # how often a blocking wait checks that the process lives


class EvaluatorError(RuntimeError):
    """The evaluation process died or failed; the message names it (pid) and the cause."""


@dataclass
class PendingEvaluation:
    """An evaluation submitted and not collected yet: its step, the members it evaluates (indices
    into the process's configs) and each one's actor weights (CPU tensors), in that order."""

    step: int
    members: list[int]
    actors: list[dict[str, torch.Tensor]]


def actor_state(agent: Any) -> dict[str, torch.Tensor]:
    """The weights an evaluation of ``agent`` (an ``MTSAC``) needs: its actor's, copied to the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in agent.actor.state_dict().items()}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class EvaluationProcess:
    """One evaluation process for the members ``configs`` (a single run: one config; a population:
    one per member, as ``mtrl.train.make_population_runner`` takes them).

    Args:
        configs: the members' configs (``mtrl.config.Config``; ``train.eval_mode: parallel``).
        device: the device the trainer's policies act on ("cpu", "cuda:0", ...).
        threads: torch threads of the process (default: this process's ``torch.get_num_threads()``).
    """

    def __init__(self, configs: Sequence[Any], device: str | torch.device = "cpu", threads: int | None = None) -> None:
        from mtrl.config import config_to_dict

        self.threads = torch.get_num_threads() if threads is None else int(threads)
        spec = {
            "configs": [config_to_dict(c) for c in configs], "device": str(device), "threads": self.threads,
            "delay_s": float(TEST_DELAY_S),
        }
        context = multiprocessing.get_context("spawn")
        request_read, self._requests = context.Pipe(duplex=False)
        self._results, result_write = context.Pipe(duplex=False)
        # not a daemon: it starts env worker processes of its own (env.workers > 1)
        self._process = context.Process(
            target=_main, args=(request_read, result_write, spec), name="mtrl-evaluator", daemon=False,
        )
        self._process.start()
        request_read.close()
        result_write.close()
        self.pid = int(self._process.pid)
        self._pending: list[PendingEvaluation] = []
        self._error: str | None = None
        self._finalizer = multiprocessing.util.Finalize(
            self, _shutdown, args=(self._process, self._requests, self._results), exitpriority=10,
        )

    @property
    def name(self) -> str:
        return f"evaluation process {self._process.name} (pid {self.pid})"

    def pending(self) -> list[PendingEvaluation]:
        """The evaluations submitted and not collected yet, oldest first."""
        return list(self._pending)

    def pending_steps(self) -> list[int]:
        return [p.step for p in self._pending]

    def submit(self, step: int, actors: Sequence[dict[str, torch.Tensor]], members: Sequence[int] | None = None) -> None:
        """Evaluate ``step`` with ``actors[i]`` the actor weights of member ``members[i]`` (default
        all members, in order). Returns once the request is handed over; the evaluation is pending
        (kept in ``pending``) even when this raises ``EvaluatorError``."""
        members = list(range(len(actors))) if members is None else [int(m) for m in members]
        if len(members) != len(actors):
            raise ValueError(f"{len(actors)} actor states for {len(members)} members")
        self._pending.append(PendingEvaluation(int(step), members, list(actors)))
        self._check()
        try:
            self._requests.send(("evaluate", int(step), members, list(actors)))
        except (OSError, ValueError) as err:  # BrokenPipeError: the process is gone
            self._fail(f"{type(err).__name__} while sending it the evaluation of step {step}")

    def poll(self) -> list[tuple[int, dict[int, Any]]]:
        """The evaluations finished since the last call, as (step, {member: its ``EvalResult``}),
        in submission order; never blocks."""
        done = []
        while self._pending:
            message = self._receive(0.0)
            if message is None:
                break
            done.append(message)
        self._check()
        return done

    def wait(self, timeout: float | None = None) -> list[tuple[int, dict[int, Any]]]:
        """Block until every pending evaluation finished (at most ``timeout`` seconds: then an
        ``EvaluatorError``); return them as ``poll`` does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = []
        while self._pending:
            message = self._receive(_POLL_S)
            if message is not None:
                done.append(message)
                continue
            self._check()
            if deadline is not None and time.monotonic() > deadline:
                raise EvaluatorError(f"{self.name}: evaluations of steps {self.pending_steps()} not finished after {timeout} s")
        return done

    def _receive(self, timeout: float) -> tuple[int, dict[int, Any]] | None:
        if self._error is not None:
            raise EvaluatorError(self._error)
        try:
            if not self._results.poll(timeout):
                return None
            kind, step, payload = self._results.recv()
        except (EOFError, OSError) as err:
            self._fail(f"its result pipe closed ({type(err).__name__})")
        if kind == "error":
            self._process.join(5.0)
            self._fail(f"it raised while {'starting' if step is None else f'evaluating step {step}'}:\n{payload}")
        expected = self._pending[0].step
        if step != expected:  # cannot happen with one process answering in order
            self._fail(f"it answered step {step} where step {expected} was due")
        done = self._pending.pop(0)
        return step, dict(zip(done.members, payload))

    def _check(self) -> None:
        """Raise ``EvaluatorError`` when the process is no longer running (after collecting what it
        sent before it ended: its own error report)."""
        if self._error is not None:
            raise EvaluatorError(self._error)
        if self._process.is_alive():
            return
        if self._results.poll(0):  # what it sent before it ended (a result, its error report, EOF): read first
            return
        self._process.join(1.0)
        self._fail(None)

    def _fail(self, cause: str | None) -> None:
        code = self._process.exitcode
        if code is None and not self._process.is_alive():
            self._process.join(1.0)
            code = self._process.exitcode
        if code is None:
            ended = "is still running"
        elif code < 0:
            ended = f"was killed by {_signal_name(-code)}"
        else:
            ended = f"exited with code {code}"
        what = f"{self.name} {ended}" + (f": {cause}" if cause else "")
        pending = self.pending_steps()
        self._error = what + (f" (evaluations of steps {pending} pending)" if pending else "")
        raise EvaluatorError(self._error)

    def close(self) -> None:
        """Ask the process to exit, then kill it if it does not within a few seconds; idempotent.
        Pending evaluations are dropped (``pending`` still lists them)."""
        self._finalizer()

    def __enter__(self) -> "EvaluationProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _shutdown(process: Any, requests: Any, results: Any) -> None:
    try:
        requests.send(("close", None, None, None))
    except (OSError, ValueError):
        pass
    try:
        requests.close()  # EOF for its reader even when the message did not get through
    except OSError:
        pass
    process.join(5.0)
    if process.is_alive():
        process.kill()
        process.join(5.0)
    try:
        results.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------
def _main(requests: Any, results: Any, spec: dict[str, Any]) -> None:
    for sig in ("SIGINT", "SIGTERM", "SIGUSR2"):  # the trainer stops, checkpoints and closes this process
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_IGN)
    step, evaluate = None, None
    try:
        torch.set_num_threads(spec["threads"])
        evaluate = _Evaluation(spec)
        inbox: queue.Queue = queue.Queue()

        def read() -> None:  # drains the pipe at once, so the trainer's send never waits for an evaluation
            while True:
                try:
                    message = requests.recv()
                except (EOFError, OSError):
                    message = ("close", None, None, None)
                inbox.put(message)
                if message[0] == "close":
                    return

        threading.Thread(target=read, name="requests", daemon=True).start()
        while True:
            kind, step, members, actors = inbox.get()
            if kind == "close":
                break
            if spec["delay_s"]:
                time.sleep(spec["delay_s"])
            outcome = evaluate(step, members, actors)
            results.send(("result", step, outcome))
            step = None
    except BaseException:  # noqa: BLE001 - reported to the trainer, which raises it
        try:
            results.send(("error", step, traceback.format_exc()))
        except (OSError, ValueError):
            pass
        raise SystemExit(1)
    finally:
        if evaluate is not None:
            evaluate.close()


class _Evaluation:
    """What the process holds: the members' configs, the runner the trainer would build, one
    ``MTSAC`` per member whose actor takes the weights sent."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from mtrl.agents.mtsac import MTSAC
        from mtrl.config import config_from_dict
        from mtrl.envs.episodes import EpisodeRunner
        from mtrl.train import eval_goal_set, make_env, make_population_runner

        self.configs = [config_from_dict(c) for c in spec["configs"]]
        cfg = self.configs[0]
        if cfg.train.eval_mode != "parallel":
            raise ValueError(f"an evaluation process plays train.eval_mode: parallel evaluations; got {cfg.train.eval_mode!r}")
        self.population = len(self.configs) > 1
        if self.population:
            self.runner = make_population_runner(self.configs)
        else:  # as mtrl.train._train builds a single run's
            env = make_env(cfg, cfg.seed + 10_000, evaluation=True, **eval_goal_set(cfg))
            self.runner = EpisodeRunner(env, cfg.env.eval_envs)
        env = self.runner.env
        self.device = torch.device(spec["device"])
        with torch.random.fork_rng(devices=[]):
            self.agents = [MTSAC(env.obs_dim, env.action_dim, env.num_tasks, c.agent, device=self.device) for c in self.configs]

    def __call__(self, step: int, members: list[int], actors: list[dict[str, torch.Tensor]]) -> list[Any]:
        from mtrl.evaluate import evaluate_episodes, evaluate_population
        from mtrl.train import _deterministic_policy

        policies = []
        for m, weights in zip(members, actors):
            self.agents[m].actor.load_state_dict(weights)
            policies.append(_deterministic_policy(self.agents[m]))
        E = self.configs[0].train.eval_episodes
        if self.population:
            return evaluate_population(policies, self.runner, [c.seed for c in self.configs], step, E, only=members)
        return [evaluate_episodes(policies[0], self.runner, self.configs[0].seed, step, E)]

    def close(self) -> None:
        self.runner.env.close()
