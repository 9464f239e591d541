"""Tests of bnclaims.experiments.why: the measurements (exact identities, ICS, drift, coupling), the
pairing of the arms, and every experiment at tiny sizes. The network and its training loop are
`bnclaims.model`'s (tested in test_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import experiments, model
from bnclaims.experiments import why


def _tiny(rng, config: model.MLPConfig, arms=2):
    """Stacked float64 parameters with non-trivial biases, gamma and beta."""
    params = model.init_stack([rng] * arms, config)
    for name in params:
        if not name.startswith("W"):
            params[name] = params[name] + 0.3 * rng.standard_normal(params[name].shape)
    return params


def _config(norm="batch", sizes=(5, 6, 4, 3), **options):
    return model.MLPConfig(sizes=sizes, norm=norm, dtype="float64", **options)


# ----------------------------------------------------------------------------- exact identities

def test_matching_bn_params_compute_the_plain_function_exactly():
    rng = np.random.default_rng(4)
    plain_cfg = _config("none")
    plain = _tiny(rng, plain_cfg)
    stats_x, x = rng.standard_normal((16, 5)), rng.standard_normal((10, 5))
    bn = why.matching_bn_params(plain, stats_x, plain_cfg)
    fixed = _config(reference_rows=16)
    got = model.forward(bn, model.init_stack_state(fixed, 2), np.concatenate([stats_x, x]), fixed)[0][:, 16:]
    ref = model.forward(plain, {}, x, plain_cfg)[0]
    assert np.abs(got - ref).max() <= 1e3 * np.finfo(np.float64).eps * np.abs(ref).max()


def test_bn_is_invariant_to_rescaling_the_first_layer_and_plain_is_not():
    rng = np.random.default_rng(5)
    bn_cfg, plain_cfg = _config(sizes=(5, 6, 6, 3)), _config("none", sizes=(5, 6, 6, 3))
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    assert why.rescale_error(rng, _tiny(rng, bn_cfg, 1), bn_cfg, x, y, trials=10) < 1e3
    assert why._plain_rescale_change(rng, _tiny(rng, plain_cfg, 1), plain_cfg, x, y) > 0.1


def test_gradient_ics_is_zero_when_the_layers_below_do_not_move():
    rng = np.random.default_rng(6)
    config = _config()
    params = _tiny(rng, config)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    grads = why._view(params, config, x, y)[1]
    rel, cos = why.gradient_ics(params, params, grads, x, y, config)
    assert rel.shape == cos.shape == (2, 2)
    assert np.abs(rel).max() == 0.0 and np.allclose(cos, 1.0, atol=1e-14)
    after = {name: value - 0.5 * grads[name] for name, value in params.items()}
    rel, cos = why.gradient_ics(params, after, grads, x, y, config)
    assert (rel > 0).all() and (cos < 1).all()


def test_gradient_ics_moves_only_the_layers_below():
    """G' of layer i is the gradient with layers < i from `after` and the rest from `before`."""
    rng = np.random.default_rng(9)
    config = _config("none")
    before, after = _tiny(rng, config), _tiny(rng, config)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    grads = why._view(before, config, x, y)[1]
    moved = dict(before, W0=after["W0"], b0=after["b0"])
    expected = why._view(moved, config, x, y)[1]["W1"]
    rel, _ = why.gradient_ics(before, after, grads, x, y, config)
    g = grads["W1"]
    np.testing.assert_allclose(rel[:, 0], np.linalg.norm(g - expected, axis=(1, 2)) / np.linalg.norm(g, axis=(1, 2)))


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


def test_coupling_response_is_zero_along_no_direction_and_scales_out_delta():
    rng = np.random.default_rng(10)
    config = _config()
    params = _tiny(rng, config)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    directions = [rng.standard_normal(params["W0"].shape)]
    small = why.coupling_response(params, config, directions, x, y, 1e-6)
    smaller = why.coupling_response(params, config, directions, x, y, 1e-7)
    np.testing.assert_allclose(small, smaller, rtol=1e-3)          # an elasticity: linear in delta
    assert np.all(np.asarray(small) > 0)


def test_steps_to_target():
    curve = np.array([[0.1, 0.5, 0.96, 0.9], [0.1, 0.2, 0.3, 0.4]])
    out = why.steps_to(curve, np.array([0, 5, 10, 15]), 0.95)
    assert out[0] == 10 and np.isnan(out[1])


# ----------------------------------------------------------------------------- pairing, evaluation, checkpoints

def test_plain_and_bn_runs_start_equal_and_see_the_plan_batches():
    split = why.digits()
    init = why.paired_init(np.random.default_rng(8), [8])
    assert np.array_equal(init["none"]["W0"], init["batch"]["W0"]) and "gamma0" in init["batch"]
    plan = model.batch_plan(np.random.default_rng(9), len(split.y_train), 16, 3)
    seen = {}

    def hook_for(name):
        def hook(step, info):
            seen.setdefault(name, []).append((info.params_before["W0"].copy() if step == 0 else None, info.y.copy()))
        return hook

    for norm in ("none", "batch"):
        why.train_on_plan(why.mlp([8], norm), split.X_train, split.y_train, [0.1, 0.2], plan, init[norm], record=hook_for(norm))
    for (w_plain, y_plain), (w_bn, y_bn), index in zip(seen["none"], seen["batch"], plan):
        assert np.array_equal(y_plain, y_bn) and np.array_equal(y_plain[0], split.y_train[index])
    assert np.array_equal(seen["none"][0][0][1], init["none"]["W0"]) and np.array_equal(seen["batch"][0][0][0], init["none"]["W0"])


def test_precise_bn_inference_matches_training_mode_on_the_statistics_set():
    rng = np.random.default_rng(11)
    config = _config()
    params = _tiny(rng, config)
    X = rng.standard_normal((20, 5))
    train_logits = model.forward(params, model.init_stack_state(config, 2), X, config, True)[0]
    np.testing.assert_allclose(why.eval_logits(params, config, X, X), train_logits, rtol=1e-10, atol=1e-10)


def test_a_diverged_arm_scores_zero_and_checkpoints_pad_with_dead():
    rng = np.random.default_rng(12)
    config = _config()
    params = _tiny(rng, config)
    X, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    acc = why.eval_accuracy(params, config, X, y, X, np.array([True, False]))
    assert acc[0] > 0 and acc[1] == 0.0
    split = why.digits()
    cfg = why.mlp([8])
    hook = why.Checkpoints(2, lambda i, p, alive: why.eval_accuracy(p, cfg, split.X_val, split.y_val, split.X_val,
                                                                   alive), dead=0.0)
    plan = model.batch_plan(rng, len(split.y_train), 16, 6)
    result = why.train_on_plan(cfg, split.X_train, split.y_train, [0.1, 1e6], plan, model.init_params(rng, cfg), record=hook)
    curve = hook.values(4)
    assert result.diverged.tolist() == [False, True]
    assert curve.shape == (4, 2) and curve[-1, 1] == 0.0 and curve[-1, 0] > 0


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


def test_exact_metrics_hold_at_tiny_sizes():
    coupling = experiments.run_experiment(experiments.get("layer-coupling"), 0, TINY["layer-coupling"])["metrics"]
    assert coupling["rescale_error_bn"] < 1e3 and coupling["rescale_change_plain"] > 0.1
    affine = experiments.run_experiment(experiments.get("affine-reparametrization"), 0,
                                        TINY["affine-reparametrization"])["metrics"]
    assert affine["init_error_eps"] < 1e3


def test_early_and_late_moment_drift_are_the_two_halves_of_the_drift_curve():
    out = experiments.run_experiment(experiments.get("layer-input-drift"), 1,
                                     dict(hidden=[8, 8], steps=40, check_every=10))
    metrics, series = out["metrics"], out["series"]
    for net in ("bn", "plain"):
        for speed in why.SPEEDS:
            curve = np.asarray(series[f"drift_curve_{net}_{speed}"], dtype=np.float32)   # as measured
            assert len(curve) == 4
            assert metrics[f"moment_drift_early_{net}_{speed}"] == curve[:2].mean()
            assert metrics[f"moment_drift_late_{net}_{speed}"] == curve[2:].mean()
            assert metrics[f"moment_drift_{net}_{speed}"] == pytest.approx(curve.mean())


def test_jitter_sweep_mode_chooses_from_the_grid():
    exp = experiments.get("ghost-batch-jitter")
    out = experiments.run_experiment(exp, 0, dict(hidden=[8], n_per_class=8, steps=10, lr_grid=[0.1, 0.4],
                                                  low_lr=0.1))["metrics"]
    assert {out[f"lr_{a}"] for a in why.JITTER_ARMS} <= {0.1, 0.4}
    with pytest.raises(ValueError, match="one learning rate per arm"):
        experiments.run_experiment(exp, 0, dict(hidden=[8], n_per_class=8, steps=2, lrs=[0.1]))


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


# ----------------------------------------------------------------------------- scale params (a claim's ladder)

SCALED = {"training-speed": dict(TINY["training-speed"], target=0.3),
          "ghost-batch-jitter": dict(TINY["ghost-batch-jitter"], hidden=[8, 8])}


@pytest.mark.parametrize("name", sorted(SCALED))
def test_scale_params_default_to_the_unscaled_experiment(name):
    exp = experiments.get(name)
    default = experiments.run_experiment(exp, 5, SCALED[name])
    assert experiments.run_experiment(exp, 5, dict(SCALED[name], dataset="digits", residual=False)) == default


@pytest.mark.parametrize("name", sorted(SCALED))
@pytest.mark.parametrize("scale", [dict(dataset="augmented"), dict(residual=True),
                                   dict(dataset="augmented", hidden=[8] * 6)])
def test_augmented_deep_and_residual_runs_give_finite_metrics(name, scale):
    exp = experiments.get(name)
    out = experiments.run_experiment(exp, 5, dict(SCALED[name], **scale))   # raises on a NaN/inf metric
    assert set(out["metrics"]) == set(exp.metrics)
    assert out != experiments.run_experiment(exp, 5, SCALED[name])


def test_training_speed_runs_the_digits_cnn_with_spatial_batch_norm():
    exp = experiments.get("training-speed")
    params = dict(SCALED["training-speed"], arch="cnn", hidden=[4, 8])
    out = experiments.run_experiment(exp, 5, params)   # raises on a NaN/inf metric
    assert out == experiments.run_experiment(exp, 5, params)
    assert out != experiments.run_experiment(exp, 5, dict(params, arch="mlp"))
