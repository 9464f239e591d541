"""Tests for bnclaims.model's CNN (CNNConfig): gradients, pairing, stacking, recorders, training."""

import dataclasses
import math

import numpy as np
import pytest

from bnclaims import data, model, nn
from bnclaims.model import CNNConfig

from test_model import _same_result, assert_grads_close, numerical_grads

DIGITS = data.digits_split(dtype=np.float32)
SMALL = dict(image=(2, 5, 5), channels=(4, 6), groups=2, dtype="float64")   # 50 input columns


def _check_gradients(config: CNNConfig, train: bool, seed: int = 0, n: int = 6):
    """Every parameter's gradient of the full network's loss against float64 central differences."""
    rng = np.random.default_rng(seed)
    params = model.init_params(rng, config)
    for name in params:   # gamma/beta/b away from 1/0 so every term of the gradient matters
        if not name.startswith("W"):
            params[name] += rng.normal(0, 0.3, params[name].shape)
    state = {name: rng.normal(0, 0.5, v.shape) if "mean" in name else rng.uniform(0.5, 2.0, v.shape)
             for name, v in model.init_state(config).items()}
    x = rng.standard_normal((n, config.sizes[0]))
    y = rng.integers(0, config.classes, n)

    def loss_fn():
        return nn.softmax_cross_entropy(model.forward(params, state, x, config, train)[0], y)[0]

    logits, tape, _ = model.forward(params, state, x, config, train)
    analytic = model.backward(nn.softmax_cross_entropy(logits, y)[1], tape)
    assert analytic.keys() == params.keys()
    assert_grads_close(analytic, numerical_grads(loss_fn, params))


@pytest.mark.parametrize("norm", model.CNN_NORMS)
@pytest.mark.parametrize("strides", [(1, 1), (1, 2), (2, 1)])
@pytest.mark.parametrize("train", [True, False])
def test_cnn_gradients_match_finite_differences(norm, strides, train):
    """tanh: no kinks for the finite differences; every norm, stride and mode."""
    _check_gradients(CNNConfig(**SMALL, norm=norm, strides=strides, activation="tanh"), train)


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_relu_cnn_gradients_match_finite_differences(norm, seed):
    _check_gradients(CNNConfig(**SMALL, norm=norm), True, seed)
    _check_gradients(CNNConfig(**SMALL, norm=norm, affine=False, kernel=1), True, seed)


def test_cnn_parameters_records_and_configuration():
    config = CNNConfig(strides=(1, 2))
    assert config.sizes == (64, 16, 32, 10) and config.weight_shapes == ((9, 16), (144, 32), (32, 10))
    params = model.init_params(np.random.default_rng(0), config)
    assert {name: p.shape for name, p in params.items()} == {
        "W0": (9, 16), "b0": (16,), "gamma0": (16,), "beta0": (16,), "W1": (144, 32), "b1": (32,),
        "gamma1": (32,), "beta1": (32,), "W2": (32, 10), "b2": (10,)}
    assert all(p.dtype == np.float32 for p in params.values())
    np.testing.assert_allclose(params["W1"].std(), math.sqrt(2 / 144), rtol=0.1)   # He, fan_in = C_in k k
    plain = model.init_params(np.random.default_rng(0), dataclasses.replace(config, norm="none"))
    for name in plain:                       # the same draws for every norm
        assert np.array_equal(plain[name], params[name])
    assert set(model.init_state(config)) == {"running_mean0", "running_var0", "running_mean1", "running_var1"}
    record: dict = {}
    logits, _, _ = model.forward(params, model.init_state(config), DIGITS.X_train[:8], config, record=record)
    assert logits.shape == (8, 10) and logits.dtype == np.float32
    # channels-last rows: per-channel moments over examples x positions (stride 2: 4x4 positions)
    assert record["pre0"].shape == (8 * 64, 16) and record["act1"].shape == (8 * 16, 32)
    assert record["pool"].shape == (8, 32)
    np.testing.assert_allclose(record["pool"], record["act1"].reshape(8, 16, 32).mean(axis=1), rtol=1e-5, atol=1e-6)
    for bad in (dict(norm="ghost"), dict(norm="group", groups=5), dict(strides=(1,)), dict(kernel=2),
                dict(image=(8, 8))):
        with pytest.raises(ValueError, match="CNNConfig"):
            CNNConfig(**bad)
    with pytest.raises(ValueError, match="flat rows"):
        model.forward(params, {}, np.zeros((4, 8, 8), np.float32), config)
    with pytest.raises(ValueError, match="CNN"):
        model.hessian_vector_product(params, DIGITS.X_train[:4], DIGITS.y_train[:4], config)


def test_cnn_norms_normalize_what_they_say():
    """Batch: per channel over N x H x W; layer: per example over C x H x W; group: per example
    and group of channels (gamma = 1, beta = 0: mean 0 and variance ~1 there)."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (12, 50))
    for norm, axes in (("batch", (0, 2, 3)), ("layer", (1, 2, 3)), ("group", (2, 3, 4))):
        config = CNNConfig(**SMALL, norm=norm, activation="linear")
        record: dict = {}
        model.forward(model.init_params(rng, config), model.init_state(config), x, config, record=record)
        normed = record["norm0"].reshape(12, 5, 5, 4).transpose(0, 3, 1, 2)          # (N, C, H, W)
        if norm == "group":
            normed = normed.reshape(12, 2, 2, 5, 5)                                 # (N, G, C/G, H, W)
        np.testing.assert_allclose(normed.mean(axis=axes), 0, atol=1e-12)
        np.testing.assert_allclose(normed.var(axis=axes), 1, rtol=1e-3)


def test_cnn_eval_mode_uses_running_statistics_and_population_state():
    rng = np.random.default_rng(4)
    config = CNNConfig(**SMALL, norm="batch")
    params = model.init_params(rng, config)
    X = rng.standard_normal((20, 50))
    state = model.population_state(params, X, config)
    assert state["running_mean1"].shape == (6,)
    want = model.forward(params, model.init_state(config), X, config, True)[0]
    np.testing.assert_allclose(model.forward(params, state, X, config, False)[0], want, rtol=1e-10, atol=1e-10)
    assert not np.allclose(model.forward(params, model.init_state(config), X, config, False)[0], want)
    stacked = model.init_stack([rng, rng], config)
    stacked_state = model.population_state(stacked, X, config)
    assert stacked_state["running_var0"].shape == (2, 1, 4)
    np.testing.assert_allclose(
        model.forward(stacked, stacked_state, X, config, False)[0][1],
        model.forward(model.arm_params(stacked, 1), model.arm_params(stacked_state, 1), X, config, False)[0],
        rtol=1e-12)
    assert model.population_state(params, X, dataclasses.replace(config, norm="layer")) == {}
    # training-mode running statistics: the PyTorch update with n = N*H*W values per channel
    _, _, new_state = model.forward(params, model.init_state(config), X, config, True)
    record: dict = {}
    model.forward(params, model.init_state(config), X, config, True, record=record)
    pre = record["pre0"]
    np.testing.assert_allclose(new_state["running_mean0"], 0.1 * pre.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(new_state["running_var0"], 0.9 + 0.1 * pre.var(axis=0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("norm", model.CNN_NORMS)
def test_a_stack_of_cnn_arms_trains_each_arm_exactly_as_alone(norm):
    """Arm k of train_stack == train(rngs[k], ...) with arm k's settings, bit for bit."""
    config = CNNConfig(channels=(4, 8), strides=(1, 2), norm=norm)
    settings = [dict(lr=0.05), dict(lr=0.1, momentum=0.9, order="class-sorted"), dict(lr=0.1, weight_decay=1e-3)]
    seeds = [3, 3, 4]   # arms 0 and 1 share a Generator: paired
    rngs = {s: np.random.default_rng(s) for s in set(seeds)}
    kwargs = dict(steps=12, batch_size=16, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test, eval_every=6)
    stack = model.train_stack([rngs[s] for s in seeds], config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(**a) for a in settings], **kwargs)
    assert stack.losses.shape == (3, 12) and stack.eval_accuracy.shape == (3, 3)
    for k, (seed, arm) in enumerate(zip(seeds, settings)):
        single = model.train(np.random.default_rng(seed), config, DIGITS.X_train, DIGITS.y_train, **arm, **kwargs)
        _same_result(stack.arm(k), single)


def test_cnn_recorders_divergence_and_lr_selection():
    config = CNNConfig(channels=(4, 8), norm="batch")
    trajectory = model.ParamTrajectory(["gamma1", "W0"], every=5)
    probe = model.ProbeMoments(DIGITS.X_test[:32], every=5, train=True)
    probe_eval = model.ProbeMoments(DIGITS.X_test[:32], every=5)
    norms = model.GradientNorms(every=5)
    stack = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(lr=0.05), model.Arm(lr=0.2, momentum=0.9), model.Arm(lr=1e6)],
                              steps=10, batch_size=16, record=[trajectory, probe, probe_eval, norms],
                              X_eval=DIGITS.X_val if len(DIGITS.X_val) else DIGITS.X_test[:100],
                              y_eval=DIGITS.y_val if len(DIGITS.y_val) else DIGITS.y_test[:100], max_loss=50.0)
    arrays = trajectory.arrays()
    assert trajectory.steps == [0, 5, 10] and arrays["gamma1"].shape == (3, 3, 1, 8)
    assert arrays["W0"].shape == (3, 3, 9, 4) and np.all(arrays["gamma1"][0] == 1)
    mean, var = probe.moments()["norm1"]
    assert mean.shape == (2, 3, 8)
    # train-mode spatial BN on the probe set: each channel's output mean is its beta (arms alive)
    alive = ~stack.diverged
    np.testing.assert_allclose(mean[-1][alive], stack.params["beta1"][alive, 0], atol=1e-4)
    assert probe_eval.moments()["act0"][0].shape == (2, 3, 4)
    assert norms.arrays()["W1"].shape == (2, 3) and np.all(norms.arrays()["W1"][:, :2] > 0)
    assert stack.diverged.tolist() == [False, False, True]
    assert np.isnan(stack.eval_accuracy[-1, 2]) and np.all(stack.eval_accuracy[-1, :2] > 0)
    index = model.select_lr([0.05, 0.2, 1e6], stack.eval_accuracy[-1], stack.diverged)
    assert index in (0, 1)
    loss, accuracy = model.evaluate(model.arm_params(stack.params, 0), model.arm_params(stack.state, 0),
                                    DIGITS.X_test, DIGITS.y_test, config)
    assert math.isfinite(loss) and accuracy == model.logits_accuracy(
        model.forward(model.arm_params(stack.params, 0), model.arm_params(stack.state, 0), DIGITS.X_test, config,
                      False)[0], DIGITS.y_test)


@pytest.mark.parametrize("norm,floor", [("batch", 0.9), ("none", 0.8)])
def test_cnn_learns_the_digits(norm, floor):
    """300 steps of batch 64 (about 14 epochs): far above chance (0.1) in eval mode."""
    result = model.train_stack(np.random.default_rng(0), CNNConfig(norm=norm), DIGITS.X_train, DIGITS.y_train,
                               model.Arm(lr=0.1, momentum=0.9), steps=300, batch_size=64,
                               X_eval=DIGITS.X_test, y_eval=DIGITS.y_test)
    assert not result.diverged[0] and result.eval_accuracy[-1, 0] > floor


def test_cnn_training_is_deterministic_given_the_generator():
    config = CNNConfig(norm="batch", channels=(8, 16))
    arms = [model.Arm(lr=0.1, momentum=0.9), model.Arm(lr=0.05, optimizer="adam")]
    kwargs = dict(steps=30, batch_size=32, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test, eval_every=10)
    runs = [model.train_stack(np.random.default_rng(seed), config, DIGITS.X_train, DIGITS.y_train, arms, **kwargs)
            for seed in (0, 0, 1)]
    for name in runs[0].params:
        assert np.array_equal(runs[0].params[name], runs[1].params[name]), name
    for name in runs[0].state:
        assert np.array_equal(runs[0].state[name], runs[1].state[name]), name
    assert np.array_equal(runs[0].losses, runs[1].losses)
    assert np.array_equal(runs[0].eval_accuracy, runs[1].eval_accuracy)
    assert not np.array_equal(runs[0].params["W0"], runs[2].params["W0"])
