"""Fast checks of bnclaims.experiments.mechanics: the experiments run, return what they declare,
are deterministic, and the identities and gradients they rely on hold."""


import numpy as np
import pytest

from bnclaims import experiments, model, nn
from bnclaims.experiments import mechanics

# Tiny parameters per experiment: enough to exercise every code path in well under a second.
TINY = {
    "batchnorm-moments": {"batch_sizes": [2, 8], "features": 12, "repeats": 1},
    "bn-output-moments-vs-affine": {"stat_epochs": 1, "eval_batch_sizes": [4, 32]},
    "bn-mean-set-by-beta": {"width": 16, "changes": 1, "probe_size": 64, "sweep": [0.01, 0.1]},
    "bn-scalar-vs-per-feature-affine": {"hidden": 8, "epochs": 1, "lrs": [0.03, 0.1]},
    "bn-affine-fold-next-layer": {"hidden": 8, "epochs": 1, "lrs": [0.03, 0.1], "draws": 2},
    "bn-vs-layernorm": {"trials": 2, "sweep": [2, 8]},
    "bn-big-example": {"hidden": 8, "epochs": 1, "scales": [1.0, 16.0, 1e6]},
}


def _run(name, seed=0):
    exp = experiments.get(name)
    return experiments.run_experiment(exp, seed, TINY[name])  # validates names, finiteness, shapes


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_returns_declared_finite_and_is_deterministic(name):
    exp = experiments.get(name)
    assert exp.module == "bnclaims.experiments.mechanics" and exp.doc
    first = _run(name)
    assert set(first["metrics"]) == set(exp.metrics) and set(first["series"]) == set(exp.series)
    assert all(np.isfinite(v) for v in first["metrics"].values())
    assert first == _run(name)  # same seed, same numbers


def test_tiny_overrides_name_real_parameters():
    for name, params in TINY.items():
        assert set(params) <= set(experiments.get(name).params), name


def test_batchnorm_moments_first_metric_is_positive_so_the_scaffold_rule_passes():
    exp = experiments.get("batchnorm-moments")
    first = next(iter(exp.metrics))
    assert first == "configs_checked"
    assert _run("batchnorm-moments")["metrics"][first] == 2 * 2 * 5 * 1  # sizes x dtypes x shapes x repeats


def test_batchnorm_moments_sweep_follows_the_epsilon_formula():
    out = _run("batchnorm-moments")
    ratio = np.array(out["series"]["variance_over_eps"])
    std = np.array(out["series"]["output_std"])
    np.testing.assert_allclose(std, np.sqrt(ratio / (ratio + 1.0)), rtol=1e-9)
    assert out["metrics"]["std_gap_tiny_var"] > 0.29   # var <= eps gives std <= 1/sqrt(2)
    assert out["metrics"]["std_gap_large_var"] < 0.01


def test_mean_error_bound_flags_a_real_error():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    out, cache = nn.batchnorm_forward(x, None, None)
    bound = mechanics._column_mean_error_bound(x, np.abs(out).max(0), cache.inv_std, 1.0, 0.0,
                                               mechanics._roundoff(np.float32))
    assert np.all(np.abs(out.astype(np.float64).mean(0)) < bound)
    assert np.all(1e-3 > bound)                        # the bound is tight enough to catch a 1e-3 error
    assert np.all(np.abs((out + 1e-3).astype(np.float64).mean(0)) > bound)


# ----------------------------------------------------------------------------- digits arms on bnclaims.model


def _digits(n=256):
    from bnclaims import data

    split = data.digits_split(validation_fraction=0.2, standardize=True, dtype=np.float32)
    return split.X_train[:n], split.y_train[:n]


def test_arms_are_paired_and_each_affine_kind_is_what_it_says():
    X, y = _digits()
    res = mechanics._train_arms(np.random.default_rng(0), X, y, ("vector", "scalar", "none"), [0.03, 0.1],
                                hidden=8, epochs=2)
    vec, sca, none = res["vector"], res["scalar"], res["none"]
    # paired: the same initial function (gamma = 1, beta = 0) on the same first batch -> the same first loss
    np.testing.assert_array_equal(vec.losses[:, 0], sca.losses[:, 0])
    np.testing.assert_array_equal(vec.losses[:, 0], none.losses[:, 0])
    assert not any(r.diverged.any() for r in res.values())
    assert np.all(np.ptp(vec.params["gamma0"], axis=-1) > 0)             # per feature: entries move apart
    assert np.all(np.ptp(sca.params["gamma0"], axis=-1) == 0) and np.all(np.ptp(sca.params["beta0"], axis=-1) == 0)
    assert np.all(sca.params["gamma0"] != 1)                              # ... and the one pair does train
    assert "gamma0" not in none.params and none.config.affine is False    # none: identity affine, nothing to train


def test_initial_weights_keep_the_pre_port_scales_and_streams():
    config = mechanics._config(64)
    p = mechanics._initial(np.random.default_rng(5), config)
    z = np.random.default_rng(5)
    w0, w1 = z.standard_normal((64, 64)) * np.sqrt(2 / 64), z.standard_normal((64, 10)) * np.sqrt(1 / 64)
    np.testing.assert_allclose(p["W0"], w0, rtol=1e-6)
    np.testing.assert_allclose(p["W1"], w1, rtol=1e-6)
    assert np.all(p["gamma0"] == 1) and np.all(p["beta0"] == 0) and np.all(p["b1"] == 0)


def test_lr_choice_and_counts_follow_the_model_rules():
    lrs = [0.01, 0.1, 30.0]
    out, chosen = mechanics._arms_on_digits(np.random.default_rng(1), {"affine": "vector", "none": "none"}, lrs, 8, 1, 32)
    for name, kind in (("affine", "vector"), ("none", "none")):
        res, best = chosen[kind]
        assert best == model.select_lr(lrs, out[f"val_acc_{name}_by_lr"], res.diverged)
        assert out[f"log10_lr_{name}"] == np.log10(lrs[best])
        assert np.all(out[f"val_acc_{name}_by_lr"][res.diverged] == 0)
        assert out[f"loss_{name}_by_epoch"].shape == (1,)
    assert out["diverged_runs"] == sum(int(res.diverged.sum()) for res, _ in chosen.values())
    assert set(out) == set(mechanics._lr_arm_outputs({"affine": "", "none": ""})[0]) | set(
        mechanics._lr_arm_outputs({"affine": "", "none": ""})[1])


def test_collapsing_the_per_feature_pairs_is_measured_on_the_same_network():
    out = _run("bn-scalar-vs-per-feature-affine")["metrics"]
    assert -1 <= out["collapse_acc_drop"] <= 1 and out["gamma_cv"] > 0
    assert out["log10_lr_vector"] in np.log10(TINY["bn-scalar-vs-per-feature-affine"]["lrs"])


# ----------------------------------------------------------------------------- identities used by the rules


def test_fold_is_exact_without_relu_and_breaks_with_a_shift_behind_relu():
    rng = np.random.default_rng(0)
    x_hat = nn.batchnorm_forward(rng.standard_normal((32, 6)), None, None)[0]
    W, b = rng.standard_normal((6, 3)), rng.standard_normal(3)
    gamma, beta = rng.uniform(-2, 2, 6), rng.standard_normal(6)
    assert mechanics._fold_error_units(x_hat, gamma, beta, W, b, relu=False) < 1
    assert mechanics._fold_error_units(x_hat, np.abs(gamma) + 0.1, np.zeros(6), W, b, relu=True) < 1
    assert mechanics._fold_error_units(x_hat, gamma, beta, W, b, relu=True) > 1e6


def test_refit_residual_is_zero_for_a_linear_target_and_not_for_a_thresholded_one():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((200, 5))
    y = h @ rng.standard_normal((5, 2)) + 1.0
    assert mechanics._refit_residual(h[:150], y[:150], h[150:], y[150:])[0] < 1e-10
    y2 = np.maximum(h + 0.7, 0) @ rng.standard_normal((5, 2))
    assert mechanics._refit_residual(np.maximum(h[:150], 0), y2[:150], np.maximum(h[150:], 0), y2[150:])[0] > 0.05


def test_big_example_scale_one_changes_nothing_and_eval_mode_never_does():
    out = _run("bn-big-example")
    assert out["series"]["flip_n4"][0] == 0 and out["series"]["flip_n32"][0] == 0
    assert out["metrics"]["eval_flip_max"] == 0
    assert out["series"]["flip_n32"][-1] > 0.5        # x 10^6 collapses the others in training mode


def test_layernorm_ignores_batch_mates_exactly_and_batchnorm_does_not():
    out = _run("bn-vs-layernorm")
    assert out["metrics"]["ln_batchmate_change_units"] == 0
    assert out["metrics"]["bn_batchmate_change"] > 0.01
    assert out["metrics"]["ln_is_bn_transposed_units"] < 1


def test_mean_set_by_beta_control_is_exact_in_eval_mode():
    out = _run("bn-mean-set-by-beta")
    assert out["metrics"]["eval_control_gap"] < 1e-4     # nothing changed: eval mean = beta
    assert out["metrics"]["train_mean_error_units"] < 1
    assert out["metrics"]["eval_gap_params"] > 0.01      # a 10% change moves it


def test_output_moments_training_mode_equals_beta_gamma_for_the_thread_numbers():
    out = _run("bn-output-moments-vs-affine")
    assert out["metrics"]["train_mean_gap"] < 1e-5 and out["metrics"]["train_std_gap"] < 1e-3
    assert out["metrics"]["thread_std_gap"] == pytest.approx(2.68 / 2.33 - 1)


def test_per_feature_layer_has_one_affine_pair_per_feature():
    out = _run("bn-scalar-vs-per-feature-affine")
    assert out["metrics"]["affine_pairs_per_layer"] == TINY["bn-scalar-vs-per-feature-affine"]["hidden"]


def test_hidden_layer_batches_are_normalised_and_the_metric_can_fail():
    out = _run("batchnorm-moments")
    assert out["metrics"]["hidden_std_gap"] < 1e-3 and out["metrics"]["hidden_mean_abs"] < 1e-5
    # the same measurement on a batch with a near-constant pre-activation reports the eps shortfall
    z = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    z[:, 1] *= 1e-3                                     # batch variance ~ 1e-6 < eps
    out_std = nn.batchnorm_forward(z, None, None)[0].astype(np.float64).std(axis=0)
    assert abs(out_std[1] - 1.0) > 0.5 and abs(out_std[0] - 1.0) < 1e-3


def test_scalar_vs_per_feature_dataset_default_is_the_digits_and_augmented_runs():
    name = "bn-scalar-vs-per-feature-affine"
    exp = experiments.get(name)
    assert experiments.run_experiment(exp, 0, {**TINY[name], "dataset": "digits"}) == _run(name)
    augmented = experiments.run_experiment(exp, 0, {**TINY[name], "dataset": "augmented", "lrs": [0.1]})
    assert all(np.isfinite(v) for v in augmented["metrics"].values())
    assert augmented["metrics"]["affine_pairs_per_layer"] == 8
    assert augmented["metrics"]["test_acc_vector"] != _run(name)["metrics"]["test_acc_vector"]
