"""Tests of bnclaims.experiments.landscape: the gradient against finite differences of the loss,
the R-operator Hessian-vector product against the exact Hessian of a tiny net (finite
differences of the exact gradient, float64), Lanczos against a dense eigendecomposition, and
the experiment at tiny scale (all declared names, finite, deterministic)."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments
from bnclaims.experiments import landscape as ls


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(a) + np.abs(b))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def tiny_problem(seed: int, norm: bool, sizes=(5, 4, 3, 3), n=7):
    """A tiny MLP with every parameter perturbed away from its special initial value (non-zero
    biases: with zero biases an example whose previous layer is all zero sits exactly on a ReLU
    kink, where no derivative exists)."""
    rng = np.random.default_rng(seed)
    params = ls.init_params(rng, list(sizes), norm)
    for key in ("b", "gamma", "beta"):
        if params[key] is not None:
            params[key] = [None if a is None else a + rng.normal(0, 0.3, a.shape) for a in params[key]]
    x = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], size=n)
    return params, x, y


def dense_hessian_fd(flat, like, x, y, h=1e-5):
    """Exact Hessian by centred finite differences of the exact gradient, column by column."""
    n = flat.size
    H = np.zeros((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        H[:, i] = (ls.loss_and_grad(flat + e, like, x, y)[1] - ls.loss_and_grad(flat - e, like, x, y)[1]) / (2 * h)
    return H


def dense_hessian_rop(flat, like, x, y):
    n = flat.size
    return np.stack([ls.hvp(flat, np.eye(n)[i], like, x, y) for i in range(n)], axis=1)


@pytest.mark.parametrize("norm", [True, False])
def test_gradient_matches_finite_differences(norm):
    worst = 0.0
    for seed in range(5):
        params, x, y = tiny_problem(seed, norm)
        flat = ls.flatten(params)
        _, grad = ls.loss_and_grad(flat, params, x, y)
        h = 1e-6
        num = np.array([(ls.loss_and_grad(flat + h * e, params, x, y)[0]
                         - ls.loss_and_grad(flat - h * e, params, x, y)[0]) / (2 * h) for e in np.eye(flat.size)])
        worst = max(worst, rel_error(grad, num))
    assert worst < 1e-7, worst


@pytest.mark.parametrize("norm", [True, False])
def test_hessian_vector_product_matches_exact_hessian(norm):
    """R-operator columns vs finite differences of the exact gradient: the FD truncation error is
    O(h^2) = 1e-10 relative, rounding O(eps / h) = 1e-11; the bar is 1e-7."""
    worst = 0.0
    for seed in range(5):
        params, x, y = tiny_problem(seed, norm)
        flat = ls.flatten(params)
        worst = max(worst, rel_error(dense_hessian_rop(flat, params, x, y), dense_hessian_fd(flat, params, x, y)))
    assert worst < 1e-7, worst


@pytest.mark.parametrize("norm", [True, False])
def test_hessian_is_symmetric_and_linear_in_the_direction(norm):
    """Exact identities of a Hessian-vector product, to a float64 tolerance."""
    params, x, y = tiny_problem(11, norm)
    flat = ls.flatten(params)
    H = dense_hessian_rop(flat, params, x, y)
    tol = 1e3 * np.finfo(np.float64).eps
    assert rel_error(H, H.T) < tol
    rng = np.random.default_rng(0)
    for _ in range(20):
        u, v = rng.normal(size=flat.size), rng.normal(size=flat.size)
        a, b = rng.normal(size=2)
        combined = ls.hvp(flat, a * u + b * v, params, x, y)
        assert rel_error(combined, a * ls.hvp(flat, u, params, x, y) + b * ls.hvp(flat, v, params, x, y)) < tol
        assert rel_error(ls.hvp(flat, u, params, x, y), H @ u) < tol


def test_bn_scale_invariance_gives_a_null_direction():
    """With BN, scaling a hidden layer's incoming weights W0 does not change the loss (up to eps):
    the Hessian maps the direction (W0, 0, ...) to almost -grad (H w = -g along a scale-invariant
    group), an exact consequence of homogeneity of degree 0 when eps = 0."""
    params, x, y = tiny_problem(3, True)
    eps = ls.EPS
    ls.EPS = 0.0
    try:
        flat = ls.flatten(params)
        direction = np.zeros_like(flat)
        size = params["W"][0].size
        direction[:size] = flat[:size]
        _, grad = ls.loss_and_grad(flat, params, x, y)
        hv = ls.hvp(flat, direction, params, x, y)
        expected = np.zeros_like(flat)
        expected[:size] = -grad[:size]
        assert abs(grad[:size] @ flat[:size]) < 1e-12 * np.abs(grad).sum() * np.abs(flat).sum()
        assert rel_error(hv, expected) < 1e-10
    finally:
        ls.EPS = eps


@pytest.mark.parametrize("norm", [True, False])
def test_lanczos_finds_the_largest_algebraic_eigenvalue(norm):
    params, x, y = tiny_problem(2, norm)
    flat = ls.flatten(params)
    H = dense_hessian_rop(flat, params, x, y)
    exact = np.linalg.eigvalsh((H + H.T) / 2)[-1]
    found, calls = ls.top_eigenvalue(flat, params, x, y, np.random.default_rng(0), tol=1e-10)
    assert abs(found - exact) <= 1e-8 * abs(exact)
    assert calls > 0


def test_flatten_round_trip():
    params, _, _ = tiny_problem(0, True)
    flat = ls.flatten(params)
    again = ls.unflatten(flat, params)
    np.testing.assert_array_equal(ls.flatten(again), flat)
    for a, b in zip(params["W"], again["W"]):
        np.testing.assert_array_equal(a, b)


def test_gradient_walk_at_a_minimum_of_a_flat_direction_is_zero():
    """When every step size is the same (eta repeated), the loss variation is exactly 0."""
    params, x, y = tiny_problem(4, True)
    flat = ls.flatten(params)
    variation, change, beta, norm = ls.gradient_walk(flat, params, x, y, np.array([0.1, 0.1, 0.1]))
    assert variation == 0.0
    assert change > 0 and beta > 0 and norm > 0


TINY = dict(hidden=[6], checkpoints=[0, 2, 4], probe_size=32, lrs=[0.1, 0.2], lanczos_tol=1e-2)


def test_experiment_returns_declared_names_and_is_deterministic():
    exp = experiments.get("loss-landscape")
    first = experiments.run_experiment(exp, 5, TINY)
    again = experiments.run_experiment(exp, 5, TINY)
    other = experiments.run_experiment(exp, 6, TINY)
    assert set(first["metrics"]) == set(exp.metrics) and set(first["series"]) == set(exp.series)
    assert all(np.isfinite(v) for v in first["metrics"].values())
    assert all(len(first["series"][k]) == 3 for k in exp.series)
    assert first == again
    assert first != other
    assert first["metrics"]["top_eig_bn_init"] > 0
