"""Tests of bnclaims.experiments.landscape: Lanczos against a dense eigendecomposition of the exact
Hessian, the gradient walk, the SGD trajectory the checkpoints come from, and the experiment at tiny
scale (all declared names, finite, deterministic). The Hessian-vector product itself is tested in
tests/test_hvp.py."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments, model
from bnclaims.experiments import landscape as ls


def tiny_problem(seed: int, arm: str, sizes=(5, 4, 3, 3), n=7):
    """A tiny float64 net of the experiment's kind, every non-weight parameter moved off its initial value."""
    config = ls.configs(sizes)[arm]
    rng = np.random.default_rng(seed)
    params = model.init_params(rng, config)
    for name in params:
        if not model.is_weight(name):
            params[name] = params[name] + rng.normal(0, 0.3, params[name].shape)
    return config, params, rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], size=n)


@pytest.mark.parametrize("arm", ls.ARMS)
def test_lanczos_finds_the_largest_algebraic_eigenvalue(arm):
    config, params, x, y = tiny_problem(2, arm)
    hvp = model.hessian_vector_product(params, x, y, config)
    size = model.flatten_params(params).size
    H = np.stack([model.flatten_params(hvp(model.unflatten_params(e, params))) for e in np.eye(size)], axis=1)
    exact = np.linalg.eigvalsh((H + H.T) / 2)[-1]
    found, calls = ls.top_eigenvalue(params, config, x, y, np.random.default_rng(0), tol=1e-10)
    assert abs(found - exact) <= 1e-8 * abs(exact)
    assert calls > 0


def test_gradient_walk_with_one_repeated_step_size_has_no_loss_variation():
    """When every step size is the same (eta repeated), the loss variation is exactly 0."""
    config, params, x, y = tiny_problem(4, "bn")
    variation, change, beta, norm = ls.gradient_walk(params, config, x, y, np.array([0.1, 0.1, 0.1]))
    assert variation == 0.0
    assert change > 0 and beta > 0 and norm > 0


def test_the_arms_share_their_initial_weights():
    sizes = (64, 16, 16, 10)
    nets = ls.configs(sizes)
    bn, plain = (model.init_params(np.random.default_rng(3), nets[arm]) for arm in ls.ARMS)
    assert all(np.array_equal(bn[f"W{i}"], plain[f"W{i}"]) for i in range(3))
    assert "b0" not in bn and "gamma0" in bn and "b0" in plain and "gamma0" not in plain


def test_checkpoints_are_the_plain_sgd_trajectory_and_a_diverged_arm_has_none():
    split = ls.digits()
    X, y = split.X_train[:200], split.y_train[:200]
    config = ls.configs((64, 8, 10))["plain"]
    start = model.init_params(np.random.default_rng(0), config)
    plan = model.batch_plan(np.random.default_rng(1), len(y), 16, 4)
    with np.errstate(all="ignore"):
        points, diverged = ls.train_with_checkpoints(config, start, X, y, plan, [0.1, 1e150], [0, 2, 4])
    params = model.copy_params(start)
    for step in range(4):
        _, grads, _, _ = model.loss_and_grads(params, {}, X[plan[step]], y[plan[step]], config)
        for name in params:
            params[name] -= 0.1 * grads[name]
        if step + 1 in (2, 4):
            assert all(np.array_equal(points[0][step + 1][name], params[name]) for name in params)
    assert points[0][0] is start and points[1][0] is start
    assert diverged.tolist() == [False, True] and points[1][4] is None


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


def test_dataset_default_is_the_digits_and_augmented_runs():
    exp = experiments.get("loss-landscape")
    assert experiments.run_experiment(exp, 5, {**TINY, "dataset": "digits"}) == experiments.run_experiment(exp, 5, TINY)
    assert ls.digits("augmented").X_train.shape == (4312, 64) and ls.digits().X_train.shape == (1078, 64)
    augmented = experiments.run_experiment(exp, 5, {**TINY, "dataset": "augmented"})
    assert all(np.isfinite(v) for v in augmented["metrics"].values())
    assert augmented != experiments.run_experiment(exp, 5, TINY)
