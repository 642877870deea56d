"""The exact batched NNLS against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from mlserver_model.nmf2d import BatchedNNLS


def _relative_objective_gap(a: np.ndarray, x: np.ndarray, ours: np.ndarray) -> float:
    reference, _ = nnls(a, x, maxiter=10_000)
    f_ours = np.sum((a @ ours - x) ** 2)
    f_ref = np.sum((a @ reference - x) ** 2)
    return (f_ours - f_ref) / max(f_ref, 1e-300)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_nnls_matches_scipy_on_random_problems(k):
    rng = np.random.default_rng(k)
    basis = rng.gamma(1.0, 1.0, (k, 300))
    # right-hand sides inside and outside the cone, so that every support size occurs
    x = rng.normal(0, 1, (200, 300)) + rng.gamma(1, 1, (200, k)) @ basis
    w = BatchedNNLS(basis).solve(x @ basis.T)
    assert (w >= 0).all()
    gaps = [_relative_objective_gap(basis.T, x[i], w[i]) for i in range(len(x))]
    assert max(gaps) < 1e-6
    assert len({tuple(np.flatnonzero(row)) for row in w}) > 1  # several supports were exercised


def test_nnls_matches_scipy_on_a_trained_model_and_poisson_maps(model):
    rng = np.random.default_rng(3)
    h = model.components.astype(np.float64)
    w_true = rng.uniform(0, 1, (100, len(h))) * rng.uniform(20, 2000, (100, 1))
    w_true[rng.random(w_true.shape) < 0.3] = 0  # many optima on the boundary
    x = rng.poisson(w_true @ h).astype(np.float64)
    w = BatchedNNLS(h).solve(x @ h.T)
    gaps = [_relative_objective_gap(h.T, x[i], w[i]) for i in range(len(x))]
    assert max(gaps) < 1e-6


def test_nnls_of_an_empty_map_is_zero():
    basis = np.random.default_rng(0).random((5, 50))
    assert not BatchedNNLS(basis).solve(np.zeros((3, 5))).any()
