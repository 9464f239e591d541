"""Noise and drift in batch norm's statistics: injected covariate shift ("noisy BN") and
normalizing by running averages during training.

* ``noisy-bn-speed`` -- does limiting the variation of hidden-layer distributions speed up training?
  No norm vs BN vs "noisy" BN (Santurkar et al. 2018, arXiv:1805.11604, section 2.1).
* ``noisy-bn-generalization`` -- does a time-varying shift of the feature distributions during
  training improve test accuracy on a small training set?
* ``running-average-bn`` -- batch statistics vs exponential running averages (with and without
  gradient through them) vs batch renormalization (Ioffe 2017, arXiv:1702.03275).

The networks are `bnclaims.model` stacks (arms = learning rates x noise settings, same initial
weights, same batches): BN is ``norm="batch"``, noisy BN and the shift arms ``norm="noisy"`` with
the noise of `CommonNoise` (common random numbers at per-arm strengths; noise off = batch norm),
running averages ``norm="running"``, batch renorm ``norm="renorm"``. Normalized networks have no
hidden bias; the no-norm network has one. This module keeps only the noise it injects and what it
measures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from bnclaims import model
from bnclaims.experiments import axes, experiment, spread
from bnclaims.model import MLPConfig
from bnclaims.recorders import (dataset_split, digits, lrs_per_arm, masked_accuracy, mlp_options, per_class_subset,
                                sample_rows, steps_to, train_on_plan)

DTYPE = np.float32
EMA_MOMENTUM = 0.1          # running statistics for inference (PyTorch convention, weight of the new batch)
N_CLASSES = 10


# ============================================================================ per-arm noise


@dataclass(frozen=True)
class Arms:
    """Per-arm learning rate and noise settings of a normalized stack, each an (A,) array; noise is
    True where noise is injected, mean_shift, scale_spread, example_noise set it (`sample_noise`)."""

    lr: np.ndarray
    noise: np.ndarray
    mean_shift: np.ndarray
    scale_spread: np.ndarray
    example_noise: np.ndarray

    @staticmethod
    def make(lr, *, noise=False, mean_shift=0.5, scale_spread=1.25, example_noise=1.0) -> "Arms":
        lr = np.asarray(lr, dtype=np.float64).ravel()
        full = lambda v, dt=np.float64: np.broadcast_to(np.asarray(v, dtype=dt), lr.shape).copy()  # noqa: E731
        return Arms(lr, full(noise, bool), full(mean_shift), full(scale_spread), full(example_noise))

    @staticmethod
    def concat(*parts: "Arms") -> "Arms":
        names = ("lr", "noise", "mean_shift", "scale_spread", "example_noise")
        return Arms(*[np.concatenate([getattr(p, name) for p in parts]) for name in names])

    def __len__(self) -> int:
        return len(self.lr)

    def col(self, name: str, dtype=DTYPE) -> np.ndarray:
        """An (A, 1, 1) column of a per-arm setting, for broadcasting against (A, N, D)."""
        return np.asarray(getattr(self, name), dtype=dtype)[:, None, None]


def sample_noise(rng: np.random.Generator, arms: Arms, n: int, d: int):
    """Noisy-BN noise for one layer and one step, for every arm at once.

    For an arm with noise on, per feature j: m_j ~ U(-mean_shift, mean_shift), s_j ~ U(1,
    scale_spread); per activation: noise_scale = s_j, noise_shift = m_j + example_noise * s_j * N(0, 1).
    example_noise = 1 is the law of `bnclaims.nn.sample_covariate_noise` (Santurkar et al.'s noisy
    BN: every activation shifted by an i.i.d. draw from N(m_j, s_j^2)); example_noise = 0 is a pure
    shift of the feature distribution, the same for every example of the step. The arms share the
    uniform and normal draws (common random numbers), so arms that differ only in strength are
    paired; arms with noise off get scale 1, shift 0. Returns noise_scale (A, 1, D), noise_shift (A, N, D).
    """
    u = rng.uniform(-1.0, 1.0, size=(1, 1, d)).astype(DTYPE)
    v = rng.uniform(0.0, 1.0, size=(1, 1, d)).astype(DTYPE)
    z = rng.standard_normal((1, n, d)).astype(DTYPE)
    on = arms.noise[:, None, None]
    scale = np.where(on, 1.0 + (arms.col("scale_spread") - 1.0) * v, 1.0).astype(DTYPE)
    shift = np.where(on, arms.col("mean_shift") * u + arms.col("example_noise") * scale * z, 0.0).astype(DTYPE)
    return scale, shift


class CommonNoise:
    """The ``noise`` of `model.train_stack` / `model.forward`: `sample_noise` from one Generator."""

    def __init__(self, rng: np.random.Generator, arms: Arms):
        self.rng, self.arms = rng, arms

    def __call__(self, h: np.ndarray):
        return sample_noise(self.rng, self.arms, h.shape[-2], h.shape[-1])


def mean_noise_scale(arms: Arms) -> np.ndarray:
    """(A, 1, 1) expected noise scale (1 + scale_spread) / 2 where the noise is on, else 1 (the
    expected shift is 0): inference replaces the noise by its mean."""
    return np.where(arms.noise[:, None, None], (1.0 + arms.col("scale_spread")) / 2.0, 1.0).astype(DTYPE)


# ============================================================================ shared helpers


def config(sizes: list[int], norm: str = "noisy", **options) -> MLPConfig:
    """The module's network: ReLU, norm before it, float32; normalized nets have no hidden bias."""
    return MLPConfig(tuple(sizes), norm=norm, hidden_bias=norm == "none", dtype="float32",
                     momentum=options.pop("momentum", EMA_MOMENTUM), **options)


def precise_logits(params: dict, cfg: MLPConfig, x: np.ndarray, rows: int,
                   noise_scale: np.ndarray | None = None) -> np.ndarray:
    """Inference logits (A, N, C) with precise BN: every layer normalized with the statistics of the
    first `rows` rows of x under the current weights (``MLPConfig(reference_rows=...)``); the noise
    replaced by its mean (gamma x E[s], shift 0)."""
    if cfg.norm == "none":
        return model.forward(params, {}, x, cfg, False)[0]
    if noise_scale is not None:
        params = {k: v * noise_scale if k.startswith("gamma") else v for k, v in params.items()}
    stats = replace(cfg, norm="batch", reference_rows=rows if rows < len(x) else 0, renorm_warmup=())
    return model.forward(params, model.init_stack_state(stats, len(params["W0"])), x, stats, True)[0]


def layer_moments(ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean and std over the probe rows of every hidden layer: ys per layer (A, P, D) ->
    mean, std (A, L * D) float64."""
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
NORMED_TEXT = {arm: ARM_TEXT[arm] for arm in NORMED_ARMS}


def speed_arms(lrs, kind: str, mean_shift: float, scale_spread: float) -> Arms:
    """Arms of one normalized kind ("bn", "shift", "noisy") at the learning rates `lrs`."""
    if kind == "bn":
        return Arms.make(lrs)
    return Arms.make(lrs, noise=True, mean_shift=mean_shift, scale_spread=scale_spread,
                     example_noise=1.0 if kind == "noisy" else 0.0)


@experiment(
    "noisy-bn-speed",
    metrics=axes({
        "steps[arm]": "SGD steps for {arm} to reach the target training accuracy at its own best LR (censored at "
                      "`steps` when never reached)",
        "steps_{normed}_common": "the same for {normed} at the common LR (the no-norm net's best LR)",
        "time[arm]": "steps for {arm} x the cost of one step relative to a no-norm step (wall-clock model)",
        "variation[arm]": "{arm}: mean change of the hidden units' distributions on a fixed probe set between "
                          "checkpoints, own best LR",
        "variation_{normed}_common": "{normed} at the common LR: distribution variation",
        "final_train_acc[arm]": "{arm}: training-probe accuracy at the end, own best LR",
        "final_val_acc[arm]": "{arm}: validation accuracy at the end, own best LR",
        "lr[arm]": "learning rate used for {arm}",
        "reached_all": "1 when every arm reached the target (own best and common LR)",
        "diverged": "arms (x LRs) whose weights went NaN/inf",
    }, arm=ARM_TEXT, normed=NORMED_TEXT),
    series=axes({
        "step": "probe checkpoints (SGD steps, every probe_every)",
        "train_acc[arm]": "training-probe accuracy over training, {arm}, own best LR",
        "change_step": "checkpoints after the first (x axis of the change_* series)",
        "change[arm]": "distribution change since the previous checkpoint, {arm}, own best LR",
        "lr": "learning-rate grid (sweep mode; empty otherwise)",
        "sweep_val_steps[arm]": "sweep mode: steps to the target validation accuracy per LR, {arm} (NaN: never)",
        "sweep_val_acc[arm]": "sweep mode: final validation accuracy per LR, {arm}",
    }, arm=ARM_TEXT),
)
def noisy_bn_speed(rng: np.random.Generator, *, hidden: list[int] = [64, 64], batch_size: int = 32,
                   steps: int = 300, check_every: int = 1, probe_every: int = 5, target: float = 0.97,
                   val_target: float = 0.95,
                   probe_size: int = 256, mean_shift: float = 0.5, scale_spread: float = 1.25,
                   lrs: list[float] = [], lr_grid: list[float] = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2],
                   bn_step_cost: float = 2.2, noise_step_cost: float = 3.5) -> dict:
    """Does limiting the variation of the hidden-layer distributions speed up training?

    Network 64-[hidden]-10, ReLU, SGD, batch `batch_size`, `steps` steps, float32, digits training
    split (1,078 images). Arms (same initial weights, same batches, the same fresh noise at every
    step): no norm; BN before every ReLU; BN + distribution shift (every BN output unit j scaled by
    s_j ~ U(1, scale_spread) and shifted by m_j ~ U(-mean_shift, mean_shift), the same for every
    example: the input distribution of the next layer keeps moving, no information is lost); noisy
    BN (Santurkar et al. 2018, section 2.1: in addition an i.i.d. N(0, s_j^2) draw per activation).

    On a fixed probe of `probe_size` training images: every `check_every` steps the training
    accuracy in inference mode (BN statistics of the probe, noise at its mean; speed = steps until
    it first reaches `target`); every `probe_every` steps the per-unit mean and std of every hidden
    layer's pre-ReLU values in training mode, with fresh noise ("variation" = average change
    |d mean| / std + |d log std| between checkpoints), and in sweep mode the validation accuracy.

    Learning rates: `lrs` = [no norm, BN, shift, noisy] from a validation sweep on other seeds;
    every normalized arm also runs at the no-norm net's LR (the common LR). With `lrs` empty every
    arm runs every LR of `lr_grid` (sweep mode) and uses the LR that first reached `val_target`
    validation accuracy (ties: higher final validation accuracy). Wall-clock model: one BN /
    noise-injecting step costs `bn_step_cost` / `noise_step_cost` no-norm steps (measured once on
    64-64-64-10, batch 32; timings stay out of the metrics so that they are deterministic).
    """
    if steps % probe_every:
        raise ValueError(f"steps ({steps}) must be a multiple of probe_every ({probe_every})")
    split = digits()
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, N_CLASSES]
    init_rng, order_rng, probe_rng, noise_rng, measure_rng = rng.spawn(5)
    probe = sample_rows(probe_rng, len(y), probe_size)
    x_eval = np.concatenate([X[probe], split.X_val])                  # probe rows give the statistics
    m = len(probe)
    sweep = lrs_per_arm(lrs, SPEED_ARMS)
    own = {arm: np.asarray(lr_grid, dtype=np.float64) if sweep else np.array([lrs[i]])
           for i, arm in enumerate(SPEED_ARMS)}
    # rows of the normalized stack, arm after arm: its own LRs, then (fixed LRs) the common LR
    runs = {arm: own[arm] if sweep else np.append(own[arm], lrs[0]) for arm in NORMED_ARMS}
    start = dict(zip(NORMED_ARMS, np.cumsum([0] + [len(lr) for lr in runs.values()])))
    own_rows = {arm: start[arm] + np.arange(len(own[arm])) for arm in NORMED_ARMS}
    arms_of = {"plain": Arms.make(own["plain"]),
               "normed": Arms.concat(*[speed_arms(runs[arm], arm, mean_shift, scale_spread) for arm in NORMED_ARMS])}
    configs = {"plain": config(sizes, "none"), "normed": config(sizes, "noisy")}
    plan = model.batch_plan(order_rng, len(y), batch_size, steps)
    probes = np.arange(0, steps + 1, probe_every)
    measure_seeds = [int(measure_rng.integers(2**63)) for _ in probes]
    curves = {k: {"val": [], "change": [], "train_probe": []} for k in configs}
    reach = {k: np.full(len(arms_of[k]), np.nan) for k in configs}   # first step at target
    results = {}

    for key, cfg in configs.items():
        arms = arms_of[key]
        noisy = cfg.norm == "noisy"
        scale = mean_noise_scale(arms) if noisy else None
        last: list = []

        def measure(step, params, alive, key=key, cfg=cfg, arms=arms, noisy=noisy, scale=scale, last=last):
            """Probe accuracy (every check_every steps until every arm got there) and, every
            probe_every steps, the probe distributions in training mode and the validation accuracy."""
            if step % check_every == 0 and step % probe_every != 0 and np.isnan(reach[key]).any():
                train_acc = masked_accuracy(precise_logits(params, cfg, X[probe], m, scale), y[probe], alive)
                reach[key][np.isnan(reach[key]) & (train_acc >= target)] = step
            if step % probe_every:
                return
            with_val = sweep or step == steps                 # validation only where it is used
            logits = precise_logits(params, cfg, x_eval if with_val else X[probe], m, scale)
            train_acc = masked_accuracy(logits[:, :m], y[probe], alive)
            if step % check_every == 0:
                reach[key][np.isnan(reach[key]) & (train_acc >= target)] = step
            curves[key]["train_probe"].append(train_acc)
            curves[key]["val"].append(masked_accuracy(logits[:, m:], split.y_val, alive) if with_val
                                      else np.full(len(train_acc), np.nan))
            noise = CommonNoise(np.random.default_rng(measure_seeds[step // probe_every]), arms) if noisy else None
            record: dict = {}
            model.forward(params, model.init_stack_state(cfg, len(arms)), X[probe], cfg, True, noise, record)
            moments = layer_moments([record[f"norm{i}"] for i in range(len(hidden))])
            change = moment_change(last[0], moments) if last else np.full(len(moments[0]), np.nan)
            curves[key]["change"].append(np.where(alive, change, np.nan))
            last[:] = [moments]

        def hook(step, info, measure=measure):
            measure(step + 1, info.params, info.alive)
        hook.needs_deltas = False

        params0 = model.stack_params([model.init_params(copy.deepcopy(init_rng), cfg)] * len(arms))   # paired
        with np.errstate(all="ignore"):
            measure(0, params0, np.ones(len(arms), dtype=bool))
            results[key] = train_on_plan(cfg, X, y, arms.lr, plan, params0, record=hook,
                                         noise=CommonNoise(noise_rng, arms) if noisy else None)
            for step in range(len(curves[key]["train_probe"]) * probe_every, steps + 1, probe_every):
                measure(step, results[key].params, np.zeros(len(arms), dtype=bool))   # every arm diverged early
    curve = {k: {name: np.array(v).T for name, v in c.items()} for k, c in curves.items()}  # (A, K)
    variation = {k: np.nanmean(curve[k]["change"], axis=1) for k in configs}
    rows_of = {"plain": ("plain", np.arange(len(own["plain"])))}
    rows_of.update({arm: ("normed", own_rows[arm]) for arm in NORMED_ARMS})
    if sweep:
        val_reach = {k: steps_to(curve[k]["val"], probes, val_target) for k in configs}

        def choose(key, rows):
            r, final = val_reach[key][rows], curve[key]["val"][rows, -1]
            return int(rows[np.lexsort((-final, np.where(np.isnan(r), np.inf, r)))[0]])

        chosen = {arm: (key, choose(key, rows)) for arm, (key, rows) in rows_of.items()}
        at_common = {arm: ("normed", int(own_rows[arm][chosen["plain"][1]])) for arm in NORMED_ARMS}
    else:
        chosen = {arm: (key, int(rows[0])) for arm, (key, rows) in rows_of.items()}
        at_common = {arm: ("normed", int(own_rows[arm][-1] + 1)) for arm in NORMED_ARMS}
    censor = lambda s: float(steps if np.isnan(s) else s)  # noqa: E731
    cost = {"plain": 1.0, "bn": bn_step_cost, "shift": noise_step_cost, "noisy": noise_step_cost}
    out: dict = {"step": probes.astype(float), "change_step": probes[1:].astype(float)}
    for arm, (key, row) in chosen.items():
        out[f"steps_{arm}"] = censor(reach[key][row])
        out[f"time_{arm}"] = out[f"steps_{arm}"] * cost[arm]
        out[f"variation_{arm}"] = float(variation[key][row])
        out[f"final_train_acc_{arm}"] = float(curve[key]["train_probe"][row, -1])
        out[f"final_val_acc_{arm}"] = float(curve[key]["val"][row, -1])
        out[f"lr_{arm}"] = float(arms_of[key].lr[row])
        out[f"train_acc_{arm}"] = curve[key]["train_probe"][row]
        out[f"change_{arm}"] = curve[key]["change"][row, 1:]
    for arm, (key, row) in at_common.items():
        out[f"steps_{arm}_common"] = censor(reach[key][row])
        out[f"variation_{arm}_common"] = float(variation[key][row])
    used = list(chosen.values()) + list(at_common.values())
    out["reached_all"] = float(all(np.isfinite(reach[k][r]) for k, r in used))
    out["diverged"] = float(sum(result.diverged.sum() for result in results.values()))
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


SHIFT_ARMS = {arm: arm.replace("_", " ") for arm in shift_arm_names(STRENGTH_NAMES)}


@experiment(
    "noisy-bn-generalization",
    metrics=axes({
        "test_acc_bn": "test accuracy of plain BN (no injected shift), own best LR",
        "test_acc[arm]": "test accuracy, {arm} injected shift, own best LR",
        "gap_bn": "train accuracy - test accuracy, BN",
        "gap[arm]": "train accuracy - test accuracy, {arm}",
        "train_acc_bn": "training-set accuracy at the end, BN",
        "train_acc[arm]": "training-set accuracy at the end, {arm}",
        "lr_bn": "learning rate used for BN",
        "lr[arm]": "learning rate used for {arm}",
        "diverged": "arms (x LRs) whose weights went NaN/inf",
    }, arm=SHIFT_ARMS),
    series=axes({
        "strength": "noise strength k of each shift arm (mean_shift = 0.5 k, scale_spread = 1 + 0.25 k)",
        "test_gain_shift": "test accuracy minus BN's, distribution shift only, per strength",
        "test_gain_noisy": "test accuracy minus BN's, noisy BN (shift + per-example noise), per strength",
        "gap_gain_shift": "generalization gap minus BN's, distribution shift only, per strength",
        "gap_gain_noisy": "generalization gap minus BN's, noisy BN, per strength",
        "lr": "learning-rate grid (sweep mode; empty otherwise)",
        "sweep_val_acc_bn": "sweep mode: final validation accuracy per LR, BN",
        "sweep_val_acc[arm]": "sweep mode: final validation accuracy per LR, {arm}",
    }, arm=SHIFT_ARMS),
)
def noisy_bn_generalization(rng: np.random.Generator, *, hidden: list[int] = [64, 64], n_per_class: int = 20,
                            batch_size: int = 32, steps: int = 300, strengths: list[float] = [0.5, 1.0, 2.0],
                            lrs: list[float] = [],
                            lr_grid: list[float] = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2]) -> dict:
    """Does a time-varying shift of the feature distributions during training improve test accuracy?

    Network 64-[hidden]-10, ReLU, BN before every ReLU, SGD, batch `batch_size`, `steps` steps,
    float32, on `n_per_class` digits training images per class (a new stratified subset per seed:
    a small training set, where generalization is the issue). Arms (same initial weights, same
    batches, same noise draws scaled by strength): BN; for every strength k in `strengths`, BN +
    distribution shift (every BN output unit j scaled by s_j ~ U(1, 1 + 0.25 k) and shifted by
    m_j ~ U(-0.5 k, 0.5 k), the same for every example of the step: the feature distribution moves,
    as between "black cats" and "coloured cats") and noisy BN (Santurkar et al. 2018: the same plus
    an i.i.d. N(0, s_j^2) draw per activation; k = 1 is `bnclaims.nn.sample_covariate_noise`).
    Inference for every arm: statistics of the whole small training set under the final weights
    (precise BN), the noise at its mean. Learning rates: `lrs` = one per arm (BN, shift arms, noisy
    arms, by strength) from a validation sweep on other seeds; with `lrs` empty every arm runs
    every LR of `lr_grid` and keeps its best by validation accuracy (sweep mode).
    """
    split = digits()
    sub_rng, init_rng, order_rng, noise_rng = rng.spawn(4)
    index = per_class_subset(sub_rng, split.y_train, n_per_class, N_CLASSES)
    X, y = split.X_train[index], split.y_train[index]
    n = len(y)
    names = ["bn"] + shift_arm_names(strengths)
    k = np.asarray(strengths, dtype=np.float64)
    specs = [dict()] + [dict(noise=True, mean_shift=0.5 * s, scale_spread=1.0 + 0.25 * s, example_noise=e)
                        for e in (0.0, 1.0) for s in k]
    sweep = lrs_per_arm(lrs, names)
    grid = np.asarray(lr_grid, dtype=np.float64)
    per_arm = [grid if sweep else np.array([lrs[i]]) for i in range(len(names))]
    arms = Arms.concat(*[Arms.make(lr, **spec) for lr, spec in zip(per_arm, specs)])
    starts = np.cumsum([0] + [len(p) for p in per_arm])
    cfg = config([X.shape[1], *hidden, N_CLASSES], "noisy")
    plan = model.batch_plan(order_rng, n, batch_size, steps)
    with np.errstate(all="ignore"):
        result = train_on_plan(cfg, X, y, arms.lr, plan, model.init_params(init_rng, cfg),
                               noise=CommonNoise(noise_rng, arms))
        logits = precise_logits(result.params, cfg, np.concatenate([X, split.X_val, split.X_test]), n,
                                mean_noise_scale(arms))
    alive = ~result.diverged
    train_acc = masked_accuracy(logits[:, :n], y, alive)
    val_acc = masked_accuracy(logits[:, n:n + len(split.y_val)], split.y_val, alive)
    test_acc = masked_accuracy(logits[:, n + len(split.y_val):], split.y_test, alive)
    out: dict = {"diverged": float(result.diverged.sum())}
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

RUNNING_TEXT = {"bn": "batch statistics (BN)",
                "ewa_grad": "running averages (momentum 0.1), gradient through the batch part",
                "ewa_const": "running averages (momentum 0.1) as constants",
                "slow_ewa_grad": "slow running averages (momentum 0.01), gradient through the batch part",
                "slow_ewa_const": "slow running averages (momentum 0.01) as constants",
                "renorm": "batch renormalization"}
RUNNING_ARMS = tuple(RUNNING_TEXT)
SIZES = ("large", "small")


def running_config(sizes: list[int], kind: str, momentum: float, slow_momentum: float, r_max: float, d_max: float,
                   schedule: list[float]) -> MLPConfig:
    """The network of one normalization kind (see RUNNING_TEXT)."""
    if kind == "bn":
        return config(sizes, "batch")
    if kind == "renorm":
        return config(sizes, "renorm", r_max=r_max, d_max=d_max, renorm_warmup=tuple(schedule))
    return config(sizes, "running", momentum=slow_momentum if kind.startswith("slow") else momentum,
                  grad_through_stats=kind.endswith("grad"))


FAILED = "diverged (NaN/inf) or ended below 50 % validation accuracy"


@experiment(
    "running-average-bn",
    metrics=axes({
        "test_acc[arm, size]": "test accuracy, {arm}, {size} batch, LR chosen on validation",
        "failed[arm]": "{arm}: grid LRs (both batch sizes) at which training " + FAILED,
        "failed[arm, size]": "{arm}: grid LRs at the {size} batch at which training " + FAILED,
        "diverged[arm]": "{arm}: grid LRs (both batch sizes) at which the weights went NaN/inf",
        "weight_growth[arm, size]": "{arm}, {size} batch, at the LR chosen on validation: final / initial Frobenius "
                                    "norm of the normalized layers' weights (geometric mean over layers; inf where "
                                    "diverged)",
        "lr[arm, size]": "learning rate chosen on validation, {arm}, {size} batch",
        "best_at_edge": "chosen LRs (arms x batch sizes) at the smallest or largest value of the grid",
    }, arm=RUNNING_TEXT, size=SIZES),
    series=axes({
        "lr_large": "learning-rate grid at the large batch",
        "lr_small": "learning-rate grid at the small batch (the large-batch grid x small/large batch size)",
        "val_acc[arm, size]": "final validation accuracy per LR, {arm}, {size} batch (0 where diverged)",
    }, arm=RUNNING_TEXT, size=SIZES),
)
def running_average_bn(rng: np.random.Generator, *, hidden: list[int] = [64, 64], large_batch: int = 32,
                       small_batch: int = 4, epochs: int = 4, momentum: float = 0.1, slow_momentum: float = 0.01,
                       lr_grid: list[float] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4], r_max: float = 3.0,
                       d_max: float = 5.0, renorm_schedule: list[float] = [0.05, 0.25, 0.4],
                       fail_below: float = 0.5, dataset: Literal["digits", "augmented"] = "digits",
                       residual: bool = False) -> dict:
    """Normalize by exponential running averages during training instead of by batch statistics?

    Network 64-[hidden]-10, ReLU, normalization before every ReLU, SGD, float32, `epochs` epochs
    of the digits training split (1,078 images) at batch `large_batch` and at batch `small_batch`.
    Arms (same initial weights, same batches at a batch size):
    * BN: batch statistics, gradient through them;
    * running averages with gradient: mean = (1 - m) running_mean + m batch_mean (same for the
      variance), updated first and used to normalize; the gradient flows through the m * batch
      part (`bnclaims.nn.running_batchnorm_forward`, grad_through_stats=True);
    * running averages as constants: the same statistics, no gradient through them (what
      inference does, applied in training); both with m = `momentum` (PyTorch's default 0.1) and
      m = `slow_momentum` (Keras' default 0.99 = 0.01 here);
    * batch renormalization (Ioffe 2017): batch statistics corrected by r = clip(sigma_B / sigma,
      1/r_max, r_max) and d = clip((mu_B - mu) / sigma, -d_max, d_max) from the running averages,
      r and d constants; warm-up (`model.renorm_limits`): plain BN for the first
      `renorm_schedule[0]` of the steps, then relaxed linearly to reach d_max at
      `renorm_schedule[1]` and r_max at `renorm_schedule[2]` (Ioffe's 5k, 25k, 40k of 100k steps).
    Running statistics start at mean 0, variance 1. Every arm runs every LR of `lr_grid` at the
    large batch and of `lr_grid` x small_batch / large_batch at the small batch (linear scaling);
    the LR with the best final validation accuracy is kept. Inference uses each arm's running
    statistics (BN and renorm keep an EMA with momentum 0.1). An LR "fails" when the weights go
    NaN/inf or the final validation accuracy is below `fail_below`. `dataset` "augmented"
    (`recorders.dataset_split`: 4 training rows per image, so an epoch is 4 times the steps) and
    `residual` (pre-activation residual blocks, equal hidden widths) scale it.
    """
    split = dataset_split(dataset)
    X, y = split.X_train, split.y_train
    sizes = [X.shape[1], *hidden, N_CLASSES]
    init_rng, order_rng = rng.spawn(2)
    configs = {kind: replace(running_config(sizes, kind, momentum, slow_momentum, r_max, d_max, renorm_schedule),
                             **mlp_options(residual)) for kind in RUNNING_ARMS}
    base = model.init_params(init_rng, configs["bn"])          # the same weights for every kind
    hidden_weights = [f"W{i}" for i in range(len(hidden))]
    norms0 = {name: np.sqrt(np.sum(np.square(base[name], dtype=np.float64))) for name in hidden_weights}
    x_eval = np.concatenate([split.X_val, split.X_test])
    n_val = len(split.y_val)
    out: dict = {}
    table = {name: [] for name in ("test_acc", "lr", "failed", "weight_growth", "diverged")}   # per size: (arms,)
    edge = 0
    for size, batch_size, order in zip(SIZES, (large_batch, small_batch), order_rng.spawn(2)):
        lrs = np.asarray(lr_grid, dtype=np.float64) * (batch_size / large_batch)
        plan = model.batch_plan(order, len(y), batch_size, epochs * (len(y) // batch_size))
        val_acc, test_acc, finite, growth = [], [], [], []
        for kind in RUNNING_ARMS:
            cfg = configs[kind]
            with np.errstate(all="ignore"):
                result = train_on_plan(cfg, X, y, lrs, plan, base)
                logits, _, _ = model.forward(result.params, result.state, x_eval, cfg, False)
                # diverged: a NaN/inf loss, or weights or running means gone NaN/inf (an overflowed running
                # variance only silences its units: x / sqrt(inf) = 0, and the network still predicts)
                ok = ~result.diverged & np.all([np.isfinite(v).all(axis=(1, 2)) for name, v in
                                                [*result.params.items(), *result.state.items()]
                                                if name.startswith(("W", "running_mean"))], axis=0)
                growth.append(np.exp(np.mean([np.log(np.sqrt(np.sum(np.square(result.params[name], dtype=np.float64),
                                                                    axis=(1, 2))) / norms0[name])
                                              for name in hidden_weights], axis=0)))
            finite.append(ok)
            val_acc.append(masked_accuracy(logits[:, :n_val], split.y_val, ok))
            test_acc.append(masked_accuracy(logits[:, n_val:], split.y_test, ok))
        val_acc, test_acc, finite, growth = (np.array(v) for v in (val_acc, test_acc, finite, growth))  # (arms, lrs)
        best = val_acc.argmax(axis=1)
        chosen = (np.arange(len(RUNNING_ARMS)), best)
        out[f"lr_{size}"] = lrs
        out.update(spread(f"val_acc_{{arm}}_{size}", val_acc, arm=RUNNING_ARMS))
        table["test_acc"].append(test_acc[chosen])
        table["lr"].append(lrs[best])
        table["failed"].append(np.sum(~finite | (val_acc < fail_below), axis=1))
        table["weight_growth"].append(np.where(finite[chosen], growth[chosen], np.inf))
        table["diverged"].append(np.sum(~finite, axis=1))
        edge += int(np.sum((best == 0) | (best == len(lrs) - 1)))
    for name in ("test_acc", "lr", "failed", "weight_growth"):
        out.update(spread(f"{name}[arm, size]", np.stack(table[name], axis=1), arm=RUNNING_ARMS, size=SIZES))
    for name in ("failed", "diverged"):
        out.update(spread(f"{name}[arm]", np.sum(table[name], axis=0), arm=RUNNING_ARMS))
    out["best_at_edge"] = float(edge)
    return out
