"""Fast checks of bnclaims.experiments.dynamics: the stacked MLP, the measurements, the experiments."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments as registry
from bnclaims import nn
from bnclaims.experiments import dynamics as dyn

EXPERIMENTS = [name for name, exp in registry.load_all().items() if exp.module == dyn.__name__]


def _random_net(rng, norm: bool, depth: int = 2, width: int = 5, arms: int = 3, d_in: int = 4) -> dyn.Net:
    """A float64 stack with every parameter random (gamma, beta and biases too)."""
    net = dyn.init_net(1, arms, depth, width, norm, d_in=d_in)
    for name in ("W", "b", "gamma", "beta"):
        params = getattr(net, name)
        for i, p in enumerate(params):
            if p is not None:
                params[i] = rng.standard_normal(p.shape)
    return net


# ----------------------------------------------------------------------------- layers and network


def test_stacked_batchnorm_matches_nn_per_arm():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 9, 6)) * 3 + 1
    gamma, beta = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    dy = rng.standard_normal(z.shape)
    y, cache, mean, var = dyn.bn_forward(z, gamma, beta)
    dz, dgamma, dbeta = dyn.bn_backward(dy, cache)
    tol = 100 * np.finfo(np.float64).eps
    for a in range(4):
        out, ref_cache = nn.batchnorm_forward(z[a], gamma[a], beta[a], eps=dyn.EPS)
        ref_dx, ref_dgamma, ref_dbeta = nn.batchnorm_backward(dy[a], ref_cache)
        assert np.abs(out - y[a]).max() < tol
        assert np.abs(ref_dx - dz[a]).max() < tol
        assert np.abs(ref_dgamma - dgamma[a]).max() < tol
        assert np.abs(ref_dbeta - dbeta[a]).max() < tol
        assert np.abs(mean[a] - z[a].mean(0)).max() < tol and np.abs(var[a] - z[a].var(0)).max() < tol


@pytest.mark.parametrize("norm", [True, False])
def test_stacked_mlp_gradients_match_finite_differences(norm):
    rng = np.random.default_rng(1)
    net = _random_net(rng, norm)
    x = rng.standard_normal((3, 6, 4))
    y = rng.integers(0, 10, size=(3, 6))

    def total_loss():
        return dyn.softmax_xent(dyn.forward_train(net, x)[0], y)[0].sum()

    logits, cache, _ = dyn.forward_train(net, x)
    _, dlogits = dyn.softmax_xent(logits, y)
    grads = dyn.backward(net, dlogits, cache)
    params = net.params()
    assert len(grads) == len(params)
    for p, g in zip(params, grads):
        numeric = np.zeros_like(p)
        for ix in np.ndindex(p.shape):
            old = p[ix]
            p[ix] = old + 1e-6
            up = total_loss()
            p[ix] = old - 1e-6
            down = total_loss()
            p[ix] = old
            numeric[ix] = (up - down) / 2e-6
        assert np.abs(numeric - g).max() / np.abs(numeric).max() < 1e-7


def test_arms_are_independent_and_paired():
    """An arm trained inside a stack follows exactly the trajectory it has when trained alone."""
    data = dyn.load()
    idx = dyn.batch_stream(np.random.default_rng(2), len(data.y_train), 32, "shuffled", data.y_train, 40)
    both = dyn.train_stack(dyn.init_net(7, 2, 2, 16, True), data, idx, [0.01, 0.3])
    alone = dyn.train_stack(dyn.init_net(7, 1, 2, 16, True), data, idx, [0.3])
    np.testing.assert_allclose(both.gamma[1][:, 1], alone.gamma[1][:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(both.gamma[1][-1, 0], both.gamma[1][-1, 1])
    # the same seed gives BN and no-norm nets the same initial weights
    bn, plain = dyn.init_net(3, 1, 2, 8, True), dyn.init_net(3, 1, 2, 8, False)
    assert all(np.array_equal(a, b) for a, b in zip(bn.W, plain.W))


def test_a_diverging_arm_is_flagged_and_leaves_the_others_alone():
    data = dyn.load()
    idx = dyn.batch_stream(np.random.default_rng(3), len(data.y_train), 32, "shuffled", data.y_train, 60)
    rec = dyn.train_stack(dyn.init_net(5, 2, 3, 32, False), data, idx, [0.05, 1e4])
    assert rec.diverged.tolist() == [False, True]
    assert np.isfinite(rec.loss[:, 0]).all()
    assert np.isnan(rec.net.W[0][1]).all() and np.isfinite(rec.net.W[0][0]).all()


def test_momentum_arm_with_zero_momentum_equals_sgd():
    data = dyn.load()
    idx = dyn.batch_stream(np.random.default_rng(4), len(data.y_train), 32, "shuffled", data.y_train, 30)
    mixed = dyn.train_stack(dyn.init_net(9, 2, 2, 16, True), data, idx, [0.1, 0.1], [0.0, 0.9])
    sgd = dyn.train_stack(dyn.init_net(9, 1, 2, 16, True), data, idx, [0.1])
    np.testing.assert_allclose(mixed.beta[0][:, 0], sgd.beta[0][:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixed.beta[0][-1, 0], mixed.beta[0][-1, 1])


# ----------------------------------------------------------------------------- measurements


def test_detrended_std_removes_a_straight_line_exactly():
    t = np.arange(50.0)
    line = (3.0 + 0.7 * t)[:, None] * np.ones((1, 4))
    assert np.abs(dyn.detrended_std(line)).max() < 1e-12
    wiggle = np.where(t % 2 == 0, 1.0, -1.0)[:, None]  # +-1 around the line: std close to 1
    assert abs(dyn.detrended_std(line[:, :1] + wiggle)[0] - 1.0) < 0.01


def test_settle_fraction_on_a_known_trajectory():
    # 10 blocks: the value jumps from 1 to 0 after block 3 and stays; final = 0; d0 = 1
    blocks = np.array([1, 1, 1, 0.5, 0.1, 0, 0, 0, 0, 0], float)[:, None, None]
    init = np.array([[1.0]])
    assert dyn.settle_fraction(blocks, init, tolerance=0.2, final_fraction=0.3)[0] == pytest.approx(0.5)
    # a diverged arm never settles
    assert dyn.settle_fraction(np.full((10, 1, 1), np.nan), init)[0] == 1.0


def _arrive_then_wobble(rng, k_blocks=60, arrive=12, dims=128, wobble=0.05):
    """(K, 1, dims): straight from init 0 to a target (distance 1) by block `arrive`, then jitter."""
    target = rng.standard_normal(dims)
    target /= np.linalg.norm(target)
    path = np.minimum(np.arange(1, k_blocks + 1) / arrive, 1.0)[:, None] * target
    noise = rng.standard_normal((k_blocks, dims)) * (wobble / np.sqrt(dims))   # ||noise|| about wobble
    return (path + noise)[:, None, :], np.zeros((1, dims))


def test_settled_is_robust_to_late_wobble():
    """A parameter that arrives at 20 % of training and then only jitters is settled near 20 %,
    even when the jitter's norm (0.3, summed over 128 coordinates) exceeds 20 % of the way."""
    rng = np.random.default_rng(7)
    quiet, init = _arrive_then_wobble(rng, wobble=0.01)
    loud, _ = _arrive_then_wobble(rng, wobble=0.3)
    assert dyn.settle_fraction(quiet, init)[0] <= 0.25
    assert dyn.settle_fraction(loud, init)[0] <= 0.25
    # without the wobble allowance (wobble_mult 0) the loud one looks unsettled almost to the end
    assert dyn.settle_fraction(loud, init, wobble_mult=0.0)[0] > 0.8
    # the wobble estimate is the jitter's norm (a straight late trend is not counted as wobble)
    assert dyn.late_wobble(loud[:, :, :], 15)[0] == pytest.approx(0.3, rel=0.2)
    drift = np.linspace(0, 5, 60)[:, None, None] * np.ones((1, 1, 4))
    assert dyn.late_wobble(drift, 15)[0] < 1e-9


def test_a_parameter_still_drifting_late_is_not_settled_early():
    """Slow steady drift to the end is real movement, not wobble: settling comes late."""
    k = 60
    blocks = np.linspace(0.0, 1.0, k)[:, None, None] * np.ones((1, 1, 8))
    assert dyn.settle_fraction(blocks, np.zeros((1, 8)))[0] > 0.7


def test_accuracy_counts_non_finite_logits_as_wrong():
    y = np.array([0, 1, 2, 0])
    logits = np.full((3, 4, 10), -1.0)
    logits[:, np.arange(4), y] = 1.0                        # every arm right on every example ...
    logits[1] = np.nan                                      # ... except arm 1: all NaN (diverged)
    logits[2, 0, 5] = np.inf                                # arm 2: one inf logit on example 0
    logits[2, 3, 0] = np.nan                                # and one NaN logit on example 3
    np.testing.assert_array_equal(dyn.accuracy(logits, y), [1.0, 0.0, 0.5])
    # np.argmax alone would give the all-NaN arm class 0 everywhere: 2 of 4 "right"
    assert (np.argmax(logits[1], axis=1) == y).mean() == 0.5


def test_a_diverged_arm_scores_zero_accuracy():
    data = dyn.load()
    idx = dyn.batch_stream(np.random.default_rng(3), len(data.y_train), 32, "shuffled", data.y_train, 60)
    rec = dyn.train_stack(dyn.init_net(5, 2, 3, 32, False), data, idx, [0.05, 1e4])
    assert rec.diverged[1] and rec.val_acc[1] == 0.0 and rec.test_acc[1] == 0.0
    assert rec.val_acc[0] > 0.3


def test_probe_drift_and_relative_step():
    mean = np.array([[[0.0, 0.0]], [[0.1, -0.1]], [[0.1, -0.1]]])   # (T + 1 = 3, A = 1, D = 2)
    std = np.array([[[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 1.5]]])
    np.testing.assert_allclose(dyn.probe_drift(mean, std)[:, 0], [0.2 / 2, 0.5 / 2])
    gamma = np.array([[[2.0]], [[2.2]], [[2.0]]])
    assert dyn.relative_step(gamma, gamma)[0] == pytest.approx(0.2 / (6.2 / 3))


def test_steps_to_target_and_log_slope():
    curve = np.array([[0.5, 0.5], [0.95, 0.6], [0.97, 0.7]])
    steps = dyn.steps_to_target(curve, np.array([10, 20, 30]), 0.9, never=99)
    assert steps.tolist() == [20.0, 99.0]
    lr = np.array([0.001, 0.01, 0.1])
    assert dyn.log_slope(lr, 5 * lr ** 0.75) == pytest.approx(0.75)
    assert np.isnan(dyn.log_slope(lr, np.array([1.0, np.nan, np.nan])))


def test_a_bn_layer_with_gamma_sigma_beta_mu_is_the_identity():
    """The fact the cancel experiment relies on: gamma = sigma, beta = mu makes BN the identity."""
    rng = np.random.default_rng(5)
    net = _random_net(rng, True, depth=2, width=6, arms=2, d_in=4)
    X = rng.standard_normal((200, 4))
    for i in range(net.depth):                     # set each layer, in order, to undo itself
        means, stds = dyn.population_moments(net, X)
        net.gamma[i] = np.sqrt(stds[i] ** 2 + dyn.EPS)
        net.beta[i] = means[i]
    scale, shift = dyn.identity_mismatch(net, X)
    assert scale.max() < 1e-4 and shift.max() < 1e-12
    np.testing.assert_allclose(dyn.forward_population(net, X, X), dyn.forward_bn_removed(net, X),
                               rtol=1e-9, atol=1e-9)


def test_lr_name():
    assert [dyn.lr_name(v) for v in (0.1, 0.03, 1.0, 10.0)] == ["lr0p1", "lr0p03", "lr1", "lr10"]


# ----------------------------------------------------------------------------- registered experiments


TINY = {"epochs": 1, "width": 16}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_returns_declared_finite_names_deterministically(name):
    exp = registry.get(name)
    params = {k: v for k, v in TINY.items() if k in exp.params}
    if "deep" in exp.params:
        params["deep"] = 3
    first = registry.run_experiment(exp, 11, params)     # raises on missing/undeclared/non-finite
    again = registry.run_experiment(exp, 11, params)
    assert set(first["metrics"]) == set(exp.metrics) and set(first["series"]) == set(exp.series)
    assert first == again
    other = registry.run_experiment(exp, 12, params)
    assert other["metrics"] != first["metrics"]


def test_all_seven_experiments_are_registered():
    assert sorted(EXPERIMENTS) == sorted([
        "bn-vs-plain-probe-drift", "gamma-beta-step-vs-lr", "gamma-beta-lr-order-grid", "gamma-beta-settling",
        "bn-need-shallow-deep", "bn-lr-stability", "bn-cancel-check",
    ])


def test_dead_fraction_counts_units_that_never_fire():
    rng = np.random.default_rng(6)
    net = dyn.init_net(2, 2, 2, 8, True, d_in=64)
    net.beta[1][0] = -1e3                           # arm 0: every unit of layer 2 is pushed below zero
    x = rng.standard_normal((50, 64)).astype(dyn.DTYPE)
    assert dyn.dead_fraction(net, x, 1).tolist() == [1.0, 0.0]
