"""A population: S multi-task SAC agents of one configuration trained as one batched computation.

``PopulationSAC`` holds S members' actors, critics, target critics, log-temperatures and Adam
states with a leading member dimension (``agents/networks.py`` with ``members=S``: weights
[S, out, in], batched matmuls) and runs ONE update for all members: every tensor of the update is
[S, K, B, ...] and every op is issued once, whatever S (the exceptions: one random draw per member
and per draw, so that each member's noise comes from its own generator; on the host, the
loss weightings' calls, one per member).

The SAC maths is MTSAC's own: ``_critic_loss``, ``_actor_loss``, ``_soft_target`` and
``_temperature_loss`` are the functions of ``agents/mtsac.py`` (batch-polymorphic: they take the
stacked [S, K, ...] inputs as they take [K, ...]); this file adds no second copy of them.

One update of one component (critic or actor), for all members:

* every member whose aggregator needs G this step: ``mtrl.jacobian.member_gradients`` gives
  G [S, K, P] from one backward pass (``dW_{s,k} = dZ_{s,k}^T A_{s,k}``, one batched matmul per
  layer over the S * K rows); the Gram matrices M = G G^T [S, K, K] are one batched matmul in G's
  dtype, and go to the host in ONE transfer with the losses; ``host_coefficients`` turns them into
  each member's coefficients [S, K] (each member's own aggregator and state, all members in one
  ``population_coefficients`` call: the batched solvers of ``mtrl/aggregators/batched.py``); one transfer
  back and the directions ``d_s = c_s @ G_s`` are one batched matmul [S, P], written straight into
  the stacked gradient. Clipping is in the coefficients (norms from M: no device read).
* every member that needs no G (loss weightings; Nash-MTL-T between weight updates): one
  backward of ``sum_s sum_k w_{s,k} loss_{s,k}`` with each member's weights from its aggregator's
  ``weights_without_jacobian``, then per-member clipping as ``clip_grad_norm_`` does it.
* both kinds in one step (members whose Nash-MTL-T schedules differ): both passes run, for all
  members, and each member takes the gradient of its own path. That costs a second backward on
  such steps, and keeps every member's numbers exactly those it would have alone (the alternative,
  its weights as coefficients on its rows of G, gives the same direction only up to rounding).

A member whose loss or G is non-finite skips its own step (``skipped_<component>`` [S]): its
parameters, Adam moments and step counts stay bit-identical, the others step (``MemberAdam``).
A member whose aggregator raises (any exception, on finite input) fails: ``update`` does not
raise, it returns the exception in ``metrics["failed"][s]`` (a list [S] of exception or None) and
that member skips the whole update (critic, actor, temperature and target critic untouched; its
later components' aggregators are not called); the others step exactly as without it. The
trainer then drops it (``member_state`` of the others, ``from_states``).
Every metric is per member ([S] or [S, K] device tensors, per-member host arrays for the solver
information), read once per log line by ``mtrl.metrics.read_metrics``; ``member_metrics`` gives one
member's values in the format of ``MTSAC.update``'s.

Exactness (CPU, one thread; tests/test_population.py): a member of a population {i, j, k} equals
the same member of the population {i} bit for bit, for every method (the batched solvers keep
each member's arithmetic its own: tests/aggregators/test_population.py and the learner tests
for Nash-MTL, FairGrad, PIVRG, MGDA, IMTL-G and CAGrad). A member's update equals
``MTSAC.update`` from the same state bit for bit for the methods whose host step loops (the
loss weightings, LS with clipping, PCGrad; fused and foreach Adam). The batched solvers (Nash-MTL,
FairGrad, PIVRG, MGDA, IMTL-G, CAGrad) reach the single path's coefficients within 1e-12
relative, not bit for bit, so such a member's parameters agree with MTSAC's to float32 rounding
(tested at 1e-6 relative after three updates). CAGrad-Fast builds the full G and groups its rows
on the host (``T M T^T``, the aggregator's own full-G path) where MTSAC builds the grouped rows on
the device: the same method and the same sampled tasks, equal up to rounding. What this rests on, measured with MKL: each
member's matmuls are the single agent's products (``MemberLinear``), each member's outputs start
at the single agent's 16-byte alignment (``mtrl.jacobian.GEMM_ALIGN``: it holds when K x B and
K x P are multiples of 4, as in MT10/MT50 with even batch sizes; the test shapes are chosen so),
and every per-member product has at least 400 multiply-adds (ATen's ``bmm`` loops below that).

Gradient diagnostics (``update(..., diagnostics=True)``, the trainer's log steps): each member's
``<component>/cos``, ``task_grad_norm``, ``served``, ``conflict`` and ``direction_norm`` are what
``MTSAC.update(..., diagnostics=True)`` computes for it alone (``mtrl.diagnostics``), member
dimension first ([S, K, K], [S, K], [S]), before the step. A G-path member's come from its M and
coefficients on the host (no device work); the one-backward members' from their G (this step's G
pass, or one extra ``member_gradients`` pass for all members) and their stepped direction: M by one
``bmm``, ``G_s d_s`` and ``d_s . d_s`` by the single agent's ``mv`` and ``dot`` per member (a
batched product rounds differently), one transfer. Bit for bit the single path's where that is
(loss weightings, LS, PCGrad), within rounding otherwise (tests/test_population.py). They do not
change the update's numbers, and a step without them runs exactly the ops it ran before.

Not supported for a population (a clear error, never a silent difference): ``agent.compile``, the
"vmap" and "loop" Jacobian engines, the bilevel methods' outer steps (AuxiNash, AuxiLearn) and
``aggregator.aggregate_temperature``.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.adam import adam as functional_adam

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.networks import Actor, Critic
from mtrl.aggregators.base import AggContext, Aggregation, Aggregator, LossWeighting
from mtrl.aggregators.from_gram import population_coefficients
from mtrl.aggregators.solvers import HOST_TRANSFER
from mtrl.diagnostics import gram_diagnostics
from mtrl.jacobian import member_gradients
from mtrl.replay import Batch

__all__ = ["GRAM_SERVED", "HOST_STEP", "MemberAdam", "PopulationSAC", "host_coefficients", "member_metrics"]

#: profiler label of the host step (the members' aggregators on their K x K numbers): its ops run on
#: host tensors, which ``mtrl.benchmarks.profiling.count_step(host_labels=...)`` counts apart
HOST_STEP = "mtrl::host_step"

#: aggregators whose ``aggregate`` reads G only through ``solvers.gram(G)`` and ``combine``: the
#: host step serves them from the Gram matrix alone (tests/test_population.py checks each against
#: a call with the real G); any other G-based method gets its member's G (one transfer per member)
GRAM_SERVED = frozenset({"nashmtl", "fairgrad", "pivrg", "cagrad", "cagrad_fast", "mgda", "imtlg", "pcgrad"})

#: aggregators whose outer step needs hyper contexts (not supported for a population)
_BILEVEL = frozenset({"auxinash", "auxilearn"})


def host_coefficients(
    aggregators: Sequence[Aggregator],
    M: np.ndarray,
    contexts: Sequence[AggContext],
    *,
    dtype: torch.dtype = torch.float32,
    G: Tensor | None = None,
    aggregations: list[Any] | None = None,
    failures: list[Exception | None] | None = None,
) -> np.ndarray:
    """Each member's coefficients [S, K] (float64) from its Gram matrix ``M[s]`` [K, K] (float64).

    ``direction_s == coefficients[s] @ G_s`` as the member's aggregator gives it (clipping
    included). The methods of ``GRAM_SERVED`` are solved by ONE call for all their members,
    ``mtrl.aggregators.population_coefficients`` (batched kernels for Nash-MTL, FairGrad, PIVRG,
    MGDA, IMTL-G and CAGrad: within 1e-12 relative of the single-member path, and bit for bit
    independent of which other members are passed); any other G-based method is called on its
    member's ``G[s]``. ``dtype``: G's dtype (it sets the solvers' rounding tolerance).

    A member whose ``M[s]`` is not finite gets a row of NaN and its aggregator is not called: it
    skips its step (as the single agent, whose aggregator rejects a non-finite G before touching
    its state). A member whose aggregator raises gets a row of NaN too: when its losses are not
    finite that is a skip (as ``MTSAC.update``); on finite input it is a failure, reported in
    ``failures[s]`` (the exception; None for the others) when that list is given, else raised.
    The other members' results do not depend on it. ``aggregations``, when given, is filled with
    each member's result (``GramAggregation``, or ``Aggregation`` for a member called on G; both
    have ``weights`` and ``info``), None where skipped or failed."""
    S, K = len(aggregators), M.shape[1]
    out = np.full((S, K), np.nan)
    results: list[Any] = [None] * S
    errors: list[Exception | None] = [None] * S
    finite = np.isfinite(M).all(axis=(1, 2))
    served = [s for s in range(S) if finite[s] and aggregators[s].name in GRAM_SERVED]
    if served:
        batch = population_coefficients([aggregators[s] for s in served], M[served], [contexts[s] for s in served], dtype)
        for i, s in enumerate(served):
            results[s], errors[s] = batch.results[i], batch.errors[i]
    for s in range(S):
        if not finite[s] or s in served:
            continue
        if G is None:
            raise ValueError(f"aggregator {aggregators[s].name!r} needs G itself: pass G to host_coefficients")
        try:
            results[s] = aggregators[s](G[s], contexts[s])
        except Exception as error:  # noqa: BLE001 - this member's failure, sorted out below
            errors[s] = error
    for s in range(S):
        if errors[s] is not None:
            losses = contexts[s].losses
            if losses is not None and not bool(torch.isfinite(torch.as_tensor(losses)).all()):
                errors[s] = None  # a non-finite loss: a skip, as the single agent's
            elif failures is None:
                raise errors[s]
        elif results[s] is not None:
            if results[s].coefficients is None:
                raise ValueError(f"aggregator {aggregators[s].name!r} returned no coefficients: a population needs them")
            out[s] = np.asarray(results[s].coefficients, dtype=np.float64)
    if aggregations is not None:
        aggregations.extend(results)
    if failures is not None:
        failures.extend(errors)
    return out


class MemberAdam:
    """Adam for S members' copies of one parameter group: one step for all members, with a skip
    mask [S] and step counts per member.

    The group's parameters and both moments live in one buffer [S, 3, W] (each member's parameters
    one after the other: the shared ones first, in G's column order, then the task-specific ones,
    each in a slot padded to ``SLOT`` floats); the module's parameters are rebound to views of it
    ([S, ...]). Gradients come from ``grad`` [S, W] (same slots: the one-backward path writes its
    products there, each member's parameter at the alignment a fresh tensor has) or, for the
    shared parameters of a G-based step, from ``direction`` [S, P'] (row s: member s's ``c_s @ G_s``
    in G's column order, as the single agent's direction vector).

    A step runs torch's own functional Adam (``torch.optim.adam.adam``, configured like the single
    agent's optimizer: the fused kernel where ``cfg.adam`` is "fused" and the device has it, else
    foreach) ONCE over the S x n per-member views: member s's view of parameter j is contiguous and
    shaped like the single agent's parameter, with its own step tensor, so each member's
    arithmetic is the single agent's optimizer's bit for bit, and the fused kernel is still one
    launch.

    Skips. Fused: every member steps, then the members flagged in ``skip`` (a device tensor, no
    host read) get their parameters, moments and step counts back from a copy taken before the
    step (one clone and one ``where`` over the buffer). Foreach: the flags are read on the host
    (one sync per step, as the single agent's foreach path reads its flag) and only the other
    members' views are stepped. Against S optimizers over views (one per member): those would
    issue S kernels per step and need S ``found_inf`` flags; here the op count does not grow with
    S, at the price of two passes over the buffer."""

    SLOT = 16  # floats: every slot and member row starts 64-byte aligned, as a fresh tensor does

    def __init__(self, owners: Sequence[tuple[nn.Module, str]], names: Sequence[str], shared: int, make_template) -> None:
        tensors = [getattr(module, attr) for module, attr in owners]
        self.names = list(names)  # the single agent's parameter names, buffer order
        self.members = S = tensors[0].shape[0]
        self.shapes = [t.shape[1:] for t in tensors]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        slots = [-(-n // self.SLOT) * self.SLOT for n in self.sizes]
        self.offsets = [sum(slots[:j]) for j in range(len(slots))]
        self.n_shared = shared  # the first ``shared`` parameters are G's columns
        self.shared_numel = sum(self.sizes[:shared])
        first = tensors[0]
        kwargs = dict(dtype=first.dtype, device=first.device)
        self.buffer = torch.zeros(S, 3, sum(slots), **kwargs)  # params | exp_avg | exp_avg_sq
        self.grad = torch.zeros(S, sum(slots), **kwargs)
        self.direction = torch.zeros(S, -(-self.shared_numel // self.SLOT) * self.SLOT, **kwargs)
        self.params: list[nn.Parameter] = []
        for (module, attr), t, j in zip(owners, tensors, range(len(tensors))):
            view = self.stacked(self.buffer[:, 0], j)
            view.copy_(t.detach())
            param = nn.Parameter(view, requires_grad=t.requires_grad)
            setattr(module, attr, param)  # the module now computes with a view of the buffer
            self.params.append(param)
        self.template = make_template([self._member(self.buffer[0, 0], j) for j in range(len(tensors))])  # never stepped
        self.fused = bool(self.template.defaults.get("fused"))
        step_device = first.device if self.fused else torch.device("cpu")  # where torch's Adam keeps "step"
        n = len(tensors)
        self.steps = torch.zeros(S, n, dtype=torch.float32, device=step_device)
        self._state = [[self._member(self.buffer[s, k], j) for s in range(S) for j in range(n)] for k in range(3)]
        self._steps = [self.steps[s, j] for s in range(S) for j in range(n)]
        self._grads = [[self._member(self.grad[s], j) for j in range(n)] for s in range(S)]
        columns = [sum(self.sizes[:j]) for j in range(shared)]
        self._directions = [
            [self.direction[s, c : c + self.sizes[j]].view(self.shapes[j]) for j, c in enumerate(columns)] for s in range(S)
        ]

    def _member(self, row: Tensor, j: int) -> Tensor:
        return row[self.offsets[j] : self.offsets[j] + self.sizes[j]].view(self.shapes[j])

    def stacked(self, rows: Tensor, j: int) -> Tensor:
        """Parameter j's [S, ...] view of ``rows`` [S, W] (the buffer's parameters or ``grad``)."""
        return rows[:, self.offsets[j] : self.offsets[j] + self.sizes[j]].view(self.members, *self.shapes[j])

    def gradients(self, from_direction: Sequence[bool]) -> list[Tensor]:
        """The per-member gradient views to step with: member s's shared parameters from
        ``direction`` where ``from_direction[s]``, everything else from ``grad``."""
        out = []
        for s in range(self.members):
            own = self._grads[s]
            out += (self._directions[s] + own[self.n_shared :]) if from_direction[s] else own
        return out

    def step(self, grads: list[Tensor], skip: Tensor) -> None:
        """One Adam step of every member whose flag in ``skip`` [S] (float, 1 = skip) is 0."""
        if self.fused:
            saved = self.buffer.clone()
            self._adam(grads, None)
            torch.where(skip[:, None, None] > 0, saved, self.buffer, out=self.buffer)
            self.steps.sub_(skip[:, None])
        else:
            active = [s for s, f in enumerate(skip.cpu().tolist()) if f == 0]  # one host read, as MTSAC's foreach path
            if active:
                self._adam(grads, active)

    def _adam(self, grads: list[Tensor], rows: Sequence[int] | None) -> None:
        n = len(self.shapes)
        pick = (lambda xs: xs) if rows is None else (lambda xs: [xs[s * n + j] for s in rows for j in range(n)])
        group = self.template.param_groups[0]
        functional_adam(
            pick(self._state[0]), pick(grads), pick(self._state[1]), pick(self._state[2]), [], pick(self._steps),
            foreach=None if self.fused else True, fused=True if self.fused else None,
            amsgrad=group["amsgrad"], beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
            decoupled_weight_decay=group.get("decoupled_weight_decay", False),
        )

    # ---- one member's optimizer state, as torch.optim.Adam.state_dict() writes it -------------------
    def member_state(self, s: int, order: Sequence[int]) -> dict[str, Any]:
        """Member s's optimizer state in the single agent's format (``order``: the buffer index of
        each of the single agent's parameters, in its optimizer's order)."""
        state: dict[int, dict[str, Tensor]] = {}
        if bool((self.steps[s] > 0).any()):  # torch's Adam creates its state on the first step
            for i, j in enumerate(order):
                state[i] = {
                    "step": self.steps[s, j].clone(),
                    "exp_avg": self._member(self.buffer[s, 1], j).clone(),
                    "exp_avg_sq": self._member(self.buffer[s, 2], j).clone(),
                }
        return {"state": state, "param_groups": copy.deepcopy(self.template.state_dict()["param_groups"])}

    def load_member_state(self, s: int, state: dict[str, Any], order: Sequence[int]) -> None:
        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(order):
            raise ValueError(f"optimizer state has {[len(g['params']) for g in groups]} parameters per group; expected [{len(order)}]")
        with torch.no_grad():
            self.buffer[s, 1:].zero_()
            self.steps[s].zero_()
            for i, j in enumerate(order):
                entry = state["state"].get(i)
                if entry is not None:
                    if entry["exp_avg"].shape != self.shapes[j] or entry["exp_avg_sq"].shape != self.shapes[j]:
                        raise ValueError(f"optimizer state {i}: shape {tuple(entry['exp_avg'].shape)}, expected {tuple(self.shapes[j])}")
                    self._member(self.buffer[s, 1], j).copy_(entry["exp_avg"])
                    self._member(self.buffer[s, 2], j).copy_(entry["exp_avg_sq"])
                    self.steps[s, j] = float(entry["step"])


class PopulationSAC(nn.Module):
    """S members of multi-task SAC (one ``AgentConfig``) updated as one batched computation."""

    # the SAC maths: MTSAC's own functions (batch-polymorphic: [S, K, ...] as [K, ...])
    _critic_loss = MTSAC._critic_loss
    _actor_loss = MTSAC._actor_loss
    _soft_target = MTSAC._soft_target
    _temperature_loss = MTSAC._temperature_loss
    _adam = MTSAC._adam  # the single agent's optimizer settings (fused or foreach)

    def __init__(
        self, obs_dim: int, action_dim: int, num_tasks: int, cfg: Any, members: int, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        if cfg.compile:
            raise ValueError("agent.compile is not supported for a population (PopulationSAC); train single runs to compile")
        if members < 1:
            raise ValueError(f"a population needs at least one member, got {members}")
        self.cfg, self.num_tasks, self.action_dim, self.members = cfg, num_tasks, action_dim, members
        net = dict(
            variant=cfg.variant, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, embedding_dim=cfg.task_embedding_dim,
            members=members,
        )
        self.actor = Actor(obs_dim, action_dim, num_tasks, log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max, **net)
        self.critic = Critic(obs_dim, action_dim, num_tasks, **net)
        self.critic_target = Critic(obs_dim, action_dim, num_tasks, **net)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((members, num_tasks), math.log(cfg.init_temperature)))
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.register_buffer("codes", torch.eye(num_tasks))
        self.to(device)
        self.device = torch.device(device)
        self.jacobian_method = "auto"  # "auto" or "linear": the member engine (mtrl.jacobian.member_gradients)
        self.optimizers = {
            "actor": self._member_adam(self.actor, "actor", cfg.actor_lr),
            "critic": self._member_adam(self.critic, "critic", cfg.critic_lr),
            "alpha": MemberAdam([(self, "log_alpha")], ["log_alpha"], 1, lambda ps: self._adam(ps, cfg.alpha_lr)),
        }

    def _member_adam(self, module: nn.Module, prefix: str, lr: float) -> MemberAdam:
        named = dict(module.named_parameters())
        specific = set(module.task_specific_names())
        shared = [n for n in named if n not in specific]
        order = shared + [n for n in named if n in specific]  # G's columns first
        owners = []
        for name in order:
            owner, _, attr = name.rpartition(".")
            owners.append((module.get_submodule(owner) if owner else module, attr))
        adam = MemberAdam(owners, [f"{prefix}.{n}" for n in order], len(shared), lambda ps: self._adam(ps, lr))
        adam.single_order = [order.index(n) for n in named]  # the single agent's optimizer order -> buffer index
        return adam

    @classmethod
    def from_states(cls, states: Sequence[dict[str, Any]], obs_dim: int, action_dim: int, num_tasks: int, cfg: Any,
                    device: torch.device | str = "cpu") -> "PopulationSAC":
        """A population whose member s starts from ``states[s]`` (``MTSAC.training_state()``)."""
        population = cls(obs_dim, action_dim, num_tasks, cfg, len(states), device)
        for s, state in enumerate(states):
            population.load_member_state(s, state)
        return population

    # ---- randomness: each member draws from its own generator ----------------------------------------
    def _noise(self, shape: Sequence[int], generators: Sequence[torch.Generator | None]) -> Tensor:
        """Standard normal noise [S, *shape]: member s's slice drawn from ``generators[s]`` exactly
        as the single agent draws it (``torch.randn(*shape, generator=...)``); S draws."""
        if len(generators) != self.members:
            raise ValueError(f"need one generator per member ({self.members}), got {len(generators)}")
        noise = torch.empty(self.members, *shape, device=self.device)
        for s, generator in enumerate(generators):
            noise[s].normal_(generator=generator)
        return noise

    # ---- acting ---------------------------------------------------------------------------------------
    def act(self, obs: Tensor, deterministic: bool = False, generators: Sequence[torch.Generator | None] | None = None) -> Tensor:
        """Actions [S, K, A] for observations [S, K, obs_dim]; member s's noise from ``generators[s]``."""
        obs = obs.to(self.device, torch.float32)
        S, K = obs.shape[:2]
        noise = None
        if not deterministic:
            if generators is None:
                raise ValueError("a population acts stochastically with one generator per member (generators=[...])")
            noise = self._noise((K, self.action_dim), generators)
        action, _ = self.actor(obs, self.codes[:K].expand(S, K, self.num_tasks), noise)
        return action

    # ---- the update -------------------------------------------------------------------------------------
    def update(
        self,
        batch: Batch,
        step: int,
        critic_aggs: Sequence[Aggregator],
        actor_aggs: Sequence[Aggregator],
        generators: Sequence[torch.Generator | None],
        perf: Sequence[Tensor | None] | Tensor | None = None,
        main_task: int | None = None,
        aggregator_generators: Sequence[torch.Generator | None] | None = None,
        temperature_aggs: Sequence[Aggregator | None] | None = None,
        hyper_batches: Any = None,
        diagnostics: bool = False,
    ) -> dict[str, Any]:
        """One SAC update of every member on ``batch`` (fields [S, K, B, ...], member s's rows its
        own samples), as ``MTSAC.update`` does it for one agent: ``critic_aggs[s]``,
        ``actor_aggs[s]``, ``generators[s]`` (update noise), ``aggregator_generators[s]`` and
        ``perf[s]`` are member s's. Returns per-member metrics without reading the device
        (``member_metrics`` for one member's).

        ``metrics["failed"]``: a list [S], None for a member that updated or skipped normally, the
        exception its aggregator (critic's or actor's) raised on finite input for a member that
        failed. A failed member skips this whole update (parameters, target critic, Adam moments
        and step counts unchanged; ``skipped_critic`` / ``skipped_actor`` are 1 for it); the
        others' numbers are those of a population without it. Nothing is raised for it: the
        trainer marks it failed and drops it."""
        S = self.members
        self._check_supported(critic_aggs, actor_aggs, temperature_aggs, hyper_batches, diagnostics)
        if batch.reward.shape[0] != S:
            raise ValueError(f"batch fields must be [S, K, B, ...] with S = {S}; reward has shape {tuple(batch.reward.shape)}")
        K = batch.reward.shape[1]
        agg_gens = list(aggregator_generators) if aggregator_generators is not None else [None] * S
        contexts = [
            dict(perf=None if perf is None else perf[s], main_task=main_task, generator=agg_gens[s]) for s in range(S)
        ]
        metrics: dict[str, Any] = {}
        failed: list[Exception | None] = [None] * S  # filled by the component steps
        alpha = self.log_alpha[:, :K].exp().detach()  # [S, K]
        rows = torch.arange(K, device=self.device)
        codes = self.codes[rows]

        with torch.no_grad():
            noise = self._noise((K, batch.reward.shape[2], self.action_dim), generators)
            target = self._soft_target(batch.next_obs, batch.reward, batch.done, codes, self.log_alpha[:, :K].detach(), noise)
        self._component_step(
            "critic", self.critic, self._critic_loss, (batch.obs, batch.action, target, codes), {}, critic_aggs, step,
            contexts, metrics, failed, diagnostics=diagnostics,
        )

        if step % self.cfg.actor_update_every == 0:
            noise = self._noise((K, batch.reward.shape[2], self.action_dim), generators)
            constants = {"critic_params": {n: p.detach() for n, p in self.critic.named_parameters()}}
            log_prob_mean = self._component_step(
                "actor", self.actor, self._actor_loss, (batch.obs, noise, alpha[..., None], codes), constants, actor_aggs,
                step, contexts, metrics, failed, has_aux=True, diagnostics=diagnostics,
            )
            self._temperature_step(log_prob_mean, metrics["skipped_actor"], K, metrics)

        if step % self.cfg.target_update_every == 0:
            with torch.no_grad():
                targets = list(self.critic_target.parameters())
                lost = [s for s in range(S) if failed[s] is not None]
                kept = [t[lost].clone() for t in targets] if lost else []  # rare: a failed member's targets stay
                torch._foreach_lerp_(targets, list(self.critic.parameters()), self.cfg.tau)
                for t, value in zip(targets, kept):
                    t[lost] = value
        metrics["alpha"] = alpha.mean(-1)
        metrics["temperature/alpha"] = alpha  # [S, K]: every member's per-task temperatures, as this update used them
        metrics["failed"] = failed
        return metrics

    def _check_supported(self, critic_aggs, actor_aggs, temperature_aggs, hyper_batches, diagnostics: bool = False) -> None:
        """Raise for what a population cannot run. ``diagnostics``: accepted, always supported (the
        trainer's pre-flight check still passes it)."""
        S = self.members
        if len(critic_aggs) != S or len(actor_aggs) != S:
            raise ValueError(f"need one critic and one actor aggregator per member ({S}); got {len(critic_aggs)} and {len(actor_aggs)}")
        if self.jacobian_method not in ("auto", "linear"):
            raise ValueError(f"aggregator.jacobian {self.jacobian_method!r} is not supported for a population; use auto or linear")
        if temperature_aggs is not None and any(a is not None for a in temperature_aggs):
            raise ValueError("aggregator.aggregate_temperature is not supported for a population")
        for agg in (*critic_aggs, *actor_aggs):
            if agg.name in _BILEVEL or getattr(agg, "uses_hyper", False):
                raise ValueError(f"aggregator {agg.name!r}: the bilevel outer steps are not supported for a population")
        if hyper_batches is not None:
            raise ValueError("hyper_batches (the bilevel outer steps) are not supported for a population")

    def _to_host(self, tensor: Tensor) -> np.ndarray:
        """One labelled device-to-host transfer (float64 numpy)."""
        with torch.profiler.record_function(HOST_TRANSFER):
            return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()

    def _component_step(
        self, name: str, module: nn.Module, loss_fn, inputs: tuple[Tensor, ...], constants: dict[str, Any],
        aggs: Sequence[Aggregator], step: int, contexts: list[dict[str, Any]], metrics: dict[str, Any],
        failed: list[Exception | None], has_aux: bool = False, diagnostics: bool = False,
    ) -> Tensor:
        """One component's step for every member (module doc); returns the auxiliary output [S, K].
        ``failed[s]``: member s's aggregator failure of this update (None: none yet). A member that
        failed already (in the critic's step) is left out of this step's aggregator calls and skips;
        a member whose aggregator raises here on finite input gets its exception in ``failed[s]``
        and skips. ``diagnostics``: every member's gradient diagnostics (``_diagnostics``), before
        the step."""
        S, K = self.members, inputs[0].shape[1]
        adam = self.optimizers[name]
        names = [n.partition(".")[2] for n in adam.names]  # module-relative, buffer order
        shared, specific = names[: adam.n_shared], names[adam.n_shared :]
        params = {n: p.detach() for n, p in module.named_parameters()}
        task_ids = torch.arange(K)

        def one_pass(weights=None, out=None) -> Any:
            return member_gradients(
                lambda p, *args: loss_fn(p, *args, **constants), params, inputs, shared, module=module, has_aux=has_aux,
                weights=weights, out=out,
            )

        t0 = time.perf_counter()
        needs = [bool(agg.needs_jacobian(step)) for agg in aggs]
        host_skip = np.array([float(error is not None) for error in failed])  # failed members skip
        weights_out = np.full((S, K), np.nan)
        info: dict[str, np.ndarray] = {}
        metrics[f"{name}/jacobian"] = 0.0
        G = M = C = None
        aggregations: dict[int, Any] = {}  # G-path member -> its aggregation (None: skipped or failed)

        if not all(needs):  # one backward of sum_s sum_k w_sk loss_sk (members that need G: weight 0)
            reads_losses = any(isinstance(agg, LossWeighting) for agg, n in zip(aggs, needs) if not n)

            def weights_of(losses: Tensor) -> Tensor:
                host = self._to_host(losses) if reads_losses else None  # one transfer for all members
                W = np.zeros((S, K))
                with torch.profiler.record_function(HOST_STEP):
                    for s, agg in enumerate(aggs):
                        if not needs[s] and failed[s] is None:
                            own = losses[s] if host is None else torch.from_numpy(host[s])
                            ctx = AggContext(step=step, task_ids=task_ids, losses=own, **contexts[s])
                            try:
                                W[s] = agg.weights_without_jacobian(ctx).numpy()
                            except Exception as error:  # noqa: BLE001 - this member fails (or skips), the others go on
                                W[s], host_skip[s] = 0.0, 1.0
                                if bool(torch.isfinite(own).all()):
                                    failed[s] = error
                                continue
                            weights_out[s] = W[s]
                            for key, value in getattr(agg, "log_info", dict)().items():
                                info.setdefault(key, np.full(S, np.nan))[s] = float(value)
                return torch.from_numpy(W).to(losses)

            out = {n: adam.stacked(adam.grad, j) for j, n in enumerate(names)}
            result = one_pass(weights_of, out)
            losses, aux = result.losses, result.aux
            with torch.no_grad():
                if specific:
                    torch._foreach_copy_([out[n] for n in specific], [result.other_grads[n] for n in specific])
                grad_norm = self._clip(adam, [a.max_norm if not n else None for a, n in zip(aggs, needs)])
            if grad_norm is not None:
                metrics[f"{name}/grad_norm"] = grad_norm

        if any(needs):
            result = one_pass()
            G = result.G  # [S, K, P]
            losses, aux = result.losses, result.aux
            metrics[f"{name}/jacobian"] = time.perf_counter() - t0
            KK = K * K
            with torch.no_grad():  # Gram matrices and losses side by side: one transfer
                packed = torch.empty(S, -(-(KK + K) // MemberAdam.SLOT) * MemberAdam.SLOT, dtype=G.dtype, device=G.device)
                torch.bmm(G, G.mT, out=packed[:, :KK].view(S, K, K))
                packed[:, KK : KK + K] = losses
            host = self._to_host(packed)
            M, host_losses = host[:, :KK].reshape(S, K, K), host[:, KK : KK + K]
            members = [s for s in range(S) if needs[s] and failed[s] is None]
            outs: list[Any] = []
            errors: list[Exception | None] = []
            C = np.zeros((S, K))
            with torch.profiler.record_function(HOST_STEP):
                C[members] = host_coefficients(
                    [aggs[s] for s in members], M[members],
                    [AggContext(step=step, task_ids=task_ids, losses=torch.from_numpy(host_losses[s]), **contexts[s]) for s in members],
                    dtype=G.dtype, G=G if len(members) == S else G[members], aggregations=outs, failures=errors,
                )
                aggregations = dict(zip(members, outs))
                for s, agg_out, error in zip(members, outs, errors):
                    if error is not None:
                        failed[s] = error
                    if agg_out is None:
                        host_skip[s], C[s] = 1.0, 0.0
                        continue
                    if agg_out.weights is not None:
                        weights_out[s] = np.asarray(agg_out.weights, dtype=np.float64)
                    for key, value in agg_out.info.items():
                        info.setdefault(key, np.full(S, np.nan))[s] = float(value)
            with torch.no_grad():
                coefficients = torch.from_numpy(C).to(G)  # one transfer back
                torch.bmm(coefficients[:, None, :], G, out=adam.direction[:, None, : G.shape[2]])
                if specific:
                    targets = [adam.stacked(adam.grad, adam.n_shared + i) for i in range(len(specific))]
                    values = [result.other_grads[n] for n in specific]
                    if all(needs):
                        torch._foreach_copy_(targets, values)
                    else:  # members on the no-G path keep their own pass's gradients
                        mask = torch.tensor(needs, device=G.device)
                        for target, value in zip(targets, values):
                            torch.where(mask.view(S, *[1] * (value.dim() - 1)), value, target, out=target)

        with torch.no_grad():
            skip = (~torch.isfinite(losses).all(dim=-1)).to(torch.float32)  # [S], 1.0 = skip
            if host_skip.any():  # members whose G was not finite (seen on the host, in M)
                skip = torch.maximum(skip, torch.from_numpy(host_skip).to(device=skip.device, dtype=torch.float32))
        if diagnostics:  # before the step: G and d at the parameters the directions were computed at
            for key, values in self._diagnostics(adam, needs, failed, G, M, C, aggregations, one_pass, K).items():
                metrics[f"{name}/{key}"] = values
        adam.step(adam.gradients(needs), skip)
        metrics[f"skipped_{name}"] = skip
        metrics[f"{name}/loss"] = losses.mean(-1)
        metrics[f"{name}/weights"] = weights_out
        for key, values in info.items():
            metrics[f"{name}/{key}"] = values
        metrics[f"{name}/time"] = time.perf_counter() - t0
        return aux

    def _diagnostics(
        self, adam: MemberAdam, needs: Sequence[bool], failed: Sequence[Exception | None], G: Tensor | None,
        M: np.ndarray | None, C: np.ndarray | None, aggregations: dict[int, Any], one_pass, K: int,
    ) -> dict[str, np.ndarray]:
        """Every member's gradient diagnostics (``mtrl.diagnostics``), as ``MTSAC.update(...,
        diagnostics=True)`` computes them for the member alone, member dimension first: ``cos``
        [S, K, K], ``task_grad_norm`` and ``served`` [S, K], ``conflict`` and ``direction_norm`` [S].

        A member on the G path: from its Gram matrix and coefficients on the host (the aggregator's
        ``gram`` where it reports one, else ``M[s]``; nothing on the device). A member on the
        one-backward path: from its G and its direction as stepped (clipped), on the device: G
        from this step's G pass when there was one, else one extra ``member_gradients`` pass for
        all members; ``M = G G^T`` is one ``bmm`` for all members; ``G_s d_s`` and ``d_s . d_s``
        are one ``mv`` and one ``dot`` per member (the single agent's BLAS calls: a batched matmul
        rounds differently), each ``d_s`` at the 64-byte alignment of the single agent's fresh
        direction; then one transfer. A member that failed or skipped on the host gets NaN (the
        single agent logs no diagnostics on a step its aggregator rejects)."""
        S = self.members
        out = {
            "cos": np.full((S, K, K), np.nan), "task_grad_norm": np.full((S, K), np.nan), "conflict": np.full(S, np.nan),
            "served": np.full((S, K), np.nan), "direction_norm": np.full(S, np.nan),
        }

        def put(s: int, values: dict[str, Any]) -> None:
            for key, value in values.items():
                out[key][s] = value

        without = [s for s in range(S) if not needs[s] and failed[s] is None]
        if without:
            if G is None:
                G = one_pass().G  # [S, K, P] at the parameters the one-backward gradient was taken at
            with torch.no_grad():
                P = G.shape[2]
                d = torch.zeros_like(adam.direction)  # [S, P'] rows 64-byte aligned; the shared gradients, G's order
                column = 0
                targets, values = [], []
                for j in range(adam.n_shared):
                    targets.append(d[:, column : column + adam.sizes[j]].view(S, *adam.shapes[j]))
                    values.append(adam.stacked(adam.grad, j))
                    column += adam.sizes[j]
                torch._foreach_copy_(targets, values)
                gram = torch.empty(S, -(-K * K // MemberAdam.SLOT) * MemberAdam.SLOT, dtype=G.dtype, device=G.device)
                torch.bmm(G, G.mT, out=gram[:, : K * K].view(S, K, K))  # as the G path's M: rows 64-byte aligned
                Gd = torch.stack([torch.mv(G[s], d[s, :P]) for s in without])
                dd = torch.stack([torch.dot(d[s, :P], d[s, :P]) for s in without])
                host = self._to_host(torch.cat([gram[without, : K * K], Gd, dd[:, None]], dim=1))  # one transfer
            for i, s in enumerate(without):
                put(s, gram_diagnostics(host[i, : K * K].reshape(K, K), host[i, K * K : K * K + K], float(host[i, -1])))
        for s, agg_out in aggregations.items():
            if agg_out is None:
                continue
            own = getattr(agg_out, "gram", None)
            Ms = M[s] if own is None else (own.numpy() if isinstance(own, Tensor) else np.asarray(own))
            c = C[s]
            put(s, gram_diagnostics(Ms, Ms @ c, float(c @ Ms @ c)))
        return out

    def _clip(self, adam: MemberAdam, max_norms: Sequence[float | None]) -> Tensor | None:
        """Per-member ``clip_grad_norm_`` of the shared gradient (the one-backward path), as torch
        computes it for one agent: per-parameter norms, their norm, ``max_norm / (norm + 1e-6)``
        clamped to 1, one multiply. Returns the norms [S] (NaN for members without ``max_norm``)."""
        if all(m is None for m in max_norms):
            return None
        S, n_shared = self.members, adam.n_shared
        grads = adam.gradients([False] * S)
        views = [g for s in range(S) for g in grads[s * len(adam.shapes) : s * len(adam.shapes) + n_shared]]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(views)).view(S, n_shared), dim=1)  # [S]
        limit = torch.tensor([1.0 if m is None else float(m) for m in max_norms], device=total.device)
        coef = torch.clamp((total + 1e-6).reciprocal() * limit, max=1.0)  # what max_norm / (norm + 1e-6) computes
        if any(m is None for m in max_norms):
            unclipped = torch.tensor([m is None for m in max_norms], device=total.device)
            coef = torch.where(unclipped, torch.ones_like(coef), coef)
            total = torch.where(unclipped, torch.full_like(total, math.nan), total)
        shared = adam.grad[:, : adam.offsets[n_shared] if n_shared < len(adam.shapes) else adam.grad.shape[1]]
        shared.mul_(coef[:, None])
        return total

    def _temperature_step(self, log_prob_mean: Tensor, actor_skipped: Tensor, K: int, metrics: dict[str, Any]) -> None:
        """Per-task temperature losses, plain sum, for every member; a member skips with its actor."""
        adam = self.optimizers["alpha"]
        losses = self._temperature_loss(self.log_alpha[:, :K], log_prob_mean)  # [S, K]
        (grad,) = torch.autograd.grad(losses.sum(), [self.log_alpha])
        with torch.no_grad():
            adam.stacked(adam.grad, 0).copy_(grad)
            skip = torch.maximum((~torch.isfinite(losses).all(dim=-1)).to(torch.float32), actor_skipped)
        adam.step(adam.gradients([False] * self.members), skip)
        metrics["temperature/loss"] = losses.detach().mean(-1)

    # ---- a member's state: a single run's checkpoint ----------------------------------------------------
    def member_state(self, s: int) -> dict[str, Any]:
        """Member s as ``MTSAC.training_state()`` returns a single run (same keys, shapes, order)."""
        model = {}
        for key, value in self.state_dict().items():
            model[key] = value.detach().clone() if key == "codes" else value[s].detach().clone()
        return {
            "model": model,
            "actor_optimizer": self.optimizers["actor"].member_state(s, self.optimizers["actor"].single_order),
            "critic_optimizer": self.optimizers["critic"].member_state(s, self.optimizers["critic"].single_order),
            "alpha_optimizer": self.optimizers["alpha"].member_state(s, [0]),
        }

    def load_member_state(self, s: int, state: dict[str, Any]) -> None:
        """Load a single run's ``MTSAC.training_state()`` (or a ``member_state``) into member s."""
        own = self.state_dict()
        model = state["model"]
        if set(model) != set(own):
            raise ValueError(f"member state keys differ: missing {sorted(set(own) - set(model))}, unexpected {sorted(set(model) - set(own))}")
        with torch.no_grad():
            for key, value in model.items():
                target = own[key] if key == "codes" else own[key][s]
                if target.shape != value.shape:
                    raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit the member's {tuple(target.shape)}")
                target.copy_(value)
        self.optimizers["actor"].load_member_state(s, state["actor_optimizer"], self.optimizers["actor"].single_order)
        self.optimizers["critic"].load_member_state(s, state["critic_optimizer"], self.optimizers["critic"].single_order)
        self.optimizers["alpha"].load_member_state(s, state["alpha_optimizer"], [0])


def member_metrics(values: dict[str, Any], s: int) -> dict[str, Any]:
    """Member s's metrics from a population's (``read_metrics`` output or the raw dict): per-member
    values have the member dimension first; population-wide ones (times) are plain floats."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple, np.ndarray)) or (isinstance(value, Tensor) and value.dim() > 0):
            out[key] = value[s]
        else:
            out[key] = value
    return out
