"""Noise and drift in batch norm's statistics: injected covariate shift ("noisy BN") and
normalizing by running averages during training.

Three experiments:

* ``noisy-bn-speed``        -- does limiting the variation of hidden-layer distributions speed up
                               training? No norm vs BN vs "noisy" BN (Santurkar et al. 2018,
                               arXiv:1805.11604, section 2.1): variation on a fixed probe set and
                               steps to a target training accuracy.
* ``noisy-bn-generalization`` -- does injecting a time-varying shift of the feature distributions
                               during training improve test accuracy on a small training set?
* ``running-average-bn``    -- batch statistics vs exponential running averages (with and without
                               gradient through them) vs batch renormalization (Ioffe 2017,
                               arXiv:1702.03275) at batch 32 and at a small batch.

One stacked MLP serves all three: the arms of a comparison (normalization variants x learning
rates) sit on a leading axis A and train in lockstep on the same batches from the same weights:

    x: (N, D) shared by the arms;  W[l]: (A, D_l, D_{l+1});  per-unit vectors (A, 1, D).

A hidden layer is  z = h @ W (+ b);  y = gamma * xn + beta;  h' = relu(y)  with

    mean = (1 - m) * running_mean + m * batch_mean      (m = 1: batch norm; m < 1: running averages)
    var  = (1 - m) * running_var  + m * batch_var       (biased batch variance)
    u    = (z - mean) / sqrt(var + eps)
    xhat = u * r + d                                    (batch renorm; r = 1, d = 0 otherwise)
    xn   = xhat * noise_scale + noise_shift             (noisy BN; 1 and 0 otherwise)

Gradients flow through the batch part (m * batch statistics) of mean and var when the arm's
``through`` flag is 1 and not at all when it is 0; r, d and the noise are constants (as in
`bnclaims.nn`, whose single-network layers these reproduce -- tests check them against it).
Normalized networks have no hidden bias; the no-norm network (its own stack) has one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bnclaims import data
from bnclaims.experiments import experiment

DTYPE = np.float32
EPS = 1e-5
EMA_MOMENTUM = 0.1          # running statistics for inference (PyTorch convention, weight of the new batch)
N_CLASSES = 10


# ============================================================================ per-arm settings


@dataclass(frozen=True)
class Arms:
    """Per-arm settings of a normalized stack, each an (A,) array (see the module docstring).

    stat_weight: m, weight of the batch statistics in the normalizing statistics (1 = BN).
    through: 1 where the gradient flows through m * batch statistics, 0 where they are constants.
    renorm: True where batch renormalization corrects the batch statistics with r and d.
    noise: True where noisy-BN noise is injected; mean_shift, scale_spread, example_noise set
    it (see `sample_noise`).
    """

    lr: np.ndarray
    stat_weight: np.ndarray
    through: np.ndarray
    renorm: np.ndarray
    noise: np.ndarray
    mean_shift: np.ndarray
    scale_spread: np.ndarray
    example_noise: np.ndarray
    r_max: float = 3.0
    d_max: float = 5.0

    @staticmethod
    def make(lr, *, stat_weight=1.0, through=1.0, renorm=False, noise=False, mean_shift=0.5, scale_spread=1.25,
             example_noise=1.0, r_max: float = 3.0, d_max: float = 5.0) -> "Arms":
        lr = np.asarray(lr, dtype=np.float64).ravel()
        full = lambda v, dt=np.float64: np.broadcast_to(np.asarray(v, dtype=dt), lr.shape).copy()  # noqa: E731
        return Arms(lr, full(stat_weight), full(through), full(renorm, bool), full(noise, bool), full(mean_shift),
                    full(scale_spread), full(example_noise), r_max, d_max)

    @staticmethod
    def concat(*parts: "Arms") -> "Arms":
        names = ("lr", "stat_weight", "through", "renorm", "noise", "mean_shift", "scale_spread", "example_noise")
        return Arms(*[np.concatenate([getattr(p, name) for p in parts]) for name in names],
                    parts[0].r_max, parts[0].d_max)

    def __len__(self) -> int:
        return len(self.lr)

    def col(self, name: str, dtype=DTYPE) -> np.ndarray:
        """An (A, 1, 1) column of a per-arm setting, for broadcasting against (A, N, D)."""
        return np.asarray(getattr(self, name), dtype=dtype)[:, None, None]

    @property
    def noisy(self) -> bool:
        return bool(np.any(self.noise))

    @property
    def running(self) -> np.ndarray:
        """(A,) True where the normalizing statistics are running averages (m < 1)."""
        return self.stat_weight < 1


def sample_noise(rng: np.random.Generator, arms: Arms, n: int, d: int):
    """Noisy-BN noise for one layer and one step, for every arm at once.

    For an arm with noise on, per feature j: m_j ~ U(-mean_shift, mean_shift),
    s_j ~ U(1, scale_spread); per activation: noise_scale = s_j and
    noise_shift = m_j + example_noise * s_j * N(0, 1).
    example_noise = 1 is the law of `bnclaims.nn.sample_covariate_noise` (Santurkar et al.'s
    "noisy BN": every activation shifted by an i.i.d. draw from N(m_j, s_j^2)); example_noise = 0
    is a pure shift of the feature distribution: every example of the step scaled by s_j and
    shifted by m_j alike. The arms share the underlying uniform and normal draws (common random
    numbers), so arms that differ only in strength are paired. Arms with noise off get scale 1,
    shift 0. Returns noise_scale (A, 1, D) and noise_shift (A, N, D), float32.
    """
    u = rng.uniform(-1.0, 1.0, size=(1, 1, d)).astype(DTYPE)
    v = rng.uniform(0.0, 1.0, size=(1, 1, d)).astype(DTYPE)
    z = rng.standard_normal((1, n, d)).astype(DTYPE)
    on = arms.noise[:, None, None]
    scale = np.where(on, 1.0 + (arms.col("scale_spread") - 1.0) * v, 1.0).astype(DTYPE)
    shift = np.where(on, arms.col("mean_shift") * u + arms.col("example_noise") * scale * z, 0.0).astype(DTYPE)
    return scale, shift


def mean_noise_scale(arms: Arms) -> np.ndarray:
    """(A, 1, 1) expected noise scale E[s] = (1 + scale_spread) / 2 where the noise is on, else 1
    (E[shift] = 0): inference replaces the noise by its mean."""
    return np.where(arms.noise[:, None, None], (1.0 + arms.col("scale_spread")) / 2.0, 1.0).astype(DTYPE)


# ============================================================================ the stacked MLP


def init_params(rng: np.random.Generator, sizes: list[int], arms: int, norm: bool) -> dict:
    """He-normal weights (the same for every arm); zero biases (no-norm only); gamma 1, beta 0.

    The draws depend only on `sizes`, so a normalized and a no-norm stack from the same rng
    state start from the same weights. Returns {"W", "b", "gamma", "beta"}: lists per layer of
    (A, D_l, D_{l+1}) and (A, 1, D) arrays (b, gamma, beta None where absent).
    """
    weights = [rng.standard_normal((d_in, d_out)) * np.sqrt(2.0 / d_in) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    stack = lambda a: np.repeat(np.asarray(a, dtype=DTYPE)[None], arms, axis=0)  # noqa: E731
    hidden = sizes[1:-1]
    return {
        "W": [stack(w) for w in weights],
        "b": [None if norm else stack(np.zeros((1, d))) for d in hidden] + [stack(np.zeros((1, sizes[-1])))],
        "gamma": [stack(np.ones((1, d))) for d in hidden] if norm else None,
        "beta": [stack(np.zeros((1, d))) for d in hidden] if norm else None,
    }


def init_state(params: dict) -> dict:
    """Running statistics mean 0, variance 1 for every hidden layer of a normalized stack."""
    if params["gamma"] is None:
        return {"mean": [], "var": []}
    return {"mean": [np.zeros_like(g) for g in params["gamma"]], "var": [np.ones_like(g) for g in params["gamma"]]}


def _norm_train(z: np.ndarray, gamma, beta, mean_run, var_run, arms: Arms, noise):
    """Training-mode normalization of z: (A, N, D). Returns y, cache, (new running mean, var)."""
    a, n, d = z.shape
    weights = np.full(n, 1.0 / n, dtype=z.dtype)
    batch_mean = (weights @ z)[:, None, :]                                # (A, 1, D)
    xc = z - batch_mean
    batch_var = (weights @ np.square(xc))[:, None, :]
    m = arms.col("stat_weight", z.dtype)
    mean = batch_mean if np.all(m == 1) else (1 - m) * mean_run + m * batch_mean
    var = batch_var if np.all(m == 1) else (1 - m) * var_run + m * batch_var
    inv_std = 1.0 / np.sqrt(var + EPS)
    u = (z - mean) * inv_std
    r = d_shift = None
    if np.any(arms.renorm):
        sigma_run = np.sqrt(var_run + EPS)
        on = arms.renorm[:, None, None]
        r = np.where(on, np.clip(np.sqrt(batch_var + EPS) / sigma_run, 1.0 / arms.r_max, arms.r_max), 1.0)
        d_shift = np.where(on, np.clip((batch_mean - mean_run) / sigma_run, -arms.d_max, arms.d_max), 0.0)
        xhat = u * r + d_shift
    else:
        xhat = u
    if noise is not None:
        noise_scale, noise_shift = noise
        xn = xhat * noise_scale + noise_shift
    else:
        noise_scale, xn = None, xhat
    y = xn * gamma + beta
    # running statistics: the normalizing ones for running-average arms, the EMA of the batch ones otherwise
    ema_mean = (1 - EMA_MOMENTUM) * mean_run + EMA_MOMENTUM * batch_mean
    ema_var = (1 - EMA_MOMENTUM) * var_run + EMA_MOMENTUM * batch_var * (n / (n - 1))
    running = arms.running[:, None, None]
    new = (np.where(running, mean, ema_mean), np.where(running, var, ema_var))
    return y, (xc, u, xn, inv_std, r, noise_scale, m, arms.col("through", z.dtype)), new


def _norm_backward(dout: np.ndarray, gamma, cache):
    """dout: (A, N, D) -> dz, dgamma (A, 1, D), dbeta (A, 1, D)."""
    xc, u, xn, inv_std, r, noise_scale, m, through = cache
    n = dout.shape[1]
    ones = np.ones(n, dtype=dout.dtype)
    dgamma = (ones @ (dout * xn))[:, None, :]
    dbeta = (ones @ dout)[:, None, :]
    du = dout * gamma                                                     # dL/dxn
    if noise_scale is not None:
        du = du * noise_scale
    if r is not None:
        du = du * r
    # dz = s * (du - g m (mean(du) + xc s mean(du * u)))   (g m = 1: the batch-norm backward)
    gm = through * m
    mean_du = (ones @ du)[:, None, :] / n
    mean_du_u = (ones @ (du * u))[:, None, :] / n
    dz = du - gm * (mean_du + xc * inv_std * mean_du_u)
    dz *= inv_std
    return dz, dgamma, dbeta


def forward_train(params: dict, state: dict, x: np.ndarray, arms: Arms | None, noise_rng=None):
    """Training-mode logits (A, N, C), cache, new state. x: (N, D) or (A, N, D).

    The cache keeps every layer input ("h") and every hidden pre-ReLU value y ("y")."""
    norm = params["gamma"] is not None
    h = x
    cache = {"h": [], "y": [], "norm": []}
    new_state = {"mean": [], "var": []}
    layers = len(params["W"])
    noisy = norm and arms.noisy
    for layer in range(layers):
        cache["h"].append(h)
        z = h @ params["W"][layer]
        if params["b"][layer] is not None:
            z += params["b"][layer]
        if layer == layers - 1:
            return z, cache, new_state
        if norm:
            noise = sample_noise(noise_rng, arms, z.shape[1], z.shape[2]) if noisy else None
            z, norm_cache, (mean, var) = _norm_train(z, params["gamma"][layer], params["beta"][layer],
                                                     state["mean"][layer], state["var"][layer], arms, noise)
            cache["norm"].append(norm_cache)
            new_state["mean"].append(mean)
            new_state["var"].append(var)
        cache["y"].append(z)
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
        grads["W"][layer] = np.swapaxes(cache["h"][layer], -1, -2) @ dz
        if params["b"][layer] is not None:
            grads["b"][layer] = (np.ones(dz.shape[1], dtype=dz.dtype) @ dz)[:, None, :]
        if layer == 0:
            return grads
        dz = (dz @ np.swapaxes(params["W"][layer], -1, -2)) * (cache["y"][layer - 1] > 0)
        if norm:
            dz, grads["gamma"][layer - 1], grads["beta"][layer - 1] = _norm_backward(
                dz, params["gamma"][layer - 1], cache["norm"][layer - 1])
    raise AssertionError("unreachable")


def cross_entropy(logits: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy per arm. logits: (A, N, C); y: (N,). Returns loss (A,), dlogits."""
    a, n, c = logits.shape
    shifted = logits - logits.max(axis=2, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=2, keepdims=True)
    rows = np.arange(n)
    loss = np.mean(np.log(total[:, :, 0]) - shifted[:, rows, y], axis=1, dtype=np.float64)
    dlogits = exp / total
    dlogits[:, rows, y] -= 1.0
    dlogits *= 1.0 / n
    return loss, dlogits


def sgd_step(params: dict, grads: dict, lr: np.ndarray) -> None:
    """In place: p -= lr * grad, one learning rate per arm (A,)."""
    lr = np.asarray(lr, dtype=DTYPE)[:, None, None]
    for key in ("W", "b", "gamma", "beta"):
        if params[key] is None:
            continue
        for p, g in zip(params[key], grads[key]):
            if p is not None:
                p -= lr * g


def train_step(params: dict, state: dict, x: np.ndarray, y: np.ndarray, arms: Arms | None, lr: np.ndarray,
               noise_rng=None) -> tuple[np.ndarray, dict]:
    """One SGD step of every arm; returns (loss before the step (A,), new running statistics)."""
    logits, cache, new_state = forward_train(params, state, x, arms, noise_rng)
    loss, dlogits = cross_entropy(logits, y)
    sgd_step(params, backward(params, dlogits, cache), lr)
    return loss, new_state


def predict(params: dict, x: np.ndarray, arms: Arms | None, *, state: dict | None = None,
            stats_rows: int = 0) -> np.ndarray:
    """Inference logits (A, N, C); x: (N, D). Normalized stacks use fixed statistics: the running
    ones (`state`) or, with ``stats_rows = M > 0``, the statistics of the first M rows of x computed
    layer by layer under the current weights ("precise BN"). The noise is replaced by its mean
    (scale E[s], shift 0)."""
    norm = params["gamma"] is not None
    layers = len(params["W"])
    h = x
    for layer in range(layers):
        z = h @ params["W"][layer]
        if params["b"][layer] is not None:
            z += params["b"][layer]
        if layer == layers - 1:
            return z
        if norm:
            if stats_rows:
                weights = np.full(stats_rows, 1.0 / stats_rows, dtype=z.dtype)
                mean = (weights @ z[:, :stats_rows])[:, None, :]
                var = (weights @ np.square(z[:, :stats_rows] - mean))[:, None, :]
            else:
                mean, var = state["mean"][layer], state["var"][layer]
            scale = params["gamma"][layer] / np.sqrt(var + EPS)
            if arms.noisy:
                scale = scale * mean_noise_scale(arms)
            z = (z - mean) * scale + params["beta"][layer]
        h = np.maximum(z, 0)
    raise AssertionError("unreachable")


def accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A,) fraction classified correctly; an arm with non-finite logits scores 0."""
    finite = np.isfinite(logits).all(axis=(1, 2))
    acc = (np.nan_to_num(logits, nan=0.0).argmax(axis=2) == y).mean(axis=1)
    return np.where(finite, acc, 0.0)


def finite_arms(params: dict) -> np.ndarray:
    """(A,) True where every weight of the arm is finite (not diverged)."""
    return np.all([np.isfinite(w).all(axis=(1, 2)) for w in params["W"]], axis=0)


# ============================================================================ shared helpers


def digits() -> data.Split:
    """The shared digits split (test 25 %, validation 20 % of the rest), standardized, float32."""
    return data.digits_split(0.25, 0.2, standardize=True, dtype=DTYPE)


def batch_plan(rng: np.random.Generator, n: int, batch_size: int, steps: int) -> np.ndarray:
    """(steps, batch_size) example indices: shuffled epochs, one row per SGD step."""
    stream = data.epochs(rng, n, batch_size)
    return np.stack([next(stream) for _ in range(steps)])


def steps_to(curve: np.ndarray, steps: np.ndarray, target: float) -> np.ndarray:
    """First checkpoint step at which each row of `curve` (A, K) reaches `target`; NaN where never."""
    hit = curve >= target
    return np.where(hit.any(axis=1), steps[hit.argmax(axis=1)], np.nan)


def tile(params: dict, copies: int) -> dict:
    """Every parameter of a one-arm stack repeated `copies` times along the arm axis."""
    return {k: None if v is None else [None if p is None else np.repeat(p, copies, axis=0) for p in v]
            for k, v in params.items()}


def paired_init(rng: np.random.Generator, sizes: list[int], arms_plain: int, arms_norm: int) -> tuple[dict, dict]:
    """(no-norm, normalized) stacks with the same initial weights: same seed => same initialisation."""
    state = rng.bit_generator.state
    plain = init_params(rng, sizes, arms_plain, norm=False)
    rng.bit_generator.state = state
    return plain, init_params(rng, sizes, arms_norm, norm=True)


def probe_index(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """A fixed random probe subset of the training rows (sorted)."""
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def layer_moments(ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean and std over the probe rows of every hidden layer's pre-ReLU values y.

    ys: per layer (A, P, D). Returns mean, std: (A, L * D) float64."""
    y = np.concatenate([np.asarray(v, dtype=np.float64) for v in ys], axis=2)
    return y.mean(axis=1), y.std(axis=1)


def moment_change(before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(A,) scale-free change of every unit's probe distribution between two checkpoints, averaged
    over units: |mean change| / std_before + |log(std_after / std_before)|."""
    (m0, s0), (m1, s1) = before, after
    tiny = 1e-12
    return np.mean(np.abs(m1 - m0) / (s0 + tiny) + np.abs(np.log((s1 + tiny) / (s0 + tiny))), axis=1)


# ============================================================================ noisy BN and training speed

SPEED_ARMS = ("plain", "bn", "shift", "noisy")
NORMED_ARMS = SPEED_ARMS[1:]
ARM_TEXT = {"plain": "no norm", "bn": "BN", "shift": "BN + distribution shift", "noisy": "noisy BN"}


def speed_arms(lrs, kind: str, mean_shift: float, scale_spread: float) -> Arms:
    """Arms of one normalized kind ("bn", "shift", "noisy") at the learning rates `lrs`."""
    if kind == "bn":
        return Arms.make(lrs)
    return Arms.make(lrs, noise=True, mean_shift=mean_shift, scale_spread=scale_spread,
                     example_noise=1.0 if kind == "noisy" else 0.0)


@experiment(
    "noisy-bn-speed",
    metrics={
        **{f"steps_{arm}": f"SGD steps for {ARM_TEXT[arm]} to reach the target training accuracy at its own best "
                           f"LR (censored at `steps` when never reached)" for arm in SPEED_ARMS},
        **{f"steps_{arm}_common": f"the same for {ARM_TEXT[arm]} at the common LR (the no-norm net's best LR)"
           for arm in NORMED_ARMS},
        **{f"time_{arm}": f"steps_{arm} x the cost of one step relative to a no-norm step (wall-clock model)"
           for arm in SPEED_ARMS},
        **{f"variation_{arm}": f"{ARM_TEXT[arm]}: mean change of the hidden units' distributions on a fixed probe "
                               f"set between checkpoints, own best LR" for arm in SPEED_ARMS},
        **{f"variation_{arm}_common": f"{ARM_TEXT[arm]} at the common LR: distribution variation"
           for arm in NORMED_ARMS},
        **{f"final_train_acc_{arm}": f"{ARM_TEXT[arm]}: training-probe accuracy at the end, own best LR"
           for arm in SPEED_ARMS},
        **{f"final_val_acc_{arm}": f"{ARM_TEXT[arm]}: validation accuracy at the end, own best LR"
           for arm in SPEED_ARMS},
        **{f"lr_{arm}": f"learning rate used for {ARM_TEXT[arm]}" for arm in SPEED_ARMS},
        "reached_all": "1 when every arm reached the target (own best and common LR)",
        "diverged": "arms (x LRs) whose weights went NaN/inf",
    },
    series={
        "step": "probe checkpoints (SGD steps, every probe_every)",
        **{f"train_acc_{arm}": f"training-probe accuracy over training, {ARM_TEXT[arm]}, own best LR"
           for arm in SPEED_ARMS},
        "change_step": "checkpoints after the first (x axis of the change_* series)",
        **{f"change_{arm}": f"distribution change since the previous checkpoint, {ARM_TEXT[arm]}, own best LR"
           for arm in SPEED_ARMS},
        "lr": "learning-rate grid (sweep mode; empty otherwise)",
        **{f"sweep_val_steps_{arm}": f"sweep mode: steps to the target validation accuracy per LR, {ARM_TEXT[arm]} "
                                     f"(NaN: never)" for arm in SPEED_ARMS},
        **{f"sweep_val_acc_{arm}": f"sweep mode: final validation accuracy per LR, {ARM_TEXT[arm]}"
           for arm in SPEED_ARMS},
    },
)
def noisy_bn_speed(rng: np.random.Generator, *, hidden: list[int] = [64, 64], batch_size: int = 32,
                   steps: int = 300, check_every: int = 1, probe_every: int = 5, target: float = 0.97,
                   val_target: float = 0.95,
                   probe_size: int = 256, mean_shift: float = 0.5, scale_spread: float = 1.25,
                   lrs: list[float] = [], lr_grid: list[float] = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2],
                   bn_step_cost: float = 2.2, noise_step_cost: float = 3.5) -> dict:
    """Does limiting the variation of the hidden-layer distributions speed up training?

    Network 64-[hidden]-10, ReLU, SGD without momentum, batch `batch_size`, `steps` steps, float32,
    digits training split (1,078 images). Arms (same initial weights, same batches):
    * no norm;  * BN before every ReLU;
    * BN + distribution shift: at every step every BN output unit j is scaled by s_j ~ U(1,
      scale_spread) and shifted by m_j ~ U(-mean_shift, mean_shift), the same for every example
      (`sample_noise` with example_noise = 0): the layer's input distribution keeps moving, no
      information is lost;
    * noisy BN (Santurkar et al. 2018, section 2.1): in addition every activation gets an i.i.d.
      N(0, s_j^2) draw (example_noise = 1, the law of `bnclaims.nn.sample_covariate_noise`).
    The noise is drawn afresh at every step, shared by the arms (common random numbers).

    On a fixed probe of `probe_size` training images: (1) every `check_every` steps, training
    accuracy in inference mode (BN statistics of the probe, noise at its mean); speed = steps
    until it first reaches `target`; (2) every `probe_every` steps, the per-unit mean and std of
    every hidden layer's pre-ReLU values in training mode (with fresh noise) -- the "variation"
    is the average change of these distributions between consecutive checkpoints
    (|d mean| / std + |d log std|) -- and, in sweep mode, the validation accuracy (otherwise only
    at the end). The probe statistics normalize the validation images in inference mode.

    Learning rates: `lrs` = [no norm, BN, shift, noisy], fixed from a validation sweep on other
    seeds; every normalized arm also runs at the no-norm net's LR (the common LR). With `lrs`
    empty every arm runs every LR of `lr_grid` (sweep mode); the series then report per LR the
    steps to `val_target` validation accuracy and the final validation accuracy, and the metrics
    use each arm's LR that reached `val_target` first (ties: higher final validation accuracy).
    Wall-clock model: `bn_step_cost`, `noise_step_cost` = CPU time of one BN / noise-injecting
    step relative to a no-norm step of this module's network (64-64-64-10, batch 32, measured
    once: 2.2 and 3.5; timings stay out of the metrics so that they are deterministic).
    """
    if steps % probe_every:
        raise ValueError(f"steps ({steps}) must be a multiple of probe_every ({probe_every})")
    split = digits()
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, N_CLASSES]
    init_rng, order_rng, probe_rng, noise_rng, measure_rng = rng.spawn(5)
    probe = probe_index(probe_rng, len(y), probe_size)
    x_eval = np.concatenate([X[probe], split.X_val])                  # probe rows give the statistics
    m = len(probe)
    sweep = not lrs
    if sweep:
        own = {arm: np.asarray(lr_grid, dtype=np.float64) for arm in SPEED_ARMS}
        common: dict = {}
    else:
        if len(lrs) != len(SPEED_ARMS):
            raise ValueError(f"lrs needs one learning rate per arm ({', '.join(SPEED_ARMS)}); got {len(lrs)}")
        own = {arm: np.array([lr]) for arm, lr in zip(SPEED_ARMS, lrs)}
        common = {arm: np.array([lrs[0]]) for arm in NORMED_ARMS}
    # rows of the normalized stack: each arm's own LRs, then each arm at the common LR
    layout, parts, start = {}, [], 0
    for arm in NORMED_ARMS:
        for which, table in (("own", own), ("common", common)):
            if arm in table:
                parts.append(speed_arms(table[arm], arm, mean_shift, scale_spread))
                layout[arm, which] = np.arange(start, start + len(table[arm]))
                start += len(table[arm])
    normed = Arms.concat(*parts)
    plain, net = paired_init(init_rng, sizes, len(own["plain"]), len(normed))
    plan = batch_plan(order_rng, len(y), batch_size, steps)
    stacks = {"plain": [plain, None, own["plain"], init_state(plain)], "normed": [net, normed, normed.lr, init_state(net)]}
    probes = np.arange(0, steps + 1, probe_every)
    curves = {k: {"val": [], "change": [], "train_probe": []} for k in stacks}
    reach = {k: np.full(len(stack[2]), np.nan) for k, stack in stacks.items()}   # first step at target

    def record_reach(key, step, train_acc):
        hit = np.isnan(reach[key]) & (train_acc >= target)
        reach[key][hit] = step

    last: dict = {}
    with np.errstate(all="ignore"):
        for step in range(steps + 1):
            if step % check_every == 0 and step % probe_every != 0:
                for key, (params, arms, _, _) in stacks.items():
                    if np.isnan(reach[key]).any():     # checked only until every arm got there
                        record_reach(key, step, accuracy(predict(params, X[probe], arms, stats_rows=m), y[probe]))
            if step % probe_every == 0:
                measure_seed = int(measure_rng.integers(2**63))
                with_val = sweep or step == steps                 # validation only where it is used
                for key, (params, arms, _, _) in stacks.items():
                    logits = predict(params, x_eval if with_val else X[probe], arms, stats_rows=m)
                    train_acc = accuracy(logits[:, :m], y[probe])
                    if step % check_every == 0:
                        record_reach(key, step, train_acc)
                    curves[key]["train_probe"].append(train_acc)
                    curves[key]["val"].append(accuracy(logits[:, m:], split.y_val) if with_val
                                              else np.full(len(train_acc), np.nan))
                    _, cache, _ = forward_train(params, init_state(params), X[probe], arms,
                                                np.random.default_rng(measure_seed))
                    moments = layer_moments(cache["y"])
                    change = moment_change(last[key], moments) if key in last else np.full(len(moments[0]), np.nan)
                    curves[key]["change"].append(change)
                    last[key] = moments
            if step == steps:
                break
            idx = plan[step]
            for stack in stacks.values():
                params, arms, lr, state = stack
                _, stack[3] = train_step(params, state, X[idx], y[idx], arms, lr, noise_rng)
    curve = {k: {name: np.array(v).T for name, v in c.items()} for k, c in curves.items()}  # (A, K)
    variation = {k: np.nanmean(curve[k]["change"], axis=1) for k in stacks}
    rows_of = {"plain": ("plain", np.arange(len(own["plain"])))}
    rows_of.update({arm: ("normed", layout[arm, "own"]) for arm in NORMED_ARMS})
    if sweep:
        val_reach = {k: steps_to(curve[k]["val"], probes, val_target) for k in stacks}

        def choose(key, rows):
            r, final = val_reach[key][rows], curve[key]["val"][rows, -1]
            return int(rows[np.lexsort((-final, np.where(np.isnan(r), np.inf, r)))[0]])

        chosen = {arm: (key, choose(key, rows)) for arm, (key, rows) in rows_of.items()}
        k_plain = chosen["plain"][1]
        at_common = {arm: ("normed", int(layout[arm, "own"][k_plain])) for arm in NORMED_ARMS}
    else:
        chosen = {arm: (key, int(rows[0])) for arm, (key, rows) in rows_of.items()}
        at_common = {arm: ("normed", int(layout[arm, "common"][0])) for arm in NORMED_ARMS}
    censor = lambda s: float(steps if np.isnan(s) else s)  # noqa: E731
    cost = {"plain": 1.0, "bn": bn_step_cost, "shift": noise_step_cost, "noisy": noise_step_cost}
    out: dict = {"step": probes.astype(float), "change_step": probes[1:].astype(float)}
    for arm, (key, row) in chosen.items():
        out[f"steps_{arm}"] = censor(reach[key][row])
        out[f"time_{arm}"] = out[f"steps_{arm}"] * cost[arm]
        out[f"variation_{arm}"] = float(variation[key][row])
        out[f"final_train_acc_{arm}"] = float(curve[key]["train_probe"][row, -1])
        out[f"final_val_acc_{arm}"] = float(curve[key]["val"][row, -1])
        out[f"lr_{arm}"] = float(stacks[key][2][row])
        out[f"train_acc_{arm}"] = curve[key]["train_probe"][row]
        out[f"change_{arm}"] = curve[key]["change"][row, 1:]
    for arm, (key, row) in at_common.items():
        out[f"steps_{arm}_common"] = censor(reach[key][row])
        out[f"variation_{arm}_common"] = float(variation[key][row])
    used = list(chosen.values()) + list(at_common.values())
    out["reached_all"] = float(all(np.isfinite(reach[k][r]) for k, r in used))
    out["diverged"] = float(sum((~finite_arms(stack[0])).sum() for stack in stacks.values()))
    out["lr"] = np.asarray(lr_grid, dtype=float) if sweep else np.array([])
    for arm, (key, rows) in rows_of.items():
        out[f"sweep_val_steps_{arm}"] = val_reach[key][rows].astype(float) if sweep else np.array([])
        out[f"sweep_val_acc_{arm}"] = curve[key]["val"][rows, -1].astype(float) if sweep else np.array([])
    return out


# ============================================================================ noisy BN and generalization

STRENGTH_NAMES = ("weak", "moderate", "strong")


def shift_arm_names(strengths: list[float]) -> list[str]:
    names = STRENGTH_NAMES if len(strengths) == 3 else [f"s{i}" for i in range(len(strengths))]
    return [f"{kind}_{name}" for kind in ("shift", "noisy") for name in names]


@experiment(
    "noisy-bn-generalization",
    metrics={
        "test_acc_bn": "test accuracy of plain BN (no injected shift), own best LR",
        **{f"test_acc_{arm}": f"test accuracy, {arm.replace('_', ' ')} injected shift, own best LR"
           for arm in shift_arm_names([0, 0, 0])},
        "gap_bn": "train accuracy - test accuracy, BN",
        **{f"gap_{arm}": f"train accuracy - test accuracy, {arm.replace('_', ' ')}" for arm in shift_arm_names([0, 0, 0])},
        "train_acc_bn": "training-set accuracy at the end, BN",
        **{f"train_acc_{arm}": f"training-set accuracy at the end, {arm.replace('_', ' ')}"
           for arm in shift_arm_names([0, 0, 0])},
        "lr_bn": "learning rate used for BN",
        **{f"lr_{arm}": f"learning rate used for {arm.replace('_', ' ')}" for arm in shift_arm_names([0, 0, 0])},
        "diverged": "arms (x LRs) whose weights went NaN/inf",
    },
    series={
        "strength": "noise strength k of each shift arm (mean_shift = 0.5 k, scale_spread = 1 + 0.25 k)",
        "test_gain_shift": "test accuracy minus BN's, distribution shift only, per strength",
        "test_gain_noisy": "test accuracy minus BN's, noisy BN (shift + per-example noise), per strength",
        "gap_gain_shift": "generalization gap minus BN's, distribution shift only, per strength",
        "gap_gain_noisy": "generalization gap minus BN's, noisy BN, per strength",
        "lr": "learning-rate grid (sweep mode; empty otherwise)",
        "sweep_val_acc_bn": "sweep mode: final validation accuracy per LR, BN",
        **{f"sweep_val_acc_{arm}": f"sweep mode: final validation accuracy per LR, {arm.replace('_', ' ')}"
           for arm in shift_arm_names([0, 0, 0])},
    },
)
def noisy_bn_generalization(rng: np.random.Generator, *, hidden: list[int] = [64, 64], n_per_class: int = 20,
                            batch_size: int = 32, steps: int = 300, strengths: list[float] = [0.5, 1.0, 2.0],
                            lrs: list[float] = [],
                            lr_grid: list[float] = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2]) -> dict:
    """Does a time-varying shift of the feature distributions during training improve test accuracy?

    Network 64-[hidden]-10, ReLU, BN before every ReLU, SGD, batch `batch_size`, `steps` steps,
    float32, on `n_per_class` digits training images per class (a new stratified subset per
    seed: a small training set, where generalization is the issue). Arms (same initial weights,
    same batches, same noise draws scaled by strength):
    * BN;
    * BN + distribution shift of strength k: at every step every BN output unit j is scaled by
      s_j ~ U(1, 1 + 0.25 k) and shifted by m_j ~ U(-0.5 k, 0.5 k), the same for every example of
      the step (the feature distribution moves, as between "black cats" and "coloured cats");
    * noisy BN of strength k (Santurkar et al. 2018): the same plus an i.i.d. N(0, s_j^2) draw per
      activation (k = 1 is the law of `bnclaims.nn.sample_covariate_noise` with its defaults);
    for every k in `strengths`. Inference: statistics of the whole small training set under the
    final weights (precise BN) and the noise at its mean, the same rule for every arm.
    Learning rates: `lrs` = one per arm (BN, shift arms by strength, noisy arms by strength), fixed
    from a validation sweep on other seeds. With `lrs` empty every arm runs every LR of
    `lr_grid` (sweep mode) and keeps its best by validation accuracy; the series report the
    validation accuracy per LR. Reported: test accuracy and train - test gap.
    """
    split = digits()
    sub_rng, init_rng, order_rng, noise_rng = rng.spawn(4)
    index = np.sort(np.concatenate([sub_rng.permutation(np.flatnonzero(split.y_train == c))[:n_per_class]
                                    for c in range(N_CLASSES)]))
    X, y = split.X_train[index], split.y_train[index]
    n = len(y)
    sizes = [X.shape[1], *hidden, N_CLASSES]
    names = ["bn"] + shift_arm_names(strengths)
    k = np.asarray(strengths, dtype=np.float64)
    specs = [dict()] + [dict(noise=True, mean_shift=0.5 * s, scale_spread=1.0 + 0.25 * s, example_noise=e)
                        for e in (0.0, 1.0) for s in k]
    sweep = not lrs
    if not sweep and len(lrs) != len(names):
        raise ValueError(f"lrs needs one learning rate per arm ({len(names)}: {', '.join(names)}); got {len(lrs)}")
    grid = np.asarray(lr_grid, dtype=np.float64)
    per_arm = [grid if sweep else np.array([lrs[i]]) for i in range(len(names))]
    arms = Arms.concat(*[Arms.make(lr, **spec) for lr, spec in zip(per_arm, specs)])
    starts = np.cumsum([0] + [len(p) for p in per_arm])
    _, params = paired_init(init_rng, sizes, 0, len(arms))
    state = init_state(params)
    plan = batch_plan(order_rng, n, batch_size, steps)
    with np.errstate(all="ignore"):
        for step in range(steps):
            idx = plan[step]
            _, state = train_step(params, state, X[idx], y[idx], arms, arms.lr, noise_rng)
        x_eval = np.concatenate([X, split.X_val, split.X_test])
        logits = predict(params, x_eval, arms, stats_rows=n)
    train_acc = accuracy(logits[:, :n], y)
    val_acc = accuracy(logits[:, n:n + len(split.y_val)], split.y_val)
    test_acc = accuracy(logits[:, n + len(split.y_val):], split.y_test)
    out: dict = {"diverged": float((~finite_arms(params)).sum())}
    for i, name in enumerate(names):
        rows = np.arange(starts[i], starts[i + 1])
        row = int(rows[np.argmax(val_acc[rows])])
        out[f"test_acc_{name}"] = float(test_acc[row])
        out[f"train_acc_{name}"] = float(train_acc[row])
        out[f"gap_{name}"] = float(train_acc[row] - test_acc[row])
        out[f"lr_{name}"] = float(arms.lr[row])
        out[f"sweep_val_acc_{name}"] = val_acc[rows].astype(float) if sweep else np.array([])
    out["lr"] = grid if sweep else np.array([])
    out["strength"] = k
    half = len(strengths)
    for kind, group in (("shift", names[1:1 + half]), ("noisy", names[1 + half:])):
        out[f"test_gain_{kind}"] = np.array([out[f"test_acc_{a}"] - out["test_acc_bn"] for a in group])
        out[f"gap_gain_{kind}"] = np.array([out[f"gap_{a}"] - out["gap_bn"] for a in group])
    return out


# ============================================================================ running averages in training

RUNNING_ARMS = ("bn", "ewa_grad", "ewa_const", "slow_ewa_grad", "slow_ewa_const", "renorm")
RUNNING_TEXT = {"bn": "batch statistics (BN)",
                "ewa_grad": "running averages (momentum 0.1), gradient through the batch part",
                "ewa_const": "running averages (momentum 0.1) as constants",
                "slow_ewa_grad": "slow running averages (momentum 0.01), gradient through the batch part",
                "slow_ewa_const": "slow running averages (momentum 0.01) as constants",
                "renorm": "batch renormalization"}
SIZES = ("large", "small")


def renorm_limits(step: int, steps: int, r_max: float, d_max: float, schedule: list[float]) -> tuple[float, float]:
    """Batch renorm's clipping limits (r_max, d_max) at `step` of `steps` (Ioffe 2017, section 4).

    schedule = [hold, d_full, r_full], fractions of the steps: r_max = 1 and d_max = 0 (r = 1, d = 0:
    plain batch norm) until hold, then linear to d_max at d_full and to r_max at r_full."""
    hold, d_full, r_full = schedule
    t = step / steps

    def ramp(full: float) -> float:
        return 1.0 if full <= hold else float(np.clip((t - hold) / (full - hold), 0.0, 1.0))

    return 1.0 + (r_max - 1.0) * ramp(r_full), d_max * ramp(d_full)


def running_arms(lrs: np.ndarray, kind: str, momentum: float, slow_momentum: float) -> Arms:
    """Arms of one normalization kind (see RUNNING_TEXT) at the learning rates `lrs`."""
    if kind == "bn":
        return Arms.make(lrs)
    if kind == "renorm":
        return Arms.make(lrs, renorm=True)
    return Arms.make(lrs, stat_weight=slow_momentum if kind.startswith("slow") else momentum,
                     through=1.0 if kind.endswith("grad") else 0.0)


@experiment(
    "running-average-bn",
    metrics={
        **{f"test_acc_{arm}_{size}": f"test accuracy, {RUNNING_TEXT[arm]}, {size} batch, LR chosen on validation"
           for arm in RUNNING_ARMS for size in SIZES},
        **{f"failed_{arm}": f"{RUNNING_TEXT[arm]}: grid LRs (both batch sizes) at which training diverged "
                            f"(NaN/inf) or ended below 50 % validation accuracy" for arm in RUNNING_ARMS},
        **{f"failed_{arm}_{size}": f"{RUNNING_TEXT[arm]}: grid LRs at the {size} batch at which training diverged "
                                   f"(NaN/inf) or ended below 50 % validation accuracy"
           for arm in RUNNING_ARMS for size in SIZES},
        **{f"diverged_{arm}": f"{RUNNING_TEXT[arm]}: grid LRs (both batch sizes) at which the weights went NaN/inf"
           for arm in RUNNING_ARMS},
        **{f"weight_growth_{arm}_{size}": f"{RUNNING_TEXT[arm]}, {size} batch, at the LR chosen on validation: "
                                          f"final / initial Frobenius norm of the normalized layers' weights "
                                          f"(geometric mean over layers; inf where diverged)"
           for arm in RUNNING_ARMS for size in SIZES},
        **{f"lr_{arm}_{size}": f"learning rate chosen on validation, {RUNNING_TEXT[arm]}, {size} batch"
           for arm in RUNNING_ARMS for size in SIZES},
        "best_at_edge": "chosen LRs (arms x batch sizes) at the smallest or largest value of the grid",
    },
    series={
        "lr_large": "learning-rate grid at the large batch",
        "lr_small": "learning-rate grid at the small batch (the large-batch grid x small/large batch size)",
        **{f"val_acc_{arm}_{size}": f"final validation accuracy per LR, {RUNNING_TEXT[arm]}, {size} batch "
                                    f"(0 where diverged)" for arm in RUNNING_ARMS for size in SIZES},
    },
)
def running_average_bn(rng: np.random.Generator, *, hidden: list[int] = [64, 64], large_batch: int = 32,
                       small_batch: int = 4, epochs: int = 4, momentum: float = 0.1, slow_momentum: float = 0.01,
                       lr_grid: list[float] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4], r_max: float = 3.0,
                       d_max: float = 5.0, renorm_schedule: list[float] = [0.05, 0.25, 0.4],
                       fail_below: float = 0.5) -> dict:
    """Normalize by exponential running averages during training instead of by batch statistics?

    Network 64-[hidden]-10, ReLU, normalization before every ReLU, SGD, float32, `epochs` epochs
    of the digits training split (1,078 images) at batch `large_batch` and at batch `small_batch`.
    Arms (same initial weights, same batches at a batch size):
    * BN: batch statistics, gradient through them;
    * running averages with gradient: mean = (1 - m) running_mean + m batch_mean (same for the
      variance), updated first and used to normalize; the gradient flows through the m * batch
      part (`bnclaims.nn.running_batchnorm_forward`, grad_through_stats=True);
    * running averages as constants: the same statistics, no gradient through them (what
      inference does, applied in training);
    each with m = `momentum` (PyTorch's default 0.1) and m = `slow_momentum` (Keras' default
    0.99 = 0.01 here);
    * batch renormalization (Ioffe 2017): batch statistics corrected by r = clip(sigma_B / sigma,
      1/r_max, r_max) and d = clip((mu_B - mu) / sigma, -d_max, d_max) from the running averages,
      r and d constants, with the paper's warm-up (`renorm_limits`): r_max = 1, d_max = 0 (plain
      BN) for the first `renorm_schedule[0]` of the steps, then relaxed linearly to reach d_max at
      `renorm_schedule[1]` and r_max at `renorm_schedule[2]` of the steps (Ioffe 2017: 5k, 25k and
      40k steps, read here as fractions of 100k).
    Running statistics start at mean 0, variance 1. Every arm runs every LR of `lr_grid` at the
    large batch and of `lr_grid` x small_batch / large_batch at the small batch (linear scaling);
    the LR with the best final validation accuracy is kept and its test accuracy reported.
    Inference uses each arm's running statistics (for the running-average arms these are the
    statistics they trained with; BN and renorm keep an EMA with momentum 0.1). An LR "fails"
    when the weights go NaN/inf or the final validation accuracy is below `fail_below`.
    """
    split = digits()
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, N_CLASSES]
    init_rng, order_rng = rng.spawn(2)
    _, base = paired_init(init_rng, sizes, 0, 1)
    grid = np.asarray(lr_grid, dtype=np.float64)
    out: dict = {}
    failed = {arm: 0 for arm in RUNNING_ARMS}
    diverged = {arm: 0 for arm in RUNNING_ARMS}
    edge = 0
    x_eval = np.concatenate([split.X_val, split.X_test])
    n_val = len(split.y_val)
    for size, batch_size, order in zip(SIZES, (large_batch, small_batch), order_rng.spawn(2)):
        lrs = grid * (batch_size / large_batch)
        parts = [running_arms(lrs, kind, momentum, slow_momentum) for kind in RUNNING_ARMS]
        arms = Arms.concat(*parts)
        arms = Arms(*[getattr(arms, f) for f in ("lr", "stat_weight", "through", "renorm", "noise", "mean_shift",
                                                 "scale_spread", "example_noise")], r_max, d_max)
        params = tile(base, len(arms))
        state = init_state(params)
        steps = epochs * (len(y) // batch_size)
        plan = batch_plan(order, len(y), batch_size, steps)
        norms0 = [np.sqrt(np.sum(np.square(w, dtype=np.float64), axis=(1, 2))) for w in params["W"][:-1]]
        with np.errstate(all="ignore"):
            for step in range(steps):
                idx = plan[step]
                step_arms = replace(arms, **dict(zip(("r_max", "d_max"),
                                                     renorm_limits(step, steps, r_max, d_max, renorm_schedule))))
                _, state = train_step(params, state, X[idx], y[idx], step_arms, arms.lr)
            logits = predict(params, x_eval, arms, state=state)
            growth = np.exp(np.mean([np.log(np.sqrt(np.sum(np.square(w, dtype=np.float64), axis=(1, 2))) / n0)
                                     for w, n0 in zip(params["W"][:-1], norms0)], axis=0))
            finite = finite_arms(params) & np.all([np.isfinite(s).all(axis=(1, 2)) for s in state["mean"]], axis=0)
        val_acc = np.where(finite, accuracy(logits[:, :n_val], split.y_val), 0.0)
        test_acc = np.where(finite, accuracy(logits[:, n_val:], split.y_test), 0.0)
        out[f"lr_{size}"] = lrs
        for i, arm in enumerate(RUNNING_ARMS):
            rows = np.arange(i * len(lrs), (i + 1) * len(lrs))
            best = int(np.argmax(val_acc[rows]))
            out[f"test_acc_{arm}_{size}"] = float(test_acc[rows[best]])
            out[f"lr_{arm}_{size}"] = float(lrs[best])
            out[f"val_acc_{arm}_{size}"] = val_acc[rows].astype(float)
            failed_here = int(np.sum(~finite[rows] | (val_acc[rows] < fail_below)))
            out[f"failed_{arm}_{size}"] = float(failed_here)
            out[f"weight_growth_{arm}_{size}"] = float(growth[rows[best]]) if finite[rows[best]] else float("inf")
            failed[arm] += failed_here
            diverged[arm] += int(np.sum(~finite[rows]))
            edge += int(best in (0, len(lrs) - 1))
    for arm in RUNNING_ARMS:
        out[f"failed_{arm}"] = float(failed[arm])
        out[f"diverged_{arm}"] = float(diverged[arm])
    out["best_at_edge"] = float(edge)
    return out
