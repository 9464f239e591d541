"""Batch norm at inference time: batch coupling, running statistics, shifted test inputs.

One family: train one small MLP on the shipped digits (the recipe below), then look at what
its batch-norm layers do when it predicts -- in training mode (statistics of the batch being
predicted), in eval mode (running averages), or with statistics re-estimated on new inputs.

Recipe (shared by every experiment here, so one documented learning-rate sweep serves all):
64-128-128-10 ReLU MLP, batch norm before the activation, float32, plain SGD with momentum
0.9, batch 32, `epochs` epochs over the 1,078 training digits of the fixed split
(``data.digits_split(0.25, 0.2, standardize=True)``: 1,078 train / 269 validation / 450 test).
The learning rate comes from `lr_sweep` on the validation split with seeds other than the
reported ones (see the claim files for the table).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from bnclaims import data, model
from bnclaims.experiments import experiment

SIZES = (64, 128, 128, 10)
N_HIDDEN = len(SIZES) - 2


def digits() -> data.Split:
    """The split every experiment of this module uses (float32, standardized by train pixels)."""
    return data.digits_split(0.25, 0.2, standardize=True, dtype=np.float32)


def config(norm: Literal["batch", "none"], bn_momentum: float = 0.1) -> model.MLPConfig:
    return model.MLPConfig(sizes=SIZES, norm=norm, momentum=bn_momentum, dtype="float32")


def train_digits(rng: np.random.Generator, norm: Literal["batch", "none"], lr: float, epochs: int,
                 bn_momentum: float = 0.1, record=None) -> model.TrainResult:
    """Train the module's recipe; the same rng state gives every norm the same weights and batches."""
    split = digits()
    return model.train(rng, config(norm, bn_momentum), split.X_train, split.y_train, epochs=epochs,
                       batch_size=32, lr=lr, momentum=0.9, record=record)


def lr_sweep(seed: int, lrs: list[float], norm: Literal["batch", "none"], epochs: int = 20) -> list[float]:
    """Validation accuracy (eval mode) of the recipe at each learning rate, for one seed.

    Used once, by hand, on seeds far from the reported ones, to fix the learning rates in the
    claim files; diverged or stuck runs score their (chance-level) accuracy.
    """
    split = digits()
    out = []
    for lr in lrs:
        result = train_digits(np.random.default_rng(seed), norm, lr, epochs)
        acc = 0.0 if result.diverged else model.accuracy(result.params, result.state, split.X_val, split.y_val,
                                                          result.config)
        out.append(acc)
    return out


def _raw(split: data.Split, X: np.ndarray) -> np.ndarray:
    """Standardized digits back to pixel intensities in [0, 1]."""
    return X * split.pixel_std.astype(np.float32) + split.pixel_mean.astype(np.float32)


def _standardize(split: data.Split, raw: np.ndarray) -> np.ndarray:
    return ((raw - split.pixel_mean) / split.pixel_std).astype(np.float32)


def population_state(params: model.Params, X: np.ndarray, cfg: model.MLPConfig) -> model.State:
    """Batch-norm statistics of the whole set X, layer after layer (each layer normalized with the
    statistics of all of X before the next is measured): the population values running averages
    estimate ("precise BN"). Variances biased (divide by N); N is in the hundreds here."""
    record: dict = {}
    model.forward(params, model.init_state(cfg), X, cfg, train=True, record=record)
    state = {}
    for i in range(len(cfg.hidden_sizes)):
        pre = record[f"pre{i}"].astype(np.float64)
        state[f"running_mean{i}"] = pre.mean(axis=0).astype(cfg.np_dtype)
        state[f"running_var{i}"] = pre.var(axis=0).astype(cfg.np_dtype)
    return state


def _logits(params, state, X, cfg, train: bool) -> np.ndarray:
    return model.forward(params, state, X, cfg, train)[0]


# ----------------------------------------------------------------------------- outlier in the batch


@experiment(
    "bn-outlier-in-batch",
    metrics={
        "acc_eval": "accuracy on the clean test examples, eval mode (running statistics)",
        "acc_train_clean": "same examples predicted in training mode, batches of clean digits only",
        "acc_train_mild": "training mode, each batch holding one digit `mild` x brighter",
        "acc_train_extreme": "training mode, each batch holding one digit `extreme` x brighter",
        "outlier_cost_mild": "acc_train_clean - acc_train_mild: what the `mild` x brighter digit itself costs "
                             "(same batches, same mode; only the outlier's brightness differs)",
        "outlier_cost_extreme": "acc_train_clean - acc_train_extreme: the cost of the `extreme` x brighter digit",
        "batch_stats_cost": "acc_eval - acc_train_clean: the cost of ordinary training-mode statistics "
                            "(batches of 32 ordinary digits) against running statistics, no outlier involved",
        "eval_max_change": "max |change| of a clean example's eval-mode logits when the outlier joins its "
                           "batch, relative to the largest |logit|",
    },
    series={
        "magnitude": "brightness factor of the outlier (x axis; 1 = an ordinary digit)",
        "acc_train_by_magnitude": "accuracy on the clean examples in training mode, per outlier magnitude",
        "acc_eval_by_magnitude": "eval-mode accuracy (does not depend on the outlier)",
        "mean_shift_by_magnitude": "median over first-layer units of |batch-mean shift| caused by the outlier, "
                                   "in clean-batch standard deviations",
    },
)
def outlier_in_batch(
    rng: np.random.Generator,
    *,
    lr: float = 0.1,
    epochs: int = 20,
    batch_size: int = 32,
    magnitudes: list[float] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],  # noqa: B006 - never mutated
    mild: float = 2.0,
    extreme: float = 16.0,
) -> dict:
    """How much one "big" example in a batch changes the predictions for the others.

    Trains the module's BN recipe (see the module docstring). Then the 450 test digits are
    shuffled into batches of `batch_size` - 1 clean examples, and each batch gets one extra
    example: a random training digit whose pixel intensities are multiplied by a magnitude k
    (k = 16 is the classic bug of feeding the raw 0..16 counts instead of 0..1). The clean
    examples are predicted (a) in training mode, normalized with the statistics of their batch
    including the outlier, and (b) in eval mode with the running statistics. Reports the clean
    accuracy per k and the largest change of any eval-mode logit caused by the outlier.

    The cost of an outlier is measured against the training-mode arm with k = 1 (the same
    batches, the extra digit at its ordinary brightness), never against eval mode: eval minus
    training mode also contains the cost of ordinary batch statistics (`batch_stats_cost`),
    which has nothing to do with the outlier.
    """
    for k in (1.0, mild, extreme):
        if k not in magnitudes:
            raise ValueError(f"magnitude {k} must be one of the swept magnitudes {magnitudes} "
                             f"(1 = an ordinary digit, the no-outlier reference)")
    split = digits()
    result = train_digits(rng, "batch", lr, epochs)
    params, state, cfg = result.params, result.state, result.config

    clean_per_batch = batch_size - 1
    order = rng.permutation(len(split.y_test))
    n_batches = len(order) // clean_per_batch
    clean_index = order[: n_batches * clean_per_batch].reshape(n_batches, clean_per_batch)
    outlier_raw = _raw(split, split.X_train[rng.integers(len(split.y_train), size=n_batches)])
    y_clean = split.y_test[clean_index]                                    # (batches, B - 1)

    eval_logits_alone = _logits(params, state, split.X_test[clean_index.ravel()], cfg, False)
    acc_eval = float(np.mean(eval_logits_alone.argmax(1) == y_clean.ravel()))
    scale = float(np.max(np.abs(eval_logits_alone)))

    acc_by_k, shift_by_k = [], []
    eval_change = 0.0
    for k in magnitudes:
        correct = 0
        shifts = []
        for b in range(n_batches):
            xb = np.concatenate([split.X_test[clean_index[b]], _standardize(split, k * outlier_raw[b:b + 1])])
            record: dict = {}
            logits, _, _ = model.forward(params, state, xb, cfg, True, record=record)
            correct += int(np.sum(logits[:clean_per_batch].argmax(1) == y_clean[b]))
            pre = record["pre0"].astype(np.float64)
            clean_pre = pre[:clean_per_batch]
            shift = np.abs(pre.mean(0) - clean_pre.mean(0)) / (clean_pre.std(0) + 1e-6)
            shifts.append(np.median(shift))
            if k == max(magnitudes):
                eval_logits = _logits(params, state, xb, cfg, False)[:clean_per_batch]
                alone = eval_logits_alone[b * clean_per_batch:(b + 1) * clean_per_batch]
                eval_change = max(eval_change, float(np.max(np.abs(eval_logits - alone))) / scale)
        acc_by_k.append(correct / clean_index.size)
        shift_by_k.append(float(np.mean(shifts)))
    acc_by_k = np.array(acc_by_k)
    mags = list(magnitudes)
    return {
        "acc_eval": acc_eval,
        "acc_train_clean": float(acc_by_k[mags.index(1.0)]),
        "acc_train_mild": float(acc_by_k[mags.index(mild)]),
        "acc_train_extreme": float(acc_by_k[mags.index(extreme)]),
        "outlier_cost_mild": float(acc_by_k[mags.index(1.0)] - acc_by_k[mags.index(mild)]),
        "outlier_cost_extreme": float(acc_by_k[mags.index(1.0)] - acc_by_k[mags.index(extreme)]),
        "batch_stats_cost": float(acc_eval - acc_by_k[mags.index(1.0)]),
        "eval_max_change": eval_change,
        "magnitude": np.array(mags, dtype=float),
        "acc_train_by_magnitude": acc_by_k,
        "acc_eval_by_magnitude": np.full(len(mags), acc_eval),
        "mean_shift_by_magnitude": np.array(shift_by_k),
    }


# ----------------------------------------------------------------------------- one example at a time


class RunningBank:
    """Running averages of the BN statistics for several momenta at once (PyTorch convention:
    `nn.update_running_stats` with the unbiased batch variance), stacked as (M, width) arrays."""

    def __init__(self, momenta: list[float], widths: tuple[int, ...]):
        self.momenta = np.array(momenta, dtype=np.float64)[:, None]          # (M, 1)
        self.mean = [np.zeros((len(momenta), w)) for w in widths]
        self.var = [np.ones((len(momenta), w)) for w in widths]

    def update(self, record: dict, n: int) -> None:
        """One training batch: ``record[f"pre{i}"]`` (n, width) is the input of BN layer i."""
        m = self.momenta
        for i in range(len(self.mean)):
            pre = record[f"pre{i}"].astype(np.float64)
            batch_mean = pre.mean(axis=0)
            centred = pre - batch_mean
            batch_var = np.einsum("nd,nd->d", centred, centred) / (n - 1)     # unbiased, as PyTorch
            self.mean[i] = (1.0 - m) * self.mean[i] + m * batch_mean
            self.var[i] = (1.0 - m) * self.var[i] + m * batch_var

    def state(self, k: int, dtype=np.float32) -> model.State:
        """The running statistics of the k-th momentum as a model state."""
        out = {}
        for i in range(len(self.mean)):
            out[f"running_mean{i}"] = self.mean[i][k].astype(dtype)
            out[f"running_var{i}"] = self.var[i][k].astype(dtype)
        return out

    def errors(self, population: model.State) -> np.ndarray:
        """`stat_error` of every momentum at once: (M,)."""
        sq, count = 0.0, 0
        for i in range(len(self.mean)):
            pm = population[f"running_mean{i}"].astype(np.float64)
            pv = population[f"running_var{i}"].astype(np.float64) + 1e-5
            sq = sq + np.sum(((self.mean[i] - pm) / np.sqrt(pv)) ** 2, axis=1)
            sq = sq + np.sum((0.5 * np.log((self.var[i] + 1e-5) / pv)) ** 2, axis=1)
            count += 2 * len(pm)
        return np.sqrt(sq / count)


def stat_error(state: model.State, population: model.State) -> float:
    """How far running statistics are from the population ones: rms over every BN unit of
    (running_mean - pop_mean) / pop_std and of log(running_std / pop_std), pooled."""
    errors = []
    for i in range(N_HIDDEN):
        pm = population[f"running_mean{i}"].astype(np.float64)
        pv = population[f"running_var{i}"].astype(np.float64) + 1e-5
        rm = state[f"running_mean{i}"].astype(np.float64)
        rv = state[f"running_var{i}"].astype(np.float64) + 1e-5
        errors.append((rm - pm) / np.sqrt(pv))
        errors.append(0.5 * np.log(rv / pv))
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def single_example_batch_stats_logits(params: model.Params, X: np.ndarray, cfg: model.MLPConfig) -> np.ndarray:
    """Logits when every example is its own batch of one in TRAINING mode (batch statistics).

    With one example the batch mean is the example itself and the batch variance is 0, so
    (x - mean) / sqrt(var + eps) = 0 and each BN layer outputs beta whatever the input.
    Computed literally, row by row (``nn.batchnorm_forward`` refuses a batch of one).
    """
    out = np.empty((len(X), cfg.sizes[-1]), dtype=cfg.np_dtype)
    for row in range(len(X)):
        a = X[row:row + 1].astype(cfg.np_dtype)
        for i in range(cfg.n_layers):
            h = a @ params[f"W{i}"] + params[f"b{i}"]
            if i == cfg.n_layers - 1:
                break
            mean, var = h.mean(axis=0), h.var(axis=0)
            z = (h - mean) / np.sqrt(var + cfg.eps) * params[f"gamma{i}"] + params[f"beta{i}"]
            a = np.maximum(z, 0)
        out[row] = h[0]
    return out


@experiment(
    "bn-single-example-inference",
    metrics={
        "acc_single_running": "test accuracy predicting one example at a time with running statistics "
                              "(momentum `momentum`)",
        "acc_single_running_slow": "same with running statistics of momentum `slow_momentum`",
        "acc_population": "test accuracy with exact population statistics of the training set",
        "acc_batch_full": "test accuracy in training mode, the whole test set as one batch",
        "acc_single_batchstats": "test accuracy one example at a time in training mode (batch statistics)",
        "max_rel_logit_diff": "max |logit difference|, one-at-a-time vs whole-batch eval mode, relative to "
                              "the largest |logit|",
        "stat_err_running": "rms distance of the momentum-`momentum` running statistics from the population ones",
        "stat_err_slow": "same for `slow_momentum`",
    },
    series={
        "momentum": "running-average momentum (weight of the new batch) swept (x axis)",
        "acc_by_momentum": "test accuracy with the running statistics of each momentum",
        "stat_err_by_momentum": "distance of those running statistics from the population ones",
        "test_batch": "test batch size in training mode (x axis)",
        "acc_by_test_batch": "test accuracy in training mode with test batches of that size",
        "acc_single_line": "test accuracy one example at a time with running statistics, repeated per x",
        "warmup_step": "step of re-estimating the running statistics of the trained, frozen network (x axis)",
        "warmup_err_slow": "distance from the population statistics after that many batches, `slow_momentum`",
        "warmup_err_default": "same, `momentum`",
        "warmup_err_fast": "same, `fast_momentum`",
    },
)
def single_example_inference(
    rng: np.random.Generator,
    *,
    lr: float = 0.1,
    epochs: int = 20,
    momentum: float = 0.1,
    slow_momentum: float = 0.01,
    fast_momentum: float = 0.5,
    momenta: list[float] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],  # noqa: B006 - never mutated
    test_batches: list[int] = [2, 4, 8, 16, 32, 64, 128, 450],  # noqa: B006
    warmup_steps: int = 300,
) -> dict:
    """Can a batch-norm network predict one example at a time? Running vs batch statistics.

    Trains the module's BN recipe while keeping, beside the model's own running averages
    (momentum `momentum`), running averages for every momentum in `momenta` and for
    `slow_momentum` (the statistics do not affect training, so one run serves them all). Then
    on the 450 test digits: predictions one example at a time in eval mode (a real loop of
    batches of one), the same in training mode (batch statistics of one example), the whole
    test set in training mode, test batches of each size in `test_batches` in training mode,
    and eval mode with the exact population statistics of the training set. (Eval mode is a
    per-example map, so the slow-momentum accuracy is computed on the whole batch.) Finally, with the trained network frozen, running
    statistics are re-estimated from (0, 1) over `warmup_steps` training batches of 32 to show
    how fast each momentum approaches the population statistics.
    """
    split = digits()
    cfg = config("batch", momentum)
    tracked = list(momenta) + [momentum, slow_momentum]
    bank = RunningBank(tracked, cfg.hidden_sizes)
    result = train_digits(rng, "batch", lr, epochs, bn_momentum=momentum,
                          record=lambda step, info: bank.update(info.activations, len(info.y)))
    params = result.params
    running = result.state                                  # the model's own, momentum `momentum`
    slow = bank.state(len(tracked) - 1)
    population = population_state(params, split.X_train, cfg)
    X, y = split.X_test, split.y_test

    def acc(logits):
        return float(np.mean(logits.argmax(1) == y))

    batch_eval = _logits(params, running, X, cfg, False)
    single = np.concatenate([_logits(params, running, X[i:i + 1], cfg, False) for i in range(len(X))])
    max_rel_diff = float(np.max(np.abs(single - batch_eval)) / np.max(np.abs(batch_eval)))

    order = rng.permutation(len(y))
    acc_by_batch = []
    for b in test_batches:
        n_full = (len(y) // b) * b
        correct = sum(int(np.sum(_logits(params, running, X[idx], cfg, True).argmax(1) == y[idx]))
                      for idx in order[:n_full].reshape(-1, b))
        acc_by_batch.append(correct / n_full)

    # warm-up of fresh running statistics on the frozen, trained network
    warm_momenta = [slow_momentum, momentum, fast_momentum]
    warm = RunningBank(warm_momenta, cfg.hidden_sizes)
    curves = np.empty((warmup_steps, len(warm_momenta)))
    stream = data.epochs(rng, len(split.y_train), 32)
    for step in range(warmup_steps):
        record_batch: dict = {}
        model.forward(params, running, split.X_train[next(stream)], cfg, True, record=record_batch)
        warm.update(record_batch, 32)
        curves[step] = warm.errors(population)

    sweep_errors = bank.errors(population)
    return {
        "acc_single_running": acc(single),
        "acc_single_running_slow": acc(_logits(params, slow, X, cfg, False)),
        "acc_population": acc(_logits(params, population, X, cfg, False)),
        "acc_batch_full": acc(_logits(params, running, X, cfg, True)),
        "acc_single_batchstats": acc(single_example_batch_stats_logits(params, X, cfg)),
        "max_rel_logit_diff": max_rel_diff,
        "stat_err_running": stat_error(running, population),
        "stat_err_slow": float(sweep_errors[-1]),
        "momentum": np.array(momenta, dtype=float),
        "acc_by_momentum": np.array([acc(_logits(params, bank.state(k), X, cfg, False))
                                     for k in range(len(momenta))]),
        "stat_err_by_momentum": sweep_errors[:len(momenta)],
        "test_batch": np.array(test_batches, dtype=float),
        "acc_by_test_batch": np.array(acc_by_batch),
        "acc_single_line": np.full(len(test_batches), acc(single)),
        "warmup_step": np.arange(1, warmup_steps + 1, dtype=float),
        "warmup_err_slow": curves[:, 0],
        "warmup_err_default": curves[:, 1],
        "warmup_err_fast": curves[:, 2],
    }


# ----------------------------------------------------------------------------- shifted test inputs


def shift_images(raw: np.ndarray, kind: Literal["clean", "affine", "gamma", "translate"], *,
                 contrast: float = 0.5, brightness: float = 0.3, gamma: float = 0.4) -> np.ndarray:
    """A test-domain version of raw digit images (N, 64) with intensities in [0, 1].

    affine: contrast * x + brightness (each pixel's distribution changes mean and std only);
    gamma: x ** gamma (a non-affine intensity curve: changes the shape of pixel distributions);
    translate: the image moved one pixel to the right, zeros shifted in (spatial, non-affine).
    """
    if kind == "clean":
        return raw
    if kind == "affine":
        return contrast * raw + brightness
    if kind == "gamma":
        return np.power(np.clip(raw, 0.0, None), gamma)
    if kind == "translate":
        images = raw.reshape(-1, 8, 8)
        moved = np.zeros_like(images)
        moved[:, :, 1:] = images[:, :, :-1]
        return moved.reshape(-1, 64)
    raise ValueError(f"unknown shift {kind!r}")


SHIFTS = ("clean", "affine", "gamma", "translate")


def affine_at_strength(strength: float, contrast: float, brightness: float) -> dict:
    """The brightness/contrast shift at strength s: contrast 1 - s (1 - `contrast`), brightness
    s * `brightness` (s = 0 is the identity, s = 1 the full `contrast` x + `brightness`)."""
    return dict(contrast=1.0 - strength * (1.0 - contrast), brightness=strength * brightness)


def shift_strength_validation(seed: int, strengths: list[float], *, lr_plain: float, lr_bn: float,
                              epochs: int = 20, contrast: float = 0.5, brightness: float = 0.3) -> dict:
    """VALIDATION accuracy of both nets (BN with running statistics) on brightness/contrast-shifted
    validation images, per strength, for one seed; the clean value first.

    Used once, by hand, on validation seeds (50000+) to choose the strength of the headline shift
    of `bn-covariate-shift-adabn` (a strength where neither net is near chance or near 100 %);
    the test images are not looked at.
    """
    split = digits()
    plain = train_digits(np.random.default_rng(seed), "none", lr_plain, epochs)
    bn = train_digits(np.random.default_rng(seed), "batch", lr_bn, epochs)
    raw_val = _raw(split, split.X_val)
    out: dict = {"strength": [0.0] + list(strengths), "plain": [], "bn": []}
    for s in out["strength"]:
        X_val = _standardize(split, shift_images(raw_val, "affine", **affine_at_strength(s, contrast, brightness)))
        out["plain"].append(model.accuracy(plain.params, plain.state, X_val, split.y_val, plain.config))
        out["bn"].append(model.accuracy(bn.params, bn.state, X_val, split.y_val, bn.config))
    return out


@experiment(
    "bn-covariate-shift-adabn",
    metrics={
        **{f"acc_plain_{s}": f"test accuracy, no normalization, {s} test inputs (affine: at `affine_strength`)"
           for s in SHIFTS},
        **{f"acc_bn_{s}": f"test accuracy, BN with its running statistics, {s} test inputs" for s in SHIFTS},
        **{f"acc_adabn_{s}": f"test accuracy, BN with statistics re-estimated on {s} validation inputs (AdaBN)"
           for s in SHIFTS},
        **{f"drop_plain_{s}": f"clean minus {s} accuracy, no normalization" for s in SHIFTS[1:]},
        **{f"drop_bn_{s}": f"clean minus {s} accuracy, BN with running statistics" for s in SHIFTS[1:]},
    },
    series={
        "shift": "test domain: 0 clean, 1 brightness/contrast, 2 gamma curve, 3 one-pixel translation (x axis)",
        "acc_plain": "test accuracy per domain, no normalization",
        "acc_bn": "test accuracy per domain, BN with running statistics",
        "acc_adabn": "test accuracy per domain, BN with statistics re-estimated on that domain",
        "severity": "strength s of the brightness/contrast shift (x axis): s * `brightness` added, "
                    "contrast 1 - s * (1 - `contrast`); s = 1 is the affine domain above",
        "sweep_plain": "test accuracy per severity, no normalization",
        "sweep_bn": "test accuracy per severity, BN with running statistics",
        "sweep_adabn": "test accuracy per severity, BN with re-estimated statistics",
    },
)
def covariate_shift_adabn(
    rng: np.random.Generator,
    *,
    lr_plain: float = 0.1,
    lr_bn: float = 0.1,
    epochs: int = 20,
    contrast: float = 0.5,
    brightness: float = 0.3,
    gamma: float = 0.4,
    affine_strength: float = 1.0,
    severities: list[float] = [0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0],  # noqa: B006 - never mutated
) -> dict:
    """Does batch norm protect a model from a train/test shift of the input distribution?

    Trains the module's recipe twice from the same weights and batches: without normalization
    (at `lr_plain`) and with batch norm (at `lr_bn`), each at its own validation-chosen rate.
    Test inputs come from four domains (`shift_images`): clean, brightness/contrast at strength
    `affine_strength` (`affine_at_strength`: 1 is `contrast` x + `brightness`, smaller values
    interpolate towards the identity), a gamma curve x ** `gamma`, a one-pixel translation. Each
    domain is standardized with the TRAINING pixel statistics (the deployed preprocessing).
    The BN model is evaluated with its running statistics, and with statistics re-estimated
    on the validation images of the same domain (AdaBN, Li et al. 2016; labels not used; the
    test images are not used for it either). The brightness/contrast shift is also swept in
    strength (`severities`) for the plot.
    """
    split = digits()
    train_seed = int(rng.integers(2**63))
    plain = train_digits(np.random.default_rng(train_seed), "none", lr_plain, epochs)
    bn = train_digits(np.random.default_rng(train_seed), "batch", lr_bn, epochs)
    if plain.diverged or bn.diverged:
        raise ValueError(f"training diverged (plain: {plain.status}, bn: {bn.status}); the learning rate is too high")
    raw_test, raw_val = _raw(split, split.X_test), _raw(split, split.X_val)
    out: dict = {}
    for s in SHIFTS:
        kwargs = dict(affine_at_strength(affine_strength, contrast, brightness), gamma=gamma)
        X_test = _standardize(split, shift_images(raw_test, s, **kwargs))
        X_val = _standardize(split, shift_images(raw_val, s, **kwargs))
        out[f"acc_plain_{s}"] = model.accuracy(plain.params, plain.state, X_test, split.y_test, plain.config)
        out[f"acc_bn_{s}"] = model.accuracy(bn.params, bn.state, X_test, split.y_test, bn.config)
        adapted = population_state(bn.params, X_val, bn.config)
        out[f"acc_adabn_{s}"] = model.accuracy(bn.params, adapted, X_test, split.y_test, bn.config)
    for s in SHIFTS[1:]:
        out[f"drop_plain_{s}"] = out["acc_plain_clean"] - out[f"acc_plain_{s}"]
        out[f"drop_bn_{s}"] = out["acc_bn_clean"] - out[f"acc_bn_{s}"]
    sweep = {"plain": [], "bn": [], "adabn": []}
    for level in severities:
        kwargs = affine_at_strength(level, contrast, brightness)
        X_test = _standardize(split, shift_images(raw_test, "affine", **kwargs))
        X_val = _standardize(split, shift_images(raw_val, "affine", **kwargs))
        sweep["plain"].append(model.accuracy(plain.params, plain.state, X_test, split.y_test, plain.config))
        sweep["bn"].append(model.accuracy(bn.params, bn.state, X_test, split.y_test, bn.config))
        adapted = population_state(bn.params, X_val, bn.config)
        sweep["adabn"].append(model.accuracy(bn.params, adapted, X_test, split.y_test, bn.config))
    out["severity"] = np.array(severities, dtype=float)
    for arm, values in sweep.items():
        out[f"sweep_{arm}"] = np.array(values)
    out["shift"] = np.arange(len(SHIFTS), dtype=float)
    for arm in ("plain", "bn", "adabn"):
        out[f"acc_{arm}"] = np.array([out[f"acc_{arm}_{s}"] for s in SHIFTS])
    return out
