"""Tests of bnclaims.nn: every backward against numerical gradients, exact identities exactly.

Gradient checks run in float64 with centred differences and must agree to a relative error
below 1e-7, where rel_error(a, b) = max|a - b| / max(|a| + |b|) over the whole array (an
elementwise ratio would blow up at entries that are 0 by symmetry). Identities are checked as
the maximum error over many random inputs against a tolerance derived from the dtype.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from bnclaims import nn

# N >= 3: with N = 2, batch norm maps every x to (+-1 - O(eps)), so dx is O(eps) and any
# relative error measures finite-difference noise only
# (128, 2): enough rows for the wide-row path of the batch-norm kernels (see nn._per_feature)
SHAPES = [(3, 1), (4, 3), (7, 5), (16, 8), (128, 2)]
TOL = 1e-7  # relative error allowed between analytic and numerical gradients
SKIP = "-"  # in a `wrt` list: a gradient checked elsewhere


# ----------------------------------------------------------------------------- gradient checking

def rel_error(a, b) -> float:
    """max|a - b| / max(|a| + |b|): 0 for equal arrays, 1 for opposite ones, scale-free."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.max(np.abs(a) + np.abs(b))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def numerical_gradient(f, x: np.ndarray, dout: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Centred finite differences of L(x) = sum(f(x) * dout), entry by entry, in float64.

    f must not keep a reference to x: x is perturbed in place and restored.
    """
    assert x.dtype == np.float64
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(x) * dout)
        flat[i] = old - h
        minus = np.sum(f(x) * dout)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def check_grads(forward, backward, inputs: dict, wrt: list[str], rng, frozen_forward=None):
    """Compare backward(dout, cache) with numerical gradients of forward for each name in `wrt`.

    forward(**inputs) -> (out, cache); backward returns grads in the order of `wrt`, where
    None marks a gradient that must be None (affine off) and SKIP one checked elsewhere.
    frozen_forward, when given, is the function whose gradient backward should equal (used
    where backward treats some statistics as constants); defaults to forward.
    """
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout, cache)
    if isinstance(analytic, np.ndarray):  # a layer without parameters returns dx alone
        analytic = (analytic,)
    reference = frozen_forward or forward
    for name, grad in zip(wrt, analytic):
        if name is None:  # affine off: no such parameter
            assert grad is None
            continue
        if name == SKIP:
            continue
        work = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}

        def f(value, name=name, work=work):
            return reference(**{**work, name: value})[0]

        num = numerical_gradient(f, work[name], dout)
        err = rel_error(grad, num)
        assert err < TOL, f"d{name}: relative error {err:.2e} >= {TOL:.0e}"


def make_inputs(rng, n, d, affine=True, offset=True):
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, d)
    if offset:
        x += rng.standard_normal(d)
    gamma = rng.uniform(0.5, 1.5, d) if affine else None
    beta = rng.standard_normal(d) if affine else None
    return x, gamma, beta


@pytest.fixture
def rng(request):
    # a seed per test id: reproducible, yet different inputs for different tests
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ----------------------------------------------------------------------------- gradient checks

@pytest.mark.parametrize("shape", [(3, 4), (8, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(rng, shape, bias):
    n, d = shape
    m = 3
    inputs = dict(x=rng.standard_normal((n, d)), W=rng.standard_normal((d, m)),
                  b=rng.standard_normal(m) if bias else None)
    check_grads(nn.linear_forward, nn.linear_backward, inputs, ["x", "W", "b" if bias else None], rng)


def test_relu_gradient(rng):
    x = rng.standard_normal((6, 7))
    x[np.abs(x) < 1e-3] = 0.5  # stay away from the kink, where the derivative is undefined
    check_grads(nn.relu_forward, nn.relu_backward, dict(x=x), ["x"], rng)


@pytest.mark.parametrize("shape", [(1, 3), (5, 4), (9, 10)])
def test_softmax_cross_entropy_gradient(rng, shape):
    n, c = shape
    logits = rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    loss, dlogits = nn.softmax_cross_entropy(logits, y)
    num = numerical_gradient(lambda z: np.array(nn.softmax_cross_entropy(z, y)[0]), logits.copy(), np.array(1.0))
    assert rel_error(dlogits, num) < TOL
    # and the loss value itself, from its definition
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert abs(loss - np.mean(-np.log(p[np.arange(n), y]))) < 1e-12


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_gradients(rng, shape, affine):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.batchnorm_forward, nn.batchnorm_backward, dict(x=x, gamma=gamma, beta=beta), wrt, rng)


@pytest.mark.parametrize("shape", [(1, 3), (4, 3), (16, 8)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_eval_gradients(rng, shape, affine):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    d = shape[1]
    inputs = dict(x=x, running_mean=rng.standard_normal(d), running_var=rng.uniform(0.5, 2, d),
                  gamma=gamma, beta=beta)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.batchnorm_eval_forward, nn.batchnorm_eval_backward, inputs, wrt, rng)


@pytest.mark.parametrize("shape", [(1, 3), (4, 3), (7, 5), (16, 8)])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_gradients(rng, shape, affine):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.layernorm_forward, nn.layernorm_backward, dict(x=x, gamma=gamma, beta=beta), wrt, rng)


@pytest.mark.parametrize("shape,groups", [((3, 6), 2), ((5, 9), 3), ((4, 12), 4), ((2, 6), 6), ((6, 9), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_gradients(rng, shape, groups, affine):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    inputs = dict(x=x, gamma=gamma, beta=beta, groups=groups)
    check_grads(nn.groupnorm_forward, nn.groupnorm_backward, inputs, wrt, rng)


@pytest.mark.parametrize("shape,ghost", [((6, 3), 3), ((12, 5), 3), ((16, 4), 4), ((6, 2), 6)])
@pytest.mark.parametrize("affine", [True, False])
def test_ghost_batchnorm_gradients(rng, shape, ghost, affine):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    inputs = dict(x=x, gamma=gamma, beta=beta, ghost_batch_size=ghost)
    check_grads(nn.ghost_batchnorm_forward, nn.ghost_batchnorm_backward, inputs, wrt, rng)


def _frozen_renorm(r, d):
    """x -> batch norm of x with r and d held fixed: what renorm's backward differentiates."""
    def forward(x, gamma, beta, running_mean, running_var, eps=1e-5):
        if gamma is None:
            out, cache = nn.batchnorm_forward(x, None, None, eps)
            return out * r + d, cache
        return nn.batchnorm_forward(x, gamma * r, gamma * d + beta, eps)
    return forward


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("clipped", [True, False])
def test_batchrenorm_gradients(rng, shape, affine, clipped):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    d = shape[1]
    if clipped:
        # r and d both clipped: locally constant, so the plain numerical gradient is the truth
        running_var = (x.var(0) + 1) * 100
        running_mean = x.mean(0) + 100 * np.sqrt(running_var)
    else:
        running_mean = x.mean(0) + 0.3 * rng.standard_normal(d)
        running_var = x.var(0) * rng.uniform(0.7, 1.4, d)
    inputs = dict(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    _, cache = nn.batchrenorm_forward(**inputs)
    if clipped:
        assert np.all(cache.r == 1 / 3.0) and np.all(np.abs(cache.d) == 5.0)
        frozen = None
    else:
        assert np.all((cache.r > 1 / 3.0) & (cache.r < 3.0)) and np.all(np.abs(cache.d) < 5.0)
        frozen = _frozen_renorm(cache.r, cache.d)
    # dx against the function with r, d frozen; dgamma, dbeta against the real forward
    check_grads(nn.batchrenorm_forward, nn.batchrenorm_backward, inputs, ["x", SKIP, SKIP], rng,
                frozen_forward=frozen)
    wrt = [SKIP, "gamma", "beta"] if affine else [SKIP, None, None]
    check_grads(nn.batchrenorm_forward, nn.batchrenorm_backward, inputs, wrt, rng)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, 0.7, 1.0])
def test_running_batchnorm_gradients_through_stats(rng, shape, affine, momentum):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    d = shape[1]
    inputs = dict(x=x, gamma=gamma, beta=beta, running_mean=rng.standard_normal(d),
                  running_var=rng.uniform(0.5, 2, d), momentum=momentum, grad_through_stats=True)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.running_batchnorm_forward, nn.running_batchnorm_backward, inputs, wrt, rng)


@pytest.mark.parametrize("shape", [(1, 3)] + SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_running_batchnorm_gradients_constant_stats(rng, shape, affine):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    d = shape[1]
    inputs = dict(x=x, gamma=gamma, beta=beta, running_mean=rng.standard_normal(d),
                  running_var=rng.uniform(0.5, 2, d), momentum=0.3, grad_through_stats=False)
    _, cache = nn.running_batchnorm_forward(**inputs)
    mean, var = nn.running_stats(cache)

    def frozen(x, gamma, beta, **_):  # the statistics this step used, as constants
        return nn.batchnorm_eval_forward(x, mean, var, gamma, beta)

    check_grads(nn.running_batchnorm_forward, nn.running_batchnorm_backward, inputs, ["x", SKIP, SKIP], rng,
                frozen_forward=frozen)
    wrt = [SKIP, "gamma", "beta"] if affine else [SKIP, None, None]
    check_grads(nn.running_batchnorm_forward, nn.running_batchnorm_backward, inputs, wrt, rng)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("per_example", [True, False])
def test_noisy_batchnorm_gradients(rng, shape, affine, per_example):
    x, gamma, beta = make_inputs(rng, *shape, affine=affine)
    noise_scale, noise_shift = nn.sample_covariate_noise(rng, *shape, mean_shift=1.0, scale_spread=2.0)
    if not per_example:  # any broadcastable noise: one draw per feature
        noise_scale, noise_shift = noise_scale[0], noise_shift[:1]
    inputs = dict(x=x, gamma=gamma, beta=beta, noise_scale=noise_scale, noise_shift=noise_shift)
    wrt = ["x", "gamma", "beta"] if affine else ["x", None, None]
    check_grads(nn.noisy_batchnorm_forward, nn.noisy_batchnorm_backward, inputs, wrt, rng)


# ----------------------------------------------------------------------------- every layer, both dtypes

def layer_cases(rng, dtype, n=8, d=6):
    """(name, forward, backward, inputs) for every layer, inputs of `dtype`."""
    def arr(*shape, low=None, high=None):
        a = rng.uniform(low, high, shape) if low is not None else rng.standard_normal(shape)
        return a.astype(dtype)

    x, gamma, beta = arr(n, d), arr(d, low=0.5, high=1.5), arr(d)
    running = dict(running_mean=arr(d), running_var=arr(d, low=0.5, high=2.0))
    noise_scale, noise_shift = nn.sample_covariate_noise(rng, n, d, dtype=dtype)
    return [
        ("linear", nn.linear_forward, nn.linear_backward, dict(x=x, W=arr(d, 4), b=arr(4))),
        ("linear_nobias", nn.linear_forward, nn.linear_backward, dict(x=x, W=arr(d, 4), b=None)),
        ("relu", nn.relu_forward, nn.relu_backward, dict(x=x)),
        ("batchnorm", nn.batchnorm_forward, nn.batchnorm_backward, dict(x=x, gamma=gamma, beta=beta)),
        ("batchnorm_noaffine", nn.batchnorm_forward, nn.batchnorm_backward, dict(x=x, gamma=None, beta=None)),
        ("batchnorm_eval", nn.batchnorm_eval_forward, nn.batchnorm_eval_backward,
         dict(x=x, gamma=gamma, beta=beta, **running)),
        ("batchnorm_eval_noaffine", nn.batchnorm_eval_forward, nn.batchnorm_eval_backward,
         dict(x=x, gamma=None, beta=None, **running)),
        ("layernorm", nn.layernorm_forward, nn.layernorm_backward, dict(x=x, gamma=gamma, beta=beta)),
        ("groupnorm", nn.groupnorm_forward, nn.groupnorm_backward, dict(x=x, gamma=gamma, beta=beta, groups=2)),
        ("ghost", nn.ghost_batchnorm_forward, nn.ghost_batchnorm_backward,
         dict(x=x, gamma=gamma, beta=beta, ghost_batch_size=4)),
        ("renorm", nn.batchrenorm_forward, nn.batchrenorm_backward, dict(x=x, gamma=gamma, beta=beta, **running)),
        ("running", nn.running_batchnorm_forward, nn.running_batchnorm_backward,
         dict(x=x, gamma=gamma, beta=beta, **running)),
        ("running_const", nn.running_batchnorm_forward, nn.running_batchnorm_backward,
         dict(x=x, gamma=gamma, beta=beta, grad_through_stats=False, **running)),
        ("noisy", nn.noisy_batchnorm_forward, nn.noisy_batchnorm_backward,
         dict(x=x, gamma=gamma, beta=beta, noise_scale=noise_scale, noise_shift=noise_shift)),
    ]


CASE_NAMES = [c[0] for c in layer_cases(np.random.default_rng(0), np.float64)]


def _case(name, rng, dtype):
    return next(c for c in layer_cases(rng, dtype) if c[0] == name)


def _as_tuple(grads):
    return (grads,) if isinstance(grads, np.ndarray) else tuple(grads)


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_result_dtype_is_input_dtype(rng, name, dtype):
    _, forward, backward, inputs = _case(name, rng, dtype)
    out, cache = forward(**inputs)
    assert out.dtype == dtype
    grads = _as_tuple(backward(rng.standard_normal(out.shape).astype(dtype), cache))
    for grad in grads:
        assert grad is None or grad.dtype == dtype


@pytest.mark.parametrize("name", CASE_NAMES)
def test_inputs_are_not_mutated_and_backward_is_repeatable(rng, name):
    _, forward, backward, inputs = _case(name, rng, np.float32)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dout_before = dout.copy()
    first = _as_tuple(backward(dout, cache))
    second = _as_tuple(backward(dout, cache))  # the cache must not have been consumed or changed
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(inputs[k], v), f"{name} mutated input {k}"
    assert np.array_equal(dout, dout_before), f"{name} mutated dout"
    for a, b in zip(first, second):
        assert (a is None and b is None) or np.array_equal(a, b)
    out[...] = 0  # nor may the output alias the cache
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(first, _as_tuple(backward(dout, cache))))


def test_softmax_cross_entropy_dtype_and_value(rng):
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    y = np.array([0, 3, 1, 1, 2])
    before = logits.copy()
    loss, dlogits = nn.softmax_cross_entropy(logits, y)
    assert type(loss) is float and dlogits.dtype == np.float32
    assert np.array_equal(logits, before)
    # rows of dlogits sum to 0: softmax sums to 1, minus the one-hot
    assert np.max(np.abs(dlogits.sum(1))) <= 4 * np.finfo(np.float32).eps
    # large logits do not overflow
    loss, dlogits = nn.softmax_cross_entropy(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert loss == pytest.approx(500.0) and np.all(np.isfinite(dlogits))


# ----------------------------------------------------------------------------- exact identities

DTYPES = [np.float32, np.float64]
TRIALS = 200  # random inputs per identity; each assert is on the worst of them


def random_batches(rng, dtype, trials=TRIALS, max_n=300, max_d=40):
    """Many (N, D) batches with scales from 1e-2 to 1e2 and offsets up to 10 standard deviations."""
    for _ in range(trials):
        n, d = int(rng.integers(2, max_n)), int(rng.integers(1, max_d))
        scale = 10.0 ** rng.uniform(-2, 2, d)
        offset = rng.uniform(-10, 10, d) * scale
        yield (rng.standard_normal((n, d)) * scale + offset).astype(dtype)


def rounding_bound(x: np.ndarray) -> float:
    """Worst-case rounding error of a normalised output of x, in units of its standard deviation.

    A column mean is a sum of N terms, off by at most N * eps * max|x|; that offset, divided by
    the column's standard deviation, is how far x_hat can move.
    """
    x64 = x.astype(np.float64)
    n = x.shape[0]
    return n * np.finfo(x.dtype).eps * float(np.max(np.abs(x64) / x64.std(0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_output_has_zero_mean_and_unit_variance(rng, dtype):
    eps = 1e-5
    worst_mean = worst_var = 0.0  # errors as multiples of their tolerance
    for x in random_batches(rng, dtype):
        out, _ = nn.batchnorm_forward(x, None, None, eps)
        out64, var_b = out.astype(np.float64), x.astype(np.float64).var(0)
        bound = rounding_bound(x)
        # mean: only rounding; variance: var_B / (var_B + eps) exactly, so eps/var_B below 1, plus rounding
        worst_mean = max(worst_mean, np.max(np.abs(out64.mean(0))) / bound)
        tol_var = eps / var_b + 2 * bound + bound**2
        worst_var = max(worst_var, np.max(np.abs(out64.var(0) - 1) / tol_var))
    assert worst_mean <= 1 and worst_var <= 1, (worst_mean, worst_var)


@pytest.mark.parametrize("shape", [(32, 256), (256, 256), (512, 128), (1024, 130), (64, 3)])
def test_batchnorm_float32_is_accurate_far_from_zero(rng, shape):
    """Inputs with mean 1e3 and std 1 in float32: out, dx and dgamma within sqrt(N) float32 roundings
    of |x| / std of the float64 truth (about 5x what the implementation needs; a one-pass
    E[x^2] - E[x]^2 variance misses by orders of magnitude). The shapes take both summation paths."""
    n, d = shape
    x = (1e3 + rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    out, cache = nn.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = nn.batchnorm_backward(dout, cache)
    x64, dout64, gamma64 = x.astype(np.float64), dout.astype(np.float64), gamma.astype(np.float64)
    xc = x64 - x64.mean(0)
    inv_std = 1 / np.sqrt((xc * xc).mean(0) + 1e-5)
    xhat = xc * inv_std
    dxhat = dout64 * gamma64
    true_dx = inv_std * (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0))
    unit = np.sqrt(n) * np.finfo(np.float32).eps * np.max(np.abs(x64)) / x64.std(0).min()  # in x_hat units
    assert np.max(np.abs(out - (gamma64 * xhat + beta)) / gamma64) <= unit
    assert np.max(np.abs(dx - true_dx)) <= unit * np.max(np.abs(dxhat * inv_std))
    assert np.max(np.abs(dgamma - (dout64 * xhat).sum(0))) <= unit * n * np.max(np.abs(dout64))
    assert np.max(np.abs(dbeta - dout64.sum(0))) <= n * np.finfo(np.float32).eps * np.max(np.abs(dout64)) * n


def bn_tolerances(x, gamma, dout) -> dict:
    """How far two correct batch norms of x may differ, per result, from rounding alone.

    Two implementations may sum in different orders: x_hat then differs by up to
    `rounding_bound(x)` (in units of x_hat), and every result inherits that error times the size
    of what multiplies x_hat, plus the summation error of its own sums over N.
    """
    n = x.shape[0]
    rb = rounding_bound(x)
    g = np.ones(x.shape[1]) if gamma is None else np.abs(gamma.astype(np.float64))
    std = x.astype(np.float64).std(0)
    dmax = float(np.max(np.abs(dout)))
    return {
        "out": 2 * rb * float(np.max(g)),
        "dx": 8 * rb * dmax * float(np.max(g / std)),
        "dgamma": 2 * n * rb * dmax,
        "dbeta": 2 * n * n * np.finfo(x.dtype).eps * dmax,
    }


def max_violation(results_a, results_b, tol: dict) -> float:
    """The worst max|a - b| / tolerance over the named results; <= 1 means all within tolerance."""
    worst = 0.0
    for name, a, b in zip(["out", "dx", "dgamma", "dbeta"], results_a, results_b):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) / tol[name])
    return worst


def bn_pair(rng, x, affine=True):
    d = x.shape[1]
    if not affine:
        return None, None, rng.standard_normal(x.shape).astype(x.dtype)
    return (rng.uniform(0.5, 1.5, d).astype(x.dtype), rng.standard_normal(d).astype(x.dtype),
            rng.standard_normal(x.shape).astype(x.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ghost_batchnorm_with_one_ghost_batch_is_batchnorm(rng, dtype):
    worst = 0.0
    for x in random_batches(rng, dtype, trials=100):
        gamma, beta, dout = bn_pair(rng, x)
        ghost, ghost_cache = nn.ghost_batchnorm_forward(x, gamma, beta, ghost_batch_size=x.shape[0])
        plain, cache = nn.batchnorm_forward(x, gamma, beta)
        worst = max(worst, max_violation(
            (ghost, *nn.ghost_batchnorm_backward(dout, ghost_cache)),
            (plain, *nn.batchnorm_backward(dout, cache)), bn_tolerances(x, gamma, dout)))
        (ghost_mean, ghost_var), (mean, var) = nn.batch_stats(ghost_cache), nn.batch_stats(cache)
        std = x.astype(np.float64).std(0)
        worst = max(worst, float(np.max(np.abs(ghost_mean - mean) / (rounding_bound(x) * std))),
                    float(np.max(np.abs(ghost_var - var) / (2 * rounding_bound(x) * std**2))))
    assert worst <= 1, worst


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batchrenorm_with_batch_statistics_is_batchnorm_exactly(rng, dtype, affine):
    # running stats equal to the batch stats: r = 1 and d = 0 exactly, and every result is bit-equal
    for x in random_batches(rng, dtype, trials=50):
        gamma, beta, dout = bn_pair(rng, x, affine)
        plain, cache = nn.batchnorm_forward(x, gamma, beta)
        renorm, renorm_cache = nn.batchrenorm_forward(x, gamma, beta, *nn.batch_stats(cache))
        assert np.all(renorm_cache.r == 1) and np.all(renorm_cache.d == 0)
        assert np.array_equal(renorm, plain)
        for a, b in zip(nn.batchrenorm_backward(dout, renorm_cache), nn.batchnorm_backward(dout, cache)):
            assert (a is None and b is None) or np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_running_batchnorm_with_momentum_one_is_batchnorm(rng, dtype, affine):
    worst = 0.0
    for x in random_batches(rng, dtype, trials=100):
        gamma, beta, dout = bn_pair(rng, x, affine)
        d = x.shape[1]
        old_mean, old_var = rng.standard_normal(d).astype(dtype), rng.uniform(0.5, 2, d).astype(dtype)
        plain, cache = nn.batchnorm_forward(x, gamma, beta)
        running, running_cache = nn.running_batchnorm_forward(x, gamma, beta, old_mean, old_var, momentum=1.0)
        # the statistics and the output are the batch ones exactly: 0 * old + 1 * batch
        assert np.array_equal(running, plain)
        assert all(np.array_equal(a, b) for a, b in zip(nn.running_stats(running_cache), nn.batch_stats(cache)))
        # the gradient takes another route through the statistics: equal up to rounding
        worst = max(worst, max_violation(
            (running, *nn.running_batchnorm_backward(dout, running_cache)),
            (plain, *nn.batchnorm_backward(dout, cache)), bn_tolerances(x, gamma, dout)))
        # with constant statistics the forward is still batch norm, the gradient is not
        _, const_cache = nn.running_batchnorm_forward(x, gamma, beta, old_mean, old_var, 1.0, grad_through_stats=False)
        dx_const = nn.running_batchnorm_backward(dout, const_cache)[0]
        assert not np.allclose(dx_const, nn.batchnorm_backward(dout, cache)[0])
    assert worst <= 1, worst


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_is_batchnorm_of_the_transpose(rng, dtype):
    worst = 0.0
    for x in random_batches(rng, dtype, trials=100, max_n=40, max_d=300):
        if x.shape[1] < 2:
            continue
        _, _, dout = bn_pair(rng, x, affine=False)
        layer, layer_cache = nn.layernorm_forward(x, None, None)
        batch, batch_cache = nn.batchnorm_forward(x.T, None, None)
        dx_layer = nn.layernorm_backward(dout, layer_cache)[0]
        dx_batch = nn.batchnorm_backward(dout.T, batch_cache)[0]
        worst = max(worst, max_violation((layer.T, dx_layer.T), (batch, dx_batch),
                                         bn_tolerances(x.T, None, dout.T)))
    assert worst <= 1, worst


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_with_one_group_is_layernorm(rng, dtype):
    for x in random_batches(rng, dtype, trials=20):
        gamma, beta, dout = bn_pair(rng, x)
        group, group_cache = nn.groupnorm_forward(x, gamma, beta, groups=1)
        layer, layer_cache = nn.layernorm_forward(x, gamma, beta)
        assert np.array_equal(group, layer)
        for a, b in zip(nn.groupnorm_backward(dout, group_cache), nn.layernorm_backward(dout, layer_cache)):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_normalises_each_group_of_each_example(rng, dtype):
    x = (rng.standard_normal((5, 12)) * 3 + 2).astype(dtype)
    out, _ = nn.groupnorm_forward(x, None, None, groups=3)
    blocks = out.astype(np.float64).reshape(5, 3, 4)
    tol = 64 * np.finfo(dtype).eps
    assert np.max(np.abs(blocks.mean(2))) <= tol
    assert np.max(np.abs(blocks.var(2) - x.astype(np.float64).reshape(5, 3, 4).var(2)
                         / (x.astype(np.float64).reshape(5, 3, 4).var(2) + 1e-5))) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_eval_with_batch_statistics_is_the_training_forward(rng, dtype, affine):
    worst = 0.0
    for x in random_batches(rng, dtype, trials=100):
        gamma, beta, _ = bn_pair(rng, x, affine)
        train, cache = nn.batchnorm_forward(x, gamma, beta)
        evaluated, _ = nn.batchnorm_eval_forward(x, *nn.batch_stats(cache), gamma, beta)
        # same mean, same inv_std; only the order of the affine products differs
        scale = float(np.max(np.abs(train))) + 1.0
        worst = max(worst, float(np.max(np.abs(evaluated.astype(np.float64) - train))) / (4 * np.finfo(dtype).eps * scale))
    assert worst <= 1, worst


def test_ghost_batch_stats_average_the_ghost_batches(rng):
    x = rng.standard_normal((12, 3)) * 2 + 1
    _, cache = nn.ghost_batchnorm_forward(x, None, None, ghost_batch_size=4)
    blocks = [x[0:4], x[4:8], x[8:12]]
    mean, var = nn.batch_stats(cache)
    assert np.allclose(mean, np.mean([b.mean(0) for b in blocks], axis=0), rtol=0, atol=1e-14)
    assert np.allclose(var, np.mean([b.var(0) for b in blocks], axis=0), rtol=0, atol=1e-14)


def test_batchrenorm_r_and_d_follow_the_paper(rng):
    x = rng.standard_normal((32, 6)) * 2 + 1
    running_mean = np.array([1.0, 1.0, 30.0, -30.0, 1.5, 0.0])
    running_var = np.array([4.0, 0.01, 4.0, 4.0, 400.0, 1.0])
    _, cache = nn.batchrenorm_forward(x, None, None, running_mean, running_var, r_max=3.0, d_max=5.0)
    sigma_b, sigma = np.sqrt(x.var(0) + 1e-5), np.sqrt(running_var + 1e-5)
    assert np.allclose(cache.r, np.clip(sigma_b / sigma, 1 / 3, 3), rtol=1e-15)
    assert np.allclose(cache.d, np.clip((x.mean(0) - running_mean) / sigma, -5, 5), rtol=1e-15)
    assert cache.r[1] == 3.0 and cache.r[4] == 1 / 3 and cache.d[2] == -5.0 and cache.d[3] == 5.0


def test_update_running_stats_matches_pytorch_formula_by_hand():
    # one feature, batch [1, 2, 3, 4]: mean 2.5, biased var 1.25, unbiased var 5/3
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    _, cache = nn.batchnorm_forward(x, None, None)
    mean, var = nn.batch_stats(cache)
    assert mean[0] == 2.5 and var[0] == 1.25
    running_mean, running_var = np.array([0.0]), np.array([1.0])
    new_mean, new_var = nn.update_running_stats(running_mean, running_var, mean, var, n=4, momentum=0.1)
    assert new_mean[0] == pytest.approx(0.9 * 0.0 + 0.1 * 2.5, rel=1e-15)
    assert new_var[0] == pytest.approx(0.9 * 1.0 + 0.1 * 5 / 3, rel=1e-15)  # PyTorch: unbiased
    _, biased_var = nn.update_running_stats(running_mean, running_var, mean, var, n=4, momentum=0.1, unbiased=False)
    assert biased_var[0] == pytest.approx(0.9 * 1.0 + 0.1 * 1.25, rel=1e-15)
    # Keras momentum 0.99 is torch momentum 0.01
    keras_momentum = 0.99
    new_mean, _ = nn.update_running_stats(running_mean, running_var, mean, var, n=4, momentum=1 - keras_momentum)
    assert new_mean[0] == pytest.approx(keras_momentum * 0.0 + (1 - keras_momentum) * 2.5, rel=1e-12)
    assert np.array_equal(running_mean, [0.0]) and np.array_equal(running_var, [1.0])  # not mutated
    with pytest.raises(ValueError, match="n >= 2"):
        nn.update_running_stats(running_mean, running_var, mean, var, n=1)


def test_running_batchnorm_carries_the_updated_statistics():
    x = np.array([[1.0, 0.0], [3.0, 4.0]])  # batch mean [2, 2], biased var [1, 4]
    _, cache = nn.running_batchnorm_forward(x, None, None, np.array([0.0, 10.0]), np.array([1.0, 2.0]), momentum=0.25)
    mean, var = nn.running_stats(cache)
    assert np.allclose(mean, [0.75 * 0 + 0.25 * 2, 0.75 * 10 + 0.25 * 2], rtol=1e-15)
    assert np.allclose(var, [0.75 * 1 + 0.25 * 1, 0.75 * 2 + 0.25 * 4], rtol=1e-15)
    assert np.array_equal(nn.batch_stats(cache)[1], [1.0, 4.0])


# ----------------------------------------------------------------------------- noise

def test_sample_covariate_noise_distribution():
    n, d, mean_shift, scale_spread = 20000, 50, 0.5, 2.0
    noise_scale, noise_shift = nn.sample_covariate_noise(np.random.default_rng(3), n, d, mean_shift, scale_spread,
                                                         dtype=np.float32)
    assert noise_scale.shape == noise_shift.shape == (n, d)
    assert noise_scale.dtype == noise_shift.dtype == np.float32
    s = noise_scale[0]
    assert np.all(noise_scale == s) and np.all((s >= 1) & (s <= scale_spread))  # one s_j per feature and step
    # shift ~ N(m_j, s_j^2) with |m_j| <= mean_shift: 6 standard errors of slack
    column_mean, column_std = noise_shift.mean(0, dtype=np.float64), noise_shift.std(0, dtype=np.float64)
    assert np.all(np.abs(column_mean) <= mean_shift + 6 * s / np.sqrt(n))
    assert np.all(np.abs(column_std / s - 1) <= 6 / np.sqrt(2 * n))
    assert np.ptp(column_mean) > mean_shift  # the means really differ from feature to feature
    # the same generator state gives the same noise; the next step gives new noise
    rng = np.random.default_rng(4)
    first = nn.sample_covariate_noise(rng, 3, 4)
    again = nn.sample_covariate_noise(np.random.default_rng(4), 3, 4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(nn.sample_covariate_noise(rng, 3, 4)[1], first[1])


def test_noisy_batchnorm_without_noise_is_batchnorm(rng):
    x, gamma, beta = make_inputs(rng, 9, 4)
    out, cache = nn.noisy_batchnorm_forward(x, gamma, beta, noise_scale=np.ones(4), noise_shift=np.zeros(4))
    plain, plain_cache = nn.batchnorm_forward(x, gamma, beta)
    dout = rng.standard_normal(x.shape)
    assert np.allclose(out, plain, rtol=0, atol=1e-14)
    for a, b in zip(nn.noisy_batchnorm_backward(dout, cache), nn.batchnorm_backward(dout, plain_cache)):
        assert np.allclose(a, b, rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- errors

ONE_EXAMPLE = np.ones((1, 3))
G, B = np.ones(3), np.zeros(3)


@pytest.mark.parametrize("call", [
    lambda: nn.batchnorm_forward(ONE_EXAMPLE, G, B),
    lambda: nn.batchnorm_forward(ONE_EXAMPLE, None, None),
    lambda: nn.ghost_batchnorm_forward(np.ones((4, 3)), G, B, ghost_batch_size=1),
    lambda: nn.batchrenorm_forward(ONE_EXAMPLE, G, B, np.zeros(3), np.ones(3)),
    lambda: nn.running_batchnorm_forward(ONE_EXAMPLE, G, B, np.zeros(3), np.ones(3), grad_through_stats=True),
    lambda: nn.noisy_batchnorm_forward(ONE_EXAMPLE, G, B, np.ones(3), np.zeros(3)),
], ids=["batchnorm", "batchnorm_noaffine", "ghost", "renorm", "running", "noisy"])
def test_one_example_in_training_mode_raises(call):
    with pytest.raises(ValueError, match="batch norm in training mode needs more than one example per batch"):
        call()


def test_one_example_is_fine_without_batch_statistics():
    for out, _ in [nn.batchnorm_eval_forward(ONE_EXAMPLE, np.zeros(3), np.ones(3), G, B),
                   nn.running_batchnorm_forward(ONE_EXAMPLE, G, B, np.zeros(3), np.ones(3), grad_through_stats=False),
                   nn.layernorm_forward(ONE_EXAMPLE + np.arange(3), G, B)]:
        assert np.all(np.isfinite(out))


@pytest.mark.parametrize("call,message", [
    (lambda: nn.batchnorm_forward(np.ones(3), None, None), r"shape \(N, D\)"),
    (lambda: nn.batchnorm_forward(np.ones((4, 3)), np.ones(2), np.zeros(2)), r"gamma must have shape \(3,\)"),
    (lambda: nn.batchnorm_forward(np.ones((4, 3)), G, None), "both be None"),
    (lambda: nn.batchnorm_forward(np.ones((4, 3)), G, B, eps=-1.0), "eps"),
    (lambda: nn.groupnorm_forward(np.ones((4, 6)), None, None, groups=4), "divisor of the 6 features"),
    (lambda: nn.ghost_batchnorm_forward(np.ones((6, 3)), G, B, ghost_batch_size=4), "divisor of the batch size 6"),
    (lambda: nn.batchrenorm_forward(np.ones((4, 3)), G, B, np.zeros(2), np.ones(3)), "running_mean"),
    (lambda: nn.noisy_batchnorm_forward(np.ones((4, 3)), G, B, np.ones((2, 3)), 0.0), "noise_scale"),
    (lambda: nn.linear_forward(np.ones((4, 3)), np.ones((2, 5)), None), "W must have shape"),
    (lambda: nn.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3])), r"labels must be in \[0, 3\)"),
    (lambda: nn.softmax_cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])), "integer labels"),
    (lambda: nn.batch_stats(nn.layernorm_forward(np.ones((2, 3)), None, None)[1]), "no batch statistics"),
])
def test_bad_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- internals

@pytest.mark.parametrize("shape", [(128, 1), (128, 3), (200, 7), (256, 256), (1024, 48), (197, 5), (300, 70)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_feature_is_bit_identical_to_broadcasting(rng, shape, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    v = rng.standard_normal(shape[1]).astype(dtype)
    for op in (np.add, np.subtract, np.multiply):
        assert np.array_equal(nn._per_feature(op, a, v), op(a, v))
        out = np.empty_like(a)
        assert nn._per_feature(op, a, v, out=out) is not None and np.array_equal(out, op(a, v))
        in_place = a.copy()
        nn._per_feature(op, in_place, v, out=in_place)
        assert np.array_equal(in_place, op(a, v))
        assert np.array_equal(nn._per_feature(op, a.T.copy().T, v), op(a, v))  # non-contiguous input


# ----------------------------------------------------------------------------- stacks: (..., N, D)

def _stack_case(name, rng, dtype, arms: int):
    """The same layer case drawn `arms` times, stacked: x (K, N, D), per-arm parameters (K, 1, D)."""
    cases = [_case(name, rng, dtype) for _ in range(arms)]
    _, forward, backward, _ = cases[0]
    stacked = {}
    for key, value in cases[0][3].items():
        if isinstance(value, np.ndarray):
            values = np.stack([c[3][key] for c in cases])
            stacked[key] = values[:, None, :] if value.ndim == 1 else values
        else:
            stacked[key] = value
    return forward, backward, [c[3] for c in cases], stacked


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_stack_of_arms_equals_separate_calls_exactly(rng, name, dtype):
    forward, backward, singles, stacked = _stack_case(name, rng, dtype, arms=3)
    out, cache = forward(**stacked)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = _as_tuple(backward(dout, cache))
    for k, inputs in enumerate(singles):
        out_k, cache_k = forward(**inputs)
        assert np.array_equal(out[k], out_k)
        for grad, grad_k in zip(grads, _as_tuple(backward(dout[k], cache_k))):
            if grad_k is None:
                assert grad is None
            else:
                assert grad.dtype == grad_k.dtype and np.array_equal(grad[k].reshape(grad_k.shape), grad_k)
        if hasattr(cache, "batch_mean"):
            for stat, stat_k in zip(nn.batch_stats(cache), nn.batch_stats(cache_k)):
                assert np.array_equal(stat[k, 0], stat_k)


@pytest.mark.parametrize("shape", [(256, 256), (512, 260), (200, 7)])
def test_a_large_stack_equals_separate_calls_exactly(rng, shape):
    """The wide-row and einsum paths of the batch-norm kernels (taken from 128 rows and 2**17
    elements per arm on) give each arm of a stack what the arm alone gives, bit for bit."""
    n, d = shape
    x = (rng.standard_normal((3, n, d)) * 2 + 1).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, (3, 1, d)).astype(np.float32), rng.standard_normal((3, 1, d)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out, cache = nn.batchnorm_forward(x, gamma, beta)
    grads = nn.batchnorm_backward(dout, cache)
    for k in range(3):
        out_k, cache_k = nn.batchnorm_forward(x[k], gamma[k, 0], beta[k, 0])
        assert np.array_equal(out[k], out_k)
        for grad, grad_k in zip(grads, nn.batchnorm_backward(dout[k], cache_k)):
            assert np.array_equal(grad[k].reshape(grad_k.shape), grad_k)


@pytest.mark.parametrize("name", [n for n in CASE_NAMES if n not in ("relu",)])
def test_stacked_gradients_match_finite_differences(rng, name):
    forward, backward, _, stacked = _stack_case(name, rng, np.float64, arms=2)
    if "x" in stacked:
        stacked["x"] = stacked["x"] + rng.standard_normal(stacked["x"].shape[-1])  # offset: a harder case
    wrt = {"linear": ["x", "W", "b"], "linear_nobias": ["x", "W", None]}.get(
        name, ["x", None, None] if "noaffine" in name else ["x", "gamma", "beta"])
    frozen = None  # the layers whose backward treats some statistics as constants
    if name == "renorm":
        _, cache = nn.batchrenorm_forward(**stacked)
        frozen = _frozen_renorm(cache.r, cache.d)
    elif name == "running_const":
        mean, var = nn.running_stats(nn.running_batchnorm_forward(**stacked)[1])

        def frozen(x, gamma, beta, **_):
            return nn.batchnorm_eval_forward(x, mean, var, gamma, beta)
    check_grads(forward, backward, stacked, wrt, rng, frozen_forward=frozen)


@pytest.mark.parametrize("layer", ["batchnorm", "layernorm", "ghost", "linear"])
def test_shared_parameters_get_the_sum_of_the_arms_gradients(rng, layer):
    """A (D,) parameter used by every arm of a stack: its gradient is the sum over the arms."""
    x = rng.standard_normal((3, 8, 4)) + 1.0
    if layer == "linear":
        W, b = rng.standard_normal((4, 5)), rng.standard_normal(5)
        out, cache = nn.linear_forward(x, W, b)
        dout = rng.standard_normal(out.shape)
        dx, dW, db = nn.linear_backward(dout, cache)
        assert dW.shape == W.shape and db.shape == b.shape
        singles = [nn.linear_backward(dout[k], nn.linear_forward(x[k], W, b)[1]) for k in range(3)]
        assert rel_error(dW, sum(s[1] for s in singles)) < 1e-15
        assert rel_error(db, sum(s[2] for s in singles)) < 1e-15
        return
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    forward, backward, extra = {
        "batchnorm": (nn.batchnorm_forward, nn.batchnorm_backward, {}),
        "layernorm": (nn.layernorm_forward, nn.layernorm_backward, {}),
        "ghost": (nn.ghost_batchnorm_forward, nn.ghost_batchnorm_backward, {"ghost_batch_size": 4}),
    }[layer]
    check_grads(lambda **kw: forward(**kw, **extra), backward, dict(x=x, gamma=gamma, beta=beta),
                ["x", "gamma", "beta"], rng)


def test_stacked_softmax_cross_entropy_is_per_arm(rng):
    logits = rng.standard_normal((4, 6, 5)).astype(np.float32)
    y = rng.integers(0, 5, (4, 6))
    loss, dlogits = nn.softmax_cross_entropy(logits, y)
    assert loss.shape == (4,) and dlogits.dtype == np.float32
    for k in range(4):
        loss_k, dlogits_k = nn.softmax_cross_entropy(logits[k], y[k])
        assert loss[k] == loss_k and np.array_equal(dlogits[k], dlogits_k)
    shared_loss, _ = nn.softmax_cross_entropy(logits, y[0])  # one label vector for every arm
    assert shared_loss[1] == nn.softmax_cross_entropy(logits[1], y[0])[0]
    x = logits.astype(np.float64)
    num = numerical_gradient(lambda v: np.array(nn.softmax_cross_entropy(v, y)[0].sum()), x.copy(), np.array(1.0))
    assert rel_error(nn.softmax_cross_entropy(x, y)[1], num) < TOL


def test_linear_backward_without_input_grad_skips_only_dx(rng):
    x, W, b = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 1, 5))
    _, cache = nn.linear_forward(x, W, b)
    dout = rng.standard_normal((3, 6, 5))
    dx, dW, db = nn.linear_backward(dout, cache)
    none, dW2, db2 = nn.linear_backward(dout, cache, input_grad=False)
    assert none is None and np.array_equal(dW, dW2) and np.array_equal(db, db2)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(7, 5), (3, 7, 5)])
def test_batchnorm_eval_forward_without_cache_gives_the_same_output(rng, shape, affine):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    stat = (1, 5) if len(shape) == 2 else (3, 1, 5)
    mean, var = rng.standard_normal(stat[-1:]), rng.uniform(0.5, 2, stat[-1:])
    gamma, beta = (rng.standard_normal(stat), rng.standard_normal(stat)) if affine else (None, None)
    if affine and len(shape) == 2:
        gamma, beta = gamma[0], beta[0]
    out, cache = nn.batchnorm_eval_forward(x, mean, var, gamma, beta)
    fast, none = nn.batchnorm_eval_forward(x, mean, var, gamma, beta, cache=False)
    assert none is None and cache is not None and fast.dtype == out.dtype
    assert np.array_equal(fast, out)                  # bit for bit: the same operations, in place


def test_stacked_parameters_must_broadcast_against_the_arms():
    x = np.ones((3, 4, 5))
    with pytest.raises(ValueError, match=r"gamma must have shape \(5,\) or per arm \(\.\.\., 1, 5\)"):
        nn.batchnorm_forward(x, np.ones((2, 1, 5)), np.zeros((2, 1, 5)))
    with pytest.raises(ValueError, match="gamma must have shape"):
        nn.batchnorm_forward(x, np.ones((3, 5)), np.zeros((3, 5)))  # (K, D) is ambiguous: use (K, 1, D)
