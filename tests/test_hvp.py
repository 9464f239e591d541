"""Tests of bnclaims.model's exact Hessian-vector product (R-operator) and flat parameter vectors.

The reference is the dense Hessian of a tiny net built column by column from centred finite
differences of the model's exact gradient, in float64; then the exact identities of a Hessian
(symmetry, linearity in the direction), and the scale invariance batch norm gives the weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnclaims import model
from bnclaims.model import MLPConfig

EPS64 = np.finfo(np.float64).eps

# (name, config options): batch norm before / after the activation, without affine, no norm, linear
CONFIGS = {
    "bn": dict(norm="batch", hidden_bias=False),
    "bn-with-bias": dict(norm="batch"),
    "bn-after": dict(norm="batch", norm_position="after"),
    "bn-no-affine": dict(norm="batch", affine=False),
    "plain": dict(norm="none"),
    "plain-linear": dict(norm="none", activation="linear"),
}


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(a) + np.abs(b))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def tiny_problem(seed: int, options: dict, sizes=(5, 4, 3, 3), n=7, eps=1e-5):
    """A tiny float64 MLP with every parameter moved away from its special initial value (with zero
    biases an example whose previous layer is all zero would sit exactly on a ReLU kink)."""
    config = MLPConfig(sizes=sizes, dtype="float64", eps=eps, **options)
    rng = np.random.default_rng(seed)
    params = model.init_params(rng, config)
    for name in params:
        if not model.is_weight(name):
            params[name] = params[name] + rng.normal(0, 0.3, params[name].shape)
    x = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], size=n)
    return config, params, x, y


def flat_gradient(flat, like, x, y, config):
    params = model.unflatten_params(flat, like)
    _, grads, _, _ = model.loss_and_grads(params, model.init_state(config), x, y, config)
    return model.flatten_params(grads)


def flat_hvp(params, x, y, config):
    hvp = model.hessian_vector_product(params, x, y, config)
    return lambda v: model.flatten_params(hvp(model.unflatten_params(v, params)))


def dense_hessian_fd(params, x, y, config, h=1e-5):
    """The Hessian by centred finite differences of the exact gradient, column by column."""
    flat = model.flatten_params(params)
    columns = []
    for e in np.eye(flat.size) * h:
        columns.append((flat_gradient(flat + e, params, x, y, config) - flat_gradient(flat - e, params, x, y, config)) / (2 * h))
    return np.stack(columns, axis=1)


def dense_hessian_rop(params, x, y, config):
    hvp = flat_hvp(params, x, y, config)
    size = model.flatten_params(params).size
    return np.stack([hvp(e) for e in np.eye(size)], axis=1)


@pytest.mark.parametrize("kind", CONFIGS)
def test_hessian_vector_product_matches_the_finite_difference_hessian(kind):
    """R-operator columns vs finite differences of the exact gradient (h = 1e-5): truncation error
    O(h^2) = 1e-10 relative, rounding O(eps / h) = 1e-11; the bar is 1e-7, over 5 random nets."""
    worst = 0.0
    for seed in range(5):
        config, params, x, y = tiny_problem(seed, CONFIGS[kind])
        worst = max(worst, rel_error(dense_hessian_rop(params, x, y, config), dense_hessian_fd(params, x, y, config)))
    assert worst < 1e-7, worst


@pytest.mark.parametrize("kind", ["bn", "plain"])
def test_hessian_vector_product_at_the_experiments_size(kind):
    """A 64-32-32-10 net on 64 examples: H v against the directional finite difference of the gradient
    (h = 1e-5 along a unit direction), for 5 random directions."""
    config, params, x, y = tiny_problem(0, CONFIGS[kind], sizes=(64, 32, 32, 10), n=64)
    flat = model.flatten_params(params)
    hvp = flat_hvp(params, x, y, config)
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(5):
        v = rng.normal(size=flat.size)
        v /= np.linalg.norm(v)
        h = 1e-5
        fd = (flat_gradient(flat + h * v, params, x, y, config) - flat_gradient(flat - h * v, params, x, y, config)) / (2 * h)
        worst = max(worst, rel_error(hvp(v), fd))
    assert worst < 1e-6, worst


@pytest.mark.parametrize("kind", CONFIGS)
def test_hessian_is_symmetric_and_linear_in_the_direction(kind):
    """Exact identities, the worst over 50 random pairs: v^T H w = w^T H v and
    H(a u + b v) = a H u + b H v, to 50 float64 epsilons of the size of the terms (seen: <= 4)."""
    config, params, x, y = tiny_problem(11, CONFIGS[kind])
    hvp = flat_hvp(params, x, y, config)
    size = model.flatten_params(params).size
    rng = np.random.default_rng(0)
    worst_symmetry = worst_linearity = 0.0
    for _ in range(50):
        u, v = rng.normal(size=(2, size))
        a, b = rng.normal(size=2)
        hu, hv = hvp(u), hvp(v)
        worst_symmetry = max(worst_symmetry, abs(u @ hv - v @ hu) / (np.abs(u) @ np.abs(hv) + np.abs(v) @ np.abs(hu)))
        worst_linearity = max(worst_linearity, rel_error(hvp(a * u + b * v), a * hu + b * hv))
    assert worst_symmetry < 50 * EPS64, worst_symmetry
    assert worst_linearity < 50 * EPS64, worst_linearity
    H = dense_hessian_rop(params, x, y, config)
    assert rel_error(H, H.T) < 50 * EPS64


def test_batchnorm_scale_invariance_gives_h_w_equal_minus_g():
    """With batch norm and eps = 0 the loss is unchanged when the incoming weights W0 of a normalized
    layer are scaled (homogeneous of degree 0): then g(W0) . W0 = 0 and, differentiating
    g(c W0) = g(W0) / c at c = 1, H (W0, 0, ...) = (-g_W0, 0, ...)."""
    config, params, x, y = tiny_problem(3, CONFIGS["bn"], eps=0.0)
    _, grads, _, _ = model.loss_and_grads(params, model.init_state(config), x, y, config)
    direction = {name: np.zeros_like(value) for name, value in params.items()}
    direction["W0"] = params["W0"].copy()
    product = model.hessian_vector_product(params, x, y, config)(direction)
    expected = {name: np.zeros_like(value) for name, value in params.items()}
    expected["W0"] = -grads["W0"]
    assert abs(np.sum(grads["W0"] * params["W0"])) < 1e-12 * np.abs(grads["W0"]).sum() * np.abs(params["W0"]).sum()
    assert rel_error(model.flatten_params(product), model.flatten_params(expected)) < 1e-10


def test_hessian_vector_product_leaves_its_inputs_alone():
    config, params, x, y = tiny_problem(2, CONFIGS["bn"])
    before = model.copy_params(params)
    direction = {name: np.ones_like(value) for name, value in params.items()}
    hvp = model.hessian_vector_product(params, x, y, config)
    first = hvp(direction)
    assert all(np.array_equal(params[name], before[name]) for name in params)
    assert all(np.array_equal(direction[name], np.ones_like(params[name])) for name in params)
    again = hvp(direction)
    assert all(np.array_equal(first[name], again[name]) for name in first)


@pytest.mark.parametrize("options", [dict(norm="layer"), dict(norm="batch", activation="tanh"),
                                     dict(norm="ghost", ghost_batch_size=2)])
def test_unsupported_configurations_are_refused(options):
    config, params, x, y = tiny_problem(0, dict(norm="none"))
    with pytest.raises(ValueError, match="hessian_vector_product supports"):
        model.hessian_vector_product(params, x, y, MLPConfig(sizes=config.sizes, dtype="float64", **options))


def test_flat_vectors_round_trip_in_kind_then_layer_order():
    config, params, _, _ = tiny_problem(0, CONFIGS["bn-with-bias"])
    flat = model.flatten_params(params)
    assert flat.size == sum(value.size for value in params.values())
    again = model.unflatten_params(flat, params)
    assert list(again) == ["W0", "W1", "W2", "b0", "b1", "b2", "gamma0", "gamma1", "beta0", "beta1"]
    assert all(np.array_equal(again[name], params[name]) for name in params)
    shuffled = dict(reversed(list(params.items())))           # the dict's order does not matter
    assert np.array_equal(model.flatten_params(shuffled), flat)
    with pytest.raises(ValueError, match="entries"):
        model.unflatten_params(flat[:-1], params)
