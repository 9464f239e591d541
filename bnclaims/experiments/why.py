"""Why batch norm works: covariate shift, decoupling, speed, jitter, reparametrization.

* ``layer-input-drift`` -- does BN keep each layer's input distribution steadier over training,
  and does it reduce internal covariate shift in the gradient sense of Santurkar et al. 2018
  (arXiv:1805.11604, section 2.2)?
* ``layer-coupling`` -- how much do a later layer's input and gradient move when an earlier
  layer's weights move; is a later layer invariant to rescaling them?
* ``training-speed`` -- steps to a target accuracy on digits, BN vs no normalization, each at its
  own validation-chosen learning rate and at a common one.
* ``ghost-batch-jitter`` -- test accuracy with ghost-batch statistics (noisy) vs statistics of the
  whole training set with gradients through them (noise-free).
* ``affine-reparametrization`` -- a plain MLP and the same function written as a BN network
  (gamma, beta), trained by the same SGD.

Every network is a `bnclaims.model` MLP (ReLU, He init, BN before every ReLU where there is one),
trained by `model.train_stack`: the arms of a comparison (learning rates) are one stack, and
networks that differ in normalization are separate stacks from the same initial weights
(`paired_init`) on the same batches (one `model.batch_plan`); hooks measure. Evaluation is
"precise BN": normalization with the population statistics of a fixed set of training images.
The noise-free BN of two experiments is ``MLPConfig(reference_rows=M)``: the statistics of M
reference rows forwarded with every batch, gradients through them, the loss on the mini-batch
only. A diverged arm (NaN/inf loss) is frozen by the loop and scored as a network with NaN
outputs: accuracy 0.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import Literal

import numpy as np

from bnclaims import model, nn
from bnclaims.experiments import axes, experiment, spread
from bnclaims.recorders import (Checkpoints, dataset_split, digits, lrs_per_arm, mlp_options, net_config,
                                per_class_subset, sample_rows, steps_to, train_on_plan)

DTYPE = np.float32
NETS = {"bn": "BN", "plain": "plain"}
SPEEDS = ("slow", "fast")


# ============================================================================ shared helpers

def mlp(hidden, norm: str = "none", **options) -> model.MLPConfig:
    """The 64-[hidden]-10 ReLU MLP of these experiments, float32; norm "none" or a BN variant."""
    return model.MLPConfig(sizes=(64, *hidden, 10), norm=norm, **options)


def paired_init(rng: np.random.Generator, hidden, **options) -> dict:
    """{"none": plain, "batch": BN} initial parameters (one network each) with the same weights:
    same seed => same initialisation (ghost and noise-free BN take the "batch" ones)."""
    return {norm: model.init_params(copy.deepcopy(rng), mlp(hidden, norm, **options)) for norm in ("none", "batch")}


def eval_logits(params: dict, config: model.MLPConfig, X: np.ndarray, X_stats: np.ndarray, alive=None) -> np.ndarray:
    """(K, N, C) logits in inference mode, BN normalizing with the population statistics of X_stats
    ("precise BN", `model.population_state`); NaN for the arms not `alive` (diverged)."""
    state = model.population_state(params, X_stats, config)
    with np.errstate(all="ignore"):
        logits = model.forward(params, state, X, config, train=False)[0]
    if alive is not None and not np.all(alive):
        logits = np.where(np.asarray(alive)[:, None, None], logits, np.nan)
    return logits


def eval_accuracy(params, config, X, y, X_stats, alive=None) -> np.ndarray:
    """(K,) accuracy in inference mode (precise BN over X_stats); a diverged arm scores 0."""
    return model.logits_accuracy(eval_logits(params, config, X, X_stats, alive), y)


def _train_state(params: dict, config: model.MLPConfig) -> dict:
    """A state to run `params` in training mode (batch statistics; the running ones are not read)."""
    return model.init_stack_state(config, len(params["W0"])) if params["W0"].ndim == 3 else model.init_state(config)


def _view(params: dict, config: model.MLPConfig, x: np.ndarray, y: np.ndarray):
    """Training-mode forward/backward on (x, y): (record of the layers, gradients)."""
    record: dict = {}
    with np.errstate(all="ignore"):
        grads = model.loss_and_grads(params, _train_state(params, config), x, y, config, record=record)[1]
    return record, grads


def _layer(name: str) -> int:
    return int(re.search(r"\d+$", name).group())


def _relative(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """(A,) ||new - old|| / ||old|| over all but the arm axis."""
    axes = tuple(range(1, old.ndim))
    return np.sqrt(np.square(new - old).sum(axis=axes) / np.square(old).sum(axis=axes))


def _to64(params: dict) -> dict:
    return {name: value.astype(np.float64) for name, value in params.items()}


# ============================================================================ training speed

@experiment(
    "training-speed",
    metrics=axes({
        "steps_{net}_best": "SGD steps for the {net} MLP to reach the target test accuracy at its own best LR",
        "steps_bn_common": "SGD steps for the BN MLP at the plain MLP's best LR (the common LR)",
        "time_plain_best": "steps_plain_best in units of one plain step (wall-clock model)",
        "time_bn_best": "steps_bn_best x bn_step_cost: wall-clock in units of one plain step",
        "time_bn_common": "steps_bn_common x bn_step_cost",
        "lr_{net}_best": "learning rate chosen for the {net} MLP on validation (tuning run)",
        "best_at_edge": "1 when a chosen learning rate is the smallest or largest of the grid",
        "reached_all": "1 when all three evaluation runs reached the target within eval_steps",
        "diverged[net]": "grid learning rates whose {net} tuning run went NaN/inf",
        "stuck[net]": "grid learning rates whose {net} tuning run ended finite but below 20 % val accuracy",
        "final_acc_{net}_best": "test accuracy of the {net} MLP after eval_steps (own best LR)",
    }, net={"plain": "plain", "bn": "BN"}),
    series={
        "lr": "the learning-rate grid",
        **axes({"val_steps[net]": "tuning: steps to the target validation accuracy per LR, {net} (NaN: never)"},
               net={"plain": "plain", "bn": "BN"}),
        "step": "evaluation checkpoints (SGD steps)",
        "acc_plain_best": "test accuracy over training, plain at its best LR",
        "acc_bn_best": "test accuracy over training, BN at its best LR",
        "acc_bn_common": "test accuracy over training, BN at the plain MLP's best LR",
    },
)
def training_speed(rng: np.random.Generator, *, hidden: list[int] = [64, 64, 64], batch_size: int = 64,
                   lrs: list[float] = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4], target: float = 0.95,
                   tune_steps: int = 150, eval_steps: int = 150, tune_check_every: int = 10,
                   check_every: int = 2, bn_step_cost: float = 1.7,
                   dataset: Literal["digits", "augmented"] = "digits", residual: bool = False,
                   arch: Literal["mlp", "cnn"] = "mlp") -> dict:
    """Steps (and a wall-clock model) to a target accuracy on digits: BN MLP vs plain MLP.

    Network 64-[hidden]-10, ReLU, SGD without momentum, batch `batch_size`, float32; BN before
    every ReLU. Tuning (its own init and batch order): every LR of `lrs` for both networks for
    `tune_steps` steps; the best LR of each is the one that first reaches `target` validation
    accuracy, checked every `tune_check_every` steps (ties: higher validation accuracy then).
    Evaluation (a fresh init and batch order, the same for both networks): plain at its best LR,
    BN at its best LR and at the plain network's best LR, `eval_steps` steps; steps to `target`
    test accuracy, checked every `check_every` steps (censored at eval_steps when never reached).
    BN is evaluated with the population statistics of a fixed 256-example training subset
    ("precise BN"). Wall-clock model: steps x `bn_step_cost`, the cost of a BN step in plain
    steps (a constant measured once, not per run). `dataset` ("digits" or "augmented",
    `recorders.dataset_split`), `residual` (pre-activation residual blocks, equal hidden widths)
    and `arch` ("cnn": `hidden` gives the channels of 3x3 conv layers, spatial BN, global average
    pooling; `recorders.net_config`) scale the task and the network.
    """
    split = dataset_split(dataset)
    X, y = split.X_train, split.y_train
    tune_rng, eval_rng = rng.spawn(2)
    lr_grid = np.asarray(lrs, dtype=np.float64)
    nets = {"plain": net_config(arch, hidden, residual=residual),
            "bn": net_config(arch, hidden, "batch", residual=residual)}

    def run(config, lr, x_eval, y_eval, check_every):
        """(accuracy curve (A, checks + 1) in inference mode, diverged (A,))."""
        def acc(_, params, alive):
            return eval_accuracy(params, config, x_eval, y_eval, X[stats_index], alive)
        curve = Checkpoints(check_every, acc, dead=0.0)
        result = train_on_plan(config, X, y, lr, plan, init[config.norm], record=curve)
        return curve.values(len(plan) // check_every + 1).T, result.diverged

    # --- tuning on the validation split: every LR of the grid, both networks from the same init and batches
    init_rng, order_rng, stats_rng = tune_rng.spawn(3)
    stats_index = sample_rows(stats_rng, len(y), 256)
    init = {norm: model.init_params(copy.deepcopy(init_rng), net) for norm, net in
            (("none", nets["plain"]), ("batch", nets["bn"]))}
    plan = model.batch_plan(order_rng, len(y), batch_size, tune_steps)
    check_steps = np.arange(0, tune_steps + 1, tune_check_every)
    chosen, val_steps, diverged, stuck = {}, {}, {}, {}
    for name, config in nets.items():
        curve, dead = run(config, lr_grid, split.X_val, split.y_val, tune_check_every)
        reach = val_steps[name] = steps_to(curve, check_steps, target)
        diverged[name] = int(dead.sum())
        stuck[name] = int((~dead & (curve[:, -1] < 0.2)).sum())
        if np.isfinite(reach).any():
            # first to the target; among ties the higher validation accuracy at that moment
            first = np.flatnonzero(reach == np.nanmin(reach))
            at = int(np.nanmin(reach)) // tune_check_every
            chosen[name] = int(first[model.select_lr(lr_grid[first], curve[first, at])])
        else:
            chosen[name] = model.select_lr(lr_grid, curve.max(axis=1))

    # --- evaluation on the test split: fresh init and batch order, shared by both networks
    init_rng, order_rng, stats_rng = eval_rng.spawn(3)
    stats_index = sample_rows(stats_rng, len(y), 256)
    init = {norm: model.init_params(copy.deepcopy(init_rng), net) for norm, net in
            (("none", nets["plain"]), ("batch", nets["bn"]))}
    plan = model.batch_plan(order_rng, len(y), batch_size, eval_steps)
    lr_p, lr_b = lr_grid[chosen["plain"]], lr_grid[chosen["bn"]]
    eval_checks = np.arange(0, eval_steps + 1, check_every)
    curve_p, _ = run(nets["plain"], [lr_p], split.X_test, split.y_test, check_every)
    curve_b, _ = run(nets["bn"], [lr_b, lr_p], split.X_test, split.y_test, check_every)
    reach_p = steps_to(curve_p, eval_checks, target)
    reach_b = steps_to(curve_b, eval_checks, target)
    censor = lambda s: float(eval_steps if np.isnan(s) else max(s, check_every))  # noqa: E731
    steps_p, steps_b, steps_bc = censor(reach_p[0]), censor(reach_b[0]), censor(reach_b[1])
    edge = {0, len(lr_grid) - 1}
    net = ("plain", "bn")
    return {
        "steps_plain_best": steps_p, "steps_bn_best": steps_b, "steps_bn_common": steps_bc,
        "time_plain_best": steps_p, "time_bn_best": steps_b * bn_step_cost, "time_bn_common": steps_bc * bn_step_cost,
        "lr_plain_best": float(lr_p), "lr_bn_best": float(lr_b),
        "best_at_edge": float(chosen["plain"] in edge or chosen["bn"] in edge),
        "reached_all": float(np.isfinite(reach_p).all() and np.isfinite(reach_b).all()),
        **spread("diverged[net]", [diverged[n] for n in net], net=net),
        **spread("stuck[net]", [stuck[n] for n in net], net=net),
        "final_acc_plain_best": float(curve_p[0, -1]), "final_acc_bn_best": float(curve_b[0, -1]),
        "lr": lr_grid, "val_steps_plain": val_steps["plain"], "val_steps_bn": val_steps["bn"],
        "step": eval_checks.astype(float),
        "acc_plain_best": curve_p[0], "acc_bn_best": curve_b[0], "acc_bn_common": curve_b[1],
    }


# ============================================================================ layer-input drift and ICS

def gradient_ics(before: dict, after: dict, grads: dict, x: np.ndarray, y: np.ndarray, config: model.MLPConfig):
    """Internal covariate shift of Santurkar et al. 2018 (arXiv:1805.11604, Definition 2.1).

    For every layer i >= 2: G = grad of layer i's weights at the parameters `before` an SGD step on
    the batch (x, y) (`grads`, the gradients of that step); G' = the same gradient after every layer
    below i took its step (its parameters from `after`), layer i and above unchanged. Returns
    (relative l2 ||G - G'|| / ||G||, cosine(G, G')), each (A, L - 1): one column per layer 2..L."""
    rel, cos = [], []
    for layer in range(1, config.n_layers):
        g = grads[f"W{layer}"]
        moved = {name: (after if _layer(name) < layer else before)[name] for name in before}
        g_moved = _view(moved, config, x, y)[1][f"W{layer}"]
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


class DriftAndICS:
    """Hook: every `every` steps, the drift of the hidden pre-activations (each ReLU's input) on the
    probe set since the last check (BN in training mode over the probe), and the gradient ICS of
    the step just taken (at the parameters before it, on its batch)."""

    needs_deltas = False    # it keeps the parameters before a measured step itself

    def __init__(self, probe: np.ndarray, every: int):
        self.probe, self.every = probe, every
        self.moment, self.w1, self.ics_l2, self.ics_cos = [], [], [], []

    def _units(self, params, config):
        record: dict = {}
        with np.errstate(all="ignore"):
            model.forward(params, _train_state(params, config), self.probe, config, True, record=record)
        return np.concatenate([record[f"norm{i}"] for i in range(config.n_layers - 1)], axis=2)

    def __call__(self, step: int, info: model.StackStepInfo) -> None:
        if step == 0:
            self.previous = self._units(info.params_before, info.config)
            self.before = info.params_before
        if step % self.every == 0:
            rel, cos = gradient_ics(self.before, info.params, info.grads, info.x, info.y, info.config)
            self.ics_l2.append(rel.mean(axis=1))
            self.ics_cos.append(cos.mean(axis=1))
        if (step + 1) % self.every == 0:
            units = self._units(info.params, info.config)
            moment, w1 = distribution_drift(self.previous, units)
            self.moment.append(moment)
            self.w1.append(w1)
            self.previous = units
            self.before = {name: value.copy() for name, value in info.params.items()}   # before the next step


@experiment(
    "layer-input-drift",
    metrics=axes({
        "moment_drift_{net}_{speed}": "{net} MLP at the {speed} LR: scale-free change of each hidden unit's mean and "
                                      "std on the probe set per check interval, averaged",
        "w1_drift_{net}_{speed}": "{net} MLP at the {speed} LR: Wasserstein-1 distance between consecutive probe "
                                  "distributions of each hidden unit / its std, averaged",
        "moment_drift_early_{net}_{speed}": "moment_drift over the first half of the checks only (steps 1 to "
                                            "steps / 2), {net} MLP at the {speed} LR",
        "moment_drift_late_{net}_{speed}": "moment_drift over the second half of the checks only, {net} MLP at the "
                                           "{speed} LR",
        "ics_l2_{net}_{speed}": "{net} MLP at the {speed} LR: Santurkar ICS ||G - G'|| / ||G||, averaged over layers "
                                "2..L and checks",
        "ics_cos_{net}_{speed}": "{net} MLP at the {speed} LR: cosine(G, G') of Santurkar's ICS, averaged",
        "val_acc_{net}_{speed}": "{net} MLP at the {speed} LR: validation accuracy at the end",
    }, net=NETS, speed=SPEEDS),
    series=axes({
        "step": "end of each check interval (SGD steps)",
        "ics_step": "the SGD step at which each ICS measurement is taken",
        "drift_curve_{net}_{speed}": "moment_drift per check, {net}, {speed} LR",
        "cos_curve_{net}_{speed}": "ics_cos per check, {net}, {speed} LR",
    }, net=("bn", "plain"), speed=SPEEDS),
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
    The moment drift is also reported for the first and the second half of the checks alone.
    """
    split = digits()
    X, y = split.X_train, split.y_train
    init_rng, order_rng = rng.spawn(2)
    init = paired_init(init_rng, hidden)
    plan = model.batch_plan(order_rng, len(y), batch_size, steps)
    out = {"step": np.arange(1, steps // check_every + 1) * float(check_every),
           "ics_step": np.arange(steps // check_every) * float(check_every)}
    for name, config in (("plain", mlp(hidden)), ("bn", mlp(hidden, "batch"))):
        hook = DriftAndICS(split.X_val, check_every)
        result = train_on_plan(config, X, y, [lr_slow, lr_fast], plan, init[config.norm], record=hook)
        acc = eval_accuracy(result.params, config, split.X_val, split.y_val, X, ~result.diverged)
        moment, w1 = np.stack(hook.moment, axis=1), np.stack(hook.w1, axis=1)            # (A, checks)
        l2, cs = np.stack(hook.ics_l2, axis=1), np.stack(hook.ics_cos, axis=1)
        half = moment.shape[1] // 2
        for what, values in (("moment_drift", moment), ("w1_drift", w1), ("ics_l2", l2), ("ics_cos", cs),
                             ("moment_drift_early", moment[:, :half]), ("moment_drift_late", moment[:, half:])):
            out.update(spread(f"{what}_{name}_{{speed}}", [row.mean() for row in values], speed=SPEEDS))
        out.update(spread(f"val_acc_{name}_{{speed}}", acc, speed=SPEEDS))
        out.update(spread(f"drift_curve_{name}_{{speed}}", moment, speed=SPEEDS))
        out.update(spread(f"cos_curve_{name}_{{speed}}", cs, speed=SPEEDS))
    return out


# ============================================================================ coupling between layers

def _last_layer(params: dict, config: model.MLPConfig, x: np.ndarray, y: np.ndarray):
    """The last layer's input (A, N, H) and the gradient of its weights (A, H, C) on (x, y) (training mode)."""
    record, grads = _view(params, config, x, y)
    last = config.n_layers - 1
    return record[f"act{last - 1}"], grads[f"W{last}"]


def coupling_response(params: dict, config: model.MLPConfig, directions: list[np.ndarray], x: np.ndarray,
                      y: np.ndarray, delta: float):
    """Move the weights of the first len(directions) layers by `delta` of their norm along
    `directions` (each (A, D_l, D_{l+1})); return the relative change of the last layer's input
    and of its weight gradient on (x, y), each divided by delta: (A,), (A,)."""
    h, g = _last_layer(params, config, x, y)
    moved = dict(params)
    for layer, direction in enumerate(directions):
        W = params[f"W{layer}"]
        scale = delta * np.linalg.norm(W, axis=(1, 2)) / np.linalg.norm(direction, axis=(1, 2))
        moved[f"W{layer}"] = W + scale[:, None, None] * direction
    h_moved, g_moved = _last_layer(moved, config, x, y)
    return _relative(h_moved, h) / delta, _relative(g_moved, g) / delta


def _rescaled_changes(rng: np.random.Generator, params: dict, config: model.MLPConfig, x, y, trials=1):
    """`trials` draws of the first layer's unit-wise rescaling (c_j ~ log-uniform(0.1, 10)) and shift
    (s_j ~ N(0, 1)): W_1 -> W_1 diag(c), b_1 -> s, in float64. Yields, per draw, the largest relative
    change of every later layer's input and of every later layer's weight gradient on (x, y)."""
    p64, config = _to64(params), replace(config, dtype="float64")
    record, grads = _view(p64, config, x, y)
    hidden = range(config.n_layers - 1)
    for _ in range(trials):
        c = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(1, 1, p64["W0"].shape[2])))
        moved = dict(p64, W0=p64["W0"] * c, b0=rng.standard_normal(c.shape) * np.ones_like(c))
        record_m, grads_m = _view(moved, config, x, y)
        yield ([_relative(record_m[f"act{i}"], record[f"act{i}"]).max() for i in hidden]
               + [_relative(grads_m[f"W{i + 1}"], grads[f"W{i + 1}"]).max() for i in hidden])


def rescale_error(rng: np.random.Generator, params: dict, config: model.MLPConfig, x, y, trials: int) -> float:
    """Largest change, in units of float64 eps, of every later layer's input and weight gradient
    when the first layer's pre-activations are rescaled unit by unit and shifted (`_rescaled_changes`),
    over `trials` draws: BN with eps = 0, float64, is exactly invariant."""
    config = replace(config, eps=0.0)
    worst = max(max(changes) for changes in _rescaled_changes(rng, params, config, x, y, trials))
    return worst / np.finfo(np.float64).eps


def _plain_rescale_change(rng: np.random.Generator, params: dict, config: model.MLPConfig, x, y) -> float:
    """Median relative change of the later layers' inputs and gradients of a plain MLP under one
    draw of the rescaling of `rescale_error` (for contrast: without normalization nothing cancels)."""
    return float(np.median(next(_rescaled_changes(rng, params, config, x, y))))


COUPLING_WHAT = {"input": "input", "grad": "weight gradient"}


@experiment(
    "layer-coupling",
    metrics=axes({
        "{what}_{kind}_{net}": "{net} MLP: relative change of the last layer's {what} per relative change of the "
                               "first two layers' weights along {kind} (elasticity)",
        "rescale_error_bn": "BN: largest change of any later layer's input or gradient when the first layer's "
                            "units are rescaled and shifted, in units of float64 eps (eps_BN = 0)",
        "rescale_change_plain": "plain: median relative change of the later layers' inputs and gradients under "
                                "the same rescaling",
        "val_acc[net]": "{net} MLP: validation accuracy at the end",
    }, what=COUPLING_WHAT, kind={"update": "their SGD update direction", "random": "a random direction"}, net=NETS),
    series=axes({
        "step": "checkpoints (SGD steps)",
        "curve_{what}_update_{net}": "{what} elasticity along the update direction at each checkpoint, {net}",
    }, what=tuple(COUPLING_WHAT), net=("bn", "plain")),
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
    init_rng, order_rng, direction_rng, scale_rng = rng.spawn(4)
    init = paired_init(init_rng, hidden)
    plan = model.batch_plan(order_rng, len(y), batch_size, steps)
    checkpoints = range(0, steps + 1, check_every)
    # the same random directions (and rescalings) for both networks at each checkpoint
    shapes = [(1, a, b) for a, b in zip((64, *hidden), hidden)][:early_layers]
    randoms = {c: [[direction_rng.standard_normal(s).astype(DTYPE) for s in shapes] for _ in range(random_directions)]
               for c in checkpoints}
    scale_seeds = {c: int(scale_rng.integers(2**32)) for c in checkpoints}
    keys = [f"{w}_{k}" for w in ("input", "grad") for k in ("update", "random")]
    out = {"step": np.arange(0, steps + 1, check_every, dtype=float)}
    rescale = {"bn": [], "plain": []}

    for name, config in (("plain", mlp(hidden)), ("bn", mlp(hidden, "batch"))):
        records = {k: [] for k in keys}

        def measure(check, params, grads):
            update = [-grads[f"W{j}"] for j in range(early_layers)]
            inp, grd = coupling_response(params, config, update, probe, probe_y, delta)
            records["input_update"].append(inp[0])
            records["grad_update"].append(grd[0])
            rnd = np.array([coupling_response(params, config, d, probe, probe_y, delta) for d in randoms[check]])
            records["input_random"].append(rnd[:, 0, 0].mean())
            records["grad_random"].append(rnd[:, 1, 0].mean())
            scale = np.random.default_rng(scale_seeds[check])
            rescale[name].append(rescale_error(scale, params, config, probe[:64], probe_y[:64], rescale_trials)
                                 if name == "bn" else _plain_rescale_change(scale, params, config, probe[:64], probe_y[:64]))

        def hook(step, info):
            if step % check_every == 0:        # the gradient of this step, at the parameters before it
                measure(step, info.params_before if step == 0 else before, info.grads)
            if (step + 1) % check_every == 0:
                before.update((name, value.copy()) for name, value in info.params.items())
            if step == steps - 1 and steps % check_every == 0:     # the end: the last batch again
                measure(steps, info.params, _view(info.params, config, info.x, info.y)[1])

        before = {}
        result = train_on_plan(config, X, y, [lr], plan, init[config.norm], record=hook)
        out[f"val_acc_{name}"] = float(eval_accuracy(result.params, config, probe, probe_y, X, ~result.diverged)[0])
        for k in keys:
            out[f"{k}_{name}"] = float(np.mean(records[k]))
        for what in ("input", "grad"):
            out[f"curve_{what}_update_{name}"] = np.array(records[f"{what}_update"])
    out["rescale_error_bn"] = float(max(rescale["bn"]))
    out["rescale_change_plain"] = float(np.median(rescale["plain"]))
    return out


# ============================================================================ ghost-batch jitter as a regularizer

GHOSTS = (4, 8, 16, 64)
JITTER_TEXT = {**{f"g{g}": f"ghost batch norm with ghost batches of {g}" for g in GHOSTS},
               "free": "noise-free BN (statistics of the whole training set, gradients through them)"}
JITTER_ARMS = tuple(JITTER_TEXT)


@experiment(
    "ghost-batch-jitter",
    metrics=axes({
        "test_acc[arm]": "test accuracy, {arm}, at its own best LR",
        "test_acc_common[arm]": "test accuracy, {arm}, at the common LR (the noise-free arm's best)",
        "test_acc_low[arm]": "test accuracy, {arm}, at the small common LR low_lr",
        "gap[arm]": "train accuracy - test accuracy, {arm}, own best LR",
        "test_loss[arm]": "test cross-entropy, {arm}, own best LR",
        "lr[arm]": "learning rate used for {arm} (chosen on validation when lrs is empty)",
        "best_at_edge": "number of arms whose chosen LR is the smallest or largest of lr_grid (selection mode)",
        "diverged": "runs (arm x LR) that went NaN/inf",
    }, arm=JITTER_TEXT),
    series=axes({
        "ghost_batch_size": "ghost batch size of each noisy arm",
        "test_acc_gain": "test accuracy of each ghost arm minus the noise-free arm (own best LRs)",
        "test_acc_gain_common": "the same at the common LR",
        "test_acc_gain_low": "the same at the small common LR low_lr",
        "gap_gain": "generalization gap of each ghost arm minus the noise-free arm's (own best LRs)",
        "lr_grid": "the learning-rate grid of the sweep mode",
        "val_acc_by_lr[arm]": "validation accuracy of {arm} at each LR of lr_grid (NaN: not run)",
    }, arm=JITTER_ARMS),
)
def ghost_batch_jitter(rng: np.random.Generator, *, hidden: list[int] = [64, 64], n_per_class: int = 20,
                       batch_size: int = 64, steps: int = 300, lrs: list[float] = [], low_lr: float = 0.2,
                       lr_grid: list[float] = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4],
                       dataset: Literal["digits", "augmented"] = "digits", residual: bool = False) -> dict:
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
    (which must contain low_lr) and keeps the one with the best validation accuracy (the sweep
    mode). Reported on the test split. Inference for every arm: the population statistics of the
    training set under the final weights (precise BN), the same for all arms. `dataset` ("digits"
    or "augmented": the subset drawn from its training rows, `recorders.dataset_split`) and
    `residual` (pre-activation residual blocks, equal hidden widths) scale the task and the network.
    """
    split = dataset_split(dataset)
    arch = mlp_options(residual)
    ghost_sizes = [g for g in GHOSTS if batch_size % g == 0]
    if len(ghost_sizes) < len(GHOSTS):
        raise ValueError(f"batch_size must be a multiple of every ghost batch size {GHOSTS}; got {batch_size}")
    sub_rng, init_rng, order_rng = rng.spawn(3)
    index = per_class_subset(sub_rng, split.y_train, n_per_class)
    X, y = split.X_train[index], split.y_train[index]
    n = len(y)
    arms = [f"g{g}" for g in ghost_sizes] + ["free"]
    configs = {f"g{g}": mlp(hidden, "batch", **arch) if g == batch_size else
               mlp(hidden, "ghost", ghost_batch_size=g, **arch) for g in ghost_sizes}
    configs["free"] = mlp(hidden, "batch", reference_rows=n, **arch)
    sweep = lrs_per_arm(lrs, arms)
    grid = {arm: sorted(set(lr_grid)) if sweep else sorted({lrs[i], lrs[-1], low_lr}) for i, arm in enumerate(arms)}
    if low_lr not in grid["free"]:
        raise ValueError(f"low_lr={low_lr} must be in lr_grid {lr_grid}")
    base = paired_init(init_rng, hidden, **arch)["batch"]
    plan = model.batch_plan(order_rng, n, batch_size, steps)
    results = {}
    for arm in arms:   # same initial weights, same batches; the noise-free arm forwards all of X with each batch
        config = configs[arm]
        run = train_on_plan(config, X, y, grid[arm], plan, base, X_reference=X if arm == "free" else None)
        alive = ~run.diverged
        logits = eval_logits(run.params, config, split.X_test, X, alive)
        results[arm] = dict(val=eval_accuracy(run.params, config, split.X_val, split.y_val, X, alive),
                            test=model.logits_accuracy(logits, split.y_test),
                            test_loss=nn.softmax_cross_entropy(np.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0),
                                                               split.y_test)[0],
                            train=eval_accuracy(run.params, config, X, y, X, alive), diverged=run.diverged)
    if sweep:
        chosen = {arm: model.select_lr(grid[arm], results[arm]["val"]) for arm in arms}
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
        by_lr = dict(zip(grid[arm], r["val"]))
        out[f"val_acc_by_lr_{arm}"] = np.array([by_lr.get(v, np.nan) for v in lr_grid], dtype=float)
    out["best_at_edge"] = float(sum(sweep and k in (0, len(lr_grid) - 1) for k in chosen.values()))
    out["diverged"] = float(sum(r["diverged"].sum() for r in results.values()))
    out["ghost_batch_size"] = np.array(ghost_sizes, dtype=float)
    for name, key in (("test_acc_gain", "test_acc"), ("test_acc_gain_common", "test_acc_common"),
                      ("test_acc_gain_low", "test_acc_low"), ("gap_gain", "gap")):
        out[name] = np.array([out[f"{key}_{a}"] - out[f"{key}_free"] for a in arms[:-1]])
    out["lr_grid"] = np.asarray(lr_grid, dtype=float)
    return out


# ============================================================================ same function, new parametrization

def matching_bn_params(plain: dict, stats_x: np.ndarray, config: model.MLPConfig) -> dict:
    """BN parameters that compute exactly the plain network's function when BN normalizes with the
    statistics of `stats_x`: the same W and b; gamma_l = sqrt(var_l + eps), beta_l = mean_l, where
    (mean_l, var_l) are the statistics of layer l's pre-activation on stats_x. `plain` is one
    network or a stack; `config` the plain network's."""
    record: dict = {}
    model.forward(plain, {}, stats_x, config, record=record)
    bn = {name: value.copy() for name, value in plain.items()}
    stack = plain["W0"].ndim == 3
    for i in range(config.n_layers - 1):
        pre = record[f"pre{i}"]
        mean = pre.mean(axis=-2, keepdims=stack)
        var = np.square(pre - (mean if stack else mean[None])).mean(axis=-2, keepdims=stack)
        bn[f"gamma{i}"] = np.sqrt(var + config.eps).astype(pre.dtype)
        bn[f"beta{i}"] = mean.astype(pre.dtype)
    return bn


def _total_variation(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """(A,) mean over rows of the total-variation distance between the two softmax distributions."""
    def softmax(z):
        e = np.exp(z - z.max(axis=2, keepdims=True))
        return e / e.sum(axis=2, keepdims=True)
    return 0.5 * np.abs(softmax(logits_a) - softmax(logits_b)).sum(axis=2).mean(axis=1)


AFFINE_ARMS = {"plain": "plain", "bn_fixed": "noise-free BN reparametrization"}


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
    series=axes({
        "step": "checkpoints (SGD steps)",
        "tv_reparam": "distance plain vs noise-free BN reparametrization over training (common LR)",
        "tv_order": "distance plain vs plain with another batch order over training (common LR)",
        "tv_batch": "distance plain vs BN with batch statistics over training (common LR)",
        "loss_step": "end of each check interval (SGD steps)",
        "loss_curve[curve]": "{curve}: mini-batch loss averaged over each check interval (common LR)",
        "lr": "learning-rate grid",
        "mean_loss_by_lr[arm]": "{arm}: mean training loss over the run at each LR (NaN: diverged, or above the "
                                "chance-level loss ln 10)",
        "val_acc_by_lr[arm]": "{arm}: validation accuracy at the end, at each LR",
    }, curve=("plain", "bn_fixed", "bn_batch"), arm=AFFINE_ARMS),
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
    init_rng, order_rng, reorder_rng, stats_rng = rng.spawn(4)
    lr = np.asarray(lrs, dtype=np.float64)
    if low_lr not in lrs:
        raise ValueError(f"low_lr={low_lr} must be one of lrs {lrs}")
    stats_x = X[sample_rows(stats_rng, len(y), stats_rows)]
    plain_cfg = mlp(hidden)
    fixed_cfg = mlp(hidden, "batch", reference_rows=stats_rows)      # noise-free: statistics of stats_x
    batch_cfg = mlp(hidden, "batch")
    initial = model.init_params(init_rng, plain_cfg)

    # exactness at init, float64: the BN reparametrization computes the plain function
    p64, s64, t64 = _to64(initial), stats_x.astype(np.float64), split.X_test.astype(np.float64)
    plain64, fixed64 = replace(plain_cfg, dtype="float64"), replace(fixed_cfg, dtype="float64")
    logits_plain = model.forward(p64, {}, t64, plain64)[0]
    logits_bn = model.forward(matching_bn_params(p64, s64, plain64), model.init_state(fixed64),
                              np.concatenate([s64, t64]), fixed64)[0][stats_rows:]
    init_error = (np.abs(logits_bn - logits_plain).max() / np.abs(logits_plain).max()
                  / np.finfo(np.float64).eps)

    checks = steps // check_every
    plan = model.batch_plan(order_rng, len(y), batch_size, steps)
    replan = model.batch_plan(reorder_rng, len(y), batch_size, steps)

    def run(config, params, lrs, order, reference=None):
        """Train; return (mean mini-batch loss per check interval (A, checks), the test logits at every
        check (checks + 1, A, N, C), or, given `reference` logits per check, the TV distance to them
        (A, checks + 1), and the result). Inference: precise BN over stats_x."""
        def look(index, params, alive):
            logits = eval_logits(params, config, split.X_test, stats_x, alive)
            return logits if reference is None else _total_variation(reference[index], logits)
        hook = Checkpoints(check_every, look)
        result = train_on_plan(config, X, y, lrs, order, params, record=hook,
                               X_reference=stats_x if config.reference_rows else None)
        losses = np.full((len(lrs), checks * check_every), np.nan)
        ran = min(result.losses.shape[1], checks * check_every)
        losses[:, :ran] = result.losses[:, :ran]
        looks = hook.values(checks + 1)
        return losses.reshape(len(lrs), checks, check_every).mean(axis=2), looks if reference is None else looks.T, result

    def accuracies(config, result, x, y_true):
        return eval_accuracy(result.params, config, x, y_true, stats_x, ~result.diverged)

    loss_plain, plain_logits, plain = run(plain_cfg, initial, lr, plan)
    loss_fixed, tv_fixed, fixed = run(fixed_cfg, matching_bn_params(initial, stats_x, plain_cfg), lr, plan,
                                      plain_logits)
    trained = {"plain": (plain_cfg, plain), "bn_fixed": (fixed_cfg, fixed)}
    val = {arm: accuracies(*trained[arm], split.X_val, split.y_val) for arm in AFFINE_ARMS}
    test = {arm: accuracies(*trained[arm], split.X_test, split.y_test) for arm in AFFINE_ARMS}
    c = model.select_lr(lr, val["plain"])                                      # the common LR
    reference, common = plain_logits[:, c:c + 1], lr[c:c + 1]
    _, tv_order, _ = run(plain_cfg, initial, common, replan, reference)
    loss_batch, tv_batch, batch = run(batch_cfg, matching_bn_params(initial, stats_x, plain_cfg), common, plan,
                                      reference)
    test_batch = accuracies(batch_cfg, batch, split.X_test, split.y_test)
    chosen = model.select_lr(lr, val["bn_fixed"])
    low = lrs.index(low_lr)
    mean_loss = {"plain": loss_plain.mean(axis=1), "bn_fixed": loss_fixed.mean(axis=1)}
    finite = lambda a: np.where(np.isfinite(a), a, np.nan)  # noqa: E731
    learning = lambda a: np.where(np.isfinite(a) & (a <= np.log(10.0)), a, np.nan)  # noqa: E731  chance: ln 10
    capped = lambda v: float(min(v, 1e3)) if np.isfinite(v) else 1e3  # noqa: E731
    return {
        "init_error_eps": float(init_error),
        "dist_reparam": float(tv_fixed[c].mean()), "dist_order": float(tv_order[0].mean()),
        "dist_batch": float(tv_batch[0].mean()),
        "loss_plain": capped(mean_loss["plain"][c]), "loss_bn_fixed": capped(mean_loss["bn_fixed"][c]),
        "loss_bn_batch": capped(loss_batch[0].mean()),
        "loss_plain_low": capped(mean_loss["plain"][low]), "loss_bn_fixed_low": capped(mean_loss["bn_fixed"][low]),
        "test_acc_plain": float(test["plain"][c]), "test_acc_bn_fixed": float(test["bn_fixed"][chosen]),
        "test_acc_common_bn_fixed": float(test["bn_fixed"][c]), "test_acc_common_bn_batch": float(test_batch[0]),
        "lr_plain": float(lr[c]), "lr_bn_fixed": float(lr[chosen]),
        "best_at_edge": float((c in (0, len(lr) - 1)) + (chosen in (0, len(lr) - 1))),
        "step": np.arange(0, steps + 1, check_every, dtype=float),
        "loss_step": np.arange(1, checks + 1) * float(check_every),
        "tv_reparam": tv_fixed[c], "tv_order": tv_order[0], "tv_batch": tv_batch[0],
        "loss_curve_plain": finite(loss_plain[c]), "loss_curve_bn_fixed": finite(loss_fixed[c]),
        "loss_curve_bn_batch": finite(loss_batch[0]),
        "lr": lr,
        **spread("mean_loss_by_lr[arm]", [learning(mean_loss[arm]) for arm in AFFINE_ARMS], arm=AFFINE_ARMS),
        **spread("val_acc_by_lr[arm]", [val[arm] for arm in AFFINE_ARMS], arm=AFFINE_ARMS),
    }
