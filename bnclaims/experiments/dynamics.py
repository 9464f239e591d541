"""Training dynamics of batch norm's gamma and beta, and BN vs no-norm training, on the digits.

One shared, fast training routine (`train_stack`) trains a *stack* of networks at once: the
arms of a comparison (learning rates, optimisers, batch orders) share one initialisation and
one batch stream per order (paired), and sit on a leading axis A so that every layer is one
batched matmul. It records what the claims of thread 000 need:

* gamma, beta of every BN layer at every step (per-step changes, late fluctuation),
* block averages of gamma, beta and W (when do they settle),
* the moments of every hidden layer on a FIXED probe set at every step (distribution drift),
* validation accuracy every few steps (steps to a target), final validation/test accuracy.

The MLP is  x -> [linear -> (BN) -> ReLU] x depth -> linear -> softmax, He-initialised.
BN layers have no linear bias (beta replaces it); no-norm layers have one. Evaluation uses
the running statistics (PyTorch convention, momentum 0.1, unbiased variance).

Registered experiments (each docstring says its arms and scale):
``bn-vs-plain-probe-drift``, ``gamma-beta-step-vs-lr``, ``gamma-beta-lr-order-grid``,
``gamma-beta-settling``, ``bn-need-shallow-deep``, ``bn-lr-stability``, ``bn-cancel-check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bnclaims.data import batches, digits_split
from bnclaims.experiments import experiment

DTYPE = np.float32
EPS = 1e-5
RUNNING_MOMENTUM = 0.1
N_CLASSES = 10


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Digits:
    """The shared digits split: test 25 % (fixed), validation 20 % of the rest, standardized."""

    X_train: np.ndarray  # (1078, 64) float32
    y_train: np.ndarray  # (1078,)
    X_val: np.ndarray    # (269, 64)
    y_val: np.ndarray
    X_test: np.ndarray   # (450, 64)
    y_test: np.ndarray


def load() -> Digits:
    s = digits_split(0.25, 0.2, standardize=True, dtype=DTYPE)
    return Digits(s.X_train, s.y_train, s.X_val, s.y_val, s.X_test, s.y_test)


def batch_stream(rng: np.random.Generator, n: int, batch_size: int, order: str, labels: np.ndarray,
                 steps: int) -> np.ndarray:
    """(steps, batch_size) int64 indices: epochs of `data.batches` in `order`, concatenated."""
    out: list[np.ndarray] = []
    while len(out) < steps:
        out.extend(batches(rng, n, batch_size, order, labels))
    return np.stack(out[:steps])


# ----------------------------------------------------------------------------- batched layers
# Shapes: A arms, N examples, D features. Per-feature parameters are (A, D).


def bn_forward(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray):
    """Training-mode batch norm of a stack. z: (A, N, D); gamma, beta: (A, D).

    Returns y (A, N, D), cache (xhat, inv_std (A, 1, D), gamma), batch mean and biased var (A, D).
    """
    mean = z.mean(axis=1, keepdims=True)
    zc = z - mean
    var = np.einsum("and,and->ad", zc, zc) / z.shape[1]
    inv_std = 1.0 / np.sqrt(var + EPS)[:, None, :]
    xhat = zc * inv_std
    y = xhat * gamma[:, None, :] + beta[:, None, :]
    return y, (xhat, inv_std, gamma), mean[:, 0, :], var


def bn_backward(dy: np.ndarray, cache):
    """dy: (A, N, D) -> dz (A, N, D), dgamma (A, D), dbeta (A, D)."""
    xhat, inv_std, gamma = cache
    n = dy.shape[1]
    dbeta = dy.sum(axis=1)
    dgamma = np.einsum("and,and->ad", dy, xhat)
    # dz = inv_std * gamma * (dy - mean(dy) - xhat * mean(dy * xhat))
    dz = dy - (dbeta / n)[:, None, :]
    dz -= xhat * (dgamma / n)[:, None, :]
    dz *= (gamma[:, None, :] * inv_std)
    return dz, dgamma, dbeta


def softmax_xent(logits: np.ndarray, y: np.ndarray):
    """Mean cross-entropy per arm. logits: (A, N, C); y: (A, N) or (N,) ints.

    Returns loss (A,) float64 and dlogits (A, N, C) (gradient of each arm's mean loss).
    """
    a, n, c = logits.shape
    y = np.broadcast_to(y, (a, n))
    shifted = logits - logits.max(axis=2, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=2)
    picked = np.take_along_axis(shifted, y[:, :, None], axis=2)[:, :, 0]
    loss = (np.log(sum_exp) - picked).mean(axis=1, dtype=np.float64)
    exp /= sum_exp[:, :, None]
    np.put_along_axis(exp, y[:, :, None], np.take_along_axis(exp, y[:, :, None], axis=2) - 1.0, axis=2)
    exp *= 1.0 / n
    return loss, exp


# ----------------------------------------------------------------------------- the network


@dataclass
class Net:
    """A stack of A MLPs with identical architecture. Lists are per layer (hidden layers, then output)."""

    norm: bool
    W: list[np.ndarray]                      # (A, d_in, d_out)
    b: list[np.ndarray | None]               # (A, d_out) or None (BN hidden layers have no bias)
    gamma: list[np.ndarray] = field(default_factory=list)         # (A, D) per hidden layer (BN only)
    beta: list[np.ndarray] = field(default_factory=list)
    running_mean: list[np.ndarray] = field(default_factory=list)
    running_var: list[np.ndarray] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.W) - 1

    @property
    def arms(self) -> int:
        return self.W[0].shape[0]

    def params(self) -> list[np.ndarray]:
        out = list(self.W) + [b for b in self.b if b is not None]
        return out + list(self.gamma) + list(self.beta)


def init_net(seed: int, arms: int, depth: int, width: int, norm: bool, d_in: int = 64) -> Net:
    """He-initialised stack; every arm gets the SAME initial weights (paired arms).

    The weights come from `seed` alone, so a BN and a no-norm net built from one seed share W.
    """
    rng = np.random.default_rng(seed)
    sizes = [d_in] + [width] * depth + [N_CLASSES]
    W, b = [], []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(DTYPE)
        W.append(np.repeat(w[None], arms, axis=0))
        last = i == depth
        b.append(np.zeros((arms, fan_out), DTYPE) if (last or not norm) else None)
    net = Net(norm, W, b)
    if norm:
        for _ in range(depth):
            net.gamma.append(np.ones((arms, width), DTYPE))
            net.beta.append(np.zeros((arms, width), DTYPE))
            net.running_mean.append(np.zeros((arms, width), DTYPE))
            net.running_var.append(np.ones((arms, width), DTYPE))
    return net


def forward_train(net: Net, x: np.ndarray, keep_moments: bool = False):
    """Training-mode forward. x: (A, N, 64) or (N, 64). Returns logits (A, N, 10), caches, moments.

    moments (when asked): per hidden layer, (mean, std) over the N examples, each (A, D), of the
    distribution the next stage sees: BN output gamma * xhat + beta, or the no-norm pre-activation.
    """
    h = x
    caches, moments = [], []
    for i in range(net.depth):
        z = h @ net.W[i]                    # (N, d) @ (A, d, D) broadcasts to (A, N, D)
        if net.norm:
            y, bn_cache, mean, var = bn_forward(z, net.gamma[i], net.beta[i])
        else:
            y, bn_cache = z + net.b[i][:, None, :], None
            mean = var = None
        if keep_moments:
            m = y.mean(axis=1)
            yc = y - m[:, None, :]
            moments.append((m, np.sqrt(np.einsum("and,and->ad", yc, yc) / y.shape[1])))
        out = np.maximum(y, 0)
        caches.append((h, bn_cache, out, mean, var))
        h = out
    logits = h @ net.W[-1] + net.b[-1][:, None, :]
    return logits, (caches, h), moments


def backward(net: Net, dlogits: np.ndarray, cache):
    """Gradients of every parameter, in the order of `net.params()`."""
    caches, h_last = cache
    dW = [None] * (net.depth + 1)
    db = [None] * (net.depth + 1)
    dgamma = [None] * net.depth
    dbeta = [None] * net.depth
    dW[-1] = np.swapaxes(h_last, 1, 2) @ dlogits
    db[-1] = dlogits.sum(axis=1)
    dh = dlogits @ np.swapaxes(net.W[-1], 1, 2)
    for i in reversed(range(net.depth)):
        h_in, bn_cache, out, _, _ = caches[i]
        dy = dh * (out > 0)
        if net.norm:
            dz, dgamma[i], dbeta[i] = bn_backward(dy, bn_cache)
        else:
            dz = dy
            db[i] = dy.sum(axis=1)
        dW[i] = np.swapaxes(h_in, -1, -2) @ dz   # (d_in, N) or (A, d_in, N) @ (A, N, D)
        if i > 0:
            dh = dz @ np.swapaxes(net.W[i], 1, 2)
    grads = list(dW) + [g for g in db if g is not None]
    return grads + dgamma + dbeta if net.norm else grads


def hidden_eval(net: Net, x: np.ndarray, arms=slice(None)) -> list[np.ndarray]:
    """Inference-mode (running statistics) ReLU outputs of every hidden layer, each (A', N, D),
    for the arms `arms`. x: (N, 64)."""
    h, hidden = x, []
    for i in range(net.depth):
        z = h @ net.W[i][arms]
        if net.norm:
            scale = net.gamma[i][arms] / np.sqrt(net.running_var[i][arms] + EPS)
            y = (z - net.running_mean[i][arms][:, None, :]) * scale[:, None, :] + net.beta[i][arms][:, None, :]
        else:
            y = z + net.b[i][arms][:, None, :]
        h = np.maximum(y, 0)
        hidden.append(h)
    return hidden


def forward_eval(net: Net, x: np.ndarray, arms=slice(None)) -> np.ndarray:
    """Inference-mode logits (A', N, 10) of the arms `arms`, with the running statistics. x: (N, 64)."""
    return hidden_eval(net, x, arms)[-1] @ net.W[-1][arms] + net.b[-1][arms][:, None, :]


def dead_fraction(net: Net, x: np.ndarray, layer: int) -> np.ndarray:
    """(A,) fraction of hidden layer `layer`'s units whose ReLU output is 0 for every example of x (eval mode)."""
    return (hidden_eval(net, x)[layer].max(axis=1) <= 0).mean(axis=1)


def accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A,) fraction of correct argmax; an example with any non-finite logit (NaN or inf) counts as wrong.

    (np.argmax over all-NaN logits returns 0, which would score a diverged arm at about 10 %.)
    """
    with np.errstate(invalid="ignore"):
        correct = (logits.argmax(axis=2) == y[None, :]) & np.isfinite(logits).all(axis=2)
    return correct.mean(axis=1)


# ----------------------------------------------------------------------------- training


@dataclass
class Record:
    """What `train_stack` recorded. T steps, A arms, L hidden layers, D width, K blocks."""

    loss: np.ndarray                    # (T, A) training mini-batch loss
    diverged: np.ndarray                # (A,) bool: a non-finite loss or parameter at some step
    gamma: list[np.ndarray]             # L x (T + 1, A, D): value before step 0 .. after the last step
    beta: list[np.ndarray]
    probe_mean: list[np.ndarray]        # L x (T + 1, A, D) moments on the probe (empty if no probe)
    probe_std: list[np.ndarray]
    input_mean: list[np.ndarray]        # BN only: moments of the BN *input* z on the probe
    input_std: list[np.ndarray]
    block_W: list[np.ndarray]           # L x (K, A, d_in, D) block averages of W (empty unless asked)
    block_gamma: list[np.ndarray]       # L x (K, A, D)
    block_beta: list[np.ndarray]
    init_W: list[np.ndarray]            # L x (A, d_in, D)
    eval_steps: np.ndarray              # (E,) steps after which validation accuracy was taken
    val_acc_curve: np.ndarray           # (E, A') of the evaluated arms
    val_acc: np.ndarray                 # (A,) final
    test_acc: np.ndarray                # (A,) final
    net: Net


def train_stack(
    net: Net,
    data: Digits,
    idx: np.ndarray,
    lrs,
    momentum=0.0,
    *,
    probe: np.ndarray | None = None,
    block: int = 0,
    eval_every: int = 0,
    eval_arms=None,
) -> Record:
    """Train every arm of `net` with SGD (+ momentum) and record the dynamics.

    idx: (T, B) batch indices shared by all arms, or (T, A, B) one stream per arm.
    lrs, momentum: scalars or (A,) per arm. PyTorch SGD: v = mu v + g; theta -= lr v.
    probe: (P, 64) fixed examples whose per-layer moments are recorded at every step.
    block: > 0 records block averages of W, gamma, beta over consecutive `block` steps.
    eval_every: > 0 records validation accuracy every `eval_every` steps, of the arms `eval_arms`
    (a list of arm indices; all arms when None).
    A diverged arm (non-finite loss) is frozen at NaN and flagged; the others carry on.
    """
    a = net.arms
    steps = idx.shape[0]
    lr = np.broadcast_to(np.asarray(lrs, DTYPE), (a,)).copy()
    mu = np.broadcast_to(np.asarray(momentum, DTYPE), (a,)).copy()
    params = net.params()
    velocity = [np.zeros_like(p) for p in params] if np.any(mu > 0) else None
    shape_of = [(a,) + (1,) * (p.ndim - 1) for p in params]
    lr_of = [lr.reshape(s) for s in shape_of]
    mu_of = [mu.reshape(s) for s in shape_of]
    with np.errstate(all="ignore"):         # diverging arms overflow on purpose; they are flagged
        return _train_loop(net, data, idx, lr_of, mu_of, shape_of, params, velocity, probe, block, eval_every,
                           slice(None) if eval_arms is None else np.asarray(eval_arms))


def _train_loop(net, data, idx, lr_of, mu_of, shape_of, params, velocity, probe, block, eval_every, eval_arms):
    a, steps, L = net.arms, idx.shape[0], net.depth
    diverged = np.zeros(a, bool)
    losses = np.empty((steps, a))
    traj_gamma = [[g.copy()] for g in net.gamma]
    traj_beta = [[b.copy()] for b in net.beta]
    p_mean, p_std, i_mean, i_std = ([[] for _ in range(L)] for _ in range(4))
    init_W = [w.copy() for w in net.W[:L]]

    def probe_record():
        _, (caches, _), moments = forward_train(net, probe, keep_moments=True)
        for i in range(L):
            p_mean[i].append(moments[i][0])
            p_std[i].append(moments[i][1])
            if net.norm:
                i_mean[i].append(caches[i][3])
                i_std[i].append(np.sqrt(caches[i][4]))

    if probe is not None:
        probe_record()
    n_blocks = steps // block if block else 0
    sums_W = [np.zeros_like(w) for w in net.W[:L]] if block else []
    sums_g = [np.zeros_like(g) for g in net.gamma] if block else []
    sums_b = [np.zeros_like(g) for g in net.beta] if block else []
    block_W, block_g, block_b = [[] for _ in range(L)], [[] for _ in range(L)], [[] for _ in range(L)]
    eval_steps, val_curve = [], []

    for t in range(steps):
        bidx = idx[t]
        xb = data.X_train[bidx]             # (B, 64) shared or (A, B, 64) per arm
        yb = data.y_train[bidx]
        logits, cache, _ = forward_train(net, xb)
        loss, dlogits = softmax_xent(logits, yb)
        losses[t] = loss
        bad = ~np.isfinite(loss)
        if bad.any() and not diverged[bad].all():
            diverged |= bad
            for p in params:                # freeze diverged arms at NaN: flagged, never "stuck"
                p[diverged] = np.nan
            lr_of = [np.where(diverged.reshape(s), 0, l) for s, l in zip(shape_of, lr_of)]
        grads = backward(net, dlogits, cache)
        if velocity is None:
            for p, g, l in zip(params, grads, lr_of):
                g *= l
                p -= g
        else:
            for p, v, g, l, m in zip(params, velocity, grads, lr_of, mu_of):
                v *= m
                v += g
                p -= l * v
        if net.norm:                        # running statistics of this batch, unbiased variance
            n = xb.shape[-2]
            for i in range(L):
                mean, var = cache[0][i][3], cache[0][i][4]
                net.running_mean[i] *= 1 - RUNNING_MOMENTUM
                net.running_mean[i] += RUNNING_MOMENTUM * mean
                net.running_var[i] *= 1 - RUNNING_MOMENTUM
                net.running_var[i] += (RUNNING_MOMENTUM * n / (n - 1)) * var
            for i in range(L):
                traj_gamma[i].append(net.gamma[i].copy())
                traj_beta[i].append(net.beta[i].copy())
        if probe is not None:
            probe_record()
        if block and t < n_blocks * block:
            for i in range(L):
                sums_W[i] += net.W[i]
                if net.norm:
                    sums_g[i] += net.gamma[i]
                    sums_b[i] += net.beta[i]
            if (t + 1) % block == 0:
                for i in range(L):
                    block_W[i].append(sums_W[i] / block)
                    sums_W[i][:] = 0
                    if net.norm:
                        block_g[i].append(sums_g[i] / block)
                        block_b[i].append(sums_b[i] / block)
                        sums_g[i][:] = 0
                        sums_b[i][:] = 0
        if eval_every and (t + 1) % eval_every == 0:
            eval_steps.append(t + 1)
            val_curve.append(accuracy(forward_eval(net, data.X_val, eval_arms), data.y_val))

    stack = lambda xs: np.stack(xs) if xs else np.empty((0,))  # noqa: E731
    return Record(
        loss=losses,
        diverged=diverged,
        gamma=[stack(g) for g in traj_gamma],
        beta=[stack(b) for b in traj_beta],
        probe_mean=[stack(m) for m in p_mean],
        probe_std=[stack(s) for s in p_std],
        input_mean=[stack(m) for m in i_mean],
        input_std=[stack(s) for s in i_std],
        block_W=[stack(w) for w in block_W],
        block_gamma=[stack(g) for g in block_g],
        block_beta=[stack(b) for b in block_b],
        init_W=init_W,
        eval_steps=np.asarray(eval_steps, dtype=np.int64),
        val_acc_curve=stack(val_curve),
        val_acc=accuracy(forward_eval(net, data.X_val), data.y_val),
        test_acc=accuracy(forward_eval(net, data.X_test), data.y_test),
        net=net,
    )


# ----------------------------------------------------------------------------- measurements


def relative_step(traj: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean per-step change of a parameter relative to the size of gamma.

    traj, scale: (T + 1, A, D) trajectories (scale is gamma). Returns (A,):
    mean_{t, j} |theta_{t+1, j} - theta_{t, j}|  /  mean_{t, j} |gamma_{t, j}|.
    """
    return np.abs(np.diff(traj, axis=0)).mean(axis=(0, 2)) / np.abs(scale).mean(axis=(0, 2))


def detrended_std(values: np.ndarray) -> np.ndarray:
    """Std over axis 0 of the residual after a least-squares straight line in time. (W, ...) -> (...)."""
    w = values.shape[0]
    t = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    centred = values - values.mean(axis=0)
    slope = np.tensordot(t, centred, axes=(0, 0)) / (t @ t)
    resid = centred - t.reshape((w,) + (1,) * (values.ndim - 1)) * slope
    return np.sqrt((resid * resid).mean(axis=0))


def late_fluctuation(gamma: np.ndarray, beta: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Fluctuation of (gamma, beta) over the last `fraction` of training, slow trend removed.

    gamma, beta: (T + 1, A, D). Per unit, the detrended std of gamma and of beta over the window,
    summed over units and divided by the summed mean |gamma| (the scale of the layer's output):
    "how far gamma and beta wobble, in units of the output's std". Returns (A,), the mean of the
    gamma and beta values.
    """
    w = max(int(round(fraction * (gamma.shape[0] - 1))), 3)
    g, b = gamma[-w:].astype(np.float64), beta[-w:].astype(np.float64)
    size = np.abs(g).mean(axis=0).sum(axis=-1)
    return 0.5 * (detrended_std(g).sum(axis=-1) + detrended_std(b).sum(axis=-1)) / size


SETTLE_FINAL_FRACTION = 0.25   # the final value: mean over the last quarter of training's blocks
SETTLE_WOBBLE_MULT = 2.0       # a block within 2x the late wobble of the final value counts as arrived


def late_wobble(flat: np.ndarray, window: int) -> np.ndarray:
    """Size of the late fluctuation of a block-averaged trajectory. flat: (K, A, P) -> (A,).

    Over the last `window` blocks each coordinate's straight-line trend is removed; the wobble
    is the root-mean-square over those blocks of the norm of what is left: how far a single block
    sits from where the slow trend puts it, in the same units as the distance to the final value.
    """
    late = flat[-window:]
    return np.sqrt((detrended_std(late) ** 2).sum(axis=-1))


def settle_fraction(blocks: np.ndarray, init: np.ndarray, tolerance: float = 0.2,
                    final_fraction: float = SETTLE_FINAL_FRACTION,
                    wobble_mult: float = SETTLE_WOBBLE_MULT) -> np.ndarray:
    """When a parameter reaches, and stays within, `tolerance` of its final value -- up to the late wobble.

    blocks: (K, A, ...) block averages over training; init: (A, ...) the initial value.
    final = mean of the last `final_fraction` of the blocks (a long average, so the final value
    itself carries little wobble); d_k = ||block_k - final||, d_0 = ||init - final|| (norms over
    everything but the arm axis); nu = `late_wobble` over the same last blocks. The band is
    sqrt((tolerance * d_0)^2 + (wobble_mult * nu)^2): with no wobble it is "80 % of the way
    covered"; a parameter that keeps jittering at constant lr counts as arrived once its distance
    to the final value is no more than its own late jitter explains (a block's distance to the
    final value is about nu even when nothing but the wobble is left, and in many dimensions
    that norm barely varies, so 2 nu is rarely exceeded by wobble alone). Returns (A,):
    (k + 1) / K for the first block k from which every later block is inside the band -- the
    fraction of training after which the parameter stays settled. Non-finite (diverged) arms
    get 1.0 (never settled).
    """
    k_blocks, a = blocks.shape[:2]
    flat = blocks.reshape(k_blocks, a, -1).astype(np.float64)
    window = max(int(round(final_fraction * k_blocks)), 3)
    final = flat[-window:].mean(axis=0)
    d = np.linalg.norm(flat - final, axis=2)                         # (K, A)
    d0 = np.linalg.norm(init.reshape(a, -1).astype(np.float64) - final, axis=1)
    band = np.sqrt((tolerance * d0) ** 2 + (wobble_mult * late_wobble(flat, window)) ** 2)
    outside = ~(d <= band)                                            # NaN counts as outside
    # last block that is outside the band; settled from the block after it
    last_out = np.where(outside.any(axis=0), k_blocks - 1 - np.argmax(outside[::-1], axis=0), -1)
    frac = (last_out + 2) / k_blocks
    frac = np.minimum(frac, 1.0)
    frac[~np.isfinite(d0) | ~np.isfinite(d).all(axis=0) | ~np.isfinite(band)] = 1.0
    return frac


def unit_directions(W: np.ndarray) -> np.ndarray:
    """Columns of W (..., d_in, D) scaled to unit length: what a BN layer's output depends on."""
    return W / np.linalg.norm(W, axis=-2, keepdims=True)


def probe_drift(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-step shift of a layer's distribution on the probe, in units of its std.

    mean, std: (T + 1, A, D). Returns (T, A): sum_j (|d mean_j| + |d std_j|) / sum_j std_j.
    """
    change = np.abs(np.diff(mean, axis=0)) + np.abs(np.diff(std, axis=0))
    return change.sum(axis=2) / std[:-1].sum(axis=2)


def per_epoch(values: np.ndarray, steps_per_epoch: int) -> np.ndarray:
    """(T, ...) -> (T // steps_per_epoch, ...) means over whole epochs."""
    e = values.shape[0] // steps_per_epoch
    return values[: e * steps_per_epoch].reshape((e, steps_per_epoch) + values.shape[1:]).mean(axis=1)


def steps_to_target(curve: np.ndarray, eval_steps: np.ndarray, target: float, never: int) -> np.ndarray:
    """First evaluation step at which accuracy >= target, per arm; `never` if it is not reached.

    curve: (E, A) validation accuracy after eval_steps (E,). Returns (A,) float.
    """
    hit = curve >= target
    first = np.argmax(hit, axis=0)
    return np.where(hit.any(axis=0), eval_steps[first], never).astype(np.float64)


def log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x over the finite, positive points (NaN if < 3)."""
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def lr_name(lr: float) -> str:
    """0.1 -> 'lr0p1', 0.03 -> 'lr0p03', 10 -> 'lr10': a metric-name-safe learning rate."""
    return "lr" + f"{lr:g}".replace(".", "p").replace("-", "m")


def _seeds(rng: np.random.Generator) -> tuple[int, int, int]:
    """(init, batch order, probe) seeds drawn from the experiment's generator."""
    init_seed, order_seed, probe_seed = (int(s) for s in rng.integers(0, 2**62, size=3))
    return init_seed, order_seed, probe_seed


def _steps(epochs: int, batch_size: int, n_train: int) -> int:
    return epochs * (n_train // batch_size)


def _probe(seed: int, data: Digits, size: int) -> np.ndarray:
    """A fixed probe set: `size` training examples drawn once per run, never changed."""
    pick = np.random.default_rng(seed).choice(len(data.y_train), size=size, replace=False)
    return data.X_train[np.sort(pick)]


def best_arm(record: Record) -> int:
    """Index of the arm with the best final validation accuracy (ties: lower late training loss).

    Diverged arms are never chosen (unless every arm diverged: then arm 0).
    """
    late = record.loss[-max(record.loss.shape[0] // 20, 1):].mean(axis=0)
    acc = np.where(record.diverged, -1.0, record.val_acc)
    late = np.where(np.isfinite(late), late, np.inf)
    return int(np.lexsort((late, -acc))[0])


# ----------------------------------------------------------------------------- 1. probe drift


@experiment(
    "bn-vs-plain-probe-drift",
    metrics={
        "drift_bn_l1": "BN net, common lr: per-step shift of layer 1's output distribution on the probe "
                       "(sum |d mean| + |d std| over units / sum std), mean over training",
        "drift_plain_l1": "no-norm net, common lr: the same for layer 1's pre-activation",
        "drift_bn_l2": "BN net, common lr: layer 2 output",
        "drift_plain_l2": "no-norm net, common lr: layer 2 pre-activation",
        "drift_bn_input_l1": "BN net, common lr: the same drift for the BN layer's INPUT (before normalizing), layer 1",
        "drift_bn_input_l2": "BN net, common lr: BN input, layer 2",
        "drift_bn_common": "BN net, common lr: drift of the normalized output, mean of layers 1 and 2",
        "drift_plain_common": "no-norm net, common lr: drift of the pre-activation, mean of layers 1 and 2",
        "drift_bn_best": "BN net at its own best lr: drift of the normalized output, mean of layers 1 and 2",
        "drift_plain_best": "no-norm net at its own best lr: drift of the pre-activation, mean of layers 1 and 2",
        "val_acc_bn": "BN net, common lr: final validation accuracy",
        "val_acc_plain": "no-norm net, common lr: final validation accuracy",
        "val_acc_bn_best": "BN net at its best lr: final validation accuracy",
        "val_acc_plain_best": "no-norm net at its best lr: final validation accuracy",
    },
    series={
        "epoch": "epoch number (x axis)",
        "bn_l1": "BN output drift, layer 1, mean over each epoch (common lr)",
        "plain_l1": "no-norm pre-activation drift, layer 1 (common lr)",
        "bn_l2": "BN output drift, layer 2 (common lr)",
        "plain_l2": "no-norm pre-activation drift, layer 2 (common lr)",
        "bn_input_l2": "drift of the BN layer's input, layer 2 (common lr)",
    },
)
def probe_drift_experiment(rng: np.random.Generator, *, lr_common: float = 0.1, lr_bn_best: float = 1.0,
                           lr_plain_best: float = 0.3, epochs: int = 20, batch_size: int = 32,
                           width: int = 64, probe_size: int = 256) -> dict:
    """How much the distribution each layer hands to the next changes per SGD step, BN vs no norm.

    Arms (paired: same initial W, same shuffled batches): a 64-width-width-10 MLP with BN
    (normalized output gamma * xhat + beta) and the same MLP without normalization (pre-activation
    z = h W + b), each at a common learning rate and at its own best learning rate (fixed from a
    validation sweep on other seeds). At every step the hidden layers are run on a FIXED probe of
    `probe_size` training examples; the per-unit mean and std of what each layer passes on are
    recorded, and the drift is sum_j (|change of mean_j| + |change of std_j|) / sum_j std_j, i.e.
    the distribution shift per step in units of its own spread. Scale: digits, 20 epochs, batch 32.
    """
    data = load()
    init_seed, order_seed, probe_seed = _seeds(rng)
    steps = _steps(epochs, batch_size, len(data.y_train))
    idx = batch_stream(np.random.default_rng(order_seed), len(data.y_train), batch_size, "shuffled",
                       data.y_train, steps)
    probe = _probe(probe_seed, data, probe_size)
    bn = train_stack(init_net(init_seed, 2, 2, width, True), data, idx, [lr_common, lr_bn_best], probe=probe)
    plain = train_stack(init_net(init_seed, 2, 2, width, False), data, idx, [lr_common, lr_plain_best],
                        probe=probe)
    d_bn = [probe_drift(m, s) for m, s in zip(bn.probe_mean, bn.probe_std)]           # L x (T, 2)
    d_plain = [probe_drift(m, s) for m, s in zip(plain.probe_mean, plain.probe_std)]
    d_input = [probe_drift(m, s) for m, s in zip(bn.input_mean, bn.input_std)]
    spe = len(data.y_train) // batch_size
    return {
        "drift_bn_l1": d_bn[0][:, 0].mean(), "drift_plain_l1": d_plain[0][:, 0].mean(),
        "drift_bn_l2": d_bn[1][:, 0].mean(), "drift_plain_l2": d_plain[1][:, 0].mean(),
        "drift_bn_input_l1": d_input[0][:, 0].mean(), "drift_bn_input_l2": d_input[1][:, 0].mean(),
        "drift_bn_common": 0.5 * (d_bn[0][:, 0].mean() + d_bn[1][:, 0].mean()),
        "drift_plain_common": 0.5 * (d_plain[0][:, 0].mean() + d_plain[1][:, 0].mean()),
        "drift_bn_best": 0.5 * (d_bn[0][:, 1].mean() + d_bn[1][:, 1].mean()),
        "drift_plain_best": 0.5 * (d_plain[0][:, 1].mean() + d_plain[1][:, 1].mean()),
        "val_acc_bn": bn.val_acc[0], "val_acc_plain": plain.val_acc[0],
        "val_acc_bn_best": bn.val_acc[1], "val_acc_plain_best": plain.val_acc[1],
        "epoch": np.arange(1, steps // spe + 1, dtype=float),
        "bn_l1": per_epoch(d_bn[0][:, 0], spe), "plain_l1": per_epoch(d_plain[0][:, 0], spe),
        "bn_l2": per_epoch(d_bn[1][:, 0], spe), "plain_l2": per_epoch(d_plain[1][:, 0], spe),
        "bn_input_l2": per_epoch(d_input[1][:, 0], spe),
    }


# ----------------------------------------------------------------------------- 2. step size vs lr

STEP_LRS = (0.001, 0.00316, 0.01, 0.0316, 0.1)


def _gb_steps(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """Mean per-step |d gamma| and |d beta| over steps, units and BN layers: (A,), (A,)."""
    dg = np.mean([np.abs(np.diff(g, axis=0)).mean(axis=(0, 2)) for g in record.gamma], axis=0)
    db = np.mean([np.abs(np.diff(b, axis=0)).mean(axis=(0, 2)) for b in record.beta], axis=0)
    return dg, db


@experiment(
    "gamma-beta-step-vs-lr",
    metrics={
        "slope_gb_sgd": "SGD: slope of log(mean per-step change of gamma and beta, (|d gamma| + |d beta|) / 2) "
                        "against log(lr) over the lr grid",
        "slope_gb_mom": "SGD + momentum 0.9: the same slope for gamma and beta together",
        "step_gb_sgd_lr0p01": "SGD at lr 0.01: mean per-step (|d gamma| + |d beta|) / 2",
        "step_gb_mom_lr0p01": "momentum 0.9 at lr 0.01: mean per-step (|d gamma| + |d beta|) / 2",
        "slope_gamma_sgd": "SGD: slope of log(mean per-step |d gamma|) against log(lr) over the lr grid",
        "slope_beta_sgd": "SGD: the same for beta",
        "slope_gamma_mom": "SGD + momentum 0.9: slope for gamma",
        "slope_beta_mom": "SGD + momentum 0.9: slope for beta",
        "step_gamma_sgd_lr0p01": "SGD at lr 0.01: mean per-step |d gamma|",
        "step_gamma_mom_lr0p01": "momentum 0.9 at lr 0.01: mean per-step |d gamma|",
        "step_beta_sgd_lr0p01": "SGD at lr 0.01: mean per-step |d beta|",
        "step_beta_mom_lr0p01": "momentum 0.9 at lr 0.01: mean per-step |d beta|",
        "n_diverged": "number of arms whose loss became non-finite",
    },
    series={
        "lr": "learning rate (x axis)",
        "step_gamma_sgd": "mean per-step |d gamma|, SGD",
        "step_gamma_mom": "mean per-step |d gamma|, momentum 0.9",
        "step_beta_sgd": "mean per-step |d beta|, SGD",
        "step_beta_mom": "mean per-step |d beta|, momentum 0.9",
        "val_acc_sgd": "final validation accuracy, SGD",
        "val_acc_mom": "final validation accuracy, momentum 0.9",
    },
)
def step_vs_lr(rng: np.random.Generator, *, momentum: float = 0.9, epochs: int = 20, batch_size: int = 32,
               width: int = 64) -> dict:
    """Per-step size of the gamma and beta updates across a learning-rate sweep, two optimisers.

    Arms (one stack, paired: same initial weights, same shuffled batches): BN MLP
    64-width-width-10 at lr in 0.001, 0.00316, 0.01, 0.0316, 0.1 (two decades), each with plain
    SGD and with SGD + momentum. Per arm, the mean over all steps, units and both BN layers of
    |gamma_{t+1} - gamma_t| (and beta); the scaling exponent is the least-squares slope of its
    log against log(lr). Scale: digits, 20 epochs, batch 32.
    """
    data = load()
    init_seed, order_seed, _ = _seeds(rng)
    steps = _steps(epochs, batch_size, len(data.y_train))
    idx = batch_stream(np.random.default_rng(order_seed), len(data.y_train), batch_size, "shuffled",
                       data.y_train, steps)
    lrs = np.array(STEP_LRS * 2)
    mus = np.array([0.0] * len(STEP_LRS) + [momentum] * len(STEP_LRS))
    rec = train_stack(init_net(init_seed, len(lrs), 2, width, True), data, idx, lrs, mus)
    dg, db = _gb_steps(rec)
    dg = np.where(rec.diverged, np.nan, dg)
    db = np.where(rec.diverged, np.nan, db)
    k = len(STEP_LRS)
    grid = np.array(STEP_LRS)
    mid = STEP_LRS.index(0.01)
    gb = 0.5 * (dg + db)
    return {
        "slope_gb_sgd": log_slope(grid, gb[:k]), "slope_gb_mom": log_slope(grid, gb[k:]),
        "step_gb_sgd_lr0p01": gb[mid], "step_gb_mom_lr0p01": gb[k + mid],
        "slope_gamma_sgd": log_slope(grid, dg[:k]), "slope_beta_sgd": log_slope(grid, db[:k]),
        "slope_gamma_mom": log_slope(grid, dg[k:]), "slope_beta_mom": log_slope(grid, db[k:]),
        "step_gamma_sgd_lr0p01": dg[mid], "step_gamma_mom_lr0p01": dg[k + mid],
        "step_beta_sgd_lr0p01": db[mid], "step_beta_mom_lr0p01": db[k + mid],
        "n_diverged": float(rec.diverged.sum()),
        "lr": grid, "step_gamma_sgd": dg[:k], "step_gamma_mom": dg[k:],
        "step_beta_sgd": db[:k], "step_beta_mom": db[k:],
        "val_acc_sgd": rec.val_acc[:k], "val_acc_mom": rec.val_acc[k:],
    }


# ----------------------------------------------------------------------------- 3. lr x batch order

GRID_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
DIVERGED_FLUCT = 1000.0  # the fluctuation metric of a diverged arm (gamma ran off to inf): "unbounded"
ORDERS = ("shuffled", "class-sorted")


def _rel_steps(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """Per-step |d gamma| and |d beta| relative to mean |gamma|, averaged over the BN layers: (A,), (A,)."""
    g = np.mean([relative_step(gam, gam) for gam in record.gamma], axis=0)
    b = np.mean([relative_step(bet, gam) for bet, gam in zip(record.beta, record.gamma)], axis=0)
    return g, b


def _fluct(record: Record) -> np.ndarray:
    """Late-training detrended fluctuation of gamma and beta (last 25 %), mean over BN layers: (A,)."""
    return np.mean([late_fluctuation(g, b) for g, b in zip(record.gamma, record.beta)], axis=0)


def _grid_metrics() -> dict:
    metrics = {}
    for order in ("shuffled", "sorted"):
        for lr in GRID_LRS:
            tag = f"{order}_{lr_name(lr)}"
            metrics[f"relstep_gamma_{tag}"] = (f"{order} batches, lr {lr:g}: mean per-step |d gamma| / mean |gamma|")
            metrics[f"relstep_beta_{tag}"] = (f"{order} batches, lr {lr:g}: mean per-step |d beta| / mean |gamma|")
            metrics[f"relstep_gb_{tag}"] = (f"{order} batches, lr {lr:g}: mean per-step change of gamma and beta, "
                                            f"(|d gamma| + |d beta|) / 2 / mean |gamma|")
            metrics[f"fluct_{tag}"] = (f"{order} batches, lr {lr:g}: detrended std of gamma and beta over the last "
                                       f"25 % of training / mean |gamma| ({DIVERGED_FLUCT:g} if diverged: unbounded)")
            metrics[f"val_acc_{tag}"] = f"{order} batches, lr {lr:g}: final validation accuracy (0 if diverged)"
    metrics["n_diverged"] = "number of arms whose loss became non-finite"
    return metrics


@experiment(
    "gamma-beta-lr-order-grid",
    metrics=_grid_metrics(),
    series={
        "lr": "learning rate (x axis)",
        "relstep_gamma_shuffled": "per-step |d gamma| / |gamma|, shuffled batches",
        "relstep_gamma_sorted": "per-step |d gamma| / |gamma|, class-sorted batches",
        "relstep_beta_shuffled": "per-step |d beta| / |gamma|, shuffled batches",
        "relstep_beta_sorted": "per-step |d beta| / |gamma|, class-sorted batches",
        "fluct_shuffled": "late detrended fluctuation of gamma, beta, shuffled (NaN if diverged)",
        "fluct_sorted": "late detrended fluctuation of gamma, beta, class-sorted (NaN if diverged)",
        "val_acc_shuffled": "final validation accuracy, shuffled",
        "val_acc_sorted": "final validation accuracy, class-sorted",
        "epoch": "epoch number (x axis of the per-epoch curves)",
        "relstep_epoch_shuffled_lr0p1": "per-step |d gamma| / |gamma|, mean over each epoch, shuffled, lr 0.1",
        "relstep_epoch_sorted_lr0p1": "per-step |d gamma| / |gamma|, mean over each epoch, class-sorted, lr 0.1",
    },
)
def lr_order_grid(rng: np.random.Generator, *, epochs: int = 20, batch_size: int = 32, width: int = 64) -> dict:
    """Per-step changes and late fluctuation of gamma, beta over learning rate x batch order.

    Arms (one stack, paired: same initial weights; one shuffled batch stream shared by the
    shuffled arms, one class-sorted stream shared by the sorted arms): BN MLP 64-width-width-10,
    plain SGD at lr 0.01, 0.03, 0.1, 0.3, 1.0, with shuffled (i.i.d.) batches or class-sorted
    batches (nearly every batch a single class). Per arm: the mean per-step |d gamma| and
    |d beta| relative to mean |gamma|; the detrended (straight line removed, per unit) std of gamma
    and beta over the last 25 % of steps relative to mean |gamma|. Scale: digits, 20 epochs, batch 32.
    """
    data = load()
    init_seed, order_seed, _ = _seeds(rng)
    n = len(data.y_train)
    steps = _steps(epochs, batch_size, n)
    order_rngs = np.random.default_rng(order_seed).spawn(2)
    streams = [batch_stream(r, n, batch_size, o, data.y_train, steps) for r, o in zip(order_rngs, ORDERS)]
    k = len(GRID_LRS)
    idx = np.stack([streams[0]] * k + [streams[1]] * k, axis=1)          # (T, 2k, B)
    lrs = np.array(GRID_LRS * 2)
    rec = train_stack(init_net(init_seed, 2 * k, 2, width, True), data, idx, lrs)
    g, b = _rel_steps(rec)
    fl = np.where(rec.diverged, np.nan, _fluct(rec))
    acc = np.where(rec.diverged, 0.0, rec.val_acc)
    out: dict = {"n_diverged": float(rec.diverged.sum())}
    for j, order in enumerate(("shuffled", "sorted")):
        for i, lr in enumerate(GRID_LRS):
            a = j * k + i
            tag = f"{order}_{lr_name(lr)}"
            out[f"relstep_gamma_{tag}"] = g[a]
            out[f"relstep_beta_{tag}"] = b[a]
            out[f"relstep_gb_{tag}"] = 0.5 * (g[a] + b[a])
            out[f"fluct_{tag}"] = DIVERGED_FLUCT if rec.diverged[a] else fl[a]
            out[f"val_acc_{tag}"] = acc[a]
        out[f"relstep_gamma_{order}"] = g[j * k:(j + 1) * k]
        out[f"relstep_beta_{order}"] = b[j * k:(j + 1) * k]
        out[f"fluct_{order}"] = fl[j * k:(j + 1) * k]
        out[f"val_acc_{order}"] = acc[j * k:(j + 1) * k]
    spe = n // batch_size
    mid = GRID_LRS.index(0.1)
    # (T, A): per-step |d gamma| summed over units and layers / summed |gamma|
    change = sum(np.abs(np.diff(gam, axis=0)).sum(axis=2) for gam in rec.gamma)
    size = sum(np.abs(gam[:-1]).sum(axis=2) for gam in rec.gamma)
    curve = per_epoch(change / size, spe)
    out["lr"] = np.array(GRID_LRS)
    out["epoch"] = np.arange(1, steps // spe + 1, dtype=float)
    out["relstep_epoch_shuffled_lr0p1"] = curve[:, mid]
    out["relstep_epoch_sorted_lr0p1"] = curve[:, k + mid]
    return out


# ----------------------------------------------------------------------------- 4. settling

SETTLE_LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SETTLE_TOLERANCE = 0.2


def _settle_metrics() -> dict:
    metrics = {}
    for lr in SETTLE_LRS:
        tag = lr_name(lr)
        metrics[f"settle_gb_{tag}"] = (f"lr {lr:g}: fraction of training after which gamma and beta stay within "
                                       f"{SETTLE_TOLERANCE:g} of their initial distance to the final value (mean "
                                       f"of the last quarter), widened by twice their late detrended wobble "
                                       f"(mean over gamma, beta of both BN layers; 1 = never)")
        metrics[f"settle_wdir_{tag}"] = (f"lr {lr:g}: the same for the unit directions of W (columns scaled to "
                                         f"length 1), mean over both BN layers")
        metrics[f"fluct_{tag}"] = (f"lr {lr:g}: detrended std of gamma and beta over the last 25 % of training / "
                                   f"mean |gamma| ({DIVERGED_FLUCT:g} if diverged: unbounded)")
        metrics[f"val_acc_{tag}"] = f"lr {lr:g}: final validation accuracy (0 if diverged)"
        metrics[f"diverged_{tag}"] = f"lr {lr:g}: 1 if the loss became non-finite"
    return metrics


@experiment(
    "gamma-beta-settling",
    metrics=_settle_metrics(),
    series={
        "lr": "learning rate (x axis)",
        "settle_gb": "fraction of training until gamma, beta settle (1 = never)",
        "settle_gamma": "the same for gamma alone",
        "settle_beta": "the same for beta alone",
        "settle_wdir": "the same for the unit directions of W",
        "settle_wraw": "the same for W itself (its norm keeps growing in a BN layer)",
        "fluct": "late detrended fluctuation of gamma, beta / |gamma| (NaN if diverged)",
        "val_acc": "final validation accuracy (NaN if diverged)",
        "diverged": "1 if the arm diverged",
        "progress": "fraction of training (x axis of the distance curves)",
        "dist_gb_lr0p1": "lr 0.1: distance of gamma, beta (block averages) to their final value / initial distance",
        "dist_wdir_lr0p1": "lr 0.1: the same for the unit directions of W",
    },
)
def settling(rng: np.random.Generator, *, epochs: int = 20, batch_size: int = 32, width: int = 64,
             block_steps: int = 11) -> dict:
    """When do gamma and beta settle, compared with W, across a learning-rate sweep?

    Arms (one stack, paired: same initial weights, same shuffled batches): BN MLP
    64-width-width-10, plain SGD at lr 0.01, 0.03, 0.1, 0.3, 1, 3, 10 (up to rates where training
    breaks down). Parameters are averaged over blocks of `block_steps` steps (a third of an epoch);
    the final value is the mean of the blocks of the last quarter of training (5 epochs). A
    parameter has settled from the first block after which its distance to the final value stays
    within sqrt((0.2 d_0)^2 + (2 nu)^2), d_0 its initial distance and nu its late wobble (the
    detrended block-to-block jitter over the last quarter): it has covered 80 % of its way, or
    is as close as its constant-lr jitter lets it be, and does not leave again (`settle_fraction`). Also the late-training
    detrended fluctuation of gamma, beta. Scale: digits, 20 epochs (660 steps), batch 32.
    """
    data = load()
    init_seed, order_seed, _ = _seeds(rng)
    n = len(data.y_train)
    steps = _steps(epochs, batch_size, n)
    idx = batch_stream(np.random.default_rng(order_seed), n, batch_size, "shuffled", data.y_train, steps)
    lrs = np.array(SETTLE_LRS)
    rec = train_stack(init_net(init_seed, len(lrs), 2, width, True), data, idx, lrs, block=block_steps)
    L = len(rec.gamma)
    s_gamma = np.mean([settle_fraction(rec.block_gamma[i], rec.gamma[i][0]) for i in range(L)], axis=0)
    s_beta = np.mean([settle_fraction(rec.block_beta[i], rec.beta[i][0]) for i in range(L)], axis=0)
    s_gb = 0.5 * (s_gamma + s_beta)
    s_wdir = np.mean([settle_fraction(unit_directions(rec.block_W[i]), unit_directions(rec.init_W[i]))
                      for i in range(L)], axis=0)
    s_wraw = np.mean([settle_fraction(rec.block_W[i], rec.init_W[i]) for i in range(L)], axis=0)
    fl = _fluct(rec)
    out: dict = {}
    for a, lr in enumerate(SETTLE_LRS):
        tag = lr_name(lr)
        out[f"settle_gb_{tag}"] = s_gb[a]
        out[f"settle_wdir_{tag}"] = s_wdir[a]
        out[f"fluct_{tag}"] = DIVERGED_FLUCT if rec.diverged[a] else fl[a]
        out[f"val_acc_{tag}"] = 0.0 if rec.diverged[a] else rec.val_acc[a]
        out[f"diverged_{tag}"] = float(rec.diverged[a])
    # distance curves at lr 0.1, relative to the initial distance (the settling criterion's scale)
    mid = SETTLE_LRS.index(0.1)

    def rel_dist(blocks, init):
        flat = blocks[:, mid].reshape(blocks.shape[0], -1).astype(np.float64)
        final = flat[-max(int(round(SETTLE_FINAL_FRACTION * flat.shape[0])), 3):].mean(axis=0)
        return np.linalg.norm(flat - final, axis=1) / np.linalg.norm(init[mid].ravel() - final)

    dist_gb = np.mean([rel_dist(rec.block_gamma[i], rec.gamma[i][0]) for i in range(L)]
                      + [rel_dist(rec.block_beta[i], rec.beta[i][0]) for i in range(L)], axis=0)
    dist_w = np.mean([rel_dist(unit_directions(rec.block_W[i]), unit_directions(rec.init_W[i]))
                      for i in range(L)], axis=0)
    k_blocks = rec.block_gamma[0].shape[0]
    out.update({
        "lr": lrs, "settle_gb": s_gb, "settle_gamma": s_gamma, "settle_beta": s_beta,
        "settle_wdir": s_wdir, "settle_wraw": s_wraw,
        "fluct": np.where(rec.diverged, np.nan, fl), "val_acc": np.where(rec.diverged, np.nan, rec.val_acc),
        "diverged": rec.diverged.astype(float),
        "progress": np.arange(1, k_blocks + 1) / k_blocks, "dist_gb_lr0p1": dist_gb, "dist_wdir_lr0p1": dist_w,
    })
    return out


# ----------------------------------------------------------------------------- 5. BN vs no norm: need

NEED_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
HALF_DECADE = 10 ** 0.5


@dataclass(frozen=True)
class LrChoice:
    """An lr grid trained as one stack, with the lr chosen on validation (edges extended)."""

    grid: Record          # the stack over the fixed grid
    lrs: tuple            # the fixed grid
    best_lr: float
    best_val: float
    best_test: float
    at_edge: bool         # the best lr is still at an edge of the (extended) grid


def _late_loss(record: Record) -> np.ndarray:
    """(A,) mean training loss over the last 5 % of steps (inf where not finite)."""
    late = record.loss[-max(record.loss.shape[0] // 20, 1):].mean(axis=0)
    return np.where(np.isfinite(late), late, np.inf)


def choose_lr(init_seed: int, data: Digits, idx: np.ndarray, depth: int, width: int, norm: bool,
              lrs: tuple, eval_every: int = 0, eval_arms=None, max_extend: int = 2) -> LrChoice:
    """Train the grid `lrs` as one stack; pick the lr with the best validation accuracy.

    Ties go to the lower late training loss; diverged runs are never picked. If the best lr is
    at an edge of the grid, one more lr half a decade beyond is trained (up to `max_extend`
    times), so the choice is not an artefact of where the grid stops.
    """
    grid = train_stack(init_net(init_seed, len(lrs), depth, width, norm), data, idx, np.array(lrs),
                       eval_every=eval_every, eval_arms=eval_arms)
    # one row per candidate lr: (lr, validation accuracy, late loss, test accuracy, diverged)
    rows = [list(r) for r in zip(lrs, grid.val_acc, _late_loss(grid), grid.test_acc, grid.diverged)]

    def best_index() -> int:
        return max(range(len(rows)), key=lambda i: (-1.0, -np.inf) if rows[i][4] else (rows[i][1], -rows[i][2]))

    for _ in range(max_extend):
        best = best_index()
        if 0 < best < len(rows) - 1:
            break
        new = rows[0][0] / HALF_DECADE if best == 0 else rows[-1][0] * HALF_DECADE
        extra = train_stack(init_net(init_seed, 1, depth, width, norm), data, idx, [new])
        row = [new, extra.val_acc[0], _late_loss(extra)[0], extra.test_acc[0], extra.diverged[0]]
        rows.insert(0 if best == 0 else len(rows), row)
    best = best_index()
    return LrChoice(grid, tuple(lrs), float(rows[best][0]), float(rows[best][1]), float(rows[best][3]),
                    best in (0, len(rows) - 1))


@experiment(
    "bn-need-shallow-deep",
    metrics={
        **{f"test_acc_{net}_{d}": f"{'BN' if net == 'bn' else 'no-norm'} MLP with {d} hidden layers: test accuracy "
           f"at its own best lr (chosen on validation)" for d in ("shallow", "deep") for net in ("bn", "plain")},
        **{f"steps_{net}_{d}": f"{'BN' if net == 'bn' else 'no-norm'} MLP, {d}: steps to the target validation "
           f"accuracy at the common lr (censored at the end of training + 1 evaluation)"
           for d in ("shallow", "deep") for net in ("bn", "plain")},
        **{f"best_lr_{net}_{d}": f"{'BN' if net == 'bn' else 'no-norm'} MLP, {d}: the lr chosen on validation"
           for d in ("shallow", "deep") for net in ("bn", "plain")},
        "n_at_edge": "how many of the four best lrs stayed at an edge of the extended grid",
    },
    series={
        "eval_step": "training step (x axis of the curves)",
        **{f"curve_{net}_{d}": f"validation accuracy during training at the common lr, "
           f"{'BN' if net == 'bn' else 'no-norm'}, {d}" for d in ("shallow", "deep") for net in ("bn", "plain")},
        "lr": "learning rate (x axis of the sweep)",
        **{f"val_{net}_{d}": f"final validation accuracy per lr (0 if diverged), "
           f"{'BN' if net == 'bn' else 'no-norm'}, {d}" for d in ("shallow", "deep") for net in ("bn", "plain")},
    },
)
def need_shallow_deep(rng: np.random.Generator, *, shallow: int = 2, deep: int = 8, width: int = 64,
                      lr_common: float = 0.1, target: float = 0.9, epochs: int = 20, batch_size: int = 32,
                      eval_every: int = 11) -> dict:
    """Is BN needed when batches are well shuffled and the learning rate is moderate?

    Arms (paired: one initial W per depth shared by BN and no-norm, one shuffled batch stream):
    MLPs with `shallow` and `deep` hidden layers of `width` units, with BN and without
    normalization, plain SGD at lr 0.01, 0.03, 0.1, 0.3, 1 (the grid is extended half a decade
    beyond an edge when the best lr sits there). Measured: test accuracy at each net's own best
    lr (chosen on the validation split), and the steps needed to reach `target` validation
    accuracy at the common moderate lr `lr_common` (validation checked every `eval_every` steps).
    Scale: digits, 20 epochs (660 steps), batch 32.
    """
    data = load()
    init_seed, order_seed, _ = _seeds(rng)
    n = len(data.y_train)
    steps = _steps(epochs, batch_size, n)
    idx = batch_stream(np.random.default_rng(order_seed), n, batch_size, "shuffled", data.y_train, steps)
    lrs = tuple(sorted(set(NEED_LRS) | {lr_common}))
    common = lrs.index(lr_common)
    out: dict = {"lr": np.array(lrs)}
    edges = 0
    for dname, depth in (("shallow", shallow), ("deep", deep)):
        for net in ("bn", "plain"):
            choice = choose_lr(init_seed + depth, data, idx, depth, width, net == "bn", lrs, eval_every, [common])
            rec = choice.grid
            curve = rec.val_acc_curve[:, 0]
            never = steps + eval_every
            out[f"test_acc_{net}_{dname}"] = choice.best_test
            out[f"best_lr_{net}_{dname}"] = choice.best_lr
            out[f"steps_{net}_{dname}"] = steps_to_target(curve[:, None], rec.eval_steps, target, never)[0]
            out[f"curve_{net}_{dname}"] = curve
            out[f"val_{net}_{dname}"] = np.where(rec.diverged, 0.0, rec.val_acc)
            out["eval_step"] = rec.eval_steps.astype(float)
            edges += choice.at_edge
    out["n_at_edge"] = float(edges)
    return out


# ----------------------------------------------------------------------------- 6. BN vs no norm: lr range

STABILITY_LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
TRAINS_ACC = 0.5   # "trains": finite loss throughout and final validation accuracy >= 0.5 (chance is 0.1)


def _max_trained_lr(rec: Record, lrs: tuple) -> float:
    """Largest lr of the grid at which the arm trains; half a decade below the grid if none does."""
    ok = ~rec.diverged & (rec.val_acc >= TRAINS_ACC)
    return float(max((lr for lr, good in zip(lrs, ok) if good), default=lrs[0] / HALF_DECADE))


@experiment(
    "bn-lr-stability",
    metrics={
        "max_lr_bn": "largest lr of the grid at which the BN net trains (finite, validation accuracy >= 0.5)",
        "max_lr_plain": "the same for the no-norm net",
        "best_lr_bn": "lr with the best validation accuracy, BN",
        "best_lr_plain": "lr with the best validation accuracy, no norm",
        "test_acc_bn_best": "BN: test accuracy at the lr chosen on validation",
        "test_acc_plain_best": "no norm: test accuracy at the lr chosen on validation",
        "test_acc_bn_high": "BN: test accuracy at the 'really high' lr (0 if diverged)",
        "steps_bn_high": "BN: steps to the target validation accuracy at the really high lr (censored)",
        "steps_bn_moderate": "BN: steps to the target validation accuracy at the moderate lr (censored)",
        "steps_plain_best": "no norm: steps to the target validation accuracy at its best lr (censored)",
        "n_diverged_bn": "BN: number of lrs at which the loss became non-finite",
        "n_diverged_plain": "no norm: number of lrs at which the loss became non-finite",
        "n_stuck_bn": "BN: number of lrs finite but below 0.5 validation accuracy",
        "n_stuck_plain": "no norm: number of lrs finite but below 0.5 validation accuracy",
        "dead_last_bn_high": "BN at the really high lr: fraction of the last hidden layer's units that output 0 "
                             "on every validation example (dead ReLUs)",
        "dead_last_bn_best": "BN at its best lr: the same fraction",
    },
    series={
        "lr": "learning rate (x axis)",
        "val_acc_bn": "final validation accuracy, BN (0 if diverged)",
        "val_acc_plain": "final validation accuracy, no norm (0 if diverged)",
        "diverged_bn": "1 if the BN net diverged (non-finite loss)",
        "diverged_plain": "1 if the no-norm net diverged",
        "stuck_bn": "1 if the BN net is finite but below 0.5 validation accuracy",
        "stuck_plain": "1 if the no-norm net is finite but below 0.5 validation accuracy",
        "eval_step": "training step (x axis of the curves)",
        "curve_bn_high": "validation accuracy during training, BN at the really high lr",
        "curve_bn_moderate": "validation accuracy during training, BN at the moderate lr",
        "curve_plain_best": "validation accuracy during training, no norm at its best lr",
    },
)
def lr_stability(rng: np.random.Generator, *, depth: int = 4, width: int = 64, lr_high: float = 10.0,
                 lr_moderate: float = 0.1, target: float = 0.9, epochs: int = 20, batch_size: int = 32,
                 eval_every: int = 11) -> dict:
    """The range of learning rates that train, with BN and without (cf. Bjorck et al. 2018).

    Arms (paired: same initial W, same shuffled batches): MLP with `depth` hidden layers of
    `width` units, with BN and without normalization, plain SGD at lr 0.01, 0.03, 0.1, 0.3, 1, 3,
    10, 30. Per lr: diverged (non-finite loss), stuck (finite, validation accuracy < 0.5) or
    trains; final validation/test accuracy; validation accuracy every `eval_every` steps (steps
    to `target`); the fraction of dead units in the BN net's last hidden layer (why it gets stuck).
    Scale: digits, 20 epochs (660 steps), batch 32.
    """
    data = load()
    init_seed, order_seed, _ = _seeds(rng)
    n = len(data.y_train)
    steps = _steps(epochs, batch_size, n)
    idx = batch_stream(np.random.default_rng(order_seed), n, batch_size, "shuffled", data.y_train, steps)
    lrs = tuple(sorted(set(STABILITY_LRS) | {lr_high, lr_moderate}))
    bn = train_stack(init_net(init_seed, len(lrs), depth, width, True), data, idx, np.array(lrs),
                     eval_every=eval_every)
    plain = train_stack(init_net(init_seed, len(lrs), depth, width, False), data, idx, np.array(lrs),
                        eval_every=eval_every)
    never = steps + eval_every
    hi, mod = lrs.index(lr_high), lrs.index(lr_moderate)
    best_bn, best_plain = best_arm(bn), best_arm(plain)
    steps_bn = steps_to_target(bn.val_acc_curve, bn.eval_steps, target, never)
    steps_plain = steps_to_target(plain.val_acc_curve, plain.eval_steps, target, never)
    stuck = lambda r: (~r.diverged & (r.val_acc < TRAINS_ACC)).astype(float)  # noqa: E731
    with np.errstate(all="ignore"):
        dead = np.where(bn.diverged, 1.0, dead_fraction(bn.net, data.X_val, depth - 1))
    return {
        "max_lr_bn": _max_trained_lr(bn, lrs), "max_lr_plain": _max_trained_lr(plain, lrs),
        "best_lr_bn": lrs[best_bn], "best_lr_plain": lrs[best_plain],
        "test_acc_bn_best": bn.test_acc[best_bn], "test_acc_plain_best": plain.test_acc[best_plain],
        "test_acc_bn_high": 0.0 if bn.diverged[hi] else bn.test_acc[hi],
        "steps_bn_high": steps_bn[hi], "steps_bn_moderate": steps_bn[mod],
        "steps_plain_best": steps_plain[best_plain],
        "n_diverged_bn": float(bn.diverged.sum()), "n_diverged_plain": float(plain.diverged.sum()),
        "n_stuck_bn": stuck(bn).sum(), "n_stuck_plain": stuck(plain).sum(),
        "dead_last_bn_high": dead[hi], "dead_last_bn_best": dead[best_bn],
        "lr": np.array(lrs),
        "val_acc_bn": np.where(bn.diverged, 0.0, bn.val_acc),
        "val_acc_plain": np.where(plain.diverged, 0.0, plain.val_acc),
        "diverged_bn": bn.diverged.astype(float), "diverged_plain": plain.diverged.astype(float),
        "stuck_bn": stuck(bn), "stuck_plain": stuck(plain),
        "eval_step": bn.eval_steps.astype(float),
        "curve_bn_high": np.where(bn.diverged[hi], np.nan, bn.val_acc_curve[:, hi]),
        "curve_bn_moderate": bn.val_acc_curve[:, mod],
        "curve_plain_best": plain.val_acc_curve[:, best_plain],
    }


# ----------------------------------------------------------------------------- 7. does training cancel BN?

CANCEL_LRS = (0.03, 0.1, 0.3)
IDENTITY_SCALE = np.log(1.2)   # |log(gamma / sigma)| below this ...
IDENTITY_SHIFT = 0.2           # ... and |beta - mu| / sigma below this: the unit undoes its normalization


def population_moments(net: Net, X: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mean and std, per arm and unit, of every BN layer's input over all of X (one batch): L x (A, D)."""
    _, (caches, _), _ = forward_train(net, X)
    return [c[3] for c in caches], [np.sqrt(c[4]) for c in caches]


def forward_population(net: Net, X_stats: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Logits (A, N, 10) of X with each BN layer normalizing by the population statistics of X_stats."""
    means, stds = population_moments(net, X_stats)
    h = X
    for i in range(net.depth):
        z = h @ net.W[i]
        scale = net.gamma[i] / np.sqrt(stds[i] ** 2 + EPS)
        h = np.maximum((z - means[i][:, None, :]) * scale[:, None, :] + net.beta[i][:, None, :], 0)
    return h @ net.W[-1] + net.b[-1][:, None, :]


def forward_bn_removed(net: Net, X: np.ndarray) -> np.ndarray:
    """Logits of the same weights with every BN layer replaced by the identity (no bias: BN layers have none)."""
    h = X
    for i in range(net.depth):
        h = np.maximum(h @ net.W[i], 0)
    return h @ net.W[-1] + net.b[-1][:, None, :]


def identity_mismatch(net: Net, X: np.ndarray):
    """Per unit, how far each BN layer is from undoing its normalization (gamma = sigma, beta = mu).

    Returns (scale, shift), each (A, L * D): |log(gamma / sigma)| (inf where gamma <= 0) and
    |beta - mu| / sigma, with mu, sigma the layer input's mean and std over X.
    """
    means, stds = population_moments(net, X)
    scale, shift = [], []
    for i in range(net.depth):
        g = net.gamma[i].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale.append(np.where(g > 0, np.abs(np.log(g / stds[i])), np.inf))
        shift.append(np.abs(net.beta[i] - means[i]) / stds[i])
    return np.concatenate(scale, axis=1), np.concatenate(shift, axis=1)


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@experiment(
    "bn-cancel-check",
    metrics={
        **{f"frac_identity_{lr_name(lr)}": f"lr {lr:g}: fraction of BN units whose trained gamma, beta undo the "
           f"normalization (|log(gamma/sigma)| < log 1.2 and |beta - mu|/sigma < 0.2)" for lr in CANCEL_LRS},
        "frac_identity_init": "the same fraction at initialization (gamma = 1, beta = 0)",
        **{f"mismatch_{lr_name(lr)}": f"lr {lr:g}: median over units of |log(gamma/sigma)| + |beta - mu|/sigma "
           f"after training (0 = the layer is the identity)" for lr in CANCEL_LRS},
        "mismatch_init": "the same median at initialization",
        **{f"acc_bn_{lr_name(lr)}": f"lr {lr:g}: test accuracy of the trained BN net" for lr in CANCEL_LRS},
        **{f"acc_removed_{lr_name(lr)}": f"lr {lr:g}: test accuracy of the same weights with BN replaced by the "
           f"identity" for lr in CANCEL_LRS},
        **{f"agreement_{lr_name(lr)}": f"lr {lr:g}: fraction of test predictions the two agree on"
           for lr in CANCEL_LRS},
    },
    series={
        "quantile": "quantile over units (x axis)",
        "log_gamma_over_sigma_init": "quantiles over units of log(gamma / sigma) at initialization",
        "log_gamma_over_sigma_end": "quantiles of log(gamma / sigma) after training at lr 0.1",
        "shift_init": "quantiles over units of (beta - mu) / sigma at initialization",
        "shift_end": "quantiles of (beta - mu) / sigma after training at lr 0.1",
        "lr": "learning rate (x axis)",
        "acc_bn": "test accuracy of the trained BN net",
        "acc_removed": "test accuracy with BN replaced by the identity",
        "frac_identity": "fraction of units that undo their normalization",
    },
)
def cancel_check(rng: np.random.Generator, *, width: int = 64, epochs: int = 20, batch_size: int = 32) -> dict:
    """Does training set gamma, beta so that a BN layer undoes its own normalization?

    A BN layer computes gamma * (z - mu) / sigma + beta; it is the identity exactly when
    gamma = sigma and beta = mu (Ioffe & Szegedy 2015, section 3). Arms (one stack, paired: same
    initial W and batches): BN MLP 64-width-width-10, SGD at lr 0.03, 0.1, 0.3. After training
    (and at initialization) every unit's gamma, beta are compared with the mean mu and std sigma
    of the layer's input over the whole training set; and the trained net is compared with the
    same weights with every BN layer replaced by the identity (test accuracy, agreement).
    Scale: digits, 20 epochs (660 steps), batch 32; 128 BN units per net.
    """
    data = load()
    init_seed, order_seed, _ = _seeds(rng)
    n = len(data.y_train)
    steps = _steps(epochs, batch_size, n)
    idx = batch_stream(np.random.default_rng(order_seed), n, batch_size, "shuffled", data.y_train, steps)
    net = init_net(init_seed, len(CANCEL_LRS), 2, width, True)
    scale0, shift0 = identity_mismatch(net, data.X_train)
    train_stack(net, data, idx, np.array(CANCEL_LRS))
    scale1, shift1 = identity_mismatch(net, data.X_train)
    with np.errstate(all="ignore"):
        logits_bn = forward_population(net, data.X_train, data.X_test)
        logits_removed = forward_bn_removed(net, data.X_test)
    acc_bn = accuracy(logits_bn, data.y_test)
    acc_removed = accuracy(logits_removed, data.y_test)
    agree = (logits_bn.argmax(axis=2) == logits_removed.argmax(axis=2)).mean(axis=1)
    identity = lambda sc, sh: ((sc < IDENTITY_SCALE) & (sh < IDENTITY_SHIFT)).mean(axis=1)  # noqa: E731
    frac0, frac1 = identity(scale0, shift0), identity(scale1, shift1)
    mis0, mis1 = np.median(scale0 + shift0, axis=1), np.median(scale1 + shift1, axis=1)
    mid = CANCEL_LRS.index(0.1)
    means0, stds0 = population_moments(init_net(init_seed, 1, 2, width, True), data.X_train)
    means1, stds1 = population_moments(net, data.X_train)
    g1 = np.concatenate([g[mid] for g in net.gamma])
    b1 = np.concatenate([b[mid] for b in net.beta])
    s1, m1 = np.concatenate([s[mid] for s in stds1]), np.concatenate([m[mid] for m in means1])
    s0, m0 = np.concatenate([s[0] for s in stds0]), np.concatenate([m[0] for m in means0])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio_end = np.log(np.abs(g1) / s1)
    out: dict = {"frac_identity_init": frac0[0], "mismatch_init": mis0[0]}
    for a, lr in enumerate(CANCEL_LRS):
        tag = lr_name(lr)
        out[f"frac_identity_{tag}"] = frac1[a]
        out[f"mismatch_{tag}"] = mis1[a]
        out[f"acc_bn_{tag}"] = acc_bn[a]
        out[f"acc_removed_{tag}"] = acc_removed[a]
        out[f"agreement_{tag}"] = agree[a]
    q = np.array(QUANTILES)
    out.update({
        "quantile": q,
        "log_gamma_over_sigma_init": np.quantile(np.log(1.0 / s0), q),
        "log_gamma_over_sigma_end": np.quantile(log_ratio_end, q),
        "shift_init": np.quantile((0.0 - m0) / s0, q),
        "shift_end": np.quantile((b1 - m1) / s1, q),
        "lr": np.array(CANCEL_LRS), "acc_bn": acc_bn, "acc_removed": acc_removed, "frac_identity": frac1,
    })
    return out
