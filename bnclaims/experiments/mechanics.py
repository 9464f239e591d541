"""What batch norm computes: its axis, its output moments, its γ and β, its batch coupling.

The experiments behind the "mechanics" claims of threads 001 and 002. Exact identities are checked
in "error units": the observed error divided by a worst-case rounding-error bound of the dtype
(unit roundoff ``u = finfo(dtype).eps / 2``); below 1 means "equal up to floating-point rounding".

Digits: the shared split (`recorders.digits`: 1,078 train / 269 validation / 450 test images,
standardised, float32). The training experiments use a small batch-norm MLP,
``64 -> H -> BN -> ReLU -> 10`` (He weights, LeCun scale for the output layer; BN cancels the
hidden bias), trained with SGD (momentum 0.9) by `bnclaims.model.train_stack`: one stack per
affine kind -- "vector" (one γ, β per feature, as Ioffe & Szegedy define them and PyTorch/Keras
implement them), "scalar" (one pair per layer: ``MLPConfig(affine_shared=True)``, its gradient the
sum over features) or "none" (``affine=False``) -- with one arm per learning rate; every arm from
the same initial function (γ = 1, β = 0) on the same batches (paired). Each kind's learning rate
is chosen on validation accuracy (`model.select_lr`: ties to the smaller rate; a diverged run
scores 0); results are on the test split. Every layer is `bnclaims.nn`'s.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from bnclaims import data, model, nn, recorders
from bnclaims.experiments import axes, experiment

_EPS = 1e-5
_TINY = np.finfo(np.float64).tiny
_LR_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
_AFFINE = {"vector": {}, "scalar": {"affine_shared": True}, "none": {"affine": False}}


def _roundoff(dtype) -> float:
    """Unit roundoff u of a float dtype (half the machine epsilon)."""
    return float(np.finfo(dtype).eps) / 2.0


def _column_mean_error_bound(x, out_abs_max, inv_std, gamma_abs, beta_abs, u):
    """Worst-case rounding bound on |column mean of out| - |exact value| for out = γ(x - m)s + β.

    x: (N, D); out_abs_max, inv_std (s): (D,); gamma_abs, beta_abs: (D,) or scalars. The computed
    mean m is off by at most N u mean|x| (shifting every output by γ s times that), and summing the
    outputs again costs at most N u max|out|; a factor 2 covers the cross terms.
    """
    mean_abs_x = np.abs(np.asarray(x, dtype=np.float64)).mean(axis=0)
    return 2.0 * x.shape[0] * u * (gamma_abs * inv_std * mean_abs_x + out_abs_max + beta_abs) + _TINY


def _weights(rng, fan_in: int, fan_out: int, init: str = "he", dtype=np.float32) -> np.ndarray:
    """Random (fan_in, fan_out) weights, He or LeCun scale (`model.init_params`)."""
    return model.init_params(rng, model.MLPConfig(sizes=(fan_in, fan_out), init=init, dtype=np.dtype(dtype).name))["W0"]


def _random_layer(rng, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A random float32 Linear(fan_in, fan_out): He weights, bias ~ N(0, 0.1²)."""
    return _weights(rng, fan_in, fan_out), (0.1 * rng.standard_normal(fan_out)).astype(np.float32)


def _rows(rng, X: np.ndarray, n: int) -> np.ndarray:
    """n distinct rows of X, drawn at random."""
    return X[rng.choice(len(X), size=n, replace=False)]


def _logits(params: dict, state: dict, config: model.MLPConfig, X, train: bool = False) -> np.ndarray:
    return model.forward(params, state, X, config, train)[0]


# ============================================================================ the digits MLP, paired arms


def _config(hidden: int, kind: str = "vector") -> model.MLPConfig:
    if kind not in _AFFINE:
        raise ValueError(f"affine kinds must be among {tuple(_AFFINE)}; got {kind!r}")
    return model.MLPConfig(sizes=(64, hidden, 10), norm="batch", eps=_EPS, **_AFFINE[kind])


def _initial(init_rng, config: model.MLPConfig) -> dict:
    """He weights for the hidden layer, LeCun scale (sqrt(1 / H)) for the output layer, as before the port."""
    params = model.init_params(init_rng, config)
    params["W1"] *= np.float32(np.sqrt(0.5))
    return params


def _train_arms(rng, X, y, kinds, lrs: list[float], *, hidden: int, epochs: int, batch_size: int = 32) -> dict:
    """{kind: StackResult} of one stack per affine kind (arm g: learning rate lrs[g], momentum 0.9), all
    from the same initial function on the same batches (drawn from the children of rng.spawn(2))."""
    init_rng, batch_rng = rng.spawn(2)
    initial = _initial(init_rng, _config(hidden))
    plan = model.batch_plan(batch_rng, len(X), batch_size, epochs * (len(X) // batch_size))
    arms = [model.Arm(lr=lr, momentum=0.9) for lr in lrs]
    out = {}
    for kind in kinds:
        config = _config(hidden, kind)
        params = {k: v for k, v in initial.items() if config.affine or not k.startswith(("gamma", "beta"))}
        out[kind] = recorders.train_on_plan(config, X, y, arms, plan, params)
    return out


def _lr_arm_outputs(arms: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(metrics, series) that `_arms_on_digits` returns for two arms {name: label}."""
    metrics = axes({
        "test_acc[arm]": "test accuracy, {arm}, at its best LR (chosen on validation)",
        "test_acc_{arm}_common_lr": "test accuracy, {arm}, at the common LR 0.1",
        "train_loss[arm]": "training-set loss (eval mode; a diverged run: inf), {arm}, at its best LR",
        "log10_lr[arm]": "log10 of the learning rate chosen for {arm}",
        "diverged_runs": "runs of the LR grid (both arms) whose loss became NaN/inf",
        "stuck_runs": "runs of the LR grid (both arms) that stayed finite but ended at chance-level loss",
    }, arm=arms)
    series = axes({"lr": "learning rate (grid)", "val_acc_{arm}_by_lr": "validation accuracy, {arm}, at that LR",
                   "epoch": "epoch (1-based)",
                   "loss_{arm}_by_epoch": "mean mini-batch loss per epoch, {arm}, at its best LR"}, arm=arms)
    return metrics, series


def _arms_on_digits(rng, kinds: dict[str, str], lrs: list[float], hidden: int, epochs: int, batch_size: int,
                    dataset: str = "digits"):
    """Train the arms {output name: affine kind} at every LR of `lrs` (paired) and pick each one's LR,
    on the split `dataset` names (`recorders.dataset_split`).

    Returns (the outputs `_lr_arm_outputs` declares, {kind: (StackResult, chosen LR index)}).
    """
    split = recorders.dataset_split(dataset)
    results = _train_arms(rng, split.X_train, split.y_train, kinds.values(), lrs, hidden=hidden, epochs=epochs,
                          batch_size=batch_size)
    common = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - np.log(0.1))))
    out = {"lr": np.asarray(lrs, dtype=float), "epoch": np.arange(1, epochs + 1, dtype=float),
           "diverged_runs": sum(int(r.diverged.sum()) for r in results.values()),
           "stuck_runs": sum(int(r.stuck.sum()) for r in results.values())}
    chosen = {}
    with np.errstate(all="ignore"):
        for name, kind in kinds.items():
            res = results[kind]
            val_acc, test_acc = (recorders.eval_accuracy(res, X, y) for X, y in ((split.X_val, split.y_val),
                                                                                  (split.X_test, split.y_test)))
            loss, _ = nn.softmax_cross_entropy(_logits(res.params, res.state, res.config, split.X_train), split.y_train)
            losses = np.full((len(lrs), epochs * (len(split.X_train) // batch_size)), np.nan)  # NaN once diverged
            losses[:, :res.losses.shape[1]] = res.losses
            best = model.select_lr(lrs, val_acc, res.diverged)
            chosen[kind] = (res, best)
            out.update({f"test_acc_{name}": float(test_acc[best]),
                        f"test_acc_{name}_common_lr": float(test_acc[common]),
                        f"train_loss_{name}": float(np.where(res.diverged | ~np.isfinite(loss), np.inf, loss)[best]),
                        f"log10_lr_{name}": float(np.log10(lrs[best])), f"val_acc_{name}_by_lr": val_acc,
                        f"loss_{name}_by_epoch": losses.reshape(len(lrs), epochs, -1).mean(axis=2)[best]})
    return out, chosen


# ============================================================================ 1. batchnorm-moments

_HIDDEN = "hidden-layer batches (32 x 100 pre-activations of a Linear(64, 100) layer on digits)"


@experiment(
    "batchnorm-moments",
    metrics={
        "configs_checked": "number of input batches (batch size x distribution x dtype x repeat) normalised",
        "mean_error_units": "largest |per-feature output mean| in units of its rounding bound (< 1: 0 up to rounding)",
        "max_abs_mean_typical": "largest |output mean|, features of batch variance >= 100 eps and mean within 100 stds",
        "max_abs_mean_large_var": "largest |output mean|, features of batch variance >= 100 eps, however far from 0",
        **axes({"max_abs_mean_{dtype}": "largest |per-feature output mean| over the {dtype} batches"},
               dtype={"float32": "float32 (any variance)", "float64": "float64"}),
        **axes({"std_gap_{v}_var": "largest |output std - 1| over features whose batch variance is {v}"},
               v={"large": ">= 100 eps", "tiny": "<= eps"}),
        "std_formula_error": "largest |output std - sqrt(v / (v + eps))| over all features (v: batch variance)",
        "hidden_mean_abs": f"{_HIDDEN}: largest |per-feature output mean| over every feature and batch",
        "hidden_std_gap": f"{_HIDDEN}: largest |per-feature output std - 1| over every feature and batch",
        **axes({"digits_{what}": "fraction of the 64 pixel features of a 32-image digits batch {what} (mean of 20)"},
               what={"features_off": "whose output std is not within 1% of 1",
                     "constant_features": "that are constant"}),
    },
    series={"variance_over_eps": "batch variance of a feature divided by eps (sweep)",
            "output_std": "std over the batch (axis 0) of that feature after batch norm"},
)
def batchnorm_moments(rng: np.random.Generator, *, batch_sizes: list[int] = [2, 4, 32, 256],
                      features: int = 100, repeats: int = 4, eps: float = _EPS):
    """Per-feature mean and std (over axis 0) of a batch after batch norm, affine off.

    Per batch size in ``batch_sizes``, dtype (float32, float64), shape of ``data.shaped_samples``
    and ``repeats`` draws: an (N, ``features``) batch with batch stds log-uniform over 1e-4 .. 1e3
    (variances from far below to far above eps), offsets up to 100 stds and 5% constant features,
    normalised by ``nn.batchnorm_forward(x, None, None, eps)``; each output column's mean and std
    (ddof=0) measured in float64, grouped by batch variance v: >= 100 eps ("large"), <= eps ("tiny").
    Also raw digit images (pixels in [0, 1]) in batches of 32; the thread's setting, (32,
    ``features``) pre-activations of a random He Linear(64, ``features``) + bias on standardised
    digits (float32); and a sweep of v / eps for the plot.
    """
    n_const = max(1, features // 20)
    worst = dict.fromkeys(["mean_error_units", "max_abs_mean_float32", "max_abs_mean_float64", "std_gap_large_var",
                           "max_abs_mean_large_var", "max_abs_mean_typical", "std_gap_tiny_var",
                           "std_formula_error", "hidden_mean_abs", "hidden_std_gap"], 0.0)

    def keep(name: str, values) -> None:
        worst[name] = max(worst[name], float(np.max(values)))

    configs = 0
    for n in batch_sizes:
        for dtype in (np.float32, np.float64):
            for shape in data.SHAPES:
                for _ in range(repeats):
                    std = 10.0 ** rng.uniform(-4.0, 3.0, size=features)
                    offset = std * np.sign(rng.standard_normal(features)) * 10.0 ** rng.uniform(-1.0, 2.0, features)
                    x = data.shaped_samples(rng, shape, n, features, offset, std)
                    x[:, :n_const] = offset[:n_const]            # constant features: v = 0
                    x = x.astype(dtype)
                    out64 = nn.batchnorm_forward(x, None, None, eps)[0].astype(np.float64)
                    col_mean, col_std = out64.mean(axis=0), out64.std(axis=0)
                    v = x.astype(np.float64).var(axis=0)       # the batch variance, computed exactly-ish
                    bound = _column_mean_error_bound(x, np.abs(out64).max(axis=0), 1.0 / np.sqrt(v + eps), 1.0, 0.0,
                                                     _roundoff(dtype))
                    keep("mean_error_units", np.abs(col_mean) / bound)
                    keep(f"max_abs_mean_{np.dtype(dtype).name}", np.abs(col_mean))
                    large, tiny = v >= 100 * eps, v <= eps
                    if large.any():
                        keep("std_gap_large_var", np.abs(col_std[large] - 1.0))
                        keep("max_abs_mean_large_var", np.abs(col_mean[large]))
                        typical = large & (np.abs(x.astype(np.float64).mean(axis=0)) <= 100 * np.sqrt(v))
                        if typical.any():
                            keep("max_abs_mean_typical", np.abs(col_mean[typical]))
                    if tiny.any():
                        keep("std_gap_tiny_var", np.abs(col_std[tiny] - 1.0))
                    keep("std_formula_error", np.abs(col_std - np.sqrt(v / (v + eps))))
                    configs += 1

    # Real inputs: raw digit pixels (many border pixels are 0 in every image of a batch).
    X, _ = data.load_digits()
    off = const = 0.0
    for _ in range(20):
        xb = _rows(rng, X, 32)
        out, _ = nn.batchnorm_forward(xb, None, None, eps)
        off += float(np.mean(np.abs(out.std(axis=0) - 1.0) > 0.01)) / 20
        const += float(np.mean(np.ptp(xb, axis=0) == 0)) / 20

    # The thread's setting: a hidden layer's pre-activations Z on standardised digits, in float32.
    Xs = recorders.digits().X_train
    W, b = _random_layer(rng, 64, features)
    for _ in range(20):
        out = nn.batchnorm_forward(nn.linear_forward(_rows(rng, Xs, 32), W, b)[0], None, None, eps)[0]
        keep("hidden_mean_abs", np.abs(out.astype(np.float64).mean(axis=0)))
        keep("hidden_std_gap", np.abs(out.astype(np.float64).std(axis=0) - 1.0))

    # Sweep: features with batch variance exactly v_k (a standardised column times sqrt(v_k)).
    ratio = 10.0 ** np.linspace(-3.0, 5.0, 33)
    z = rng.standard_normal((32, ratio.size))
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    out, _ = nn.batchnorm_forward(z * np.sqrt(ratio * eps), None, None, eps)
    return {"configs_checked": configs, **worst, "digits_features_off": off, "digits_constant_features": const,
            "variance_over_eps": ratio, "output_std": out.std(axis=0)}


# ============================================================================ 2. output moments vs gamma, beta


@experiment(
    "bn-output-moments-vs-affine",
    metrics={
        "train_mean_gap": "training mode: largest |batch mean of output - beta| / |gamma| over features and batches",
        "train_std_gap": "training mode: largest |batch std of output / |gamma| - 1| over features and batches",
        "eval_mean_gap": "eval mode (running statistics): mean over features and batches of |mean - beta| / |gamma|",
        "eval_std_gap": "eval mode: mean over features and batches of |batch std of output / |gamma| - 1|",
        "thread_std_gap": "largest |std / gamma - 1| of the thread's own example numbers (for reference)",
    },
    series={
        "eval_batch_size": "batch size of the probe batches (sweep)",
        "eval_mean_gap_by_size": "eval mode: mean |batch mean - beta| / |gamma| at that batch size",
        "eval_std_gap_by_size": "eval mode: mean |batch std / |gamma| - 1| at that batch size",
        "train_gap_by_size": "training mode: largest of the mean and std gaps at that batch size",
    },
)
def output_moments_vs_affine(rng: np.random.Generator, *, gamma: list[float] = [2.33, 2.27, 2.35, 2.20],
                             beta: list[float] = [0.14, 0.59, -0.11, 0.55], batch_size: int = 32,
                             momentum: float = 0.1, stat_epochs: int = 3,
                             eval_batch_sizes: list[int] = [4, 8, 16, 32, 64, 128, 256]):
    """Batch mean and std of a batch-norm layer's output compared with its beta and gamma.

    Standardised digits -> random He Linear(64, len(gamma)) + small random bias -> batch norm with
    the given gamma, beta (default: the thread's numbers). Running statistics: PyTorch's rule
    (momentum, unbiased variance) over ``stat_epochs`` epochs of training batches of ``batch_size``,
    the layer frozen. Validation probe batches are normalised in training and in eval mode; the
    output's per-feature batch mean and std (ddof=0) are compared with beta and |gamma|.
    """
    gamma_arr, beta_arr = np.asarray(gamma, dtype=np.float32), np.asarray(beta, dtype=np.float32)
    if gamma_arr.shape != beta_arr.shape:
        raise ValueError("gamma and beta need the same length")
    split = recorders.digits()
    W, b = _random_layer(rng, 64, gamma_arr.size)
    running_mean, running_var = np.zeros(gamma_arr.size, np.float32), np.ones(gamma_arr.size, np.float32)
    for _ in range(stat_epochs):
        for index in data.batches(rng, len(split.X_train), batch_size):
            z = nn.linear_forward(split.X_train[index], W, b)[0]
            running_mean, running_var = nn.update_running_stats(
                running_mean, running_var, z.mean(axis=0), z.var(axis=0), len(index), momentum)

    def gaps(n: int) -> dict:
        """{mode + "m"/"s": mean or std gap}: training mode ("t") the largest, eval mode ("e") the mean."""
        n_batches = max(1, 512 // n)
        out = dict.fromkeys(("tm", "ts", "em", "es"), 0.0)
        for _ in range(n_batches):
            z = nn.linear_forward(_rows(rng, split.X_val, n), W, b)[0]
            for mode, (y, _) in (("t", nn.batchnorm_forward(z, gamma_arr, beta_arr)),
                                 ("e", nn.batchnorm_eval_forward(z, running_mean, running_var, gamma_arr, beta_arr))):
                y = y.astype(np.float64)
                mean_gap = np.abs(y.mean(axis=0) - beta_arr) / np.abs(gamma_arr)
                std_gap = np.abs(y.std(axis=0) / np.abs(gamma_arr) - 1.0)
                for key, g in ((mode + "m", mean_gap), (mode + "s", std_gap)):
                    out[key] = max(out[key], float(g.max())) if mode == "t" else out[key] + float(g.mean()) / n_batches
        return out

    main = gaps(batch_size)
    sweep = [gaps(n) for n in eval_batch_sizes]
    thread_std, thread_gamma = np.array([2.68, 2.40, 2.55, 2.20]), np.array([2.33, 2.27, 2.35, 2.20])
    return {
        "train_mean_gap": main["tm"], "train_std_gap": main["ts"], "eval_mean_gap": main["em"],
        "eval_std_gap": main["es"], "thread_std_gap": float(np.max(np.abs(thread_std / thread_gamma - 1.0))),
        "eval_batch_size": np.array(eval_batch_sizes, dtype=float),
        "eval_mean_gap_by_size": np.array([g["em"] for g in sweep]),
        "eval_std_gap_by_size": np.array([g["es"] for g in sweep]),
        "train_gap_by_size": np.array([max(g["tm"], g["ts"]) for g in sweep]),
    }


# ============================================================================ 3. mean set by beta alone


def _perturb(rng, p: np.ndarray, delta: float) -> np.ndarray:
    """p plus Gaussian noise of relative size delta (rms of p, or 1 where p is all zeros)."""
    scale = float(np.sqrt(np.mean(np.square(p, dtype=np.float64)))) or 1.0
    return (p + delta * scale * rng.standard_normal(p.shape)).astype(p.dtype)


@experiment(
    "bn-mean-set-by-beta",
    metrics={
        "train_mean_error_units": "training mode: largest |batch mean of the output - beta|, in float32 rounding units",
        "train_max_mean_gap": "training mode: largest |batch mean of the output - beta| / |gamma|",
        "eval_control_gap": "eval mode, nothing changed since the statistics: largest |probe mean - beta| / |gamma|",
        **axes({"eval_gap_{what}": "eval mode, {what}: mean over features, changes of |probe mean - beta| / |gamma|"},
               what={"params": "every lower-layer parameter changed by `relative_change`",
                     "inputs": "inputs changed (brighter, more contrast, noisier)"}),
    },
    series={
        "relative_change": "relative size of the change to every lower-layer parameter (sweep)",
        "eval_gap_by_change": "eval mode: mean |mean output - beta| / |gamma| after that change",
        "train_gap_by_change": "training mode: largest |batch mean - beta| / |gamma| after that change",
    },
)
def mean_set_by_beta(rng: np.random.Generator, *, width: int = 100, batch_size: int = 32, changes: int = 4,
                     relative_change: float = 0.1, probe_size: int = 256,
                     sweep: list[float] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]):
    """Is the mean of a batch-norm output gamma*H + beta set by beta alone?

    Float32, all parameters random (gamma of either sign): standardised digits -> Linear(64, width)
    + bias -> BN(gamma1, beta1) -> ReLU -> Linear(width, width) + bias -> BN(gamma, beta) under
    test. A change of relative size delta to the lower-layer parameters (both Linear layers,
    gamma1, beta1) adds Gaussian noise of delta times each array's rms. Training mode: batches of
    ``batch_size`` (standardised digits, digits x3, digits + 1, exponential and Student-t noise)
    x ``changes`` changes at each size of ``sweep`` (gamma under test changed too). Eval mode:
    running statistics set to the population statistics of the unchanged network on the probe
    set (``probe_size`` training images); then parameters or inputs change, they stay fixed.
    """
    X = recorders.digits().X_train
    probe = _rows(rng, X, probe_size)
    f32 = np.float32
    # The lower layers are a model MLP 64 -> width (BN, ReLU) -> width whose output is the input of
    # the BN under test; its parameters are random (not init_params: biases, gamma, beta vary too).
    config = model.MLPConfig(sizes=(64, width, width), norm="batch", eps=_EPS)
    lower = dict(zip(("W0", "b0"), _random_layer(rng, 64, width)))
    lower["gamma0"] = rng.uniform(0.5, 2.0, width).astype(f32)
    lower["beta0"] = (0.5 * rng.standard_normal(width)).astype(f32)
    lower.update(zip(("W1", "b1"), _random_layer(rng, width, width)))
    gamma = (rng.choice([-1.0, 1.0], width) * rng.uniform(0.5, 2.0, width)).astype(f32)
    beta = rng.standard_normal(width).astype(f32)
    fresh = model.init_state(config)     # training mode reads (and ignores) running statistics

    def pre_bn(x, q, stats1=None):
        """Input of the BN under test; the lower BN in training mode, or in eval mode with state stats1."""
        return model.forward(q, stats1 or fresh, x, config, train=stats1 is None)[0]

    def train_check(x, q, g):
        """(error units, gap) of the training-mode output mean against beta on batch x."""
        z = pre_bn(x, q)
        out, cache = nn.batchnorm_forward(z, g, beta)
        out64 = out.astype(np.float64)
        err = np.abs(out64.mean(axis=0) - beta)
        bound = _column_mean_error_bound(z, np.abs(out64).max(axis=0), cache.inv_std.astype(np.float64),
                                         np.abs(g), np.abs(beta), _roundoff(f32))
        return float(np.max(err / bound)), float(np.max(err / np.abs(g)))

    inputs = [lambda: _rows(rng, X, batch_size), lambda: 3.0 * _rows(rng, X, batch_size),
              lambda: _rows(rng, X, batch_size) + 1.0,
              lambda: data.shaped_samples(rng, "exponential", batch_size, 64, 2.0, 5.0).astype(f32),
              lambda: data.shaped_samples(rng, "student-t", batch_size, 64, -1.0, 0.5).astype(f32)]
    units = gap = 0.0
    train_gap_by_change = []
    for delta in sweep:
        worst = 0.0
        for _ in range(changes):
            q = {k: _perturb(rng, v, delta) for k, v in lower.items()}
            g = _perturb(rng, gamma, delta)
            for make in inputs:
                e_units, e_gap = train_check(make(), q, g)
                units, gap, worst = max(units, e_units), max(gap, e_gap), max(worst, e_gap)
        train_gap_by_change.append(worst)

    # Eval mode: population statistics of the unchanged network on the probe set.
    stats1 = model.population_state(lower, probe, config)
    z = pre_bn(probe, lower, stats1)

    def eval_gap(x, q, reducer=np.mean) -> float:
        out = nn.batchnorm_eval_forward(pre_bn(x, q, stats1), z.mean(axis=0), z.var(axis=0), gamma, beta)[0]
        return float(reducer(np.abs(out.astype(np.float64).mean(axis=0) - beta) / np.abs(gamma)))

    def changed_params(delta: float) -> float:
        return float(np.mean([eval_gap(probe, {k: _perturb(rng, v, delta) for k, v in lower.items()})
                              for _ in range(changes)]))

    control = eval_gap(probe, lower, np.max)
    gap_params = changed_params(relative_change)
    eval_gap_by_change = [changed_params(delta) for delta in sweep]
    noise = rng.standard_normal(probe.shape).astype(f32)
    gap_inputs = float(np.mean([eval_gap(x, lower) for x in (probe + 0.5, 1.5 * probe, probe + 0.5 * noise)]))
    return {
        "train_mean_error_units": units, "train_max_mean_gap": gap, "eval_control_gap": control,
        "eval_gap_params": gap_params, "eval_gap_inputs": gap_inputs, "relative_change": np.array(sweep, dtype=float),
        "eval_gap_by_change": np.array(eval_gap_by_change), "train_gap_by_change": np.array(train_gap_by_change),
    }


# ============================================================================ 4. scalar vs per-feature gamma, beta

_SCALAR_ARMS = {"vector": "per-feature arm", "scalar": "scalar arm"}


@experiment(
    "bn-scalar-vs-per-feature-affine",
    metrics={
        "affine_pairs_per_layer": "number of trainable (gamma, beta) pairs of one batch-norm layer as defined by "
                                  "Ioffe & Szegedy (bnclaims.nn, PyTorch, Keras): entries of the dgamma, dbeta "
                                  "that nn.batchnorm_backward returns for the trained net's hidden layer",
        "gamma_cv": "per-feature arm after training: std / mean |gamma| of its learned gammas (one per feature)",
        "beta_spread": "per-feature arm after training: std of its learned betas / mean |gamma|",
        "collapse_acc_drop": "test accuracy, trained per-feature net minus the same with gamma, beta set to the means",
        **_lr_arm_outputs(_SCALAR_ARMS)[0],
    },
    series=_lr_arm_outputs(_SCALAR_ARMS)[1],
)
def scalar_vs_per_feature_affine(rng: np.random.Generator, *, hidden: int = 64, epochs: int = 20,
                                 batch_size: int = 32, lrs: list[float] = _LR_GRID,
                                 dataset: Literal["digits", "augmented"] = "digits"):
    """One (gamma, beta) pair per batch-normed layer versus one pair per feature, on digits.

    The module's digits MLP with ``hidden`` units, batches of ``batch_size``, ``epochs`` epochs, in
    two arms: "vector" (gamma, beta of shape (hidden,)) and "scalar" (one gamma and one beta for
    the layer), each trained at every LR of ``lrs`` (stacked) and reported at its own best LR and
    at the common one. The trained per-feature net is also scored with its pairs collapsed to one.
    `dataset` "augmented": the harder moved, turned and noisy digits (`recorders.dataset_split`,
    4,312 training rows, so 4x the steps per epoch) instead of the 1,078 clean ones.
    """
    out, chosen = _arms_on_digits(rng, {"vector": "vector", "scalar": "scalar"}, lrs, hidden, epochs, batch_size,
                                  dataset)
    split = recorders.dataset_split(dataset)
    trained, v = chosen["vector"]
    q, state = model.arm_params(trained.params, v), model.arm_params(trained.state, v)
    gamma, beta = q["gamma0"].astype(np.float64), q["beta0"].astype(np.float64)
    collapsed_params = dict(q, gamma0=np.full_like(q["gamma0"], q["gamma0"].mean()),
                            beta0=np.full_like(q["beta0"], q["beta0"].mean()))     # one pair for the layer
    collapsed = model.logits_accuracy(_logits(collapsed_params, state, trained.config, split.X_test), split.y_test)
    # The layer's own definition: how many (gamma, beta) pairs does backprop train? One training
    # batch through the trained net's hidden layer, a random upstream gradient.
    z = nn.linear_forward(split.X_train[:batch_size], q["W0"], q["b0"])[0]
    _, cache = nn.batchnorm_forward(z, q["gamma0"], q["beta0"])
    _, dgamma, dbeta = nn.batchnorm_backward(rng.standard_normal(z.shape).astype(z.dtype), cache)
    return {**out, "affine_pairs_per_layer": min(int(np.size(dgamma)), int(np.size(dbeta))),
            "gamma_cv": float(gamma.std() / np.abs(gamma).mean()),
            "beta_spread": float(beta.std() / np.abs(gamma).mean()),
            "collapse_acc_drop": out["test_acc_vector"] - collapsed}


# ============================================================================ 5. fold gamma, beta into the next layer


def _fold_error_units(x_hat, gamma, beta, W, b, relu: bool) -> float:
    """max |next(BN affine) - folded| in units of a rounding bound; relu between if asked.

    Unfolded: y1 = act(x_hat * gamma + beta) @ W + b. Folded (gamma, beta moved into the next
    layer): y2 = act(x_hat) @ (gamma[:, None] * W) + (beta @ W + b) -- exact in real arithmetic
    without the ReLU, and with it when beta = 0 and gamma > 0 (relu(g x) = g relu(x)).
    x_hat: (N, H), gamma, beta: (H,), W: (H, M), b: (M,).
    """
    act = (lambda a: np.maximum(a, 0)) if relu else (lambda a: a)
    y1 = nn.linear_forward(act(x_hat * gamma + beta), W, b)[0]
    y2 = nn.linear_forward(act(x_hat), gamma[:, None] * W, beta @ W + b)[0]
    size = (np.abs(x_hat * gamma).astype(np.float64) + np.abs(beta)) @ np.abs(W).astype(np.float64) + np.abs(b)
    bound = 2.0 * (W.shape[0] + 2) * _roundoff(x_hat.dtype) * size + _TINY
    return float(np.max(np.abs(y1.astype(np.float64) - y2) / bound))


def _refit_residual(h_train, y_train, h_val, y_val) -> tuple[float, np.ndarray, np.ndarray]:
    """Best next layer (W', b') by least squares from features h to targets y, fitted on train.

    Returns (relative residual on val: ||y - y_hat|| / ||y - mean y||, W', b').
    """
    A = np.hstack([h_train, np.ones((len(h_train), 1))]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(A, y_train.astype(np.float64), rcond=None)
    fit = np.hstack([h_val, np.ones((len(h_val), 1))]) @ coef
    resid = np.linalg.norm(y_val - fit) / np.linalg.norm(y_val - y_val.mean(axis=0))
    return float(resid), coef[:-1], coef[-1]


_FOLD_ARMS = {"affine": "(c) BN with gamma, beta", "none": "(c) BN without gamma, beta"}


@experiment(
    "bn-affine-fold-next-layer",
    metrics={
        "fold_linear_error_units": "(a) no ReLU between: largest |unfolded - folded| output difference, in units "
                                   "of its rounding bound, over 100 random layers (float32 and float64)",
        "fold_relu_scale_error_units": "(b1) ReLU between, gamma > 0 and beta = 0: the same error units",
        "naive_fold_relu_rel_error": "(b) ReLU between, random gamma, beta: relative error of the plain fold (a)",
        "refit_relu_residual_random": "(b2) ReLU between, random gamma in [0.5, 2] and beta ~ N(0, 1): relative "
                                      "residual (validation) of the best least-squares next layer fed relu(x_hat)",
        "refit_relu_residual_trained": "(b3) the same for the gamma, beta, weights of the trained per-feature net",
        "refit_acc_drop_trained": "test accuracy of the trained per-feature net minus its refit without gamma, beta",
        **_lr_arm_outputs(_FOLD_ARMS)[0],
    },
    series=_lr_arm_outputs(_FOLD_ARMS)[1],
)
def affine_fold_next_layer(rng: np.random.Generator, *, hidden: int = 64, epochs: int = 20, batch_size: int = 32,
                           lrs: list[float] = _LR_GRID, draws: int = 50):
    """Are gamma, beta redundant with the next Linear layer's weights?

    (a) No nonlinearity between BN and the next Linear: fold gamma, beta into it
        (W' = diag(gamma) W, b' = beta W + b) and compare outputs, ``draws`` random layers
        (x_hat: batch-normalised (32, 64) batches, gamma of either sign, W, b random) per dtype.
    (b) ReLU between: (b1) gamma > 0, beta = 0 folds exactly (ReLU is positively homogeneous);
        (b2) general gamma, beta: the best least-squares next layer fed relu(x_hat), fitted on the
        training split's hidden features and scored on the validation split (64 -> ``hidden`` random
        He layer on standardised digits, targets from a random ``hidden`` -> 10 layer); (b3) the same
        with the trained per-feature network of (c).
    (c) The module's digits MLP with ``hidden`` units: BN with per-feature gamma, beta versus BN
        without them, each at its best LR of ``lrs``.
    """
    # (a), (b1): exact folds on random layers.
    linear_units = scale_units = 0.0
    for dtype in (np.float32, np.float64):
        for _ in range(draws):
            z = data.shaped_samples(rng, "normal", 32, 64, rng.normal(0, 3, 64), 10 ** rng.uniform(-2, 2, 64))
            x_hat = nn.batchnorm_forward(z.astype(dtype), None, None)[0]
            W, b = _weights(rng, 64, 10, "lecun", dtype), rng.standard_normal(10).astype(dtype)
            gamma, beta = rng.uniform(-2, 2, 64).astype(dtype), rng.standard_normal(64).astype(dtype)
            linear_units = max(linear_units, _fold_error_units(x_hat, gamma, beta, W, b, relu=False))
            scale_units = max(scale_units, _fold_error_units(x_hat, np.abs(gamma) + dtype(0.1),
                                                             np.zeros_like(beta), W, b, relu=True))

    # (b2): general gamma, beta with ReLU between, on digits features.
    split = recorders.digits()
    W1 = _weights(rng, 64, hidden)
    z_train, z_val = split.X_train @ W1, split.X_val @ W1
    mu, var = z_train.mean(axis=0), z_train.var(axis=0)    # training-split statistics, then fixed
    xh_train, xh_val = (nn.batchnorm_eval_forward(z, mu, var, None, None, _EPS)[0] for z in (z_train, z_val))
    gamma, beta = rng.uniform(0.5, 2.0, hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    W2 = _weights(rng, hidden, 10, "lecun")
    target = lambda xh: np.maximum(xh * gamma + beta, 0) @ W2  # noqa: E731
    y_val = target(xh_val)
    naive = np.maximum(xh_val, 0) @ (gamma[:, None] * W2) + beta @ W2
    naive_error = float(np.linalg.norm(naive - y_val) / np.linalg.norm(y_val - y_val.mean(axis=0)))
    resid_random, _, _ = _refit_residual(np.maximum(xh_train, 0), target(xh_train), np.maximum(xh_val, 0), y_val)

    # (c): train with and without gamma, beta.
    out, chosen = _arms_on_digits(rng, {"affine": "vector", "none": "none"}, lrs, hidden, epochs, batch_size)

    # (b3): refit the trained per-feature net's last layer without gamma, beta (eval-mode features).
    trained, best = chosen["vector"]
    q, state = model.arm_params(trained.params, best), model.arm_params(trained.state, best)

    def features(X):
        """(relu(x_hat) without gamma, beta; the trained net's logits), eval mode."""
        record = model.activations(q, state, X, trained.config)
        x_hat = nn.batchnorm_eval_forward(record["pre0"], state["running_mean0"], state["running_var0"],
                                          None, None, _EPS)[0]
        return np.maximum(x_hat, 0), record["logits"]

    (h_train, logits_train), (h_val, logits_val) = features(split.X_train), features(split.X_val)
    resid_trained, W_fit, b_fit = _refit_residual(h_train, logits_train, h_val, logits_val)
    refit_acc = model.logits_accuracy(features(split.X_test)[0] @ W_fit + b_fit, split.y_test)
    return {**out, "fold_linear_error_units": linear_units, "fold_relu_scale_error_units": scale_units,
            "naive_fold_relu_rel_error": naive_error, "refit_relu_residual_random": resid_random,
            "refit_relu_residual_trained": resid_trained, "refit_acc_drop_trained": out["test_acc_affine"] - refit_acc}


# ============================================================================ 6. batch norm vs layer norm


@experiment(
    "bn-vs-layernorm",
    metrics={
        "bn_ln_rel_diff": "smallest ||BN(x) - LN(x)|| / ||BN(x)|| over the digits batches (affine off)",
        "ln_is_bn_transposed_units": "largest |LN(x) - BN(x^T)^T| in units of its rounding bound, over digits "
                                     "and synthetic batches (float32 and float64)",
        "bn_row_mean_abs": "BN output: mean |per-example mean over features| (LN makes it 0)",
        "ln_col_mean_abs": "LN output: mean |per-feature mean over the batch| (BN makes it 0)",
        "bn_batchmate_change": "BN training mode, batch 32: mean |change| of one example's output when its 31 batch "
                               "mates are replaced by other images",
        "ln_batchmate_change_units": "LN: largest such |change| (every batch size), in units of D u max|out|",
        "bn_eval_batchmate_change": "BN eval mode (fixed statistics): largest such |change| (every batch size)",
    },
    series={
        "batch_size": "batch size (sweep)",
        **axes({"{norm}_change_by_batch": "{norm}: mean |change| of one example's output when its batch mates change"},
               norm={"bn": "BN training mode", "ln": "LN"}),
    },
)
def bn_vs_layernorm(rng: np.random.Generator, *, batch_size: int = 32, trials: int = 20,
                    sweep: list[int] = [2, 4, 8, 16, 32, 64, 128, 256]):
    """Which axis batch norm and layer norm normalise, and whether an example depends on its batch.

    Inputs: batches of ``batch_size`` standardised digit images (64 pixel features) from the
    training split, plus synthetic batches (5 shapes, 4..256 examples x 100 features, float32
    and float64) for the identity LN(x) = BN(x^T)^T. Affine off (gamma = 1, beta = 0).
    Batch-mate test: keep example 0, replace the other examples by different images, and
    compare example 0's output; ``trials`` batches per batch size of ``sweep``.
    """
    X = recorders.digits().X_train
    bn = lambda x: nn.batchnorm_forward(x, None, None)[0]  # noqa: E731
    ln = lambda x: nn.layernorm_forward(x, None, None)[0]  # noqa: E731

    def identity_units(x) -> float:
        x64 = x.astype(np.float64)
        inv_std = 1.0 / np.sqrt(x64.var(axis=1, keepdims=True) + _EPS)
        ln_x = ln(x)
        bound = 4.0 * x.shape[1] * _roundoff(x.dtype) * (np.abs(x64).mean(axis=1, keepdims=True) * inv_std
                                                         + np.abs(ln_x))
        return float(np.max(np.abs(ln_x.astype(np.float64) - bn(x.T).T) / (bound + _TINY)))

    rel_diff, units, row_mean, col_mean = np.inf, 0.0, 0.0, 0.0
    for _ in range(trials):
        x = _rows(rng, X, batch_size)
        bn_x, ln_x = bn(x), ln(x)
        rel_diff = min(rel_diff, float(np.linalg.norm(bn_x - ln_x) / np.linalg.norm(bn_x)))
        row_mean += float(np.mean(np.abs(bn_x.mean(axis=1)))) / trials
        col_mean += float(np.mean(np.abs(ln_x.mean(axis=0)))) / trials
        units = max(units, identity_units(x))
    for n in (4, 32, 256):
        for dtype in (np.float32, np.float64):
            for shape in data.SHAPES:
                x = data.shaped_samples(rng, shape, n, 100, rng.normal(0, 5, (n, 1)), 10 ** rng.uniform(-2, 2, (n, 1)))
                units = max(units, identity_units(x.astype(dtype)))

    running_mean, running_var = X.mean(axis=0), X.var(axis=0)    # population statistics: the eval-mode control

    def change(n):
        """(BN mean |change|, LN mean |change|, LN units, BN-eval max |change|) of example 0."""
        bn_c = ln_c = ln_u = ev = 0.0
        for _ in range(trials):
            x = _rows(rng, X, 2 * n)
            a, b = x[:n], np.concatenate([x[:1], x[n + 1:]])    # same example 0, new batch mates
            bn_c += float(np.mean(np.abs(bn(a)[0] - bn(b)[0]))) / trials
            la, lb = ln(a)[0], ln(b)[0]
            ln_c += float(np.mean(np.abs(la - lb))) / trials
            ln_u = max(ln_u, float(np.max(np.abs(la - lb)) / (64 * _roundoff(np.float32) * np.abs(la).max())))
            ea, eb = (nn.batchnorm_eval_forward(v, running_mean, running_var, None, None)[0][0] for v in (a, b))
            ev = max(ev, float(np.max(np.abs(ea - eb))))
        return bn_c, ln_c, ln_u, ev

    sweep_results = [change(n) for n in sweep]
    bn_c, _, ln_u, ev = change(batch_size)
    return {
        "bn_ln_rel_diff": rel_diff, "ln_is_bn_transposed_units": units, "bn_row_mean_abs": row_mean,
        "ln_col_mean_abs": col_mean, "bn_batchmate_change": bn_c,
        "ln_batchmate_change_units": max(ln_u, max(r[2] for r in sweep_results)),
        "bn_eval_batchmate_change": max(ev, max(r[3] for r in sweep_results)),
        "batch_size": np.array(sweep, dtype=float),
        "bn_change_by_batch": np.array([r[0] for r in sweep_results]),
        "ln_change_by_batch": np.array([r[1] for r in sweep_results]),
    }


# ============================================================================ 7. one big example in the batch


@experiment(
    "bn-big-example",
    metrics={
        **axes({"train_flip_n{n}_s16": "training mode, batch {n}, one image x16: fraction of the other images whose "
                                       "predicted class changes"}, n=("32", "256", "4")),
        "train_flip_n32_s1e6": "training mode, batch 32, one image x10^6: fraction of the others that change",
        "xhat_shift_n32_s16": "training mode, batch 32, one image x16: mean |change| of the others' normalised values",
        "others_acc_n32": "training mode, batch 32, nothing scaled: accuracy on the 31 others",
        "others_acc_n32_s1e6": "training mode, batch 32, one image x10^6: accuracy on the 31 others",
        "eval_flip_max": "eval mode (running statistics): largest fraction of others that change, any size and scale",
        "test_acc": "eval-mode test accuracy of the trained network",
    },
    series={
        "scale": "factor the one big image's pixels are multiplied by",
        **axes({"flip_n{n}": "training mode, batch {n}: fraction of the other images whose predicted class changes"},
               n=("4", "32", "256")),
        "flip_eval": "eval mode, every batch size: fraction of the others whose class changes",
    },
)
def big_example(rng: np.random.Generator, *, hidden: int = 64, epochs: int = 20, lr: float = 0.1,
                batch_sizes: list[int] = [4, 32, 256],
                scales: list[float] = [1.0, 2.0, 4.0, 16.0, 100.0, 1e3, 1e4, 1e6]):
    """Does one large example in a batch change the predictions for the others?

    The module's digits MLP (per-feature gamma, beta) with ``hidden`` units, trained ``epochs``
    epochs at ``lr`` (batches of 32) on the raw digit pixels in [0, 1] (so x16 is an image left as
    0..16 counts). Probe: batches of each size in ``batch_sizes`` drawn from the test split
    (512 / size batches of distinct images); image 0 of each batch is multiplied by each factor
    in ``scales`` and the predicted classes of images 1..N-1 are compared with those of the same
    batch unscaled, in training mode (batch statistics, as in a forward pass during training or a
    model left in train mode) and in eval mode (running statistics).
    """
    missing = sorted({4, 32, 256} - set(batch_sizes)) + sorted({1.0, 16.0, 1e6} - set(scales))
    if missing:
        raise ValueError(f"batch_sizes must include 4, 32, 256 and scales 1, 16, 1e6 (the metrics); missing {missing}")
    split = data.digits_split(validation_fraction=0.2, standardize=False, dtype=np.float32)
    res = _train_arms(rng, split.X_train, split.y_train, ("vector",), [lr], hidden=hidden, epochs=epochs)["vector"]
    p, state, config = model.arm_params(res.params, 0), model.arm_params(res.state, 0), res.config
    logits = lambda x, train: _logits(p, state, config, x, train)  # noqa: E731  x: (k, n, 64) probe batches
    flips = {(mode, n): [] for mode in ("train", "eval") for n in batch_sizes}
    extra = {}
    with np.errstate(all="ignore"):
        for n in batch_sizes:
            index = np.stack([rng.choice(len(split.X_test), size=n, replace=False) for _ in range(max(1, 512 // n))])
            xb, yb = split.X_test[index], split.y_test[index]                   # (k, n, 64), (k, n)
            for mode in ("train", "eval"):
                base = np.argmax(logits(xb, mode == "train"), axis=2)
                for s in scales:
                    xs = xb.copy()
                    xs[:, 0] *= np.float32(s)
                    pred = np.argmax(logits(xs, mode == "train"), axis=2)
                    flips[mode, n].append(float(np.mean(pred[:, 1:] != base[:, 1:])))
                    if mode == "train" and n == 32 and s in (1.0, 1e6):
                        extra[s] = float(np.mean(pred[:, 1:] == yb[:, 1:]))
            if n == 32:
                def xhat(x):   # training-mode normalised hidden values, per probe batch
                    return nn.batchnorm_forward(nn.linear_forward(x, p["W0"], p["b0"])[0], None, None, _EPS)[0]
                xs = xb.copy()
                xs[:, 0] *= np.float32(16.0)
                extra["shift"] = float(np.mean(np.abs(xhat(xs)[:, 1:] - xhat(xb)[:, 1:])))
    at = lambda mode, n, s: flips[mode, n][scales.index(s)]  # noqa: E731
    return {
        **{f"train_flip_n{n}_s16": at("train", n, 16.0) for n in (32, 256, 4)},
        "train_flip_n32_s1e6": at("train", 32, 1e6), "xhat_shift_n32_s16": extra["shift"],
        "others_acc_n32": extra[1.0], "others_acc_n32_s1e6": extra[1e6],
        "eval_flip_max": max(max(v) for (mode, _), v in flips.items() if mode == "eval"),
        "test_acc": model.logits_accuracy(logits(split.X_test, False), split.y_test),
        "scale": np.asarray(scales, dtype=float), **{f"flip_n{n}": np.array(flips["train", n]) for n in (4, 32, 256)},
        "flip_eval": np.max([flips["eval", n] for n in batch_sizes], axis=0),
    }
