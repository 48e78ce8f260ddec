"""A population of S agents as one batched computation (agents/population.py, issue 22).

On a CPU with one thread: a member's numbers do not depend on which members run beside it (bit for
bit, the batched solvers included), a member's update is ``MTSAC.update``'s from the same state
(bit for bit where the host step loops; within 1e-6 relative for the methods with a batched
solver, whose coefficients are within 1e-12 of the single path's, and for CAGrad-Fast, whose rows
are grouped on the host), G [S, K, P] is each member's single-agent G, a member with a non-finite
loss skips alone, a member whose aggregator raises is reported failed and skips alone, a member's
state is a single run's checkpoint both ways, and an update reads nothing from the device but one
Gram transfer per G-based component.

Shapes: K x B and K x P (P: a component's shared parameters) are multiples of 4 here, as in the
MT10 configurations: MKL's results depend on the 16-byte alignment of a matmul's output, and
those products then start at the alignment the single agent's do (``mtrl.jacobian.GEMM_ALIGN``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.population import GRAM_SERVED, HOST_STEP, PopulationSAC, host_coefficients, member_metrics
from mtrl.aggregators import make
from mtrl.aggregators.nashmtl import NashMTL
from mtrl.aggregators.base import AggContext
from mtrl.aggregators.solvers import gram
from mtrl.benchmarks.profiling import count_step
from mtrl.config import AgentConfig
from mtrl.jacobian import member_gradients, per_task_jacobian
from mtrl.metrics import read_metrics
from mtrl.replay import Batch
from tests.helpers import random_batch

K, B, OBS, ACT = 4, 16, 6, 2
FIELDS = ("obs", "action", "reward", "next_obs", "done")
OPTIONS = {"cagrad_fast": {"num_sampled": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(**options) -> AgentConfig:
    return AgentConfig(hidden_dim=16, num_layers=2, **options)


def single(seed: int, cfg: AgentConfig) -> MTSAC:
    torch.manual_seed(seed)
    return MTSAC(OBS, ACT, K, cfg)


def batch(seed: int) -> Batch:
    return random_batch(K, B, OBS, ACT, seed)


def stack(batches: list[Batch]) -> Batch:
    return Batch(**{f: torch.stack([getattr(b, f) for b in batches]) for f in FIELDS})


class Run:
    """One member's own things: seed, aggregators, generators, and its batches by step."""

    def __init__(self, seed: int, method: str, **options) -> None:
        options = {**OPTIONS.get(method, {}), **options}
        self.seed = seed
        self.critic, self.actor = make(method, K, **options), make(method, K, **options)
        self.generator = torch.Generator().manual_seed(100 + seed)
        self.agg_generator = torch.Generator().manual_seed(200 + seed)

    def batch(self, step: int) -> Batch:
        return batch(1000 * self.seed + step)


def population_of(runs: list[Run], cfg: AgentConfig) -> PopulationSAC:
    return PopulationSAC.from_states([single(r.seed, cfg).training_state() for r in runs], OBS, ACT, K, cfg)


def population_update(
    population: PopulationSAC, runs: list[Run], step: int, batches: list[Batch] | None = None, diagnostics: bool = False
) -> dict:
    return population.update(
        stack(batches or [r.batch(step) for r in runs]), step, [r.critic for r in runs], [r.actor for r in runs],
        [r.generator for r in runs], aggregator_generators=[r.agg_generator for r in runs], diagnostics=diagnostics,
    )


def single_update(agent: MTSAC, run: Run, step: int, diagnostics: bool = False) -> dict:
    return agent.update(
        run.batch(step), step, run.critic, run.actor, generator=run.generator, aggregator_generator=run.agg_generator,
        diagnostics=diagnostics,
    )


def assert_states_equal(a: dict, b: dict, exact: bool = True) -> None:
    assert list(a["model"]) == list(b["model"])
    for key in a["model"]:
        if exact:
            assert torch.equal(a["model"][key], b["model"][key]), key
    for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
        assert a[name]["param_groups"] == b[name]["param_groups"], name
        assert sorted(a[name]["state"]) == sorted(b[name]["state"]), name
        for i, entry in a[name]["state"].items():
            for field, value in entry.items():
                other = b[name]["state"][i][field]
                assert value.dtype == other.dtype and value.device == other.device, (name, i, field)
                if exact:
                    assert torch.equal(value, other), (name, i, field)


def relative_change(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over every parameter of the model (targets and log-alphas included)."""
    num = sum(float((a["model"][k] - b["model"][k]).double().norm() ** 2) for k in a["model"])
    den = sum(float(a["model"][k].double().norm() ** 2) for k in a["model"])
    return (num / den) ** 0.5


#: the methods whose host step runs a batched solver for all members (mtrl/aggregators/batched.py)
BATCHED = [
    ("nashmtl", {}), ("fairgrad", {}), ("pivrg", {}), ("mgda", {}), ("imtlg", {}), ("cagrad", {}),
    ("cagrad", {"solver": "sgd"}),
]


# ---- member independence -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, options", [("ls", {}), ("cagrad_fast", {}), ("famo", {}), ("nashmtl", {"solver": "ccp"}), *BATCHED],
    ids=lambda v: str(v or ""),
)
def test_a_member_of_a_population_is_bit_for_bit_the_member_alone(method, options):
    """Also for the batched solvers: a member's iterations, convergence tests and LAPACK solves
    are its own, whatever other members are solved beside it; and for a solver that cannot be
    batched (Nash-MTL's cvxpy CCP), which the host step calls member by member."""
    cfg = config()
    seeds = [3, 5, 7]
    together = [Run(s, method, **options) for s in seeds]
    population = population_of(together, cfg)
    alone = {s: (run, population_of([run], cfg)) for s, run in ((s, Run(s, method, **options)) for s in seeds)}
    for step in range(4):
        metrics = read_metrics(population_update(population, together, step))
        for i, s in enumerate(seeds):
            run, solo = alone[s]
            own = read_metrics(population_update(solo, [run], step))
            mine = member_metrics(metrics, i)
            for key in ("critic/loss", "actor/loss", "temperature/loss", "alpha", "skipped_critic"):
                assert mine[key] == member_metrics(own, 0)[key], (step, s, key)
            for key in ("critic/weights", "actor/weights"):
                assert np.array_equal(mine[key], member_metrics(own, 0)[key], equal_nan=True), (step, s, key)
            assert mine["failed"] is None
    for i, s in enumerate(seeds):
        assert_states_equal(population.member_state(i), alone[s][1].member_state(0))
    for i, s in enumerate(seeds):  # the aggregators' own states too (Nash-MTL's warm starts, ...)
        for mine, own in ((together[i].critic, alone[s][0].critic), (together[i].actor, alone[s][0].actor)):
            for key, value in mine.state_dict().items():
                other = own.state_dict()[key]
                assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (s, key)


def test_members_on_different_paths_in_one_step_stay_independent():
    """Nash-MTL-T (T = 3) with the members at different points of their schedules: at most steps one
    member builds G while another reuses its weights; each keeps the numbers it has alone."""
    cfg = config()
    seeds = [0, 1, 2]
    together = [Run(s, "nashmtl", update_every=3) for s in seeds]
    alone = [Run(s, "nashmtl", update_every=3) for s in seeds]
    for i, runs in enumerate(zip(together, alone)):  # member i starts i calls into its schedule
        for run in runs:
            for agg in (run.critic, run.actor):
                agg.step = i
                agg.alpha[:] = 1.0  # weights to reuse before its first solve
    population = population_of(together, cfg)
    solos = [population_of([run], cfg) for run in alone]
    mixed = 0
    for step in range(4):
        needs = {run.critic.needs_jacobian(step) for run in together}
        mixed += len(needs) == 2
        population_update(population, together, step)
        for run, solo in zip(alone, solos):
            population_update(solo, [run], step)
    assert mixed >= 3
    for i, solo in enumerate(solos):
        assert_states_equal(population.member_state(i), solo.member_state(0))


# ---- a member against the single agent --------------------------------------------------------
@pytest.mark.parametrize(
    "method, options, variant",
    [
        ("ls", {}, "mt"), ("ls", {"max_norm": 0.05}, "mt"), ("famo", {}, "mt"), ("pcgrad", {}, "mt"), ("ls", {}, "mh"),
        ("pcgrad", {}, "mt/foreach"),
    ],
)
def test_a_member_update_is_the_single_agent_update_bit_for_bit(method, options, variant):
    """The methods whose host step loops over the members (the single path, bit for bit)."""
    check_against_single_agent(method, options, variant, exact=True)


@pytest.mark.parametrize(
    "method, options, variant",
    [*((m, o, "mt") for m, o in BATCHED), ("nashmtl", {"update_every": 2}, "mt"), ("nashmtl", {}, "te"),
     ("nashmtl", {}, "mh"), ("nashmtl", {}, "mt/foreach")],
)
def test_a_member_update_with_a_batched_solver_is_the_single_agent_update_to_rounding(method, options, variant):
    """The batched solvers give the single path's coefficients within 1e-12 relative (not bit for
    bit: other BLAS / LAPACK calls); after three updates a member's parameters are within 1e-6
    relative of MTSAC's (float32 rounding of the direction and Adam), and move far more than that."""
    check_against_single_agent(method, options, variant, exact=False)


def population_and_singles(method: str, options: dict, variant: str) -> tuple[list, list, PopulationSAC, list]:
    """Members 0 and 1 of ``method`` (their runs), twin runs for single agents, the population
    and the two single agents, on ``variant`` ("mt", "te/foreach", ...)."""
    variant, _, adam = variant.partition("/")
    cfg = config(variant=variant, adam=adam or "fused")
    seeds = [0, 1]
    runs, own = [Run(s, method, **options) for s in seeds], [Run(s, method, **options) for s in seeds]
    return runs, own, population_of(runs, cfg), [single(s, cfg) for s in seeds]


def check_against_single_agent(method: str, options: dict, variant: str, exact: bool) -> None:
    runs, own, population, agents = population_and_singles(method, options, variant)
    start = [copy.deepcopy(agent.training_state()) for agent in agents]
    for step in range(3):
        population_update(population, runs, step)
        for agent, run in zip(agents, own):
            single_update(agent, run, step)
    for i, agent in enumerate(agents):
        assert_states_equal(population.member_state(i), agent.training_state(), exact=exact)
        if not exact:
            assert relative_change(agent.training_state(), population.member_state(i)) <= 1e-6
            assert relative_change(start[i], agent.training_state()) > 1e-4


def test_cagrad_fast_groups_rows_on_the_host_and_stays_within_1e_6_of_the_single_agent():
    """The single agent builds the grouped rows (one per sampled task, one mean row) on the device;
    a population builds the full G and CAGrad-Fast groups on the host (T M T^T, its full-G path).
    Same sampled tasks, same method, different rounding."""
    cfg = config()
    run, own = Run(0, "cagrad_fast"), Run(0, "cagrad_fast")
    population, agent = population_of([run], cfg), single(0, cfg)
    before = agent.training_state()
    population_update(population, [run], 0)
    single_update(agent, own, 0)
    after = agent.training_state()
    assert relative_change(after, population.member_state(0)) <= 1e-6
    assert relative_change(before, after) > 1e-4  # the update moved the parameters far more than that
    assert_states_equal(population.member_state(0), after, exact=False)


def test_G_of_a_population_is_each_member_s_single_agent_G():
    cfg = config(variant="te")
    agents = [single(s, cfg) for s in (0, 1, 2)]
    population = PopulationSAC.from_states([a.training_state() for a in agents], OBS, ACT, K, cfg)
    batches = [batch(s) for s in range(3)]
    target = torch.randn(3, K, B, generator=torch.Generator().manual_seed(9))
    module = population.critic
    shared = [n for n, _ in module.named_parameters() if n not in module.task_specific_names()]
    params = {n: p.detach() for n, p in module.named_parameters()}
    stacked = stack(batches)
    result = member_gradients(
        population._critic_loss, params, (stacked.obs, stacked.action, target, population.codes), shared, module=module
    )
    assert result.G.shape == (3, K, sum(params[n][0].numel() for n in shared))
    for s, agent in enumerate(agents):
        ref = per_task_jacobian(
            agent._critic_loss, {n: p.detach() for n, p in agent.critic.named_parameters()},
            (batches[s].obs, batches[s].action, target[s], agent.codes), shared, method="linear", module=agent.critic,
        )
        assert torch.equal(result.G[s], ref.G)
        assert torch.equal(result.losses[s], ref.losses)
        for name, g in ref.other_grads.items():  # the task embeddings: plain sums
            assert torch.equal(result.other_grads[name][s], g), name


def test_host_coefficients_from_the_gram_matrices_are_the_aggregators_own():
    """Every method served from M alone gives the coefficients it gives when called with G."""
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(2, K, 50, generator=gen)
    for name in sorted(GRAM_SERVED):
        via_G = [make(name, K) for _ in range(2)]
        via_M = [make(name, K) for _ in range(2)]
        contexts = [
            AggContext(step=0, task_ids=torch.arange(K), losses=torch.rand(K, generator=gen) + 0.1,
                       perf=torch.rand(K, generator=gen), generator=torch.Generator().manual_seed(s))
            for s in range(2)
        ]
        expected = [agg(G[s], copy.copy(ctx)).coefficients.numpy() for s, (agg, ctx) in enumerate(zip(via_G, contexts))]
        for ctx, s in zip(contexts, range(2)):
            ctx.generator.manual_seed(s)  # the same draws again (PCGrad, CAGrad-Fast)
        M = torch.stack([torch.from_numpy(gram(G[s])) for s in range(2)]).numpy()
        got = host_coefficients(via_M, M, contexts)
        for s in range(2):  # the batched solvers: within 1e-12 of the single path (the others: exact)
            np.testing.assert_allclose(got[s], expected[s], rtol=1e-12, atol=0.0, err_msg=name)


# ---- gradient diagnostics: a member's are the single agent's --------------------------------------
#: the keys ``mtrl.diagnostics`` adds per component on a diagnostics step
DIAGNOSTICS = ("cos", "task_grad_norm", "conflict", "served", "direction_norm")


@pytest.mark.parametrize(
    "method, options, variant, exact",
    [
        ("ls", {}, "mt", True), ("ls", {"max_norm": 0.05}, "mh", True), ("famo", {}, "mt", True), ("famo", {}, "te/foreach", True),
        ("pcgrad", {}, "mt", True), ("nashmtl", {}, "mt", False), ("nashmtl", {"update_every": 2}, "mt", False),
        ("cagrad", {}, "mt", False), ("cagrad_fast", {}, "mt", False),
    ],
)
def test_member_diagnostics_are_the_single_agent_s(method, options, variant, exact):
    """``update(..., diagnostics=True)``: member s's ``<component>/cos``, ``task_grad_norm``,
    ``conflict``, ``served`` and ``direction_norm`` are those ``MTSAC.update(..., diagnostics=True)``
    computes for it alone, three updates in a row. Bit for bit where the single path is (the
    one-backward methods: G from one extra pass, ``G d`` and ``d . d`` by the single agent's BLAS
    calls; PCGrad: from M and the coefficients on the host). The batched solvers (Nash-MTL,
    CAGrad) move the parameters within float32 rounding of MTSAC's (their coefficients within
    1e-12), CAGrad-Fast's single path computes ``G d`` on the device from its grouped rows where a
    population has the full M on the host: within 1e-5 relative / 1e-6 absolute (measured: 0 for
    Nash-MTL and CAGrad here, 6e-8 relative for CAGrad-Fast)."""
    runs, own, population, agents = population_and_singles(method, options, variant)
    for step in range(3):
        metrics = read_metrics(population_update(population, runs, step, diagnostics=True))
        for i, (agent, run) in enumerate(zip(agents, own)):
            reference = read_metrics(single_update(agent, run, step, diagnostics=True))
            mine = member_metrics(metrics, i)
            for key in (f"{c}/{k}" for c in ("critic", "actor") for k in DIAGNOSTICS):
                assert key in reference, key
                if exact:
                    assert mine[key] == reference[key], (step, i, key)
                else:
                    np.testing.assert_allclose(mine[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=f"{step} {i} {key}")
    for i, agent in enumerate(agents):
        assert_states_equal(population.member_state(i), agent.training_state(), exact=exact)


@pytest.mark.parametrize("method, options", [("ls", {"max_norm": 0.05}), ("famo", {}), ("nashmtl", {}), ("cagrad_fast", {})])
def test_diagnostics_do_not_change_the_update(method, options):
    """A population with diagnostics on every step ends bit for bit where one without them ends."""
    cfg = config()
    seeds = [0, 1]
    plain, observed = [Run(s, method, **options) for s in seeds], [Run(s, method, **options) for s in seeds]
    a, b = population_of(plain, cfg), population_of(observed, cfg)
    for step in range(3):
        without = read_metrics(population_update(a, plain, step))
        with_ = read_metrics(population_update(b, observed, step, diagnostics=True))
        assert np.asarray(with_["critic/cos"]).shape == (2, K, K) and np.asarray(with_["actor/served"]).shape == (2, K)
        assert not any(k.endswith("/cos") for k in without)
        for key in ("critic/loss", "actor/loss", "temperature/loss"):
            assert with_[key] == without[key], (step, key)
    for i in range(2):
        assert_states_equal(a.member_state(i), b.member_state(i))


def test_diagnostics_of_members_on_different_paths_are_each_member_s_own():
    """Nash-MTL-T members at different points of their schedules: a member reusing its weights
    takes its diagnostics from the G of the members that build theirs this step (the same rows as
    its own extra pass alone); each member's diagnostics are those it has alone, bit for bit."""
    cfg = config()
    seeds = [0, 1, 2]
    together = [Run(s, "nashmtl", update_every=3) for s in seeds]
    alone = [Run(s, "nashmtl", update_every=3) for s in seeds]
    for i, runs in enumerate(zip(together, alone)):
        for run in runs:
            for agg in (run.critic, run.actor):
                agg.step = i
                agg.alpha[:] = 1.0
    population = population_of(together, cfg)
    solos = [population_of([run], cfg) for run in alone]
    for step in range(3):
        metrics = read_metrics(population_update(population, together, step, diagnostics=True))
        for i, (run, solo) in enumerate(zip(alone, solos)):
            own = member_metrics(read_metrics(population_update(solo, [run], step, diagnostics=True)), 0)
            for key in (f"{c}/{k}" for c in ("critic", "actor") for k in DIAGNOSTICS):
                assert member_metrics(metrics, i)[key] == own[key], (step, i, key)
    for i, solo in enumerate(solos):
        assert_states_equal(population.member_state(i), solo.member_state(0))


# ---- skips ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("adam", ["fused", "foreach"])
@pytest.mark.parametrize("method", ["ls", "nashmtl"])
def test_a_member_with_a_non_finite_loss_skips_alone(method, adam):
    """Fused: every member steps and the skipped one is restored on the device; foreach: the
    flags are read on the host and only the others step (as the single agent's two paths)."""
    cfg = config(adam=adam)
    seeds = [0, 1, 2]
    runs = [Run(s, method) for s in seeds]
    alone = [Run(s, method) for s in (0, 2)]
    population = population_of(runs, cfg)
    solos = [population_of([run], cfg) for run in alone]
    population_update(population, runs, 0)  # Adam state exists
    for run, solo in zip(alone, solos):
        population_update(solo, [run], 0)
    before = population.member_state(1)
    batches = [run.batch(1) for run in runs]
    batches[1].reward[2, 3] = float("nan")
    metrics = population_update(population, runs, 1, batches)
    for run, solo in zip(alone, solos):
        population_update(solo, [run], 1)
    assert metrics["skipped_critic"].tolist() == [0.0, 1.0, 0.0]
    after = population.member_state(1)
    for key in before["model"]:
        if key.startswith("critic."):
            assert torch.equal(after["model"][key], before["model"][key]), key
    for i, entry in before["critic_optimizer"]["state"].items():  # moments and step counts too
        for field, value in entry.items():
            assert torch.equal(after["critic_optimizer"]["state"][i][field], value), (i, field)
    # the actor's loss does not read the reward: member 1's actor still stepped
    assert float(metrics["skipped_actor"][1]) == 0.0
    assert any(not torch.equal(after["model"][k], before["model"][k]) for k in before["model"] if k.startswith("actor."))
    # the others never noticed
    for i, solo in zip((0, 2), solos):
        assert_states_equal(population.member_state(i), solo.member_state(0))


# ---- failures -----------------------------------------------------------------------------------
class Broken(NashMTL):
    """Nash-MTL that raises from its solve at ``fail_at`` (finite input: a bug, not a skip)."""

    fail_at = 1

    def solver_inputs(self, ctx, task_ids):
        if ctx.step == self.fail_at:
            raise RuntimeError("solver bug")
        return super().solver_inputs(ctx, task_ids)


class BrokenWeighting(type(make("famo", K))):
    def weights_without_jacobian(self, ctx):
        if ctx.step == 1:
            raise RuntimeError("weighting bug")
        return super().weights_without_jacobian(ctx)


@pytest.mark.parametrize("method, broken", [("nashmtl", Broken), ("famo", BrokenWeighting)])
@pytest.mark.parametrize("adam", ["fused", "foreach"])
def test_a_member_whose_aggregator_raises_is_reported_failed_and_the_others_go_on(method, broken, adam):
    """Member 1's aggregator raises at step 1 (in the critic's step): ``update`` returns the
    exception in ``metrics["failed"][1]``, member 1's whole update is skipped (parameters, target
    critic, Adam state; its actor aggregator is not called), and members 0 and 2 get bit for bit
    the update of a population without member 1."""
    cfg = config(adam=adam)
    seeds = [0, 1, 2]
    runs = [Run(s, method) for s in seeds]
    runs[1].critic = broken(K)
    pair = [Run(s, method) for s in (0, 2)]
    population, without = population_of(runs, cfg), population_of(pair, cfg)
    for step in range(3):
        if step == 1:
            before = population.member_state(1)
            actor_state = runs[1].actor.state_dict()
        metrics = population_update(population, runs, step)
        reference = population_update(without, pair, step)
        assert reference["failed"] == [None, None]
        if step != 1:
            assert metrics["failed"] == [None, None, None]
            continue
        assert metrics["failed"][0] is None and metrics["failed"][2] is None
        assert isinstance(metrics["failed"][1], RuntimeError) and "bug" in str(metrics["failed"][1])
        assert metrics["skipped_critic"].tolist() == [0.0, 1.0, 0.0] and metrics["skipped_actor"].tolist() == [0.0, 1.0, 0.0]
        assert_states_equal(population.member_state(1), before)  # nothing moved: model, targets, Adam
        for key, value in actor_state.items():  # the actor's aggregator was not called
            assert torch.equal(value, runs[1].actor.state_dict()[key]) if isinstance(value, torch.Tensor) else value == runs[1].actor.state_dict()[key]
    for i, j in ((0, 0), (2, 1)):
        assert_states_equal(population.member_state(i), without.member_state(j))


def test_host_coefficients_reports_a_failure_or_raises_it():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(3, K, 20, generator=gen, dtype=torch.float64)
    M = np.stack([gram(g) for g in G])
    M[2, 0, 0] = np.nan
    aggs = [make("nashmtl", K), Broken(K), make("nashmtl", K)]
    contexts = [AggContext(step=1, task_ids=torch.arange(K), losses=torch.ones(K, dtype=torch.float64)) for _ in range(3)]
    failures, outs = [], []
    C = host_coefficients(aggs, M, contexts, dtype=torch.float64, failures=failures, aggregations=outs)
    assert np.isfinite(C[0]).all() and np.isnan(C[1:]).all()
    assert failures[0] is None and isinstance(failures[1], RuntimeError) and failures[2] is None  # 2: a skip
    assert outs[0] is not None and outs[1] is None and outs[2] is None
    with pytest.raises(RuntimeError, match="solver bug"):
        host_coefficients([Broken(K)], M[1:2], contexts[1:2], dtype=torch.float64)
    contexts[1].losses[0] = float("nan")  # on a non-finite loss the same exception is a skip
    failures = []
    C = host_coefficients([Broken(K)], M[1:2], contexts[1:2], dtype=torch.float64, failures=failures)
    assert failures == [None] and np.isnan(C).all()


# ---- checkpoints: a member is a single run ----------------------------------------------------------
def test_member_state_is_a_single_run_checkpoint_both_ways():
    cfg = config(variant="mh")
    runs = [Run(s, "nashmtl") for s in (0, 1)]
    population = population_of(runs, cfg)
    assert_states_equal(population.member_state(1), single(1, cfg).training_state())  # before any step
    for step in range(2):
        population_update(population, runs, step)
    # population -> single run: a member resumes alone and continues as it would have in the population
    agent = single(9, cfg)
    state = population.member_state(1)
    for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):  # each entry is its parameter's
        params = getattr(agent, name).param_groups[0]["params"]
        assert [state[name]["state"][i]["exp_avg"].shape for i in range(len(params))] == [p.shape for p in params], name
    agent.load_training_state(state)
    assert_states_equal(agent.training_state(), population.member_state(1))
    own = Run(1, "nashmtl")
    own.critic.load_state_dict(runs[1].critic.state_dict())
    own.actor.load_state_dict(runs[1].actor.state_dict())
    own.generator.set_state(runs[1].generator.get_state())
    own.agg_generator.set_state(runs[1].agg_generator.get_state())
    population_update(population, runs, 2)
    single_update(agent, own, 2)
    assert_states_equal(agent.training_state(), population.member_state(1))
    # single run -> population: a single run's state loads into a member and comes back unchanged
    other = population_of([Run(5, "nashmtl"), Run(6, "nashmtl")], cfg)
    other.load_member_state(0, agent.training_state())
    assert_states_equal(other.member_state(0), agent.training_state())
    assert_states_equal(other.member_state(1), single(6, cfg).training_state())  # its neighbour untouched


# ---- acting ------------------------------------------------------------------------------------------
def test_acting_is_each_member_s_own_policy_with_its_own_noise():
    cfg = AgentConfig(hidden_dim=32, num_layers=2)  # K rows: every product above ATen's naive-loop size
    agents = [single(s, cfg) for s in (0, 1)]
    population = PopulationSAC.from_states([a.training_state() for a in agents], OBS, ACT, K, cfg)
    obs = torch.randn(2, K, OBS, generator=torch.Generator().manual_seed(0))
    actions = population.act(obs, generators=[torch.Generator().manual_seed(s) for s in (10, 11)])
    mean = population.act(obs, deterministic=True)
    assert actions.shape == (2, K, ACT)
    for s, agent in enumerate(agents):
        assert torch.equal(actions[s], agent.act(obs[s], generator=torch.Generator().manual_seed(10 + s)))
        assert torch.equal(mean[s], agent.act(obs[s], deterministic=True))


# ---- syncs and ops --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, transfers", [("ls", 0), ("nashmtl", 2)])
def test_syncs_and_device_ops_do_not_grow_with_the_population(method, transfers):
    cfg = config()
    counts = {}
    for S in (1, 4):
        runs = [Run(s, method) for s in range(S)]
        population = population_of(runs, cfg)
        batches = {i: [run.batch(i) for run in runs] for i in range(3)}  # drawn before counting
        population_update(population, runs, 0, batches[0])
        counts[S] = count_step(lambda i: population_update(population, runs, i, batches[i]), 1, 2, host_labels=(HOST_STEP,))
        assert counts[S]["scalar_reads_per_update"] == 0
        assert counts[S]["host_transfers_per_update"] == transfers
    device_ops = {S: c["ops_per_update"] - c["host_ops_per_update"] for S, c in counts.items()}
    # per-member noise: 2 draws per update, one per member each
    assert device_ops[4] == device_ops[1] + 2 * 3


# ---- what a population does not do ---------------------------------------------------------------------
def test_unsupported_options_raise_with_their_name():
    with pytest.raises(ValueError, match="agent.compile"):
        PopulationSAC(OBS, ACT, K, config(compile=True), 2)
    population = PopulationSAC(OBS, ACT, K, config(), 2)
    runs = [Run(s, "ls") for s in range(2)]
    kwargs = dict(aggregator_generators=[r.agg_generator for r in runs])
    b = stack([r.batch(0) for r in runs])
    gens = [r.generator for r in runs]
    with pytest.raises(ValueError, match="aggregate_temperature"):
        population.update(b, 0, [r.critic for r in runs], [r.actor for r in runs], gens, temperature_aggs=[make("ls", K)] * 2, **kwargs)
    aux = [make("auxinash", K) for _ in range(2)]
    with pytest.raises(ValueError, match="auxinash"):
        population.update(b, 0, aux, aux, gens, **kwargs)
    population.jacobian_method = "vmap"
    with pytest.raises(ValueError, match="vmap"):
        population.update(b, 0, [r.critic for r in runs], [r.actor for r in runs], gens, **kwargs)


def test_the_population_benchmark_runs_and_writes_its_comparisons(tmp_path):
    from mtrl.benchmarks import population_update

    out = tmp_path / "population.json"
    argv = ["--sizes", "quick", "--members", "1", "2", "--methods", "ls", "--drift", "--drift-methods", "ls", "--updates", "2",
            "--profile", "--json", str(out)]
    assert population_update.main(argv) == 0
    import json

    data = json.loads(out.read_text())
    assert data["comparisons"]["ops_s2_vs_s1_ls_quick"]["ratio"] > 0
    assert data["syncs"]["ls_quick"] == {"1": 0.0, "2": 0.0}
    assert data["drift"]["quick"]["ls"] == {"1": 0.0, "2": 0.0}  # LS: bit for bit
