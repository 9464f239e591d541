"""Tests for bnclaims.experiments.depth (signal propagation at initialisation)."""

import math

import numpy as np
import pytest

from bnclaims import experiments
from bnclaims.experiments import depth

TINY = dict(depth=6, width=16, batch_size=8, batch_sizes=[4, 8], skip=1)


def _loss(x, y, weights, readout, activation, batchnorm, eps=1e-5):
    """The same network written out directly (float64), for finite differences."""
    a = x
    for W in weights:
        h = a @ W
        if batchnorm:
            h = (h - h.mean(0)) / np.sqrt(h.var(0) + eps)
        a = np.maximum(h, 0) if activation == "relu" else h
    logits = a @ readout
    logits = logits - logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]))


@pytest.mark.parametrize("activation", ["relu", "linear"])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_first_layer_gradient_norm_matches_finite_differences(activation, batchnorm):
    rng = np.random.default_rng(0)
    d, b = 12, 6
    x = rng.standard_normal((b, d))
    y = rng.integers(0, 10, b)
    first, _ = np.linalg.qr(rng.standard_normal((d, d)))      # orthogonal: |dL/dx| = |dL/dh_1|
    weights = [first] + [rng.standard_normal((d, d)) / math.sqrt(d) for _ in range(3)]
    readout = rng.standard_normal((d, 10)) / math.sqrt(d)
    _, grad_norm = depth.propagate(x, y, weights, readout, activation, batchnorm)
    numeric = np.zeros_like(x)
    step = 1e-6
    for i in range(b):
        for j in range(d):
            e = np.zeros_like(x)
            e[i, j] = step
            numeric[i, j] = (_loss(x + e, y, weights, readout, activation, batchnorm)
                             - _loss(x - e, y, weights, readout, activation, batchnorm)) / (2 * step)
    assert abs(grad_norm[0] - np.linalg.norm(numeric)) <= 1e-6 * np.linalg.norm(numeric)


def test_theory_values():
    assert depth.linear_bn_rate(4) == 2.0
    assert depth.linear_bn_rate(3) == math.inf
    assert depth.relu_bn_rate_large_batch() == pytest.approx(1.4669422, abs=1e-6)


def test_batchnorm_net_is_invariant_to_weight_scale_in_the_forward_pass():
    # with BN every hidden layer's output is scale-free, so only the first pre-activation changes
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 10, 8)
    weights = [rng.standard_normal((5, 7))] + [rng.standard_normal((7, 7)) for _ in range(3)]
    readout = rng.standard_normal((7, 10))
    act1, grad1 = depth.propagate(x, y, weights, readout, "relu", True)
    act2, grad2 = depth.propagate(x, y, [3.0 * w for w in weights], readout, "relu", True)
    np.testing.assert_allclose(act2, 3.0 * act1, rtol=1e-4)  # not exact only through eps
    np.testing.assert_allclose(grad2, grad1 / 3.0, rtol=1e-4)


def test_experiment_returns_declared_names_and_is_deterministic():
    exp = experiments.get("depth-signal-propagation")
    a = experiments.run_experiment(exp, 7, TINY)
    b = experiments.run_experiment(exp, 7, TINY)
    assert set(a["metrics"]) == set(exp.metrics) and set(a["series"]) == set(exp.series)
    assert a == b
    assert all(math.isfinite(v) for v in a["metrics"].values())
    assert len(a["series"]["grad_bn_relu_he"]) == TINY["depth"]


def test_rejects_batch_sizes_below_four():
    with pytest.raises(ValueError):
        depth.depth_signal_propagation(np.random.default_rng(0), **{**TINY, "batch_sizes": [2, 8]})


def test_residual_default_is_the_plain_net_and_the_residual_net_runs():
    exp = experiments.get("depth-signal-propagation")
    plain = experiments.run_experiment(exp, 7, TINY)
    assert experiments.run_experiment(exp, 7, {**TINY, "residual": False}) == plain
    for init in ("depth", "plain"):
        res = experiments.run_experiment(exp, 7, {**TINY, "residual": True, "residual_init": init})
        assert set(res["metrics"]) == set(exp.metrics)
        assert all(math.isfinite(v) for v in res["metrics"].values())
        assert res["metrics"]["grad_ratio_bn_relu_he"] != plain["metrics"]["grad_ratio_bn_relu_he"]
    # residual_init only scales the blocks of a residual net
    assert experiments.run_experiment(exp, 7, {**TINY, "residual_init": "plain"}) == plain


def test_residual_gradient_at_the_stream_matches_finite_differences():
    # the recorded gradient of the first hidden layer is dLoss/d(stream h_0) through skips and branches
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 10, 8)
    weights = [rng.standard_normal((5, 6)) * 0.5] + [rng.standard_normal((6, 6)) * 0.3 for _ in range(3)]
    readout = rng.standard_normal((6, 10)) * 0.4
    _, grad = depth.propagate(x, y, weights, readout, "relu", True, residual=True)

    def loss_of_h0(h0):
        h = h0
        for W in weights[1:]:
            z = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
            h = h + np.maximum(z, 0) @ W
        z = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
        logits = np.maximum(z, 0) @ readout
        logits = logits - logits.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]))

    h0 = x @ weights[0]
    numeric = np.zeros_like(h0)
    for idx in np.ndindex(h0.shape):
        step = np.zeros_like(h0)
        step[idx] = 1e-6
        numeric[idx] = (loss_of_h0(h0 + step) - loss_of_h0(h0 - step)) / 2e-6
    assert grad[0] == pytest.approx(np.linalg.norm(numeric), rel=1e-6)
