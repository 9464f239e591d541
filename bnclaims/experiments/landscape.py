"""The shape of the loss landscape with and without batch norm.

One experiment, ``loss-landscape``: along the SGD trajectory of a BN MLP and of the same MLP
without normalization, it measures on a fixed probe batch

* loss Lipschitzness: how much the loss varies when stepping along the gradient with steps of
  several sizes (Santurkar et al. 2018, arXiv:1805.11604, section 3.1, Fig. 4a);
* gradient predictiveness: how far the gradient moves along the same steps, ||g(w) - g(w - eta g)||
  (Fig. 4b), and the "effective beta-smoothness": the largest of those changes per unit distance
  moved, ||g(w) - g(w - eta g)|| / ||eta g|| (Fig. 4c);
* the largest Hessian eigenvalue (sharpness), by Lanczos (scipy's ``eigsh``, which='LA') on exact
  Hessian-vector products.

The network here is a single MLP in float64, written out so that its Hessian-vector product can be
exact: `hvp` is Pearlmutter's R-operator (forward-over-reverse, 1994) through linear, batch-norm
(training mode, statistics of the batch, all Jacobian terms of the mean and variance included),
ReLU and softmax cross-entropy layers. ReLU is piecewise linear, so the R-operator is exact
wherever no pre-activation is exactly 0 (finite differences through the kinks are not).

    params: {"W": [(D_l, D_{l+1})], "b": [(D_{l+1},) or None], "gamma": [(H_l,)] or None, "beta": ...}

BN hidden layers have no bias (the mean subtraction removes it); the no-norm MLP has biases.
All vectors of the optimisation (gradients, directions) are flat float64 arrays in the order of
`flatten`.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from bnclaims import data
from bnclaims.experiments import experiment

EPS = 1e-5
N_CLASSES = 10


# ============================================================================ parameters


def init_params(rng: np.random.Generator, sizes: list[int], norm: bool) -> dict:
    """He-normal weights, zero biases (no-norm hidden layers and the output), gamma 1, beta 0.

    The draws depend only on `sizes`: the BN and no-norm nets from the same rng state start from
    the same weights."""
    W = [rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    hidden = sizes[1:-1]
    return {
        "W": W,
        "b": [None if norm else np.zeros(d) for d in hidden] + [np.zeros(sizes[-1])],
        "gamma": [np.ones(d) for d in hidden] if norm else None,
        "beta": [np.zeros(d) for d in hidden] if norm else None,
    }


def _arrays(params: dict) -> list[np.ndarray]:
    out = list(params["W"]) + [b for b in params["b"] if b is not None]
    if params["gamma"] is not None:
        out += list(params["gamma"]) + list(params["beta"])
    return out


def flatten(params: dict) -> np.ndarray:
    """All parameters as one flat float64 vector (W's, then biases, then gammas, then betas)."""
    return np.concatenate([a.ravel() for a in _arrays(params)]).astype(np.float64)


def unflatten(flat: np.ndarray, like: dict) -> dict:
    """The inverse of `flatten`, shaped like `like` (views into `flat`)."""
    out: dict = {"gamma": None, "beta": None}
    pos = 0

    def take(a):
        nonlocal pos
        piece = flat[pos:pos + a.size].reshape(a.shape)
        pos += a.size
        return piece

    out["W"] = [take(a) for a in like["W"]]
    out["b"] = [None if a is None else take(a) for a in like["b"]]
    if like["gamma"] is not None:
        out["gamma"] = [take(a) for a in like["gamma"]]
        out["beta"] = [take(a) for a in like["beta"]]
    return out


# ============================================================================ forward, backward, R-operator


def forward(params: dict, x: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy of the MLP on (x, y), BN in training mode. Returns (loss, cache)."""
    norm = params["gamma"] is not None
    layers = len(params["W"])
    h = x
    hs, norm_caches, masks = [], [], []
    for layer in range(layers):
        hs.append(h)
        z = h @ params["W"][layer]
        if params["b"][layer] is not None:
            z = z + params["b"][layer]
        if layer == layers - 1:
            break
        if norm:
            zc = z - z.mean(axis=0)
            inv_std = 1.0 / np.sqrt(np.mean(zc * zc, axis=0) + EPS)
            u = zc * inv_std
            norm_caches.append((zc, inv_std, u))
            z = u * params["gamma"][layer] + params["beta"][layer]
        mask = z > 0
        masks.append(mask)
        h = z * mask
    shifted = z - z.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.mean(np.log(p[np.arange(n), y])))
    return loss, {"h": hs, "norm": norm_caches, "mask": masks, "p": p, "y": y}


def _bn_input_grad(g_u, u, inv_std):
    """dL/dz for u = (z - mean_B) * inv_std, given dL/du: inv_std * (g - mean(g) - u * mean(g u))."""
    return inv_std * (g_u - g_u.mean(axis=0) - u * np.mean(g_u * u, axis=0))


def backward(params: dict, cache: dict) -> dict:
    """Gradient of the loss (same structure as params)."""
    p, y = cache["p"], cache["y"]
    n = len(y)
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    g /= n
    layers = len(params["W"])
    grads = {"W": [None] * layers, "b": [None] * layers,
             "gamma": None if params["gamma"] is None else [None] * (layers - 1),
             "beta": None if params["gamma"] is None else [None] * (layers - 1)}
    for layer in range(layers - 1, -1, -1):
        grads["W"][layer] = cache["h"][layer].T @ g
        if params["b"][layer] is not None:
            grads["b"][layer] = g.sum(axis=0)
        if layer == 0:
            break
        g = (g @ params["W"][layer].T) * cache["mask"][layer - 1]
        if params["gamma"] is not None:
            zc, inv_std, u = cache["norm"][layer - 1]
            grads["gamma"][layer - 1] = np.sum(g * u, axis=0)
            grads["beta"][layer - 1] = g.sum(axis=0)
            g = _bn_input_grad(g * params["gamma"][layer - 1], u, inv_std)
    return grads


def loss_and_grad(flat: np.ndarray, like: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(loss, flat gradient) at the flat parameters `flat`."""
    params = unflatten(flat, like)
    loss, cache = forward(params, x, y)
    return loss, flatten(backward(params, cache))


def hvp(flat: np.ndarray, direction: np.ndarray, like: dict, x: np.ndarray, y: np.ndarray,
        cache: dict | None = None) -> np.ndarray:
    """Exact Hessian-vector product H(flat) @ direction of the loss on (x, y) (R-operator).

    Forward pass of directional derivatives R(.) = d/dt (.)(flat + t * direction) at t = 0, then
    the backward pass and its R-derivative. `cache` (from `forward` at `flat`) may be passed to
    skip the forward pass.
    """
    params = unflatten(flat, like)
    V = unflatten(direction, like)
    if cache is None:
        _, cache = forward(params, x, y)
    norm = params["gamma"] is not None
    layers = len(params["W"])
    # ---- R forward
    Rh = [np.zeros_like(x)]
    r_norm = []
    Rz = None
    for layer in range(layers):
        h = cache["h"][layer]
        Rz = Rh[layer] @ params["W"][layer] + h @ V["W"][layer]
        if V["b"][layer] is not None:
            Rz = Rz + V["b"][layer]
        if layer == layers - 1:
            break
        if norm:
            zc, inv_std, u = cache["norm"][layer]
            Rzc = Rz - Rz.mean(axis=0)
            R_inv_std = -(inv_std ** 3) * np.mean(zc * Rzc, axis=0)          # d (var + eps)^-1/2
            Ru = Rzc * inv_std + zc * R_inv_std
            r_norm.append((R_inv_std, Ru))
            Rz = V["gamma"][layer] * u + params["gamma"][layer] * Ru + V["beta"][layer]
        Rh.append(Rz * cache["mask"][layer])
    p, y = cache["p"], cache["y"]
    n = len(y)
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    g /= n
    Rg = (p * Rz - p * np.sum(p * Rz, axis=1, keepdims=True)) / n           # R of softmax - onehot, / n
    # ---- R backward
    out = {"W": [None] * layers, "b": [None] * layers,
           "gamma": None if not norm else [None] * (layers - 1), "beta": None if not norm else [None] * (layers - 1)}
    for layer in range(layers - 1, -1, -1):
        h = cache["h"][layer]
        out["W"][layer] = Rh[layer].T @ g + h.T @ Rg
        if params["b"][layer] is not None:
            out["b"][layer] = Rg.sum(axis=0)
        if layer == 0:
            break
        W, VW = params["W"][layer], V["W"][layer]
        mask = cache["mask"][layer - 1]
        g, Rg = (g @ W.T) * mask, (Rg @ W.T + g @ VW.T) * mask
        if norm:
            zc, inv_std, u = cache["norm"][layer - 1]
            R_inv_std, Ru = r_norm[layer - 1]
            gamma, Vgamma = params["gamma"][layer - 1], V["gamma"][layer - 1]
            out["gamma"][layer - 1] = np.sum(Rg * u + g * Ru, axis=0)
            out["beta"][layer - 1] = Rg.sum(axis=0)
            g_u, Rg_u = g * gamma, g * Vgamma + Rg * gamma
            proj = np.mean(g_u * u, axis=0)
            inner = g_u - g_u.mean(axis=0) - u * proj
            R_inner = Rg_u - Rg_u.mean(axis=0) - Ru * proj - u * np.mean(Rg_u * u + g_u * Ru, axis=0)
            g, Rg = inv_std * inner, R_inv_std * inner + inv_std * R_inner
    return flatten(out)


def top_eigenvalue(flat: np.ndarray, like: dict, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                   tol: float = 1e-4) -> tuple[float, int]:
    """Largest algebraic eigenvalue of the Hessian at `flat` by Lanczos (ARPACK eigsh, which='LA')
    on exact Hessian-vector products, from a random start drawn from `rng`.
    Returns (eigenvalue, number of Hessian-vector products)."""
    _, cache = forward(unflatten(flat, like), x, y)
    calls = 0

    def matvec(v):
        nonlocal calls
        calls += 1
        return hvp(flat, np.asarray(v, dtype=np.float64).ravel(), like, x, y, cache)

    size = flat.size
    op = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    value = eigsh(op, k=1, which="LA", v0=rng.standard_normal(size), tol=tol, ncv=min(size, 20),
                  return_eigenvectors=False)
    return float(value[0]), calls


# ============================================================================ landscape measures


def gradient_walk(flat: np.ndarray, like: dict, x: np.ndarray, y: np.ndarray, step_sizes: np.ndarray):
    """Santurkar et al.'s measures at one point, stepping along the negative gradient g of (x, y).

    Returns (loss variation = max - min of the loss over the steps w - eta g, eta in step_sizes;
    gradient change = max over eta of ||g(w) - g(w - eta g)||;
    effective beta-smoothness = max over eta of ||g(w) - g(w - eta g)|| / ||eta g||;
    gradient norm ||g||)."""
    _, grad = loss_and_grad(flat, like, x, y)
    norm = float(np.linalg.norm(grad))
    losses, changes = [], []
    for eta in step_sizes:
        loss, moved = loss_and_grad(flat - eta * grad, like, x, y)
        losses.append(loss)
        changes.append(float(np.linalg.norm(moved - grad)))
    losses = np.nan_to_num(np.array(losses), nan=np.inf)
    changes = np.nan_to_num(np.array(changes), nan=np.inf)
    beta = changes / (np.asarray(step_sizes) * max(norm, 1e-300))
    return float(losses.max() - losses.min()), float(changes.max()), float(beta.max()), norm


# ============================================================================ the experiment

MEASURES = {
    "loss_variation": "variation of the probe loss along the gradient: max - min over the step sizes",
    "grad_change": "gradient predictiveness: largest ||g(w) - g(w - eta g)|| over the step sizes",
    "beta_smooth": "effective beta-smoothness: largest ||g(w) - g(w - eta g)|| / ||eta g|| over the step sizes",
    "top_eig": "largest Hessian eigenvalue of the probe loss (Lanczos on exact Hessian-vector products)",
}
EXTRA = {
    "grad_norm": "norm of the probe gradient ||g|| (sets how far a step eta g moves)",
    "loss": "probe loss (training mode)",
}
ARMS = ("bn", "plain")
SETTINGS = ("low", "high")


def digits() -> data.Split:
    """The shared digits split (test 25 %, validation 20 % of the rest), standardized, float64."""
    return data.digits_split(0.25, 0.2, standardize=True, dtype=np.float64)


def measure(flat: np.ndarray, like: dict, x: np.ndarray, y: np.ndarray, step_sizes: np.ndarray,
            rng: np.random.Generator, tol: float) -> dict:
    """All four landscape measures at the point `flat` on (x, y); see MEASURES."""
    variation, change, beta, norm = gradient_walk(flat, like, x, y, step_sizes)
    eig, _ = top_eigenvalue(flat, like, x, y, rng, tol)
    return {"loss_variation": variation, "grad_change": change, "beta_smooth": beta, "top_eig": eig,
            "grad_norm": norm, "loss": forward(unflatten(flat, like), x, y)[0]}


@experiment(
    "loss-landscape",
    metrics={
        **{f"{m}_{arm}_{s}": f"{text}; {arm}, {s} common LR, geometric mean over the checkpoints after step 0"
           for m, text in MEASURES.items() for arm in ARMS for s in SETTINGS},
        **{f"{m}_{arm}_init": f"{text}; {arm}, at initialisation" for m, text in MEASURES.items() for arm in ARMS},
        **{f"{m}_{arm}_{s}": f"{text}; {arm}, {s} common LR, geometric mean over the checkpoints after step 0"
           for m, text in EXTRA.items() for arm in ARMS for s in SETTINGS},
        **{f"final_loss_{arm}_{s}": f"probe loss at the end of training, {arm}, {s} LR" for arm in ARMS
           for s in SETTINGS},
        **{f"val_acc_{arm}_{s}": f"validation accuracy at the end, {arm}, {s} LR (BN: probe statistics)"
           for arm in ARMS for s in SETTINGS},
        "diverged": "runs whose weights went NaN/inf",
    },
    series={
        "step": "checkpoints (SGD steps), 0 = initialisation",
        **{f"{m}_{arm}_{s}_curve": f"{m} at each checkpoint, {arm}, {s} LR" for m in [*MEASURES, *EXTRA]
           for arm in ARMS for s in SETTINGS},
    },
)
def loss_landscape(rng: np.random.Generator, *, hidden: list[int] = [64, 64], batch_size: int = 32,
                   lrs: list[float] = [0.1, 0.4], checkpoints: list[int] = [0, 25, 50, 100, 200, 400],
                   probe_size: int = 256, step_multipliers: list[float] = [0.25, 0.5, 1.0, 2.0, 4.0],
                   lanczos_tol: float = 1e-3) -> dict:
    """Is the loss landscape smoother / better conditioned with batch norm?

    Network 64-[hidden]-10, ReLU, float64, SGD without momentum, batch `batch_size`, on the digits
    training split (1,078 images); BN before every ReLU vs the same MLP without normalization
    (same initial weights, same batches), each trained at two common learning rates
    `lrs` = [low, high] (0.4 is the no-norm net's best LR in the `noisy-bn-speed` sweep).
    At every checkpoint (SGD steps; 0 = initialisation), on a fixed probe of `probe_size` training
    images (BN statistics of the probe, as in training), with g the probe gradient and step sizes
    eta = lr x `step_multipliers`: the loss variation, gradient change and effective
    beta-smoothness of Santurkar et al. 2018 (section 3.1), and the largest Hessian eigenvalue
    (Lanczos, relative tolerance `lanczos_tol`, exact R-operator products). Metrics: geometric
    mean over the checkpoints after initialisation, per arm and LR; and the values at
    initialisation.
    """
    split = digits()
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, N_CLASSES]
    init_rng, order_rng, probe_rng, lanczos_rng = rng.spawn(4)
    probe = np.sort(probe_rng.choice(len(y), size=min(probe_size, len(y)), replace=False))
    xp, yp = X[probe], y[probe]
    steps = max(checkpoints)
    stream = data.epochs(order_rng, len(y), batch_size)
    plan = np.stack([next(stream) for _ in range(steps)])
    state = init_rng.bit_generator.state
    start = {}
    for arm in ARMS:
        init_rng.bit_generator.state = state
        start[arm] = init_params(init_rng, sizes, norm=arm == "bn")
    lanczos_seed = int(lanczos_rng.integers(2**63))
    out: dict = {"step": np.asarray(checkpoints, dtype=float)}
    diverged = 0
    for s, lr in zip(SETTINGS, lrs):
        multipliers = np.asarray(step_multipliers, dtype=np.float64) * lr
        for arm in ARMS:
            like = start[arm]
            flat = flatten(like)
            curves = {m: [] for m in [*MEASURES, *EXTRA]}
            with np.errstate(all="ignore"):
                for step in range(steps + 1):
                    if step in checkpoints:
                        # the same Lanczos start for both arms at a checkpoint (same size only for same arch)
                        values = measure(flat, like, xp, yp, multipliers,
                                         np.random.default_rng([lanczos_seed, step]), lanczos_tol) \
                            if np.all(np.isfinite(flat)) else {m: np.nan for m in curves}
                        for m in curves:
                            curves[m].append(values[m])
                    if step == steps:
                        break
                    idx = plan[step]
                    _, grad = loss_and_grad(flat, like, X[idx], y[idx])
                    flat = flat - lr * grad
                loss = forward(unflatten(flat, like), xp, yp)[0]
                finite = bool(np.all(np.isfinite(flat)))
                diverged += int(not finite)
                params = unflatten(flat, like)
                out[f"final_loss_{arm}_{s}"] = float(loss) if finite else 1e3
                out[f"val_acc_{arm}_{s}"] = float(np.mean(_predict(params, xp, split.X_val) == split.y_val)) \
                    if finite else 0.0
            for m in curves:
                curve = np.asarray(curves[m], dtype=np.float64)
                out[f"{m}_{arm}_{s}_curve"] = curve
                trained = curve[np.asarray(checkpoints) > 0]
                out[f"{m}_{arm}_{s}"] = float(np.exp(np.mean(np.log(np.abs(trained) + 1e-300))))
                if s == SETTINGS[0] and m in MEASURES:
                    out[f"{m}_{arm}_init"] = float(curve[0])
    out["diverged"] = float(diverged)
    return out


def _predict(params: dict, stats_x: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Classes predicted for x; BN normalizes with the statistics of the rows `stats_x`."""
    norm = params["gamma"] is not None
    layers = len(params["W"])
    h, hs = x, stats_x
    for layer in range(layers):
        z, zs = h @ params["W"][layer], hs @ params["W"][layer]
        if params["b"][layer] is not None:
            z, zs = z + params["b"][layer], zs + params["b"][layer]
        if layer == layers - 1:
            return z.argmax(axis=1)
        if norm:
            mean, inv_std = zs.mean(axis=0), 1.0 / np.sqrt(zs.var(axis=0) + EPS)
            z = (z - mean) * inv_std * params["gamma"][layer] + params["beta"][layer]
            zs = (zs - mean) * inv_std * params["gamma"][layer] + params["beta"][layer]
        h, hs = np.maximum(z, 0), np.maximum(zs, 0)
    raise AssertionError("unreachable")
