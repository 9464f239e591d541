"""Tests for bnclaims.model: gradients, modes, pairing, determinism, training."""

import dataclasses
import math

import numpy as np
import pytest

from bnclaims import data, model, nn
from bnclaims.model import MLPConfig

# ---------------------------------------------------------------------------- gradient check

SMALL = (5, 8, 6, 3)  # two hidden layers, widths divisible by groups=2


def small_config(**kwargs) -> MLPConfig:
    defaults = dict(sizes=SMALL, dtype="float64", groups=2, ghost_batch_size=4, d_max=0.5)
    defaults.update(kwargs)
    return MLPConfig(**defaults)


def perturbed_state(config: MLPConfig, rng: np.random.Generator) -> dict:
    """Running statistics away from their initial 0/1 (so eval mode is not the identity)."""
    state = model.init_state(config)
    for name in state:
        shape = state[name].shape
        state[name] = rng.normal(0, 0.5, shape) if "mean" in name else rng.uniform(0.5, 2.0, shape)
    return state


def numerical_grads(loss_fn, params, h=1e-5):
    grads = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            old = value[index]
            value[index] = old + h
            plus = loss_fn()
            value[index] = old - h
            minus = loss_fn()
            value[index] = old
            grad[index] = (plus - minus) / (2 * h)
        grads[name] = grad
    return grads


def assert_grads_close(analytic, numeric, rtol=1e-7, atol=1e-9):
    """||a - n|| <= rtol (||a|| + ||n||) + atol per parameter; atol covers the finite-difference
    rounding noise (~ eps |L| / h ~ 1e-11 per element) on gradients that are exactly 0."""
    assert analytic.keys() == numeric.keys()
    for name in analytic:
        a, n = analytic[name], numeric[name]
        assert a.shape == n.shape and a.dtype == np.float64
        err = np.linalg.norm(a - n)
        scale = np.linalg.norm(a) + np.linalg.norm(n)
        assert err <= rtol * scale + atol, f"{name}: |a - n| = {err:.3g}, |a| + |n| = {scale:.3g}"


def check_model_gradients(config: MLPConfig, train=True, n=8, seed=0):
    rng = np.random.default_rng(seed)
    params = model.init_params(rng, config)
    for name in params:  # move gamma/beta/b away from 1/0 so every term of the gradient matters
        if not name.startswith("W"):
            params[name] += rng.normal(0, 0.3, params[name].shape)
    state = perturbed_state(config, rng)
    if config.norm == "renorm":
        # r and d are stop-gradient constants: make them clip (locally constant) so that
        # finite differences of the forward measure the same derivative.
        for name in state:
            state[name] = np.full_like(state[name], 1e3 if "mean" in name else 1e4)
    x = rng.standard_normal((n, config.sizes[0]))
    y = rng.integers(0, config.sizes[-1], n)

    def loss_fn():
        noise_rng = np.random.default_rng(123)  # the same noise at every evaluation
        logits, _, _ = model.forward(params, state, x, config, train, noise_rng)
        return nn.softmax_cross_entropy(logits, y)[0]

    logits, tape, _ = model.forward(params, state, x, config, train, np.random.default_rng(123))
    _, dlogits = nn.softmax_cross_entropy(logits, y)
    analytic = model.backward(dlogits, tape, config)
    assert analytic.keys() == params.keys()
    assert_grads_close(analytic, numerical_grads(loss_fn, params))
    return analytic


@pytest.mark.parametrize("norm", model.NORMS)
@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_full_model_gradients_match_finite_differences(norm, position, affine, activation):
    config = small_config(norm=norm, norm_position=position, affine=affine, activation=activation)
    analytic = check_model_gradients(config)
    if norm == "none" or not affine:
        assert not any(k.startswith(("gamma", "beta")) for k in analytic)


@pytest.mark.parametrize("norm", ["batch", "ghost", "renorm", "running", "noisy"])
def test_eval_mode_gradients_match_finite_differences(norm):
    check_model_gradients(small_config(norm=norm), train=False)


def test_running_without_grad_through_stats_gradient_at_zero_momentum():
    # With momentum 0 the statistics are the (constant) running ones, so the stop-gradient is exact.
    check_model_gradients(small_config(norm="running", grad_through_stats=False, momentum=0.0))


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
def test_gradients_for_each_activation_without_norm(activation):
    check_model_gradients(small_config(activation=activation, sizes=(4, 7, 7, 7, 2)))


def test_bias_before_batchnorm_has_zero_gradient():
    config = small_config(norm="batch")
    rng = np.random.default_rng(1)
    params = model.init_params(rng, config)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    _, grads, _, _ = model.loss_and_grads(params, model.init_state(config), x, y, config)
    for i in range(2):  # the batch mean removes any per-feature shift before the norm
        assert np.max(np.abs(grads[f"b{i}"])) < 1e-15 * 16 * np.max(np.abs(grads[f"W{i}"])) + 1e-16


# ---------------------------------------------------------------------------- structure, modes


def test_param_and_state_names_shapes_dtypes():
    config = MLPConfig(sizes=(64, 32, 16, 10), norm="batch")
    params = model.init_params(np.random.default_rng(0), config)
    assert list(params) == ["W0", "b0", "gamma0", "beta0", "W1", "b1", "gamma1", "beta1", "W2", "b2"]
    assert params["W1"].shape == (32, 16) and params["gamma1"].shape == (16,)
    assert all(p.dtype == np.float32 for p in params.values())
    assert np.all(params["gamma0"] == 1) and np.all(params["beta0"] == 0) and np.all(params["b2"] == 0)
    state = model.init_state(config)
    assert list(state) == ["running_mean0", "running_var0", "running_mean1", "running_var1"]
    assert model.init_state(dataclasses.replace(config, norm="layer")) == {}
    assert list(model.init_params(np.random.default_rng(0), dataclasses.replace(config, affine=False))) == [
        "W0", "b0", "W1", "b1", "W2", "b2"
    ]


@pytest.mark.parametrize("init,expected_std", [("he", math.sqrt(2 / 256)), ("lecun", math.sqrt(1 / 256)), ("scale", 0.3)])
def test_init_scales(init, expected_std):
    config = MLPConfig(sizes=(256, 512, 10), init=init, init_scale=0.3 if init == "scale" else 1.0)
    W = model.init_params(np.random.default_rng(0), config)["W0"]
    assert abs(W.std() / expected_std - 1) < 0.01


def test_config_validation():
    with pytest.raises(ValueError, match="norm"):
        MLPConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="groups"):
        MLPConfig(norm="group", groups=5)
    assert MLPConfig(sizes=[3, 4, 2]).sizes == (3, 4, 2)  # lists become tuples: hashable
    hash(MLPConfig())


def test_float32_stays_float32():
    config = MLPConfig(sizes=(6, 8, 3), norm="batch")
    params = model.init_params(np.random.default_rng(0), config)
    x = np.random.default_rng(1).standard_normal((4, 6))  # float64 input is cast
    loss, grads, state, logits = model.loss_and_grads(params, model.init_state(config), x, np.array([0, 1, 2, 0]), config)
    assert logits.dtype == np.float32 and isinstance(loss, float)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert all(s.dtype == np.float32 for s in state.values())


@pytest.mark.parametrize("norm", model.NORMS)
def test_forward_is_pure(norm):
    config = small_config(norm=norm)
    rng = np.random.default_rng(0)
    params, state = model.init_params(rng, config), perturbed_state(config, rng)
    before = {k: v.copy() for k, v in {**params, **state}.items()}
    x = rng.standard_normal((8, 5))
    x_copy = x.copy()
    model.loss_and_grads(params, state, x, np.zeros(8, dtype=int), config, rng=rng)
    model.forward(params, state, x, config, train=False)
    assert all(np.array_equal(v, {**params, **state}[k]) for k, v in before.items())
    assert np.array_equal(x, x_copy)


@pytest.mark.parametrize("norm", ["batch", "ghost", "renorm", "running", "noisy"])
def test_eval_mode_uses_running_statistics(norm):
    config = small_config(norm=norm)
    rng = np.random.default_rng(0)
    params, state = model.init_params(rng, config), perturbed_state(config, rng)
    x = rng.standard_normal((8, 5))
    eval_logits, _, eval_state = model.forward(params, state, x, config, train=False)
    assert eval_state.keys() == state.keys() and all(eval_state[k] is state[k] for k in state)
    # Per-example in eval mode: the output of one example does not depend on the batch.
    one, _, _ = model.forward(params, state, x[:1], config, train=False)
    assert np.allclose(one, eval_logits[:1], rtol=1e-12, atol=1e-12)
    # Training mode depends on the batch and moves the running statistics.
    train_logits, _, new_state = model.forward(params, state, x, config, train=True, rng=rng)
    assert not np.allclose(train_logits, eval_logits)
    assert all(not np.array_equal(new_state[k], state[k]) for k in state)


def test_eval_equals_train_when_running_stats_equal_batch_stats():
    config = small_config(norm="batch")
    rng = np.random.default_rng(0)
    params = model.init_params(rng, config)
    x = rng.standard_normal((32, 5))
    record = {}
    train_logits, _, _ = model.forward(params, model.init_state(config), x, config, train=True, record=record)
    state = {}
    for i in range(2):
        state[f"running_mean{i}"] = record[f"pre{i}"].mean(0)
        state[f"running_var{i}"] = record[f"pre{i}"].var(0)
    eval_logits, _, _ = model.forward(params, state, x, config, train=False)
    assert np.allclose(eval_logits, train_logits, rtol=1e-12, atol=1e-12)


def test_running_statistics_update_pytorch_convention():
    config = small_config(norm="batch", momentum=0.25)
    rng = np.random.default_rng(0)
    params, state = model.init_params(rng, config), model.init_state(config)
    x = rng.standard_normal((10, 5))
    record = {}
    _, _, new_state = model.forward(params, state, x, config, record=record)
    pre = record["pre0"]
    assert np.allclose(new_state["running_mean0"], 0.25 * pre.mean(0))
    assert np.allclose(new_state["running_var0"], 0.75 + 0.25 * pre.var(0, ddof=1))


@pytest.mark.parametrize("position", ["before", "after"])
def test_record_gives_pre_norm_and_post_activation(position):
    config = small_config(norm="batch", norm_position=position)
    rng = np.random.default_rng(0)
    params = model.init_params(rng, config)
    params["beta0"] += 0.7
    x = rng.standard_normal((16, 5))
    acts = model.activations(params, model.init_state(config), x, config, train=True)
    assert set(acts) == {"pre0", "norm0", "act0", "pre1", "norm1", "act1", "logits"}
    assert np.allclose(acts["norm0"].mean(0), params["beta0"], atol=1e-6)  # exact identity of BN
    if position == "before":
        assert np.array_equal(acts["act0"], np.maximum(acts["norm0"], 0))
        assert np.allclose(acts["pre0"], x @ params["W0"] + params["b0"], atol=1e-5)
    else:
        assert np.array_equal(acts["pre0"], acts["act0"])
        assert np.all(acts["act0"] >= 0)
    plain = model.activations(params, {}, x, dataclasses.replace(config, norm="none"))
    assert plain["norm0"] is plain["pre0"]


# ---------------------------------------------------------------------------- SGD


def test_sgd_momentum_nesterov_and_weight_decay_follow_pytorch():
    params = {"W0": np.array([1.0, -2.0]), "b0": np.array([0.5]), "gamma0": np.array([2.0])}
    grads = {"W0": np.array([0.1, 0.2]), "b0": np.array([1.0]), "gamma0": np.array([-1.0])}
    grads_copy = {k: v.copy() for k, v in grads.items()}
    lr, mu, wd = 0.1, 0.9, 0.01
    opt = model.SGD(lr, momentum=mu, weight_decay=wd, nesterov=True)
    w, vw = params["W0"].copy(), np.zeros(2)
    g_, vg = params["gamma0"].copy(), np.zeros(1)
    for _ in range(3):
        opt.step(params, grads)
        d = grads["W0"] + wd * w
        vw = mu * vw + d
        w = w - lr * (d + mu * vw)
        vg = mu * vg + grads["gamma0"]  # no decay on gamma
        g_ = g_ - lr * (grads["gamma0"] + mu * vg)
    assert np.allclose(params["W0"], w, rtol=1e-15) and np.allclose(params["gamma0"], g_, rtol=1e-15)
    assert all(np.array_equal(grads[k], grads_copy[k]) for k in grads)  # grads untouched
    plain = model.SGD(0.5)
    p = {"b0": np.array([1.0])}
    plain.step(p, {"b0": np.array([2.0])})
    assert p["b0"][0] == 0.0
    with pytest.raises(ValueError):
        model.SGD(0.1, nesterov=True)


# ---------------------------------------------------------------------------- training

DIGITS = data.digits_split(dtype=np.float32)


def test_train_is_deterministic_and_seed_dependent():
    config = MLPConfig(sizes=(64, 32, 10), norm="noisy")
    kwargs = dict(steps=50, batch_size=16, lr=0.05, momentum=0.9)
    a = model.train(np.random.default_rng(3), config, DIGITS.X_train, DIGITS.y_train, **kwargs)
    b = model.train(np.random.default_rng(3), config, DIGITS.X_train, DIGITS.y_train, **kwargs)
    c = model.train(np.random.default_rng(4), config, DIGITS.X_train, DIGITS.y_train, **kwargs)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert all(np.array_equal(a.state[k], b.state[k]) for k in a.state)
    assert np.array_equal(a.losses, b.losses)
    assert not np.array_equal(a.params["W0"], c.params["W0"])


def test_arms_differing_in_norm_share_init_and_batches():
    seen = {}
    for norm in model.NORMS:
        for affine in (True, False):
            config = MLPConfig(sizes=(64, 16, 16, 10), norm=norm, affine=affine, groups=4, ghost_batch_size=4)
            init = model.train(np.random.default_rng(7), config, DIGITS.X_train, DIGITS.y_train, steps=0)
            batches = []
            model.train(
                np.random.default_rng(7), config, DIGITS.X_train, DIGITS.y_train, steps=5, batch_size=8,
                record=lambda step, info: batches.append(info.x.copy()),
            )
            seen[norm, affine] = (init.params, np.stack(batches))
    ref_params, ref_batches = seen["none", True]
    for params, batches in seen.values():
        assert all(np.array_equal(params[f"W{i}"], ref_params[f"W{i}"]) for i in range(3))
        assert np.array_equal(batches, ref_batches)


def test_train_does_not_modify_inputs():
    config = MLPConfig(sizes=(64, 16, 10), norm="batch")
    params = model.init_params(np.random.default_rng(0), config)
    before = {k: v.copy() for k, v in params.items()}
    X = np.array(DIGITS.X_train)
    result = model.train(np.random.default_rng(0), config, X, DIGITS.y_train, steps=20, params=params)
    assert all(np.array_equal(params[k], before[k]) for k in params)
    assert np.array_equal(X, DIGITS.X_train)
    assert not np.array_equal(result.params["W0"], params["W0"])


def test_divergence_is_detected_and_stops_early():
    config = MLPConfig(sizes=(64, 64, 64, 10), activation="linear")
    result = model.train(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train, steps=500, lr=1.0, momentum=0.9)
    assert result.diverged and result.status == "diverged" and not result.stuck
    assert len(result.losses) < 500 and not math.isfinite(result.losses[-1])
    assert np.all(np.isfinite(result.losses[:-1])) and result.steps == len(result.losses) - 1
    assert math.isnan(result.final_loss)


def test_finite_blow_up_counts_as_divergence_only_with_max_loss():
    # A tanh net at a huge learning rate stays finite (saturated units) with a loss far above chance.
    config = MLPConfig(sizes=(64, 64, 64, 10), activation="tanh")
    kwargs = dict(steps=200, lr=50.0, momentum=0.9)
    finite = model.train(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train, **kwargs)
    assert finite.status == "stuck" and finite.final_loss > 10 * finite.chance_loss
    capped = model.train(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train, max_loss=100.0, **kwargs)
    assert capped.status == "diverged" and capped.losses[-1] > 100.0 and len(capped.losses) < 200


def test_an_infinite_loss_is_divergence_even_with_max_loss_inf():
    """Finite logits 2e308 apart give a loss of exactly +inf (and finite gradients): diverged at the
    default max_loss=inf, both for one network and for an arm of a stack."""
    config = MLPConfig(sizes=(2, 2), dtype="float64")
    params = {"W0": np.array([[1e308, -1e308], [0.0, 0.0]]), "b0": np.zeros(2)}
    X, y = np.tile([1.0, 0.0], (4, 1)), np.ones(4, dtype=np.int64)
    logits, _, _ = model.forward(params, {}, X, config)
    with np.errstate(over="ignore"):
        assert np.all(np.isfinite(logits)) and nn.softmax_cross_entropy(logits, y)[0] == math.inf
    single = model.train(np.random.default_rng(0), config, X, y, steps=3, batch_size=2, params=params)
    assert single.diverged and single.losses.tolist() == [math.inf] and single.steps == 0
    stack = model.train_stack(np.random.default_rng(0), config, X, y, [model.Arm(), model.Arm()], steps=3,
                              batch_size=2, params=model.stack_params([params, {"W0": np.eye(2), "b0": np.zeros(2)}]))
    assert stack.diverged.tolist() == [True, False] and stack.steps.tolist() == [0, 3]


def test_stuck_at_chance_is_not_divergence():
    # All-zero weights and ReLU: every hidden unit is dead; only the output bias learns,
    # which reaches the class frequencies -- finite loss at chance level.
    config = MLPConfig(sizes=(64, 32, 10), init="scale", init_scale=0.0)
    result = model.train(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train, steps=300, lr=0.5)
    assert result.stuck and not result.diverged and result.status == "stuck"
    assert np.all(result.params["W0"] == 0)
    assert abs(result.final_loss - result.chance_loss) < 0.05
    ok = model.train(np.random.default_rng(0), dataclasses.replace(config, init="he", init_scale=1.0),
                     DIGITS.X_train, DIGITS.y_train, steps=300, lr=0.5)
    assert ok.status == "ok"


def test_bn_mlp_reaches_95_percent_on_digits_in_ten_epochs():
    # 420 SGD steps, about 0.1 s here (speed is measured in benchmarks/bench_model.py, not in tests)
    config = MLPConfig(sizes=(64, 128, 10), norm="batch")
    for seed in range(3):
        result = model.train(
            np.random.default_rng(seed), config, DIGITS.X_train, DIGITS.y_train, epochs=10, batch_size=32,
            lr=0.1, momentum=0.9, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test,
        )
        assert result.status == "ok"
        assert result.eval_accuracy[-1] >= 0.95, (seed, result.eval_accuracy[-1])
        assert result.eval_steps[-1] == 10 * (len(DIGITS.y_train) // 32)
    assert model.accuracy(result.params, result.state, DIGITS.X_test, DIGITS.y_test, config) == result.eval_accuracy[-1]


def test_record_hook_sees_step_information_and_can_stop():
    config = MLPConfig(sizes=(64, 16, 10), norm="batch")
    log = []

    def hook(step, info):
        means, _ = info.moments["norm0"]
        before_beta = info.params["beta0"] - info.deltas["beta0"]
        assert np.allclose(means, before_beta, atol=1e-5)  # BN output mean is beta (before the step)
        assert np.allclose(info.deltas["gamma0"], -0.1 * info.grads["gamma0"], atol=1e-6)  # plain SGD
        assert 0.0 <= info.batch_accuracy <= 1.0 and info.epoch == step // (len(DIGITS.y_train) // 8)
        log.append((step, info.loss))
        return step == 6

    result = model.train(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train, steps=100,
                         batch_size=8, lr=0.1, record=hook)
    assert result.stopped and result.steps == 7 and [s for s, _ in log] == list(range(7))
    assert np.array_equal(result.losses, [loss for _, loss in log])


def test_eval_schedule_lr_schedule_and_class_sorted_order():
    config = MLPConfig(sizes=(64, 16, 10), norm="batch")
    lrs = []
    result = model.train(
        np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train, steps=25, batch_size=16,
        lr=lambda step: 0.1 / (1 + step), order="class-sorted", X_eval=DIGITS.X_test, y_eval=DIGITS.y_test,
        eval_every=10, record=lambda step, info: lrs.append(info.lr),
    )
    assert result.eval_steps.tolist() == [0, 10, 20, 25]
    assert len(result.eval_accuracy) == len(result.eval_loss) == 4
    assert lrs == [0.1 / (1 + s) for s in range(25)]
    with pytest.raises(ValueError, match="exactly one"):
        model.train(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train)


# ---------------------------------------------------------------------------- stacks: K networks at once

STACK_SIZES = (64, 16, 12, 10)


def _same_result(stacked: model.TrainResult, single: model.TrainResult) -> None:
    for name in single.params:
        assert np.array_equal(stacked.params[name], single.params[name]), name
    for name in single.state:
        assert np.array_equal(stacked.state[name], single.state[name]), name
    assert np.array_equal(stacked.losses, single.losses, equal_nan=True)
    assert (stacked.diverged, stacked.stuck, stacked.steps) == (single.diverged, single.stuck, single.steps)
    assert np.array_equal(stacked.eval_steps, single.eval_steps)
    assert np.array_equal(stacked.eval_loss, single.eval_loss, equal_nan=True)
    assert np.array_equal(stacked.eval_accuracy, single.eval_accuracy, equal_nan=True)


@pytest.mark.parametrize("norm", model.NORMS)
def test_a_stack_of_arms_trains_each_arm_exactly_as_alone(norm):
    """Arm k of train_stack == train(rngs[k], ...) with arm k's settings, bit for bit."""
    config = MLPConfig(sizes=STACK_SIZES, norm=norm, groups=4, ghost_batch_size=4)
    settings = [dict(lr=0.05, momentum=0.0, order="shuffled"), dict(lr=0.2, momentum=0.9, order="class-sorted"),
                dict(lr=0.1, momentum=0.5, order="shuffled", nesterov=True, weight_decay=1e-3)]
    seeds = [3, 3, 4]  # arms 0 and 1 share a Generator: paired
    rngs = {s: np.random.default_rng(s) for s in set(seeds)}
    kwargs = dict(steps=30, batch_size=16, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test, eval_every=10)
    stack = model.train_stack([rngs[s] for s in seeds], config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(**a) for a in settings], **kwargs)
    assert stack.losses.shape == (3, 30) and stack.eval_accuracy.shape == (4, 3)
    for k, (seed, arm) in enumerate(zip(seeds, settings)):
        single = model.train(np.random.default_rng(seed), config, DIGITS.X_train, DIGITS.y_train, **arm, **kwargs)
        _same_result(stack.arm(k), single)


def test_paired_arms_share_initial_weights_and_batches():
    config = MLPConfig(sizes=STACK_SIZES, norm="batch")
    seen = []
    model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                      [model.Arm(lr=0.01), model.Arm(lr=0.5, optimizer="adam"), model.Arm(order="class-sorted")],
                      steps=3, batch_size=8, record=lambda step, info: seen.append((info.x.copy(), info.params)))
    x0 = seen[0][0]
    assert np.array_equal(x0[0], x0[1]) and not np.array_equal(x0[0], x0[2])  # same order => same batch
    init = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                             [model.Arm()] * 3, steps=0)
    assert all(np.array_equal(init.params["W0"][0], init.params["W0"][k]) for k in (1, 2))


def test_a_diverging_arm_is_frozen_and_does_not_disturb_the_others():
    config = MLPConfig(sizes=STACK_SIZES, norm="none")
    arms = [model.Arm(lr=0.05), model.Arm(lr=1e4, momentum=0.9), model.Arm(lr=0.1)]
    stack = model.train_stack(np.random.default_rng(1), config, DIGITS.X_train, DIGITS.y_train, arms, steps=40,
                              batch_size=16, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test, eval_every=10)
    assert stack.diverged.tolist() == [False, True, False] and stack.steps[1] < 40
    assert np.isnan(stack.eval_accuracy[-1, 1]) and np.all(np.isfinite(stack.eval_accuracy[:, [0, 2]]))
    for k in range(3):
        single = model.train(np.random.default_rng(1), config, DIGITS.X_train, DIGITS.y_train, steps=40,
                             batch_size=16, lr=arms[k].lr, momentum=arms[k].momentum, X_eval=DIGITS.X_test,
                             y_eval=DIGITS.y_test, eval_every=10)
        _same_result(stack.arm(k), single)  # the diverged arm keeps its last finite parameters, as alone
    assert stack.arm(1).status == "diverged" and np.all(np.isfinite(stack.params["W0"][1]))


def _adam_reference(params, grads_per_step, lr, betas=(0.9, 0.999), eps=1e-8):
    """PyTorch's Adam (no weight decay), written out in float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for k, g in grads.items():
            m[k] = betas[0] * m[k] + (1 - betas[0]) * g
            v[k] = betas[1] * v[k] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[k] / (1 - betas[0] ** t), v[k] / (1 - betas[1] ** t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adam_and_sgd_arms_in_one_stack_follow_their_rules():
    rng = np.random.default_rng(0)
    params = {"W0": rng.standard_normal((3, 4, 2)), "b0": rng.standard_normal((3, 1, 2))}
    arms = [model.Arm(lr=0.1, optimizer="adam"), model.Arm(lr=0.1, momentum=0.9), model.Arm(lr=0.01, optimizer="adam")]
    optimizer = model.StackOptimizer(arms, np.float64)
    steps = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    start = {k: v.copy() for k, v in params.items()}
    for grads in steps:
        optimizer.step(params, {k: g.copy() for k, g in grads.items()})
    for k in (0, 2):
        expected = _adam_reference({n: v[k] for n, v in start.items()}, [{n: g[k] for n, g in s.items()} for s in steps],
                                   arms[k].lr)
        for name in params:
            assert np.allclose(params[name][k], expected[name], rtol=0, atol=1e-13)
    sgd = model.SGD(0.1, momentum=0.9)
    alone = {n: v[1].copy() for n, v in start.items()}
    for grads in steps:
        sgd.step(alone, {n: g[1].copy() for n, g in grads.items()})
    assert all(np.array_equal(params[n][1], alone[n]) for n in params)


def test_logits_accuracy_counts_non_finite_rows_as_wrong():
    logits = np.array([[0.0, 2.0], [np.nan, np.nan], [3.0, np.inf], [1.0, 0.0]])
    y = np.array([1, 0, 1, 0])
    assert model.logits_accuracy(logits, y) == 0.5  # argmax alone would score the NaN row (class 0) right
    stacked = np.stack([logits, np.full_like(logits, np.nan)])
    assert model.logits_accuracy(stacked, y).tolist() == [0.5, 0.0]


def test_select_lr_prefers_accuracy_then_the_smaller_rate_and_scores_diverged_as_zero():
    lrs = [0.01, 0.1, 1.0]
    assert model.select_lr(lrs, [0.5, 0.9, 0.7]) == 1
    assert model.select_lr(lrs, [0.9, 0.9, 0.7]) == 0           # tie: the smaller learning rate
    assert model.select_lr(lrs, [0.2, 0.3, 0.95], diverged=[False, False, True]) == 1
    assert model.select_lr(lrs, [np.nan, 0.1, 0.1]) == 1


def test_batch_plan_is_the_epoch_stream():
    y = np.arange(50) % 5
    plan = model.batch_plan(np.random.default_rng(4), 50, 8, 13, "class-sorted", y)
    stream = data.epochs(np.random.default_rng(4), 50, 8, "class-sorted", labels=y)
    assert plan.shape == (13, 8) and all(np.array_equal(plan[i], next(stream)) for i in range(13))


def test_recorders_give_trajectories_probe_moments_and_gradient_norms():
    config = MLPConfig(sizes=STACK_SIZES, norm="batch")
    trajectory = model.ParamTrajectory(["gamma0", "beta0"], every=5)
    probe = model.ProbeMoments(DIGITS.X_test[:64], every=5, train=True)
    norms = model.GradientNorms(every=5)
    stack = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(lr=0.1), model.Arm(lr=0.3)], steps=20, batch_size=16,
                              record=[trajectory, probe, norms])
    arrays = trajectory.arrays()
    assert trajectory.steps == [0, 5, 10, 15, 20] and arrays["gamma0"].shape == (5, 2, 1, 16)
    assert np.all(arrays["gamma0"][0] == 1) and np.array_equal(arrays["beta0"][-1], stack.params["beta0"])
    mean, var = probe.moments()["norm0"]
    assert mean.shape == (4, 2, 16)
    # train-mode batch norm on the probe set: its output mean is beta, exactly up to rounding
    assert np.allclose(mean[-1], stack.params["beta0"][:, 0], atol=1e-5)
    assert norms.arrays()["W0"].shape == (4, 2) and np.all(norms.arrays()["W0"] > 0)


@pytest.mark.parametrize("norm", model.NORMS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_forward_without_tape_gives_the_same_logits_and_records(norm, activation):
    config = small_config(norm=norm, activation=activation, dtype="float32")
    rng = np.random.default_rng(3)
    stack = model.stack_params([model.init_params(np.random.default_rng(k), config) for k in range(3)])
    state = model.stack_params([perturbed_state(config, np.random.default_rng(k)) for k in range(3)])
    x = rng.standard_normal((8, 5))
    for train in (False, True):
        record, fast_record = {}, {}
        kept, caches, kept_state = model.forward(stack, state, x, config, train,
                                                 [np.random.default_rng(9) for _ in range(3)], record)
        fast, none, fast_state = model.forward(stack, state, x, config, train,
                                               [np.random.default_rng(9) for _ in range(3)], fast_record, tape=False)
        assert none is None and caches and np.array_equal(fast, kept)
        assert record.keys() == fast_record.keys() and all(np.array_equal(record[k], fast_record[k]) for k in record)
        assert kept_state.keys() == fast_state.keys()
        assert all(np.array_equal(kept_state[k], fast_state[k]) for k in kept_state)


def test_step_moments_are_numpys_mean_and_variance_bit_for_bit():
    rng = np.random.default_rng(0)
    for shape, axis in [((5, 32, 64), -2), ((32, 64), 0), ((3, 1000, 17), -2)]:
        for dtype in (np.float32, np.float64):
            value = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
            mean, var = model._moments64(value, axis)
            v = value.astype(np.float64)
            assert np.array_equal(mean, v.mean(axis=axis)) and np.array_equal(var, v.var(axis=axis))


def test_stuck_is_finite_at_chance_and_not_diverged():
    config = MLPConfig(sizes=STACK_SIZES, norm="none")
    stack = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(lr=0.0), model.Arm(lr=0.1)], steps=60, batch_size=32)
    assert stack.stuck.tolist() == [True, False] and not stack.diverged.any()

def test_a_given_plan_replaces_the_drawn_batches():
    config = MLPConfig(sizes=STACK_SIZES, norm="batch")
    rng = np.random.default_rng(3)
    plan = model.batch_plan(np.random.default_rng(9), len(DIGITS.y_train), 16, 12)
    shared = model.train_stack(rng, config, DIGITS.X_train, DIGITS.y_train, [model.Arm(lr=0.1)] * 2,
                               steps=12, batch_size=16, plan=plan)
    # the same plan given per arm trains identically; a hook sees exactly the plan's batches
    per_arm = model.train_stack(np.random.default_rng(3), config, DIGITS.X_train, DIGITS.y_train,
                                [model.Arm(lr=0.1)] * 2, steps=12, batch_size=16, plan=np.stack([plan, plan]))
    for name in shared.params:
        assert np.array_equal(shared.params[name], per_arm.params[name])
    seen = []
    model.train_stack(np.random.default_rng(3), config, DIGITS.X_train, DIGITS.y_train, model.Arm(lr=0.1),
                      steps=12, batch_size=16, plan=plan, record=lambda step, info: seen.append(info.y[0].copy()))
    assert all(np.array_equal(s, DIGITS.y_train[plan[i]]) for i, s in enumerate(seen))
    with pytest.raises(ValueError, match="plan must be"):
        model.train_stack(rng, config, DIGITS.X_train, DIGITS.y_train, model.Arm(), steps=13, batch_size=16, plan=plan)


def test_probe_moments_can_start_before_training():
    config = MLPConfig(sizes=STACK_SIZES, norm="batch")
    probe = model.ProbeMoments(DIGITS.X_test[:64], every=5, train=True, initial=True)
    stack = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(lr=0.1), model.Arm(lr=0.3)], steps=10, batch_size=16, record=probe)
    assert probe.steps == [0, 5, 10]
    mean, var = probe.moments()["pre0"]
    start = model.init_params(model._streams([np.random.default_rng(0)])[0][0], config)
    expected = DIGITS.X_test[:64].astype(np.float32) @ start["W0"]
    assert np.allclose(mean[0, 0], expected.mean(axis=0), atol=1e-5) and np.allclose(mean[0, 0], mean[0, 1])
    assert not np.allclose(mean[-1, 0], mean[-1, 1]) and stack.steps.tolist() == [10, 10]
    with pytest.raises(ValueError, match="train=True"):
        model.ProbeMoments(DIGITS.X_test[:64], initial=True)


# ---------------------------------------------------------------------------- reference statistics, precise BN


def test_reference_batchnorm_is_batchnorm_over_all_rows_and_matches_finite_differences():
    rng = np.random.default_rng(30)
    x, gamma, beta, dout = rng.standard_normal((7, 4)), rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal((7, 4))
    out, cache = model.reference_batchnorm_forward(x, gamma, beta, 7)
    ref, ref_cache = nn.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)
    for got, want in zip(model.reference_batchnorm_backward(dout, cache), nn.batchnorm_backward(dout, ref_cache)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    values = {"x": x, "gamma": gamma, "beta": beta}

    def loss():
        return float((model.reference_batchnorm_forward(values["x"], values["gamma"], values["beta"], 3)[0] * dout).sum())

    _, cache = model.reference_batchnorm_forward(x, gamma, beta, 3)
    dx, dgamma, dbeta = model.reference_batchnorm_backward(dout, cache)
    assert_grads_close({"x": dx, "gamma": dgamma, "beta": dbeta}, numerical_grads(loss, values))
    # stacked: each arm as alone
    xs, gs, bs = rng.standard_normal((3, 7, 4)), rng.standard_normal((3, 1, 4)), rng.standard_normal((3, 1, 4))
    outs, caches = model.reference_batchnorm_forward(xs, gs, bs, 3)
    grads = model.reference_batchnorm_backward(np.broadcast_to(dout, xs.shape), caches)
    for k in range(3):
        o, c = model.reference_batchnorm_forward(xs[k], gs[k, 0], bs[k, 0], 3)
        np.testing.assert_array_equal(outs[k], o)
        for got, want in zip(grads, model.reference_batchnorm_backward(dout, c)):
            np.testing.assert_allclose(got[k].reshape(want.shape), want, rtol=1e-13, atol=1e-14)


def test_reference_rows_model_gradients_and_train_stack_loss_on_the_batch_rows_only():
    config = small_config(norm="batch", reference_rows=4)
    rng = np.random.default_rng(31)
    params, state = model.init_params(rng, config), model.init_state(config)
    x, y = rng.standard_normal((10, SMALL[0])), rng.integers(0, SMALL[-1], 10)
    _, grads, new_state, _ = model.loss_and_grads(params, state, x, y, config)

    def loss():
        return model.loss_and_grads(params, state, x, y, config)[0]

    assert_grads_close(grads, numerical_grads(loss, params))
    np.testing.assert_allclose(new_state["running_mean0"], 0.9 * 0 + 0.1 * model.activations(
        params, state, x[:4], dataclasses.replace(config, reference_rows=0), train=True)["pre0"].mean(axis=0))
    # train_stack: the reference rows are prepended; the loss is on the batch rows only
    X, Y = rng.standard_normal((40, SMALL[0])), rng.integers(0, SMALL[-1], 40)
    seen = []
    result = model.train_stack(np.random.default_rng(1), config, X, Y, model.Arm(lr=0.1), steps=3, batch_size=8,
                               X_reference=X[:4], record=lambda step, info: seen.append(
                                   (info.logits.shape, info.activations["pre0"].shape)))
    assert seen[0] == ((1, 8, SMALL[-1]), (1, 12, SMALL[1]))
    again = model.train_stack(np.random.default_rng(1), config, X, Y, model.Arm(lr=0.1), steps=1, batch_size=8,
                              X_reference=X[:4])
    xb_index = model.batch_plan(np.random.default_rng(1).spawn(3)[1], 40, 8, 1)[0]
    expected = model.loss_and_grads(model.init_params(np.random.default_rng(1).spawn(3)[0], config), state,
                                    np.concatenate([X[:4], X[xb_index]]), np.concatenate([Y[:4], Y[xb_index]]), config)
    assert again.losses[0, 0] != pytest.approx(expected[0])        # not the loss over all 12 rows ...
    logits, _, _ = model.forward(model.init_params(np.random.default_rng(1).spawn(3)[0], config), state,
                                 np.concatenate([X[:4], X[xb_index]]), config)
    assert again.losses[0, 0] == pytest.approx(nn.softmax_cross_entropy(logits[4:], Y[xb_index])[0])  # ... the batch's
    assert np.isfinite(result.losses).all()
    with pytest.raises(ValueError, match="X_reference"):
        model.train_stack(np.random.default_rng(1), config, X, Y, model.Arm(), steps=1, batch_size=8)
    with pytest.raises(ValueError, match="reference_rows"):
        small_config(norm="ghost", reference_rows=4)


def test_population_state_makes_eval_mode_equal_training_mode_on_that_set():
    rng = np.random.default_rng(32)
    for norm in ("batch", "ghost"):
        config = small_config(norm=norm)
        params = model.init_params(rng, config)
        X = rng.standard_normal((16, SMALL[0]))
        state = model.population_state(params, X, config)
        batch_config = dataclasses.replace(config, norm="batch")
        want = model.forward(params, model.init_state(batch_config), X, batch_config, True)[0]
        np.testing.assert_allclose(model.forward(params, state, X, config, False)[0], want, rtol=1e-10, atol=1e-10)
        stacked = model.init_stack([rng, rng], config)
        np.testing.assert_allclose(
            model.forward(stacked, model.population_state(stacked, X, config), X, config, False)[0][1],
            model.forward(model.arm_params(stacked, 1), model.population_state(model.arm_params(stacked, 1), X, config),
                          X, config, False)[0], rtol=1e-12)
    assert model.population_state(model.init_params(rng, small_config()), X, small_config()) == {}


@pytest.mark.parametrize("norm", ["batch", "layer", "ghost", "running"])
def test_shared_affine_is_one_gamma_beta_pair_per_layer(norm):
    """affine_shared: every entry's gradient is the derivative along moving all entries together
    (the per-feature gradients summed); the rest of the gradient is the per-feature model's; trained
    entries stay equal."""
    config = small_config(norm=norm, affine_shared=True)
    per_feature = small_config(norm=norm)
    rng = np.random.default_rng(4)
    params = model.init_params(rng, config)
    for name in params:
        if name.startswith(("gamma", "beta")):
            params[name][:] = rng.normal(1.0 if name.startswith("gamma") else 0.0, 0.3)  # one value per layer
    state = model.init_state(config)
    x, y = rng.standard_normal((8, SMALL[0])), rng.integers(0, SMALL[-1], 8)
    _, shared, _, _ = model.loss_and_grads(params, state, x, y, config)
    _, untied, _, _ = model.loss_and_grads(params, state, x, y, per_feature)
    h = 1e-6
    for name, grad in shared.items():
        if not name.startswith(("gamma", "beta")):
            np.testing.assert_array_equal(grad, untied[name])
            continue
        np.testing.assert_allclose(grad, np.full_like(grad, untied[name].sum()), rtol=1e-12)
        moved = {sign: dict(params, **{name: params[name] + sign * h}) for sign in (1, -1)}
        numeric = (model.loss_and_grads(moved[1], state, x, y, config)[0]
                   - model.loss_and_grads(moved[-1], state, x, y, config)[0]) / (2 * h)
        assert grad[0] == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    X, Y = rng.standard_normal((64, SMALL[0])), rng.integers(0, SMALL[-1], 64)
    res = model.train_stack([np.random.default_rng(0)] * 2, config, X, Y, [model.Arm(lr=0.1, momentum=0.9),
                            model.Arm(lr=0.03)], epochs=2, batch_size=16)
    for name in ("gamma0", "beta0", "gamma1", "beta1"):
        assert np.all(np.ptp(res.params[name], axis=-1) == 0) and np.all(res.params[name] != (name[0] == "g"))


def test_shared_affine_needs_an_affine_norm():
    for bad in (dict(norm="none", affine_shared=True), dict(norm="batch", affine=False, affine_shared=True)):
        with pytest.raises(ValueError, match="affine_shared"):
            small_config(**bad)


# ----------------------------------------------------------------------------- hidden_bias, noise=, renorm_warmup


def _tiny_data(seed=0, n=64, d=6, classes=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def test_hidden_bias_off_has_no_hidden_b_and_trains():
    config = MLPConfig((6, 5, 4, 3), norm="running", hidden_bias=False, dtype="float64")
    params = model.init_params(np.random.default_rng(0), config)
    assert "b0" not in params and "b1" not in params and "b2" in params
    with_bias = model.init_params(np.random.default_rng(0), dataclasses.replace(config, hidden_bias=True))
    for name in params:                       # the same draws: the same weights
        np.testing.assert_array_equal(params[name], with_bias[name])
    X, y = _tiny_data()
    loss, grads, _, _ = model.loss_and_grads(params, model.init_state(config), X[:8], y[:8], config)
    assert set(grads) == set(params) and math.isfinite(loss)
    result = model.train_stack(np.random.default_rng(1), config, X, y, [model.Arm(lr=0.1)] * 2, steps=5, batch_size=8)
    assert "b0" not in result.params and np.isfinite(result.losses).all()


def test_train_stack_noise_callable_is_asked_per_layer_and_step():
    config = MLPConfig((6, 5, 4, 3), norm="noisy", dtype="float64")
    X, y = _tiny_data()
    calls = []

    def off(h):                               # scale 1, shift 0: batch norm exactly
        calls.append(h.shape)
        return np.ones(h.shape[:-2] + (1, h.shape[-1])), np.zeros(h.shape)

    params = model.init_params(np.random.default_rng(0), config)
    plan = model.batch_plan(np.random.default_rng(2), len(y), 8, 4)
    noisy = model.train_stack(np.random.default_rng(1), config, X, y, [model.Arm(lr=0.1)] * 2, steps=4,
                              batch_size=8, plan=plan, params=params, noise=off)
    assert calls == [(2, 8, 5), (2, 8, 4)] * 4
    plain = model.train_stack(np.random.default_rng(1), dataclasses.replace(config, norm="batch"), X, y,
                              [model.Arm(lr=0.1)] * 2, steps=4, batch_size=8, plan=plan, params=params)
    for name in plain.params:
        np.testing.assert_allclose(noisy.params[name], plain.params[name], rtol=0, atol=1e-12)


def test_renorm_limits_schedule():
    config = MLPConfig((6, 5, 3), norm="renorm", r_max=3.0, d_max=5.0, renorm_warmup=(0.05, 0.25, 0.4))
    assert model.renorm_limits(config, 0, 100) == (1.0, 0.0)
    assert model.renorm_limits(config, 5, 100) == (1.0, 0.0)
    r, d = model.renorm_limits(config, 15, 100)
    assert d == pytest.approx(2.5) and r == pytest.approx(1 + 2 * (0.10 / 0.35))
    assert model.renorm_limits(config, 40, 100) == (3.0, 5.0)
    assert model.renorm_limits(dataclasses.replace(config, renorm_warmup=()), 0, 100) == (3.0, 5.0)
    with pytest.raises(ValueError):
        MLPConfig((6, 5, 3), norm="batch", renorm_warmup=(0.1, 0.2, 0.3))


def test_renorm_during_warmup_hold_is_batch_norm():
    X, y = _tiny_data()
    base = MLPConfig((6, 5, 4, 3), norm="renorm", dtype="float64", renorm_warmup=(0.5, 0.75, 1.0))
    plan = model.batch_plan(np.random.default_rng(2), len(y), 8, 8)
    params = model.init_params(np.random.default_rng(0), base)
    kw = dict(steps=8, batch_size=8, plan=plan, params=params)
    renorm = model.train_stack(np.random.default_rng(1), base, X, y, [model.Arm(lr=0.1)], **kw)
    bn = model.train_stack(np.random.default_rng(1), dataclasses.replace(base, norm="batch", renorm_warmup=()),
                           X, y, [model.Arm(lr=0.1)], **kw)
    np.testing.assert_allclose(renorm.losses[0, :5], bn.losses[0, :5], rtol=1e-12)   # r = 1, d = 0 while held
    fixed = model.train_stack(np.random.default_rng(1), dataclasses.replace(base, renorm_warmup=()),
                              X, y, [model.Arm(lr=0.1)], **kw)
    assert not np.allclose(fixed.losses[0, 1:5], bn.losses[0, 1:5], rtol=1e-9)


# ---------------------------------------------------------------------------- residual MLPs

RESIDUAL_SMALL = (5, 6, 6, 6, 3)  # input -> width, two residual blocks, -> classes


@pytest.mark.parametrize("norm", model.NORMS)
@pytest.mark.parametrize("position", ["before", "after"])
def test_residual_mlp_gradients_match_finite_differences(norm, position):
    """Every parameter of a residual net, every norm (tanh: no kinks for the finite differences)."""
    config = small_config(sizes=RESIDUAL_SMALL, residual=True, norm=norm, norm_position=position, activation="tanh")
    assert config.residual_layers == (1, 2)
    check_model_gradients(config)


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_residual_relu_mlp_gradients_match_finite_differences(norm, seed):
    check_model_gradients(small_config(sizes=RESIDUAL_SMALL, residual=True, norm=norm), seed=seed)
    check_model_gradients(small_config(sizes=RESIDUAL_SMALL, residual=True, norm=norm), train=False, seed=seed)


@pytest.mark.parametrize("norm", ["batch", "none", "layer", "running"])
def test_residual_net_with_zero_branches_is_its_identity_path_exactly(norm):
    """Blocks whose linear maps are 0 (W = b = 0): the net is the one-hidden-layer MLP made of the
    first linear map, the last norm and the last linear map -- logits (train and eval mode), the
    running statistics of that norm and the gradients of those parameters equal, exactly."""
    config = MLPConfig(sizes=(64, 32, 32, 32, 32, 10), norm=norm, residual=True)
    shallow_config = MLPConfig(sizes=(64, 32, 10), norm=norm)
    rng = np.random.default_rng(5)
    params = model.init_params(rng, config)
    for name in params:
        if not name.startswith("W"):
            params[name] += rng.normal(0, 0.3, params[name].shape).astype(np.float32)
    for i in config.residual_layers:
        params[f"W{i}"][...], params[f"b{i}"][...] = 0, 0
    last, hidden = config.n_layers - 1, config.n_layers - 2     # the last norm is hidden layer L-2's
    renamed = {"W0": "W0", "b0": "b0", "W1": f"W{last}", "b1": f"b{last}", "gamma0": f"gamma{hidden}",
               "beta0": f"beta{hidden}", "running_mean0": f"running_mean{hidden}", "running_var0": f"running_var{hidden}"}
    state = perturbed_state(config, rng)
    shallow = {name: params[full] for name, full in renamed.items() if full in params}
    shallow_state = {name: state[full] for name, full in renamed.items() if full in state}
    x, y = DIGITS.X_train[:40], DIGITS.y_train[:40]
    for train in (True, False):
        logits, tape, new_state = model.forward(params, state, x, config, train)
        want, shallow_tape, shallow_new_state = model.forward(shallow, shallow_state, x, shallow_config, train)
        assert np.array_equal(logits, want)
        for name, value in shallow_new_state.items():
            assert np.array_equal(new_state[renamed[name]], value), name
        grads = model.backward(nn.softmax_cross_entropy(logits, y)[1], tape)
        shallow_grads = model.backward(nn.softmax_cross_entropy(want, y)[1], shallow_tape)
        for name, value in shallow_grads.items():
            assert np.array_equal(grads[renamed[name]], value), name
    stacked = model.stack_params([params, params])
    assert np.array_equal(model.forward(stacked, model.stack_params([state, state]), x, config, False)[0][1], want)


def test_residual_init_scales_the_block_weights_by_one_over_sqrt_blocks():
    plain = MLPConfig(sizes=(64,) + (64,) * 9 + (10,), norm="batch")
    residual = dataclasses.replace(plain, residual=True)
    assert residual.residual_layers == tuple(range(1, 9))
    a = model.init_params(np.random.default_rng(0), plain)
    b = model.init_params(np.random.default_rng(0), residual)
    c = model.init_params(np.random.default_rng(0), dataclasses.replace(residual, residual_init="plain"))
    for name in a:
        assert np.array_equal(a[name], c[name])       # the same draws
        if name.startswith("W") and int(name[1:]) in residual.residual_layers:
            np.testing.assert_allclose(b[name], a[name] / math.sqrt(8), rtol=1e-6)
        else:
            assert np.array_equal(a[name], b[name])
    # no norm, He weights: the stream's second moment stays within a factor e of the first layer's
    config = dataclasses.replace(residual, norm="none", sizes=(64,) + (256,) * 17 + (10,))
    record: dict = {}
    model.forward(model.init_params(np.random.default_rng(1), config), {}, DIGITS.X_train, config, record=record)
    first = np.mean(np.square(record["pre0"]))
    growth = np.mean(np.square(record["pre16"])) / first
    assert 1.5 < growth < math.e                                  # (1 + 1/16)^16 = 2.64
    record = {}
    plain_init = dataclasses.replace(config, residual_init="plain")
    model.forward(model.init_params(np.random.default_rng(1), plain_init), {}, DIGITS.X_train, plain_init, record=record)
    assert np.mean(np.square(record["pre16"])) / first > 1000     # 2^16 without the factor


def test_residual_config_validation_and_hvp_refusal():
    for sizes in ((64, 32, 10), (64, 32, 16, 10)):
        with pytest.raises(ValueError, match="residual"):
            MLPConfig(sizes=sizes, residual=True)
    with pytest.raises(ValueError, match="residual_init"):
        MLPConfig(sizes=(64, 8, 8, 10), residual=True, residual_init="zero")
    config = small_config(sizes=RESIDUAL_SMALL, residual=True, norm="batch")
    params = model.init_params(np.random.default_rng(0), config)
    with pytest.raises(ValueError, match="residual"):
        model.hessian_vector_product(params, np.ones((4, 5)), np.zeros(4, dtype=int), config)


@pytest.mark.parametrize("norm", ["batch", "none", "noisy", "running"])
def test_a_stack_of_residual_arms_trains_each_arm_exactly_as_alone(norm):
    """Bit for bit, as for the plain MLP."""
    config = MLPConfig(sizes=(64, 16, 16, 16, 10), norm=norm, residual=True)
    settings = [dict(lr=0.05), dict(lr=0.2, momentum=0.9, order="class-sorted"), dict(lr=0.1, weight_decay=1e-3)]
    seeds = [3, 3, 4]
    rngs = {s: np.random.default_rng(s) for s in set(seeds)}
    kwargs = dict(steps=20, batch_size=16, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test, eval_every=10)
    stack = model.train_stack([rngs[s] for s in seeds], config, DIGITS.X_train, DIGITS.y_train,
                              [model.Arm(**a) for a in settings], **kwargs)
    for k, (seed, arm) in enumerate(zip(seeds, settings)):
        single = model.train(np.random.default_rng(seed), config, DIGITS.X_train, DIGITS.y_train, **arm, **kwargs)
        _same_result(stack.arm(k), single)


def test_sixteen_layer_residual_bn_mlp_learns_the_digits_deterministically():
    config = MLPConfig(sizes=(64,) + (64,) * 16 + (10,), norm="batch", residual=True)
    kwargs = dict(steps=300, batch_size=32, X_eval=DIGITS.X_test, y_eval=DIGITS.y_test)
    trajectory = model.ParamTrajectory(["gamma8"], every=100)
    probe, norms = model.ProbeMoments(DIGITS.X_test[:64], every=100), model.GradientNorms(every=100)
    result = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                               model.Arm(lr=0.05, momentum=0.9), record=[trajectory, probe, norms], **kwargs)
    assert result.eval_accuracy[-1, 0] > 0.9 and not result.diverged[0]      # chance: 0.1
    assert trajectory.arrays()["gamma8"].shape == (4, 1, 1, 64)
    assert probe.moments()["pre15"][0].shape == (3, 1, 64) and norms.arrays()["W16"].shape == (3, 1)
    again = model.train_stack(np.random.default_rng(0), config, DIGITS.X_train, DIGITS.y_train,
                              model.Arm(lr=0.05, momentum=0.9), **kwargs)
    for name in result.params:
        assert np.array_equal(result.params[name], again.params[name]), name
    assert np.array_equal(result.losses, again.losses)
    population = model.population_state(result.params, DIGITS.X_train, config)
    loss, accuracy = model.evaluate(model.arm_params(result.params, 0), model.arm_params(population, 0),
                                    DIGITS.X_test, DIGITS.y_test, config)
    assert accuracy > 0.9 and math.isfinite(loss)
