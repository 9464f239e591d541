"""Training dynamics of batch norm's gamma and beta, and BN vs no-norm training, on the digits.

Every network is a `bnclaims.model` MLP x -> [linear -> (BN) -> ReLU] x depth -> linear,
He-initialised, plain SGD (or heavy-ball momentum), softmax cross-entropy, trained by
`model.train_stack`; evaluation uses the running statistics (PyTorch convention). The arms of a
comparison (learning rates, optimisers, batch orders) are one stack, paired: the same initial
weights (from the run's init seed, so a BN and a no-norm net of one size share W) and the same
batches (one `model.batch_plan` per batch order). A diverged arm (non-finite loss) is frozen by
the loop; everything it would record after that step is NaN and its accuracy is 0.

Recorders on the loop measure: gamma, beta of every BN layer at every step (per-step changes,
late fluctuation), block averages of gamma, beta and W (when do they settle), the moments of
every hidden layer on a FIXED probe set at every step, and validation accuracy every few steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from bnclaims import model
from bnclaims.experiments import axes, experiment, spread
from bnclaims.recorders import (BlockAverages, Checkpoints, digits, eval_accuracy, nan_after_divergence, sample_rows,
                                train_on_plan)

N_CLASSES = 10
NETS = {"bn": "BN", "plain": "no-norm"}


def mlp(depth: int, width: int, norm: bool, d_in: int = 64) -> model.MLPConfig:
    """The MLP d_in-width x depth-10 with batch norm before each ReLU (or none), float32."""
    return model.MLPConfig(sizes=(d_in,) + (width,) * depth + (N_CLASSES,), norm="batch" if norm else "none")


# ----------------------------------------------------------------------------- training (model.train_stack)


@dataclass
class Run:
    """What `train` recorded for a stack of K arms (T steps, L hidden layers, D width)."""

    result: model.StackResult
    val_acc: np.ndarray                 # (K,) final, eval mode; 0 if diverged
    test_acc: np.ndarray                # (K,)
    gamma: list[np.ndarray]             # L x (T + 1, K, D): before step 0 .. after the last step (trajectory=True)
    beta: list[np.ndarray]
    probe: dict[str, tuple[np.ndarray, np.ndarray]]   # pre{i}/norm{i}/act{i} -> (mean, std), (T + 1, K, D)
    blocks: dict[str, np.ndarray]       # W{i}, gamma{i}, beta{i} -> (K_blocks, K, ...) block averages
    init: model.Params                  # the initial parameters (one network; every arm starts there)
    curve: np.ndarray                   # (E, K) validation accuracy after `eval_steps` (0 once diverged)

    @property
    def diverged(self) -> np.ndarray:
        return self.result.diverged

    @property
    def eval_steps(self) -> np.ndarray:
        return self.result.eval_steps


def train(init_seed: int, data, config: model.MLPConfig, lrs, momentum=0.0, *, plan: np.ndarray,
          trajectory: bool = False, probe: np.ndarray | None = None, block: int = 0,
          eval_every: int | None = None) -> Run:
    """Train one arm per lr (SGD, or heavy-ball momentum per arm) from the weights of `init_seed`.

    plan: (T, B) batch indices shared by every arm, or (K, T, B) one stream per arm.
    trajectory: record gamma, beta of every BN layer at every step. probe: (P, 64) fixed examples
    whose per-layer moments (batch statistics of the probe) are recorded at every step. block: > 0
    records block averages of W, gamma, beta of the hidden layers. eval_every: validation accuracy
    every `eval_every` steps (and at 0).
    """
    lrs = np.atleast_1d(np.asarray(lrs, dtype=np.float64))
    momenta = np.broadcast_to(np.asarray(momentum, dtype=np.float64), lrs.shape)
    arms = [model.Arm(lr=float(lr), momentum=float(mu)) for lr, mu in zip(lrs, momenta)]
    init = model.init_params(np.random.default_rng(init_seed), config)
    depth = config.n_layers - 1
    bn = [f"{p}{i}" for i in range(depth) for p in ("gamma", "beta")] if config.norm != "none" else []
    trajectory = model.ParamTrajectory(bn) if trajectory else None
    moments = model.ProbeMoments(probe, train=True, initial=True) if probe is not None else None
    blocks = BlockAverages([f"W{i}" for i in range(depth)] + bn, block) if block else None
    result = train_on_plan(config, data.X_train, data.y_train, arms, plan, init,
                           rng=np.random.default_rng(init_seed), record=[h for h in (trajectory, moments, blocks) if h],
                           X_eval=data.X_val if eval_every else None, y_eval=data.y_val if eval_every else None,
                           eval_every=eval_every)
    gamma, beta, probe_moments, block_values = [], [], {}, {}
    if trajectory:
        values = {n: nan_after_divergence(v[:, :, 0], trajectory.steps, result) for n, v in trajectory.arrays().items()}
        gamma, beta = [values[f"gamma{i}"] for i in range(depth)], [values[f"beta{i}"] for i in range(depth)]
    if moments:
        probe_moments = {n: (nan_after_divergence(m, moments.steps, result),
                             np.sqrt(nan_after_divergence(v, moments.steps, result)))
                         for n, (m, v) in moments.moments().items()}
    if blocks:
        arrays = blocks.arrays()
        ends = block * np.arange(1, len(next(iter(arrays.values()))) + 1)
        block_values = {n: nan_after_divergence(v if n.startswith("W") else v[:, :, 0], ends, result)
                        for n, v in arrays.items()}
    return Run(result, eval_accuracy(result, data.X_val, data.y_val), eval_accuracy(result, data.X_test, data.y_test),
               gamma, beta, probe_moments, block_values, init, np.nan_to_num(result.eval_accuracy, nan=0.0))


def shuffled_plan(order_seed: int, data, epochs: int, batch_size: int, order: str = "shuffled") -> np.ndarray:
    """(T, B) batch indices: `epochs` epochs of `order` batches drawn from `order_seed`."""
    n = len(data.y_train)
    return model.batch_plan(np.random.default_rng(order_seed), n, batch_size, epochs * (n // batch_size),
                            order, data.y_train)


def _seeds(rng: np.random.Generator) -> tuple[int, int, int]:
    """(init, batch order, probe) seeds drawn from the experiment's generator."""
    return tuple(int(seed) for seed in rng.integers(0, 2**62, size=3))


# ----------------------------------------------------------------------------- measurements


def relative_step(traj: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean per-step change of a parameter relative to the size of gamma: traj, scale (T + 1, A, D)
    (scale is gamma) -> (A,) mean_{t, j} |theta_{t+1, j} - theta_{t, j}| / mean_{t, j} |gamma_{t, j}|."""
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
    """Fluctuation of (gamma, beta) (T + 1, A, D) over the last `fraction` of training, slow trend removed.

    Per unit, the detrended std of gamma and of beta over the window, summed over units and divided
    by the summed mean |gamma| (the scale of the layer's output): "how far gamma and beta wobble,
    in units of the output's std". Returns (A,), the mean of the gamma and beta values.
    """
    w = max(int(round(fraction * (gamma.shape[0] - 1))), 3)
    g, b = gamma[-w:].astype(np.float64), beta[-w:].astype(np.float64)
    size = np.abs(g).mean(axis=0).sum(axis=-1)
    return 0.5 * (detrended_std(g).sum(axis=-1) + detrended_std(b).sum(axis=-1)) / size


SETTLE_FINAL_FRACTION = 0.25   # the final value: mean over the last quarter of training's blocks
SETTLE_WOBBLE_MULT = 2.0       # a block within 2x the late wobble of the final value counts as arrived


def final_window(k_blocks: int, fraction: float = SETTLE_FINAL_FRACTION) -> int:
    """How many of `k_blocks` block averages make up the final value: the last `fraction`, at least 3."""
    return max(int(round(fraction * k_blocks)), 3)


def late_wobble(flat: np.ndarray, window: int) -> np.ndarray:
    """Size of the late fluctuation of a block-averaged trajectory flat (K, A, P) -> (A,): over the last
    `window` blocks each coordinate's straight-line trend is removed; the wobble is the root-mean-square
    over those blocks of the norm of what is left (how far a block sits from where the trend puts it)."""
    late = flat[-window:]
    return np.sqrt((detrended_std(late) ** 2).sum(axis=-1))


def final_and_wobble(flat: np.ndarray, final_fraction: float = SETTLE_FINAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Where a block-averaged trajectory flat (K, A, P) ends up and how much it still jitters there:
    (final (A, P): the mean of its last `final_window` blocks, `late_wobble` (A,) over the same blocks)."""
    window = final_window(len(flat), final_fraction)
    return flat[-window:].mean(axis=0), late_wobble(flat, window)


def settle_fraction(blocks: np.ndarray, init: np.ndarray, tolerance: float = 0.2,
                    final_fraction: float = SETTLE_FINAL_FRACTION,
                    wobble_mult: float = SETTLE_WOBBLE_MULT) -> np.ndarray:
    """When a parameter reaches, and stays within, `tolerance` of its final value -- up to the late wobble.

    blocks: (K, A, ...) block averages over training; init: (A, ...) the initial value. final = mean
    of the last `final_fraction` of the blocks; d_k = ||block_k - final||, d_0 = ||init - final||;
    nu = `late_wobble` over the same last blocks. The band is sqrt((tolerance * d_0)^2 + (wobble_mult
    * nu)^2): with no wobble "80 % of the way covered"; a parameter that keeps jittering at constant
    lr counts as arrived once its distance to the final value is no more than its own late jitter
    explains (in many dimensions that norm barely varies, so 2 nu is rarely exceeded by wobble alone).
    Returns (A,): (k + 1) / K for the first block k from which every later block is inside the band;
    non-finite (diverged) arms get 1.0 (never settled).
    """
    k_blocks, a = blocks.shape[:2]
    flat = blocks.reshape(k_blocks, a, -1).astype(np.float64)
    final, wobble = final_and_wobble(flat, final_fraction)
    d = np.linalg.norm(flat - final, axis=2)                         # (K, A)
    d0 = np.linalg.norm(init.reshape(a, -1).astype(np.float64) - final, axis=1)
    band = np.sqrt((tolerance * d0) ** 2 + (wobble_mult * wobble) ** 2)
    outside = ~(d <= band)                                            # NaN counts as outside
    # last block that is outside the band; settled from the block after it
    last_out = np.where(outside.any(axis=0), k_blocks - 1 - np.argmax(outside[::-1], axis=0), -1)
    frac = np.minimum((last_out + 2) / k_blocks, 1.0)
    frac[~np.isfinite(d0) | ~np.isfinite(d).all(axis=0) | ~np.isfinite(band)] = 1.0
    return frac


def unit_directions(W: np.ndarray) -> np.ndarray:
    """Columns of W (..., d_in, D) scaled to unit length: what a BN layer's output depends on."""
    return W / np.linalg.norm(W, axis=-2, keepdims=True)


def probe_drift(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-step shift of a layer's distribution on the probe, in units of its std: mean, std
    (T + 1, A, D) -> (T, A) sum_j (|d mean_j| + |d std_j|) / sum_j std_j."""
    change = np.abs(np.diff(mean, axis=0)) + np.abs(np.diff(std, axis=0))
    return change.sum(axis=2) / std[:-1].sum(axis=2)


def per_epoch(values: np.ndarray, steps_per_epoch: int) -> np.ndarray:
    """(T, ...) -> (T // steps_per_epoch, ...) means over whole epochs."""
    e = values.shape[0] // steps_per_epoch
    return values[: e * steps_per_epoch].reshape((e, steps_per_epoch) + values.shape[1:]).mean(axis=1)


def log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x over the finite, positive points (NaN if < 3)."""
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def lr_name(lr: float) -> str:
    """0.1 -> 'lr0p1', 0.03 -> 'lr0p03', 10 -> 'lr10': a metric-name-safe learning rate."""
    return "lr" + f"{lr:g}".replace(".", "p").replace("-", "m")


def lr_axis(lrs) -> dict[str, str]:
    """{'lr0p1': 'lr 0.1', ...}: a learning-rate axis for `axes` and `spread`."""
    return {lr_name(lr): f"lr {lr:g}" for lr in lrs}


# ----------------------------------------------------------------------------- 1. probe drift

DRIFT = "per-step shift of {what} distribution on the probe (sum |d mean| + |d std| over units / sum std)"


@experiment(
    "bn-vs-plain-probe-drift",
    metrics={
        "drift_bn_l1": "BN net, common lr: " + DRIFT.format(what="layer 1's output") + ", mean over training",
        "drift_plain_l1": "no-norm net, common lr: the same for layer 1's pre-activation",
        "drift_bn_l2": "BN net, common lr: layer 2 output",
        "drift_plain_l2": "no-norm net, common lr: layer 2 pre-activation",
        "drift_bn_input_l1": "BN net, common lr: the same drift for the BN layer's INPUT (before normalizing), layer 1",
        "drift_bn_input_l2": "BN net, common lr: BN input, layer 2",
        **axes({"drift_bn_{lr}": "BN net, {lr}: drift of the normalized output, mean of layers 1 and 2",
                "drift_plain_{lr}": "no-norm net, {lr}: drift of the pre-activation, mean of layers 1 and 2"},
               lr={"common": "common lr", "best": "its own best lr"}),
        **axes({"val_acc[net]": "{net} net, common lr: final validation accuracy",
                "val_acc_{net}_best": "{net} net at its best lr: final validation accuracy"}, net=NETS),
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
    `probe_size` training examples; the drift is sum_j (|change of mean_j| + |change of std_j|) /
    sum_j std_j of what each layer passes on: the distribution shift per step in units of its own
    spread. Scale: digits, 20 epochs, batch 32.
    """
    data = digits()
    init_seed, order_seed, probe_seed = _seeds(rng)
    plan = shuffled_plan(order_seed, data, epochs, batch_size)
    probe = data.X_train[sample_rows(np.random.default_rng(probe_seed), len(data.y_train), probe_size)]
    bn = train(init_seed, data, mlp(2, width, True), [lr_common, lr_bn_best], plan=plan, probe=probe)
    plain = train(init_seed, data, mlp(2, width, False), [lr_common, lr_plain_best], plan=plan, probe=probe)
    d_bn = [probe_drift(*bn.probe[f"norm{i}"]) for i in range(2)]           # L x (T, 2)
    d_plain = [probe_drift(*plain.probe[f"pre{i}"]) for i in range(2)]
    d_input = [probe_drift(*bn.probe[f"pre{i}"]) for i in range(2)]
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
        "epoch": np.arange(1, len(plan) // spe + 1, dtype=float),
        "bn_l1": per_epoch(d_bn[0][:, 0], spe), "plain_l1": per_epoch(d_plain[0][:, 0], spe),
        "bn_l2": per_epoch(d_bn[1][:, 0], spe), "plain_l2": per_epoch(d_plain[1][:, 0], spe),
        "bn_input_l2": per_epoch(d_input[1][:, 0], spe),
    }


# ----------------------------------------------------------------------------- 2. step size vs lr

STEP_LRS = (0.001, 0.00316, 0.01, 0.0316, 0.1)
OPTIMIZERS = {"sgd": "SGD", "mom": "SGD + momentum 0.9"}
GB = {"gb": "(|d gamma| + |d beta|) / 2", "gamma": "|d gamma|", "beta": "|d beta|"}


@experiment(
    "gamma-beta-step-vs-lr",
    metrics=axes({
        "slope_{param}_{opt}": "{opt}: slope of log(mean per-step {param}) against log(lr) over the lr grid",
        "step_{param}_{opt}_lr0p01": "{opt} at lr 0.01: mean per-step {param}",
        "n_diverged": "number of arms whose loss became non-finite",
    }, param=GB, opt=OPTIMIZERS),
    series=axes({
        "lr": "learning rate (x axis)",
        "step_{param}_{opt}": "mean per-step {param}, {opt}",
        "val_acc[opt]": "final validation accuracy, {opt}",
    }, param={"gamma": "|d gamma|", "beta": "|d beta|"}, opt=OPTIMIZERS),
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
    data = digits()
    init_seed, order_seed, _ = _seeds(rng)
    plan = shuffled_plan(order_seed, data, epochs, batch_size)
    k = len(STEP_LRS)
    rec = train(init_seed, data, mlp(2, width, True), np.array(STEP_LRS * 2), np.array([0.0] * k + [momentum] * k),
                plan=plan, trajectory=True)
    dg = np.mean([np.abs(np.diff(g, axis=0)).mean(axis=(0, 2)) for g in rec.gamma], axis=0)
    db = np.mean([np.abs(np.diff(b, axis=0)).mean(axis=(0, 2)) for b in rec.beta], axis=0)
    dg, db = np.where(rec.diverged, np.nan, dg), np.where(rec.diverged, np.nan, db)
    steps = {"gb": 0.5 * (dg + db), "gamma": dg, "beta": db}                 # each (2k,): SGD arms, then momentum
    grid, mid = np.array(STEP_LRS), STEP_LRS.index(0.01)
    by_opt = {param: value.reshape(2, k) for param, value in steps.items()}
    slopes = [[log_slope(grid, row) for row in by_opt[param]] for param in GB]
    return {
        **spread("slope_{param}_{opt}", slopes, param=GB, opt=OPTIMIZERS),
        **spread("step_{param}_{opt}_lr0p01", [by_opt[param][:, mid] for param in GB], param=GB, opt=OPTIMIZERS),
        "n_diverged": float(rec.diverged.sum()), "lr": grid,
        **spread("step_{param}_{opt}", [by_opt["gamma"], by_opt["beta"]], param=("gamma", "beta"), opt=OPTIMIZERS),
        **spread("val_acc[opt]", rec.val_acc.reshape(2, k), opt=OPTIMIZERS),
    }


# ----------------------------------------------------------------------------- 3. lr x batch order

GRID_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
DIVERGED_FLUCT = 1000.0  # the fluctuation metric of a diverged arm (gamma ran off to inf): "unbounded"
ORDERS = {"shuffled": "shuffled", "sorted": "class-sorted"}   # metric name: batch order of `model.batch_plan`
FLUCT = (f"detrended std of gamma and beta over the last 25 % of training / mean |gamma| ({DIVERGED_FLUCT:g} if "
         f"diverged: unbounded)")


def _fluct(record: Run) -> np.ndarray:
    """Late-training detrended fluctuation of gamma and beta (last 25 %), mean over BN layers: (A,)."""
    return np.mean([late_fluctuation(g, b) for g, b in zip(record.gamma, record.beta)], axis=0)


@experiment(
    "gamma-beta-lr-order-grid",
    metrics=axes({
        "relstep_gamma_{order}_{lr}": "{order} batches, {lr}: mean per-step |d gamma| / mean |gamma|",
        "relstep_beta_{order}_{lr}": "{order} batches, {lr}: mean per-step |d beta| / mean |gamma|",
        "relstep_gb_{order}_{lr}": "{order} batches, {lr}: mean per-step change of gamma and beta, "
                                   "(|d gamma| + |d beta|) / 2 / mean |gamma|",
        "fluct_{order}_{lr}": "{order} batches, {lr}: " + FLUCT,
        "val_acc_{order}_{lr}": "{order} batches, {lr}: final validation accuracy (0 if diverged)",
        "n_diverged": "number of arms whose loss became non-finite",
    }, order=list(ORDERS), lr=lr_axis(GRID_LRS)),
    series=axes({
        "lr": "learning rate (x axis)",
        "relstep_gamma[order]": "per-step |d gamma| / |gamma|, {order} batches",
        "relstep_beta[order]": "per-step |d beta| / |gamma|, {order} batches",
        "fluct[order]": "late detrended fluctuation of gamma, beta, {order} (NaN if diverged)",
        "val_acc[order]": "final validation accuracy, {order}",
        "epoch": "epoch number (x axis of the per-epoch curves)",
        "relstep_epoch_{order}_lr0p1": "per-step |d gamma| / |gamma|, mean over each epoch, {order}, lr 0.1",
    }, order=ORDERS),
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
    data = digits()
    init_seed, order_seed, _ = _seeds(rng)
    n = len(data.y_train)
    steps = epochs * (n // batch_size)
    order_rngs = np.random.default_rng(order_seed).spawn(2)
    streams = [model.batch_plan(r, n, batch_size, steps, o, data.y_train) for r, o in zip(order_rngs, ORDERS.values())]
    k = len(GRID_LRS)
    rec = train(init_seed, data, mlp(2, width, True), np.array(GRID_LRS * 2),
                plan=np.stack([streams[0]] * k + [streams[1]] * k), trajectory=True)     # (2k, T, B)
    g = np.mean([relative_step(gam, gam) for gam in rec.gamma], axis=0)
    b = np.mean([relative_step(bet, gam) for bet, gam in zip(rec.beta, rec.gamma)], axis=0)
    fl = np.where(rec.diverged, np.nan, _fluct(rec))
    acc = np.where(rec.diverged, 0.0, rec.val_acc)
    spe = n // batch_size
    mid = GRID_LRS.index(0.1)
    # (T, A): per-step |d gamma| summed over units and layers / summed |gamma|
    change = sum(np.abs(np.diff(gam, axis=0)).sum(axis=2) for gam in rec.gamma)
    size = sum(np.abs(gam[:-1]).sum(axis=2) for gam in rec.gamma)
    curve = per_epoch(change / size, spe)
    by_order = {"relstep_gamma": g, "relstep_beta": b, "relstep_gb": 0.5 * (g + b),
                "fluct": np.where(rec.diverged, DIVERGED_FLUCT, fl), "val_acc": acc}
    out: dict = {"n_diverged": float(rec.diverged.sum()), "lr": np.array(GRID_LRS),
                 "epoch": np.arange(1, steps // spe + 1, dtype=float),
                 **spread("relstep_epoch_{order}_lr0p1", curve[:, [mid, k + mid]].T, order=ORDERS)}
    for name, values in by_order.items():
        out.update(spread(f"{name}_{{order}}_{{lr}}", values.reshape(2, k), order=ORDERS, lr=lr_axis(GRID_LRS)))
    for name, values in (("relstep_gamma", g), ("relstep_beta", b), ("fluct", fl), ("val_acc", acc)):
        out.update(spread(f"{name}[order]", values.reshape(2, k), order=ORDERS))
    return out


# ----------------------------------------------------------------------------- 4. settling

SETTLE_LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SETTLE_TOLERANCE = 0.2
UNIT_MIN_WAY = 10.0   # a unit's way must be >= 10x its late wobble: then the band is mostly 0.2 x its way
UNIT_BINS = 8


def unit_outputs(settle: np.ndarray, way: np.ndarray, wobble: np.ndarray) -> dict:
    """The per-unit metrics and series of `settling` from `unit_settling`'s arrays.

    Only units whose way is at least UNIT_MIN_WAY times their wobble are compared. When fewer than
    2 x UNIT_BINS are (a diverged arm, a run too short to move), the metrics are the finite "no
    relation" values -- rho 0, both quarters never settled (1), ways equal (1) -- so that the run's
    other outputs still count; ``unit_count_lr0p1`` says how many units were compared.
    """
    keep = way >= UNIT_MIN_WAY * wobble             # NaN is never kept
    if keep.sum() < 2 * UNIT_BINS:
        return {"unit_settle_rho_lr0p1": 0.0, "unit_settle_far_lr0p1": 1.0, "unit_settle_near_lr0p1": 1.0,
                "unit_way_far_over_near_lr0p1": 1.0, "unit_count_lr0p1": float(keep.sum()),
                "unit_way_octile": np.full(UNIT_BINS, np.nan), "unit_settle_by_way": np.full(UNIT_BINS, np.nan)}
    settle, way = settle[keep], way[keep]
    order = np.argsort(way, kind="stable")
    quarter = len(order) // 4
    near, far = order[:quarter], order[-quarter:]
    groups = np.array_split(order, UNIT_BINS)
    return {
        "unit_settle_rho_lr0p1": float(stats.spearmanr(way, settle).statistic),
        "unit_settle_far_lr0p1": float(settle[far].mean()),
        "unit_settle_near_lr0p1": float(settle[near].mean()),
        "unit_way_far_over_near_lr0p1": float(way[far].mean() / way[near].mean()),
        "unit_count_lr0p1": float(keep.sum()),
        "unit_way_octile": np.array([way[g].mean() for g in groups]),
        "unit_settle_by_way": np.array([settle[g].mean() for g in groups]),
    }


def unit_settling(blocks: dict, init: dict, arm: int, layers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit j of every BN layer, the pair (gamma_j, beta_j) at arm `arm` as its own parameter: (settling
    fraction by `settle_fraction`, way = ||start - final||, late wobble), each (units,)."""
    settle, way, wobble = [], [], []
    for i in layers:
        traj = np.stack([blocks[f"gamma{i}"][:, arm], blocks[f"beta{i}"][:, arm]], axis=-1).astype(np.float64)
        start = np.stack([init[f"gamma{i}"][arm], init[f"beta{i}"][arm]], axis=-1).astype(np.float64)  # (D, 2)
        final, late = final_and_wobble(traj)
        settle.append(settle_fraction(traj, start))           # traj (K, D, 2): the D units as D "arms"
        way.append(np.linalg.norm(start - final, axis=-1))
        wobble.append(late)
    return np.concatenate(settle), np.concatenate(way), np.concatenate(wobble)


@experiment(
    "gamma-beta-settling",
    metrics={**axes({
        "settle_gb[lr]": f"{{lr}}: fraction of training after which gamma and beta stay within {SETTLE_TOLERANCE:g} "
                         f"of their initial distance to the final value (mean of the last quarter), widened by "
                         f"twice their late detrended wobble (mean over gamma, beta of both BN layers; 1 = never)",
        "settle_wdir[lr]": "{lr}: the same for the unit directions of W (columns scaled to length 1), mean over "
                           "both BN layers",
        "fluct[lr]": "{lr}: " + FLUCT,
        "val_acc[lr]": "{lr}: final validation accuracy (0 if diverged)",
        "diverged[lr]": "{lr}: 1 if the loss became non-finite",
    }, lr=lr_axis(SETTLE_LRS)),
        "unit_settle_rho_lr0p1": "lr 0.1, per unit (one gamma, beta pair) of both BN layers: Spearman correlation "
                                 "between how far the pair travels (distance from its start (1, 0) to its final "
                                 "value) and when it settles (the same criterion, per unit); units whose way is "
                                 f"under {UNIT_MIN_WAY:g}x their late wobble are left out",
        "unit_settle_far_lr0p1": "lr 0.1: mean settling fraction of the quarter of those units with the longest way",
        "unit_settle_near_lr0p1": "lr 0.1: mean settling fraction of the quarter with the shortest way",
        "unit_way_far_over_near_lr0p1": "lr 0.1: mean way of the longest-way quarter / that of the shortest-way quarter",
        "unit_count_lr0p1": "lr 0.1: number of units compared (of 2 x width)",
    },
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
        "unit_way_octile": f"lr 0.1: units sorted by how far their gamma, beta travel, in {UNIT_BINS} equal groups: "
                           "each group's mean way (x axis)",
        "unit_settle_by_way": "lr 0.1: each group's mean settling fraction",
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
    detrended block-to-block jitter over the last quarter): it has covered 80 % of its way, or is as
    close as its constant-lr jitter lets it be, and does not leave again (`settle_fraction`). Also
    the late-training detrended fluctuation of gamma, beta. Per unit at lr 0.1 (`unit_settling`): each
    pair (gamma_j, beta_j) settled by the same rule, against its way from (1, 0) to its final value
    (rank correlation, longest- against shortest-way quarter, 8 distance groups; units whose way is
    under 10x their late wobble left out). Scale: digits, 20 epochs (660 steps), batch 32.
    """
    data = digits()
    init_seed, order_seed, _ = _seeds(rng)
    lrs = np.array(SETTLE_LRS)
    rec = train(init_seed, data, mlp(2, width, True), lrs, plan=shuffled_plan(order_seed, data, epochs, batch_size),
                trajectory=True, block=block_steps)
    layers, blocks = range(len(rec.gamma)), rec.blocks
    init = {name: np.broadcast_to(value, (len(lrs),) + value.shape) for name, value in rec.init.items()}

    def settle(name, transform=lambda w: w):
        return np.mean([settle_fraction(transform(blocks[f"{name}{i}"]), transform(init[f"{name}{i}"]))
                        for i in layers], axis=0)

    s_gamma, s_beta = settle("gamma"), settle("beta")
    s_gb, s_wdir = 0.5 * (s_gamma + s_beta), settle("W", unit_directions)
    fl = _fluct(rec)
    mid = SETTLE_LRS.index(0.1)

    def rel_dist(blocks, init):
        """Distance curve at lr 0.1, relative to the initial distance (the settling criterion's scale)."""
        flat = blocks[:, mid].reshape(blocks.shape[0], -1).astype(np.float64)
        final = flat[-final_window(flat.shape[0]):].mean(axis=0)
        return np.linalg.norm(flat - final, axis=1) / np.linalg.norm(init[mid].ravel() - final)

    dist_gb = np.mean([rel_dist(blocks[f"gamma{i}"], init[f"gamma{i}"]) for i in layers]
                      + [rel_dist(blocks[f"beta{i}"], init[f"beta{i}"]) for i in layers], axis=0)
    dist_w = np.mean([rel_dist(unit_directions(blocks[f"W{i}"]), unit_directions(init[f"W{i}"])) for i in layers],
                     axis=0)
    k_blocks = blocks["gamma0"].shape[0]
    lr = lr_axis(SETTLE_LRS)
    units = unit_outputs(*unit_settling(blocks, init, mid, layers))
    return {
        **units,
        **spread("settle_gb[lr]", s_gb, lr=lr), **spread("settle_wdir[lr]", s_wdir, lr=lr),
        **spread("fluct[lr]", np.where(rec.diverged, DIVERGED_FLUCT, fl), lr=lr),
        **spread("val_acc[lr]", np.where(rec.diverged, 0.0, rec.val_acc), lr=lr),
        **spread("diverged[lr]", rec.diverged.astype(float), lr=lr),
        "lr": lrs, "settle_gb": s_gb, "settle_gamma": s_gamma, "settle_beta": s_beta,
        "settle_wdir": s_wdir, "settle_wraw": settle("W"),
        "fluct": np.where(rec.diverged, np.nan, fl), "val_acc": np.where(rec.diverged, np.nan, rec.val_acc),
        "diverged": rec.diverged.astype(float),
        "progress": np.arange(1, k_blocks + 1) / k_blocks, "dist_gb_lr0p1": dist_gb, "dist_wdir_lr0p1": dist_w,
    }


# ----------------------------------------------------------------------------- 5. does training cancel BN?

CANCEL_LRS = (0.03, 0.1, 0.3)
IDENTITY_SCALE = np.log(1.2)   # |log(gamma / sigma)| below this ...
IDENTITY_SHIFT = 0.2           # ... and |beta - mu| / sigma below this: the unit undoes its normalization


def _gb(params: model.Params, name: str) -> np.ndarray:
    """A per-feature parameter as (arms, D) from the stack layout (arms, 1, D), or (D,) for one network."""
    value = params[name]
    return value[:, 0] if value.ndim == 3 else value


def population_moments(params: model.Params, config: model.MLPConfig, X: np.ndarray):
    """Mean and std, per arm and unit, of every BN layer's input over all of X (one batch): L x (arms, D).

    (In training mode on all of X each BN layer normalizes by X's own statistics, so layer i's input
    is what it is when every earlier layer uses the population statistics of X.)
    """
    record: dict = {}
    stack = params["W0"].shape[:-2]
    state = model.init_stack_state(config, stack[0]) if stack else model.init_state(config)
    with np.errstate(all="ignore"):
        model.forward(params, state, X, config, True, record=record)
    pre = [record[f"pre{i}"].astype(np.float64) for i in range(config.n_layers - 1)]
    return [p.mean(axis=-2) for p in pre], [p.std(axis=-2) for p in pre]


def forward_population(params: model.Params, config: model.MLPConfig, X_stats: np.ndarray, X: np.ndarray):
    """Logits (arms, N, 10) of X in eval mode with each BN layer's running statistics replaced by the
    population statistics (biased variance) of its input over X_stats."""
    means, stds = population_moments(params, config, X_stats)
    state = {}
    for i, (m, s) in enumerate(zip(means, stds)):
        state[f"running_mean{i}"], state[f"running_var{i}"] = m[..., None, :], (s * s)[..., None, :]
    with np.errstate(all="ignore"):
        return model.forward(params, state, X, config, False)[0]


def forward_bn_removed(params: model.Params, config: model.MLPConfig, X: np.ndarray) -> np.ndarray:
    """Logits of the same weights with every BN layer replaced by the identity."""
    plain = {name: value for name, value in params.items() if not name.startswith(("gamma", "beta"))}
    with np.errstate(all="ignore"):
        return model.forward(plain, {}, X, replace(config, norm="none"), False)[0]


def identity_mismatch(params: model.Params, config: model.MLPConfig, X: np.ndarray):
    """Per unit, how far each BN layer is from undoing its normalization (gamma = sigma, beta = mu).

    Returns (scale, shift), each (arms, L * D) (or (L * D,) for one network): |log(gamma / sigma)|
    (inf where gamma <= 0) and |beta - mu| / sigma, with mu, sigma the layer input's mean and std over X.
    """
    means, stds = population_moments(params, config, X)
    scale, shift = [], []
    for i in range(len(means)):
        g, b = _gb(params, f"gamma{i}").astype(np.float64), _gb(params, f"beta{i}")
        with np.errstate(divide="ignore", invalid="ignore"):
            scale.append(np.where(g > 0, np.abs(np.log(g / stds[i])), np.inf))
        shift.append(np.abs(b - means[i]) / stds[i])
    return np.concatenate(scale, axis=-1), np.concatenate(shift, axis=-1)


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@experiment(
    "bn-cancel-check",
    metrics=axes({
        "frac_identity[lr]": "{lr}: fraction of BN units whose trained gamma, beta undo the normalization "
                             "(|log(gamma/sigma)| < log 1.2 and |beta - mu|/sigma < 0.2)",
        "frac_identity_init": "the same fraction at initialization (gamma = 1, beta = 0)",
        "mismatch[lr]": "{lr}: median over units of |log(gamma/sigma)| + |beta - mu|/sigma after training "
                        "(0 = the layer is the identity)",
        "mismatch_init": "the same median at initialization",
        "acc_bn[lr]": "{lr}: test accuracy of the trained BN net",
        "acc_removed[lr]": "{lr}: test accuracy of the same weights with BN replaced by the identity",
        "agreement[lr]": "{lr}: fraction of test predictions the two agree on",
    }, lr=lr_axis(CANCEL_LRS)),
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
    data = digits()
    init_seed, order_seed, _ = _seeds(rng)
    config = mlp(2, width, True)
    run = train(init_seed, data, config, CANCEL_LRS, plan=shuffled_plan(order_seed, data, epochs, batch_size))
    params = run.result.params
    scale0, shift0 = identity_mismatch(run.init, config, data.X_train)
    scale1, shift1 = identity_mismatch(params, config, data.X_train)
    logits_bn = forward_population(params, config, data.X_train, data.X_test)
    logits_removed = forward_bn_removed(params, config, data.X_test)
    acc_bn = model.logits_accuracy(logits_bn, data.y_test)
    acc_removed = model.logits_accuracy(logits_removed, data.y_test)
    agree = (logits_bn.argmax(axis=2) == logits_removed.argmax(axis=2)).mean(axis=1)
    identity = lambda sc, sh: ((sc < IDENTITY_SCALE) & (sh < IDENTITY_SHIFT)).mean(axis=-1)  # noqa: E731
    frac1 = identity(scale1, shift1)
    mid = CANCEL_LRS.index(0.1)
    means0, stds0 = population_moments(run.init, config, data.X_train)
    means1, stds1 = population_moments(params, config, data.X_train)
    g1 = np.concatenate([_gb(params, f"gamma{i}")[mid] for i in range(2)])
    b1 = np.concatenate([_gb(params, f"beta{i}")[mid] for i in range(2)])
    s1, m1 = np.concatenate([s[mid] for s in stds1]), np.concatenate([m[mid] for m in means1])
    s0, m0 = np.concatenate(stds0), np.concatenate(means0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio_end = np.log(np.abs(g1) / s1)
    lr, q = lr_axis(CANCEL_LRS), np.array(QUANTILES)
    return {
        "frac_identity_init": identity(scale0, shift0), "mismatch_init": np.median(scale0 + shift0, axis=-1),
        **spread("frac_identity[lr]", frac1, lr=lr),
        **spread("mismatch[lr]", np.median(scale1 + shift1, axis=-1), lr=lr),
        **spread("acc_bn[lr]", acc_bn, lr=lr), **spread("acc_removed[lr]", acc_removed, lr=lr),
        **spread("agreement[lr]", agree, lr=lr),
        "quantile": q,
        "log_gamma_over_sigma_init": np.quantile(np.log(1.0 / s0), q),
        "log_gamma_over_sigma_end": np.quantile(log_ratio_end, q),
        "shift_init": np.quantile((0.0 - m0) / s0, q),
        "shift_end": np.quantile((b1 - m1) / s1, q),
        "lr": np.array(CANCEL_LRS), "acc_bn": acc_bn, "acc_removed": acc_removed, "frac_identity": frac1,
    }


# ----------------------------------------------------------------------------- first-layer updates, batch by batch

UPDATE_SOURCES = {"input": "the batch's input statistics (each input feature's batch mean and variance)",
                  "label": "the batch's class counts", "both": "the input statistics and the class counts together"}


def first_layer_gradients(params: model.Params, config: model.MLPConfig, X: np.ndarray, y: np.ndarray,
                          batches: np.ndarray, chunk: int = 500) -> np.ndarray:
    """(B, d_in * H) float64: the first layer's weight gradient on each batch of `batches` (B, n) at the
    fixed `params` of one network (training mode) -- the direction of the SGD step that batch would take."""
    one = model.stack_params([params])                        # the stack layout, one arm
    out = []
    for start in range(0, len(batches), chunk):
        rows = batches[start:start + chunk]
        stack = {name: np.broadcast_to(v, (len(rows),) + v.shape[1:]) for name, v in one.items()}   # views, no copies
        with np.errstate(all="ignore"):
            grads = model.loss_and_grads(stack, model.init_stack_state(config, len(rows)), X[rows], y[rows], config)[1]
        out.append(grads["W0"].reshape(len(rows), -1).astype(np.float64))
    return np.concatenate(out)


def held_out_r2(target: np.ndarray, predictors: np.ndarray, fit: int) -> float:
    """R^2 on held-out rows of the least-squares linear map (with intercept) from predictors (B, P) to
    target (B, Q), fitted on the first `fit` rows: 1 - SSE / SS about the fit rows' mean, on the rest."""
    A = np.hstack([predictors, np.ones((len(predictors), 1))])
    coef = np.linalg.pinv(A[:fit]) @ target[:fit]            # P + 1 columns: the pseudo-inverse is the cheap side
    rest = target[fit:]
    residual = rest - A[fit:] @ coef
    spread = rest - target[:fit].mean(axis=0)
    return float(1.0 - np.einsum("ij,ij->", residual, residual) / np.einsum("ij,ij->", spread, spread))


def batch_statistics(X: np.ndarray, y: np.ndarray, batches: np.ndarray) -> dict[str, np.ndarray]:
    """{source: (B, P) predictors} of every batch of `batches` (B, n), one entry per UPDATE_SOURCES:
    each input feature's batch mean and variance, the class counts, and both side by side."""
    xb = X[batches].astype(np.float64)                                              # (B, n, d_in)
    inputs = np.hstack([xb.mean(axis=1), xb.var(axis=1)])
    counts = (y[batches][..., None] == np.arange(N_CLASSES)).sum(axis=1).astype(np.float64)
    return {"input": inputs, "label": counts, "both": np.hstack([inputs, counts])}


def update_sources(params: model.Params, config: model.MLPConfig, X: np.ndarray, y: np.ndarray,
                   batches: np.ndarray, sources: dict[str, np.ndarray], fit: int) -> np.ndarray:
    """(batch share, R^2 of each of UPDATE_SOURCES) of the first-layer gradients over `batches` at fixed params.

    batch share = E||G_b - mean G||^2 / E||G_b||^2: the part of a step's first-layer update that differs
    from batch to batch (SGD moves W by -lr G_b, so the same fraction of the step). R^2: how much of
    G_b - mean G a linear function of the batch's statistics (`sources`, from `batch_statistics`)
    predicts on held-out batches."""
    G = first_layer_gradients(params, config, X, y, batches)
    if not np.isfinite(G).all():
        return np.full(1 + len(UPDATE_SOURCES), np.nan)
    mean = G.mean(axis=0)
    total = np.einsum("ij,ij->", G, G)
    share = 1.0 - len(G) * (mean @ mean) / total                    # E||G_b - mean||^2 / E||G_b||^2
    return np.array([share] + [held_out_r2(G, sources[s], fit) for s in UPDATE_SOURCES])


@experiment(
    "first-layer-update-sources",
    metrics=axes({
        "batch_share[net]": "{net} MLP: share of a step's first-layer weight update that differs from one mini-batch "
                            "to the next, E||G_b - mean G||^2 / E||G_b||^2 (mean over the checkpoints)",
        "{source}_r2_{net}": "{net} MLP: held-out R^2 of the batch-to-batch part of the first-layer update on "
                            "{source} (linear least squares; mean over the checkpoints)",
        "val_acc[net]": "{net} MLP: validation accuracy at the end of training",
    }, source=UPDATE_SOURCES, net=NETS),
    series=axes({
        "check_epoch": "checkpoint (epochs of training; 0 = initialization)",
        "share_curve[net]": "batch share of the first-layer update at each checkpoint, {net}",
        "{source}_r2_curve_{net}": "held-out R^2 on {source} at each checkpoint, {net}",
    }, source=UPDATE_SOURCES, net=NETS),
)
def first_layer_update_sources(rng: np.random.Generator, *, depth: int = 3, width: int = 64, lr: float = 0.1,
                               epochs: int = 10, batch_size: int = 32, check_epochs: int = 2,
                               batches: int = 3000) -> dict:
    """Does the first layer's update change with each mini-batch, and is that change driven by the batch's
    input distribution?

    An MLP 64-width x depth-10 without normalization and the same with BN before every ReLU (same initial
    weights, same batches), SGD at `lr`, batch `batch_size`, `epochs` epochs on the digits. Every
    `check_epochs` epochs (and at initialization), with the weights fixed, the first layer's weight
    gradient G_b -- the direction of the SGD step -- is computed on each of `batches` random
    mini-batches of `batch_size` training images (the same batches at every checkpoint and for both
    nets). Measured (`update_sources`): the share of E||G_b||^2 that is batch-to-batch variation,
    and how much of that variation a linear function of the batch's statistics predicts on held-out
    batches (fitted on two thirds of them): the mean and variance of each of the 64 input features
    in the batch, the batch's class counts, or both.
    """
    data = digits()
    init_seed, order_seed, batch_seed = _seeds(rng)
    n = len(data.y_train)
    draws = np.argsort(np.random.default_rng(batch_seed).random((batches, n)), axis=1)[:, :batch_size]
    fit = 2 * batches // 3
    sources = batch_statistics(data.X_train, data.y_train, draws)     # the same batches at every checkpoint
    plan = shuffled_plan(order_seed, data, epochs, batch_size)
    out: dict = {"check_epoch": np.arange(0, epochs + 1, check_epochs, dtype=float)}
    for net in NETS:
        config = mlp(depth, width, net == "bn")
        def measure(_, params, alive, config=config):
            if not alive[0]:
                return np.full(1 + len(UPDATE_SOURCES), np.nan)
            return update_sources(model.arm_params(params, 0), config, data.X_train, data.y_train, draws, sources,
                                  fit)

        hook = Checkpoints(check_epochs * (n // batch_size), measure)
        result = train_on_plan(config, data.X_train, data.y_train, [lr],
                               plan, model.init_params(np.random.default_rng(init_seed), config), record=hook)
        curves = hook.values(len(out["check_epoch"]))                                 # (checks, 1 + sources)
        out[f"batch_share_{net}"], out[f"share_curve_{net}"] = float(curves[:, 0].mean()), curves[:, 0]
        for k, source in enumerate(UPDATE_SOURCES, start=1):
            out[f"{source}_r2_{net}"], out[f"{source}_r2_curve_{net}"] = float(curves[:, k].mean()), curves[:, k]
        out[f"val_acc_{net}"] = float(eval_accuracy(result, data.X_val, data.y_val)[0])
    return out
