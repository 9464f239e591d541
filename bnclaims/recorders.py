"""Measuring helpers the experiments share: the digits split and its subsets, paired training on
one batch plan, accuracy with the divergence rule, steps to a target, and recorders (hooks) for
`model.train_stack`.

An arm whose loss went NaN/inf is frozen by `model.train_stack` ("diverged"): these helpers score
it 0 and record NaN for it from the step it diverged at.
"""

from __future__ import annotations

import numpy as np

from bnclaims import data, model


# ----------------------------------------------------------------------------- data


def digits(validation_fraction: float = 0.2) -> data.Split:
    """The shared digits split: test 25 % (fixed), validation `validation_fraction` of the rest,
    standardized, float32. At 0.2: X_train (1078, 64), X_val (269, 64), X_test (450, 64)."""
    return data.digits_split(0.25, validation_fraction, standardize=True, dtype=np.float32)


DATASETS = ("digits", "augmented")   # the `dataset` param of the experiments that take one


def dataset_split(dataset: str = "digits") -> data.Split:
    """The split an experiment's `dataset` param names, in the same roles (train / validation /
    test, standardized, float32): "digits" is `digits()`; "augmented" is
    `data.augmented_digits_split()` -- the same images moved, turned, resized and noisy, 4 copies
    of each training image (X_train (4312, 64)), one of each validation and test image (269, 450)."""
    if dataset == "digits":
        return digits()
    if dataset == "augmented":
        return data.augmented_digits_split(4, 0.2, standardize=True, dtype=np.float32)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")


ARCHS = ("mlp", "cnn")   # the `arch` param of the experiments that take one


def net_config(arch: str, hidden, norm: str = "none", *, residual: bool = False,
               **options) -> model.MLPConfig | model.CNNConfig:
    """The network of an experiment's architecture switch, for the 8x8 digits (64 columns, 10 classes):
    "mlp" -- 64-[hidden]-10, norm before every ReLU (`mlp_options(residual)`); "cnn" --
    `model.CNNConfig` with one 3x3 conv layer per entry of `hidden` (its channels, stride 1), norm
    ("none" or "batch": spatial batch norm) before every ReLU, global average pooling, linear.
    ``options`` go to the config (an MLP's only, for the CNN ValueError)."""
    if arch == "mlp":
        return model.MLPConfig(sizes=(64, *hidden, 10), norm=norm, **mlp_options(residual), **options)
    if arch == "cnn":
        if residual or options:
            raise ValueError(f"arch 'cnn' takes no residual or MLP options; got residual={residual}, {options}")
        return model.CNNConfig(channels=tuple(hidden), strides=(1,) * len(hidden), norm=norm)
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")


def mlp_options(residual: bool = False) -> dict:
    """`model.MLPConfig` options of an experiment's architecture switch: {} for the plain MLP (so a
    default config is the one it always was), pre-activation residual blocks with `residual`
    (`MLPConfig.residual`, block weights scaled by 1/sqrt(blocks), the same for every norm)."""
    return {"residual": True, "residual_init": "depth"} if residual else {}


def sample_rows(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """`size` of `n` rows (all of them if fewer), drawn without replacement and sorted: a fixed probe set."""
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def per_class_subset(rng: np.random.Generator, y: np.ndarray, n_per_class: int, n_classes: int = 10) -> np.ndarray:
    """Sorted row indices of a stratified subset: `n_per_class` random rows of each class."""
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in range(n_classes)]))


# ----------------------------------------------------------------------------- training and scoring


def train_on_plan(config: model.MLPConfig, X: np.ndarray, y: np.ndarray, arms, plan: np.ndarray, params: dict, *,
                  rng: np.random.Generator | None = None, **options) -> model.StackResult:
    """`model.train_stack` with one arm per entry of `arms` (a learning rate for SGD, or a `model.Arm`),
    every arm from the initial `params` and on the batches of `plan` -- (steps, B) shared by the arms,
    or (arms, steps, B) -- so the arms of a comparison are paired. ``options`` go to `train_stack`."""
    arms = [arm if isinstance(arm, model.Arm) else model.Arm(lr=float(arm)) for arm in arms]
    return model.train_stack(np.random.default_rng(0) if rng is None else rng, config, X, y, arms,
                             steps=plan.shape[-2], plan=plan, params=params, **options)


def masked_accuracy(logits: np.ndarray, y: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """(A,) `model.logits_accuracy` of stacked logits (A, N, C); 0 for an arm not `alive` (diverged)."""
    return np.where(alive, model.logits_accuracy(logits, y), 0.0)


def eval_accuracy(result: model.StackResult, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A,) eval-mode accuracy (running statistics) of every arm of a trained stack; 0 for a diverged arm."""
    with np.errstate(all="ignore"):
        logits, _, _ = model.forward(result.params, result.state, X, result.config, False)
    return masked_accuracy(logits, y, ~result.diverged)


def steps_to(curve: np.ndarray, steps: np.ndarray, target: float, never: float = np.nan) -> np.ndarray:
    """(A,) float: the first of `steps` (K,) at which each row of `curve` (A, K) reaches `target`; `never` where none does."""
    hit = curve >= target
    return np.where(hit.any(axis=1), steps[hit.argmax(axis=1)], never).astype(np.float64)


def lrs_per_arm(lrs: list, arms) -> bool:
    """True for the sweep mode (`lrs` empty: every arm runs the whole grid); otherwise `lrs` must give
    one learning rate per arm (ValueError)."""
    if lrs and len(lrs) != len(arms):
        raise ValueError(f"lrs needs one learning rate per arm ({len(arms)}: {', '.join(arms)}); got {len(lrs)}")
    return not lrs


def nan_after_divergence(values: np.ndarray, steps, result: model.StackResult) -> np.ndarray:
    """float64 copy of `values` (T', arms, ...) recorded after `steps` (T',) updates, NaN from the step
    at which each arm diverged."""
    values = np.array(values, dtype=np.float64)
    if result.diverged.any():
        after = np.asarray(steps)[:, None] >= np.where(result.diverged, result.taken, np.iinfo(np.int64).max)
        values[after] = np.nan
    return values


# ----------------------------------------------------------------------------- recorders (hooks for train_stack)


class Checkpoints:
    """Hook: ``fn(index, params, alive)`` on the network before training (index 0) and after every
    `every`-th update; `values(count)` stacks the results, padding checkpoints the loop never reached
    (every arm diverged) with `dead`."""

    needs_deltas = False

    def __init__(self, every: int, fn, dead=np.nan):
        self.every, self.fn, self.dead, self.results = every, fn, dead, []

    def __call__(self, step: int, info: model.StackStepInfo) -> None:
        if step == 0:
            self.results.append(self.fn(0, info.params_before, np.ones_like(info.alive)))
        if (step + 1) % self.every == 0:
            self.results.append(self.fn(len(self.results), info.params, info.alive))

    def values(self, count: int) -> np.ndarray:
        out = np.stack(self.results)
        if len(out) < count:
            out = np.concatenate([out, np.full((count - len(out),) + out.shape[1:], self.dead)])
        return out


class BlockAverages:
    """Hook: averages of the named parameters over consecutive blocks of `block` steps.

    ``arrays()``: {name: (K_blocks, arms, ...)}; block b covers steps b * block .. (b + 1) * block - 1
    (a last, incomplete block is dropped).
    """

    needs_deltas = False

    def __init__(self, names, block: int):
        self.names, self.block = list(names), block
        self.sums: dict[str, np.ndarray] = {}
        self.values: dict[str, list] = {name: [] for name in self.names}

    def __call__(self, step: int, info: model.StackStepInfo) -> None:
        for name in self.names:
            if name in self.sums:
                self.sums[name] += info.params[name]
            else:
                self.sums[name] = info.params[name].astype(np.float64)
        if (step + 1) % self.block == 0:
            for name in self.names:
                self.values[name].append(self.sums.pop(name) / self.block)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.stack(v) for name, v in self.values.items()}
