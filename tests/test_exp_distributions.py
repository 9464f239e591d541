"""Tests for bnclaims.experiments.distributions (shape vs moments, padded sequences, batch noise)."""

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from bnclaims import data, experiments, model
from bnclaims.experiments import distributions as dist


@pytest.mark.parametrize("shape", ["normal", "exponential", "bimodal", "student-t", "uniform"])
def test_standardized_cdf_matches_the_generator(shape):
    sample = data.shaped_samples(np.random.default_rng(0), shape, 20000, 1)[:, 0]
    result = stats.kstest(sample, lambda z: dist.standardized_cdf(shape, z))
    assert result.statistic < 0.015


def test_population_ks_is_zero_for_normal_and_positive_otherwise():
    assert dist.population_ks("normal") == 0.0
    # Exp(1) - 1 has no mass below -1, where Phi(-1) = 0.1587 is the largest gap
    assert dist.population_ks("exponential") == pytest.approx(stats.norm.cdf(-1.0), abs=1e-6)
    assert all(dist.population_ks(s) > 0.03 for s in dist.SHAPED)


def test_exact_moment_errors_are_within_the_rounding_bound():
    moments, shape = dist.exact_moment_errors(np.random.default_rng(3), 20)
    assert moments < 1 and shape < 1


def test_per_timestep_stats_masked_and_naive_against_a_loop():
    rng = np.random.default_rng(0)
    x, mask, _ = data.padded_sequences(rng, 5, 7, 3, "uniform")
    x, mask = x[None], mask[None]
    for masked in (True, False):
        mean, var, count = dist.per_timestep_stats(x, mask, masked)
        for t in range(7):
            rows = x[0, mask[0, :, t], t] if masked else x[0, :, t]
            if len(rows) == 0:
                assert count[0, t] == 0
                continue
            np.testing.assert_allclose(mean[0, t], rows.mean(0), atol=1e-12)
            np.testing.assert_allclose(var[0, t], rows.var(0), atol=1e-12)
            assert count[0, t] == len(rows)


def test_shape_experiment_returns_names_and_is_deterministic():
    exp = experiments.get("bn-shape-vs-moments")
    params = dict(batch_size=64, features=8, exact_trials=5)
    a = experiments.run_experiment(exp, 1, params)
    assert a == experiments.run_experiment(exp, 1, params)
    assert set(a["metrics"]) == set(exp.metrics) and set(a["series"]) == set(exp.series)
    assert a["metrics"]["ks_after_moments"] < a["metrics"]["ks_before_moments"]
    m = a["metrics"]
    assert m["ks_after_nearest_shape"] == min(m[f"ks_after_{s.replace('-', '_')}"] for s in dist.SHAPED)


def test_sequence_experiment_layer_norm_is_batch_independent():
    exp = experiments.get("padded-sequence-batch-stats")
    params = dict(batch_size=8, max_len=10, features=4, batches=5)
    a = experiments.run_experiment(exp, 2, params)
    assert a == experiments.run_experiment(exp, 2, params)
    assert set(a["metrics"]) == set(exp.metrics)
    assert a["metrics"]["ln_coupling_max"] == 0.0
    assert a["metrics"]["bn_coupling"] > 0.0


def test_sampling_noise_closed_form_for_gaussian_population():
    pre = np.random.default_rng(0).standard_normal((20000, 4))
    sd_m, th_m, sd_v, th_v, _ = dist.sampling_noise(pre, 16, 4000, np.random.default_rng(1))
    np.testing.assert_allclose(sd_m / th_m, 1.0, atol=0.06)
    np.testing.assert_allclose(sd_v / th_v, 1.0, atol=0.06)
    # Gaussian closed form: sd of the biased variance = (B-1)/B * sqrt(2/(B-1))
    np.testing.assert_allclose(th_v, 15 / 16 * math.sqrt(2 / 15), rtol=0.05)


def test_noise_free_control_with_one_batch_per_epoch_is_plain_full_batch_training():
    # the control arm of batch-statistics-noise: statistics of the whole training set (reference rows)
    split = data.digits_split(0.25, 0.2, standardize=True, dtype=np.float32)
    n = len(split.y_train)
    cfg = model.MLPConfig(sizes=(64, 16, 10), norm="batch", dtype="float32")
    control = model.train_stack(np.random.default_rng(5), replace(cfg, reference_rows=n), split.X_train,
                                split.y_train, model.Arm(lr=0.1, momentum=0.9), epochs=3, batch_size=n,
                                X_reference=split.X_train)
    reference = model.train(np.random.default_rng(5), cfg, split.X_train, split.y_train, epochs=3,
                            batch_size=n, lr=0.1, momentum=0.9)
    assert not control.diverged.any()
    for name, value in model.arm_params(control.params, 0).items():
        np.testing.assert_allclose(value, reference.params[name], rtol=1e-4, atol=1e-5)


def test_batch_noise_experiment_tiny_run():
    exp = experiments.get("batch-statistics-noise")
    params = dict(epochs=1, draws=10)
    a = experiments.run_experiment(exp, 3, params)
    assert a == experiments.run_experiment(exp, 3, params)
    assert set(a["metrics"]) == set(exp.metrics) and set(a["series"]) == set(exp.series)
    with pytest.raises(ValueError):
        dist.batch_statistics_noise(np.random.default_rng(0), lr_ghost=[0.1], epochs=1)
