"""Gradient-conflict diagnostics (issue 16): exact on synthetic G with known cosines, and what a
training step logs equals the same quantities recomputed from the G and the direction it used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.aggregators import make
from mtrl.config import AgentConfig
from mtrl.diagnostics import gradient_diagnostics
from mtrl.metrics import read_metrics
from tests.test_agent import ACT, K, OBS, make_batch

P = 7


def _both_paths(G: torch.Tensor, c: torch.Tensor) -> list[dict]:
    """Diagnostics of d = c @ G from (G, d) and from (M, c): the two paths the trainer uses."""
    G64 = G.to(torch.float64)
    d = c.to(torch.float64) @ G64
    return [
        gradient_diagnostics(G64, d),
        gradient_diagnostics(None, None, gram=G64 @ G64.T, coefficients=c.to(torch.float64)),
    ]


def _rows(*vectors) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float64)


def test_orthogonal_gradients_have_identity_cosines_and_no_conflict():
    G = _rows([3, 0, 0, 0, 0, 0, 0], [0, -2, 0, 0, 0, 0, 0], [0, 0, 0, 0.5, 0, 0, 0])
    for out in _both_paths(G, torch.ones(3)):
        assert np.array_equal(out["cos"], np.eye(3))
        assert out["conflict"] == 0.0
        assert np.allclose(out["task_grad_norm"], [3, 2, 0.5], rtol=0, atol=1e-15)
        # d = g1 + g2 + g3, ||d|| = sqrt(9 + 4 + 0.25); cos(d, g_i) = ||g_i|| / ||d||
        norm = np.sqrt(13.25)
        assert out["direction_norm"] == pytest.approx(norm, abs=1e-14)
        assert np.allclose(out["served"], np.array([3, 2, 0.5]) / norm, rtol=0, atol=1e-15)


def test_anti_parallel_pair_conflicts_and_the_weaker_task_is_not_served():
    g = torch.arange(1.0, P + 1, dtype=torch.float64)
    G = torch.stack([g, -0.5 * g])
    for out in _both_paths(G, torch.ones(2)):  # d = 0.5 g: serves task 1, works against task 2
        assert np.allclose(out["cos"], [[1, -1], [-1, 1]], rtol=0, atol=1e-15)
        assert out["conflict"] == 1.0
        assert np.allclose(out["served"], [1, -1], rtol=0, atol=1e-15)
        assert out["direction_norm"] == pytest.approx(0.5 * float(g.norm()), abs=1e-13)


def test_duplicated_rows_have_cosine_one_and_a_zero_row_is_zero_everywhere():
    g = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0], dtype=torch.float64)
    h = torch.tensor([0.0, 1.0, 1.0, 2.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    G = torch.stack([g, g, torch.zeros(P, dtype=torch.float64), h])
    expected_gh = float(g @ h / (g.norm() * h.norm()))
    for out in _both_paths(G, torch.tensor([0.25, 0.25, 1.0, 0.5])):
        cos = out["cos"]
        assert cos[0, 1] == pytest.approx(1.0, abs=1e-15) and cos[0, 0] == cos[1, 1] == cos[3, 3] == 1.0
        assert np.array_equal(cos[2], np.zeros(4)) and np.array_equal(cos[:, 2], np.zeros(4))  # zero row: 0, also on the diagonal
        assert cos[0, 3] == pytest.approx(expected_gh, abs=1e-15) and cos[3, 0] == pytest.approx(expected_gh, abs=1e-15)
        # pairs: (0,1) +, (0,2) 0, (0,3) g.h, (1,2) 0, (1,3) g.h, (2,3) 0: only g.h < 0 counts
        assert out["conflict"] == pytest.approx((2 if expected_gh < 0 else 0) / 6)
        assert out["task_grad_norm"][2] == 0.0 and out["served"][2] == 0.0
        d = 0.5 * g + 0.5 * h
        assert out["served"][0] == pytest.approx(float(d @ g / (d.norm() * g.norm())), abs=1e-14)
        assert out["served"][3] == pytest.approx(float(d @ h / (d.norm() * h.norm())), abs=1e-14)


def test_a_zero_direction_serves_no_task():
    g = torch.ones(P, dtype=torch.float64)
    for out in _both_paths(torch.stack([g, -g]), torch.ones(2)):
        assert out["direction_norm"] == 0.0 and np.array_equal(out["served"], np.zeros(2))
        assert out["conflict"] == 1.0


class _Spy:
    """An aggregator that records the G it receives and the aggregation it returns."""

    def __init__(self, agg):
        self._agg, self.calls = agg, []

    def __call__(self, G, ctx):
        out = self._agg(G, ctx)
        self.calls.append((G.detach().clone(), out))
        return out

    def __getattr__(self, name):
        return getattr(self._agg, name)


def _cosines(G: torch.Tensor, d: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    G, d = G.to(torch.float64), d.to(torch.float64)
    norms = G.norm(dim=1)
    return (G @ G.T / (norms[:, None] * norms[None, :])).numpy(), (G @ d / (norms * d.norm())).numpy()


@pytest.mark.parametrize("method", ["nashmtl", "cagrad", "pcgrad"])
def test_logged_values_equal_the_cosines_of_the_g_and_direction_the_step_used(method):
    torch.manual_seed(0)
    agent = MTSAC(OBS, ACT, K, AgentConfig(hidden_dim=16, num_layers=2))
    critic, actor = _Spy(make(method, K)), _Spy(make(method, K))
    gens = dict(generator=torch.Generator().manual_seed(0), aggregator_generator=torch.Generator().manual_seed(1))
    metrics = read_metrics(agent.update(make_batch(0), 0, critic, actor, diagnostics=True, **gens))
    for name, spy in (("critic", critic), ("actor", actor)):
        G, out = spy.calls[-1]
        cos, served = _cosines(G, out.direction)
        assert np.allclose(metrics[f"{name}/cos"], cos, atol=1e-5), name
        assert np.allclose(metrics[f"{name}/served"], served, atol=1e-5), name
        assert np.allclose(metrics[f"{name}/task_grad_norm"], G.to(torch.float64).norm(dim=1).numpy(), rtol=1e-5)
        assert metrics[f"{name}/direction_norm"] == pytest.approx(float(out.direction.norm()), rel=1e-5)
        upper = cos[np.triu_indices(K, k=1)]
        assert metrics[f"{name}/conflict"] == pytest.approx(float(np.mean(upper < 0)))


def test_ls_builds_g_on_a_log_step_and_serves_each_task_by_the_cosine_with_the_plain_sum():
    torch.manual_seed(0)
    agent = MTSAC(OBS, ACT, K, AgentConfig(hidden_dim=16, num_layers=2))
    seen = []
    original = agent._jacobian

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result.G.detach().clone())
        return result

    agent._jacobian = spy
    gens = dict(generator=torch.Generator().manual_seed(0), aggregator_generator=torch.Generator().manual_seed(1))
    agent.update(make_batch(0), 0, make("ls", K), make("ls", K), **gens)  # not a log step: no G
    assert seen == []
    metrics = read_metrics(agent.update(make_batch(1), 1, make("ls", K), make("ls", K), diagnostics=True, **gens))
    assert len(seen) == 2  # one G per component, on the log step only
    for name, G in zip(("critic", "actor"), seen):
        cos, served = _cosines(G, G.sum(0))  # LS steps along the sum (clipping only rescales it)
        assert np.allclose(metrics[f"{name}/cos"], cos, atol=1e-5), name
        assert np.allclose(metrics[f"{name}/served"], served, atol=1e-5), name
