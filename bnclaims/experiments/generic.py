"""Generic experiments: claims about training written in YAML alone.

``train-compare`` trains the arms a claim declares in ``params.arms`` (a mapping from arm name
to settings: normalization and its position, learning rate or a grid of them, batch size and order, depth,
width, optimizer, epochs, ghost batch size, running-statistics momentum) on the digits data
and returns the standard metrics of every arm, named after it (``test_acc_<arm>``, ...).
Every arm is one or more networks of `bnclaims.model.train_stack` (one per learning rate of
its grid; arms with the same architecture and schedule share one stack). All runs are
paired: the same seed gives every arm the same initial weights (where the sizes match), the
same batches (where batch size and order match) and the same training subset.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal, TypedDict

import numpy as np

from bnclaims import data, model
from bnclaims.experiments import Range, experiment
from bnclaims.recorders import mlp_options

Positive = Annotated[float, Range(0, None, low_open=True)]


class ArmSettings(TypedDict, total=False):
    """One arm of train-compare; every key optional (defaults in ARM_DEFAULTS)."""

    norm: Literal[model.NORMS]
    lr: Positive | list[Positive]
    batch_size: Annotated[int, Range(2, 4096)]
    order: Literal["shuffled", "class-sorted"]
    depth: Annotated[int, Range(1, 16)]
    width: Annotated[int, Range(1, 4096)]
    optimizer: Literal[model.OPTIMIZERS]
    momentum: Annotated[float, Range(0, 1, high_open=True)]
    epochs: Annotated[int, Range(1, 1000)]
    ghost_batch_size: Annotated[int, Range(2, 4096)]
    groups: Annotated[int, Range(1, 4096)]
    running_momentum: Annotated[float, Range(0, 1, low_open=True)]
    affine: bool
    reference: bool
    norm_position: Literal["before", "after"]
    residual: bool


ARM_DEFAULTS: dict = {
    "norm": "batch", "lr": [0.01, 0.03, 0.1, 0.3, 1.0], "batch_size": 32, "order": "shuffled", "depth": 2,
    "width": 64, "optimizer": "sgd", "momentum": None, "epochs": 10, "ghost_batch_size": 8, "groups": 8,
    "running_momentum": 0.1, "affine": True, "reference": False, "norm_position": "before",
    "residual": False,
}
MOMENTUM_DEFAULT = {"sgd": 0.0, "momentum": 0.9, "adam": 0.0}  # when an arm names no momentum

PER_ARM_METRICS = {
    "test_acc": "test accuracy at the arm's chosen learning rate (a diverged network scores 0)",
    "val_acc": "validation accuracy at the end of training, chosen learning rate (diverged: 0)",
    "final_loss": "mean training batch loss over the last 10 % of steps, chosen rate (diverged: the chance loss)",
    "steps_to_target": "steps until validation accuracy first reached target_accuracy, chosen rate "
                       "(never: steps trained + 1, censored; see reached_target)",
    "reached_target": "1 if validation accuracy reached target_accuracy, else 0",
    "max_lr_trains": "largest learning rate of the arm's grid that neither diverged nor got stuck, with final "
                     "validation accuracy >= trains_accuracy (0: none)",
    "best_lr": "learning rate chosen on validation (highest accuracy; ties to the smaller rate)",
    "lr_edge": "1 if the chosen learning rate is the smallest or largest of a grid of 2 or more, else 0",
    "diverged": "1 if training at the chosen rate diverged (a NaN/inf loss), else 0",
    "stuck": "1 if training at the chosen rate stayed finite but at chance (final loss >= 95 % of chance), else 0",
    "train_acc": "accuracy on the arm's own training examples at the end, eval mode, chosen rate (diverged: 0)",
    "mode_flip": "fraction of test predictions that change between training mode (the norm's statistics of "
                 "test batches of the arm's batch size) and eval mode, chosen rate (0 for a norm without "
                 "batch statistics, and for a diverged arm)",
    "mode_acc_gap": "eval-mode minus training-mode test accuracy on the same test batches, chosen rate "
                    "(0 for a norm without batch statistics, and for a diverged arm)",
    "dead_units": "fraction of the last hidden layer's units whose ReLU output is 0 for every validation "
                  "example (dead: they get no gradient), eval mode, chosen rate (diverged: 1)",
}
NOISE_METRICS = {
    "noisy_test_acc": "test accuracy with Gaussian noise of std test_noise_std added to every (standardized) "
                      "test input, the same noise for every arm, chosen rate (diverged: 0)",
    "noise_acc_drop": "test accuracy lost to that input noise: test_acc - noisy_test_acc (diverged: 0)",
}
AFFINE_METRICS = {
    "gamma_step": "mean |change of gamma| per step, over features, layers and steps (chosen rate)",
    "beta_step": "mean |change of beta| per step, over features, layers and steps (chosen rate)",
    "gamma_fluct": "late fluctuation of gamma: std after a linear detrend over the last late_fraction "
                   "of steps, mean over features and layers (chosen rate)",
    "beta_fluct": "late fluctuation of beta, as gamma_fluct",
}
PER_ARM_SERIES = {
    "curve_step": "steps at which the curves were evaluated (x axis)",
    "curve_val_acc": "validation accuracy during training, chosen rate",
    "curve_val_loss": "validation loss during training, chosen rate",
    "grid_lr": "the arm's learning-rate grid (x axis)",
    "grid_val_acc": "final validation accuracy at each learning rate of the grid (diverged: 0)",
    "grid_diverged": "1 where training at that learning rate diverged (a NaN/inf loss), else 0",
    "grid_stuck": "1 where training at that learning rate stayed finite but at chance, else 0",
}


def arm_settings(settings: dict, all_arms: dict | None = None) -> dict:
    """An arm's settings over the claim's ``all_arms`` over the defaults; ``lr`` always a list."""
    out = {**ARM_DEFAULTS, **(all_arms or {}), **settings}
    if out["momentum"] is None:
        out["momentum"] = MOMENTUM_DEFAULT[out["optimizer"]]
    if not isinstance(out["lr"], list):
        out["lr"] = [out["lr"]]
    return out


def _has_affine(settings: dict) -> bool:
    return settings["norm"] != "none" and settings["affine"]


def train_compare_names(params: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(metrics, series) of train-compare for a claim's params: ``<metric>_<arm>`` for every arm."""
    metrics: dict[str, str] = {}
    series: dict[str, str] = {}
    for arm, settings in params["arms"].items():
        s = arm_settings(settings, params.get("all_arms"))
        per_arm = {**PER_ARM_METRICS, **(AFFINE_METRICS if _has_affine(s) else {}),
                   **(NOISE_METRICS if params.get("test_noise_std", 0.0) > 0 else {})}
        for base, text in per_arm.items():
            metrics[f"{base}_{arm}"] = f"arm '{arm}': {text}"
        for base, text in PER_ARM_SERIES.items():
            series[f"{base}_{arm}"] = f"arm '{arm}': {text}"
    if len(set(metrics) | set(series)) != len(metrics) + len(series):
        raise ValueError("arm names make two metric names equal")
    return metrics, series


def check_arms(arms: dict, n_train: int, all_arms: dict | None = None) -> None:
    """What the types cannot say: settings that depend on each other. Raises ValueError."""
    for arm, settings in arms.items():
        s = arm_settings(settings, all_arms)
        if s["norm"] == "ghost" and s["batch_size"] % s["ghost_batch_size"]:
            raise ValueError(f"arm '{arm}': ghost_batch_size {s['ghost_batch_size']} must divide "
                             f"batch_size {s['batch_size']}")
        if s["norm"] == "group" and s["width"] % s["groups"]:
            raise ValueError(f"arm '{arm}': groups {s['groups']} must divide width {s['width']}")
        if s["batch_size"] > n_train:
            raise ValueError(f"arm '{arm}': batch_size {s['batch_size']} exceeds the {n_train} training examples")
        if s["optimizer"] == "momentum" and not s["momentum"] > 0:
            raise ValueError(f"arm '{arm}': optimizer 'momentum' needs momentum > 0")
        if s["reference"] and s["norm"] != "batch":
            raise ValueError(f"arm '{arm}': reference (noise-free statistics) needs norm 'batch'")
        if s["norm_position"] == "after" and s["norm"] == "none":
            raise ValueError(f"arm '{arm}': norm_position 'after' needs a norm (norm 'none' has no position)")
        if s["residual"] and s["depth"] < 2:
            raise ValueError(f"arm '{arm}': residual blocks need depth >= 2 (a block sits between two hidden "
                             f"layers); got depth {s['depth']}")


def _step_size(trajectory: np.ndarray, steps: int) -> float:
    """Mean |x_{t+1} - x_t| over the first ``steps`` updates; trajectory (T, ...) starts at step 0."""
    if steps < 1:
        return 0.0
    return float(np.mean(np.abs(np.diff(trajectory[: steps + 1].astype(np.float64), axis=0))))


def _late_fluctuation(trajectory: np.ndarray, steps: int, late_fraction: float) -> float:
    """Std of each coordinate after a least-squares linear detrend over the last part of the run."""
    run = trajectory[: steps + 1].astype(np.float64)
    window = run[len(run) - max(3, int(round(late_fraction * len(run)))):].reshape(-1, run[0].size)
    if len(window) < 3:
        return 0.0
    t = np.arange(len(window), dtype=np.float64)
    t -= t.mean()
    slope = (t @ (window - window.mean(axis=0))) / (t @ t)
    residual = window - window.mean(axis=0) - np.outer(t, slope)
    return float(np.mean(residual.std(axis=0)))


def _mode_comparison(result: model.StackResult, config: model.MLPConfig, X: np.ndarray, y: np.ndarray,
                     batch_size: int, order: np.ndarray, X_reference: np.ndarray | None,
                     noise_rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray]:
    """Training mode against eval mode on the same examples, for every arm of a stack: (flip (K,), gap (K,)).

    The examples ``X[order]`` are cut into whole batches of ``batch_size`` (a remainder is left out);
    training mode normalizes each batch with the norm's own training statistics (batch, ghost,
    renorm, running averages updated with the batch, noisy; with ``X_reference`` its rows, as in
    training), from the final parameters and state, nothing kept. flip: the fraction of predictions
    that differ; gap: eval-mode minus training-mode accuracy."""
    k_arms = len(result.diverged)
    if config.norm not in model.RUNNING_NORMS:
        return np.zeros(k_arms), np.zeros(k_arms)
    covered = order[: len(order) // batch_size * batch_size]
    train_pred, eval_pred = [], []
    with np.errstate(all="ignore"):
        for start in range(0, len(covered), batch_size):
            xb = X[covered[start:start + batch_size]]
            rows = xb if X_reference is None else np.concatenate([X_reference, xb])
            logits = model.forward(result.params, result.state, rows, config, True, noise_rngs)[0]
            train_pred.append(np.where(np.isfinite(logits[..., -len(xb):, :]).all(axis=-1),
                                       logits[..., -len(xb):, :].argmax(axis=-1), -1))
        logits = model.forward(result.params, result.state, X[covered], config, False)[0]
    eval_pred = np.where(np.isfinite(logits).all(axis=-1), logits.argmax(axis=-1), -1)
    train_pred = np.concatenate(train_pred, axis=-1)
    labels = y[covered]
    flip = np.mean(train_pred != eval_pred, axis=-1)
    gap = np.mean(eval_pred == labels, axis=-1) - np.mean(train_pred == labels, axis=-1)
    alive = ~result.diverged
    return np.where(alive, flip, 0.0), np.where(alive, gap, 0.0)


def _censor(values: np.ndarray) -> np.ndarray:
    """A curve with NaN for points that are missing or not finite (a diverged run)."""
    return np.where(np.isfinite(values), values, np.nan)


@experiment(
    "train-compare",
    metrics={f"{base}_<arm>": text for base, text in {**PER_ARM_METRICS, **AFFINE_METRICS, **NOISE_METRICS}.items()},
    series={f"{base}_<arm>": text for base, text in PER_ARM_SERIES.items()},
    names=train_compare_names,
)
def train_compare(
    rng: np.random.Generator,
    *,
    arms: dict[str, ArmSettings] = {"bn": {"norm": "batch"}, "plain": {"norm": "none"}},  # noqa: B006
    target_accuracy: Annotated[float, Range(0, 1)] = 0.9,
    validation_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.2,
    train_per_class: Annotated[int, Range(0)] = 0,
    evals_per_epoch: Annotated[int, Range(1, 1000)] = 1,
    late_fraction: Annotated[float, Range(0, 1, low_open=True)] = 0.25,
    test_noise_std: Annotated[float, Range(0, None)] = 0.0,
    all_arms: ArmSettings = {},  # noqa: B006
    trains_accuracy: Annotated[float, Range(0, 1)] = 0.0,
):
    """Train the declared arms (MLPs on 8x8 digits, softmax cross-entropy) and compare them.

    Each arm: an MLP 64 -> width x depth -> 10 with ``norm`` before each ReLU (``model.MLPConfig``;
    after it with ``norm_position: after``),
    trained for ``epochs`` with ``optimizer`` at every learning rate of its ``lr`` grid; the rate
    with the best final validation accuracy is chosen (`model.select_lr`: ties to the smaller
    rate, a diverged run counts as 0), and every ``<metric>_<arm>`` is measured at that rate,
    except ``max_lr_trains``, which looks at the whole grid. ``train_per_class`` > 0 trains on
    that many examples per class (a random subset per seed, the same for every arm). A diverged
    arm is flagged (``diverged_<arm>`` = 1), never an error. An arm with ``reference: true`` is
    noise-free batch norm: the statistics of all its training examples at every step, gradients
    through them, the loss on the batch (``MLPConfig(reference_rows=)``). ``test_noise_std`` > 0
    adds ``noisy_test_acc_<arm>``: test accuracy under Gaussian input noise of that std.
    ``trains_accuracy``: the final validation accuracy a rate needs to count as training in
    ``max_lr_trains`` (besides a finite loss below chance). ``all_arms`` holds settings every arm
    takes unless it sets its own (so a ladder rung can change every arm at once, e.g.
    ``all_arms: {depth: 8}``). ``residual: true`` makes an arm's hidden layers pre-activation
    residual blocks (`recorders.mlp_options`). Arms that would train the same network (same
    architecture, schedule, rate and optimizer) are trained once.
    """
    split = data.digits_split(0.25, validation_fraction, standardize=True, dtype=np.float32)
    subset_rng, pair_rng, measure_rng = rng.spawn(3)   # the first two as rng.spawn(2) gives them
    X, y = split.X_train, split.y_train
    if train_per_class:
        X, y = data.subsample(subset_rng, X, y, train_per_class)
    merged = {name: arm_settings(settings, all_arms) for name, settings in arms.items()}
    check_arms(merged, len(y))
    # what every arm is measured on, drawn once (paired): input noise and the order of the test batches
    noise_rng, order_rng, mode_rng = measure_rng.spawn(3)
    X_noisy = (split.X_test + test_noise_std * noise_rng.standard_normal(split.X_test.shape)).astype(np.float32) \
        if test_noise_std > 0 else None
    test_order = order_rng.permutation(len(split.y_test))

    # one stack per (architecture, batch size, epochs): every distinct learning rate and optimizer of the arms
    # that share them, trained once for all the arms that name it
    stacks: dict[tuple, dict[model.Arm, list[str]]] = {}
    for name, s in merged.items():
        config = model.MLPConfig(
            sizes=(X.shape[1],) + (s["width"],) * s["depth"] + (10,), norm=s["norm"], affine=s["affine"],
            ghost_batch_size=s["ghost_batch_size"], groups=s["groups"], momentum=s["running_momentum"],
            reference_rows=len(y) if s["reference"] else 0, norm_position=s["norm_position"],
            **mlp_options(s["residual"]),
        )
        for lr in s["lr"]:
            arm = model.Arm(lr=lr, optimizer=s["optimizer"], momentum=s["momentum"], order=s["order"])
            stacks.setdefault((config, s["batch_size"], s["epochs"]), {}).setdefault(arm, []).append(name)

    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for (config, batch_size, epochs), members in stacks.items():
        steps_per_epoch = len(y) // batch_size
        affine = [f"{p}{i}" for i in range(config.n_layers - 1) for p in ("gamma", "beta")] \
            if config.norm != "none" and config.affine else []
        trajectory = model.ParamTrajectory(affine) if affine else None
        result = model.train_stack(
            copy.deepcopy(pair_rng), config, X, y, list(members), epochs=epochs,
            batch_size=batch_size, X_eval=split.X_val, y_eval=split.y_val,
            eval_every=max(1, steps_per_epoch // evals_per_epoch),
            record=trajectory, X_reference=X if config.reference_rows else None,
        )
        accuracy, record = {}, {}
        with np.errstate(all="ignore"):
            for key, (X_eval, y_eval) in {"test": (split.X_test, split.y_test), "train": (X, y),
                                          "noisy": (X_noisy, split.y_test)}.items():
                if X_eval is not None:
                    logits, _, _ = model.forward(result.params, result.state, X_eval, config, False, tape=False)
                    accuracy[key] = model.logits_accuracy(logits, y_eval)
            model.forward(result.params, result.state, split.X_val, config, False, record=record, tape=False)
        dead = (record[f"act{config.n_layers - 2}"].max(axis=-2) <= 0).mean(axis=-1)
        flip, gap = _mode_comparison(result, config, split.X_test, split.y_test, batch_size, test_order,
                                     X if config.reference_rows else None,
                                     copy.deepcopy(mode_rng).spawn(len(members)))
        test_acc = accuracy["test"]
        paths = trajectory.arrays() if trajectory else {}
        for k, (arm, names) in enumerate(members.items()):
            diverged = bool(result.diverged[k])
            run = {
                "lr": arm.lr, "diverged": diverged, "stuck": bool(result.stuck[k]), "steps": int(result.steps[k]),
                "test_acc": 0.0 if diverged else float(test_acc[k]),
                "train_acc": 0.0 if diverged else float(accuracy["train"][k]),
                "noisy_test_acc": 0.0 if diverged or "noisy" not in accuracy else float(accuracy["noisy"][k]),
                "mode_flip": float(flip[k]), "mode_acc_gap": float(gap[k]),
                "dead_units": 1.0 if diverged else float(dead[k]),
                "val_acc": 0.0 if diverged else float(np.nan_to_num(result.eval_accuracy[-1, k])),
                "final_loss": result.chance_loss if diverged else float(result.final_loss[k]),
                "curve_step": result.eval_steps.astype(np.float64),
                "curve_val_acc": result.eval_accuracy[:, k], "curve_val_loss": result.eval_loss[:, k],
                "paths": {p: paths[p][:, k] for p in affine},
            }
            for name in names:
                runs[name].append(run)

    out: dict[str, object] = {}
    for name, s in merged.items():
        grid = runs[name]
        lrs = np.array([r["lr"] for r in grid])
        val = np.array([r["val_acc"] for r in grid])
        chosen = grid[model.select_lr(lrs, val, [r["diverged"] for r in grid])]
        reached = np.flatnonzero(np.nan_to_num(chosen["curve_val_acc"]) >= target_accuracy)
        trains = [r["lr"] for r in grid if not r["diverged"] and not r["stuck"] and r["val_acc"] >= trains_accuracy]
        out.update({
            f"test_acc_{name}": chosen["test_acc"],
            f"val_acc_{name}": chosen["val_acc"],
            f"final_loss_{name}": chosen["final_loss"],
            f"steps_to_target_{name}": float(chosen["curve_step"][reached[0]]) if reached.size else chosen["steps"] + 1.0,
            f"reached_target_{name}": float(reached.size > 0),
            f"max_lr_trains_{name}": float(max(trains, default=0.0)),
            f"best_lr_{name}": float(chosen["lr"]),
            f"lr_edge_{name}": float(len(lrs) > 1 and chosen["lr"] in (lrs.min(), lrs.max())),
            f"diverged_{name}": float(chosen["diverged"]),
            f"stuck_{name}": float(chosen["stuck"]),
            f"train_acc_{name}": chosen["train_acc"],
            f"mode_flip_{name}": chosen["mode_flip"],
            f"mode_acc_gap_{name}": chosen["mode_acc_gap"],
            f"dead_units_{name}": chosen["dead_units"],
            f"curve_step_{name}": chosen["curve_step"],
            f"curve_val_acc_{name}": _censor(chosen["curve_val_acc"]),
            f"curve_val_loss_{name}": _censor(chosen["curve_val_loss"]),
            f"grid_lr_{name}": lrs.astype(np.float64),
            f"grid_val_acc_{name}": val,
            f"grid_diverged_{name}": np.array([float(r["diverged"]) for r in grid]),
            f"grid_stuck_{name}": np.array([float(r["stuck"]) for r in grid]),
        })
        if test_noise_std > 0:
            out[f"noisy_test_acc_{name}"] = chosen["noisy_test_acc"]
            out[f"noise_acc_drop_{name}"] = chosen["test_acc"] - chosen["noisy_test_acc"]
        if _has_affine(s):
            for p in ("gamma", "beta"):
                layers = [v for key, v in chosen["paths"].items() if key.startswith(p)]
                out[f"{p}_step_{name}"] = float(np.mean([_step_size(v, chosen["steps"]) for v in layers]))
                out[f"{p}_fluct_{name}"] = float(np.mean(
                    [_late_fluctuation(v, chosen["steps"], late_fraction) for v in layers]))
    return out
