"""How long one MetaWorld v3 step of each task takes, relative to the others: the weights
``mtrl.envs.workers.assign_tasks`` balances the worker shards with.

Milliseconds per ``env.step`` with uniform random actions (median over 300 steps of every task,
the tasks stepped in turn so that machine noise hits all of them alike; mean of two such runs,
which agreed to a correlation of 0.99), measured 2026-12-02 on the 2-core VM of
docs/benchmarks.md. Only the ratios matter: tasks with a free object on the table (coffee, stick,
push, pick-place, soccer, sweep) cost about three times as much as buttons, handles and faucets.
Regenerate with ``mtrl bench collect --task-costs --benchmark MT50`` (prints this table).
"""

STEP_MS = {
    "assembly-v3": 0.735,
    "basketball-v3": 0.578,
    "bin-picking-v3": 0.627,
    "box-close-v3": 0.658,
    "button-press-topdown-v3": 0.451,
    "button-press-topdown-wall-v3": 0.424,
    "button-press-v3": 0.422,
    "button-press-wall-v3": 0.427,
    "coffee-button-v3": 0.512,
    "coffee-pull-v3": 1.556,
    "coffee-push-v3": 1.456,
    "dial-turn-v3": 0.590,
    "disassemble-v3": 0.716,
    "door-close-v3": 0.788,
    "door-lock-v3": 0.526,
    "door-open-v3": 0.740,
    "door-unlock-v3": 0.490,
    "hand-insert-v3": 1.206,
    "drawer-close-v3": 0.621,
    "drawer-open-v3": 0.473,
    "faucet-open-v3": 0.471,
    "faucet-close-v3": 0.454,
    "hammer-v3": 0.743,
    "handle-press-side-v3": 0.453,
    "handle-press-v3": 0.435,
    "handle-pull-side-v3": 0.518,
    "handle-pull-v3": 0.505,
    "lever-pull-v3": 0.866,
    "pick-place-wall-v3": 1.420,
    "pick-out-of-hole-v3": 0.674,
    "pick-place-v3": 1.327,
    "plate-slide-v3": 0.775,
    "plate-slide-side-v3": 0.684,
    "plate-slide-back-v3": 0.669,
    "plate-slide-back-side-v3": 0.666,
    "peg-insert-side-v3": 0.851,
    "peg-unplug-side-v3": 0.755,
    "soccer-v3": 1.354,
    "stick-push-v3": 1.476,
    "stick-pull-v3": 1.502,
    "push-v3": 1.320,
    "push-wall-v3": 1.340,
    "push-back-v3": 1.338,
    "reach-v3": 0.777,
    "reach-wall-v3": 0.694,
    "shelf-place-v3": 1.317,
    "sweep-into-v3": 1.409,
    "sweep-v3": 1.068,
    "window-open-v3": 0.551,
    "window-close-v3": 0.496,
}


_MEDIAN = sorted(STEP_MS.values())[len(STEP_MS) // 2]


def step_cost(task: str) -> float:
    """The relative step cost of ``task``; a task missing from the table counts as the median task."""
    return STEP_MS.get(task, _MEDIAN)


def balance(costs: list[float], bins: int) -> list[list[int]]:
    """Deal items of the given costs into ``bins`` groups, longest-processing-time first: the
    costliest item goes to the group with the least work so far (ties: the lower group). Groups
    come lightest first, their items in index order; with more groups than items some are empty."""
    groups: list[list[int]] = [[] for _ in range(bins)]
    loads = [0.0] * bins
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        w = min(range(bins), key=lambda w: (loads[w], w))
        groups[w].append(k)
        loads[w] += costs[k]
    order = sorted(range(bins), key=lambda w: (loads[w], w))
    return [sorted(groups[w]) for w in order]
