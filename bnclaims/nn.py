"""NumPy layers as pure forward/backward pairs (in the style of cs231n ``layers.py``).

Every layer is two functions::

    out, cache = <layer>_forward(x, ...)
    grads      = <layer>_backward(dout, cache)

Rules every function here keeps:

* Pure: inputs are never mutated; outputs are fresh arrays.
* The result dtype is the dtype of ``x`` (float32 stays float32, float64 stays float64);
  parameters are cast to it and scalars such as ``eps`` stay Python floats.
* Shapes: ``x`` is ``(N, D)`` -- N examples, D features. Per-feature parameters are ``(D,)``.
* Stacks: every function also takes ``x`` of shape ``(..., N, D)``: leading "arm" axes
  (arms x seeds x learning rates, say) that are independent networks computed in one call.
  The batch axis is always -2 and the feature axis -1. A per-feature parameter is then either
  ``(D,)``, shared by every arm, or per arm ``(..., 1, D)`` (keepdims shape, broadcasting against
  x); ``W`` is ``(D, M)`` or ``(..., D, M)``. Per-feature statistics in caches are ``(D,)`` for an
  ``(N, D)`` x and ``(..., 1, D)`` for a stack; a parameter's gradient has the parameter's shape
  (a shared ``(D,)`` parameter gets the sum over the arms). One implementation serves both: arm
  k of a stack gives bit for bit what the same call on arm k alone gives (tests check this).
* Images: x is ``(N, C, H, W)`` or a stack ``(..., N, C, H, W)``; per-channel parameters are
  ``(C,)`` or per arm ``(..., 1, C)`` (see the section "images" below).
* A training-mode layer that needs batch statistics refuses a batch of one example.

Performance notes (these run in the inner loop of every experiment):

* Column sums are BLAS matrix-vector products, ``ones @ x``: about twice as fast as
  ``x.sum(axis=0)`` and no float64 temporaries. Column sums of a product (the variance, and
  sum(dy * xc) in the backward) are one ``einsum`` on large arrays: it reads both operands once
  and writes nothing.
* Batch norm keeps ``xc = x - mean`` and the per-feature ``inv_std`` in its cache and never
  materialises ``x_hat``: the per-feature factors are folded into (D,) vectors first, so each
  pass over (N, D) is one in-place ufunc with ``out=``; forward and backward each allocate only
  the arrays they return or cache: three or four passes over (N, D) forward and four backward
  besides the column sums (NumPy has no fused multiply-add).
* Per-feature broadcasts over many rows work on wide rows (`_per_feature`, `_scale_shift`,
  `_bn_dx`): NumPy's per-row overhead otherwise doubles the cost of ``x * v`` at 256 x 256.
* Measured and not worth it on the machine here (AMD EPYC, AVX2, 512 KB L2 per core): L2-sized
  row blocks (no faster than whole-array passes) and 64-byte aligned outputs (large NumPy arrays
  are already 32-byte aligned, all AVX2 needs).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

__all__ = [
    "linear_forward", "linear_backward",
    "relu_forward", "relu_backward",
    "softmax_cross_entropy",
    "batchnorm_forward", "batchnorm_backward", "batch_stats", "update_running_stats",
    "batchnorm_eval_forward", "batchnorm_eval_backward",
    "layernorm_forward", "layernorm_backward",
    "groupnorm_forward", "groupnorm_backward",
    "ghost_batchnorm_forward", "ghost_batchnorm_backward",
    "batchrenorm_forward", "batchrenorm_backward",
    "running_batchnorm_forward", "running_batchnorm_backward", "running_stats",
    "noisy_batchnorm_forward", "noisy_batchnorm_backward", "sample_covariate_noise",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "spatial_batchnorm_eval_forward", "spatial_batchnorm_eval_backward",
    "conv2d_forward", "conv2d_backward",
    "global_avg_pool_forward", "global_avg_pool_backward",
]


# ----------------------------------------------------------------------------- helpers

def _as_float_2d(x, name: str = "x") -> np.ndarray:
    """`x` as a floating (N, D) or stacked (..., N, D) array; integer input becomes float64."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, D) (or (..., N, D) for a stack); got shape {x.shape}")
    return x


def _param(p, x: np.ndarray, name: str, d: int | None = None):
    """A per-feature parameter of x's dtype: (d,), or per arm (..., 1, d) for a stacked x; or None.

    d defaults to x's feature count.
    """
    if p is None:
        return None
    d = x.shape[-1] if d is None else d
    p = np.asarray(p, dtype=x.dtype)  # no copy when the dtype already matches
    if p.shape == (d,):
        return p
    if x.ndim > 2 and p.ndim == x.ndim and p.shape[-2:] == (1, d):
        if p.shape[:-2] == x.shape[:-2]:         # one entry per arm: the common case, no broadcast check
            return p
        try:
            if np.broadcast_shapes(p.shape[:-2], x.shape[:-2]) == x.shape[:-2]:
                return p
        except ValueError:
            pass
    if x.ndim > 2:
        raise ValueError(f"{name} must have shape ({d},) or per arm (..., 1, {d}) broadcasting against the "
                         f"stack axes {x.shape[:-2]} of x; got shape {p.shape}")
    raise ValueError(f"{name} must have shape ({d},) to match x with {d} features; got shape {p.shape}")


def _affine(gamma, beta, x: np.ndarray, d: int | None = None):
    """Validate (gamma, beta): both per-feature arrays (see `_param`) or both None (affine off)."""
    if (gamma is None) != (beta is None):
        raise ValueError("gamma and beta must both be arrays or both be None (affine off)")
    return _param(gamma, x, "gamma", d), _param(beta, x, "beta", d)


def _column(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A reduction over the batch axis, (..., D), in the statistics shape: (D,) or (..., 1, D)."""
    return v if x.ndim == 2 else v[..., None, :]


def _grad_like(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The gradient g (statistics shape) summed down to the shape of the parameter p."""
    if g.shape == p.shape:
        return g
    if p.ndim == 1:                                 # a (D,) parameter shared by every arm
        return g.reshape(-1, g.shape[-1]).sum(axis=0)
    lead = g.ndim - p.ndim                          # per-arm p broadcast over some stack axes
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(p.shape) if s == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes).reshape(p.shape)


def _need_two(n: int, layer: str) -> None:
    if n < 2:
        raise ValueError(
            f"batch norm in training mode needs more than one example per batch "
            f"({layer} got {n}): the variance of one example is 0 and x - mean is 0; "
            f"use a larger batch, eval mode, or layer/group norm"
        )


def _check_eps(eps: float) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; got {eps}")


@lru_cache(maxsize=64)
def _mean_weights(n: int, dtype: np.dtype, count: int | None = None) -> np.ndarray:
    """A read-only (n,) vector of 1/n: `_mean_weights(N, dt) @ x` is the column mean of x.

    With count: 1/count instead (the mean over count = N * L entries of L columns each).
    """
    w = np.full(n, 1.0 / (n if count is None else count), dtype=dtype)
    w.flags.writeable = False
    return w


def _group_sum(v: np.ndarray, group: int) -> np.ndarray:
    """(..., C * L) -> (..., C): sums of consecutive groups of L entries (L = 1: v itself)."""
    if group == 1:
        return v
    return v.reshape(v.shape[:-1] + (v.shape[-1] // group, group)) @ _ones(group, v.dtype)


def _expand(v: np.ndarray, group: int) -> np.ndarray:
    """(..., C) -> (..., C * L): each entry repeated L times (a per-channel vector as a per-feature one)."""
    return v if group == 1 else v.repeat(group, axis=-1)


@lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    """A read-only (n,) vector of ones: `_ones(N, dt) @ x` is the column sum of x (BLAS gemv)."""
    w = np.ones(n, dtype=dtype)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=256)
def _rows_per_wide_row(n: int, d: int) -> int:
    """How many rows of an (n, d) array `_per_feature` treats as one wide row (1 = plain broadcast).

    Measured (NumPy 2.4, on AVX-512 and on AVX2): a broadcast ``x * v`` runs at the speed of a
    same-shape product only once its rows reach ~8192 elements, and is ~1.5x slower below. The smallest
    divisor k of n with k * d >= 8192 keeps the tiled copy of v small; worth it only with many
    rows, since tiling and reshaping cost 1-2 microseconds.
    """
    if n < 128:
        return 1
    for k in range(-(-8192 // d), n):
        if n % k == 0:
            return k
    return n  # no divisor is wide enough: the whole array as one row


def _wide_rows(a: np.ndarray) -> int:
    """k: `_per_feature` and the batch-norm kernels treat k rows of `a` as one wide row (1: plain broadcasting)."""
    k = _rows_per_wide_row(*a.shape[-2:])
    return k if k > 1 and a.flags.c_contiguous else 1


def _tile(v: np.ndarray, k: int) -> np.ndarray:
    """A per-feature vector (D,) or (..., 1, D) tiled k times along its feature axis, (k * D,) or
    (..., 1, k * D): what broadcasts against the wide view (..., N / k, k * D) of an (..., N, D) array."""
    lead, d = v.shape[:-1], v.shape[-1]
    return v.reshape(lead + (1, d)).repeat(k, -2).reshape(lead + (k * d,))


def _per_feature(op, a: np.ndarray, v: np.ndarray, out=None) -> np.ndarray:
    """op(a, v) for a: (N, D) and a per-feature v: (D,), like broadcasting and bit-identical to it.

    For a stack a: (..., N, D) with v: (D,) or (..., 1, D), each arm gets the same wide rows.

    Computed on the C-contiguous view (..., N / k, k * D) of a against v tiled k times, so that
    NumPy's per-row overhead is paid N / k times instead of N times.
    """
    k = _wide_rows(a)
    if k == 1 or (out is not None and not out.flags.c_contiguous):
        return op(a, v, out=out)
    n, d = a.shape[-2:]
    wide = a.shape[:-2] + (n // k, k * d)
    tiled = _tile(v, k)
    if out is None:
        return op(a.reshape(wide), tiled).reshape(a.shape)
    op(a.reshape(wide), tiled, out=out.reshape(wide))
    return out


def _scale_shift(xc: np.ndarray, scale: np.ndarray, shift, out: np.ndarray) -> np.ndarray:
    """out = xc * scale + shift for per-feature scale and shift (shift None: no shift); out is ours,
    C-contiguous, of xc's shape. Two passes over (N, D), the vectors tiled by one call."""
    k = _wide_rows(xc)
    if k > 1:
        n, d = xc.shape[-2:]
        wide = xc.shape[:-2] + (n // k, k * d)
        xc, out_wide = xc.reshape(wide), out.reshape(wide)
        scale = _tile(scale, k)
        if shift is not None:
            shift = _tile(shift, k)
    else:
        out_wide = out
    np.multiply(xc, scale, out=out_wide)
    if shift is not None:
        np.add(out_wide, shift, out=out_wide)
    return out


# From this many elements per (N, D) array on, column sums of products are one einsum (it reads both
# operands once and writes no temporary); below, a product and a BLAS matrix-vector sum cost less.
# Measured here, float32 batch norm forward + backward: einsum 10-20 % faster at 1024 x 1024,
# 3 % slower at 256 x 256.
_EINSUM_FROM = 1 << 17


def _batch_moments(x: np.ndarray, group: int = 1):
    """Column mean, centred x and biased column variance of x: (N, D) -> (D,), (N, D), (D,);
    and an array of x's shape (uninitialised, or scratch) for the caller's output.

    For a stack (..., N, D) the statistics are (..., 1, D). With group = L, x is (N, C * L) and
    the statistics are per group of L consecutive columns (spatial batch norm: C channels of
    L = H * W pixels): mean and var (C,), xc = x - the mean of each entry's group.
    """
    n, d = x.shape[-2:]
    count = n * group
    weights = _mean_weights(n, x.dtype) if group == 1 else _mean_weights(n, x.dtype, count)
    mean = _column(_group_sum(weights @ x, group), x)    # (D,)
    xc = _per_feature(np.subtract, x, _expand(mean, group))   # (N, D) x - mean, kept in the cache
    if n * d >= _EINSUM_FROM:
        var = _column(_group_sum(np.einsum("...nd,...nd->...d", xc, xc), group), x)  # (D,) sum of squares, then
        var *= 1.0 / count                               # biased: divides by N, as every BN does in training
        return mean, xc, var, np.empty_like(xc)
    square = np.multiply(xc, xc)                         # (N, D) scratch; becomes `out` in the caller
    return mean, xc, _column(_group_sum(weights @ square, group), x), square


def _bn_dx(dy: np.ndarray, xc: np.ndarray, inv_std: np.ndarray, scale, group: int = 1):
    """Backward through x_hat = (x - mean_B) * inv_std with dL/dx_hat = dy * scale.

    dy: (N, D); xc = x - mean_B: (N, D); inv_std: (D,); scale: (D,) per-feature factor or None.
    Returns dx (N, D), sum_n dy (D,), sum_n dy * xc (D,).  (Stacks: (..., N, D) and (..., 1, D).)
    With group = L (see `_batch_moments`): dy, xc (N, C * L); inv_std, scale and the sums (C,).

    dx = scale * inv_std * (dy - mean_n(dy) - x_hat * mean_n(dy * x_hat)), written with xc:
    dx = scale * inv_std * (dy - mean_n(dy) - xc * inv_std^2 * mean_n(dy * xc)),
    four passes over (N, D) after the two sums (NumPy has no fused multiply-add).
    """
    n, d = dy.shape[-2:]
    count = n * group
    ones = _ones(n, dy.dtype)
    sum_dy = _column(_group_sum(ones @ dy, group), dy)           # (D,)
    if n * d >= _EINSUM_FROM:
        sum_dy_xc = _column(_group_sum(np.einsum("...nd,...nd->...d", dy, xc), group), dy)
        dx = np.empty_like(xc)
    else:
        dx = np.multiply(dy, xc)                     # (N, D) scratch for sum dy*xc, then becomes dx
        sum_dy_xc = _column(_group_sum(ones @ dx, group), dy)    # (D,)
    along_xc = inv_std * inv_std * sum_dy_xc * (-1.0 / count)    # dx = (xc * along_xc + constant + dy) * factor
    constant = sum_dy * (-1.0 / count)
    factor = inv_std if scale is None else scale * inv_std
    along_xc, constant, factor = _expand(along_xc, group), _expand(constant, group), _expand(factor, group)
    k = _wide_rows(xc) if dy.flags.c_contiguous else 1
    if k > 1:
        wide = xc.shape[:-2] + (n // k, k * d)
        xc, dy, dx_wide = xc.reshape(wide), dy.reshape(wide), dx.reshape(wide)
        along_xc, constant, factor = _tile(along_xc, k), _tile(constant, k), _tile(factor, k)
    else:
        dx_wide = dx
    np.multiply(xc, along_xc, out=dx_wide)
    np.add(dx_wide, constant, out=dx_wide)
    np.add(dx_wide, dy, out=dx_wide)
    np.multiply(dx_wide, factor, out=dx_wide)
    return dx, sum_dy, sum_dy_xc


def _standardize(xv: np.ndarray, axis: int, eps: float):
    """Normalise any view over `axis` (keepdims), for layer, group and ghost norm.

    Returns mean, biased var, x_hat = (xv - mean) / sqrt(var + eps) and inv_std.
    """
    mean = xv.mean(axis=axis, keepdims=True)
    xhat = xv - mean
    var = np.multiply(xhat, xhat).mean(axis=axis, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat *= inv_std                                 # our own array: normalise in place
    return mean, var, xhat, inv_std


def _standardize_backward(dxhat: np.ndarray, xhat: np.ndarray, inv_std: np.ndarray, axis: int) -> np.ndarray:
    """dx for x_hat = (x - mean) * inv_std with statistics over `axis`:
    dx = inv_std * (dxhat - mean(dxhat) - x_hat * mean(dxhat * x_hat))."""
    proj = np.multiply(dxhat, xhat).mean(axis=axis, keepdims=True)
    dx = dxhat - dxhat.mean(axis=axis, keepdims=True)
    dx -= xhat * proj
    dx *= inv_std
    return dx


# ----------------------------------------------------------------------------- linear, relu, loss

class LinearCache(NamedTuple):
    x: np.ndarray          # (N, D) or (..., N, D)
    W: np.ndarray          # (D, M) or (..., D, M)
    b: np.ndarray | None   # (M,), (..., 1, M) or None: only its shape is used (for db)


def linear_forward(x, W, b):
    """out = x @ W + b.  x: (N, D), W: (D, M), b: (M,) or None  ->  out: (N, M).

    Stacks: x (..., N, D), W (D, M) or (..., D, M), b (M,) or (..., 1, M) -> out (..., N, M).
    """
    x = _as_float_2d(x)
    W = np.asarray(W, dtype=x.dtype)
    if W.ndim < 2 or W.shape[-2] != x.shape[-1] or (W.ndim > 2 and W.ndim != x.ndim):
        raise ValueError(f"W must have shape ({x.shape[-1]}, M) for x of shape {x.shape}; got {W.shape}")
    out = x @ W
    if b is not None:
        b = _param(b, out, "b")
        out += b
    return out, LinearCache(x, W, b)


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T if a.ndim == 2 else a.swapaxes(-1, -2)


def linear_backward(dout, cache: LinearCache, input_grad: bool = True):
    """dout: (N, M) -> dx (N, D), dW (D, M), db (M,) or None when the layer has no bias.

    Stacks: each gradient has its parameter's shape (a shared W or b gets the sum over arms).
    ``input_grad=False``: dx is None, not computed (a network's first layer: nothing is below it).
    """
    x, W, b = cache
    dout = np.asarray(dout, dtype=x.dtype)
    dx = dout @ _transpose(W) if input_grad else None
    dW = _transpose(x) @ dout
    if dW.shape != W.shape:                          # one W shared by a stack of x
        dW = dW.reshape(-1, *W.shape).sum(axis=0)
    db = None if b is None else _grad_like(_column(_ones(dout.shape[-2], dout.dtype) @ dout, dout), b)
    return dx, dW, db


def relu_forward(x):
    """out = max(x, 0), elementwise.  x: (N, D) or any shape."""
    x = np.asarray(x)
    # the cache is a bool mask (1 byte per entry), not `out`, so a caller may modify `out`
    return np.maximum(x, 0), x > 0


def relu_backward(dout, cache):
    """dx = dout where the unit was active (x > 0), else 0.  dout: like x."""
    return np.multiply(dout, cache)


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of softmax(logits) against integer labels.

    logits: (N, C) float; y: (N,) ints in [0, C).
    Returns loss (python float, mean over N) and dlogits (N, C), same dtype as logits.

    Stacks: logits (..., N, C), y (N,) shared or (..., N) per arm; the loss is then an array
    (...,) of per-arm means (float64) and dlogits (..., N, C) the gradient of each arm's loss.
    """
    logits = _as_float_2d(logits, "logits")
    n, c = logits.shape[-2:]
    y = np.asarray(y)
    if (y.shape != (n,) and y.shape != logits.shape[:-1]) or y.dtype.kind not in "iu":
        raise ValueError(f"y must be ({n},) integer labels; got shape {y.shape}, dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"labels must be in [0, {c}); got range [{y.min()}, {y.max()}]")
    if logits.ndim == 2:
        rows = np.arange(n)
        shifted = logits - logits.max(axis=1, keepdims=True)  # exp never overflows
        exp = np.exp(shifted)
        sum_exp = exp @ _ones(c, exp.dtype)                    # (N,)
        loss = float(np.mean(np.log(sum_exp) - shifted[rows, y]))
        exp *= (1.0 / n) / sum_exp[:, None]                    # softmax / N, in place on our temporary
        exp[rows, y] -= 1.0 / n
        return loss, exp
    lead = logits.shape[:-1]
    # each row's label entry as a flat index into the (fresh, C-contiguous) arrays below
    starts = _row_starts(math.prod(lead), c)
    flat = (starts.reshape(-1, n) + y).reshape(-1) if y.ndim == 1 else starts + y.reshape(-1)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp @ _ones(c, exp.dtype)                        # (..., N)
    picked = shifted.reshape(-1)[flat].reshape(lead)
    loss = np.mean(np.log(sum_exp) - picked, axis=-1).astype(np.float64)
    exp *= (1.0 / n) / sum_exp[..., None]
    exp.reshape(-1)[flat] -= 1.0 / n                           # one entry per row: no repeated index
    return loss, exp


@lru_cache(maxsize=64)
def _row_starts(rows: int, c: int) -> np.ndarray:
    """A read-only (rows,) vector of r * c: where row r of a C-contiguous (rows, c) array starts."""
    w = np.arange(rows, dtype=np.intp) * c
    w.flags.writeable = False
    return w


# ----------------------------------------------------------------------------- batch norm (training)

class BatchNormCache(NamedTuple):
    xc: np.ndarray                # (N, D) x - batch_mean
    inv_std: np.ndarray           # (D,) 1 / sqrt(batch_var + eps)
    gamma: np.ndarray | None      # (D,) or None (affine off)
    batch_mean: np.ndarray        # (D,)
    batch_var: np.ndarray         # (D,) biased


def batchnorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Batch norm in training mode: statistics of this batch over axis 0.

    x: (N, D), N >= 2; gamma, beta: (D,) arrays, or both None (affine off).
    out = gamma * (x - mean_B) / sqrt(var_B + eps) + beta, var_B biased (divides by N).
    Stacks: x (..., N, D), gamma, beta (D,) or (..., 1, D); statistics per arm over axis -2.
    """
    x = _as_float_2d(x)
    _need_two(x.shape[-2], "batchnorm_forward")
    _check_eps(eps)
    gamma, beta = _affine(gamma, beta, x)
    mean, xc, var, out = _batch_moments(x)
    inv_std = 1.0 / np.sqrt(var + eps)
    if gamma is None:
        _scale_shift(xc, inv_std, None, out)
    else:
        _scale_shift(xc, gamma * inv_std, beta, out)   # x_hat never materialised
    return out, BatchNormCache(xc, inv_std, gamma, mean, var)


def batchnorm_backward(dout, cache: BatchNormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,); dgamma, dbeta None when affine off."""
    xc, inv_std, gamma, _, _ = cache
    dout = np.asarray(dout, dtype=xc.dtype)
    dx, sum_dout, sum_dout_xc = _bn_dx(dout, xc, inv_std, gamma)
    if gamma is None:
        return dx, None, None
    return dx, _grad_like(sum_dout_xc * inv_std, gamma), _grad_like(sum_dout, gamma)


def batch_stats(cache):
    """(mean, biased var), each (D,), of the batch a training-mode batch-norm cache normalised.

    Works for the caches of batchnorm, ghost, renorm, running and noisy batch norm; feed the
    result to `update_running_stats`.
    """
    try:
        return cache.batch_mean, cache.batch_var
    except AttributeError:
        raise ValueError(f"{type(cache).__name__} has no batch statistics (not a training-mode batch norm cache)") from None


def update_running_stats(running_mean, running_var, batch_mean, batch_var, n: int,
                         momentum: float = 0.1, unbiased: bool = True):
    """Exponential moving averages of the batch statistics, PyTorch convention.

        new_mean = (1 - momentum) * running_mean + momentum * batch_mean
        new_var  = (1 - momentum) * running_var  + momentum * batch_var * n / (n - 1)   (unbiased=True)
        new_var  = (1 - momentum) * running_var  + momentum * batch_var                 (unbiased=False)

    running_*, batch_*: (D,); batch_var is the BIASED batch variance (what `batch_stats`
    returns, and what batch norm normalises with in training); n is the batch size.

    Conventions differ between frameworks:

    * PyTorch (``nn.BatchNorm1d(momentum=0.1)``): ``momentum`` is the weight of the NEW batch
      value, default 0.1. Training normalises with the biased batch variance, but the running
      variance is updated with the UNBIASED one (n / (n - 1) correction): ``unbiased=True``.
    * Keras / TensorFlow (``BatchNormalization(momentum=0.99)``): ``momentum`` is the weight of
      the OLD running value, so ``keras_momentum = 1 - torch_momentum`` (0.99 there is 0.01
      here). Which variance enters the moving average depends on the code path: the plain path
      (``tf.nn.moments``) uses the biased batch variance (``unbiased=False``); TensorFlow's fused
      kernel reports the Bessel-corrected one. Keras's default eps is 1e-3, PyTorch's 1e-5.
    * Both normalise in training with the biased batch variance, and both start from
      running_mean = 0, running_var = 1.
    """
    if unbiased:
        if n < 2:
            raise ValueError(f"the unbiased batch variance needs n >= 2 examples; got n={n}")
        batch_var = batch_var * (n / (n - 1))
    keep = 1.0 - momentum
    new_mean = keep * np.asarray(running_mean) + momentum * np.asarray(batch_mean)
    new_var = keep * np.asarray(running_var) + momentum * np.asarray(batch_var)
    return new_mean, new_var


# ----------------------------------------------------------------------------- batch norm (inference)

class BatchNormEvalCache(NamedTuple):
    xhat: np.ndarray | None       # (N, D), None when affine off (only dgamma needs it)
    inv_std: np.ndarray           # (D,) 1 / sqrt(running_var + eps)
    gamma: np.ndarray | None


def batchnorm_eval_forward(x, running_mean, running_var, gamma, beta, eps: float = 1e-5, cache: bool = True):
    """Batch norm in inference mode: a fixed per-feature affine map.

    x: (N, D); running_mean, running_var: (D,); gamma, beta: (D,) or both None.
    out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta.
    Stacks: x (..., N, D); every per-feature argument (D,) or (..., 1, D).
    ``cache=False``: the cache is None (no backward will follow) and out is computed in place,
    the same numbers with fewer temporaries.
    """
    x = _as_float_2d(x)
    _check_eps(eps)
    gamma, beta = _affine(gamma, beta, x)
    running_mean = _param(running_mean, x, "running_mean")
    running_var = _param(running_var, x, "running_var")
    inv_std = 1.0 / np.sqrt(running_var + eps)
    xhat = x - running_mean
    xhat *= inv_std
    if gamma is None:
        return xhat, BatchNormEvalCache(None, inv_std, None) if cache else None
    if not cache:
        xhat *= gamma                               # our own array: (x_hat * gamma) + beta, as below
        xhat += beta
        return xhat, None
    return xhat * gamma + beta, BatchNormEvalCache(xhat, inv_std, gamma)


def batchnorm_eval_backward(dout, cache: BatchNormEvalCache):
    """dout: (N, D) -> dx, dgamma, dbeta (the statistics are constants in eval mode)."""
    xhat, inv_std, gamma = cache
    dout = np.asarray(dout, dtype=inv_std.dtype)
    if gamma is None:
        return dout * inv_std, None, None
    ones = _ones(dout.shape[-2], dout.dtype)
    dx = dout * (gamma * inv_std)
    return dx, _grad_like(_column(ones @ (dout * xhat), dout), gamma), _grad_like(_column(ones @ dout, dout), gamma)


# ----------------------------------------------------------------------------- layer norm, group norm

class GroupNormCache(NamedTuple):
    xhat: np.ndarray              # (N, G, D // G) normalised x; stacks (..., N, G, D // G)
    inv_std: np.ndarray           # (N, G, 1); stacks (..., N, G, 1)
    gamma: np.ndarray | None      # (D,)


def groupnorm_forward(x, gamma, beta, groups: int, eps: float = 1e-5):
    """Group norm: features split into `groups` contiguous groups; statistics per example per group.

    x: (N, D) with D % groups == 0; gamma, beta: (D,) or both None.
    groups=1 is layer norm; groups=D normalises each feature of each example alone (output 0).
    """
    x = _as_float_2d(x)
    d = x.shape[-1]
    _check_eps(eps)
    if not isinstance(groups, (int, np.integer)) or groups < 1 or d % groups:
        raise ValueError(f"groups must be a positive divisor of the {d} features; got {groups}")
    gamma, beta = _affine(gamma, beta, x)
    _, _, xhat, inv_std = _standardize(x.reshape(*x.shape[:-1], groups, d // groups), axis=-1, eps=eps)
    flat = xhat.reshape(x.shape)
    out = flat.copy() if gamma is None else flat * gamma + beta  # never alias the cache
    return out, GroupNormCache(xhat, inv_std, gamma)


def groupnorm_backward(dout, cache: GroupNormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,) (None, None when affine off)."""
    xhat, inv_std, gamma = cache
    dout = np.asarray(dout, dtype=xhat.dtype)
    dxhat = dout if gamma is None else dout * gamma
    dx = _standardize_backward(dxhat.reshape(xhat.shape), xhat, inv_std, axis=-1).reshape(dout.shape)
    if gamma is None:
        return dx, None, None
    ones = _ones(dout.shape[-2], dout.dtype)
    return (dx, _grad_like(_column(ones @ (dout * xhat.reshape(dout.shape)), dout), gamma),
            _grad_like(_column(ones @ dout, dout), gamma))


def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Layer norm: statistics over the D features of each example (axis 1).

    x: (N, D); gamma, beta: (D,) or both None. Equal to groupnorm with groups=1, and to
    batchnorm of x.T, transposed back (without the affine part).
    """
    return groupnorm_forward(x, gamma, beta, 1, eps)


def layernorm_backward(dout, cache: GroupNormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,) (None, None when affine off)."""
    return groupnorm_backward(dout, cache)


# ----------------------------------------------------------------------------- ghost batch norm

class GhostBatchNormCache(NamedTuple):
    xhat: np.ndarray              # (B, G, D): B ghost batches of G examples, normalised (stacks: (..., B, G, D))
    inv_std: np.ndarray           # (B, 1, D)
    gamma: np.ndarray | None
    batch_mean: np.ndarray        # (D,) mean over ghost batches of their means
    batch_var: np.ndarray         # (D,) mean over ghost batches of their biased variances


def ghost_batchnorm_forward(x, gamma, beta, ghost_batch_size: int, eps: float = 1e-5):
    """Ghost batch norm (Hoffer et al. 2017): batch norm over consecutive virtual sub-batches.

    x: (N, D) with N % ghost_batch_size == 0 and ghost_batch_size >= 2; gamma, beta: (D,) or None.
    Examples 0..G-1 form the first ghost batch, G..2G-1 the second, and so on.
    """
    x = _as_float_2d(x)
    n, d = x.shape[-2:]
    _check_eps(eps)
    g = ghost_batch_size
    if not isinstance(g, (int, np.integer)) or g < 1 or n % g:
        raise ValueError(f"ghost_batch_size must be a positive divisor of the batch size {n}; got {g}")
    _need_two(g, "ghost_batchnorm_forward (ghost batch size)")
    gamma, beta = _affine(gamma, beta, x)
    mean, var, xhat, inv_std = _standardize(x.reshape(*x.shape[:-2], n // g, g, d), axis=-2, eps=eps)
    flat = xhat.reshape(x.shape)
    out = flat.copy() if gamma is None else flat * gamma + beta  # never alias the cache
    if x.ndim == 2:
        return out, GhostBatchNormCache(xhat, inv_std, gamma, mean.mean(axis=(0, 1)), var.mean(axis=(0, 1)))
    return out, GhostBatchNormCache(xhat, inv_std, gamma, mean.mean(axis=-3), var.mean(axis=-3))


def ghost_batchnorm_backward(dout, cache: GhostBatchNormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,) (None, None when affine off)."""
    xhat, inv_std, gamma, _, _ = cache
    dout = np.asarray(dout, dtype=xhat.dtype)
    dxhat = dout if gamma is None else dout * gamma
    dx = _standardize_backward(dxhat.reshape(xhat.shape), xhat, inv_std, axis=-2).reshape(dout.shape)
    if gamma is None:
        return dx, None, None
    ones = _ones(dout.shape[-2], dout.dtype)
    return (dx, _grad_like(_column(ones @ (dout * xhat.reshape(dout.shape)), dout), gamma),
            _grad_like(_column(ones @ dout, dout), gamma))


# ----------------------------------------------------------------------------- batch renormalization

class BatchRenormCache(NamedTuple):
    xc: np.ndarray                # (N, D) x - batch_mean
    inv_std: np.ndarray           # (D,) 1 / sigma_B
    r: np.ndarray                 # (D,) clipped sigma_B / sigma_running, a constant
    d: np.ndarray                 # (D,) clipped (mu_B - mu_running) / sigma_running, a constant
    gamma: np.ndarray | None
    batch_mean: np.ndarray
    batch_var: np.ndarray


def batchrenorm_forward(x, gamma, beta, running_mean, running_var,
                        r_max: float = 3.0, d_max: float = 5.0, eps: float = 1e-5):
    """Batch renormalization (Ioffe 2017, arXiv:1702.03275), training mode.

    x: (N, D); gamma, beta: (D,) or None; running_mean, running_var: (D,).
    sigma_B = sqrt(var_B + eps), sigma = sqrt(running_var + eps),
    r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - running_mean) / sigma, -d_max, d_max),
    x_hat = (x - mu_B) / sigma_B * r + d, out = gamma * x_hat + beta.
    r and d are constants for the gradient (the paper's stop_gradient). r_max=1, d_max=0 is batch norm.
    Update the running statistics afterwards with `batch_stats(cache)` and `update_running_stats`.
    """
    x = _as_float_2d(x)
    _need_two(x.shape[-2], "batchrenorm_forward")
    _check_eps(eps)
    gamma, beta = _affine(gamma, beta, x)
    running_mean = _param(running_mean, x, "running_mean")
    running_var = _param(running_var, x, "running_var")
    mean, xc, var, out = _batch_moments(x)
    sigma_batch = np.sqrt(var + eps)
    inv_std = 1.0 / sigma_batch
    sigma_running = np.sqrt(running_var + eps)
    # divisions, not products with a reciprocal: equal statistics must give r == 1, d == 0 exactly
    r = np.clip(sigma_batch / sigma_running, 1.0 / r_max, r_max)
    d = np.clip((mean - running_mean) / sigma_running, -d_max, d_max)
    scale, shift = inv_std * r, d                      # x_hat = xc * scale + shift
    if gamma is not None:
        scale, shift = gamma * scale, gamma * d + beta
    _scale_shift(xc, scale, shift, out)
    return out, BatchRenormCache(xc, inv_std, r, d, gamma, mean, var)


def batchrenorm_backward(dout, cache: BatchRenormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,) (None, None when affine off)."""
    xc, inv_std, r, d, gamma, _, _ = cache
    dout = np.asarray(dout, dtype=xc.dtype)
    scale = r if gamma is None else gamma * r          # dL/d(batch-normalised x) = dout * gamma * r
    dx, sum_dout, sum_dout_xc = _bn_dx(dout, xc, inv_std, scale)
    if gamma is None:
        return dx, None, None
    return dx, _grad_like(sum_dout_xc * (inv_std * r) + d * sum_dout, gamma), _grad_like(sum_dout, gamma)


# ----------------------------------------------------------------------------- batch norm with running statistics in training

class RunningBatchNormCache(NamedTuple):
    xc: np.ndarray                # (N, D) x - batch_mean
    shift: np.ndarray             # (D,) batch_mean - mean: x - mean = xc + shift
    inv_std: np.ndarray           # (D,) 1 / sqrt(var + eps), var the updated running variance
    gamma: np.ndarray | None
    momentum: float
    grad_through_stats: bool
    batch_mean: np.ndarray
    batch_var: np.ndarray         # biased
    new_running_mean: np.ndarray
    new_running_var: np.ndarray


def running_batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum: float = 0.1,
                              grad_through_stats: bool = True, eps: float = 1e-5):
    """Normalise by running averages during training (instead of by the batch statistics).

    x: (N, D); gamma, beta: (D,) or None; running_mean, running_var: (D,).
    First update   mean = (1 - m) * running_mean + m * batch_mean,
                   var  = (1 - m) * running_var  + m * batch_var       (biased batch variance),
    then           out  = gamma * (x - mean) / sqrt(var + eps) + beta.
    grad_through_stats=True: the gradient flows through m * batch_mean and m * batch_var (the old
    running values are constants); False: mean and var are constants.
    momentum=1 is batch norm. Carry `running_stats(cache)` to the next step.
    """
    x = _as_float_2d(x)
    if grad_through_stats:
        _need_two(x.shape[-2], "running_batchnorm_forward with grad_through_stats=True")
    _check_eps(eps)
    gamma, beta = _affine(gamma, beta, x)
    running_mean = _param(running_mean, x, "running_mean")
    running_var = _param(running_var, x, "running_var")
    batch_mean, xc, batch_var, out = _batch_moments(x)
    keep = 1.0 - momentum
    mean = keep * running_mean + momentum * batch_mean
    var = keep * running_var + momentum * batch_var
    inv_std = 1.0 / np.sqrt(var + eps)
    shift = batch_mean - mean
    scale = inv_std if gamma is None else gamma * inv_std
    offset = shift * scale if gamma is None else shift * scale + beta
    _scale_shift(xc, scale, offset, out)               # out = (xc + shift) * scale (+ beta)
    cache = RunningBatchNormCache(xc, shift, inv_std, gamma, float(momentum), bool(grad_through_stats),
                                  batch_mean, batch_var, mean, var)
    return out, cache


def running_batchnorm_backward(dout, cache: RunningBatchNormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,) (None, None when affine off).

    With x_hat = (x - mean) * s, s = 1 / sqrt(var + eps), dxh = dout * gamma:
      dL/dmean = -s * sum(dxh),  dL/dvar = -s^2 / 2 * sum(dxh * x_hat),
      dx = dxh * s + m / N * dL/dmean + 2 m / N * (x - batch_mean) * dL/dvar   (grad_through_stats)
    """
    xc, shift, inv_std, gamma, momentum, through, *_ = cache
    n = xc.shape[-2]
    dout = np.asarray(dout, dtype=xc.dtype)
    ones = _ones(n, dout.dtype)
    sum_dout = _column(ones @ dout, dout)
    dx = np.multiply(dout, xc)                         # scratch for sum dout * xc, then becomes dx
    sum_dout_xc = _column(ones @ dx, dout)
    sum_dout_xhat = inv_std * (sum_dout_xc + shift * sum_dout)    # sum dout * x_hat, (D,)
    if through:
        # the formula above with the common factor gamma * s pulled out:
        # dx = gamma * s * (dout - m / N * sum(dout) - m / N * s * sum(dout * x_hat) * (x - batch_mean))
        _per_feature(np.multiply, xc, inv_std * sum_dout_xhat * (-momentum / n), out=dx)
        _per_feature(np.add, dx, sum_dout * (-momentum / n), out=dx)
        dx += dout
    else:
        np.copyto(dx, dout)
    _per_feature(np.multiply, dx, inv_std if gamma is None else gamma * inv_std, out=dx)
    if gamma is None:
        return dx, None, None
    return dx, _grad_like(sum_dout_xhat, gamma), _grad_like(sum_dout, gamma)


def running_stats(cache: RunningBatchNormCache):
    """(new_running_mean, new_running_var), each (D,): the statistics a running batch norm used."""
    return cache.new_running_mean, cache.new_running_var


# ----------------------------------------------------------------------------- noisy batch norm

class NoisyBatchNormCache(NamedTuple):
    xc: np.ndarray                # (N, D) x - batch_mean
    inv_std: np.ndarray           # (D,)
    noise_scale: np.ndarray       # broadcastable to (N, D)
    noise_shift: np.ndarray       # broadcastable to (N, D)
    gamma: np.ndarray | None
    batch_mean: np.ndarray
    batch_var: np.ndarray


def noisy_batchnorm_forward(x, gamma, beta, noise_scale, noise_shift, eps: float = 1e-5):
    """"Noisy" batch norm of Santurkar et al. 2018 (arXiv:1805.11604), section 2.1.

    x: (N, D); gamma, beta: (D,) or None; noise_scale, noise_shift: broadcastable to (N, D)
    (draw them with `sample_covariate_noise`, fresh at every step).
    x_hat = batch-normalised x;  x_noisy = x_hat * noise_scale + noise_shift;
    out = gamma * x_noisy + beta. No gradient flows into the noise.
    """
    x = _as_float_2d(x)
    _need_two(x.shape[-2], "noisy_batchnorm_forward")
    _check_eps(eps)
    gamma, beta = _affine(gamma, beta, x)
    noise_scale = np.asarray(noise_scale, dtype=x.dtype)
    noise_shift = np.asarray(noise_shift, dtype=x.dtype)
    for name, noise in (("noise_scale", noise_scale), ("noise_shift", noise_shift)):
        try:
            fits = np.broadcast_shapes(noise.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{name} must broadcast to x's shape {x.shape}; got shape {noise.shape}")
    mean, xc, var, out = _batch_moments(x)
    inv_std = 1.0 / np.sqrt(var + eps)
    _per_feature(np.multiply, xc, inv_std, out=out)
    out *= noise_scale
    out += noise_shift
    if gamma is not None:
        out *= gamma
        out += beta
    return out, NoisyBatchNormCache(xc, inv_std, noise_scale, noise_shift, gamma, mean, var)


def noisy_batchnorm_backward(dout, cache: NoisyBatchNormCache):
    """dout: (N, D) -> dx (N, D), dgamma (D,), dbeta (D,) (None, None when affine off)."""
    xc, inv_std, noise_scale, noise_shift, gamma, _, _ = cache
    dout = np.asarray(dout, dtype=xc.dtype)
    dy = dout * noise_scale                            # dL/dx_hat / gamma
    dx, _, _ = _bn_dx(dy, xc, inv_std, gamma)
    if gamma is None:
        return dx, None, None
    ones = _ones(dout.shape[-2], dout.dtype)
    x_noisy = xc * inv_std
    x_noisy *= noise_scale
    x_noisy += noise_shift
    return (dx, _grad_like(_column(ones @ (dout * x_noisy), dout), gamma),
            _grad_like(_column(ones @ dout, dout), gamma))


def sample_covariate_noise(rng: np.random.Generator, n: int, d: int, mean_shift: float = 0.5,
                           scale_spread: float = 1.25, dtype=np.float64):
    """Noise for `noisy_batchnorm_forward`: time-varying, non-zero mean, non-unit variance.

    Santurkar et al. 2018 perturb every batch-normalised activation of every example with
    i.i.d. noise whose distribution has a non-zero mean and a non-unit variance and is redrawn
    at every training step, so that the layer's input distribution keeps shifting
    ("internal covariate shift" on purpose). Call this once per layer per step. It draws:

    * per feature j, the distribution of this step:
        m_j ~ Uniform(-mean_shift, mean_shift),   s_j ~ Uniform(1, scale_spread)
    * per activation (i, j), i.i.d. given (m_j, s_j):
        noise_shift[i, j] ~ Normal(mean=m_j, std=s_j)
      and noise_scale[i, j] = s_j (same for every example of this step).

    Then x_noisy = x_hat * s_j + noise_shift has, for feature j at this step, mean m_j and
    variance 2 s_j^2 instead of 0 and 1: each activation is scaled by the step's s_j and shifted
    by an i.i.d. draw from N(m_j, s_j^2).

    The exact per-activation distribution and the values of the two ranges in the paper's
    appendix could not be checked here (written from memory of the paper): the defaults
    mean_shift=0.5 and scale_spread=1.25 are a moderate choice; pass the values an experiment
    needs and report them.

    rng: numpy Generator; returns (noise_scale, noise_shift), each (n, d) of `dtype`.
    """
    if mean_shift < 0 or scale_spread < 1:
        raise ValueError(f"need mean_shift >= 0 and scale_spread >= 1; got {mean_shift}, {scale_spread}")
    m = rng.uniform(-mean_shift, mean_shift, size=d)
    s = rng.uniform(1.0, scale_spread, size=d)
    noise_shift = rng.normal(m, s, size=(n, d)).astype(dtype, copy=False)
    noise_scale = np.broadcast_to(s.astype(dtype), (n, d)).copy()
    return noise_scale, noise_shift


# ----------------------------------------------------------------------------- images: (N, C, H, W)
#
# Image layers take x of shape (N, C, H, W) -- N examples, C channels, H x W pixels -- or a stack
# (..., N, C, H, W). Per-channel parameters are (C,), or per arm (..., 1, C) (the shape of
# per-feature parameters with the channels as features). Spatial batch norm folds the pixels into
# the feature axis, x.reshape(..., N, C * H * W) (a view), and runs the batch-norm kernels above
# with statistics over groups of H * W columns: no transposition, and the same wide-row passes.

def _as_float_images(x, name: str = "x") -> np.ndarray:
    """`x` as a floating (N, C, H, W) or stacked (..., N, C, H, W) array; integer input becomes float64."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.ndim < 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) (or (..., N, C, H, W) for a stack); got shape {x.shape}")
    return x


def _fold_pixels(x: np.ndarray):
    """(..., N, C, H, W) -> (..., N, C * H * W) (a view when x is C-contiguous), and H * W."""
    c, h, w = x.shape[-3:]
    return x.reshape(x.shape[:-3] + (c * h * w,)), h * w


class SpatialBatchNormCache(NamedTuple):
    xc: np.ndarray                # (N, C * H * W): x - its channel's batch mean, pixels folded into the features
    inv_std: np.ndarray           # (C,) 1 / sqrt(batch_var + eps); stacks (..., 1, C)
    gamma: np.ndarray | None      # (C,), (..., 1, C) or None (affine off)
    batch_mean: np.ndarray        # (C,) over the N * H * W entries of each channel
    batch_var: np.ndarray         # (C,) biased
    shape: tuple                  # x's shape, (N, C, H, W) or (..., N, C, H, W)


def spatial_batchnorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Batch norm of images in training mode: statistics per channel, over the batch and every pixel.

    x: (N, C, H, W), N * H * W >= 2; gamma, beta: (C,) arrays, or both None (affine off) -> out (N, C, H, W):
    out[n, c, h, w] = gamma[c] * (x[n, c, h, w] - mean_c) / sqrt(var_c + eps) + beta[c], with mean_c
    and the biased var_c over the N * H * W entries of channel c.
    Stacks: x (..., N, C, H, W); gamma, beta (C,) or per arm (..., 1, C); statistics (..., 1, C).
    With H = W = 1 it is `batchnorm_forward` of x.reshape(N, C), bit for bit. Running statistics:
    `update_running_stats(*batch_stats(cache), n=N * H * W)`, as for batch norm.
    """
    x = _as_float_images(x)
    flat, pixels = _fold_pixels(x)                       # (N, C * H * W)
    _need_two(x.shape[-4] * pixels, "spatial_batchnorm_forward (N * H * W)")
    _check_eps(eps)
    gamma, beta = _affine(gamma, beta, flat, x.shape[-3])
    mean, xc, var, out = _batch_moments(flat, pixels)
    inv_std = 1.0 / np.sqrt(var + eps)
    if gamma is None:
        _scale_shift(xc, _expand(inv_std, pixels), None, out)
    else:
        _scale_shift(xc, _expand(gamma * inv_std, pixels), _expand(beta, pixels), out)
    return out.reshape(x.shape), SpatialBatchNormCache(xc, inv_std, gamma, mean, var, x.shape)


def spatial_batchnorm_backward(dout, cache: SpatialBatchNormCache):
    """dout: (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,); dgamma, dbeta None when affine off."""
    xc, inv_std, gamma, _, _, shape = cache
    dout = np.asarray(dout, dtype=xc.dtype)
    if dout.shape != shape:
        raise ValueError(f"dout must have the output's shape {shape}; got {dout.shape}")
    dx, sum_dout, sum_dout_xc = _bn_dx(dout.reshape(xc.shape), xc, inv_std, gamma, shape[-1] * shape[-2])
    dx = dx.reshape(shape)
    if gamma is None:
        return dx, None, None
    return dx, _grad_like(sum_dout_xc * inv_std, gamma), _grad_like(sum_dout, gamma)


class SpatialBatchNormEvalCache(NamedTuple):
    flat: BatchNormEvalCache      # of batch norm on (N, C * H * W) with every per-channel vector repeated H * W times
    pixels: int                   # H * W
    shape: tuple                  # x's shape


def spatial_batchnorm_eval_forward(x, running_mean, running_var, gamma, beta, eps: float = 1e-5):
    """Spatial batch norm in inference mode: a fixed per-channel affine map.

    x: (N, C, H, W); running_mean, running_var: (C,); gamma, beta: (C,) or both None -> out (N, C, H, W):
    out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta per channel.
    Stacks: x (..., N, C, H, W); every per-channel argument (C,) or (..., 1, C).
    """
    x = _as_float_images(x)
    flat, pixels = _fold_pixels(x)
    _check_eps(eps)
    channels = x.shape[-3]
    gamma, beta = _affine(gamma, beta, flat, channels)
    running_mean = _param(running_mean, flat, "running_mean", channels)
    running_var = _param(running_var, flat, "running_var", channels)
    gamma, beta = (None, None) if gamma is None else (_expand(gamma, pixels), _expand(beta, pixels))
    out, cache = batchnorm_eval_forward(flat, _expand(running_mean, pixels), _expand(running_var, pixels),
                                        gamma, beta, eps)
    return out.reshape(x.shape), SpatialBatchNormEvalCache(cache, pixels, x.shape)


def spatial_batchnorm_eval_backward(dout, cache: SpatialBatchNormEvalCache):
    """dout: (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,) (the statistics are constants)."""
    flat, pixels, shape = cache
    dout = np.asarray(dout, dtype=flat.inv_std.dtype)
    dx, dgamma, dbeta = batchnorm_eval_backward(dout.reshape(shape[:-3] + (-1,)), flat)
    if dgamma is None:
        return dx.reshape(shape), None, None
    return dx.reshape(shape), _group_sum(dgamma, pixels), _group_sum(dbeta, pixels)


# ----------------------------------------------------------------------------- convolution

class Conv2dCache(NamedTuple):
    cols: np.ndarray              # (C * KH * KW, N * Ho * Wo): every patch of the padded x, one per column
    W: np.ndarray                 # (F, C, KH, KW) or per arm (..., F, C, KH, KW)
    b: np.ndarray | None          # (F,), (..., 1, F) or None: only its shape is used (for db)
    x_shape: tuple                # (N, C, H, W) or (..., N, C, H, W)
    stride: int
    padding: int


def conv2d_forward(x, W, b, stride: int = 1, padding: int = 0):
    """2-D convolution (cross-correlation, as in every deep-learning framework): im2col and one matmul.

    x: (N, C, H, W); W: (F, C, KH, KW); b: (F,) or None; `padding` zeros on each side of H and W;
    windows `stride` pixels apart -> out: (N, F, Ho, Wo) with Ho = (H + 2 padding - KH) // stride + 1
    (Wo likewise) and
        out[n, f, i, j] = b[f] + sum_{c, u, v} W[f, c, u, v] * x_pad[n, c, i * stride + u, j * stride + v].
    The patches are gathered by one strided view of the padded x and one copy, cols (C*KH*KW, N*Ho*Wo),
    so that out = W.reshape(F, C*KH*KW) @ cols is one matrix product.
    Stacks: x (..., N, C, H, W); W (F, C, KH, KW) shared or per arm (..., F, C, KH, KW); b (F,) or
    per arm (..., 1, F) -> out (..., N, F, Ho, Wo). A stack runs arm by arm through the same steps
    (bit for bit the per-arm calls) with scratch buffers of one arm's size reused across the arms:
    whole-stack temporaries are fresh multi-MB arrays whose page faults cost more than the products
    (measured: a 4-arm stack took 1.7x four single calls).
    """
    x = _as_float_images(x)
    W = np.asarray(W, dtype=x.dtype)
    *lead, n, channels, height, width = x.shape
    lead = tuple(lead)
    if W.ndim < 4 or W.shape[-3] != channels or (W.ndim > 4 and W.shape[:-4] != lead):
        raise ValueError(f"W must have shape (F, {channels}, KH, KW) (or per arm {(*lead, 'F', channels, 'KH', 'KW')}) "
                         f"for x of shape {x.shape}; got {W.shape}")
    if not isinstance(stride, (int, np.integer)) or stride < 1 or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"stride must be an integer >= 1 and padding an integer >= 0; got {stride}, {padding}")
    filters, _, kh, kw = W.shape[-4:]
    ho, wo = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit into {height}x{width} pixels with padding {padding}")
    if b is not None:
        b = _param(b, np.broadcast_to(np.empty((), x.dtype), (*lead, 1, filters)), "b", filters)   # (F,) or (..., 1, F)
        bias = np.broadcast_to(_transpose(b), (*lead, filters, 1)) if b.ndim > 1 else b[:, None]
    kernels = W.reshape(W.shape[:-3] + (channels * kh * kw,))                    # (..., F, C*KH*KW)
    cols = np.empty((*lead, channels * kh * kw, n * ho * wo), dtype=x.dtype)
    out = np.empty((*lead, n, filters, ho, wo), dtype=x.dtype)
    product = np.empty((filters, n * ho * wo), dtype=x.dtype)                     # one arm's W @ cols
    if padding:
        xp = np.zeros((n, channels, height + 2 * padding, width + 2 * padding), dtype=x.dtype)
        interior = xp[..., padding:padding + height, padding:padding + width]     # the border stays zero
    for arm in np.ndindex(*lead):                                                 # () once for one network
        if padding:
            interior[...] = x[arm]
        else:
            xp = x[arm]
        s = xp.strides
        # patches as a view (C, KH, KW, N, Ho, Wo): the copy into cols is the only im2col pass
        patches = np.lib.stride_tricks.as_strided(
            xp, (channels, kh, kw, n, ho, wo), (s[1], s[2], s[3], s[0], s[2] * stride, s[3] * stride), writeable=False)
        cols[arm].reshape(channels, kh, kw, n, ho, wo)[...] = patches
        np.matmul(kernels[arm] if kernels.ndim > 2 else kernels, cols[arm], out=product)   # (F, N * Ho * Wo)
        if b is not None:
            product += bias[arm] if bias.ndim > 2 else bias
        out[arm] = np.moveaxis(product.reshape(filters, n, ho, wo), 0, 1)
    return out, Conv2dCache(cols, W, b, x.shape, stride, padding)


def conv2d_backward(dout, cache: Conv2dCache):
    """dout: (N, F, Ho, Wo) -> dx (N, C, H, W), dW (F, C, KH, KW), db (F,) or None (no bias).

    Stacks: each gradient has its parameter's shape (a shared W or b gets the sum over the arms);
    arm by arm as in the forward. dW is one matrix product with the cached patches; dx is col2im,
    one matrix product and one contiguous add per kernel offset (u, v) (see below).
    """
    cols, W, b, x_shape, stride, padding = cache
    *lead, n, channels, height, width = x_shape
    lead = tuple(lead)
    filters, _, kh, kw = W.shape[-4:]
    dout = np.asarray(dout, dtype=cols.dtype)
    ho, wo = dout.shape[-2:]
    if dout.shape != (*lead, n, filters, ho, wo):
        raise ValueError(f"dout must have the output's shape {(*lead, n, filters, ho, wo)}; got {dout.shape}")
    dtype = cols.dtype
    dW = np.empty((*lead, *W.shape[-4:]), dtype=dtype)
    dW_rows = dW.reshape(*lead, filters, channels * kh * kw)                     # a view
    db = None if b is None else np.empty((*lead, filters), dtype=dtype)
    dx = np.empty(x_shape, dtype=dtype)
    dout_f = np.empty((filters, n * ho * wo), dtype=dtype)                       # one arm's dout, (F, N * Ho * Wo)
    ones = _ones(n * ho * wo, dtype) if b is not None else None
    # col2im by shifted adds: dout placed on the padded pixel grid (zeros between and around,
    # (F, N, Hp, Wp)), the patches' gradient computed at every grid position, so that kernel
    # offset (u, v) adds it shifted by u * Wp + v in the flattened (C, N, Hp, Wp) image: KH * KW
    # long contiguous adds instead of strided ones over 8-pixel rows (3x faster at 64x16x8x8).
    # Entries that spill over a row or an image are zeros (no output there). One product per
    # offset into one reused buffer: a single (C*KH*KW, N*Hp*Wp) product is a fresh multi-MB
    # array each call, and its page faults cost more than the product (measured).
    hp, wp = height + 2 * padding, width + 2 * padding
    pixels = n * hp * wp
    grid = np.zeros((filters, n, hp, wp), dtype=dtype)   # every arm writes the same positions: the zeros stay
    on_grid = grid[..., :stride * (ho - 1) + 1:stride, :stride * (wo - 1) + 1:stride]
    grid = grid.reshape(filters, pixels)
    kernel = np.moveaxis(W, -3, -1)                      # (..., F, KH, KW, C)
    dxp = np.empty(channels * pixels + (kh - 1) * wp + kw - 1, dtype=dtype)
    step = np.empty((channels, pixels), dtype=dtype)
    for arm in np.ndindex(*lead):                        # () once for one network
        d = np.moveaxis(dout[arm], 0, 1)                 # (F, N, Ho, Wo), a view
        dout_f.reshape(filters, n, ho, wo)[...] = d
        np.matmul(dout_f, _transpose(cols[arm]), out=dW_rows[arm])
        if b is not None:
            np.matmul(dout_f, ones, out=db[arm])
        on_grid[...] = d
        arm_kernel = kernel[arm] if kernel.ndim > 4 else kernel
        dxp.fill(0)
        for u in range(kh):
            for v in range(kw):
                # the patches' gradient at kernel offset (u, v), one matrix product, added shifted by
                # u * Wp + v: grid pixel (i, j) fed padded pixel (i + u, j + v)
                np.matmul(_transpose(arm_kernel[..., u, v, :]), grid, out=step)
                shift = u * wp + v
                target = dxp[shift:shift + channels * pixels].reshape(channels, pixels)   # a view
                target += step
        image = dxp[:channels * pixels].reshape(channels, n, hp, wp)
        dx[arm] = np.moveaxis(image, 0, 1)[..., padding:padding + height, padding:padding + width]
    if dW.shape != W.shape:                              # one W shared by a stack of x
        dW = dW.reshape(-1, *W.shape).sum(axis=0)
    if b is not None:
        db = _grad_like(db[..., None, :] if lead else db, b)
    return dx, dW, db


# ----------------------------------------------------------------------------- global average pooling

class GlobalAvgPoolCache(NamedTuple):
    shape: tuple                  # x's shape, (N, C, H, W) or (..., N, C, H, W)
    dtype: np.dtype


def global_avg_pool_forward(x):
    """The mean over the pixels of each channel: x (N, C, H, W) -> out (N, C).

    Stacks: x (..., N, C, H, W) -> out (..., N, C).
    """
    x = _as_float_images(x)
    height, width = x.shape[-2:]
    out = x.reshape(x.shape[:-2] + (height * width,)) @ _mean_weights(height * width, x.dtype)
    return out, GlobalAvgPoolCache(x.shape, x.dtype)


def global_avg_pool_backward(dout, cache: GlobalAvgPoolCache):
    """dout: (N, C) -> dx (N, C, H, W): each pixel gets dout / (H * W)."""
    shape, dtype = cache
    pixels = shape[-1] * shape[-2]
    dout = np.asarray(dout, dtype=dtype)
    if dout.shape != shape[:-2]:
        raise ValueError(f"dout must have the output's shape {shape[:-2]}; got {dout.shape}")
    return (dout * (1.0 / pixels))[..., None].repeat(pixels, axis=-1).reshape(shape)
