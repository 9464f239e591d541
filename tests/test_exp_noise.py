"""Tests of bnclaims.experiments.noise: the stacked normalization layers against the single-network
layers of bnclaims.nn (float64, exact up to rounding), the network gradient against finite
differences, the noise law's exact properties, and each experiment at tiny scale (all declared
names, finite, deterministic for a fixed seed)."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments, nn
from bnclaims.experiments import noise as nz

F64_TOL = 1e-12   # float64 max relative error between two exact implementations of the same formula


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(a) + np.abs(b))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def one_arm(**kwargs) -> nz.Arms:
    return nz.Arms.make([0.1], **kwargs)


def layer_inputs(rng, n=9, d=5):
    z = rng.normal(0.7, 2.0, size=(1, n, d))
    gamma = rng.normal(1.0, 0.3, size=(1, 1, d))
    beta = rng.normal(0.0, 0.3, size=(1, 1, d))
    mean_run = rng.normal(0.5, 0.5, size=(1, 1, d))
    var_run = rng.uniform(0.5, 6.0, size=(1, 1, d))
    dout = rng.normal(size=(1, n, d))
    return z, gamma, beta, mean_run, var_run, dout


CASES = {
    "batch": dict(arms={}),
    "running_through": dict(arms=dict(stat_weight=0.1, through=1.0)),
    "running_const": dict(arms=dict(stat_weight=0.1, through=0.0)),
    "renorm": dict(arms=dict(renorm=True, r_max=1.5, d_max=0.5)),
    "noisy": dict(arms=dict(noise=True)),
}


def reference(case: str, z, gamma, beta, mean_run, var_run, dout, noise):
    """The same layer computed by bnclaims.nn on the single (N, D) network."""
    x, g, b = z[0], gamma[0, 0], beta[0, 0]
    rm, rv = mean_run[0, 0], var_run[0, 0]
    if case == "batch":
        out, cache = nn.batchnorm_forward(x, g, b)
        grads = nn.batchnorm_backward(dout[0], cache)
        new = nn.update_running_stats(rm, rv, *nn.batch_stats(cache), len(x), 0.1)
    elif case.startswith("running"):
        out, cache = nn.running_batchnorm_forward(x, g, b, rm, rv, 0.1, case == "running_through")
        grads = nn.running_batchnorm_backward(dout[0], cache)
        new = nn.running_stats(cache)
    elif case == "renorm":
        out, cache = nn.batchrenorm_forward(x, g, b, rm, rv, r_max=1.5, d_max=0.5)
        grads = nn.batchrenorm_backward(dout[0], cache)
        new = nn.update_running_stats(rm, rv, *nn.batch_stats(cache), len(x), 0.1)
    else:
        scale, shift = noise
        out, cache = nn.noisy_batchnorm_forward(x, g, b, np.broadcast_to(scale[0], x.shape), shift[0])
        grads = nn.noisy_batchnorm_backward(dout[0], cache)
        new = nn.update_running_stats(rm, rv, *nn.batch_stats(cache), len(x), 0.1)
    return out, grads, new


@pytest.mark.parametrize("case", sorted(CASES))
def test_stacked_layer_matches_nn(case):
    worst = 0.0
    for trial in range(20):
        rng = np.random.default_rng(trial)
        z, gamma, beta, mean_run, var_run, dout = layer_inputs(rng)
        arms = one_arm(**CASES[case]["arms"])
        noise = None
        if arms.noisy:
            scale, shift = nz.sample_noise(rng, arms, z.shape[1], z.shape[2])
            noise = (scale.astype(np.float64), shift.astype(np.float64))
        y, cache, (new_mean, new_var) = nz._norm_train(z, gamma, beta, mean_run, var_run, arms, noise)
        dz, dgamma, dbeta = nz._norm_backward(dout, gamma, cache)
        out, (dx, dg, db), (ref_mean, ref_var) = reference(case, z, gamma, beta, mean_run, var_run, dout, noise)
        for mine, ref in ((y[0], out), (dz[0], dx), (dgamma[0, 0], dg), (dbeta[0, 0], db),
                          (new_mean[0, 0], ref_mean), (new_var[0, 0], ref_var)):
            worst = max(worst, rel_error(mine, ref))
    assert worst < F64_TOL, worst


def _net_loss(params, state, x, y, arms):
    logits, cache, _ = nz.forward_train(params, state, x, arms)
    loss, dlogits = nz.cross_entropy(logits, y)
    return loss, nz.backward(params, dlogits, cache)


@pytest.mark.parametrize("kind", ["plain", "batch", "running_through", "renorm"])
def test_network_gradient_matches_finite_differences(kind):
    """Every parameter gradient of a small stacked net, float64, centred differences, rel. error < 1e-7.
    (Running averages as constants have no loss whose gradient this is; the layer test covers them.)"""
    rng = np.random.default_rng(5)
    norm = kind != "plain"
    params = nz.init_params(rng, [6, 5, 4, 3], 2, norm)
    params = {k: None if v is None else [None if a is None else a.astype(np.float64) for a in v]
              for k, v in params.items()}
    for key in ("b", "gamma", "beta"):
        if params[key] is not None:
            for a in params[key]:
                if a is not None:
                    a += rng.normal(0, 0.3, size=a.shape)
    arms = None if not norm else nz.Arms.make([0.1, 0.2], **CASES[kind]["arms"]) if kind != "renorm" \
        else nz.Arms.make([0.1, 0.2], renorm=True, r_max=1.5, d_max=0.5)
    state = nz.init_state(params)
    if kind == "renorm":
        # r and d are constants for the gradient (stop-gradient); running statistics far from the
        # batch ones keep them clipped at +-r_max, +-d_max, where they are locally constant indeed
        state = {"mean": [np.full(m.shape, 50.0) for m in state["mean"]],
                 "var": [np.full(v.shape, 1e-4) for v in state["var"]]}
    elif norm:
        state = {"mean": [rng.normal(0, 0.5, size=m.shape) for m in state["mean"]],
                 "var": [rng.uniform(0.5, 3.0, size=v.shape) for v in state["var"]]}
    x = rng.normal(size=(7, 6))
    y = rng.integers(0, 3, size=7)
    _, grads = _net_loss(params, state, x, y, arms)
    worst = 0.0
    h = 1e-6
    for key, arrays in params.items():
        if arrays is None:
            continue
        for a, g in zip(arrays, grads[key]):
            if a is None:
                continue
            num = np.zeros_like(a)
            for i in np.ndindex(a.shape):
                old = a[i]
                a[i] = old + h
                plus = _net_loss(params, state, x, y, arms)[0].sum()
                a[i] = old - h
                minus = _net_loss(params, state, x, y, arms)[0].sum()
                a[i] = old
                num[i] = (plus - minus) / (2 * h)
            worst = max(worst, rel_error(g, num))
    assert worst < 1e-7, worst


def test_noise_off_is_exact_and_shift_only_is_the_same_for_every_example():
    rng = np.random.default_rng(0)
    arms = nz.Arms.concat(nz.Arms.make([0.1]), nz.Arms.make([0.1], noise=True, example_noise=0.0),
                          nz.Arms.make([0.1], noise=True, example_noise=1.0),
                          nz.Arms.make([0.1], noise=True, example_noise=1.0))
    for _ in range(50):
        scale, shift = nz.sample_noise(rng, arms, 16, 7)
        assert np.all(scale[0] == 1.0) and np.all(shift[0] == 0.0)           # noise off: exactly none
        assert np.all(shift[1] == shift[1, :1])                               # shift only: one shift per feature
        assert np.all((scale[1:] >= 1.0) & (scale[1:] <= 1.25))
        np.testing.assert_array_equal(shift[2], shift[3])                     # common random numbers
        assert np.all(np.abs(shift[1]) <= 0.5)


def test_noise_law_moments():
    """Per-activation shift of noisy BN: mean m_j ~ U(-0.5, 0.5) -> 0 overall; variance
    E[s^2] + Var(m) = (1 + 1.25 + 1.25^2) / 3 + 1/12 for s ~ U(1, 1.25), m ~ U(-0.5, 0.5)."""
    rng = np.random.default_rng(1)
    arms = nz.Arms.make([0.1], noise=True)
    draws = np.concatenate([nz.sample_noise(rng, arms, 64, 64)[1].ravel() for _ in range(200)])
    expected_var = (1 + 1.25 + 1.25**2) / 3 + 1 / 12
    assert abs(draws.mean()) < 0.02
    assert abs(draws.var() / expected_var - 1) < 0.02


def test_predict_with_own_statistics_is_training_mode_without_noise():
    rng = np.random.default_rng(2)
    params = nz.init_params(rng, [6, 5, 5, 3], 2, norm=True)
    arms = nz.Arms.make([0.1, 0.1])
    x = rng.normal(size=(11, 6)).astype(np.float32)
    train_logits, _, _ = nz.forward_train(params, nz.init_state(params), x, arms)
    eval_logits = nz.predict(params, x, arms, stats_rows=len(x))
    assert rel_error(train_logits, eval_logits) < 50 * np.finfo(np.float32).eps


def test_arms_share_initial_weights_and_train_apart():
    rng = np.random.default_rng(3)
    plain, normed = nz.paired_init(rng, [64, 8, 10], 1, 3)
    for w_plain, w_norm in zip(plain["W"], normed["W"]):
        np.testing.assert_array_equal(w_plain[0], w_norm[2])
    split = nz.digits()
    arms = nz.Arms.make([0.05, 0.1, 0.2])
    nz.train_step(normed, nz.init_state(normed), split.X_train[:16], split.y_train[:16], arms, arms.lr)
    assert not np.array_equal(normed["W"][0][0], normed["W"][0][2])


def _run(name, seed, **params):
    exp = experiments.get(name)
    return experiments.run_experiment(exp, seed, params), exp


TINY = {
    "noisy-bn-speed": dict(hidden=[8], steps=10, check_every=1, probe_every=5, probe_size=32, lrs=[0.1, 0.2, 0.1, 0.2]),
    "noisy-bn-generalization": dict(hidden=[8], n_per_class=5, steps=10, lrs=[0.1, 0.1, 0.2, 0.2, 0.1, 0.2, 0.2]),
    "running-average-bn": dict(hidden=[8], epochs=1, small_batch=16, lr_grid=[0.1, 0.4]),
}
SWEEP = {
    "noisy-bn-speed": dict(hidden=[8], steps=10, check_every=1, probe_every=5, probe_size=32, lr_grid=[0.1, 0.4]),
    "noisy-bn-generalization": dict(hidden=[8], n_per_class=5, steps=10, lr_grid=[0.1, 0.4]),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_returns_declared_names_and_is_deterministic(name):
    first, exp = _run(name, 7, **TINY[name])
    again, _ = _run(name, 7, **TINY[name])
    other, _ = _run(name, 8, **TINY[name])
    assert set(first["metrics"]) == set(exp.metrics) and set(first["series"]) == set(exp.series)
    assert all(np.isfinite(v) for v in first["metrics"].values())
    assert first == again
    assert first != other


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_sweep_mode_reports_every_learning_rate(name):
    result, _ = _run(name, 3, **SWEEP[name])
    sweeps = [k for k in result["series"] if k.startswith("sweep_val_acc")]
    assert sweeps and all(len(result["series"][k]) == 2 for k in sweeps)
    assert result["series"]["lr"] == [0.1, 0.4]


def test_speed_fixed_lrs_are_used():
    result, _ = _run("noisy-bn-speed", 1, **TINY["noisy-bn-speed"])
    m = result["metrics"]
    assert (m["lr_plain"], m["lr_bn"], m["lr_shift"], m["lr_noisy"]) == (0.1, 0.2, 0.1, 0.2)
    assert 0 <= m["steps_bn"] <= 10


def test_running_average_arm_with_momentum_one_is_batch_norm():
    """m = 1 makes the running-average layer exactly batch norm (forward and gradient)."""
    rng = np.random.default_rng(4)
    z, gamma, beta, mean_run, var_run, dout = layer_inputs(rng)
    bn = nz._norm_train(z, gamma, beta, mean_run, var_run, one_arm(), None)
    run = nz._norm_train(z, gamma, beta, mean_run, var_run, one_arm(stat_weight=np.nextafter(1.0, 0)), None)
    assert rel_error(bn[0], run[0]) < F64_TOL
    assert rel_error(nz._norm_backward(dout, gamma, bn[1])[0], nz._norm_backward(dout, gamma, run[1])[0]) < 1e-9


def test_renorm_warmup_schedule():
    """Ioffe 2017's warm-up: r_max = 1, d_max = 0 until `hold`, then linear to the limits, d first."""
    schedule = [0.05, 0.25, 0.4]
    assert nz.renorm_limits(0, 1000, 3.0, 5.0, schedule) == (1.0, 0.0)
    assert nz.renorm_limits(50, 1000, 3.0, 5.0, schedule) == (1.0, 0.0)
    r, d = nz.renorm_limits(150, 1000, 3.0, 5.0, schedule)
    assert abs(r - (1 + 2 * 0.1 / 0.35)) < 1e-12 and abs(d - 5 * 0.5) < 1e-12
    assert nz.renorm_limits(250, 1000, 3.0, 5.0, schedule)[1] == 5.0
    assert nz.renorm_limits(400, 1000, 3.0, 5.0, schedule) == (3.0, 5.0)
    assert nz.renorm_limits(999, 1000, 3.0, 5.0, schedule) == (3.0, 5.0)
    limits = [nz.renorm_limits(s, 1000, 3.0, 5.0, schedule) for s in range(1000)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(limits, limits[1:]))


def test_renorm_during_warmup_is_exactly_batch_norm():
    """With r_max = 1, d_max = 0 batch renorm is batch norm, whatever the running statistics."""
    rng = np.random.default_rng(6)
    z, gamma, beta, mean_run, var_run, dout = layer_inputs(rng)
    bn = nz._norm_train(z, gamma, beta, mean_run, var_run, one_arm(), None)
    held = nz._norm_train(z, gamma, beta, mean_run, var_run, one_arm(renorm=True, r_max=1.0, d_max=0.0), None)
    np.testing.assert_array_equal(bn[0], held[0])
    np.testing.assert_array_equal(nz._norm_backward(dout, gamma, bn[1])[0], nz._norm_backward(dout, gamma, held[1])[0])
    relaxed = nz._norm_train(z, gamma, beta, mean_run, var_run, one_arm(renorm=True, r_max=3.0, d_max=5.0), None)
    assert rel_error(bn[0], relaxed[0]) > 1e-3


def test_running_average_reports_per_batch_size_failures_and_weight_growth():
    result, _ = _run("running-average-bn", 2, **TINY["running-average-bn"])
    m = result["metrics"]
    for arm in nz.RUNNING_ARMS:
        assert m[f"failed_{arm}"] == m[f"failed_{arm}_large"] + m[f"failed_{arm}_small"]
        for size in nz.SIZES:
            assert m[f"weight_growth_{arm}_{size}"] > 0
