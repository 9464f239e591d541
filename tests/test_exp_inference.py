"""Tests for bnclaims.experiments.inference (outliers, single examples, covariate shift)."""

import numpy as np
import pytest

from bnclaims import experiments, model, nn, recorders
from bnclaims.experiments import inference as inf


@pytest.fixture(scope="module")
def trained():
    result = inf.train_digits(np.random.default_rng(0), "batch", 0.03, 2)
    return result.params, result.state, result.config


def test_running_bank_matches_nn_update_running_stats():
    rng = np.random.default_rng(0)
    momenta = [0.01, 0.1, 1.0]
    bank = inf.RunningBank(momenta, (5, 3))
    expected = [[(np.zeros(5), np.ones(5)), (np.zeros(3), np.ones(3))] for _ in momenta]
    for _ in range(4):
        record = {"pre0": rng.standard_normal((8, 5)), "pre1": rng.standard_normal((8, 3))}
        bank.update(record, 8)
        for k, m in enumerate(momenta):
            for i in range(2):
                pre = record[f"pre{i}"]
                expected[k][i] = nn.update_running_stats(*expected[k][i], pre.mean(0), pre.var(0), 8, m)
    for k in range(len(momenta)):
        for i in range(2):
            np.testing.assert_allclose(bank.mean[i][k], expected[k][i][0], rtol=1e-12)
            np.testing.assert_allclose(bank.var[i][k], expected[k][i][1], rtol=1e-12)


def test_single_example_batch_statistics_give_one_constant_prediction(trained):
    params, _, cfg = trained
    logits = inf.single_example_batch_stats_logits(params, recorders.digits().X_test[:20], cfg)
    assert np.all(logits == logits[0])


def test_population_state_is_the_training_mode_statistics_of_the_set(trained):
    params, _, cfg = trained
    X = recorders.digits().X_val
    population = model.population_state(params, X, cfg)
    train_mode = model.forward(params, model.init_state(cfg), X, cfg, train=True)[0]
    eval_mode = model.forward(params, population, X, cfg, train=False)[0]
    np.testing.assert_allclose(eval_mode, train_mode, rtol=1e-4, atol=1e-4)


def test_adabn_undoes_an_affine_shift_exactly(trained):
    # x' = a x + b per pixel makes every first-layer pre-activation a * h + c: re-estimated BN removes it
    params, _, cfg = trained
    split = recorders.digits()
    raw = inf._raw(split, split.X_val)
    shifted = inf._standardize(split, inf.shift_images(raw, "affine", contrast=0.5, brightness=0.3))
    clean_logits = model.forward(params, model.population_state(params, split.X_val, cfg), split.X_val, cfg, False)[0]
    shifted_logits = model.forward(params, model.population_state(params, shifted, cfg), shifted, cfg, False)[0]
    np.testing.assert_allclose(shifted_logits, clean_logits, rtol=1e-3, atol=1e-3)


def test_shift_images():
    raw = np.random.default_rng(0).uniform(size=(3, 64))
    np.testing.assert_allclose(inf.shift_images(raw, "affine", contrast=0.5, brightness=0.3), 0.5 * raw + 0.3)
    moved = inf.shift_images(raw, "translate").reshape(3, 8, 8)
    assert np.all(moved[:, :, 0] == 0) and np.array_equal(moved[:, :, 1:], raw.reshape(3, 8, 8)[:, :, :-1])
    assert np.array_equal(inf.shift_images(raw, "clean"), raw)


@pytest.mark.parametrize("name, params", [
    ("bn-outlier-in-batch", dict(epochs=1, magnitudes=[1.0, 2.0, 16.0])),
    ("bn-single-example-inference", dict(epochs=1, warmup_steps=5, test_batches=[4, 450])),
    ("bn-covariate-shift-adabn", dict(epochs=1, severities=[0.0, 1.0])),
])
def test_experiments_return_declared_names_and_are_deterministic(name, params):
    exp = experiments.get(name)
    a = experiments.run_experiment(exp, 11, params)
    assert a == experiments.run_experiment(exp, 11, params)
    assert set(a["metrics"]) == set(exp.metrics) and set(a["series"]) == set(exp.series)


def test_eval_mode_ignores_the_outlier_and_single_examples_match_the_batch():
    out = inf.outlier_in_batch(np.random.default_rng(2), epochs=1, magnitudes=[1.0, 2.0, 16.0])
    assert out["eval_max_change"] < 1e-5
    single = inf.single_example_inference(np.random.default_rng(2), epochs=1, warmup_steps=3, test_batches=[450])
    assert single["max_rel_logit_diff"] < 1e-5
    assert single["acc_single_batchstats"] < 0.2


def test_outlier_magnitudes_must_include_mild_and_extreme():
    with pytest.raises(ValueError):
        inf.outlier_in_batch(np.random.default_rng(0), epochs=1, magnitudes=[1.0, 4.0])


def test_outlier_cost_is_measured_against_training_mode_not_eval_mode():
    # issue 14: the outlier's own cost compares training-mode arms on the same batches; with
    # mild = 1 (the reference arm itself) it must be exactly 0, whatever eval mode gives
    out = inf.outlier_in_batch(np.random.default_rng(3), epochs=1, magnitudes=[1.0, 2.0, 16.0], mild=1.0,
                               extreme=16.0)
    assert out["outlier_cost_mild"] == 0.0
    assert out["outlier_cost_extreme"] == pytest.approx(out["acc_train_clean"] - out["acc_train_extreme"])
    assert out["batch_stats_cost"] == pytest.approx(out["acc_eval"] - out["acc_train_clean"])
    by_k = out["acc_train_by_magnitude"]
    assert out["acc_train_clean"] == by_k[0] and out["acc_train_extreme"] == by_k[2]


def test_affine_strength_interpolates_between_clean_and_the_full_shift():
    assert inf.affine_at_strength(0.0, 0.5, 0.3) == dict(contrast=1.0, brightness=0.0)
    assert inf.affine_at_strength(1.0, 0.5, 0.3) == dict(contrast=0.5, brightness=0.3)
    assert inf.affine_at_strength(0.1, 0.5, 0.3) == pytest.approx(dict(contrast=0.95, brightness=0.03))
    # strength 0: the "affine" domain is the clean one (the headline shift strength is a parameter)
    out = inf.covariate_shift_adabn(np.random.default_rng(4), epochs=1, affine_strength=0.0, severities=[0.0])
    assert out["acc_plain_affine"] == out["acc_plain_clean"] and out["acc_bn_affine"] == out["acc_bn_clean"]
    assert out["drop_bn_affine"] == 0.0 and out["drop_plain_affine"] == 0.0


def test_shift_strength_validation_uses_the_validation_split():
    out = inf.shift_strength_validation(5, [1.0], lr_plain=0.03, lr_bn=0.03, epochs=1)
    assert out["strength"] == [0.0, 1.0] and len(out["plain"]) == len(out["bn"]) == 2
    n_val = len(recorders.digits().y_val)
    assert all(abs(a * n_val - round(a * n_val)) < 1e-6 for a in out["plain"] + out["bn"])


def test_covariate_shift_arch_default_is_the_mlp_and_the_cnn_runs():
    exp = experiments.get("bn-covariate-shift-adabn")
    params = dict(epochs=1, severities=[0.0, 1.0])
    assert experiments.run_experiment(exp, 11, {**params, "arch": "mlp"}) == experiments.run_experiment(exp, 11, params)
    assert isinstance(inf.config("batch", arch="cnn"), model.CNNConfig)
    cnn = experiments.run_experiment(exp, 11, {**params, "arch": "cnn"})
    assert all(np.isfinite(v) for v in cnn["metrics"].values())
    assert cnn["metrics"]["acc_bn_clean"] > 0.15 and cnn["metrics"]["acc_plain_clean"] > 0.15  # above chance (0.1)
    assert cnn != experiments.run_experiment(exp, 11, params)
    with pytest.raises(ValueError):
        inf.config("batch", arch="resnet")


def test_input_scaling_default_is_per_pixel_and_global_moves_with_the_image():
    assert np.array_equal(inf.digits_split("pixel").X_train, recorders.digits().X_train)
    split = inf.digits_split("global")
    assert abs(float(split.X_train.mean())) < 1e-5 and abs(float(split.X_train.std()) - 1.0) < 1e-5
    # one scale for every pixel: a translated image standardizes to the translated standardized image
    moved = inf._standardize(split, inf.shift_images(inf._raw(split, split.X_test), "translate")).reshape(-1, 8, 8)
    np.testing.assert_allclose(moved[:, :, 1:], split.X_test.reshape(-1, 8, 8)[:, :, :-1], atol=1e-6)
    exp = experiments.get("bn-covariate-shift-adabn")
    params = dict(epochs=1, severities=[0.0, 1.0])
    base = experiments.run_experiment(exp, 11, params)
    assert experiments.run_experiment(exp, 11, {**params, "input_scaling": "pixel"}) == base
    scaled = experiments.run_experiment(exp, 11, {**params, "input_scaling": "global"})
    assert all(np.isfinite(v) for v in scaled["metrics"].values()) and scaled != base
    with pytest.raises(ValueError):
        inf.digits_split("none")
