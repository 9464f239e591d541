"""Tests of bnclaims.experiments.noise: the injected noise (exact properties, law, common random
numbers) and its wiring into `model.train_stack`, the precise-BN inference, the per-kind network
configurations, and each experiment at tiny scale (all declared names, finite, deterministic for a
fixed seed). The layers themselves are `bnclaims.nn`'s, tested in tests/test_nn.py."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments, model
from bnclaims.experiments import noise as nz


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(a) + np.abs(b))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


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


def test_precise_logits_is_training_mode_batch_norm_on_the_statistics_rows():
    """Precise BN over the first M rows = population statistics of those rows in eval mode, and with
    the noise at its mean = gamma scaled by E[s]."""
    rng = np.random.default_rng(2)
    cfg = nz.config([6, 5, 5, 3], "noisy")
    params = model.stack_params([model.init_params(rng, cfg)] * 2)
    params["gamma0"] = params["gamma0"] * np.float32(1.3)
    x = rng.normal(size=(11, 6)).astype(np.float32)
    state = model.population_state(params, x[:7], cfg)
    eval_logits, _, _ = model.forward(params, state, x, cfg, False)
    assert rel_error(nz.precise_logits(params, cfg, x, 7), eval_logits) < 50 * np.finfo(np.float32).eps
    arms = nz.Arms.concat(nz.Arms.make([0.1]), nz.Arms.make([0.1], noise=True, scale_spread=1.5))
    scaled = {k: v * nz.mean_noise_scale(arms) if k.startswith("gamma") else v for k, v in params.items()}
    state = model.population_state(scaled, x[:7], cfg)
    eval_logits, _, _ = model.forward(scaled, state, x, cfg, False)
    logits = nz.precise_logits(params, cfg, x, 7, nz.mean_noise_scale(arms))
    assert rel_error(logits, eval_logits) < 50 * np.finfo(np.float32).eps
    assert rel_error(logits[0], nz.precise_logits(params, cfg, x, 7)[0]) == 0   # noise off: unchanged


def test_common_noise_feeds_train_stack_and_noise_off_is_batch_norm():
    """The noise is drawn per layer and step from one Generator (shared by the arms); an arm with the
    noise off trains exactly as batch norm does."""
    split = nz.digits()
    X, y = split.X_train[:64], split.y_train[:64]
    arms = nz.Arms.concat(nz.Arms.make([0.1]), nz.Arms.make([0.1], noise=True))
    cfg = nz.config([64, 8, 8, 10], "noisy")
    params = model.init_params(np.random.default_rng(0), cfg)
    plan = model.batch_plan(np.random.default_rng(1), len(y), 16, 6)
    kw = dict(steps=6, batch_size=16, plan=plan, params=params)
    noisy = model.train_stack(np.random.default_rng(0), cfg, X, y, [model.Arm(lr=float(lr)) for lr in arms.lr],
                              noise=nz.CommonNoise(np.random.default_rng(5), arms), **kw)
    bn = model.train_stack(np.random.default_rng(0), nz.config([64, 8, 8, 10], "batch"), X, y,
                           [model.Arm(lr=0.1)], **kw)
    assert "b0" not in noisy.params                                        # normalized nets: no hidden bias
    assert rel_error(noisy.losses[0], bn.losses[0]) < 1e-5
    assert rel_error(noisy.losses[1, 1:], bn.losses[0, 1:]) > 1e-3
    again = model.train_stack(np.random.default_rng(0), cfg, X, y, [model.Arm(lr=float(lr)) for lr in arms.lr],
                              noise=nz.CommonNoise(np.random.default_rng(5), arms), **kw)
    np.testing.assert_array_equal(noisy.losses, again.losses)


def test_running_configs_are_the_claimed_variants():
    sizes = [64, 8, 10]
    cfgs = {kind: nz.running_config(sizes, kind, 0.1, 0.01, 3.0, 5.0, [0.05, 0.25, 0.4]) for kind in nz.RUNNING_ARMS}
    assert cfgs["bn"].norm == "batch" and cfgs["bn"].momentum == nz.EMA_MOMENTUM
    assert (cfgs["ewa_grad"].norm, cfgs["ewa_grad"].momentum, cfgs["ewa_grad"].grad_through_stats) == ("running", 0.1, True)
    assert (cfgs["ewa_const"].momentum, cfgs["ewa_const"].grad_through_stats) == (0.1, False)
    assert (cfgs["slow_ewa_grad"].momentum, cfgs["slow_ewa_const"].grad_through_stats) == (0.01, False)
    assert cfgs["renorm"].renorm_warmup == (0.05, 0.25, 0.4) and cfgs["renorm"].r_max == 3.0
    assert not any(c.hidden_bias for c in cfgs.values())
    assert model.renorm_limits(cfgs["renorm"], 0, 1000) == (1.0, 0.0)    # warm-up starts as batch norm


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


def test_running_average_reports_per_batch_size_failures_and_weight_growth():
    result, _ = _run("running-average-bn", 2, **TINY["running-average-bn"])
    m = result["metrics"]
    for arm in nz.RUNNING_ARMS:
        assert m[f"failed_{arm}"] == m[f"failed_{arm}_large"] + m[f"failed_{arm}_small"]
        for size in nz.SIZES:
            assert m[f"weight_growth_{arm}_{size}"] > 0


# ----------------------------------------------------------------------------- scale params (a claim's ladder)

SCALED = dict(TINY["running-average-bn"], hidden=[8, 8])


def test_running_average_scale_params_default_to_the_unscaled_experiment():
    default, _ = _run("running-average-bn", 5, **SCALED)
    again, _ = _run("running-average-bn", 5, **SCALED, dataset="digits", residual=False)
    assert again == default


@pytest.mark.parametrize("scale", [dict(dataset="augmented"), dict(residual=True),
                                   dict(dataset="augmented", hidden=[8] * 6)])
def test_running_average_augmented_deep_and_residual_runs_give_finite_metrics(scale):
    out, exp = _run("running-average-bn", 5, **dict(SCALED, **scale))   # raises on a NaN/inf metric
    assert set(out["metrics"]) == set(exp.metrics)
    assert out != _run("running-average-bn", 5, **SCALED)[0]
