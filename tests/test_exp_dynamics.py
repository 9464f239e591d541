"""Fast checks of bnclaims.experiments.dynamics: training through model.train_stack, the measurements, the experiments."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bnclaims import experiments as registry
from bnclaims import model
from bnclaims.experiments import dynamics as dyn
from bnclaims.recorders import steps_to

EXPERIMENTS = [name for name, exp in registry.load_all().items() if exp.module == dyn.__name__]


DATA = dyn.digits()


def _plan(seed: int, steps: int) -> np.ndarray:
    return model.batch_plan(np.random.default_rng(seed), len(DATA.y_train), 32, steps)


# ----------------------------------------------------------------------------- training through model.train_stack


def test_arms_are_paired_and_trajectories_start_at_the_shared_init():
    """Arms of a stack start from the run's init seed and see one batch plan; an arm inside the stack
    follows exactly the trajectory it has alone; BN and no-norm nets of one size share W."""
    plan = _plan(2, 40)
    both = dyn.train(7, DATA, dyn.mlp(2, 16, True), [0.01, 0.3], plan=plan, trajectory=True)
    alone = dyn.train(7, DATA, dyn.mlp(2, 16, True), [0.3], plan=plan, trajectory=True)
    assert both.gamma[1].shape == (41, 2, 16) and np.all(both.gamma[0][0] == 1) and np.all(both.beta[0][0] == 0)
    np.testing.assert_array_equal(both.gamma[1][:, 1], alone.gamma[1][:, 0])
    assert not np.allclose(both.gamma[1][-1, 0], both.gamma[1][-1, 1])
    plain = dyn.train(7, DATA, dyn.mlp(2, 16, False), [0.3], plan=plan)
    assert all(np.array_equal(both.init[f"W{i}"], plain.init[f"W{i}"]) for i in range(3))


def test_a_diverged_arm_records_nan_afterwards_and_scores_zero():
    plan = _plan(3, 60)
    probe = DATA.X_train[:50]
    run = dyn.train(5, DATA, dyn.mlp(3, 32, False), [0.05, 1e4], plan=plan, probe=probe, eval_every=10)
    assert run.diverged.tolist() == [False, True]
    assert run.val_acc[1] == 0.0 and run.test_acc[1] == 0.0 and run.val_acc[0] > 0.3
    mean, std = run.probe["pre0"]
    step = run.result.taken[1]                 # recorded after `step` updates: NaN from the diverging step on
    assert np.isfinite(mean[:step, 1]).all() and np.isnan(mean[step:, 1]).all() and np.isfinite(std[:, 0]).all()
    assert np.all(run.curve[run.eval_steps >= step, 1] == 0) and np.isfinite(run.curve).all()


def test_momentum_arm_with_zero_momentum_equals_sgd():
    plan = _plan(4, 30)
    mixed = dyn.train(9, DATA, dyn.mlp(2, 16, True), [0.1, 0.1], [0.0, 0.9], plan=plan, trajectory=True)
    sgd = dyn.train(9, DATA, dyn.mlp(2, 16, True), [0.1], plan=plan, trajectory=True)
    np.testing.assert_array_equal(mixed.beta[0][:, 0], sgd.beta[0][:, 0])
    assert not np.allclose(mixed.beta[0][-1, 0], mixed.beta[0][-1, 1])


def test_block_averages_and_probe_moments_are_what_the_trajectory_says():
    plan = _plan(6, 25)
    probe = DATA.X_train[:40]
    run = dyn.train(1, DATA, dyn.mlp(2, 8, True), [0.05, 0.5], plan=plan, trajectory=True, probe=probe, block=5)
    blocks = run.blocks["gamma1"]
    assert blocks.shape == (5, 2, 8) and run.blocks["W0"].shape == (5, 2, 64, 8)
    for b in range(5):
        np.testing.assert_allclose(blocks[b], run.gamma[1][1 + 5 * b: 6 + 5 * b].mean(axis=0), rtol=1e-6)
    # the probe moments start before training: the BN input's mean on the probe is probe @ W0 (+ b0 = 0)
    mean, std = run.probe["pre0"]
    assert mean.shape == (26, 2, 8)
    np.testing.assert_allclose(mean[0, 0], (probe @ run.init["W0"]).mean(axis=0), atol=1e-5)
    # in training mode on the probe, BN's output mean is beta and its std |gamma| (up to eps)
    out_mean, out_std = run.probe["norm1"]
    np.testing.assert_allclose(out_mean[-1], run.beta[1][-1], atol=1e-5)
    np.testing.assert_allclose(out_std[-1], np.abs(run.gamma[1][-1]), rtol=1e-3)


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


def test_probe_drift_and_relative_step():
    mean = np.array([[[0.0, 0.0]], [[0.1, -0.1]], [[0.1, -0.1]]])   # (T + 1 = 3, A = 1, D = 2)
    std = np.array([[[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 1.5]]])
    np.testing.assert_allclose(dyn.probe_drift(mean, std)[:, 0], [0.2 / 2, 0.5 / 2])
    gamma = np.array([[[2.0]], [[2.2]], [[2.0]]])
    assert dyn.relative_step(gamma, gamma)[0] == pytest.approx(0.2 / (6.2 / 3))


def test_steps_to_target_and_log_slope():
    curve = np.array([[0.5, 0.5], [0.95, 0.6], [0.97, 0.7]])
    steps = steps_to(curve.T, np.array([10, 20, 30]), 0.9, never=99)
    assert steps.tolist() == [20.0, 99.0]
    lr = np.array([0.001, 0.01, 0.1])
    assert dyn.log_slope(lr, 5 * lr ** 0.75) == pytest.approx(0.75)
    assert np.isnan(dyn.log_slope(lr, np.array([1.0, np.nan, np.nan])))


def test_a_bn_layer_with_gamma_sigma_beta_mu_is_the_identity():
    """The fact the cancel experiment relies on: gamma = sigma, beta = mu makes BN the identity."""
    rng = np.random.default_rng(5)
    config = replace(dyn.mlp(2, 6, True, d_in=4), dtype="float64")
    params = model.init_stack([np.random.default_rng(s) for s in (1, 2)], config)
    for name in params:                             # every parameter random, biases too
        params[name] = rng.standard_normal(params[name].shape)
    X = rng.standard_normal((200, 4))
    for i in range(2):                              # set each layer, in order, to undo itself
        means, stds = dyn.population_moments(params, config, X)
        params[f"gamma{i}"] = np.sqrt(stds[i] ** 2 + config.eps)[:, None, :]
        params[f"beta{i}"] = means[i][:, None, :]
    scale, shift = dyn.identity_mismatch(params, config, X)
    assert scale.shape == (2, 12) and scale.max() < 1e-4 and shift.max() < 1e-12
    np.testing.assert_allclose(dyn.forward_population(params, config, X, X), dyn.forward_bn_removed(params, config, X),
                               rtol=1e-9, atol=1e-9)
    # at initialization (gamma = 1, beta = 0) of a single network: one value per unit
    single = model.init_params(np.random.default_rng(0), config)
    assert dyn.identity_mismatch(single, config, X)[0].shape == (12,)


def test_lr_name():
    assert [dyn.lr_name(v) for v in (0.1, 0.03, 1.0, 10.0)] == ["lr0p1", "lr0p03", "lr1", "lr10"]


# ----------------------------------------------------------------------------- registered experiments


TINY = {"epochs": 1, "width": 16, "check_epochs": 1, "batches": 300}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_returns_declared_finite_names_deterministically(name):
    exp = registry.get(name)
    params = {k: v for k, v in TINY.items() if k in exp.params}
    first = registry.run_experiment(exp, 11, params)     # raises on missing/undeclared/non-finite
    again = registry.run_experiment(exp, 11, params)
    assert set(first["metrics"]) == set(exp.metrics) and set(first["series"]) == set(exp.series)
    assert first == again
    other = registry.run_experiment(exp, 12, params)
    assert other["metrics"] != first["metrics"]


def test_all_six_experiments_are_registered():
    assert sorted(EXPERIMENTS) == sorted([
        "bn-vs-plain-probe-drift", "gamma-beta-step-vs-lr", "gamma-beta-lr-order-grid", "gamma-beta-settling",
        "bn-cancel-check", "first-layer-update-sources",
    ])


def test_unit_settling_treats_each_gamma_beta_pair_as_its_own_parameter():
    """Per unit, `unit_settling` is `settle_fraction` of that unit's (gamma, beta) pair alone."""
    rng = np.random.default_rng(3)
    k, arms, d = 40, 2, 5
    blocks = {"gamma0": 1 + np.cumsum(rng.normal(0.02, 0.01, (k, arms, d)), axis=0),
              "beta0": np.cumsum(rng.normal(-0.01, 0.01, (k, arms, d)), axis=0)}
    init = {"gamma0": np.ones((arms, d)), "beta0": np.zeros((arms, d))}
    settle, way, wobble = dyn.unit_settling(blocks, init, 1, [0])
    for j in range(d):
        pair = np.stack([blocks["gamma0"][:, 1, j], blocks["beta0"][:, 1, j]], axis=-1)[:, None, :]
        assert settle[j] == dyn.settle_fraction(pair, np.array([[1.0, 0.0]]))[0]
        final = pair[-10:, 0].mean(axis=0)        # the last quarter of 40 blocks
        assert way[j] == pytest.approx(np.linalg.norm(final - [1.0, 0.0]))
    assert np.all(wobble >= 0)


def test_unit_outputs_rank_way_against_settling_and_fall_back_when_few_units_move():
    way = np.linspace(0.1, 1.6, 32)
    later = dyn.unit_outputs(np.linspace(0.2, 0.9, 32), way, np.zeros(32))    # farther = later
    assert later["unit_settle_rho_lr0p1"] == pytest.approx(1.0)
    assert later["unit_settle_far_lr0p1"] == pytest.approx(np.linspace(0.2, 0.9, 32)[-8:].mean())
    assert later["unit_settle_near_lr0p1"] == pytest.approx(np.linspace(0.2, 0.9, 32)[:8].mean())
    assert later["unit_way_far_over_near_lr0p1"] == pytest.approx(way[-8:].mean() / way[:8].mean())
    assert later["unit_count_lr0p1"] == 32 and len(later["unit_settle_by_way"]) == dyn.UNIT_BINS
    sooner = dyn.unit_outputs(np.linspace(0.9, 0.2, 32), way, np.zeros(32))
    assert sooner["unit_settle_rho_lr0p1"] == pytest.approx(-1.0)
    # units whose way is under 10x their wobble are left out; too few left: finite "no relation" values
    wobble = np.where(np.arange(32) < 20, 1.0, 0.0)
    few = dyn.unit_outputs(np.linspace(0.2, 0.9, 32), way, wobble)
    assert few["unit_count_lr0p1"] == 12 and few["unit_settle_rho_lr0p1"] == 0.0
    assert few["unit_settle_far_lr0p1"] == few["unit_settle_near_lr0p1"] == 1.0
    assert np.isnan(few["unit_settle_by_way"]).all()


# ----------------------------------------------------------------------------- first-layer updates, batch by batch


def test_held_out_r2_is_one_for_an_exact_linear_map_and_near_zero_for_unrelated_predictors():
    rng = np.random.default_rng(0)
    predictors = rng.standard_normal((600, 5))
    target = predictors @ rng.standard_normal((5, 40)) + 3.0
    assert dyn.held_out_r2(target, predictors, 400) == pytest.approx(1.0, abs=1e-12)
    assert abs(dyn.held_out_r2(rng.standard_normal((600, 40)), predictors, 400)) < 0.05


def test_first_layer_gradients_are_each_batch_s_own_gradient():
    """Row b is the first layer's weight gradient of a training-mode step on batch b alone (plain and BN)."""
    rng = np.random.default_rng(1)
    batches = np.argsort(rng.random((7, len(DATA.y_train))), axis=1)[:, :32]
    for norm in (False, True):
        config = dyn.mlp(2, 16, norm)
        params = model.init_params(np.random.default_rng(2), config)
        G = dyn.first_layer_gradients(params, config, DATA.X_train, DATA.y_train, batches, chunk=3)
        for b, rows in enumerate(batches):
            grads = model.loss_and_grads(params, model.init_state(config), DATA.X_train[rows], DATA.y_train[rows],
                                         config)[1]
            np.testing.assert_allclose(G[b], grads["W0"].ravel(), rtol=1e-5, atol=1e-7)


def test_batch_share_matches_sampling_without_replacement():
    """Without normalization G_b is the mean of per-example gradients g_i over n distinct rows, so
    E||G_b - g_bar||^2 = (N - n) / (n (N - 1)) * mean_i ||g_i - g_bar||^2: the measured share agrees."""
    config = dyn.mlp(1, 8, False)
    params = model.init_params(np.random.default_rng(3), config)
    X, y = DATA.X_train[:200], DATA.y_train[:200]
    per_example = dyn.first_layer_gradients(params, config, X, y, np.arange(200)[:, None])
    g_bar = per_example.mean(axis=0)
    n, N = 16, 200
    noise = (N - n) / (n * (N - 1)) * np.mean(np.square(per_example - g_bar).sum(axis=1))
    expected = noise / (noise + g_bar @ g_bar)
    batches = np.argsort(np.random.default_rng(4).random((4000, N)), axis=1)[:, :n]
    share = dyn.update_sources(params, config, X, y, batches, dyn.batch_statistics(X, y, batches), 3000)[0]
    assert share == pytest.approx(expected, rel=0.05)


def test_with_batch_norm_the_batch_input_mean_drops_out_of_the_first_layer_update():
    """BN after the first layer passes back dZ with zero column sums, so X^T dZ = (X - mean)^T dZ: shifting
    every input of a batch by one vector leaves the first-layer gradient unchanged (float64, up to rounding);
    without normalization it changes."""
    rows = np.random.default_rng(5).choice(len(DATA.y_train), size=(3, 32), replace=False)
    X = DATA.X_train.astype(np.float64)
    shift = np.random.default_rng(6).standard_normal(X.shape[1])
    for norm, unchanged in ((True, True), (False, False)):
        config = replace(dyn.mlp(2, 16, norm), dtype="float64")
        params = model.init_params(np.random.default_rng(7), config)
        G = dyn.first_layer_gradients(params, config, X, DATA.y_train, rows)
        G_shifted = dyn.first_layer_gradients(params, config, X + shift, DATA.y_train, rows)
        assert np.allclose(G_shifted, G, rtol=1e-9, atol=1e-12) == unchanged
