"""Generic properties (ids G1-G5: docs/aggregators.md, "Checked properties") and edge cases, applied to every registered aggregator."""

from __future__ import annotations

import pytest
import torch

from mtrl.aggregators import REGISTRY, AggContext, make
from tests.aggregators.properties import (
    assert_permutation_equivariant,
    assert_rotation_equivariant,
    assert_state_round_trip,
    assert_well_formed,
    context,
    degenerate_inputs,
    random_G,
    run,
)

METHODS = sorted(REGISTRY)
RANDOMISED = {"pcgrad", "rlw", "cagrad_fast"}  # use ctx.generator: not permutation-equivariant per draw
# AuxiLearn's combination network has one input per task with its own (random) initial weights
NOT_EQUIVARIANT = RANDOMISED | {"auxilearn"}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("K", [1, 2, 3, 10])
def test_output_is_well_formed(name, K):
    G = random_G(K)
    assert_well_formed(run(name, G), G)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_coefficients_reproduce_the_direction_and_gram_is_G_Gt(name, max_norm):
    """Every method reports c with d == c @ G (after clipping) and, when it built one, M == G G^T:
    the trainer's gradient diagnostics are computed from these without touching G again."""
    G = random_G(5)
    options = {"max_norm": max_norm} if "max_norm" in make(name, 5).option_names() else {}
    out = run(name, G, **options)
    assert out.coefficients is not None and out.coefficients.dtype == torch.float64
    torch.testing.assert_close(out.coefficients @ G, out.direction, rtol=1e-10, atol=1e-12)
    if max_norm is not None and "max_norm" in options:
        assert float(torch.linalg.vector_norm(out.direction)) <= max_norm * (1 + 1e-9)
    if out.gram is not None:
        torch.testing.assert_close(out.gram, G @ G.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
def test_float32_input_gives_float32_direction(name):
    G = random_G(5).float()
    out = run(name, G)
    assert out.direction.dtype == torch.float32 and torch.isfinite(out.direction).all()


@pytest.mark.parametrize("name", sorted(set(METHODS) - NOT_EQUIVARIANT))
def test_permutation_equivariance(name):
    assert_permutation_equivariant(name, random_G(5))


@pytest.mark.parametrize("name", METHODS)
def test_rotation_equivariance(name):
    assert_rotation_equivariant(name, random_G(4, P=12))


@pytest.mark.parametrize("name", sorted(RANDOMISED))
def test_same_generator_seed_gives_same_output(name):
    G = random_G(6)
    a, b = run(name, G, context(6, seed=7)), run(name, G, context(6, seed=7))
    assert torch.equal(a.direction, b.direction)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_gives_identical_outputs(name):
    assert_state_round_trip(name, random_G(4))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", sorted(degenerate_inputs()))
def test_degenerate_input_gives_finite_direction(name, case):
    G = degenerate_inputs()[case]
    out = run(name, G)
    assert_well_formed(out, G)


@pytest.mark.parametrize("name", METHODS)
def test_all_zero_gradients_give_zero_direction(name):
    G = torch.zeros(3, 8, dtype=torch.float64)
    assert torch.count_nonzero(run(name, G).direction) == 0


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_G_raises(name, bad):
    G = random_G(3)
    G[1, 4] = bad
    with pytest.raises(ValueError, match="non-finite"):
        run(name, G)


@pytest.mark.parametrize("name", METHODS)
def test_tasks_missing_from_the_batch_use_global_ids(name):
    G = random_G(3)
    out = make(name, num_tasks=6)(G, context(3, task_ids=torch.tensor([0, 2, 5])))
    assert_well_formed(out, G)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError) as err:
        make("nope", num_tasks=3)
    assert "unknown aggregator 'nope'" in str(err.value)
    for name in METHODS:
        assert name in str(err.value)


def test_unknown_option_names_it_and_the_accepted_ones():
    with pytest.raises(ValueError) as err:
        make("nashmtl", num_tasks=3, updte_every=2)
    message = str(err.value)
    assert "updte_every" in message and "update_every" in message and "max_norm" in message


@pytest.mark.parametrize(
    "name, options",
    [
        ("nashmtl", {"update_every": 0}),
        ("nashmtl", {"solver": "newton"}),
        ("cagrad", {"c": -1.0}),
        ("cagrad", {"rescale": 3}),
        ("cagrad_fast", {"num_sampled": 0}),
        ("pcgrad", {"reduction": "max"}),
        ("pivrg", {"bound": 1.0}),
        ("fairgrad", {"alpha": 0}),
        ("dwa", {"temperature": -2}),
        ("ls", {"max_norm": -1}),
    ],
)
def test_bad_option_value_names_the_option_and_the_allowed_values(name, options):
    (key, value), = options.items()
    with pytest.raises(ValueError) as err:
        make(name, num_tasks=3, **options)
    assert key in str(err.value) and repr(value) in str(err.value) and "allowed" in str(err.value)


def test_wrong_task_ids_are_rejected():
    with pytest.raises(ValueError, match="task ids must lie in"):
        make("nashmtl", 3)(random_G(3), AggContext(step=0, task_ids=torch.tensor([0, 1, 3])))
    with pytest.raises(ValueError, match="has 2 entries but G has 3 rows"):
        make("nashmtl", 3)(random_G(3), AggContext(step=0, task_ids=torch.tensor([0, 1])))
