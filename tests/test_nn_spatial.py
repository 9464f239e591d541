"""Tests of the image layers of bnclaims.nn: spatial batch norm, conv2d, global average pooling.

As in test_nn.py: every backward against float64 central differences (relative error < 1e-7),
exact identities as exact asserts, and a stack of arms equal to separate calls bit for bit.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from bnclaims import nn
from test_nn import SKIP, check_grads, rel_error

DTYPES = [np.float32, np.float64]


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def images(rng, shape, dtype=np.float64):
    """Images with per-channel scales and offsets (channel axis -3)."""
    c = shape[-3]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, (c, 1, 1)) + rng.standard_normal((c, 1, 1))
    return x.astype(dtype)


def channel_params(rng, c, affine=True, dtype=np.float64):
    if not affine:
        return None, None
    return rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype)


# ----------------------------------------------------------------------------- gradient checks

@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (3, 2, 3, 1), (1, 2, 3, 3), (4, 1, 2, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_spatial_batchnorm_gradients(rng, shape, affine):
    x = images(rng, shape)
    gamma, beta = channel_params(rng, shape[1], affine)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.spatial_batchnorm_forward, nn.spatial_batchnorm_backward, dict(x=x, gamma=gamma, beta=beta), wrt, rng)


@pytest.mark.parametrize("affine", [True, False])
def test_spatial_batchnorm_eval_gradients(rng, affine):
    x = images(rng, (3, 2, 2, 3))
    gamma, beta = channel_params(rng, 2, affine)
    inputs = dict(x=x, running_mean=rng.standard_normal(2), running_var=rng.uniform(0.5, 2, 2), gamma=gamma, beta=beta)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.spatial_batchnorm_eval_forward, nn.spatial_batchnorm_eval_backward, inputs, wrt, rng)


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 3), (2, 0, 2), (3, 2, 3), (1, 0, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_gradients(rng, stride, padding, kernel, bias):
    inputs = dict(x=rng.standard_normal((2, 2, 5, 4)), W=rng.standard_normal((3, 2, kernel, kernel)),
                  b=rng.standard_normal(3) if bias else None, stride=stride, padding=padding)
    check_grads(nn.conv2d_forward, nn.conv2d_backward, inputs, ["x", "W", "b" if bias else None], rng)


def test_global_avg_pool_gradient(rng):
    check_grads(nn.global_avg_pool_forward, nn.global_avg_pool_backward, dict(x=rng.standard_normal((3, 2, 2, 3))),
                ["x"], rng)


# ----------------------------------------------------------------------------- stacks: (..., N, C, H, W)

def stacked_cases(rng, dtype, arms=3):
    """(name, forward, backward, per-arm inputs, stacked inputs) for every image layer."""
    def one(name):
        x = images(rng, (4, 3, 3, 2), dtype)
        gamma, beta = channel_params(rng, 3, dtype=dtype)
        return {
            "spatial_bn": dict(x=x, gamma=gamma, beta=beta),
            "spatial_bn_noaffine": dict(x=x, gamma=None, beta=None),
            "spatial_bn_eval": dict(x=x, running_mean=rng.standard_normal(3).astype(dtype),
                                    running_var=rng.uniform(0.5, 2, 3).astype(dtype), gamma=gamma, beta=beta),
            "conv2d": dict(x=x, W=rng.standard_normal((2, 3, 3, 3)).astype(dtype),
                           b=rng.standard_normal(2).astype(dtype), stride=1, padding=1),
            "conv2d_strided": dict(x=x, W=rng.standard_normal((2, 3, 2, 2)).astype(dtype), b=None, stride=2, padding=1),
            "gap": dict(x=x),
        }[name]
    layers = {
        "spatial_bn": (nn.spatial_batchnorm_forward, nn.spatial_batchnorm_backward),
        "spatial_bn_noaffine": (nn.spatial_batchnorm_forward, nn.spatial_batchnorm_backward),
        "spatial_bn_eval": (nn.spatial_batchnorm_eval_forward, nn.spatial_batchnorm_eval_backward),
        "conv2d": (nn.conv2d_forward, nn.conv2d_backward),
        "conv2d_strided": (nn.conv2d_forward, nn.conv2d_backward),
        "gap": (nn.global_avg_pool_forward, nn.global_avg_pool_backward),
    }
    for name, (forward, backward) in layers.items():
        singles = [one(name) for _ in range(arms)]
        stacked = {}
        for key, value in singles[0].items():
            if not isinstance(value, np.ndarray):
                stacked[key] = value
                continue
            values = np.stack([s[key] for s in singles])
            if key in ("gamma", "beta", "running_mean", "running_var", "b"):
                values = values[:, None, :]                # per arm (K, 1, C)
            stacked[key] = values
        yield name, forward, backward, singles, stacked


def _grads(result):
    return (result,) if isinstance(result, np.ndarray) else tuple(result)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_stack_of_arms_equals_separate_calls_exactly(rng, dtype):
    for name, forward, backward, singles, stacked in stacked_cases(rng, dtype):
        out, cache = forward(**stacked)
        dout = rng.standard_normal(out.shape).astype(dtype)
        grads = _grads(backward(dout, cache))
        for k, inputs in enumerate(singles):
            out_k, cache_k = forward(**inputs)
            assert out.dtype == dtype and np.array_equal(out[k], out_k), name
            for grad, grad_k in zip(grads, _grads(backward(dout[k], cache_k))):
                if grad_k is None:
                    assert grad is None, name
                else:
                    assert grad.dtype == dtype and np.array_equal(grad[k].reshape(grad_k.shape), grad_k), name
            if hasattr(cache, "batch_mean"):
                for stat, stat_k in zip(nn.batch_stats(cache), nn.batch_stats(cache_k)):
                    assert np.array_equal(stat[k, 0], stat_k), name


@pytest.mark.parametrize("name", ["spatial_bn", "spatial_bn_eval", "conv2d", "conv2d_strided", "gap"])
def test_stacked_gradients_match_finite_differences(rng, name):
    _, forward, backward, _, stacked = next(c for c in stacked_cases(rng, np.float64, arms=2) if c[0] == name)
    wrt = {"conv2d": ["x", "W", "b"], "conv2d_strided": ["x", "W", None], "gap": ["x"]}.get(name, ["x", "gamma", "beta"])
    check_grads(forward, backward, stacked, wrt, rng)


def test_shared_parameters_get_the_sum_of_the_arms_gradients(rng):
    """A (C,) gamma or one (F, C, KH, KW) kernel used by every arm: its gradient sums the arms'."""
    x = images(rng, (2, 3, 2, 2, 2))
    gamma, beta = channel_params(rng, 2)
    check_grads(nn.spatial_batchnorm_forward, nn.spatial_batchnorm_backward, dict(x=x, gamma=gamma, beta=beta),
                [SKIP, "gamma", "beta"], rng)
    inputs = dict(x=x, W=rng.standard_normal((3, 2, 2, 2)), b=rng.standard_normal(3), stride=1, padding=1)
    check_grads(nn.conv2d_forward, nn.conv2d_backward, inputs, [SKIP, "W", "b"], rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_on_a_two_axis_stack_equals_separate_calls_exactly(rng, dtype):
    """A (2, 3) stack of arms with per-arm kernels, a bias per row of arms broadcast over the
    columns, and an input shared by the rows (a stride-0 view, as the model passes its batch)."""
    x = np.broadcast_to(images(rng, (1, 3, 4, 2, 6, 5), dtype), (2, 3, 4, 2, 6, 5))
    W = rng.standard_normal((2, 3, 3, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal((2, 1, 1, 3)).astype(dtype)
    out, cache = nn.conv2d_forward(x, W, b, stride=2, padding=1)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dW, db = nn.conv2d_backward(dout, cache)
    assert db.shape == b.shape
    for i, j in np.ndindex(2, 3):
        out_k, cache_k = nn.conv2d_forward(x[i, j], W[i, j], b[i, 0, 0], stride=2, padding=1)
        dx_k, dW_k, db_k = nn.conv2d_backward(dout[i, j], cache_k)
        assert np.array_equal(out[i, j], out_k) and np.array_equal(dx[i, j], dx_k) and np.array_equal(dW[i, j], dW_k)
    per_arm_db = [nn.conv2d_backward(dout[i, j], nn.conv2d_forward(x[i, j], W[i, j], b[i, 0, 0], 2, 1)[1])[2]
                  for i, j in np.ndindex(2, 3)]
    np.testing.assert_allclose(db[:, 0, 0], np.reshape(per_arm_db, (2, 3, 3)).sum(axis=1), rtol=1e-5)


# ----------------------------------------------------------------------------- exact identities

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (64, 40), (520, 256), (3, 4, 7, 6)])   # (..., N, C): stacks, wide rows, einsum
def test_spatial_batchnorm_of_one_pixel_is_batchnorm_exactly(rng, dtype, affine, shape):
    x = images(rng, shape + (1, 1), dtype)[..., 0, 0]    # (..., N, C)
    gamma, beta = channel_params(rng, shape[-1], affine, dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = nn.batchnorm_forward(x, gamma, beta)
    spatial, spatial_cache = nn.spatial_batchnorm_forward(x[..., None, None], gamma, beta)
    np.testing.assert_array_equal(spatial, out[..., None, None])
    grads = nn.batchnorm_backward(dout, cache)
    spatial_grads = nn.spatial_batchnorm_backward(dout[..., None, None], spatial_cache)
    np.testing.assert_array_equal(spatial_grads[0], grads[0][..., None, None])
    for a, b in zip(spatial_grads[1:], grads[1:]):
        assert (a is None and b is None) or np.array_equal(a, b)
    for a, b in zip(nn.batch_stats(spatial_cache), nn.batch_stats(cache)):
        np.testing.assert_array_equal(a, b)
    running = (rng.standard_normal(shape[-1]).astype(dtype), rng.uniform(0.5, 2, shape[-1]).astype(dtype))
    evaluated, eval_cache = nn.batchnorm_eval_forward(x, *running, gamma, beta)
    spatial_eval, spatial_eval_cache = nn.spatial_batchnorm_eval_forward(x[..., None, None], *running, gamma, beta)
    np.testing.assert_array_equal(spatial_eval, evaluated[..., None, None])
    for a, b in zip(nn.spatial_batchnorm_eval_backward(dout[..., None, None], spatial_eval_cache),
                    nn.batchnorm_eval_backward(dout, eval_cache)):
        assert (a is None and b is None) or np.array_equal(a.reshape(b.shape), b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_with_a_one_by_one_kernel_is_a_matmul(rng, dtype, stride):
    """A 1x1 kernel mixes channels pixel by pixel: out = W[:, :, 0, 0] @ x over the channel axis
    (at every stride-th pixel), computed here as one matrix product of (F, C) and (C, N*H*W)."""
    x = images(rng, (4, 3, 5, 6), dtype)
    W, b = rng.standard_normal((2, 3, 1, 1)).astype(dtype), rng.standard_normal(2).astype(dtype)
    out, _ = nn.conv2d_forward(x, W, b, stride=stride)
    picked = x[:, :, ::stride, ::stride]
    n, c, h, w = picked.shape
    product = W[:, :, 0, 0] @ np.ascontiguousarray(picked.transpose(1, 0, 2, 3)).reshape(c, n * h * w)
    product += b[:, None]
    np.testing.assert_array_equal(out, product.reshape(2, n, h, w).transpose(1, 0, 2, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_padding_is_zeros(rng, dtype):
    """Padding p equals convolving the explicitly zero-padded image without padding, bit for bit."""
    x = images(rng, (2, 3, 4, 5), dtype)
    W, b = rng.standard_normal((4, 3, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    padded = np.pad(x, [(0, 0), (0, 0), (2, 2), (2, 2)])
    np.testing.assert_array_equal(nn.conv2d_forward(x, W, b, stride=2, padding=2)[0],
                                  nn.conv2d_forward(padded, W, b, stride=2)[0])


def test_global_avg_pool_backward_spreads_evenly(rng):
    x = images(rng, (3, 2, 4, 5), np.float32)
    out, cache = nn.global_avg_pool_forward(x)
    assert out.shape == (3, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float64).mean(axis=(2, 3)), rtol=0, atol=20 * np.finfo(np.float32).eps * 4)
    dout = rng.standard_normal((3, 2)).astype(np.float32)
    dx = nn.global_avg_pool_backward(dout, cache)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, np.broadcast_to((dout * np.float32(1 / 20))[..., None, None], x.shape))


# ----------------------------------------------------------------------------- running statistics

def test_spatial_running_statistics_follow_the_pytorch_update(rng):
    """Batch statistics per channel over N * H * W entries; the running variance gets the unbiased one."""
    x = images(rng, (4, 3, 5, 2))
    _, cache = nn.spatial_batchnorm_forward(x, None, None)
    mean, var = nn.batch_stats(cache)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-13)
    running_mean, running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    new_mean, new_var = nn.update_running_stats(running_mean, running_var, mean, var, n=4 * 5 * 2, momentum=0.1)
    np.testing.assert_allclose(new_mean, 0.9 * running_mean + 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(new_var, 0.9 * running_var + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-13)
    # in eval mode with the batch's own statistics the output is the training output
    train, _ = nn.spatial_batchnorm_forward(x, None, None)
    evaluated, _ = nn.spatial_batchnorm_eval_forward(x, mean, var, None, None)
    assert np.max(np.abs(evaluated - train)) <= 64 * np.finfo(np.float64).eps * np.max(np.abs(train))


def test_spatial_batchnorm_normalises_each_channel(rng):
    x = images(rng, (6, 3, 4, 4), np.float32)
    out, _ = nn.spatial_batchnorm_forward(x, None, None)
    per_channel = out.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.max(np.abs(per_channel.mean(axis=1))) <= 1e-5
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(per_channel.var(axis=1), var / (var + 1e-5), rtol=1e-5)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call,message", [
    (lambda: nn.spatial_batchnorm_forward(np.ones((4, 3)), None, None), r"shape \(N, C, H, W\)"),
    (lambda: nn.spatial_batchnorm_forward(np.ones((1, 3, 1, 1)), None, None), "more than one example"),
    (lambda: nn.spatial_batchnorm_forward(np.ones((2, 3, 2, 2)), np.ones(2), np.zeros(2)), r"gamma must have shape \(3,\)"),
    (lambda: nn.conv2d_forward(np.ones((2, 3, 4, 4)), np.ones((5, 2, 3, 3)), None), "W must have shape"),
    (lambda: nn.conv2d_forward(np.ones((2, 3, 4, 4)), np.ones((5, 3, 3, 3)), None, stride=0), "stride"),
    (lambda: nn.conv2d_forward(np.ones((2, 3, 2, 2)), np.ones((5, 3, 3, 3)), None), "does not fit"),
    (lambda: nn.conv2d_forward(np.ones((2, 3, 4, 4)), np.ones((5, 3, 3, 3)), np.ones(4)), r"b must have shape \(5,\)"),
])
def test_bad_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_one_pixel_per_channel_is_enough_with_a_batch(rng):
    out, _ = nn.spatial_batchnorm_forward(images(rng, (1, 2, 2, 1)), None, None)  # N * H * W = 2
    assert np.all(np.isfinite(out))
