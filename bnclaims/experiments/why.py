"""Why batch norm works: covariate shift, decoupling, speed, jitter, reparametrization.

Five experiments behind the claims that explain *why* batch norm helps:

* ``layer-input-drift``      -- does BN keep each layer's input distribution steadier over training,
                                and does it reduce internal covariate shift in the gradient sense of
                                Santurkar et al. 2018 (arXiv:1805.11604, section 2.2)?
* ``layer-coupling``         -- how much do a later layer's input and gradient move when an earlier
                                layer's weights move; is a later layer invariant to rescaling them?
* ``training-speed``         -- steps to a target accuracy on digits, BN vs no normalization, each at
                                its own validation-chosen learning rate and at a common one.
* ``ghost-batch-jitter``     -- test accuracy with ghost-batch statistics (noisy) vs statistics of the
                                whole training set with gradients through them (noise-free).
* ``affine-reparametrization`` -- a plain MLP and the same function written as a BN network
                                (gamma, beta), trained by the same SGD.

All of them use one small batched MLP, written here (``bnclaims.model`` trains one network at a
time; these experiments train several *arms* -- learning rates, normalization variants -- in
lockstep, with the arms on a leading axis of every array):

    x: (N, D) shared by the arms, or (A, N, D);  W[l]: (A, D_l, D_{l+1});  per-unit vectors (A, 1, D).

A hidden layer is  z = h @ W (+ b) ;  [ z~ = gamma * normalize(z) + beta ] ;  h' = relu(z~ or z).
Normalized networks carry no bias before the normalization (the mean subtraction removes it).

How the normalization gets its statistics (``Stats``):

* ``groups``: batch norm over consecutive groups of ``group`` rows (``group = N`` is plain batch
  norm, smaller groups are ghost batch norm, Hoffer et al. 2017);
* ``rows``: the statistics of the first ``rows`` rows normalize every row, gradients flow through
  them -- with the statistics rows = a whole (small) training set and the loss on the mini-batch
  rows only, this is batch norm with noise-free statistics and still a correct optimiser;
* ``fixed``: given (mean, var) per layer, constants (inference mode; no gradient through them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bnclaims import data
from bnclaims.experiments import experiment

EPS = 1e-5
DTYPE = np.float32


# ============================================================================ batched MLP core

@dataclass(frozen=True)
class Stats:
    """Where batch norm takes its statistics from (see the module docstring)."""

    kind: Literal["groups", "rows", "fixed"] = "groups"
    group: int | None = None            # rows per group for "groups" (None: the whole batch)
    rows: int | None = None             # the first `rows` rows give the statistics for "rows"
    fixed: tuple | None = None          # ((mean (A,1,D), var (A,1,D)), ...) per hidden layer for "fixed"
    eps: float = EPS                    # added to the variance (0 makes BN exactly scale-invariant)


BATCH = Stats()


def init_params(rng: np.random.Generator, sizes: list[int], arms: int, norm: bool, dtype=DTYPE) -> dict:
    """He-normal weights, zero biases, gamma = 1, beta = 0, the same for every arm.

    sizes = [D_in, H_1, ..., H_k, C]. Returns {"W": [(A, D_l, D_{l+1})], "b": [(A, 1, D_{l+1}) or None],
    "gamma": [(A, 1, H_l)] or None, "beta": ...}. Normalized networks have no hidden-layer bias.
    The draw depends only on `sizes`, so a BN and a plain network from the same rng start equal.
    """
    weights = [rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    stack = lambda a: np.repeat(np.asarray(a, dtype=dtype)[None], arms, axis=0)  # noqa: E731
    hidden = sizes[1:-1]
    return {
        "W": [stack(w) for w in weights],
        "b": [None if norm else stack(np.zeros((1, d))) for d in hidden] + [stack(np.zeros((1, sizes[-1])))],
        "gamma": [stack(np.ones((1, d))) for d in hidden] if norm else None,
        "beta": [stack(np.zeros((1, d))) for d in hidden] if norm else None,
    }


def copy_params(params: dict) -> dict:
    return {k: None if v is None else [None if a is None else a.copy() for a in v] for k, v in params.items()}


def take_arms(params: dict, index) -> dict:
    """The arms `index` (an int array or slice) of every parameter, as new arrays."""
    return {k: None if v is None else [None if a is None else a[index].copy() for a in v] for k, v in params.items()}


def _norm_forward(z: np.ndarray, gamma, beta, stats: Stats, layer: int):
    """z: (A, N, D) -> z~ = gamma * (z - mean) / sqrt(var + eps) + beta, and a cache."""
    if stats.kind == "fixed":
        mean, var = stats.fixed[layer]
        inv_std = 1.0 / np.sqrt(var + stats.eps)
        xhat = (z - mean) * inv_std
        return xhat * gamma + beta, ("fixed", xhat, inv_std)
    if stats.kind == "rows":
        m = stats.rows
        weights = np.full(m, 1.0 / m, dtype=z.dtype)
        mean = (weights @ z[:, :m])[:, None, :]                       # (A, 1, D)
        xhat = z - mean
        var = (weights @ np.square(xhat[:, :m]))[:, None, :]
        inv_std = 1.0 / np.sqrt(var + stats.eps)
        xhat *= inv_std
        return xhat * gamma + beta, ("rows", xhat, inv_std, m)
    a, n, d = z.shape
    g = n if stats.group is None else stats.group
    if g == n:                                                        # plain BN: one (N,) @ (A, N, D) per moment
        weights = np.full(n, 1.0 / n, dtype=z.dtype)
        xc = z - (weights @ z)[:, None, :]
        inv_std = 1.0 / np.sqrt((weights @ np.square(xc))[:, None, :] + stats.eps)
        xhat = xc * inv_std
        return xhat * gamma + beta, ("groups", xhat[:, None], inv_std[:, None])
    zg = z.reshape(a, n // g, g, d)                                   # ghost BN: groups of g consecutive rows
    xc = zg - zg.mean(axis=2, keepdims=True)
    inv_std = 1.0 / np.sqrt(np.square(xc).mean(axis=2, keepdims=True) + stats.eps)
    xhat = xc * inv_std
    return xhat.reshape(a, n, d) * gamma + beta, ("groups", xhat, inv_std)


def _norm_backward(dout: np.ndarray, gamma, cache):
    """dout: (A, N, D) -> dz, dgamma (A, 1, D), dbeta (A, 1, D)."""
    kind, xhat, inv_std = cache[:3]
    a, n, d = dout.shape
    flat = xhat.reshape(a, n, d)
    ones = np.ones(n, dtype=dout.dtype)
    dgamma = (ones @ (dout * flat))[:, None, :]
    dbeta = (ones @ dout)[:, None, :]
    dxhat = dout * gamma
    if kind == "fixed":
        return dxhat * inv_std, dgamma, dbeta
    if kind == "rows":
        m = cache[3]
        # mean and var come from rows :m only; every row's x_hat depends on them
        dmean = gamma * dbeta                                         # sum_r dxhat_r
        dvar = gamma * dgamma                                         # sum_r dxhat_r xhat_r
        dz = dxhat * inv_std
        dz[:, :m] -= (dmean + xhat[:, :m] * dvar) * (inv_std / m)
        return dz, dgamma, dbeta
    dxg = dxhat.reshape(xhat.shape)                                   # (A, N/g, g, D)
    if xhat.shape[1] == 1:                                            # one group: reuse the column sums above
        mean_d = (gamma * dbeta / n)[:, None]
        proj = (gamma * dgamma / n)[:, None]
    else:
        mean_d = dxg.mean(axis=2, keepdims=True)
        proj = (dxg * xhat).mean(axis=2, keepdims=True)
    dz = (dxg - mean_d - xhat * proj) * inv_std
    return dz.reshape(a, n, d), dgamma, dbeta


def forward(params: dict, x: np.ndarray, stats: Stats = BATCH, keep: bool = True):
    """Logits (A, N, C) and a cache for `backward`.

    x: (N, D) or (A, N, D). The cache also holds every hidden pre-activation z~ (after the
    normalization when there is one) under "z" and every layer input under "h".
    """
    norm = params["gamma"] is not None
    h = x
    cache = {"h": [], "z": [], "norm": []}
    layers = len(params["W"])
    for layer in range(layers):
        W, b = params["W"][layer], params["b"][layer]
        cache["h"].append(h)
        z = h @ W                                                     # (A, N, D_out)
        if b is not None:
            z += b
        if layer == layers - 1:
            return z, cache
        if norm:
            z, norm_cache = _norm_forward(z, params["gamma"][layer], params["beta"][layer], stats, layer)
            cache["norm"].append(norm_cache)
        cache["z"].append(z)
        h = np.maximum(z, 0)
    raise AssertionError("unreachable")


def backward(params: dict, dlogits: np.ndarray, cache: dict) -> dict:
    """Gradients of the loss whose d/dlogits is `dlogits` (A, N, C); same structure as params."""
    norm = params["gamma"] is not None
    layers = len(params["W"])
    grads = {"W": [None] * layers, "b": [None] * layers,
             "gamma": [None] * (layers - 1) if norm else None, "beta": [None] * (layers - 1) if norm else None}
    dz = dlogits
    for layer in range(layers - 1, -1, -1):
        h = cache["h"][layer]
        grads["W"][layer] = np.swapaxes(h, -1, -2) @ dz               # (D, N) @ (A, N, M) broadcasts
        if params["b"][layer] is not None:
            grads["b"][layer] = (np.ones(dz.shape[1], dtype=dz.dtype) @ dz)[:, None, :]
        if layer == 0:
            break
        dh = dz @ np.swapaxes(params["W"][layer], -1, -2)
        dz = dh * (cache["z"][layer - 1] > 0)
        if norm:
            dz, grads["gamma"][layer - 1], grads["beta"][layer - 1] = _norm_backward(
                dz, params["gamma"][layer - 1], cache["norm"][layer - 1])
    return grads


def cross_entropy(logits: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Softmax cross-entropy per arm. logits: (A, N, C); y: (N,) ints; weights: (N,) summing to 1
    (default 1/N): rows with weight 0 are forwarded but carry no loss.
    Returns loss (A,) float64 and dlogits (A, N, C)."""
    a, n, c = logits.shape
    w = np.full(n, 1.0 / n, dtype=logits.dtype) if weights is None else weights.astype(logits.dtype)
    shifted = logits - logits.max(axis=2, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=2, keepdims=True)
    rows = np.arange(n)
    log_p = shifted[:, rows, y] - np.log(total[:, :, 0])              # (A, N)
    loss = -(log_p.astype(np.float64) @ w.astype(np.float64))
    dlogits = exp / total
    dlogits[:, rows, y] -= 1.0
    dlogits *= w[None, :, None]
    return loss, dlogits


def sgd_step(params: dict, grads: dict, lr: np.ndarray) -> None:
    """In place: p -= lr * grad, with lr (A,) one learning rate per arm."""
    lr = np.asarray(lr, dtype=params["W"][0].dtype)[:, None, None]
    for key in ("W", "b", "gamma", "beta"):
        if params[key] is None:
            continue
        for p, g in zip(params[key], grads[key]):
            if p is not None:
                p -= lr * g


def population_stats(params: dict, x: np.ndarray) -> tuple:
    """Per hidden layer (mean, biased var) over all rows of x, computed layer by layer in batch
    mode: the "fixed" statistics that make inference match training on a large batch."""
    h = x
    out = []
    for layer in range(len(params["W"]) - 1):
        z = h @ params["W"][layer]
        mean = z.mean(axis=1, keepdims=True) if z.ndim == 3 else z.mean(axis=0)[None, None]
        var = np.square(z - mean).mean(axis=1, keepdims=True)
        out.append((mean, var))
        inv_std = 1.0 / np.sqrt(var + EPS)
        h = np.maximum((z - mean) * inv_std * params["gamma"][layer] + params["beta"][layer], 0)
    return tuple(out)


def predict(params: dict, x: np.ndarray, stats_x: np.ndarray | None = None) -> np.ndarray:
    """Logits (A, N, C) in inference mode: BN normalizes with the population statistics of the
    rows `stats_x` (layer by layer, as `population_stats`; one forward pass over both sets)."""
    if params["gamma"] is None:
        return forward(params, x)[0]
    m = len(stats_x)
    return forward(params, np.concatenate([stats_x, x]), Stats("rows", rows=m))[0][:, m:]


def accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A,) fraction of rows whose arg-max logit is the label. A row with a non-finite logit counts
    as wrong, so a diverged network scores 0 -- unlike a stuck one, which scores about chance."""
    with np.errstate(invalid="ignore"):
        right = (logits.argmax(axis=2) == y) & np.isfinite(logits).all(axis=2)
    return right.mean(axis=1)


# ============================================================================ shared helpers

def digits(validation_fraction: float = 0.2) -> data.Split:
    """The shared digits split (test 25 %, validation 20 % of the rest), standardized, float32."""
    return data.digits_split(0.25, validation_fraction, standardize=True, dtype=DTYPE)


def paired_init(rng: np.random.Generator, sizes: list[int], arms: int) -> tuple[dict, dict]:
    """(plain, bn) parameters with the same weights: same seed => same initialisation."""
    state = rng.bit_generator.state
    plain = init_params(rng, sizes, arms, norm=False)
    rng.bit_generator.state = state
    bn = init_params(rng, sizes, arms, norm=True)
    return plain, bn


def batch_plan(rng: np.random.Generator, n: int, batch_size: int, steps: int) -> np.ndarray:
    """(steps, batch_size) example indices: shuffled epochs, one row per SGD step."""
    stream = data.epochs(rng, n, batch_size)
    return np.stack([next(stream) for _ in range(steps)])


def train_step(params: dict, x: np.ndarray, y: np.ndarray, lr: np.ndarray, stats: Stats = BATCH,
               weights: np.ndarray | None = None) -> np.ndarray:
    """One SGD step of every arm on the rows x (loss weights `weights`, default uniform); returns loss (A,)."""
    logits, cache = forward(params, x, stats)
    loss, dlogits = cross_entropy(logits, y, weights)
    sgd_step(params, backward(params, dlogits, cache), lr)
    return loss


def steps_to(curve: np.ndarray, steps: np.ndarray, target: float) -> np.ndarray:
    """First step at which each row of `curve` (A, K) reaches `target`; NaN where it never does."""
    hit = curve >= target
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), steps[first], np.nan)


def eval_accuracy(params: dict, x: np.ndarray, y: np.ndarray, stats_x: np.ndarray) -> np.ndarray:
    """(A,) accuracy in inference mode (BN: population statistics of `stats_x`); diverged nets score 0."""
    with np.errstate(all="ignore"):
        return accuracy(predict(params, x, stats_x), y)


# ============================================================================ training speed

@experiment(
    "training-speed",
    metrics={
        "steps_plain_best": "SGD steps for the plain MLP to reach the target test accuracy at its own best LR",
        "steps_bn_best": "SGD steps for the BN MLP to reach the target test accuracy at its own best LR",
        "steps_bn_common": "SGD steps for the BN MLP at the plain MLP's best LR (the common LR)",
        "time_plain_best": "steps_plain_best in units of one plain step (wall-clock model)",
        "time_bn_best": "steps_bn_best x bn_step_cost: wall-clock in units of one plain step",
        "time_bn_common": "steps_bn_common x bn_step_cost",
        "lr_plain_best": "learning rate chosen for the plain MLP on validation (tuning run)",
        "lr_bn_best": "learning rate chosen for the BN MLP on validation (tuning run)",
        "best_at_edge": "1 when a chosen learning rate is the smallest or largest of the grid",
        "reached_all": "1 when all three evaluation runs reached the target within eval_steps",
        "diverged_plain": "grid learning rates whose plain tuning run went NaN/inf",
        "diverged_bn": "grid learning rates whose BN tuning run went NaN/inf",
        "stuck_plain": "grid learning rates whose plain tuning run ended finite but below 20 % val accuracy",
        "stuck_bn": "grid learning rates whose BN tuning run ended finite but below 20 % val accuracy",
        "final_acc_plain_best": "test accuracy of the plain MLP after eval_steps (own best LR)",
        "final_acc_bn_best": "test accuracy of the BN MLP after eval_steps (own best LR)",
    },
    series={
        "lr": "the learning-rate grid",
        "val_steps_plain": "tuning: steps to the target validation accuracy per LR, plain (NaN: never)",
        "val_steps_bn": "tuning: steps to the target validation accuracy per LR, BN (NaN: never)",
        "step": "evaluation checkpoints (SGD steps)",
        "acc_plain_best": "test accuracy over training, plain at its best LR",
        "acc_bn_best": "test accuracy over training, BN at its best LR",
        "acc_bn_common": "test accuracy over training, BN at the plain MLP's best LR",
    },
)
def training_speed(rng: np.random.Generator, *, hidden: list[int] = [64, 64, 64], batch_size: int = 64,
                   lrs: list[float] = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4], target: float = 0.95,
                   tune_steps: int = 150, eval_steps: int = 150, tune_check_every: int = 10,
                   check_every: int = 2, bn_step_cost: float = 1.7) -> dict:
    """Steps (and a wall-clock model) to a target accuracy on digits: BN MLP vs plain MLP.

    Network 64-[hidden]-10, ReLU, SGD without momentum, batch `batch_size`, float32; BN before
    every ReLU. Tuning (its own init and batch order): every LR of `lrs` for both networks for
    `tune_steps` steps; the best LR of each is the one that first reaches `target` validation
    accuracy, checked every `tune_check_every` steps (ties: higher validation accuracy then). Evaluation (a fresh init and batch order,
    the same for both networks): plain at its best LR, BN at its best LR and at the plain
    network's best LR, `eval_steps` steps; steps to `target` test accuracy, checked every
    `check_every` steps (censored at eval_steps when never reached). BN is evaluated with the
    population statistics of a fixed 256-example training subset ("precise BN").
    Wall-clock: steps x the measured cost of one step relative to a plain step (`bn_step_cost`).
    """
    split = digits()
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, 10]
    tune_rng, eval_rng = rng.spawn(2)
    lr_grid = np.asarray(lrs, dtype=np.float64)
    check_steps = np.arange(0, tune_steps + 1, tune_check_every)

    def run(params, lr, plan, x_eval, y_eval, steps, check_every):
        stats_rows = X[plan[0, :0]] if params["gamma"] is None else X[stats_index]
        curve = np.zeros((len(lr), steps // check_every + 1))
        losses = np.zeros(len(lr))
        with np.errstate(all="ignore"):
            for step in range(steps + 1):
                if step % check_every == 0:
                    curve[:, step // check_every] = eval_accuracy(params, x_eval, y_eval, stats_rows)
                if step == steps:
                    break
                idx = plan[step]
                losses = train_step(params, X[idx], y[idx], lr)
        finite = np.all([np.isfinite(w).all(axis=(1, 2)) for w in params["W"]], axis=0) & np.isfinite(losses)
        return curve, finite

    # --- tuning on the validation split
    init_rng, order_rng, stats_rng = tune_rng.spawn(3)
    stats_index = np.sort(stats_rng.choice(len(y), 256, replace=False))
    plain, bn = paired_init(init_rng, sizes, len(lr_grid))
    plan = batch_plan(order_rng, len(y), batch_size, tune_steps)
    chosen, val_steps, diverged, stuck = {}, {}, {}, {}
    for name, params in (("plain", plain), ("bn", bn)):
        curve, finite = run(params, lr_grid, plan, split.X_val, split.y_val, tune_steps, tune_check_every)
        reach = steps_to(curve, check_steps, target)
        val_steps[name] = reach
        diverged[name] = int((~finite).sum())
        stuck[name] = int((finite & (curve[:, -1] < 0.2)).sum())
        key = np.where(np.isnan(reach), np.inf, reach)
        if np.isfinite(key).any():
            # first to the target; among ties the higher validation accuracy at that moment
            at = (np.nan_to_num(reach, nan=0) // tune_check_every).astype(int)
            candidates = np.flatnonzero(key == key.min())
            best = candidates[np.argmax(curve[candidates, at[candidates]])]
        else:
            best = int(np.argmax(curve.max(axis=1)))
        chosen[name] = int(best)

    # --- evaluation on the test split: fresh init and batch order, shared by both networks
    init_rng, order_rng, stats_rng = eval_rng.spawn(3)
    stats_index = np.sort(stats_rng.choice(len(y), 256, replace=False))
    lr_p, lr_b = lr_grid[chosen["plain"]], lr_grid[chosen["bn"]]
    plain, bn = paired_init(init_rng, sizes, 1)
    bn = take_arms(bn, np.array([0, 0]))
    plan = batch_plan(order_rng, len(y), batch_size, eval_steps)
    eval_checks = np.arange(0, eval_steps + 1, check_every)
    curve_p, _ = run(plain, np.array([lr_p]), plan, split.X_test, split.y_test, eval_steps, check_every)
    curve_b, _ = run(bn, np.array([lr_b, lr_p]), plan, split.X_test, split.y_test, eval_steps, check_every)
    reach_p = steps_to(curve_p, eval_checks, target)
    reach_b = steps_to(curve_b, eval_checks, target)
    reached_all = float(np.isfinite(reach_p).all() and np.isfinite(reach_b).all())
    censor = lambda s: float(eval_steps if np.isnan(s) else max(s, check_every))  # noqa: E731
    steps_p, steps_b, steps_bc = censor(reach_p[0]), censor(reach_b[0]), censor(reach_b[1])
    edge = {0, len(lr_grid) - 1}
    return {
        "steps_plain_best": steps_p,
        "steps_bn_best": steps_b,
        "steps_bn_common": steps_bc,
        "time_plain_best": steps_p,
        "time_bn_best": steps_b * bn_step_cost,
        "time_bn_common": steps_bc * bn_step_cost,
        "lr_plain_best": float(lr_p),
        "lr_bn_best": float(lr_b),
        "best_at_edge": float(chosen["plain"] in edge or chosen["bn"] in edge),
        "reached_all": reached_all,
        "diverged_plain": float(diverged["plain"]),
        "diverged_bn": float(diverged["bn"]),
        "stuck_plain": float(stuck["plain"]),
        "stuck_bn": float(stuck["bn"]),
        "final_acc_plain_best": float(curve_p[0, -1]),
        "final_acc_bn_best": float(curve_b[0, -1]),
        "lr": lr_grid,
        "val_steps_plain": val_steps["plain"],
        "val_steps_bn": val_steps["bn"],
        "step": eval_checks.astype(float),
        "acc_plain_best": curve_p[0],
        "acc_bn_best": curve_b[0],
        "acc_bn_common": curve_b[1],
    }


# ============================================================================ layer-input drift and ICS

def _update_below(params: dict, grads: dict, lr: np.ndarray, layer: int) -> dict:
    """A copy of params in which the layers below `layer` (0-based) took their SGD step."""
    moved = copy_params(params)
    lr = np.asarray(lr, dtype=params["W"][0].dtype)[:, None, None]
    for j in range(layer):
        moved["W"][j] -= lr * grads["W"][j]
        if moved["b"][j] is not None:
            moved["b"][j] -= lr * grads["b"][j]
        if moved["gamma"] is not None:
            moved["gamma"][j] -= lr * grads["gamma"][j]
            moved["beta"][j] -= lr * grads["beta"][j]
    return moved


def _grads(params: dict, x: np.ndarray, y: np.ndarray, stats: Stats = BATCH) -> dict:
    logits, cache = forward(params, x, stats)
    return backward(params, cross_entropy(logits, y)[1], cache)


def gradient_ics(params: dict, grads: dict, x: np.ndarray, y: np.ndarray, lr: np.ndarray):
    """Internal covariate shift of Santurkar et al. 2018 (arXiv:1805.11604, Definition 2.1).

    For every layer i >= 2: G = grad of layer i's weights at the current parameters on the
    batch (x, y); G' = the same gradient after every layer below i took its SGD step (lr) on
    that batch, layer i and above unchanged. Returns (relative l2 ||G - G'|| / ||G||,
    cosine(G, G')), each (A, L - 1): one column per layer 2..L."""
    rel, cos = [], []
    for layer in range(1, len(params["W"])):
        g = grads["W"][layer]
        g_moved = _grads(_update_below(params, grads, lr, layer), x, y)["W"][layer]
        norm, norm_moved = np.linalg.norm(g, axis=(1, 2)), np.linalg.norm(g_moved, axis=(1, 2))
        rel.append(np.linalg.norm(g - g_moved, axis=(1, 2)) / norm)
        cos.append(np.einsum("aij,aij->a", g, g_moved) / (norm * norm_moved))
    return np.stack(rel, axis=1), np.stack(cos, axis=1)


def distribution_drift(before: np.ndarray, after: np.ndarray):
    """Drift of every unit's distribution over a fixed probe set between two checkpoints.

    before, after: (A, P, D) values of D units on P probe examples. Scale-free, per unit:
    moment drift = |mean change| / std_before + |log std change|;
    distance     = Wasserstein-1 distance between the two empirical distributions / std_before.
    Returns both averaged over units: (A,), (A,)."""
    mean0, mean1 = before.mean(axis=1), after.mean(axis=1)
    std0, std1 = before.std(axis=1) + 1e-12, after.std(axis=1) + 1e-12
    moments = np.abs(mean1 - mean0) / std0 + np.abs(np.log(std1 / std0))
    w1 = np.abs(np.sort(after, axis=1) - np.sort(before, axis=1)).mean(axis=1) / std0
    return moments.mean(axis=1), w1.mean(axis=1)


@experiment(
    "layer-input-drift",
    metrics={
        **{f"{what}_{net}_{speed}": text.format(net=net.upper() if net == "bn" else net, lr=speed)
           for what, text in (
               ("moment_drift", "{net} MLP at the {lr} LR: scale-free change of each hidden unit's mean and std "
                                "on the probe set per check interval, averaged"),
               ("w1_drift", "{net} MLP at the {lr} LR: Wasserstein-1 distance between consecutive probe "
                            "distributions of each hidden unit / its std, averaged"),
               ("ics_l2", "{net} MLP at the {lr} LR: Santurkar ICS ||G - G'|| / ||G||, averaged over layers "
                          "2..L and checks"),
               ("ics_cos", "{net} MLP at the {lr} LR: cosine(G, G') of Santurkar's ICS, averaged"),
               ("val_acc", "{net} MLP at the {lr} LR: validation accuracy at the end"),
           )
           for net in ("bn", "plain") for speed in ("slow", "fast")},
    },
    series={
        "step": "end of each check interval (SGD steps)",
        "ics_step": "the SGD step at which each ICS measurement is taken",
        **{f"{what}_curve_{net}_{speed}": f"{metric} per check, {net}, {speed} LR"
           for what, metric in (("drift", "moment_drift"), ("cos", "ics_cos"))
           for net in ("bn", "plain") for speed in ("slow", "fast")},
    },
)
def layer_input_drift(rng: np.random.Generator, *, hidden: list[int] = [64, 64, 64], batch_size: int = 64,
                      lr_slow: float = 0.1, lr_fast: float = 0.4, steps: int = 300, check_every: int = 10) -> dict:
    """Does BN keep the distribution of each layer's input steadier over training, and does it reduce
    internal covariate shift (ICS) in the sense of Santurkar et al. 2018?

    Network 64-[hidden]-10, ReLU, plain vs BN before every ReLU (same initial weights, same
    batches), SGD at two common learning rates (`lr_slow`, `lr_fast`) for `steps` steps on digits.
    Every `check_every` steps:
    * the hidden pre-activations (the input of each ReLU: gamma * x_hat + beta with BN) on a fixed
      probe set (the 269 validation images; BN in training mode over the probe) -> drift of each
      unit's distribution since the last check (`distribution_drift`);
    * Santurkar's gradient ICS on the current batch (`gradient_ics`).
    """
    split = digits()
    X, y = split.X_train, split.y_train
    probe = split.X_val
    sizes = [X.shape[1], *hidden, 10]
    init_rng, order_rng = rng.spawn(2)
    lr = np.array([lr_slow, lr_fast])
    nets = dict(zip(("plain", "bn"), paired_init(init_rng, sizes, len(lr))))
    plan = batch_plan(order_rng, len(y), batch_size, steps)
    checks = steps // check_every
    moment = {k: np.zeros((len(lr), checks)) for k in nets}
    w1 = {k: np.zeros((len(lr), checks)) for k in nets}
    ics_l2 = {k: [] for k in nets}
    ics_cos = {k: [] for k in nets}
    previous = {}
    with np.errstate(all="ignore"):
        for step in range(steps + 1):
            for name, params in nets.items():
                if step % check_every == 0:
                    z = np.concatenate(forward(params, probe)[1]["z"], axis=2)       # (A, P, all hidden units)
                    if step > 0:
                        k = step // check_every - 1
                        moment[name][:, k], w1[name][:, k] = distribution_drift(previous[name], z)
                    previous[name] = z
                if step == steps:
                    continue
                xb, yb = X[plan[step]], y[plan[step]]
                grads = _grads(params, xb, yb)
                if step % check_every == 0:
                    rel, cos = gradient_ics(params, grads, xb, yb, lr)
                    ics_l2[name].append(rel.mean(axis=1))
                    ics_cos[name].append(cos.mean(axis=1))
                sgd_step(params, grads, lr)
    out = {"step": np.arange(1, checks + 1) * float(check_every),
           "ics_step": np.arange(checks) * float(check_every)}
    for name, params in nets.items():
        acc = eval_accuracy(params, split.X_val, split.y_val, X)
        l2, cs = np.stack(ics_l2[name], axis=1), np.stack(ics_cos[name], axis=1)   # (A, checks)
        for a, speed in enumerate(("slow", "fast")):
            out[f"moment_drift_{name}_{speed}"] = float(moment[name][a].mean())
            out[f"w1_drift_{name}_{speed}"] = float(w1[name][a].mean())
            out[f"ics_l2_{name}_{speed}"] = float(l2[a].mean())
            out[f"ics_cos_{name}_{speed}"] = float(cs[a].mean())
            out[f"val_acc_{name}_{speed}"] = float(acc[a])
            out[f"drift_curve_{name}_{speed}"] = moment[name][a]
            out[f"cos_curve_{name}_{speed}"] = cs[a]
    return out


# ============================================================================ coupling between layers

def _to64(params: dict) -> dict:
    return {k: None if v is None else [None if a is None else a.astype(np.float64) for a in v]
            for k, v in params.items()}


def _last_layer_view(params: dict, x: np.ndarray, y: np.ndarray, stats: Stats = BATCH):
    """The last layer's input h_L (A, N, H) and the gradient of its weights (A, H, C) on (x, y)."""
    logits, cache = forward(params, x, stats)
    grads = backward(params, cross_entropy(logits, y)[1], cache)
    return cache, grads


def _relative(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """(A,) ||new - old|| / ||old|| over all but the arm axis."""
    axes = tuple(range(1, old.ndim))
    return np.sqrt(np.square(new - old).sum(axis=axes) / np.square(old).sum(axis=axes))


def coupling_response(params: dict, directions: list[np.ndarray], x: np.ndarray, y: np.ndarray, delta: float):
    """Move the weights of the first len(directions) layers by `delta` of their norm along
    `directions` (each (A, D_l, D_{l+1})); return the relative change of the last layer's input
    and of its weight gradient on (x, y), each divided by delta: (A,), (A,)."""
    cache, grads = _last_layer_view(params, x, y)
    moved = copy_params(params)
    for layer, direction in enumerate(directions):
        W = params["W"][layer]
        scale = delta * np.linalg.norm(W, axis=(1, 2)) / np.linalg.norm(direction, axis=(1, 2))
        moved["W"][layer] = W + scale[:, None, None] * direction
    cache_m, grads_m = _last_layer_view(moved, x, y)
    return (_relative(cache_m["h"][-1], cache["h"][-1]) / delta,
            _relative(grads_m["W"][-1], grads["W"][-1]) / delta)


def rescale_error(rng: np.random.Generator, params: dict, x: np.ndarray, y: np.ndarray, trials: int):
    """Largest change, in units of float64 eps, of every later layer's input and weight gradient
    when the first layer's pre-activations are rescaled unit by unit (c_j ~ log-uniform(0.1, 10))
    and shifted (s_j ~ N(0, 1)): W_1 -> W_1 diag(c), b_1 -> s. BN with eps = 0, float64.
    Also returns the median relative change of the same quantities without normalization (plain)."""
    p64 = _to64(params)
    stats = Stats(eps=0.0)
    cache, grads = _last_layer_view(p64, x, y, stats)
    worst = 0.0
    for _ in range(trials):
        c = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(1, 1, p64["W"][0].shape[2])))
        moved = copy_params(p64)
        moved["W"][0] = p64["W"][0] * c
        moved["b"][0] = rng.standard_normal(c.shape) * np.ones_like(c)
        cache_m, grads_m = _last_layer_view(moved, x, y, stats)
        errors = [_relative(a, b).max() for a, b in zip(cache_m["h"][1:], cache["h"][1:])]
        errors += [_relative(a, b).max() for a, b in zip(grads_m["W"][1:], grads["W"][1:])]
        worst = max(worst, *errors)
    return worst / np.finfo(np.float64).eps


@experiment(
    "layer-coupling",
    metrics={
        **{f"{what}_{kind}_{net}": f"{net} MLP: relative change of the last layer's {thing} per relative change "
                                   f"of the first two layers' weights along {direction} (elasticity)"
           for what, thing in (("input", "input"), ("grad", "weight gradient"))
           for kind, direction in (("update", "their SGD update direction"), ("random", "a random direction"))
           for net in ("bn", "plain")},
        "rescale_error_bn": "BN: largest change of any later layer's input or gradient when the first layer's "
                            "units are rescaled and shifted, in units of float64 eps (eps_BN = 0)",
        "rescale_change_plain": "plain: median relative change of the later layers' inputs and gradients under "
                                "the same rescaling",
        "val_acc_bn": "BN MLP: validation accuracy at the end",
        "val_acc_plain": "plain MLP: validation accuracy at the end",
    },
    series={
        "step": "checkpoints (SGD steps)",
        **{f"curve_{what}_update_{net}": f"{what} elasticity along the update direction at each checkpoint, {net}"
           for what in ("input", "grad") for net in ("bn", "plain")},
    },
)
def layer_coupling(rng: np.random.Generator, *, hidden: list[int] = [64, 64, 64], batch_size: int = 64,
                   lr: float = 0.1, steps: int = 300, check_every: int = 50, early_layers: int = 2,
                   delta: float = 0.01, random_directions: int = 4, rescale_trials: int = 20) -> dict:
    """How strongly does a later layer feel a change of the earlier layers' weights, BN vs plain?

    Network 64-[hidden]-10, ReLU, plain vs BN before every ReLU (same initial weights, same batches),
    SGD at a common `lr` for `steps` steps on digits. At every `check_every` steps (and at init):
    move the weights of the first `early_layers` layers by `delta` (relative, per layer) along
    (a) their SGD update direction on the current batch, (b) `random_directions` Gaussian
    directions; measure the relative change of the last layer's input and of its weight gradient
    on a fixed probe set (the 269 validation images; BN in training mode over the probe), per unit
    of relative weight change (an elasticity). Exact part: BN (eps = 0, float64) makes every later
    layer's input and gradient invariant to rescaling and shifting the first layer's units
    (`rescale_trials` random draws at every checkpoint).
    """
    split = digits()
    X, y = split.X_train, split.y_train
    probe, probe_y = split.X_val, split.y_val
    sizes = [X.shape[1], *hidden, 10]
    init_rng, order_rng, direction_rng, scale_rng = rng.spawn(4)
    lr_arms = np.array([lr])
    nets = dict(zip(("plain", "bn"), paired_init(init_rng, sizes, 1)))
    plan = batch_plan(order_rng, len(y), batch_size, steps)
    keys = [f"{w}_{k}" for w in ("input", "grad") for k in ("update", "random")]
    records = {net: {k: [] for k in keys} for net in nets}
    worst_bn, plain_change = 0.0, []
    with np.errstate(all="ignore"):
        for step in range(steps + 1):
            check = step % check_every == 0
            if check:
                # the same random directions (and rescalings) for both networks at this checkpoint
                shapes = [nets["bn"]["W"][j].shape for j in range(early_layers)]
                randoms = [[direction_rng.standard_normal(s).astype(DTYPE) for s in shapes]
                           for _ in range(random_directions)]
                scale_seed = int(scale_rng.integers(2**32))
            for name, params in nets.items():
                xb, yb = X[plan[min(step, steps - 1)]], y[plan[min(step, steps - 1)]]
                grads = _grads(params, xb, yb)
                if check:
                    update = [-grads["W"][j] for j in range(early_layers)]
                    inp, grd = coupling_response(params, update, probe, probe_y, delta)
                    records[name]["input_update"].append(inp[0])
                    records[name]["grad_update"].append(grd[0])
                    rnd = np.array([coupling_response(params, d, probe, probe_y, delta) for d in randoms])
                    records[name]["input_random"].append(rnd[:, 0, 0].mean())
                    records[name]["grad_random"].append(rnd[:, 1, 0].mean())
                    if name == "bn":
                        worst_bn = max(worst_bn, rescale_error(np.random.default_rng(scale_seed), params,
                                                               probe[:64], probe_y[:64], rescale_trials))
                    else:
                        plain_change.append(_plain_rescale_change(np.random.default_rng(scale_seed), params,
                                                                  probe[:64], probe_y[:64]))
                if step < steps:
                    sgd_step(params, grads, lr_arms)
    out = {"step": np.arange(0, steps + 1, check_every, dtype=float),
           "rescale_error_bn": worst_bn, "rescale_change_plain": float(np.median(plain_change))}
    for name, params in nets.items():
        out[f"val_acc_{name}"] = float(eval_accuracy(params, probe, probe_y, X)[0])
        for k in keys:
            out[f"{k}_{name}"] = float(np.mean(records[name][k]))
        for what in ("input", "grad"):
            out[f"curve_{what}_update_{name}"] = np.array(records[name][f"{what}_update"])
    return out


def _plain_rescale_change(rng: np.random.Generator, params: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Median relative change of the later layers' inputs and gradients of a plain MLP under one
    draw of the rescaling of `rescale_error` (for contrast: without normalization nothing cancels)."""
    p64 = _to64(params)
    cache, grads = _last_layer_view(p64, x, y)
    c = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(1, 1, p64["W"][0].shape[2])))
    moved = copy_params(p64)
    moved["W"][0] = p64["W"][0] * c
    moved["b"][0] = rng.standard_normal(c.shape)
    cache_m, grads_m = _last_layer_view(moved, x, y)
    changes = [_relative(a, b).max() for a, b in zip(cache_m["h"][1:], cache["h"][1:])]
    changes += [_relative(a, b).max() for a, b in zip(grads_m["W"][1:], grads["W"][1:])]
    return float(np.median(changes))


# ============================================================================ ghost-batch jitter as a regularizer

GHOSTS = (4, 8, 16, 64)
JITTER_ARMS = tuple(f"g{g}" for g in GHOSTS) + ("free",)


@experiment(
    "ghost-batch-jitter",
    metrics={
        **{f"test_acc_{arm}": f"test accuracy, {text}, at its own best LR"
           for arm, text in [(f"g{g}", f"ghost batch norm with ghost batches of {g}") for g in GHOSTS]
           + [("free", "noise-free BN (statistics of the whole training set, gradients through them)")]},
        **{f"test_acc_common_{arm}": f"test accuracy, {arm}, at the common LR (the noise-free arm's best)"
           for arm in JITTER_ARMS},
        **{f"test_acc_low_{arm}": f"test accuracy, {arm}, at the small common LR low_lr" for arm in JITTER_ARMS},
        **{f"gap_{arm}": f"train accuracy - test accuracy, {arm}, own best LR" for arm in JITTER_ARMS},
        **{f"test_loss_{arm}": f"test cross-entropy, {arm}, own best LR" for arm in JITTER_ARMS},
        **{f"lr_{arm}": f"learning rate used for {arm} (chosen on validation when lrs is empty)"
           for arm in JITTER_ARMS},
        "best_at_edge": "number of arms whose chosen LR is the smallest or largest of lr_grid (selection mode)",
        "diverged": "runs (arm x LR) that went NaN/inf",
    },
    series={
        "ghost_batch_size": "ghost batch size of each noisy arm",
        "test_acc_gain": "test accuracy of each ghost arm minus the noise-free arm (own best LRs)",
        "test_acc_gain_common": "the same at the common LR",
        "test_acc_gain_low": "the same at the small common LR low_lr",
        "gap_gain": "generalization gap of each ghost arm minus the noise-free arm's (own best LRs)",
        "lr_grid": "the learning-rate grid of the sweep mode",
        **{f"val_acc_by_lr_{arm}": f"validation accuracy of {arm} at each LR of lr_grid (NaN: not run)"
           for arm in JITTER_ARMS},
    },
)
def ghost_batch_jitter(rng: np.random.Generator, *, hidden: list[int] = [64, 64], n_per_class: int = 20,
                       batch_size: int = 64, steps: int = 300, lrs: list[float] = [], low_lr: float = 0.2,
                       lr_grid: list[float] = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4]) -> dict:
    """Is the jitter of batch statistics a regularizer? Ghost BN (noisy) vs noise-free BN on a small
    digits training set.

    Network 64-[hidden]-10, ReLU, BN before every ReLU, SGD, batch `batch_size`, `steps` steps, float32,
    on `n_per_class` training images per class (a new stratified subset per seed). Arms (same init,
    same batches): BN over ghost batches of 4, 8, 16 and 64 examples inside the batch (64 = plain
    BN at batch 64: the least jitter), and noise-free BN: the statistics of the whole small
    training set, recomputed at every step with gradients flowing through them, the loss on the
    mini-batch only -- a correct optimiser whose normalization has no sampling noise.
    Learning rates: `lrs` gives one per arm (ghost arms in order, then the noise-free arm), fixed
    from a validation sweep on other seeds; the common LR is the noise-free arm's; every arm also
    runs at the small common LR `low_lr`. With `lrs` empty, every arm runs every LR of `lr_grid`
    (which must contain low_lr) and keeps the one with the best validation accuracy (the sweep mode). Reported on the test split. Inference for every arm: the population
    statistics of the training set under the final weights (precise BN), the same for all arms.
    """
    split = digits()
    ghost_sizes = [g for g in GHOSTS if batch_size % g == 0]
    if len(ghost_sizes) < len(GHOSTS):
        raise ValueError(f"batch_size must be a multiple of every ghost batch size {GHOSTS}; got {batch_size}")
    sub_rng, init_rng, order_rng = rng.spawn(3)
    index = np.sort(np.concatenate([sub_rng.permutation(np.flatnonzero(split.y_train == c))[:n_per_class]
                                    for c in range(10)]))
    X, y = split.X_train[index], split.y_train[index]
    n = len(y)
    sizes = [X.shape[1], *hidden, 10]
    arms = [f"g{g}" for g in ghost_sizes] + ["free"]
    stats = {**{f"g{g}": Stats(group=g) for g in ghost_sizes}, "free": Stats("rows", rows=n)}
    sweep = not lrs
    if not sweep and len(lrs) != len(arms):
        raise ValueError(f"lrs needs one learning rate per arm ({len(arms)}: {', '.join(arms)}); got {len(lrs)}")
    grid = {arm: sorted(set(lr_grid)) if sweep else sorted({lrs[i], lrs[-1], low_lr}) for i, arm in enumerate(arms)}
    if low_lr not in grid["free"]:
        raise ValueError(f"low_lr={low_lr} must be in lr_grid {lr_grid}")
    _, base = paired_init(init_rng, sizes, 1)
    plan = batch_plan(order_rng, n, batch_size, steps)
    loss_weights = np.zeros((steps, n), dtype=DTYPE)
    for step in range(steps):
        np.add.at(loss_weights[step], plan[step], 1.0 / batch_size)
    nets = {arm: take_arms(base, np.zeros(len(grid[arm]), dtype=int)) for arm in arms}
    with np.errstate(all="ignore"):
        for step in range(steps):
            xb, yb = X[plan[step]], y[plan[step]]
            for arm in arms:
                if arm == "free":   # the whole training set forward, loss on the batch rows only
                    train_step(nets[arm], X, y, np.array(grid[arm]), stats[arm], loss_weights[step])
                else:
                    train_step(nets[arm], xb, yb, np.array(grid[arm]), stats[arm])
        results = {}
        for arm, params in nets.items():
            logits = predict(params, split.X_test, X)
            finite = np.all([np.isfinite(w).all(axis=(1, 2)) for w in params["W"]], axis=0)
            results[arm] = dict(val=eval_accuracy(params, split.X_val, split.y_val, X),
                                test=accuracy(logits, split.y_test),
                                test_loss=cross_entropy(np.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0),
                                                        split.y_test)[0],
                                train=eval_accuracy(params, X, y, X), finite=finite)
    if sweep:
        chosen = {arm: int(np.argmax(results[arm]["val"])) for arm in arms}
    else:
        chosen = {arm: grid[arm].index(lrs[i]) for i, arm in enumerate(arms)}
    common_lr = grid["free"][chosen["free"]]
    out = {}
    for arm in arms:
        r, k, c = results[arm], chosen[arm], grid[arm].index(common_lr)
        out[f"test_acc_{arm}"] = float(r["test"][k])
        out[f"test_acc_common_{arm}"] = float(r["test"][c])
        out[f"test_acc_low_{arm}"] = float(r["test"][grid[arm].index(low_lr)])
        out[f"gap_{arm}"] = float(r["train"][k] - r["test"][k])
        out[f"test_loss_{arm}"] = float(min(r["test_loss"][k], 1e3))
        out[f"lr_{arm}"] = float(grid[arm][k])
    out["best_at_edge"] = float(sum(sweep and k in (0, len(lr_grid) - 1) for k in chosen.values()))
    out["diverged"] = float(sum((~r["finite"]).sum() for r in results.values()))
    ghosts = arms[:-1]
    out["ghost_batch_size"] = np.array(ghost_sizes, dtype=float)
    out["test_acc_gain"] = np.array([out[f"test_acc_{a}"] - out["test_acc_free"] for a in ghosts])
    out["test_acc_gain_common"] = np.array([out[f"test_acc_common_{a}"] - out["test_acc_common_free"] for a in ghosts])
    out["test_acc_gain_low"] = np.array([out[f"test_acc_low_{a}"] - out["test_acc_low_free"] for a in ghosts])
    out["gap_gain"] = np.array([out[f"gap_{a}"] - out["gap_free"] for a in ghosts])
    out["lr_grid"] = np.asarray(lr_grid, dtype=float)
    for arm in arms:
        by_lr = dict(zip(grid[arm], results[arm]["val"]))
        out[f"val_acc_by_lr_{arm}"] = np.array([by_lr.get(v, np.nan) for v in lr_grid], dtype=float)
    return out


# ============================================================================ same function, new parametrization

def matching_bn_params(plain: dict, stats_x: np.ndarray) -> dict:
    """BN parameters that compute exactly the plain network's function when BN normalizes with the
    statistics of `stats_x`: same W; gamma_l = sqrt(var_l + eps), beta_l = mean_l + b_l, where
    (mean_l, var_l) are the statistics of layer l's pre-activation (without bias) on stats_x."""
    bn = {"W": [w.copy() for w in plain["W"]], "b": [None] * (len(plain["W"]) - 1) + [plain["b"][-1].copy()],
          "gamma": [], "beta": []}
    h = stats_x
    for layer in range(len(plain["W"]) - 1):
        z = h @ plain["W"][layer]
        mean = z.mean(axis=1, keepdims=True)
        var = np.square(z - mean).mean(axis=1, keepdims=True)
        bn["gamma"].append(np.sqrt(var + EPS).astype(z.dtype))
        bn["beta"].append((mean + plain["b"][layer]).astype(z.dtype))
        h = np.maximum(z + plain["b"][layer], 0)
    return bn


def _total_variation(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """(A,) mean over rows of the total-variation distance between the two softmax distributions."""
    def softmax(z):
        e = np.exp(z - z.max(axis=2, keepdims=True))
        return e / e.sum(axis=2, keepdims=True)
    return 0.5 * np.abs(softmax(logits_a) - softmax(logits_b)).sum(axis=2).mean(axis=1)


@experiment(
    "affine-reparametrization",
    metrics={
        "init_error_eps": "largest |logit difference| / max |logit| between the plain MLP and its BN "
                          "reparametrization at init, float64, in units of float64 eps",
        "dist_reparam": "plain vs noise-free BN reparametrization at the common LR: test-set total-variation "
                        "distance between their predictions, averaged over training checkpoints",
        "dist_order": "plain vs plain with another batch order at the common LR: the same distance (noise floor)",
        "dist_batch": "plain vs BN with batch statistics at the common LR: the same distance",
        "loss_plain": "plain: mean training (mini-batch) loss over all steps at the common LR",
        "loss_bn_fixed": "noise-free BN reparametrization: mean training loss over all steps at the common LR",
        "loss_bn_batch": "BN with batch statistics: mean training loss over all steps at the common LR",
        "loss_plain_low": "plain: mean training loss over all steps at the small learning rate low_lr",
        "loss_bn_fixed_low": "noise-free BN reparametrization: mean training loss at low_lr",
        "test_acc_plain": "plain: test accuracy at its own best LR (validation)",
        "test_acc_bn_fixed": "noise-free BN reparametrization: test accuracy at its own best LR (validation)",
        "test_acc_common_bn_fixed": "noise-free BN reparametrization: test accuracy at the common LR",
        "test_acc_common_bn_batch": "BN with batch statistics: test accuracy at the common LR",
        "lr_plain": "plain: learning rate chosen on validation (the common LR)",
        "lr_bn_fixed": "noise-free BN reparametrization: learning rate chosen on validation",
        "best_at_edge": "number of the two arms (plain, bn_fixed) whose chosen LR is at the edge of the grid",
    },
    series={
        "step": "checkpoints (SGD steps)",
        "tv_reparam": "distance plain vs noise-free BN reparametrization over training (common LR)",
        "tv_order": "distance plain vs plain with another batch order over training (common LR)",
        "tv_batch": "distance plain vs BN with batch statistics over training (common LR)",
        "loss_step": "end of each check interval (SGD steps)",
        **{f"loss_curve_{arm}": f"{arm}: mini-batch loss averaged over each check interval (common LR)"
           for arm in ("plain", "bn_fixed", "bn_batch")},
        "lr": "learning-rate grid",
        "mean_loss_by_lr_plain": "plain: mean training loss over the run at each LR (NaN: diverged, or above "
                                 "the chance-level loss ln 10)",
        "mean_loss_by_lr_bn_fixed": "noise-free BN reparametrization: the same",
        "val_acc_by_lr_plain": "plain: validation accuracy at the end, at each LR",
        "val_acc_by_lr_bn_fixed": "noise-free BN reparametrization: the same",
    },
)
def affine_reparametrization(rng: np.random.Generator, *, hidden: list[int] = [64, 64], batch_size: int = 64,
                             lrs: list[float] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4], low_lr: float = 0.1,
                             steps: int = 300, check_every: int = 10, stats_rows: int = 128) -> dict:
    """The same function in two parametrizations, trained by the same SGD.

    Old parametrization: a plain MLP 64-[hidden]-10 (ReLU, He init, zero biases). New: the same
    network with batch norm before every ReLU and gamma, beta set so that it computes exactly the
    same function at init (`matching_bn_params`):
    * ``bn_fixed`` -- BN with the statistics of a fixed set of `stats_rows` training images,
      recomputed every step with gradients through them (loss on the mini-batch): a pure
      reparametrization of the plain MLP, without batch noise;
    * ``bn_batch`` -- ordinary BN with mini-batch statistics (inference: statistics of the fixed
      set), at the common LR only, for comparison.
    Plain and bn_fixed run at every LR of `lrs` (same initial function, same batches), `steps`
    steps, batch `batch_size`, float32. The common LR is the plain MLP's best on validation; each
    arm's own best LR is chosen on validation; `low_lr` (in `lrs`) is a small common LR. A plain
    run with another batch order at the common LR gives the noise floor of how far two trajectories
    drift apart anyway. Distance between two functions: total variation between their predicted
    class distributions, averaged over the test set, every `check_every` steps.
    """
    split = digits()
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, 10]
    init_rng, order_rng, reorder_rng, stats_rng = rng.spawn(4)
    lr = np.asarray(lrs, dtype=np.float64)
    if low_lr not in lrs:
        raise ValueError(f"low_lr={low_lr} must be one of lrs {lrs}")
    stats_x = X[np.sort(stats_rng.choice(len(y), stats_rows, replace=False))]
    plain = init_params(init_rng, sizes, len(lr), norm=False)

    # exactness at init, float64: the BN reparametrization computes the plain function
    p64 = _to64(take_arms(plain, slice(0, 1)))
    s64, t64 = stats_x.astype(np.float64), split.X_test.astype(np.float64)
    logits_plain = forward(p64, t64)[0]
    logits_bn = forward(matching_bn_params(p64, s64), np.concatenate([s64, t64]), Stats("rows", rows=stats_rows))[0]
    init_error = (np.abs(logits_bn[:, stats_rows:] - logits_plain).max() / np.abs(logits_plain).max()
                  / np.finfo(np.float64).eps)

    plan = batch_plan(order_rng, len(y), batch_size, steps)
    replan = batch_plan(reorder_rng, len(y), batch_size, steps)
    fixed_rows = Stats("rows", rows=stats_rows)
    fixed_weights = np.concatenate([np.zeros(stats_rows), np.full(batch_size, 1.0 / batch_size)]).astype(DTYPE)
    fixed_labels = np.zeros(stats_rows, dtype=y.dtype)
    checks = steps // check_every

    def run(params, lr_arms, order, reference=None, batch_stats=False):
        """Train; return (loss per check interval (A, checks), and the test logits at every check, or,
        given `reference` logits per check, the TV distance to them). BN uses the fixed statistics
        rows unless `batch_stats`."""
        losses = np.zeros((len(lr_arms), checks))
        logits_log, tv = [], np.zeros((len(lr_arms), checks + 1))
        for step in range(steps + 1):
            if step % check_every == 0:
                logits = predict(params, split.X_test, None if params["gamma"] is None else stats_x)
                if reference is None:
                    logits_log.append(logits)
                else:
                    tv[:, step // check_every] = _total_variation(reference[step // check_every], logits)
            if step == steps:
                break
            xb, yb = X[order[step]], y[order[step]]
            if params["gamma"] is None or batch_stats:
                loss = train_step(params, xb, yb, lr_arms)
            else:   # noise-free BN: [fixed statistics rows; batch rows], loss on the batch rows
                loss = train_step(params, np.concatenate([stats_x, xb]), np.concatenate([fixed_labels, yb]),
                                  lr_arms, fixed_rows, fixed_weights)
            losses[:, step // check_every] += loss / check_every
        return losses, (np.stack(logits_log) if reference is None else tv)

    initial = take_arms(plain, slice(0, 1))
    bn_fixed = matching_bn_params(plain, stats_x)
    with np.errstate(all="ignore"):
        loss_plain, plain_logits = run(plain, lr, plan)                         # (checks+1, A, N, C)
        loss_fixed, tv_fixed = run(bn_fixed, lr, plan, plain_logits)
        val = {name: eval_accuracy(params, split.X_val, split.y_val, stats_x)
               for name, params in (("plain", plain), ("bn_fixed", bn_fixed))}
        test = {name: eval_accuracy(params, split.X_test, split.y_test, stats_x)
                for name, params in (("plain", plain), ("bn_fixed", bn_fixed))}
        c = int(np.argmax(val["plain"]))                                        # the common LR
        reference, common = plain_logits[:, c:c + 1], lr[c:c + 1]
        bn_batch = matching_bn_params(initial, stats_x)
        loss_order, tv_order = run(copy_params(initial), common, replan, reference)
        loss_batch, tv_batch = run(bn_batch, common, plan, reference, batch_stats=True)
        test_batch = eval_accuracy(bn_batch, split.X_test, split.y_test, stats_x)
    chosen = int(np.argmax(val["bn_fixed"]))
    low = lrs.index(low_lr)
    mean_loss = {"plain": loss_plain.mean(axis=1), "bn_fixed": loss_fixed.mean(axis=1)}
    finite = lambda a: np.where(np.isfinite(a), a, np.nan)  # noqa: E731
    learning = lambda a: np.where(np.isfinite(a) & (a <= np.log(10.0)), a, np.nan)  # noqa: E731  chance: ln 10
    capped = lambda v: float(min(v, 1e3)) if np.isfinite(v) else 1e3  # noqa: E731
    return {
        "init_error_eps": float(init_error),
        "dist_reparam": float(tv_fixed[c].mean()),
        "dist_order": float(tv_order[0].mean()),
        "dist_batch": float(tv_batch[0].mean()),
        "loss_plain": capped(mean_loss["plain"][c]),
        "loss_bn_fixed": capped(mean_loss["bn_fixed"][c]),
        "loss_bn_batch": capped(loss_batch[0].mean()),
        "loss_plain_low": capped(mean_loss["plain"][low]),
        "loss_bn_fixed_low": capped(mean_loss["bn_fixed"][low]),
        "test_acc_plain": float(test["plain"][c]),
        "test_acc_bn_fixed": float(test["bn_fixed"][chosen]),
        "test_acc_common_bn_fixed": float(test["bn_fixed"][c]),
        "test_acc_common_bn_batch": float(test_batch[0]),
        "lr_plain": float(lr[c]),
        "lr_bn_fixed": float(lr[chosen]),
        "best_at_edge": float((c in (0, len(lr) - 1)) + (chosen in (0, len(lr) - 1))),
        "step": np.arange(0, steps + 1, check_every, dtype=float),
        "loss_step": np.arange(1, checks + 1) * float(check_every),
        "tv_reparam": tv_fixed[c], "tv_order": tv_order[0], "tv_batch": tv_batch[0],
        "loss_curve_plain": finite(loss_plain[c]),
        "loss_curve_bn_fixed": finite(loss_fixed[c]),
        "loss_curve_bn_batch": finite(loss_batch[0]),
        "lr": lr,
        "mean_loss_by_lr_plain": learning(mean_loss["plain"]),
        "mean_loss_by_lr_bn_fixed": learning(mean_loss["bn_fixed"]),
        "val_acc_by_lr_plain": val["plain"],
        "val_acc_by_lr_bn_fixed": val["bn_fixed"],
    }
