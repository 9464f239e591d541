"""Batch norm at inference time: batch coupling, running statistics, shifted test inputs.

One family: train one small MLP on the shipped digits (the recipe below), then look at what
its batch-norm layers do when it predicts -- in training mode (statistics of the batch being
predicted), in eval mode (running averages), or with statistics re-estimated on new inputs.

Recipe (shared by every experiment here, so one documented learning-rate sweep serves all):
64-128-128-10 ReLU MLP, batch norm before the activation, float32, plain SGD with momentum
0.9, batch 32, `epochs` epochs over the 1,078 training digits of the fixed split
(`recorders.digits`: 1,078 train / 269 validation / 450 test, standardized by the training
pixels). The learning rate comes from `lr_sweep` on the validation split with seeds other than
the reported ones (see the claim files for the table). Accuracy is eval mode unless said.
`arch="cnn"` swaps the MLP for the digits CNN (`model.CNNConfig`: two 3x3 conv layers of 16 and
32 channels, spatial batch norm before each ReLU, global average pooling, linear 32 -> 10) in the
same recipe. `input_scaling="global"` standardizes every pixel with one mean and std (those of all
training pixels) instead of each pixel with its own, so that moving an image moves its standardized
version too (`digits_split`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from bnclaims import data, model, nn, recorders
from bnclaims.experiments import axes, experiment

SIZES = (64, 128, 128, 10)
N_HIDDEN = len(SIZES) - 2


ARCHS = ("mlp", "cnn")


def config(norm: Literal["batch", "none"], bn_momentum: float = 0.1,
           arch: Literal["mlp", "cnn"] = "mlp") -> model.MLPConfig | model.CNNConfig:
    if arch == "cnn":
        return model.CNNConfig(norm=norm, momentum=bn_momentum, dtype="float32")
    if arch != "mlp":
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    return model.MLPConfig(sizes=SIZES, norm=norm, momentum=bn_momentum, dtype="float32")


def digits_split(input_scaling: Literal["pixel", "global"] = "pixel") -> data.Split:
    """The recipe's split: `recorders.digits()` ("pixel": each pixel standardized by its own training
    mean and std), or ("global") the same images standardized by the mean and std of all training
    pixels; `pixel_mean`/`pixel_std` then hold that one value in every entry, so `_raw` and
    `_standardize` work on both."""
    split = recorders.digits()
    if input_scaling == "pixel":
        return split
    if input_scaling != "global":
        raise ValueError(f"input_scaling must be 'pixel' or 'global'; got {input_scaling!r}")
    raw_train = _raw(split, split.X_train).astype(np.float64)
    mean, std = float(raw_train.mean()), float(raw_train.std())
    scaled = {name: ((_raw(split, getattr(split, name)) - mean) / std).astype(np.float32)
              for name in ("X_train", "X_val", "X_test")}
    for value in scaled.values():
        value.flags.writeable = False
    return dataclasses.replace(split, **scaled, pixel_mean=np.full_like(split.pixel_mean, mean),
                               pixel_std=np.full_like(split.pixel_std, std))


def train_digits(rng: np.random.Generator, norm: Literal["batch", "none"], lr: float, epochs: int,
                 bn_momentum: float = 0.1, record=None, arch: Literal["mlp", "cnn"] = "mlp",
                 input_scaling: Literal["pixel", "global"] = "pixel") -> model.TrainResult:
    """Train the module's recipe; the same rng state gives every norm the same weights and batches."""
    split = digits_split(input_scaling)
    return model.train(rng, config(norm, bn_momentum, arch), split.X_train, split.y_train, epochs=epochs,
                       batch_size=32, lr=lr, momentum=0.9, record=record)


def _accuracy(result, X: np.ndarray, y: np.ndarray, state: model.State | None = None) -> float:
    """Eval-mode accuracy of a trained network (with `state` instead of its running statistics if given)."""
    return model.accuracy(result.params, result.state if state is None else state, X, y, result.config)


def lr_sweep(seed: int, lrs: list[float], norm: Literal["batch", "none"], epochs: int = 20,
             arch: Literal["mlp", "cnn"] = "mlp", input_scaling: Literal["pixel", "global"] = "pixel") -> list[float]:
    """Validation accuracy of the recipe at each learning rate, for one seed (a diverged run scores 0).

    Used once, by hand, on seeds far from the reported ones, to fix the learning rates in the claim files.
    """
    split = digits_split(input_scaling)
    runs = [train_digits(np.random.default_rng(seed), norm, lr, epochs, arch=arch, input_scaling=input_scaling)
            for lr in lrs]
    return [0.0 if r.diverged else _accuracy(r, split.X_val, split.y_val) for r in runs]


def _raw(split: data.Split, X: np.ndarray) -> np.ndarray:
    """Standardized digits back to pixel intensities in [0, 1]."""
    return X * split.pixel_std.astype(np.float32) + split.pixel_mean.astype(np.float32)


def _standardize(split: data.Split, raw: np.ndarray) -> np.ndarray:
    return ((raw - split.pixel_mean) / split.pixel_std).astype(np.float32)


def _logits(params, state, X, cfg, train: bool) -> np.ndarray:
    return model.forward(params, state, X, cfg, train)[0]


# ----------------------------------------------------------------------------- outlier in the batch


@experiment(
    "bn-outlier-in-batch",
    metrics={
        "acc_eval": "accuracy on the clean test examples, eval mode (running statistics)",
        "acc_train_clean": "same examples predicted in training mode, batches of clean digits only",
        **axes({"acc_train_{k}": "training mode, each batch holding one digit `{k}` x brighter"},
               k=("mild", "extreme")),
        "outlier_cost_mild": "acc_train_clean - acc_train_mild: the cost of the `mild` x brighter digit itself",
        "outlier_cost_extreme": "acc_train_clean - acc_train_extreme: the cost of the `extreme` x brighter digit",
        "batch_stats_cost": "acc_eval - acc_train_clean: the cost of ordinary batch statistics (no outlier involved)",
        "eval_max_change": "max |change| of a clean example's eval-mode logit by the outlier, relative to max |logit|",
    },
    series={
        "magnitude": "brightness factor of the outlier (x axis; 1 = an ordinary digit)",
        "acc_train_by_magnitude": "accuracy on the clean examples in training mode, per outlier magnitude",
        "acc_eval_by_magnitude": "eval-mode accuracy (does not depend on the outlier)",
        "mean_shift_by_magnitude": "median over first-layer units of |batch-mean shift| by the outlier, in clean stds",
    },
)
def outlier_in_batch(rng: np.random.Generator, *, lr: float = 0.1, epochs: int = 20, batch_size: int = 32,
                     magnitudes: list[float] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], mild: float = 2.0,
                     extreme: float = 16.0) -> dict:
    """How much one "big" example in a batch changes the predictions for the others.

    The module's BN recipe; the 450 test digits shuffled into batches of `batch_size` - 1 clean
    examples plus one random training digit with its pixels multiplied by k (k = 16 is the classic
    bug of feeding the raw 0..16 counts instead of 0..1). The clean examples are predicted in
    training mode (statistics of their batch, outlier included) and in eval mode (running
    statistics). An outlier's cost is measured against the training-mode arm with k = 1 (same
    batches, the extra digit at its ordinary brightness), never against eval mode, whose
    difference also holds the cost of ordinary batch statistics (`batch_stats_cost`).
    """
    for k in (1.0, mild, extreme):
        if k not in magnitudes:
            raise ValueError(f"magnitude {k} must be one of the swept magnitudes {magnitudes} "
                             f"(1 = an ordinary digit, the no-outlier reference)")
    split = recorders.digits()
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
            shifts.append(np.median(np.abs(pre.mean(0) - clean_pre.mean(0)) / (clean_pre.std(0) + 1e-6)))
            if k == max(magnitudes):
                eval_logits = _logits(params, state, xb, cfg, False)[:clean_per_batch]
                alone = eval_logits_alone[b * clean_per_batch:(b + 1) * clean_per_batch]
                eval_change = max(eval_change, float(np.max(np.abs(eval_logits - alone))) / scale)
        acc_by_k.append(correct / clean_index.size)
        shift_by_k.append(float(np.mean(shifts)))
    acc = dict(zip(magnitudes, acc_by_k))
    return {
        "acc_eval": acc_eval, "acc_train_clean": float(acc[1.0]), "acc_train_mild": float(acc[mild]),
        "acc_train_extreme": float(acc[extreme]),
        "outlier_cost_mild": float(acc[1.0] - acc[mild]), "outlier_cost_extreme": float(acc[1.0] - acc[extreme]),
        "batch_stats_cost": float(acc_eval - acc[1.0]), "eval_max_change": eval_change,
        "magnitude": np.array(magnitudes, dtype=float), "acc_train_by_magnitude": np.array(acc_by_k),
        "acc_eval_by_magnitude": np.full(len(magnitudes), acc_eval), "mean_shift_by_magnitude": np.array(shift_by_k),
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
        for i in range(len(self.mean)):
            pre = record[f"pre{i}"].astype(np.float64)
            batch_mean = pre.mean(axis=0)
            centred = pre - batch_mean
            unbiased_var = np.einsum("nd,nd->d", centred, centred) / (n - 1)
            self.mean[i], self.var[i] = nn.update_running_stats(self.mean[i], self.var[i], batch_mean, unbiased_var,
                                                                n, self.momenta, unbiased=False)

    def state(self, k: int, dtype=np.float32) -> model.State:
        """The running statistics of the k-th momentum as a model state."""
        return {f"running_{stat}{i}": values[i][k].astype(dtype)
                for i in range(len(self.mean)) for stat, values in (("mean", self.mean), ("var", self.var))}

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
        pm, pv, rm, rv = (source[f"running_{stat}{i}"].astype(np.float64)
                          for source in (population, state) for stat in ("mean", "var"))
        errors += [(rm - pm) / np.sqrt(pv + 1e-5), 0.5 * np.log((rv + 1e-5) / (pv + 1e-5))]
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def single_example_batch_stats_logits(params: model.Params, X: np.ndarray, cfg: model.MLPConfig) -> np.ndarray:
    """Logits when every example is its own batch of one in TRAINING mode (batch statistics).

    The batch mean is the example itself and the variance 0, so each BN layer outputs beta
    whatever the input. Computed literally, each example a stack entry (N, 1, D), its own mean
    and variance given to `nn.batchnorm_eval_forward` (`nn.batchnorm_forward` refuses a batch of one).
    """
    h = np.asarray(X, dtype=cfg.np_dtype)[:, None, :]
    for i in range(cfg.n_layers):
        h = nn.linear_forward(h, params[f"W{i}"], params[f"b{i}"])[0]
        if i < cfg.n_layers - 1:
            h = nn.batchnorm_eval_forward(h, h.mean(axis=-2, keepdims=True), h.var(axis=-2, keepdims=True),
                                          params[f"gamma{i}"], params[f"beta{i}"], cfg.eps)[0]
            h = nn.relu_forward(h)[0]
    return h[:, 0]


@experiment(
    "bn-single-example-inference",
    metrics={
        "acc_single_running": "test accuracy one example at a time with running statistics (momentum `momentum`)",
        "acc_single_running_slow": "same with running statistics of momentum `slow_momentum`",
        "acc_population": "test accuracy with exact population statistics of the training set",
        "acc_batch_full": "test accuracy in training mode, the whole test set as one batch",
        "acc_single_batchstats": "test accuracy one example at a time in training mode (batch statistics)",
        "max_rel_logit_diff": "max |logit difference|, one-at-a-time vs whole-batch eval mode, relative to max |logit|",
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
        **axes({"warmup_err_{m}": "distance from the population statistics after that many batches, `{m}`"},
               m={"slow": "slow_momentum", "default": "momentum", "fast": "fast_momentum"}),
    },
)
def single_example_inference(rng: np.random.Generator, *, lr: float = 0.1, epochs: int = 20, momentum: float = 0.1,
                             slow_momentum: float = 0.01, fast_momentum: float = 0.5,
                             momenta: list[float] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
                             test_batches: list[int] = [2, 4, 8, 16, 32, 64, 128, 450],
                             warmup_steps: int = 300) -> dict:
    """Can a batch-norm network predict one example at a time? Running vs batch statistics.

    The module's BN recipe, keeping beside its own running averages (momentum `momentum`) running
    averages for every momentum in `momenta` and `slow_momentum` (they do not affect training).
    On the 450 test digits: one example at a time in eval mode (a real loop of batches of one)
    and in training mode (batch statistics of one example); the whole test set, and test batches
    of each size in `test_batches`, in training mode; eval mode with the exact population
    statistics of the training set (eval mode is a per-example map, so the slow-momentum accuracy
    is computed on the whole batch). Finally, the trained network frozen, running statistics are
    re-estimated from (0, 1) over `warmup_steps` training batches of 32, per momentum.
    """
    split = recorders.digits()
    cfg = config("batch", momentum)
    tracked = list(momenta) + [momentum, slow_momentum]
    bank = RunningBank(tracked, cfg.hidden_sizes)
    result = train_digits(rng, "batch", lr, epochs, bn_momentum=momentum,
                          record=lambda step, info: bank.update(info.activations, len(info.y)))
    params = result.params
    running = result.state                                  # the model's own, momentum `momentum`
    population = model.population_state(params, split.X_train, cfg)
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
    warm = RunningBank([slow_momentum, momentum, fast_momentum], cfg.hidden_sizes)
    curves = np.empty((warmup_steps, 3))
    stream = data.epochs(rng, len(split.y_train), 32)
    for step in range(warmup_steps):
        warm.update(model.activations(params, running, split.X_train[next(stream)], cfg, True), 32)
        curves[step] = warm.errors(population)

    sweep_errors = bank.errors(population)
    return {
        "acc_single_running": acc(single),
        "acc_single_running_slow": acc(_logits(params, bank.state(len(tracked) - 1), X, cfg, False)),
        "acc_population": acc(_logits(params, population, X, cfg, False)),
        "acc_batch_full": acc(_logits(params, running, X, cfg, True)),
        "acc_single_batchstats": acc(single_example_batch_stats_logits(params, X, cfg)),
        "max_rel_logit_diff": max_rel_diff, "stat_err_running": stat_error(running, population),
        "stat_err_slow": float(sweep_errors[-1]), "momentum": np.array(momenta, dtype=float),
        "acc_by_momentum": np.array([acc(_logits(params, bank.state(k), X, cfg, False)) for k in range(len(momenta))]),
        "stat_err_by_momentum": sweep_errors[:len(momenta)], "test_batch": np.array(test_batches, dtype=float),
        "acc_by_test_batch": np.array(acc_by_batch), "acc_single_line": np.full(len(test_batches), acc(single)),
        "warmup_step": np.arange(1, warmup_steps + 1, dtype=float),
        "warmup_err_slow": curves[:, 0], "warmup_err_default": curves[:, 1], "warmup_err_fast": curves[:, 2],
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


def _plain_and_bn(seed: int, lr_plain: float, lr_bn: float, epochs: int, arch: Literal["mlp", "cnn"] = "mlp",
                  input_scaling: Literal["pixel", "global"] = "pixel"):
    """The recipe without normalization and with batch norm, from the same weights and batches."""
    return (train_digits(np.random.default_rng(seed), "none", lr_plain, epochs, arch=arch, input_scaling=input_scaling),
            train_digits(np.random.default_rng(seed), "batch", lr_bn, epochs, arch=arch, input_scaling=input_scaling))


def shift_strength_validation(seed: int, strengths: list[float], *, lr_plain: float, lr_bn: float,
                              epochs: int = 20, contrast: float = 0.5, brightness: float = 0.3,
                              arch: Literal["mlp", "cnn"] = "mlp",
                              input_scaling: Literal["pixel", "global"] = "pixel") -> dict:
    """VALIDATION accuracy of both nets (BN with running statistics) on brightness/contrast-shifted
    validation images, per strength (the clean value first), for one seed. Used once, by hand, on
    validation seeds (50000+) to choose the headline strength of `bn-covariate-shift-adabn`."""
    split = digits_split(input_scaling)
    plain, bn = _plain_and_bn(seed, lr_plain, lr_bn, epochs, arch, input_scaling)
    raw_val = _raw(split, split.X_val)
    out: dict = {"strength": [0.0] + list(strengths), "plain": [], "bn": []}
    for s in out["strength"]:
        X_val = _standardize(split, shift_images(raw_val, "affine", **affine_at_strength(s, contrast, brightness)))
        out["plain"].append(_accuracy(plain, X_val, split.y_val))
        out["bn"].append(_accuracy(bn, X_val, split.y_val))
    return out


_NETS = {"plain": "no normalization", "bn": "BN with its running statistics",
         "adabn": "BN with statistics re-estimated on validation inputs of the same domain (AdaBN)"}


@experiment(
    "bn-covariate-shift-adabn",
    metrics={**axes({"acc[net, shift]": "test accuracy, {net}, {shift} test inputs"}, net=_NETS,
                    shift={s: s for s in SHIFTS} | {"affine": "affine (at `affine_strength`)"}),
             **axes({"drop[net, shift]": "clean minus {shift} accuracy, {net}"},
                    net={k: _NETS[k] for k in ("plain", "bn")},
                    shift=SHIFTS[1:])},
    series={
        "shift": "test domain: 0 clean, 1 brightness/contrast, 2 gamma curve, 3 one-pixel translation (x axis)",
        **axes({"acc[net]": "test accuracy per domain, {net}"}, net=_NETS),
        "severity": "strength s of the brightness/contrast shift (x axis): s * `brightness` added, "
                    "contrast 1 - s * (1 - `contrast`); s = 1 is the affine domain above",
        **axes({"sweep[net]": "test accuracy per severity, {net}"}, net=_NETS),
    },
)
def covariate_shift_adabn(rng: np.random.Generator, *, lr_plain: float = 0.1, lr_bn: float = 0.1, epochs: int = 20,
                          contrast: float = 0.5, brightness: float = 0.3, gamma: float = 0.4,
                          affine_strength: float = 1.0,
                          severities: list[float] = [0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0],
                          arch: Literal["mlp", "cnn"] = "mlp",
                          input_scaling: Literal["pixel", "global"] = "pixel") -> dict:
    """Does batch norm protect a model from a train/test shift of the input distribution?

    The module's recipe trained from the same weights and batches without normalization (at
    `lr_plain`) and with batch norm (at `lr_bn`). Test domains (`shift_images`): clean,
    brightness/contrast at strength `affine_strength` (`affine_at_strength`: 1 is `contrast` x +
    `brightness`), a gamma curve x ** `gamma`, a one-pixel translation; each standardized with the
    TRAINING pixel statistics (the deployed preprocessing). The BN model is scored with its
    running statistics and with statistics re-estimated on the same domain's validation images
    (AdaBN, Li et al. 2016; no labels, no test images). The brightness/contrast shift is also
    swept in strength (`severities`). `arch="cnn"`: both nets are the digits CNN (spatial batch
    norm). `input_scaling="global"`: one mean and std for every pixel (`digits_split`), so that a
    translated image is still a translated input (with per-pixel scaling, pixels moved onto the
    near-constant border are blown up by its tiny std); with the CNN a one-pixel translation is
    then nearly a symmetry, up to the border.
    """
    split = digits_split(input_scaling)
    plain, bn = _plain_and_bn(int(rng.integers(2**63)), lr_plain, lr_bn, epochs, arch, input_scaling)
    if plain.diverged or bn.diverged:
        raise ValueError(f"training diverged (plain: {plain.status}, bn: {bn.status}); the learning rate is too high")
    raw_test, raw_val = _raw(split, split.X_test), _raw(split, split.X_val)

    def scores(kind: str, **shift) -> dict:
        """{net: test accuracy} on the `kind` domain; AdaBN re-estimates on that domain's validation images."""
        X_test = _standardize(split, shift_images(raw_test, kind, **shift))
        X_val = _standardize(split, shift_images(raw_val, kind, **shift))
        adapted = model.population_state(bn.params, X_val, bn.config)
        return {"plain": _accuracy(plain, X_test, split.y_test), "bn": _accuracy(bn, X_test, split.y_test),
                "adabn": _accuracy(bn, X_test, split.y_test, adapted)}

    by_shift = {s: scores(s, **affine_at_strength(affine_strength, contrast, brightness), gamma=gamma) for s in SHIFTS}
    sweep = [scores("affine", **affine_at_strength(level, contrast, brightness)) for level in severities]
    out: dict = {"shift": np.arange(len(SHIFTS), dtype=float), "severity": np.array(severities, dtype=float)}
    for net in _NETS:
        out.update({f"acc_{net}_{s}": by_shift[s][net] for s in SHIFTS})
        out[f"acc_{net}"] = np.array([by_shift[s][net] for s in SHIFTS])
        out[f"sweep_{net}"] = np.array([row[net] for row in sweep])
    for net in ("plain", "bn"):
        out.update({f"drop_{net}_{s}": out[f"acc_{net}_clean"] - out[f"acc_{net}_{s}"] for s in SHIFTS[1:]})
    return out
