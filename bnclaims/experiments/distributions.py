"""Batch statistics as estimates: what they fix, what they cannot, and how noisy they are.

One family: the mean and variance batch norm computes from a batch, set against the values of
the population the batch came from -- on controlled synthetic batches (``bnclaims.data``
generators: the shape of a distribution, padded variable-length sequences) and on the hidden
units of a digits MLP (the sampling noise of small batches, and what it costs in training,
isolated with ghost batches).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Literal

import numpy as np
from scipy import stats

from bnclaims import data, model, nn, recorders
from bnclaims.experiments import axes, experiment

EPS64 = float(np.finfo(np.float64).eps)
SHAPED = ("exponential", "bimodal", "student-t", "uniform")
_KEY = {s: s.replace("-", "_") for s in ("normal",) + SHAPED}     # shape -> part of an output name
_SHAPED_KEYS = {_KEY[s]: s for s in SHAPED}


# ----------------------------------------------------------------------------- shape vs moments


def standardized_cdf(shape: str, z: np.ndarray, df: float = 5.0) -> np.ndarray:
    """CDF of the standardized (mean 0, variance 1) law `shape` of `data.shaped_samples`."""
    if shape == "normal":
        return stats.norm.cdf(z)
    if shape == "exponential":
        return np.where(z > -1.0, -np.expm1(-(z + 1.0)), 0.0)
    if shape == "bimodal":
        centre = 0.9
        s = math.sqrt(1.0 - centre**2)
        return 0.5 * stats.norm.cdf((z - centre) / s) + 0.5 * stats.norm.cdf((z + centre) / s)
    if shape == "student-t":
        return stats.t.cdf(z / math.sqrt((df - 2.0) / df), df)
    if shape == "uniform":
        return np.clip((z + math.sqrt(3.0)) / (2.0 * math.sqrt(3.0)), 0.0, 1.0)
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=32)
def population_ks(shape: str, df: float = 5.0) -> float:
    """Kolmogorov distance sup_z |F_shape(z) - Phi(z)| between the standardized law and N(0, 1):
    the shape difference that no choice of mean and variance can remove (grid step 1e-4)."""
    z = np.linspace(-10.0, 10.0, 200_001)
    return float(np.max(np.abs(standardized_cdf(shape, z, df) - stats.norm.cdf(z))))


def _standard_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column of x (N, D): mean, biased variance, skewness and excess kurtosis (float64)."""
    mean = x.mean(axis=0)
    xc = x - mean
    var = np.mean(xc * xc, axis=0)
    skew = np.mean(xc**3, axis=0) / var**1.5
    kurt = np.mean(xc**4, axis=0) / var**2 - 3.0
    return mean, var, skew, kurt


def exact_moment_errors(rng: np.random.Generator, trials: int, eps: float = 1e-5) -> tuple[float, float]:
    """Largest errors of the batch-norm identities over `trials` random float64 batches.

    Each batch: a random shape, N in 2..512, D in 1..64, mean in [-10, 10], std log-uniform in
    [0.1, 10]. Identities (affine off): mean(out) = 0, var(out) = var / (var + eps),
    skew(out) = skew(x), kurt(out) = kurt(x). Each error is divided by the rounding-error
    bound p * N * eps64 * (1 + |mean| / std): sums of N terms, cancellation of the offset, and
    a p-th power multiplying relative errors by p (p = 2 for the variance, 4 for the kurtosis,
    the largest power in each group), so a value below 1 is within floating-point rounding.
    Returns the maxima for (mean and variance, skewness and kurtosis).
    """
    worst_moments = worst_shape = 0.0
    shapes = ("normal",) + SHAPED
    for _ in range(trials):
        shape = shapes[rng.integers(len(shapes))]
        n = int(rng.integers(2, 513))
        d = int(rng.integers(1, 65))
        mu = rng.uniform(-10.0, 10.0)
        sd = math.exp(rng.uniform(math.log(0.1), math.log(10.0)))
        x = data.shaped_samples(rng, shape, n, d, mu, sd)
        out, _ = nn.batchnorm_forward(x, None, None, eps)
        m_x, v_x, s_x, k_x = _standard_moments(x)
        m_o, v_o, s_o, k_o = _standard_moments(out)
        bound = n * EPS64 * (1.0 + np.abs(m_x) / np.sqrt(v_x))
        moment_err = np.maximum(np.abs(m_o), np.abs(v_o - v_x / (v_x + eps)))
        shape_err = np.maximum(np.abs(s_o - s_x), np.abs(k_o - k_x) / (3.0 + np.abs(k_x)))
        worst_moments = max(worst_moments, float(np.max(moment_err / (2.0 * bound))))
        worst_shape = max(worst_shape, float(np.max(shape_err / (4.0 * bound))))
    return worst_moments, worst_shape


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.ks_2samp(a.ravel(), b.ravel()).statistic)


@experiment(
    "bn-shape-vs-moments",
    metrics={
        "moment_error_bound_units": "max error of mean(out)=0, var(out)=var/(var+eps) over random batches, "
                                    "in units of the rounding bound N*eps64*(1+|mean|/std)",
        "shape_error_bound_units": "max change of skewness / excess kurtosis through BN, same units",
        "ks_before_same": "KS distance, reference N(0,1) batch vs another N(0,1) batch, raw",
        "ks_after_same": "same after batch norm of each batch (sampling-noise floor)",
        "ks_before_moments": "KS, reference vs normal batch with other mean and std, raw",
        "ks_after_moments": "same after batch norm",
        **axes({"ks_before_{shape}": "KS, reference vs {shape} batch with other mean and std, raw"},
               shape=_SHAPED_KEYS),
        **axes({"ks_after_{shape}": "same ({shape}) after batch norm"}, shape=_SHAPED_KEYS),
        **axes({"ks_population_{shape}": "sup |F - Phi| between standardized {shape} and N(0,1) (exact)"},
               shape=_SHAPED_KEYS),
        "ks_after_nearest_shape": "smallest KS distance after batch norm over the differently shaped batches",
    },
    series={
        "pair": "comparison index: 0 same law, 1 moments only, 2 exponential, 3 bimodal, 4 student-t, 5 uniform",
        "ks_before": "KS distance before batch norm, per comparison",
        "ks_after": "KS distance after batch norm, per comparison",
        "ks_population": "shape-only distance of the standardized laws, per comparison (0 for 0 and 1)",
        "normal_quantile": "standard normal quantiles (x axis of the Q-Q plot)",
        **axes({"qq_{shape}": "quantiles of batch-normed {shape} batches at the same probabilities"},
               shape={key: shape for shape, key in _KEY.items()}),
    },
)
def shape_vs_moments(rng: np.random.Generator, *, batch_size: int = 256, features: int = 64, other_mean: float = 2.0,
                     other_std: float = 3.0, df: float = 5.0, exact_trials: int = 100) -> dict:
    """Batch norm fixes the mean and variance of a batch, not the shape of its distribution.

    A reference batch (`batch_size` x `features`, i.i.d. N(0, 1)) is compared with batches that
    differ (a) not at all, (b) only in mean and std (normal, `other_mean`, `other_std`), (c) in
    shape too (exponential, bimodal, Student-t(`df`), uniform with the same other mean and std).
    Each batch is batch-normalized with its own statistics (training mode, no affine). The
    distance is the two-sample Kolmogorov-Smirnov statistic on all values pooled over the
    i.i.d. features (batch_size * features per side), before and after BN; for (c) it is set
    against the exact distance between the standardized laws. Exactness: the BN moment
    identities and the invariance of skewness/kurtosis are checked on `exact_trials` random
    float64 batches against the rounding-error bound.
    """
    moment_err, shape_err = exact_moment_errors(rng, exact_trials)
    reference = data.shaped_samples(rng, "normal", batch_size, features)
    ref_bn, _ = nn.batchnorm_forward(reference, None, None)
    out: dict = {"moment_error_bound_units": moment_err, "shape_error_bound_units": shape_err}

    def compare(shape: str, mean: float, std: float, key: str):
        batch = data.shaped_samples(rng, shape, batch_size, features, mean, std, df=df)
        batch_bn, _ = nn.batchnorm_forward(batch, None, None)
        out[f"ks_before_{key}"] = _ks(reference, batch)
        out[f"ks_after_{key}"] = _ks(ref_bn, batch_bn)
        return batch_bn

    normed = {"normal": compare("normal", 0.0, 1.0, "same")}
    compare("normal", other_mean, other_std, "moments")
    for shape in SHAPED:
        normed[shape] = compare(shape, other_mean, other_std, _KEY[shape])
        out[f"ks_population_{_KEY[shape]}"] = population_ks(shape, df)
    keys = ["same", "moments"] + [_KEY[s] for s in SHAPED]
    probs = np.linspace(0.01, 0.99, 99)
    return {**out, "ks_after_nearest_shape": min(out[f"ks_after_{_KEY[s]}"] for s in SHAPED),
            "pair": np.arange(len(keys), dtype=float), "ks_before": np.array([out[f"ks_before_{k}"] for k in keys]),
            "ks_after": np.array([out[f"ks_after_{k}"] for k in keys]),
            "ks_population": np.array([0.0, 0.0] + [out[f"ks_population_{_KEY[s]}"] for s in SHAPED]),
            "normal_quantile": stats.norm.ppf(probs),
            **{f"qq_{_KEY[shape]}": np.quantile(values, probs) for shape, values in normed.items()}}


# ----------------------------------------------------------------------------- padded sequences


def per_timestep_stats(x: np.ndarray, mask: np.ndarray, masked: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch statistics per timestep of padded sequences, as a recurrent batch norm computes them.

    x: (S, B, T, D) -- S independent batches of B padded sequences; mask: (S, B, T) True = valid.
    masked=False: every row of the batch counts, padding zeros included (the naive version);
    masked=True: only valid rows count. Returns mean (S, T, D), biased var (S, T, D) and the
    count of rows used (S, T) (0 where a timestep has no valid row: mean = var = 0 there).
    """
    if masked:
        w = mask[..., None].astype(x.dtype)                  # (S, B, T, 1)
        count = mask.sum(axis=1)                             # (S, T)
    else:
        w = np.ones(mask.shape + (1,), dtype=x.dtype)
        count = np.full((mask.shape[0], mask.shape[2]), mask.shape[1])
    denom = np.maximum(count, 1)[..., None]                  # (S, T, 1)
    mean = (w * x).sum(axis=1) / denom
    var = (w * (x - mean[:, None]) ** 2).sum(axis=1) / denom
    return mean, var, count


def _normalize(x, mean, var, eps):
    """Batch norm of x (S, B, T, D) with given per-timestep statistics (S, T, D), `nn.batchnorm_eval_forward`."""
    per_timestep = np.swapaxes(x, 1, 2)                      # (S, T, B, D): the batch axis second to last
    out = nn.batchnorm_eval_forward(per_timestep, mean[..., None, :], var[..., None, :], None, None, eps)[0]
    return np.swapaxes(out, 1, 2)


def _window_rms(err: np.ndarray, mask: np.ndarray, window: np.ndarray) -> float:
    """RMS of err (S, B, T, D) over valid tokens whose timestep is in `window` (T,) bool."""
    m = mask & window[None, None, :]
    return float(np.sqrt(np.mean(err[m] ** 2)))


_SEQUENCE_ARMS = {"naive": "padding counted", "masked": "padding masked out",
                  "full": "all sequences full length (control)"}


@experiment(
    "padded-sequence-batch-stats",
    metrics={
        **axes({"{kind}_err_{when}": "rms normalization error (vs population), {kind}, {when} timesteps"},
               kind=_SEQUENCE_ARMS, when=("early", "late")),
        "naive_std_ratio_late": "naive per-timestep std estimate / true std, late timesteps (mean)",
        "naive_mean_bias_late": "(naive per-timestep mean - true mean) / true std, late timesteps (mean)",
        "valid_count_late": "mean number of valid sequences per late timestep",
        "bn_coupling": "rms change of one sequence's BN (masked) outputs when the other sequences are redrawn",
        "ln_coupling_max": "max change of the same sequence's layer-norm outputs (exactly 0 expected)",
    },
    series={
        "timestep": "timestep 1..max_len (x axis)",
        **axes({"err_{kind}": "rms normalization error per timestep, {kind}"}, kind=_SEQUENCE_ARMS),
        "err_theory": "sampling theory sqrt(1.5 / n_t) for masked stats with n_t valid sequences",
        "valid_count": "mean number of valid sequences per timestep",
    },
)
def padded_sequence_batch_stats(rng: np.random.Generator, *, batch_size: int = 32, max_len: int = 40,
                                features: int = 16, batches: int = 100, mean: float = 1.0, std: float = 2.0,
                                length_dist: Literal["uniform", "short"] = "uniform", late_fraction: float = 0.25,
                                eps: float = 1e-5) -> dict:
    """Per-timestep batch norm of padded variable-length sequences vs the population and vs layer norm.

    `batches` independent batches of `batch_size` sequences (`data.padded_sequences`, lengths
    `length_dist` on 1..`max_len`, `features` i.i.d. features of mean `mean`, std `std` at every
    valid step, zeros in padding). A recurrent batch norm normalizes timestep t with the
    statistics of the batch at t (Cooijmans et al. 2016): either counting the padding rows
    ("naive") or masking them out ("masked"). The error of each valid token's normalized value
    against the population value (x - mean) / std is measured per timestep and summarized over
    the first and the last `late_fraction` of the timesteps. Control: the same with every
    sequence full length. Coupling: one sequence is kept and the others are redrawn; the change
    of its outputs under masked BN and under layer norm (statistics over features).
    """
    def draw(length: str):
        xs, masks = [], []
        for _ in range(batches):
            x, mask, _ = data.padded_sequences(rng, batch_size, max_len, features, length)
            xs.append(np.where(mask[..., None], mean + std * x, 0.0))
            masks.append(mask)
        return np.stack(xs), np.stack(masks)

    x, mask = draw(length_dist)
    x_full, mask_full = draw("full")
    masks = {"naive": mask, "masked": mask, "full": mask_full}
    err, stats_of = {}, {}
    for kind, xv in (("naive", x), ("masked", x), ("full", x_full)):
        stats_of[kind] = per_timestep_stats(xv, masks[kind], kind != "naive")      # mean, var, count
        err[kind] = _normalize(xv, *stats_of[kind][:2], eps) - (xv - mean) / std     # vs the population value
    (m_naive, v_naive, _), count = stats_of["naive"], stats_of["masked"][2]

    window = max(1, int(round(late_fraction * max_len)))
    t = np.arange(max_len)
    windows = {"early": t < window, "late": t >= max_len - window}
    late = windows["late"]

    def per_t(err, maskv):
        sq = np.where(maskv[..., None], err**2, 0.0).sum(axis=(0, 1, 3))
        n = maskv.sum(axis=(0, 1)) * features
        return np.sqrt(np.where(n > 0, sq / np.maximum(n, 1), np.nan))

    mean_count = count.mean(axis=0)
    with np.errstate(divide="ignore"):
        theory = np.where(mean_count > 0, np.sqrt(1.5 / np.maximum(mean_count, 1e-12)), np.nan)

    # coupling: sequence 0 of batch 0 kept, the other sequences replaced by those of batch 1
    x_swap, mask_swap = x[1].copy(), mask[1].copy()
    x_swap[0], mask_swap[0] = x[0, 0], mask[0, 0]
    own = mask[0, 0]                                          # (T,) valid steps of the kept sequence
    pair_x, pair_mask = np.stack([x[0], x_swap]), np.stack([mask[0], mask_swap])
    m, v, _ = per_timestep_stats(pair_x, pair_mask, True)
    bn_out = _normalize(pair_x, m, v, eps)                    # (2, B, T, D)
    bn_coupling = float(np.sqrt(np.mean((bn_out[0, 0, own] - bn_out[1, 0, own]) ** 2)))
    # layer norm of every token of each whole batch (padding rows included), then sequence 0
    ln_out = [nn.layernorm_forward(batch.reshape(-1, features), None, None, eps)[0].reshape(batch.shape)
              for batch in pair_x]
    ln_coupling = float(np.max(np.abs(ln_out[0][0, own] - ln_out[1][0, own])))

    late_valid = mask[:, :, late].any(axis=1)                 # (S, T_late) timesteps with data
    return {
        **{f"{kind}_err_{when}": _window_rms(err[kind], masks[kind], windows[when])
           for kind in err for when in windows},
        "naive_std_ratio_late": float(np.mean(np.sqrt(v_naive[:, late][late_valid]) / std)),
        "naive_mean_bias_late": float(np.mean((m_naive[:, late][late_valid] - mean) / std)),
        "valid_count_late": float(count[:, late].mean()), "bn_coupling": bn_coupling, "ln_coupling_max": ln_coupling,
        "timestep": t + 1.0,
        **{f"err_{kind}": per_t(err[kind], masks[kind]) for kind in err},
        "err_theory": theory, "valid_count": mean_count.astype(float),
    }


# ----------------------------------------------------------------------------- small-batch noise

GHOST_SIZES = (2, 4, 8, 16, 32, 128)
NOISE_SIZES = (64, 128, 128, 10)


def sampling_noise(pre: np.ndarray, batch_size: int, draws: int, rng: np.random.Generator):
    """Standard deviation, over `draws` batches of `batch_size` rows drawn with replacement from
    `pre` (N, D), of the per-feature batch mean and biased batch variance, beside the closed forms
    for i.i.d. sampling from that population:

        sd(mean)  = sigma / sqrt(B)
        sd(var_b) = (B - 1) / B * sigma^2 * sqrt(kappa / B - (B - 3) / (B (B - 1)))

    (kappa = E[(x - mu)^4] / sigma^4 of the population). Returns five (D,) arrays: measured and
    closed-form sd of the mean, measured and closed-form sd of the variance, and sigma^2.
    """
    pre = pre.astype(np.float64)
    mu = pre.mean(axis=0)
    sigma2 = pre.var(axis=0)
    kappa = np.mean((pre - mu) ** 4, axis=0) / sigma2**2
    b = batch_size
    batches = pre[rng.integers(len(pre), size=(draws, b))]                  # (draws, B, D)
    theory_var = (b - 1) / b * sigma2 * np.sqrt(np.maximum(kappa / b - (b - 3) / (b * (b - 1)), 0.0))
    return (batches.mean(axis=1).std(axis=0, ddof=1), np.sqrt(sigma2 / b), batches.var(axis=1).std(axis=0, ddof=1),
            theory_var, sigma2)


@experiment(
    "batch-statistics-noise",
    metrics={
        "sd_mean_ratio": "measured / closed-form sd of the batch mean at batch `headline` (geomean over units)",
        "sd_var_ratio": "measured / closed-form sd of the batch variance at batch `headline` (geomean over units)",
        "rel_sd_mean": "sd of the batch mean at batch `headline`, in population stds (median over units)",
        "rel_sd_std": "sd of the batch std at batch `headline`, relative to the population std (median)",
        **axes({"acc_ghost{g}": "test accuracy, BN statistics from ghost batches of {g}"}, g=GHOST_SIZES),
        "acc_full": "test accuracy, BN statistics of the whole training set at every step (noise-free control)",
        "acc_none": "test accuracy, no normalization",
        "diverged_arms": "number of arms whose loss became NaN/inf",
        "stuck_arms": "number of finite arms at chance-level validation accuracy (< 0.2)",
    },
    series={
        "ghost_size": "batch size the BN statistics are computed from (x axis)",
        "acc_by_ghost": "test accuracy per ghost batch size",
        "acc_full_line": "noise-free control (whole-training-set statistics), repeated per x",
        "acc_none_line": "no normalization, repeated per x",
        "noise_batch": "batch size (x axis of the noise plot)",
        "sd_mean_measured": "sd of the batch mean / population std (median over units), measured",
        "sd_mean_theory": "the same from the closed form sigma / sqrt(B)",
        "sd_std_measured": "sd of the batch std / population std (median over units), measured",
        "sd_std_theory": "the same from the closed form for the variance (delta method: sd(var) / (2 var))",
    },
)
def batch_statistics_noise(rng: np.random.Generator, *, lr_ghost: list[float] = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                           lr_full: float = 0.1, lr_none: float = 0.1, physical_batch: int = 128, epochs: int = 20,
                           draws: int = 400, headline: int = 32,
                           evaluate_on: Literal["test", "validation"] = "test") -> dict:
    """How noisy are batch statistics at small batch sizes, and what does that noise cost?

    Scale: 64-128-128-10 ReLU MLP, BN before the activation, float32, SGD momentum 0.9 with
    mini-batches of `physical_batch` (every arm: same init, same batches, same number of steps:
    `epochs` epochs over the 1,078 training digits). Arms differ ONLY in the examples the BN
    statistics come from: ghost batches of 2 .. 128 (the mini-batch split into consecutive
    groups, Hoffer et al. 2017), the whole training set with the gradient through the
    statistics and the loss on the mini-batch (noise-free control: `MLPConfig.reference_rows`),
    or no normalization. Each arm trains at its own learning rate (`lr_ghost` in the order of
    GHOST_SIZES, `lr_full`, `lr_none`), chosen on the validation split with other seeds;
    evaluation in eval mode (running statistics); a diverged arm scores 0.1 (chance).
    Noise: on the first-layer pre-activations of the trained control, over the training set,
    the sd of batch means and variances over `draws` random batches per size vs closed forms.
    """
    if len(lr_ghost) != len(GHOST_SIZES):
        raise ValueError(f"lr_ghost needs {len(GHOST_SIZES)} rates, one per ghost size {GHOST_SIZES}")
    if headline not in GHOST_SIZES:
        raise ValueError(f"headline must be one of {GHOST_SIZES}")
    split = recorders.digits()
    X_eval, y_eval = (split.X_test, split.y_test) if evaluate_on == "test" else (split.X_val, split.y_val)
    train_seed = int(rng.integers(2**63))
    base = model.MLPConfig(sizes=NOISE_SIZES, norm="batch", dtype="float32")
    arms = [(replace(base, norm="ghost", ghost_batch_size=g), lr) for g, lr in zip(GHOST_SIZES, lr_ghost)]
    arms += [(replace(base, norm="none"), lr_none), (replace(base, reference_rows=len(split.X_train)), lr_full)]
    acc, diverged, stuck = [], 0, 0
    for cfg, lr in arms:
        r = model.train_stack(np.random.default_rng(train_seed), cfg, split.X_train, split.y_train,
                              model.Arm(lr=lr, momentum=0.9), epochs=epochs, batch_size=physical_batch,
                              X_reference=split.X_train if cfg.reference_rows else None)
        params, state = model.arm_params(r.params, 0), model.arm_params(r.state, 0)
        acc.append(0.1 if r.diverged[0] else model.accuracy(params, state, X_eval, y_eval, cfg))
        diverged += int(r.diverged[0])
        stuck += not r.diverged[0] and acc[-1] < 0.2
    *acc_ghost, acc_none, acc_full = acc

    pre = model.activations(params, state, split.X_train, base)["pre0"]       # the noise-free control's
    rows = [sampling_noise(pre, b, draws, rng) for b in GHOST_SIZES]
    sd_m, th_m, sd_v, th_v, sigma2 = rows[GHOST_SIZES.index(headline)]
    live = sigma2 > 1e-8                                          # units that vary at all
    sigma = np.sqrt(sigma2)

    def geomean(a):
        return float(np.exp(np.mean(np.log(a[live]))))

    def medians(k: int, scale) -> np.ndarray:
        """Per batch size: median over live units of the k-th `sampling_noise` output / scale."""
        return np.array([np.median((r[k] / scale)[live]) for r in rows])

    return {
        "sd_mean_ratio": geomean(sd_m / th_m), "sd_var_ratio": geomean(sd_v / th_v),
        "rel_sd_mean": float(np.median((sd_m / sigma)[live])),
        "rel_sd_std": float(np.median((sd_v / (2.0 * sigma2))[live])),
        **{f"acc_ghost{g}": a for g, a in zip(GHOST_SIZES, acc_ghost)}, "acc_full": acc_full, "acc_none": acc_none,
        "diverged_arms": float(diverged), "stuck_arms": float(stuck),
        "ghost_size": np.array(GHOST_SIZES, dtype=float), "acc_by_ghost": np.array(acc_ghost),
        "acc_full_line": np.full(len(GHOST_SIZES), acc_full), "acc_none_line": np.full(len(GHOST_SIZES), acc_none),
        "noise_batch": np.array(GHOST_SIZES, dtype=float),
        "sd_mean_measured": medians(0, sigma), "sd_mean_theory": medians(1, sigma),
        "sd_std_measured": medians(2, 2 * sigma2), "sd_std_theory": medians(3, 2 * sigma2),
    }
