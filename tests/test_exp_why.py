"""Tests of bnclaims.experiments.why: the batched MLP core against bnclaims.nn and numerical
gradients, the exact identities the claims rely on, and every experiment at tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments, nn
from bnclaims.experiments import why


def _tiny(rng, sizes=(5, 6, 4, 3), arms=2, norm=True):
    params = why._to64(why.init_params(rng, list(sizes), arms, norm=norm))
    for key in ("gamma", "beta", "b"):   # non-trivial affine parameters and biases
        if params[key] is not None:
            params[key] = [None if p is None else p + 0.3 * rng.standard_normal(p.shape) for p in params[key]]
    return params


# ----------------------------------------------------------------------------- core vs bnclaims.nn

@pytest.mark.parametrize("group", [None, 2, 4])
def test_batched_norm_matches_nn_per_arm(group):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 8, 5))
    gamma, beta = rng.standard_normal((3, 1, 5)), rng.standard_normal((3, 1, 5))
    dout = rng.standard_normal(z.shape)
    out, cache = why._norm_forward(z, gamma, beta, why.Stats(group=group), 0)
    dz, dgamma, dbeta = why._norm_backward(dout, gamma, cache)
    for a in range(3):
        if group is None:
            ref, ref_cache = nn.batchnorm_forward(z[a], gamma[a, 0], beta[a, 0])
            ref_dz, ref_dgamma, ref_dbeta = nn.batchnorm_backward(dout[a], ref_cache)
        else:
            ref, ref_cache = nn.ghost_batchnorm_forward(z[a], gamma[a, 0], beta[a, 0], group)
            ref_dz, ref_dgamma, ref_dbeta = nn.ghost_batchnorm_backward(dout[a], ref_cache)
        np.testing.assert_allclose(out[a], ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dz[a], ref_dz, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dgamma[a, 0], ref_dgamma, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dbeta[a, 0], ref_dbeta, rtol=1e-10, atol=1e-12)


def test_rows_statistics_over_all_rows_equal_batch_norm():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 7, 4))
    gamma, beta = rng.standard_normal((2, 1, 4)), rng.standard_normal((2, 1, 4))
    dout = rng.standard_normal(z.shape)
    out_b, cache_b = why._norm_forward(z, gamma, beta, why.BATCH, 0)
    out_r, cache_r = why._norm_forward(z, gamma, beta, why.Stats("rows", rows=7), 0)
    np.testing.assert_allclose(out_r, out_b, rtol=1e-13, atol=1e-13)
    for got, ref in zip(why._norm_backward(dout, gamma, cache_r), why._norm_backward(dout, gamma, cache_b)):
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------- numerical gradients

def _numerical_check(params, x, y, stats, weights=None):
    """Largest normwise relative error ||numeric - analytic|| / (||numeric|| + ||analytic||) over the
    parameter arrays (central differences, float64)."""
    logits, cache = why.forward(params, x, stats)
    grads = why.backward(params, why.cross_entropy(logits, y, weights)[1], cache)
    worst = 0.0
    for key in ("W", "b", "gamma", "beta"):
        if params[key] is None:
            continue
        for p, g in zip(params[key], grads[key]):
            if p is None:
                continue
            flat = p.reshape(-1)
            numeric = np.zeros_like(flat)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + 1e-6
                up = why.cross_entropy(why.forward(params, x, stats)[0], y, weights)[0].sum()
                flat[i] = old - 1e-6
                down = why.cross_entropy(why.forward(params, x, stats)[0], y, weights)[0].sum()
                flat[i] = old
                numeric[i] = (up - down) / 2e-6
            analytic = g.reshape(-1)
            worst = max(worst, np.linalg.norm(numeric - analytic) / (np.linalg.norm(numeric) + np.linalg.norm(analytic)))
    return worst


@pytest.mark.parametrize("stats", [why.BATCH, why.Stats(group=4), why.Stats("rows", rows=5)])
def test_backward_matches_numerical_gradient_bn(stats):
    rng = np.random.default_rng(2)
    params = _tiny(rng)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    weights = np.r_[np.zeros(3), np.full(5, 0.2)] if stats.kind == "rows" else None
    assert _numerical_check(params, x, y, stats, weights) < 1e-7


def test_backward_matches_numerical_gradient_plain_and_fixed():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    assert _numerical_check(_tiny(rng, norm=False), x, y, why.BATCH) < 1e-7
    bn = _tiny(rng)
    fixed = why.Stats("fixed", fixed=why.population_stats(bn, rng.standard_normal((9, 5))))
    assert _numerical_check(bn, x, y, fixed) < 1e-7


# ----------------------------------------------------------------------------- exact identities

def test_matching_bn_params_compute_the_plain_function_exactly():
    rng = np.random.default_rng(4)
    plain = _tiny(rng, norm=False)
    stats_x, x = rng.standard_normal((16, 5)), rng.standard_normal((10, 5))
    bn = why.matching_bn_params(plain, stats_x)
    got = why.forward(bn, np.concatenate([stats_x, x]), why.Stats("rows", rows=16))[0][:, 16:]
    ref = why.forward(plain, x)[0]
    assert np.abs(got - ref).max() <= 1e3 * np.finfo(np.float64).eps * np.abs(ref).max()


def test_bn_is_invariant_to_rescaling_the_first_layer_and_plain_is_not():
    rng = np.random.default_rng(5)
    bn = _tiny(rng, sizes=(5, 6, 6, 3), arms=1)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    assert why.rescale_error(rng, bn, x, y, trials=10) < 1e3
    plain = _tiny(rng, sizes=(5, 6, 6, 3), arms=1, norm=False)
    assert why._plain_rescale_change(rng, plain, x, y) > 0.1


def test_gradient_ics_is_zero_when_the_layers_below_do_not_move():
    rng = np.random.default_rng(6)
    params = _tiny(rng)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    grads = why._grads(params, x, y)
    rel, cos = why.gradient_ics(params, grads, x, y, np.zeros(2))
    assert rel.shape == cos.shape == (2, 2)
    assert np.abs(rel).max() == 0.0 and np.allclose(cos, 1.0, atol=1e-14)
    rel, cos = why.gradient_ics(params, grads, x, y, np.full(2, 0.5))
    assert (rel > 0).all() and (cos < 1).all()


def test_distribution_drift_is_scale_free_and_zero_without_change():
    rng = np.random.default_rng(7)
    before = rng.standard_normal((2, 500, 3))
    moments, w1 = why.distribution_drift(before, before)
    assert np.all(moments == 0) and np.all(w1 == 0)
    shifted = before + 0.5 * before.std(axis=1, keepdims=True)     # mean moves by half a std, std unchanged
    moments, w1 = why.distribution_drift(before, shifted)
    np.testing.assert_allclose(moments, 0.5, rtol=1e-9)
    np.testing.assert_allclose(w1, 0.5, rtol=1e-9)
    big = 10.0 * before
    np.testing.assert_allclose(why.distribution_drift(big, 10.0 * shifted)[0], moments, rtol=1e-10)


def test_steps_to_target():
    curve = np.array([[0.1, 0.5, 0.96, 0.9], [0.1, 0.2, 0.3, 0.4]])
    out = why.steps_to(curve, np.array([0, 5, 10, 15]), 0.95)
    assert out[0] == 10 and np.isnan(out[1])


# ----------------------------------------------------------------------------- experiments at tiny sizes

TINY = {
    "training-speed": dict(hidden=[8, 8], lrs=[0.1, 0.4, 1.6], tune_steps=20, eval_steps=20, target=0.5),
    "layer-input-drift": dict(hidden=[8, 8], steps=20, check_every=10),
    "layer-coupling": dict(hidden=[8, 8], steps=20, check_every=10, random_directions=2, rescale_trials=3),
    "ghost-batch-jitter": dict(hidden=[8], n_per_class=8, steps=10, lrs=[0.4, 0.4, 0.4, 0.4, 0.8]),
    "affine-reparametrization": dict(hidden=[8], lrs=[0.1, 0.4], steps=20, check_every=10, stats_rows=32),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_returns_every_declared_name_deterministically(name):
    exp = experiments.get(name)
    first = experiments.run_experiment(exp, 3, TINY[name])
    second = experiments.run_experiment(exp, 3, TINY[name])
    assert set(first["metrics"]) == set(exp.metrics)
    assert set(first["series"]) == set(exp.series)
    assert all(np.isfinite(v) for v in first["metrics"].values())
    assert first == second
    other = experiments.run_experiment(exp, 4, TINY[name])
    assert other["metrics"] != first["metrics"]


def test_jitter_sweep_mode_chooses_from_the_grid():
    exp = experiments.get("ghost-batch-jitter")
    out = experiments.run_experiment(exp, 0, dict(hidden=[8], n_per_class=8, steps=10, lr_grid=[0.1, 0.4],
                                                  low_lr=0.1))["metrics"]
    assert {out[f"lr_{a}"] for a in why.JITTER_ARMS} <= {0.1, 0.4}
    with pytest.raises(ValueError, match="one learning rate per arm"):
        experiments.run_experiment(exp, 0, dict(hidden=[8], n_per_class=8, steps=2, lrs=[0.1]))


def test_the_two_init_arms_start_equal():
    plain, bn = why.paired_init(np.random.default_rng(8), [5, 4, 3], 2)
    for a, b in zip(plain["W"], bn["W"]):
        assert np.array_equal(a, b)
    assert bn["b"][0] is None and plain["b"][0] is not None


PLOT_PAIRS = {
    "training-speed": [("lr", "val_steps_plain"), ("step", "acc_bn_best")],
    "layer-input-drift": [("step", "drift_curve_bn_slow"), ("ics_step", "cos_curve_plain_fast")],
    "layer-coupling": [("step", "curve_grad_update_bn")],
    "ghost-batch-jitter": [("ghost_batch_size", "test_acc_gain"), ("lr_grid", "val_acc_by_lr_free")],
    "affine-reparametrization": [("step", "tv_reparam"), ("loss_step", "loss_curve_bn_fixed"),
                                 ("lr", "mean_loss_by_lr_plain")],
}


@pytest.mark.parametrize("name", sorted(PLOT_PAIRS))
def test_plot_axes_have_matching_lengths(name):
    series = experiments.run_experiment(experiments.get(name), 0, TINY[name])["series"]
    for x, y in PLOT_PAIRS[name]:
        assert len(series[x]) == len(series[y]) > 1, (x, y)


def test_accuracy_scores_diverged_networks_zero_and_stuck_ones_at_chance():
    y = np.arange(10) % 3
    stuck = np.zeros((1, 10, 3))                       # finite, all equal: arg-max 0, right for y == 0
    diverged = np.full((1, 10, 3), np.nan)
    assert why.accuracy(stuck, y)[0] == pytest.approx(0.4)
    assert why.accuracy(diverged, y)[0] == 0.0
