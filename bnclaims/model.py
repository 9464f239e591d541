"""Networks built from `bnclaims.nn` -- an MLP (plain or residual) and a small CNN -- optimizers
and the one training loop.

The model is data, not an object: parameters are a dict of arrays (``W0, b0, gamma0,
beta0, ..., W{L}, b{L}``), running statistics another dict (``running_mean{i},
running_var{i}``), and an `MLPConfig` says how to wire them. Hidden layer ``i`` is::

    norm_position="before":  linear -> norm -> activation
    norm_position="after":   linear -> activation -> norm

and the last layer is a plain linear map to the logits (never normalized). ``residual=True``
adds identity skips around the same layers (pre-activation blocks, see `MLPConfig`).

A `CNNConfig` describes the digits CNN (conv -> norm -> activation per layer, global average
pooling, linear), with the same parameter names and stacking: `forward`, `backward`, `train`,
`train_stack`, the recorders and `population_state` take either config.

`forward` records a tape of ``(backward_fn, cache, param_names)``; `backward` replays it
in reverse -- micrograd's idea at layer granularity.

Randomness: `train` splits its Generator into independent child streams for the
initial weights, the batch order and the layer noise, so two configs that differ
only in normalization get the same weights and the same batches for the same seed
(gamma/beta start at 1/0 and draw nothing).

Stacks: `train_stack` is the one training loop. It trains K networks of one architecture
as one computation (parameters ``(K, ...)``, see `init_stack`; `bnclaims.nn` layers take the
stacked arrays), each arm with its own `Arm` settings: learning rate (or schedule), optimizer
(SGD, momentum, Adam), batch order. Arm k is bit for bit what `train` gives for it alone
(`train` is `train_stack` with one arm). Also here: the one batch-plan builder (`batch_plan`),
the one accuracy rule (`logits_accuracy`: NaN/inf logits count as wrong), the one
learning-rate selection on validation (`select_lr`: ties to the smaller rate), and recorders
for the loop (`ParamTrajectory`, `ProbeMoments`, `GradientNorms`).

Curvature: `hessian_vector_product` gives exact Hessian-vector products of one network's
training-mode loss (the R-operator on `forward`'s tape), and `flatten_params` /
`unflatten_params` turn parameters into the flat vectors that eigensolvers take.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable, Literal, NamedTuple

import numpy as np

from bnclaims import data, nn

Norm = Literal["none", "batch", "layer", "group", "ghost", "renorm", "running", "noisy"]
NORMS = ("none", "batch", "layer", "group", "ghost", "renorm", "running", "noisy")
# Norms that keep running statistics and switch to them in eval mode.
RUNNING_NORMS = ("batch", "ghost", "renorm", "running", "noisy")
ACTIVATIONS = ("relu", "linear", "tanh")
INITS = ("he", "lecun", "scale")

Params = dict[str, np.ndarray]
State = dict[str, np.ndarray]
Tape = list[tuple[Callable, object, tuple[str, ...]]]


@dataclass(frozen=True)
class MLPConfig:
    """Architecture and layer options of an MLP (hashable; use `dataclasses.replace` for arms).

    sizes: layer widths, input first, classes last, e.g. (64, 128, 128, 10).
    norm: normalization after every hidden linear layer ("none" for a plain MLP).
    norm_position: "before" or "after" the activation.
    affine: learnable per-feature gamma/beta after each norm.
    init: weights ~ N(0, std^2) with std = init_scale * sqrt(2/fan_in) ("he"),
        init_scale * sqrt(1/fan_in) ("lecun") or init_scale itself ("scale"); biases 0.
    eps, momentum: batch-norm epsilon and running-statistics momentum (PyTorch convention:
        the weight of the new batch); ghost_batch_size, groups, r_max, d_max,
        grad_through_stats, noise_mean_shift, noise_scale_spread: options of the
        ghost / group / renorm / running / noisy variants (see `bnclaims.nn`).
    dtype: "float32" (fast) or "float64" (gradient checks).
    hidden_bias: False leaves the hidden linear layers without a bias (no ``b{i}`` but the
        output layer's); a bias before a running-average norm is not cancelled by it.
    renorm_warmup: with norm="renorm", (hold, d_full, r_full) as fractions of `train_stack`'s
        steps: r_max = 1, d_max = 0 (batch norm) until hold, then linear to d_max at d_full and
        to r_max at r_full (Ioffe 2017's warm-up; see `renorm_limits`). Empty: fixed limits.
    reference_rows: with norm="batch" and M > 0, training-mode batch norm takes its statistics
        from the first M rows of x only (a reference set forwarded with the batch) and normalizes
        every row with them, gradients flowing through them (`reference_batchnorm_forward`);
        ``train_stack(X_reference=...)`` prepends the M reference rows to every batch and puts the
        loss on the batch rows only. With the whole training set as reference this is batch norm
        without sampling noise that is still a correct optimizer of the mini-batch loss.
    affine_shared: one gamma and one beta per normalized layer instead of one per feature: they
        are stored per feature (all entries equal, starting at 1 and 0) and each entry's gradient
        is the sum over the layer's features (`_tie_affine`), so the entries stay equal and train
        as one scalar pair would. Needs ``affine`` and a norm.
    residual: a pre-activation residual MLP (He et al. 2016, "Identity mappings"): all hidden
        widths equal, at least two hidden layers. The layers are the plain MLP's, in the same
        order (linear 0, then per hidden layer i: norm i -> activation -> linear i+1, or
        activation -> norm with norm_position="after"); only skips are added. The stream is the
        output of the linear maps: linear 0 maps the input to the width, and each linear map
        i = 1 .. L-2 (`residual_layers`) is the end of a block ``h <- h + linear_i(act(norm_{i-1}(h)))``
        -- the skip leaves at the output of linear i-1, before norm i-1, and joins at the output
        of linear i (after its bias), so ``pre{i}`` (what norm i normalizes) is the sum. The last
        block's stream goes through norm L-2 -> activation -> the last linear map to the classes
        (no skip there). Nothing sits on the skip path itself.
    residual_init: "depth" multiplies the initial weights of every block's linear map by
        1/sqrt(blocks) (blocks = hidden layers - 1); "plain" leaves them as ``init`` says. A
        block adds W act(norm(h)) with W independent of h and zero-mean, so it adds its second
        moment to the stream's: with He weights and no norm each block adds (a 1/blocks share of)
        the stream's own, so the stream's second moment grows by at most (1 + 1/blocks)^blocks < e
        over the net instead of 2^blocks; with a norm each block adds about 1/blocks. The factor
        is the same for every norm (the norm sits before the scaled map and does not undo it), so
        BN-vs-none arms start from the same weights.
    """

    sizes: tuple[int, ...] = (64, 128, 128, 10)
    activation: Literal["relu", "linear", "tanh"] = "relu"
    norm: Norm = "none"
    norm_position: Literal["before", "after"] = "before"
    affine: bool = True
    init: Literal["he", "lecun", "scale"] = "he"
    init_scale: float = 1.0
    eps: float = 1e-5
    momentum: float = 0.1
    ghost_batch_size: int = 8
    groups: int = 8
    r_max: float = 3.0
    d_max: float = 5.0
    grad_through_stats: bool = True
    noise_mean_shift: float = 0.5
    noise_scale_spread: float = 1.25
    hidden_bias: bool = True
    renorm_warmup: tuple[float, ...] = ()
    dtype: Literal["float32", "float64"] = "float32"
    reference_rows: int = 0
    affine_shared: bool = False
    residual: bool = False
    residual_init: Literal["depth", "plain"] = "depth"

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        if self.affine_shared and (not self.affine or self.norm == "none"):
            raise ValueError("MLPConfig.affine_shared needs affine=True and a norm other than 'none'")
        if self.reference_rows < 0 or (self.reference_rows and self.norm != "batch"):
            raise ValueError(f"MLPConfig.reference_rows must be 0, or > 0 with norm='batch'; "
                             f"got {self.reference_rows} with norm={self.norm!r}")
        for name, value, allowed in (
            ("activation", self.activation, ACTIVATIONS),
            ("norm", self.norm, NORMS),
            ("norm_position", self.norm_position, ("before", "after")),
            ("init", self.init, INITS),
            ("dtype", self.dtype, ("float32", "float64")),
            ("residual_init", self.residual_init, ("depth", "plain")),
        ):
            if value not in allowed:
                raise ValueError(f"MLPConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
        object.__setattr__(self, "renorm_warmup", tuple(float(f) for f in self.renorm_warmup))
        if self.renorm_warmup and (len(self.renorm_warmup) != 3 or self.norm != "renorm"):
            raise ValueError(f"MLPConfig.renorm_warmup must be empty, or (hold, d_full, r_full) with norm='renorm'; "
                             f"got {self.renorm_warmup} with norm={self.norm!r}")
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"MLPConfig.sizes needs at least input and output widths >= 1; got {self.sizes}")
        if self.norm == "group" and any(w % self.groups for w in self.hidden_sizes):
            raise ValueError(f"groups={self.groups} must divide every hidden width {self.hidden_sizes}")
        if self.residual and (len(self.hidden_sizes) < 2 or len(set(self.hidden_sizes)) != 1):
            raise ValueError(f"MLPConfig.residual needs at least two hidden layers, all of one width; "
                             f"got hidden widths {self.hidden_sizes}")

    @property
    def n_layers(self) -> int:
        """Number of linear layers (hidden layers + the output layer)."""
        return len(self.sizes) - 1

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return self.sizes[1:-1]

    @property
    def residual_layers(self) -> tuple[int, ...]:
        """Indices of the linear maps that end a residual block (1 .. L-2, all but the first and the
        last; none if not residual)."""
        return tuple(range(1, self.n_layers - 1)) if self.residual else ()

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


CNN_NORMS = ("none", "batch", "layer", "group")   # the MLP's ghost/renorm/running/noisy variants: not for the CNN yet


@dataclass(frozen=True)
class CNNConfig:
    """A small convolutional net for 8x8 images, built and trained like the MLP (hashable).

    Rows arrive flat, ``(N, C*H*W)`` -- the digits as 64 columns, as everywhere else -- and are
    reshaped to ``(N, C, H, W)`` = ``image`` inside `forward`. Then, per conv layer i: a
    ``kernel`` x ``kernel`` convolution to ``channels[i]`` channels (padding kernel // 2,
    stride ``strides[i]``) -> norm -> activation; then global average pooling over the positions
    and a linear map to ``classes``. The default: 1x8x8 -> conv 3x3, 16 -> norm -> ReLU ->
    conv 3x3, 32 -> norm -> ReLU -> average pool -> linear 32 -> 10.

    norm: "none"; "batch": spatial batch norm (`bnclaims.nn`; per channel, statistics over
    N x H x W in training, running statistics in eval mode, updated with n = N*H*W);
    "layer": per example over C x H x W; "group": per example over each of ``groups`` groups of
    channels x H x W. Every norm has per-channel gamma/beta (``affine``).

    Parameters have the MLP's names and stacking, so `train_stack`, its optimizers, recorders,
    `population_state`, `evaluate` and the stack helpers apply unchanged: conv kernel i is
    ``W{i}: (C_in*k*k, C_out)`` (the kernel as its im2col matrix, rows ordered (C_in, kh, kw);
    ``(K, C_in*k*k, C_out)`` stacked), ``b{i}``, ``gamma{i}``, ``beta{i}``: ``(C_out,)``; the
    classifier ``W{L}: (channels[-1], classes)``, ``b{L}``; running statistics
    ``running_mean{i}``, ``running_var{i}``: ``(C_out,)``. init: as the MLP's ("he":
    std = init_scale * sqrt(2 / fan_in), fan_in = C_in*k*k for a conv), one standard-normal block
    per layer in order, so every norm gets the same weights from the same Generator.
    eps, momentum: the norm's epsilon and running-statistics momentum (PyTorch convention).
    """

    image: tuple[int, int, int] = (1, 8, 8)
    channels: tuple[int, ...] = (16, 32)
    strides: tuple[int, ...] = (1, 1)
    kernel: int = 3
    classes: int = 10
    activation: Literal["relu", "linear", "tanh"] = "relu"
    norm: Literal["none", "batch", "layer", "group"] = "batch"
    affine: bool = True
    init: Literal["he", "lecun", "scale"] = "he"
    init_scale: float = 1.0
    eps: float = 1e-5
    momentum: float = 0.1
    groups: int = 4
    dtype: Literal["float32", "float64"] = "float32"

    # what the training loop and the helpers ask of an MLPConfig, fixed for the CNN
    reference_rows = 0
    renorm_warmup = ()
    affine_shared = False
    residual = False
    residual_layers = ()
    hidden_bias = True

    def __post_init__(self):
        for name in ("image", "channels", "strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name, value, allowed in (
            ("activation", self.activation, ACTIVATIONS),
            ("norm", self.norm, CNN_NORMS),
            ("init", self.init, INITS),
            ("dtype", self.dtype, ("float32", "float64")),
        ):
            if value not in allowed:
                raise ValueError(f"CNNConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
        if len(self.image) != 3 or min(self.image) < 1:
            raise ValueError(f"CNNConfig.image must be (channels, height, width); got {self.image}")
        if not self.channels or min(self.channels) < 1 or len(self.strides) != len(self.channels):
            raise ValueError(f"CNNConfig needs one stride per conv layer and channels >= 1; "
                             f"got channels {self.channels}, strides {self.strides}")
        if min(self.strides) < 1 or self.kernel < 1 or self.kernel % 2 == 0 or self.classes < 2:
            raise ValueError(f"CNNConfig needs strides >= 1, an odd kernel and >= 2 classes; "
                             f"got strides {self.strides}, kernel {self.kernel}, classes {self.classes}")
        if self.norm == "group" and any(c % self.groups for c in self.channels):
            raise ValueError(f"CNNConfig.groups={self.groups} must divide every conv layer's channels {self.channels}")

    @property
    def n_layers(self) -> int:
        """Number of layers with weights (conv layers + the classifier)."""
        return len(self.channels) + 1

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Channels of each normalized layer (the conv layers)."""
        return self.channels

    @property
    def sizes(self) -> tuple[int, ...]:
        """(input columns, channels of each conv layer, classes), the MLP's ``sizes`` read the same way."""
        return (math.prod(self.image),) + self.channels + (self.classes,)

    @property
    def weight_shapes(self) -> tuple[tuple[int, int], ...]:
        """(fan_in, fan_out) of each ``W{i}``: conv kernels as im2col matrices, then the classifier."""
        fan_in = (self.image[0],) + self.channels[:-1]
        convs = tuple((c_in * self.kernel ** 2, c_out) for c_in, c_out in zip(fan_in, self.channels))
        return convs + ((self.channels[-1], self.classes),)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


# ----------------------------------------------------------------------------- parameters


def init_params(rng: np.random.Generator, config: MLPConfig | CNNConfig) -> Params:
    """Fresh parameters: ``W{i}: (sizes[i], sizes[i+1])``, ``b{i}`` zeros, and for each hidden
    layer with an affine norm ``gamma{i}`` ones, ``beta{i}`` zeros (a `CNNConfig`: its
    ``weight_shapes``, the conv layers as hidden layers).

    Only the weights draw from ``rng`` (one standard-normal block per layer, in order, scaled
    afterwards), so the same ``rng`` state gives the same weights for every norm, placement,
    affine setting, init kind and dtype with the same sizes (and, up to the residual blocks'
    1/sqrt(blocks) factor of ``residual_init="depth"``, with and without ``residual``).
    """
    dtype = config.np_dtype
    params: Params = {}
    cnn = isinstance(config, CNNConfig)
    blocks = config.residual_layers if not cnn and config.residual_init == "depth" else ()
    shapes = config.weight_shapes if cnn else zip(config.sizes[:-1], config.sizes[1:])
    for i, (fan_in, fan_out) in enumerate(shapes):
        z = rng.standard_normal((fan_in, fan_out))
        gain = {"he": math.sqrt(2.0 / fan_in), "lecun": math.sqrt(1.0 / fan_in), "scale": 1.0}[config.init]
        if i in blocks:
            gain /= math.sqrt(len(blocks))
        params[f"W{i}"] = (config.init_scale * gain * z).astype(dtype)
        if config.hidden_bias or i == config.n_layers - 1:
            params[f"b{i}"] = np.zeros(fan_out, dtype)
        if i < config.n_layers - 1 and config.norm != "none" and config.affine:
            params[f"gamma{i}"] = np.ones(fan_out, dtype)
            params[f"beta{i}"] = np.zeros(fan_out, dtype)
    return params


def init_state(config: MLPConfig | CNNConfig) -> State:
    """Running statistics (mean 0, variance 1) for each hidden layer whose norm keeps them."""
    state: State = {}
    if config.norm in RUNNING_NORMS:
        for i, width in enumerate(config.hidden_sizes):
            state[f"running_mean{i}"] = np.zeros(width, config.np_dtype)
            state[f"running_var{i}"] = np.ones(width, config.np_dtype)
    return state


def copy_params(params: Params) -> Params:
    return {name: value.copy() for name, value in params.items()}


def is_weight(name: str) -> bool:
    """True for weight matrices (``W{i}``), the only parameters weight decay touches by default."""
    return name.startswith("W")


# ----------------------------------------------------------------------------- forward / backward


def _tanh_forward(x):
    out = np.tanh(x)
    return out, out


def _tanh_backward(dout, out):
    return dout * (1.0 - out * out)


class _NoTape(list):
    """The tape of a forward pass no backward will follow (``forward(..., tape=False)``): keeps nothing."""

    def append(self, entry) -> None:
        pass


def _activation(h: np.ndarray, config: MLPConfig, tape: Tape) -> np.ndarray:
    if config.activation == "relu" and isinstance(tape, _NoTape):
        h = np.maximum(h, 0)                        # nn.relu_forward's output, without its mask
    elif config.activation == "relu":
        h, cache = nn.relu_forward(h)
        tape.append((nn.relu_backward, cache, ()))
    elif config.activation == "tanh":
        h, cache = _tanh_forward(h)
        tape.append((_tanh_backward, cache, ()))
    return h


def _tie_affine(backward_fn: Callable) -> Callable:
    """A norm's backward whose gamma and beta gradients are summed over the features, every entry
    getting the sum (``MLPConfig.affine_shared``: one gamma, beta pair per layer)."""
    def tied(dout, cache):
        dx, dgamma, dbeta = backward_fn(dout, cache)
        tie = lambda g: np.broadcast_to(g.sum(axis=-1, keepdims=True), g.shape).copy()  # noqa: E731
        return dx, tie(dgamma), tie(dbeta)
    return tied


def _norm(h, i, params, state, new_state, config, train, rng, tape):
    """Normalize hidden layer ``i``; append to the tape; put updated running stats in new_state."""
    if config.affine_shared:
        start = len(tape)
        out = _norm(h, i, params, state, new_state, replace(config, affine_shared=False), train, rng, tape)
        backward_fn, cache, names = tape[start]
        tape[start] = (_tie_affine(backward_fn), cache, names)
        return out
    kind = config.norm
    if kind == "none":
        return h
    gamma, beta = params.get(f"gamma{i}"), params.get(f"beta{i}")
    names = (f"gamma{i}", f"beta{i}") if config.affine else (None, None)
    eps = config.eps
    mean_key, var_key = f"running_mean{i}", f"running_var{i}"
    if kind == "layer":
        out, cache = nn.layernorm_forward(h, gamma, beta, eps)
        tape.append((nn.layernorm_backward, cache, names))
        return out
    if kind == "group":
        out, cache = nn.groupnorm_forward(h, gamma, beta, config.groups, eps)
        tape.append((nn.groupnorm_backward, cache, names))
        return out
    running_mean, running_var = state[mean_key], state[var_key]
    if not train:
        out, cache = nn.batchnorm_eval_forward(h, running_mean, running_var, gamma, beta, eps,
                                               cache=not isinstance(tape, _NoTape))
        tape.append((nn.batchnorm_eval_backward, cache, names))
        return out
    n = h.shape[-2]
    if kind == "batch" and config.reference_rows:
        out, cache = reference_batchnorm_forward(h, gamma, beta, config.reference_rows, eps)
        backward = reference_batchnorm_backward
        n = config.reference_rows
    elif kind == "batch":
        out, cache = nn.batchnorm_forward(h, gamma, beta, eps)
        backward = nn.batchnorm_backward
    elif kind == "ghost":
        out, cache = nn.ghost_batchnorm_forward(h, gamma, beta, config.ghost_batch_size, eps)
        backward = nn.ghost_batchnorm_backward
        n = config.ghost_batch_size  # the variance was estimated from ghost batches of this size
    elif kind == "renorm":
        out, cache = nn.batchrenorm_forward(h, gamma, beta, running_mean, running_var, config.r_max, config.d_max, eps)
        backward = nn.batchrenorm_backward
    elif kind == "running":
        out, cache = nn.running_batchnorm_forward(
            h, gamma, beta, running_mean, running_var, config.momentum, config.grad_through_stats, eps
        )
        tape.append((nn.running_batchnorm_backward, cache, names))
        new_state[mean_key], new_state[var_key] = nn.running_stats(cache)
        return out
    else:  # noisy
        if rng is None:
            raise ValueError("norm='noisy' needs an rng for its noise in training mode")
        noise_scale, noise_shift = _covariate_noise(rng, h, config)
        out, cache = nn.noisy_batchnorm_forward(h, gamma, beta, noise_scale, noise_shift, eps)
        backward = nn.noisy_batchnorm_backward
    tape.append((backward, cache, names))
    batch_mean, batch_var = nn.batch_stats(cache)
    new_state[mean_key], new_state[var_key] = nn.update_running_stats(
        running_mean, running_var, batch_mean, batch_var, n, config.momentum
    )
    return out


class ReferenceBatchNormCache(NamedTuple):
    xhat: np.ndarray              # (..., N, D) every row normalized with the reference statistics
    inv_std: np.ndarray           # (D,) or (..., 1, D)
    gamma: np.ndarray | None
    rows: int                     # M: the first M rows gave the statistics
    batch_mean: np.ndarray        # (D,) or (..., 1, D): the reference rows' mean
    batch_var: np.ndarray         # their biased variance


def reference_batchnorm_forward(x, gamma, beta, rows: int, eps: float = 1e-5):
    """Batch norm whose statistics are those of the first ``rows`` rows of x, applied to every row.

    out = gamma * (x - mean_M) / sqrt(var_M + eps) + beta, (mean_M, var_M) the mean and biased
    variance of x[..., :rows, :]; gradients flow through them into those rows. x: (N, D) or a
    stack (..., N, D); gamma, beta as in `nn.batchnorm_forward` (or both None). With rows = N it
    is `nn.batchnorm_forward`.
    """
    x = np.asarray(x)
    if not 2 <= rows <= x.shape[-2]:
        raise ValueError(f"reference batch norm needs 2 <= rows <= N = {x.shape[-2]}; got rows={rows}")
    mean = x[..., :rows, :].mean(axis=-2, keepdims=True)
    xhat = x - mean
    var = np.square(xhat[..., :rows, :]).mean(axis=-2, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat *= inv_std
    out = xhat if gamma is None else xhat * gamma + beta
    squeeze = (lambda v: v[0]) if x.ndim == 2 else (lambda v: v)  # noqa: E731  statistics shape
    return out, ReferenceBatchNormCache(xhat, squeeze(inv_std), gamma, rows, squeeze(mean), squeeze(var))


def reference_batchnorm_backward(dout, cache: ReferenceBatchNormCache):
    """dout (..., N, D) -> dx, dgamma, dbeta (None when affine off) of `reference_batchnorm_forward`."""
    xhat, inv_std, gamma, m, _, _ = cache
    dout = np.asarray(dout, dtype=xhat.dtype)
    sum_dout = dout.sum(axis=-2)
    sum_dout_xhat = np.multiply(dout, xhat).sum(axis=-2)
    if xhat.ndim > 2:                                 # statistics shape (..., 1, D)
        sum_dout, sum_dout_xhat = sum_dout[..., None, :], sum_dout_xhat[..., None, :]
    scale = inv_std if gamma is None else gamma * inv_std
    dx = dout * scale                                 # every row through its own x_hat
    dx[..., :m, :] -= (sum_dout + xhat[..., :m, :] * sum_dout_xhat) * (scale / m)   # through mean_M, var_M
    if gamma is None:
        return dx, None, None
    return dx, nn._grad_like(sum_dout_xhat, gamma), nn._grad_like(sum_dout, gamma)   # a shared (D,) gamma: summed


def _covariate_noise(rng, h: np.ndarray, config: MLPConfig):
    """Noise for the noisy norm: one draw from ``rng`` for an (N, D) h; for a stack (K, N, D),
    ``rng`` is a sequence of K Generators and arm k draws from the k-th (as it would alone).
    A callable ``rng`` (see ``train_stack(noise=...)``) is asked instead: ``rng(h) -> (scale, shift)``."""
    if callable(rng):
        return rng(h)
    n, d = h.shape[-2:]
    if h.ndim == 2:
        return nn.sample_covariate_noise(rng, n, d, config.noise_mean_shift, config.noise_scale_spread, h.dtype)
    draws = [nn.sample_covariate_noise(r, n, d, config.noise_mean_shift, config.noise_scale_spread, h.dtype)
             for r in rng]
    return np.stack([scale for scale, _ in draws]), np.stack([shift for _, shift in draws])


class _ResidualJoin:
    """Where a residual block's skip and branch meet on the tape: the gradient of the sum, kept
    by the join's backward (reached first) for the fork's backward (reached after the branch)."""
    __slots__ = ("dout",)


def _residual_join_backward(dout, join: _ResidualJoin):
    join.dout = dout            # d(skip + branch) reaches the skip unchanged ...
    return dout                 # ... and the branch


def _residual_fork_backward(dout, join: _ResidualJoin):
    dskip = join.dout
    del join.dout               # the tape can be replayed again
    return dout + dskip         # the block input's gradient: through the branch plus through the skip


def forward(
    params: Params,
    state: State,
    x: np.ndarray,
    config: MLPConfig,
    train: bool = True,
    rng: np.random.Generator | None = None,
    record: dict | None = None,
    tape: bool = True,
) -> tuple[np.ndarray, Tape | None, State]:
    """Logits of the MLP for a batch.

    x: (N, sizes[0]), cast to ``config.dtype``. ``train=True`` normalizes with batch
    statistics and returns updated running statistics; ``train=False`` uses the running
    statistics (layer/group norm behave the same in both modes). ``rng`` is needed only
    by the noisy norm in training. Nothing passed in is modified.

    When ``record`` is a dict it is filled, per hidden layer ``i``, with ``pre{i}`` (the
    input of the norm), ``norm{i}`` (its output) and ``act{i}`` (the activation output),
    each (N, sizes[i+1]); with norm="none", ``norm{i}`` is ``pre{i}``; in a residual net
    ``pre{i}`` is the stream (see ``MLPConfig.residual``). Also ``logits``.
    The arrays are the forward's own (no copies): do not modify them.

    Returns ``(logits (N, sizes[-1]), caches, new_state)``; ``caches`` is the tape for `backward`.
    ``tape=False`` (evaluation: no backward follows): caches is None, and nothing is kept for it
    (the same logits, fewer temporaries).

    A `CNNConfig` runs the CNN (x flat rows (N, C*H*W); its records are described there).

    Stacks (see `init_stack`): parameters ``W{i}: (K, fan_in, fan_out)``, ``b{i}``, ``gamma{i}``,
    ``beta{i}`` and running statistics ``(K, 1, width)``, x ``(K, N, sizes[0])`` (or ``(N, sizes[0])``,
    shared by the arms), ``rng`` a sequence of K Generators (noisy norm): the same code computes K
    independent networks, arm k bit for bit as it would alone; logits are ``(K, N, classes)``.
    """
    if isinstance(config, CNNConfig):
        logits, caches, new_state = _cnn_forward(params, state, x, config, train, record)
        return logits, caches if tape else None, new_state
    h = np.asarray(x, dtype=config.np_dtype)
    stack = params["W0"].shape[:-2]
    if stack and h.shape[:-2] != stack:
        h = np.broadcast_to(h, stack + h.shape[-2:])  # one input batch for every arm (no copy)
    keep = tape
    tape: Tape = [] if keep else _NoTape()
    new_state = dict(state)
    last = config.n_layers - 1
    blocks = config.residual_layers
    for i in range(config.n_layers):
        b = params.get(f"b{i}")
        h, cache = nn.linear_forward(h, params[f"W{i}"], b)
        tape.append((nn.linear_backward, cache, (f"W{i}", None if b is None else f"b{i}")))
        if i in blocks:   # the block ends: its branch's output joins the stream
            h = skip + h
            tape.append((_residual_join_backward, join, ()))
        if i == last:
            break
        if i + 1 in blocks:   # a block starts: the skip leaves before norm i
            skip, join = h, _ResidualJoin()
            tape.append((_residual_fork_backward, join, ()))
        if config.norm_position == "before":
            pre = h
            h = normed = _norm(h, i, params, state, new_state, config, train, rng, tape)
            h = _activation(h, config, tape)
            act = h
        else:
            h = act = pre = _activation(h, config, tape)
            h = normed = _norm(h, i, params, state, new_state, config, train, rng, tape)
        if record is not None:
            record[f"pre{i}"], record[f"norm{i}"], record[f"act{i}"] = pre, normed, act
    if record is not None:
        record["logits"] = h
    return h, tape if keep else None, new_state


def backward(dlogits: np.ndarray, caches: Tape, config: MLPConfig | None = None) -> Params:
    """Gradients of the loss for every parameter, from dL/dlogits (N, classes) and the tape.

    Returns a dict with the same keys as the parameters. (``config`` is accepted for
    symmetry with `forward`; the tape already knows every layer.)
    """
    grads: Params = {}
    dout = dlogits
    for position in range(len(caches) - 1, -1, -1):
        backward_fn, cache, names = caches[position]
        if not names:
            dout = backward_fn(dout, cache)
            continue
        if position == 0 and backward_fn is nn.linear_backward:   # the input's gradient is never used
            dout, *param_grads = nn.linear_backward(dout, cache, input_grad=False)
        else:
            dout, *param_grads = backward_fn(dout, cache)
        for name, grad in zip(names, param_grads):
            if name is not None:
                grads[name] = grad
    return grads


def loss_and_grads(
    params: Params,
    state: State,
    x: np.ndarray,
    y: np.ndarray,
    config: MLPConfig,
    rng: np.random.Generator | None = None,
    record: dict | None = None,
) -> tuple[float, Params, State, np.ndarray]:
    """Training-mode mean softmax cross-entropy on (x, y) and its gradients.

    Returns ``(loss, grads, new_state, logits)``.
    """
    logits, tape, new_state = forward(params, state, x, config, True, rng, record)
    loss, dlogits = nn.softmax_cross_entropy(logits, y)
    return loss, backward(dlogits, tape), new_state, logits


# ----------------------------------------------------------------------------- the CNN's wiring (layers from nn)


def _channel_rows(h: np.ndarray) -> np.ndarray:
    """(..., N, C, H, W) -> channels-last rows (..., N*H*W, C) (a copy): per-channel moments over
    examples x positions are then the per-feature moments of the MLP's records."""
    n, c, height, width = h.shape[-4:]
    return np.moveaxis(h, -3, -1).reshape(h.shape[:-4] + (n * height * width, c))


def _reshape_backward(dout, shape):
    return dout.reshape(shape)


def _conv_kernel(W: np.ndarray, c_in: int, k: int) -> np.ndarray:
    """A conv kernel stored as its im2col matrix (..., C_in*k*k, C_out) in nn's (..., C_out, C_in, k, k)."""
    return np.swapaxes(W, -1, -2).reshape(W.shape[:-2] + (W.shape[-1], c_in, k, k))


def _conv_backward(dout, cache):
    """nn.conv2d_backward with the kernel's gradient back in the stored (..., C_in*k*k, C_out) layout."""
    dx, dW, db = nn.conv2d_backward(dout, cache)
    return dx, np.swapaxes(dW.reshape(dW.shape[:-3] + (-1,)), -1, -2), db


def _per_position(p: np.ndarray | None, positions: int) -> np.ndarray | None:
    """A per-channel parameter (C,) / (..., 1, C) as the per-feature one of the flattened
    (C*H*W) image: each channel's entry repeated over its positions."""
    return None if p is None else np.repeat(p, positions, axis=-1)


def _per_channel_affine(backward_fn: Callable, shape: tuple, positions: int) -> Callable:
    """The backward of a norm applied to flattened images (..., N, C*H*W) with `_per_position`
    gamma/beta: dx back to (..., N, C, H, W) and each channel's gradient summed over its positions."""
    def tied(dout, cache):
        dx, dgamma, dbeta = backward_fn(dout.reshape(shape[:-3] + (-1,)), cache)
        if dgamma is None:
            return dx.reshape(shape), None, None
        fold = lambda g: g.reshape(g.shape[:-1] + (-1, positions)).sum(axis=-1)  # noqa: E731
        return dx.reshape(shape), fold(dgamma), fold(dbeta)
    return tied


def _cnn_norm(h, i, params, state, new_state, config: CNNConfig, train, tape):
    """Normalize conv layer i's output h (..., N, C, H, W); append to the tape; running stats into new_state."""
    kind = config.norm
    if kind == "none":
        return h
    gamma, beta = params.get(f"gamma{i}"), params.get(f"beta{i}")
    names = (f"gamma{i}", f"beta{i}") if config.affine else (None, None)
    if kind == "batch":
        mean_key, var_key = f"running_mean{i}", f"running_var{i}"
        if not train:
            out, cache = nn.spatial_batchnorm_eval_forward(h, state[mean_key], state[var_key], gamma, beta, config.eps)
            tape.append((nn.spatial_batchnorm_eval_backward, cache, names))
            return out
        out, cache = nn.spatial_batchnorm_forward(h, gamma, beta, config.eps)
        tape.append((nn.spatial_batchnorm_backward, cache, names))
        batch_mean, batch_var = nn.batch_stats(cache)
        n = h.shape[-4] * h.shape[-2] * h.shape[-1]          # the variance was estimated from N*H*W values
        new_state[mean_key], new_state[var_key] = nn.update_running_stats(
            state[mean_key], state[var_key], batch_mean, batch_var, n, config.momentum)
        return out
    # layer / group norm: nn's per-example kernels on the flattened images (C*H*W features, grouped
    # channel by channel), with per-channel gamma/beta repeated over the positions
    positions = h.shape[-2] * h.shape[-1]
    flat = h.reshape(h.shape[:-3] + (-1,))
    g, b = _per_position(gamma, positions), _per_position(beta, positions)
    if kind == "layer":
        out, cache = nn.layernorm_forward(flat, g, b, config.eps)
        backward_fn = nn.layernorm_backward
    else:
        out, cache = nn.groupnorm_forward(flat, g, b, config.groups, config.eps)
        backward_fn = nn.groupnorm_backward
    tape.append((_per_channel_affine(backward_fn, h.shape, positions), cache, names))
    return out.reshape(h.shape)


def _cnn_forward(params, state, x, config: CNNConfig, train, record):
    """`forward` for a `CNNConfig` (same contract; x flat rows (..., N, C*H*W))."""
    h = np.asarray(x, dtype=config.np_dtype)
    if h.ndim < 2 or h.shape[-1] != math.prod(config.image):
        raise ValueError(f"the CNN takes flat rows (N, {math.prod(config.image)}) of {config.image} images; "
                         f"got shape {h.shape}")
    stack = params["W0"].shape[:-2]
    if stack and h.shape[:-2] != stack:
        h = np.broadcast_to(h, stack + h.shape[-2:])  # one input batch for every arm
    tape: Tape = [(_reshape_backward, h.shape, ())]
    h = h.reshape(h.shape[:-1] + config.image)        # (..., N, C, H, W)
    new_state = dict(state)
    c_in = config.image[0]
    for i, (c_out, stride) in enumerate(zip(config.channels, config.strides)):
        h, cache = nn.conv2d_forward(h, _conv_kernel(params[f"W{i}"], c_in, config.kernel), params.get(f"b{i}"),
                                     stride, config.kernel // 2)
        tape.append((_conv_backward, cache, (f"W{i}", f"b{i}")))
        pre = h
        h = normed = _cnn_norm(h, i, params, state, new_state, config, train, tape)
        h = _activation(h, config, tape)
        if record is not None:
            record[f"pre{i}"], record[f"act{i}"] = _channel_rows(pre), _channel_rows(h)
            record[f"norm{i}"] = record[f"pre{i}"] if normed is pre else _channel_rows(normed)
        c_in = c_out
    h, cache = nn.global_avg_pool_forward(h)         # (..., N, C)
    tape.append((nn.global_avg_pool_backward, cache, ()))
    if record is not None:
        record["pool"] = h
    last = config.n_layers - 1
    h, cache = nn.linear_forward(h, params[f"W{last}"], params[f"b{last}"])
    tape.append((nn.linear_backward, cache, (f"W{last}", f"b{last}")))
    if record is not None:
        record["logits"] = h
    return h, tape, new_state


# ----------------------------------------------------------------------------- Hessian-vector products

# Where flat vectors list each kind of parameter: all weights, then biases, then gammas, then betas.
_FLAT_KINDS = ("W", "b", "gamma", "beta")


def _flat_order(params: Params) -> list[str]:
    """Parameter names in flat-vector order: by kind (`_FLAT_KINDS`), then by layer."""
    def key(name: str):
        kind = name.rstrip("0123456789")
        return _FLAT_KINDS.index(kind), int(name[len(kind):])
    return sorted(params, key=key)


def flatten_params(params: Params) -> np.ndarray:
    """All parameters of one network (or its gradients, or a direction) as one flat vector (P,).

    The order does not depend on the dict's order: every ``W{i}``, then every ``b{i}``, then the
    ``gamma{i}``, then the ``beta{i}``, each by layer.
    """
    return np.concatenate([params[name].ravel() for name in _flat_order(params)])


def unflatten_params(flat: np.ndarray, like: Params) -> Params:
    """The inverse of `flatten_params`: ``flat`` (P,) cut into arrays shaped like ``like`` (views)."""
    size = sum(value.size for value in like.values())
    if flat.shape != (size,):
        raise ValueError(f"flat vector has shape {flat.shape}; the parameters have {size} entries")
    out: Params = {}
    position = 0
    for name in _flat_order(like):
        out[name] = flat[position:position + like[name].size].reshape(like[name].shape)
        position += like[name].size
    return out


class _BatchNormPoint(NamedTuple):
    """What the tangents of one training-mode batch-norm layer need, at the linearization point."""
    xhat: np.ndarray          # (N, D) normalized input
    jacobian: object          # a no-affine batch-norm cache: its backward applies J (see below)
    inv_std: np.ndarray       # (D,) s = 1 / sqrt(var + eps)
    gamma: np.ndarray | None  # (D,) or None (affine off)
    names: tuple              # (gamma name, beta name) or (None, None)
    dout: np.ndarray          # (N, D) dL/d(output)
    dxhat: np.ndarray         # (N, D) dL/dx_hat = gamma * dout
    dxhat_xhat: np.ndarray    # (D,) mean over the batch of dxhat * x_hat
    dx: np.ndarray            # (N, D) dL/d(input) = J dxhat


def _batchnorm_tangent(point: _BatchNormPoint, tangent_x: np.ndarray, direction: Params):
    """R x_hat and R(output) of batch norm along a direction, from the input's tangent R x (N, D).

    x_hat = (x - mean_B) s has the symmetric Jacobian J v = s (v - mean(v) - x_hat mean(x_hat v)),
    which is what `nn.batchnorm_backward` applies without affine parameters.
    """
    tangent_xhat = nn.batchnorm_backward(tangent_x, point.jacobian)[0]
    if point.gamma is None:
        return tangent_xhat, tangent_xhat
    gamma_name, beta_name = point.names
    return tangent_xhat, point.gamma * tangent_xhat + direction[gamma_name] * point.xhat + direction[beta_name]


def _batchnorm_tangent_backward(point: _BatchNormPoint, tangent_x, tangent_xhat, direction: Params):
    """The R-derivative of batch norm's backward pass, less the part that `nn.batchnorm_backward`
    applied to R(dout) gives. Returns the extra (R dx (N, D), R dgamma (D,) or None).

    dx = J (gamma dout): along the direction gamma dout also changes by V_gamma dout, and J changes
    through s and x_hat (R s = -s^2 mean(x_hat R x), R x_hat = J R x); dgamma = sum(dout x_hat)
    changes by sum(dout R x_hat).
    """
    s = point.inv_std
    extra = (-s * np.mean(point.xhat * tangent_x, axis=0)) * point.dx                      # R s * dx / s
    extra -= s * (tangent_xhat * point.dxhat_xhat + point.xhat * np.mean(point.dxhat * tangent_xhat, axis=0))
    if point.gamma is None:
        return extra, None
    extra += nn.batchnorm_backward(direction[point.names[0]] * point.dout, point.jacobian)[0]   # J (V_gamma dout)
    return extra, np.sum(point.dout * tangent_xhat, axis=0)


def hessian_vector_product(params: Params, x: np.ndarray, y: np.ndarray, config: MLPConfig) -> Callable[[Params], Params]:
    """Exact Hessian-vector products of the training-mode loss of one network on (x, y).

    Returns ``hvp(direction) -> H @ direction`` (both dicts shaped like ``params``), with H the
    Hessian of the mean softmax cross-entropy of `forward` (``train=True``: batch statistics of
    x) with respect to the parameters. The forward and backward pass at ``params`` are made once;
    each call then costs about one forward and one backward pass.

    Pearlmutter's R-operator (forward-over-reverse, 1994) on the model's own tape: along the
    direction V, the tangent of every layer's output in forward order; then, in reverse, each
    layer's own backward function applied to the tangent of the gradient, plus the terms from
    the tangents of its cache (its input, its weights). Batch norm includes every Jacobian term
    of the batch mean and variance. ReLU is piecewise linear, so the product is exact wherever no
    pre-activation is exactly 0 (finite differences through the kinks are not).

    Supports a single (unstacked) network with norm "none" or "batch" (before or after the
    activation, affine or not) and relu or linear activations; use float64.
    """
    if isinstance(config, CNNConfig):
        raise ValueError("hessian_vector_product supports the MLP (MLPConfig), not the CNN")
    if (config.norm not in ("none", "batch") or config.activation == "tanh" or config.reference_rows
            or config.affine_shared or config.residual):
        raise ValueError("hessian_vector_product supports norm 'none' or 'batch' with relu or linear activations "
                         f"(no reference rows, no shared affine, no residual blocks); got norm={config.norm!r}, "
                         f"activation={config.activation!r}, residual={config.residual}")
    if params["W0"].ndim != 2:
        raise ValueError("hessian_vector_product takes one network, not a stack")
    record: dict = {}
    logits, tape, _ = forward(params, init_state(config), x, config, True, record=record)
    _, dlogits = nn.softmax_cross_entropy(logits, y)
    n = len(y)
    probs = dlogits * n                                  # the gradient is (softmax - onehot) / n
    probs[np.arange(n), y] += 1.0
    # the gradient reaching each layer's output (grad_out[p]; its input's is grad_out[p - 1])
    grad_out = [dlogits] * len(tape)
    for position in range(len(tape) - 1, 0, -1):
        backward_fn, cache, names = tape[position]
        dx = backward_fn(grad_out[position], cache)
        grad_out[position - 1] = dx[0] if names else dx
    norms: dict[int, _BatchNormPoint] = {}
    for position, (backward_fn, _, names) in enumerate(tape):
        if backward_fn is nn.batchnorm_backward:
            xhat, jacobian = nn.batchnorm_forward(record[f"pre{len(norms)}"], None, None, config.eps)
            gamma = params[names[0]] if names[0] else None
            dout = grad_out[position]
            dxhat = dout if gamma is None else dout * gamma
            norms[position] = _BatchNormPoint(
                xhat, jacobian, 1.0 / np.sqrt(nn.batch_stats(jacobian)[1] + config.eps), gamma, names, dout, dxhat,
                np.mean(dxhat * xhat, axis=0), grad_out[position - 1])

    def hvp(direction: Params) -> Params:
        # R forward: the tangent of each layer's input (kept for the backward) and output
        tangent_in: list = []
        tangent = None                                   # the data: no tangent
        for position, (backward_fn, cache, names) in enumerate(tape):
            tangent_in.append(tangent)
            if backward_fn is nn.linear_backward:        # R(x W + b) = R x W + x V_W + V_b
                out, _ = nn.linear_forward(cache.x, direction[names[0]], direction[names[1]] if names[1] else None)
                if tangent is not None:
                    out += tangent @ cache.W
                tangent = out
            elif backward_fn is nn.relu_backward:
                tangent = nn.relu_backward(tangent, cache)   # ReLU's Jacobian is its mask
            else:
                tangent_in[-1] = (tangent, *_batchnorm_tangent(norms[position], tangent, direction))
                tangent = tangent_in[-1][2]
        # R of the softmax cross-entropy gradient (p - onehot) / n
        dp = probs * tangent
        tangent_dout = (dp - probs * dp.sum(axis=1, keepdims=True)) / n
        # R backward: each layer's backward on the tangent of its gradient, plus its cache's tangent terms
        out: Params = {}
        for position in range(len(tape) - 1, -1, -1):
            backward_fn, cache, names = tape[position]
            if backward_fn is nn.relu_backward:
                tangent_dout = backward_fn(tangent_dout, cache)
                continue
            tangent_dx, *grads = backward_fn(tangent_dout, cache)
            if backward_fn is nn.linear_backward:
                if tangent_in[position] is not None:     # d(dout W^T) = dout V_W^T, d(x^T dout) = (R x)^T dout
                    extra_dx, extra_dW, _ = nn.linear_backward(
                        grad_out[position], nn.LinearCache(tangent_in[position], direction[names[0]], None))
                    tangent_dx += extra_dx
                    grads[0] = grads[0] + extra_dW
            else:
                tangent_x, tangent_xhat, _ = tangent_in[position]
                extra_dx, extra_dgamma = _batchnorm_tangent_backward(norms[position], tangent_x, tangent_xhat, direction)
                tangent_dx += extra_dx
                if extra_dgamma is not None:
                    grads[0] = grads[0] + extra_dgamma
            for name, grad in zip(names, grads):
                if name is not None:
                    out[name] = grad
            tangent_dout = tangent_dx
        return out

    return hvp


def predict(params: Params, state: State, X: np.ndarray, config: MLPConfig, train: bool = False) -> np.ndarray:
    """Predicted classes (N,) int64; eval mode (running statistics) unless ``train``."""
    logits, _, _ = forward(params, state, X, config, train)
    return logits.argmax(axis=1)


def evaluate(
    params: Params, state: State, X: np.ndarray, y: np.ndarray, config: MLPConfig, train: bool = False
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on (X, y); eval mode unless ``train`` (then the
    statistics of all of X; noisy norm is not supported there)."""
    logits, _, _ = forward(params, state, X, config, train)
    loss, _ = nn.softmax_cross_entropy(logits, y)
    return loss, float(np.mean(logits.argmax(axis=1) == y))


def accuracy(params: Params, state: State, X: np.ndarray, y: np.ndarray, config: MLPConfig, train: bool = False) -> float:
    """Fraction of (X, y) classified correctly; eval mode unless ``train``."""
    return float(np.mean(predict(params, state, X, config, train) == np.asarray(y)))


def population_state(params: Params, X: np.ndarray, config: MLPConfig) -> State:
    """Running statistics set to the population statistics of X ("precise batch norm").

    Per hidden layer, the mean and biased variance over all rows of X of the norm's input, layer
    by layer in training mode with plain batch statistics of X (each layer normalized with them):
    eval mode (`forward` with ``train=False``) with this state computes what training-mode batch
    norm computes on the whole of X. Stacked params give stacked state ``(K, 1, width)``. Empty
    for norms without running statistics. A CNN: per channel, over the examples and positions.
    """
    if config.norm not in RUNNING_NORMS:
        return {}
    if isinstance(config, CNNConfig):
        stats_config = replace(config, norm="batch")
    else:
        stats_config = replace(config, norm="batch", reference_rows=0, renorm_warmup=())
    stack = params["W0"].ndim == 3
    start = init_stack_state(stats_config, len(params["W0"])) if stack else init_state(stats_config)
    record: dict[str, np.ndarray] = {}
    forward(params, start, X, stats_config, True, record=record)
    state: State = {}
    for i in range(len(config.hidden_sizes)):
        pre = record[f"pre{i}"].astype(np.float64)
        mean = pre.mean(axis=-2, keepdims=True)
        var = np.square(pre - mean).mean(axis=-2, keepdims=True)
        if not stack:
            mean, var = mean[0], var[0]
        state[f"running_mean{i}"], state[f"running_var{i}"] = mean.astype(config.np_dtype), var.astype(config.np_dtype)
    return state


def activations(
    params: Params, state: State, X: np.ndarray, config: MLPConfig, train: bool = False
) -> dict[str, np.ndarray]:
    """Per-layer ``pre{i}``, ``norm{i}``, ``act{i}`` and ``logits`` on a (fixed probe) set X."""
    record: dict[str, np.ndarray] = {}
    forward(params, state, X, config, train, record=record)
    return record


# ----------------------------------------------------------------------------- optimizer


class SGD:
    """Stochastic gradient descent with momentum and L2 weight decay (PyTorch semantics)::

        g = grad + weight_decay * p        (only where decay(name), by default weights W{i})
        v = momentum * v + g               (v starts at 0, so the first v is g)
        p = p - lr * (g + momentum * v)    if nesterov else   p - lr * v

    By default weight decay spares gamma/beta and biases (``decay=is_weight``); pass
    ``decay=lambda name: True`` to decay everything.

    `step` updates the arrays of ``params`` IN PLACE (and returns the same dict): pass
    arrays you own (`train` works on its own copies). The velocity lives in the optimizer.
    ``lr`` may be changed between steps (schedules).
    """

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        decay: Callable[[str], bool] = is_weight,
    ):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.decay = decay
        self.velocity: Params = {}

    def step(self, params: Params, grads: Params) -> Params:
        for name, grad in grads.items():
            _sgd_update(params[name], grad, self.lr, self.momentum or None,
                        self.weight_decay if self.weight_decay and self.decay(name) else None,
                        bool(self.nesterov), self.velocity, name)
        return params


def _sgd_update(p, grad, lr, momentum, weight_decay, nesterov, velocity: dict, key) -> None:
    """The one SGD / heavy-ball momentum update (PyTorch semantics), IN PLACE on ``p``.

    g = grad + weight_decay * p; v = momentum * v + g (``velocity[key]``, starting at g);
    p -= lr * (g + momentum * v if nesterov else v). ``momentum`` / ``weight_decay`` None: that
    term is off (plain p -= lr * g). Scalars for one network; per-arm columns (K, 1, 1) for a
    stack, with ``nesterov`` True, False or a (K, 1, 1) bool mask.
    """
    if weight_decay is not None:
        grad = grad + weight_decay * p
    if momentum is not None:
        v = velocity.get(key)
        if v is None:
            v = velocity[key] = grad.copy()
        else:
            v *= momentum
            v += grad
        if nesterov is True:
            grad = grad + momentum * v
        elif nesterov is False:
            grad = v
        else:
            grad = np.where(nesterov, grad + momentum * v, v)
    p -= lr * grad


# ----------------------------------------------------------------------------- training


def _moments64(value: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, biased variance) over ``axis`` in float64: bit for bit ``v.mean(axis), v.var(axis)`` of
    ``v = value.astype(np.float64)``, with the column sums taken once (the recorders' hot path)."""
    v = value.astype(np.float64)
    n = v.shape[axis]
    mean = np.add.reduce(v, axis=axis, keepdims=True)
    mean /= n
    v -= mean                                       # our own copy: centred in place
    np.multiply(v, v, out=v)
    var = np.add.reduce(v, axis=axis)
    var /= n
    return np.squeeze(mean, axis), var


class StepInfo:
    """What a ``record(step, info)`` hook sees after one SGD step.

    Plain attributes: ``step`` (0-based index of the update just made), ``epoch``, ``lr``,
    ``loss`` (batch loss before the update), ``logits`` (N, classes), ``y`` (N,),
    ``x`` (the batch), ``params`` (after the update), ``grads`` (the gradients used),
    ``state`` (running statistics after the step), ``activations`` (per-layer ``pre{i}``,
    ``norm{i}``, ``act{i}`` of this batch, see `forward`).
    Computed on first access: ``batch_accuracy``, ``moments``, ``deltas``.

    Valid only during the call: the arrays are updated in place afterwards, so copy
    what you keep (e.g. ``info.params["gamma0"].copy()``).
    """

    def __init__(self, step, epoch, lr, loss, x, y, logits, params, params_before, grads, state, activations):
        self.step, self.epoch, self.lr, self.loss = step, epoch, lr, loss
        self.x, self.y, self.logits = x, y, logits
        self.params, self.grads, self.state, self.activations = params, grads, state, activations
        self._params_before = params_before

    @cached_property
    def batch_accuracy(self) -> float:
        return float(np.mean(self.logits.argmax(axis=1) == self.y))

    @cached_property
    def moments(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per recorded array (``pre0``, ``norm0``, ``act0``, ...): per-feature batch
        (mean, biased variance), each (width,) float64."""
        out = {}
        for name, value in self.activations.items():
            if name != "logits":
                out[name] = _moments64(value, 0)
        return out

    @cached_property
    def deltas(self) -> Params:
        """params after the step minus params before it."""
        return {name: self.params[name] - before for name, before in self._params_before.items()}


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train`.

    losses: batch loss per step taken (float64); if ``diverged`` the last one is NaN/inf
        (or above ``max_loss``) and that step made no update.
    diverged: a loss became NaN or inf (or exceeded ``max_loss``); training stopped there.
    stuck: finite, but no better than chance: the mean loss over the last 10 % of steps
        is at least 95 % of ``chance_loss`` (the loss of always predicting the training
        class frequencies) -- e.g. dead ReLUs or a too-small learning rate.
    stopped: the record hook asked to stop (returned True).
    eval_steps / eval_loss / eval_accuracy: eval-mode metrics on (X_eval, y_eval) after
        that many updates (0 = at initialisation), every ``eval_every`` steps and at the end.
    seconds: wall-clock time of the loop (not deterministic; keep it out of verdicts).
    """

    params: Params
    state: State
    config: MLPConfig
    losses: np.ndarray
    diverged: bool
    stuck: bool
    stopped: bool
    chance_loss: float
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray
    seconds: float

    @property
    def steps(self) -> int:
        """Number of parameter updates made."""
        return len(self.losses) - int(self.diverged)

    @property
    def status(self) -> Literal["diverged", "stuck", "ok"]:
        return "diverged" if self.diverged else "stuck" if self.stuck else "ok"

    @property
    def final_loss(self) -> float:
        """Mean batch loss over the last 10 % of the steps (at least one); NaN if diverged."""
        return _final_loss(self.losses, self.diverged)


def _final_loss(losses: np.ndarray, diverged: bool) -> float:
    if diverged or not len(losses):
        return math.nan
    window = max(1, len(losses) // 10)
    return float(np.mean(losses[-window:]))




# ----------------------------------------------------------------------------- accuracy, batch plans, learning-rate selection


def logits_accuracy(logits: np.ndarray, y: np.ndarray):
    """Fraction of examples whose largest logit is the label -- the one accuracy rule.

    A row with any NaN or inf logit counts as wrong (``argmax`` over an all-NaN row returns 0,
    which would score a diverged network at the frequency of class 0 instead of 0).
    logits (N, C), y (N,) -> float; stacks (..., N, C), y (N,) or (..., N) -> (...,) float64.
    """
    logits = np.asarray(logits)
    correct = (logits.argmax(axis=-1) == np.asarray(y)) & np.isfinite(logits).all(axis=-1)
    acc = correct.mean(axis=-1)
    return float(acc) if acc.ndim == 0 else acc.astype(np.float64)


def batch_plan(
    rng: np.random.Generator,
    n: int,
    batch_size: int,
    steps: int,
    order: Literal["shuffled", "class-sorted", "fixed"] = "shuffled",
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """The example indices of ``steps`` training steps, (steps, batch_size) int64: the one batch-plan builder.

    Epoch after epoch of `bnclaims.data.batches` (``order`` as there; the last partial batch of
    an epoch is dropped), drawn from ``rng`` in the order a training loop consumes them.
    """
    stream = data.epochs(rng, n, batch_size, order, labels=labels)
    plan = np.empty((steps, batch_size), dtype=np.int64)
    for step in range(steps):
        plan[step] = next(stream)
    return plan


def select_lr(lrs, val_accuracy, diverged=None) -> int:
    """Index of the learning rate to use: the highest validation accuracy -- the one selection rule.

    lrs: (G,) the grid; val_accuracy: (G,) validation accuracy of each run; diverged: (G,) bool.
    A diverged run (or a NaN accuracy) counts as accuracy 0. Ties (exactly equal accuracy, as
    happens on small validation sets) go to the SMALLEST learning rate: the conservative choice,
    away from the edge where training breaks. Whether the choice sits at the edge of the grid is
    for the caller to report (``index in (0, G - 1)``).
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    acc = np.nan_to_num(np.asarray(val_accuracy, dtype=np.float64), nan=0.0)
    if diverged is not None:
        acc = np.where(np.asarray(diverged, dtype=bool), 0.0, acc)
    if lrs.shape != acc.shape or lrs.ndim != 1 or not len(lrs):
        raise ValueError(f"select_lr needs equal-length 1-D lrs and accuracies; got {lrs.shape}, {acc.shape}")
    best = np.flatnonzero(acc == acc.max())
    return int(best[np.argmin(lrs[best])])


# ----------------------------------------------------------------------------- stacks: K networks in one computation

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class Arm:
    """How one arm of a stack is trained (its architecture is the stack's `MLPConfig`).

    lr: a number or ``lr(step)``. optimizer: "sgd" (with ``momentum`` > 0 it is heavy-ball
    momentum, PyTorch semantics, as `SGD`), "momentum" (the same rule; needs momentum > 0) or
    "adam" (PyTorch semantics: ``betas``, ``adam_eps``, bias correction, L2 weight decay added to
    the gradient). weight_decay applies to weights ``W{i}`` only. order: batch order of this arm
    (see `batch_plan`); arms of a stack that share a Generator and an order see the same batches.
    """

    lr: float | Callable[[int], float] = 0.1
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    order: Literal["shuffled", "class-sorted", "fixed"] = "shuffled"
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Arm.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.optimizer == "momentum" and not self.momentum > 0:
            raise ValueError("optimizer 'momentum' needs momentum > 0 (e.g. 0.9)")
        if self.nesterov and not self.momentum > 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        if self.order not in ("shuffled", "class-sorted", "fixed"):
            raise ValueError(f"Arm.order must be shuffled, class-sorted or fixed; got {self.order!r}")


def init_stack(rngs: list[np.random.Generator], config: MLPConfig) -> Params:
    """Parameters of K = len(rngs) arms: ``W{i}: (K, fan_in, fan_out)``, ``b{i}``, ``gamma{i}``,
    ``beta{i}: (K, 1, width)``; arm k is ``init_params(rngs[k], config)``."""
    per_arm = [init_params(r, config) for r in rngs]
    return {name: np.stack([p[name] if is_weight(name) else p[name][None, :] for p in per_arm])
            for name in per_arm[0]}


def init_stack_state(config: MLPConfig, arms: int) -> State:
    """Running statistics of K arms, ``(K, 1, width)`` each (mean 0, variance 1)."""
    return {name: np.broadcast_to(value, (arms, 1) + value.shape).copy() for name, value in init_state(config).items()}


def stack_params(per_arm: list[Params]) -> Params:
    """Single-network parameter (or state) dicts, stacked into the stack layout."""
    return {name: np.stack([p[name] if is_weight(name) else p[name][None, :] for p in per_arm])
            for name in per_arm[0]}


def arm_params(stacked: Params, k: int) -> Params:
    """Arm k of stacked parameters (or state) in the single-network layout (views, not copies)."""
    return {name: value[k] if is_weight(name) else value[k, 0] for name, value in stacked.items()}


class StackOptimizer:
    """Per-arm SGD / momentum / Adam over stacked parameters, updating them IN PLACE.

    Each arm follows its `Arm` (lr, momentum, nesterov, weight decay, optimizer); arm k's update
    is bit for bit what `SGD` (or PyTorch's Adam) does to that arm alone. `freeze(k)` stops
    arm k for good (a diverged arm keeps its last finite parameters).
    """

    def __init__(self, arms: list[Arm], dtype, decay: Callable[[str], bool] = is_weight):
        self.arms = list(arms)
        self.dtype = np.dtype(dtype)
        self.decay = decay
        k = len(arms)
        self.frozen = np.zeros(k, dtype=bool)
        self.lr_values = [a.lr(0) if callable(a.lr) else a.lr for a in arms]
        self._scheduled = any(callable(a.lr) for a in arms)
        adam = np.array([a.optimizer == "adam" for a in arms])
        # groups of arms updated by one rule: a slice (no copies) when every arm shares the rule
        self.groups = []
        for kind, mask in (("sgd", ~adam), ("adam", adam)):
            if mask.all():
                self.groups.append((kind, slice(None), tuple(range(k))))
            elif mask.any():
                self.groups.append((kind, np.flatnonzero(mask), tuple(np.flatnonzero(mask).tolist())))
        self._vectors()
        self.velocity: dict = {}
        self.moments: dict = {}
        self._settings_cache: dict = {}
        self.t = 0

    def _column(self, values) -> np.ndarray:
        return np.asarray(values, dtype=self.dtype).reshape(-1, 1, 1)

    def _vectors(self) -> None:
        arms = self.arms
        self.lr = self._column([0.0 if f else lr for f, lr in zip(self.frozen, self.lr_values)])
        self.momentum = self._column([a.momentum for a in arms])
        self.weight_decay = self._column([a.weight_decay for a in arms])
        self.nesterov = np.array([a.nesterov for a in arms])

    def schedule(self, step: int) -> None:
        """Set each scheduled arm's lr to ``lr(step)``."""
        if self._scheduled:
            self.lr_values = [a.lr(step) if callable(a.lr) else a.lr for a in self.arms]
            self.lr = self._column([0.0 if f else lr for f, lr in zip(self.frozen, self.lr_values)])

    def freeze(self, k: int) -> None:
        """Arm k makes no more updates (its gradients must be zero from now on, as `train_stack` does)."""
        self.frozen[k] = True
        self.lr[k] = 0
        for kind, _, arms in self.groups:
            position = np.flatnonzero(np.asarray(arms) == k)
            for (buffer_kind, _), value in list(self.velocity.items()) + list(self.moments.items()):
                if buffer_kind == kind and position.size:
                    for array in value if isinstance(value, tuple) else (value,):
                        array[position] = 0

    def step(self, params: Params, grads: Params) -> Params:
        self.t += 1
        for kind, index, arms in self.groups:
            full = isinstance(index, slice)
            lr = self.lr if full else self.lr[index]
            rule = self._sgd if kind == "sgd" else self._adam
            settings = self._settings(kind, arms, full)
            for name, grad in grads.items():
                if full:
                    rule((kind, name), name, params[name], grad, lr, settings)
                else:
                    p = params[name][index]
                    rule((kind, name), name, p, grad[index], lr, settings)
                    params[name][index] = p
        return params

    def _settings(self, kind: str, arms_key, full: bool) -> dict:
        """Per-group constants, computed once: per-arm columns and which terms are in use at all."""
        cached = self._settings_cache.get((kind, arms_key))
        if cached is not None:
            return cached
        arms = np.asarray(arms_key)
        pick = (lambda v: v) if full else (lambda v: v[arms])
        mu, wd = pick(self.momentum), pick(self.weight_decay)
        nesterov = self.nesterov[arms]
        settings = {"mu": mu, "wd": wd, "use_mu": bool(mu.any()), "use_wd": bool(wd.any()),
                    "nesterov": True if nesterov.all() else nesterov.reshape(-1, 1, 1) if nesterov.any() else False}
        if kind == "adam":
            settings["beta1"] = self._column([self.arms[k].betas[0] for k in arms])
            settings["beta2"] = self._column([self.arms[k].betas[1] for k in arms])
            settings["eps"] = self._column([self.arms[k].adam_eps for k in arms])
        self._settings_cache[kind, arms_key] = settings
        return settings

    def _sgd(self, key, name, p, grad, lr, settings) -> None:
        _sgd_update(p, grad, lr, settings["mu"] if settings["use_mu"] else None,
                    settings["wd"] if settings["use_wd"] and self.decay(name) else None,
                    settings["nesterov"], self.velocity, key)

    def _adam(self, key, name, p, grad, lr, settings) -> None:
        if settings["use_wd"] and self.decay(name):
            grad = grad + settings["wd"] * p
        beta1, beta2 = settings["beta1"], settings["beta2"]
        if key not in self.moments:
            self.moments[key] = (np.zeros_like(p), np.zeros_like(p))
        m, v = self.moments[key]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        correction1 = 1 - beta1 ** self.t
        correction2 = 1 - beta2 ** self.t
        denom = np.sqrt(v) / np.sqrt(correction2)
        denom += settings["eps"]
        p -= (lr / correction1) * m / denom


class StackStepInfo:
    """What a ``record(step, info)`` hook of `train_stack` sees after one step of every arm.

    Plain attributes: ``step``, ``epoch``, ``lr`` (K python floats: each arm's lr of this step),
    ``loss`` (K,) batch losses before the update, ``alive`` (K,) bool (False once an arm has
    diverged: its entries are frozen or garbage), ``x`` (K, B, D), ``y`` (K, B), ``logits``
    (K, B, C), ``params`` (after the update), ``grads``, ``state``, ``activations`` (per-layer
    ``pre{i}``, ``norm{i}``, ``act{i}``, each (K, B, width)), ``config``, ``params_before`` (a copy of
    the parameters before the update; at step 0 always, later only if some hook lacks
    ``needs_deltas = False``). Computed on first access: ``batch_accuracy`` (K,), ``moments``, ``deltas``.
    Valid only during the call: copy what you keep.
    """

    def __init__(self, step, epoch, lr, loss, alive, x, y, logits, params, params_before, grads, state,
                 activations, config):
        self.step, self.epoch, self.lr, self.loss, self.alive = step, epoch, lr, loss, alive
        self.x, self.y, self.logits = x, y, logits
        self.params, self.grads, self.state, self.activations = params, grads, state, activations
        self.config = config
        self.params_before = params_before

    @cached_property
    def batch_accuracy(self) -> np.ndarray:
        return logits_accuracy(self.logits, self.y)

    @cached_property
    def moments(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per recorded array: per-arm, per-feature batch (mean, biased variance), each (K, width) float64."""
        out = {}
        for name, value in self.activations.items():
            if name != "logits":
                out[name] = _moments64(value, -2)
        return out

    @cached_property
    def deltas(self) -> Params:
        """params after the step minus params before it (hooks with ``needs_deltas = False`` get them at step 0 only)."""
        if self.params_before is None:
            raise ValueError("deltas need the parameters before the step: every hook of this run says needs_deltas = False")
        return {name: self.params[name] - before for name, before in self.params_before.items()}


@dataclass(frozen=True)
class StackResult:
    """Outcome of `train_stack` for K arms (arm k: index k of every array).

    losses: (K, steps run) batch losses, NaN after an arm diverged. diverged: (K,) a loss became
    NaN/inf (or exceeded ``max_loss``); that arm made no update from then on (its parameters are
    the last finite ones). stuck: (K,) finite but no better than chance (mean loss of the last
    10 % of its steps >= 95 % of ``chance_loss``). eval_loss / eval_accuracy: (T, K) in eval mode on
    (X_eval, y_eval) after ``eval_steps`` (T,) updates; NaN for an arm already diverged. The
    accuracy follows `logits_accuracy` (NaN/inf logits count as wrong).
    """

    params: Params
    state: State
    config: MLPConfig
    arms: tuple[Arm, ...]
    losses: np.ndarray
    diverged: np.ndarray
    stuck: np.ndarray
    stopped: bool
    chance_loss: float
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray
    seconds: float
    taken: np.ndarray  # (K,) losses recorded per arm: its updates, plus the diverging step

    @property
    def steps(self) -> np.ndarray:
        """(K,) parameter updates each arm made."""
        return self.taken - self.diverged.astype(np.int64)

    @property
    def final_loss(self) -> np.ndarray:
        """(K,) mean batch loss over the last 10 % of each arm's steps; NaN if diverged."""
        return np.array([_final_loss(self.arm_losses(k), bool(self.diverged[k])) for k in range(len(self.arms))])

    def arm_losses(self, k: int) -> np.ndarray:
        return self.losses[k, : self.taken[k]]

    def status(self, k: int) -> Literal["diverged", "stuck", "ok"]:
        return "diverged" if self.diverged[k] else "stuck" if self.stuck[k] else "ok"

    def arm(self, k: int) -> TrainResult:
        """Arm k as the `TrainResult` of a single network."""
        finite = self.eval_steps <= self.steps[k] if self.diverged[k] else np.ones(len(self.eval_steps), dtype=bool)
        return TrainResult(
            params=arm_params(self.params, k), state=arm_params(self.state, k), config=self.config,
            losses=self.arm_losses(k), diverged=bool(self.diverged[k]), stuck=bool(self.stuck[k]),
            stopped=self.stopped, chance_loss=self.chance_loss, eval_steps=self.eval_steps[finite],
            eval_loss=self.eval_loss[finite, k], eval_accuracy=self.eval_accuracy[finite, k], seconds=self.seconds,
        )


def _streams(rngs: list[np.random.Generator]) -> list[tuple[np.random.Generator, ...]]:
    """Per arm (init, batch, noise) Generators, split from its Generator as `train` splits one.

    Arms given the same Generator object get equal copies of the same three children: the same
    weights (where the sizes match), the same batches (where the order matches), the same noise.
    """
    children: dict[int, list] = {}
    out = []
    for r in rngs:
        if id(r) not in children:
            children[id(r)] = r.spawn(3)
        out.append(tuple(copy.deepcopy(c) for c in children[id(r)]))
    return out


def _hooks(record) -> list[Callable]:
    if record is None:
        return []
    return [record] if callable(record) else list(record)


def train_stack(
    rngs: np.random.Generator | list[np.random.Generator],
    config: MLPConfig,
    X: np.ndarray,
    y: np.ndarray,
    arms: Arm | list[Arm] = Arm(),
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    record: Callable[[int, StackStepInfo], bool | None] | list[Callable] | None = None,
    X_eval: np.ndarray | None = None,
    y_eval: np.ndarray | None = None,
    eval_every: int | None = None,
    params: Params | None = None,
    state: State | None = None,
    max_loss: float = math.inf,
    plan: np.ndarray | None = None,
    X_reference: np.ndarray | None = None,
    noise: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> StackResult:
    """Train K MLPs of one architecture at once, as one stacked computation -- the one training loop.

    arms: one `Arm` per network (or one for all); rngs: one Generator per arm, or one shared by
    all. Arm k is trained exactly -- bit for bit -- as ``train(rngs[k], config, ...)`` with its
    settings would train it alone: its Generator is split into (init, batch order, noise) streams
    the same way, so arms sharing a Generator are paired (same initial weights, same batches
    where their orders match, same noise). ``params``/``state`` start from given values instead
    (single-network dicts are copied to every arm; stacked ones are copied). Give exactly one of
    ``steps`` and ``epochs``; every arm takes the same number of steps. ``plan`` gives the batches
    instead of drawing them (each arm's order is then ignored): example indices ``(steps, B)`` for
    every arm or ``(K, steps, B)`` per arm, e.g. from `batch_plan` with a Generator of the caller's.

    An arm whose loss becomes NaN/inf (or exceeds ``max_loss``) is marked diverged and frozen
    (no update from that step on); the others go on, and the loop ends when none is left.
    ``record`` is a hook ``record(step, info: StackStepInfo)`` or a list of them (see
    `ParamTrajectory`, `ProbeMoments`, `GradientNorms`), called after every step; one returning
    True stops training. Eval-mode loss and accuracy on (X_eval, y_eval) every ``eval_every``
    steps, at 0 and at the end.

    ``X_reference`` (M, D), with ``config.reference_rows = M``: prepended to every training batch
    (the norm takes its statistics from these rows); the loss, and ``info.logits``, cover the batch
    rows only (``info.activations`` hold the M reference rows first).

    ``noise`` (norm="noisy"): a callable ``noise(h) -> (noise_scale, noise_shift)``, asked once per
    hidden layer per training step (in layer order) for the noise of the stacked pre-norm values
    ``h`` (K, B, D), instead of each arm drawing `nn.sample_covariate_noise` from its own stream:
    e.g. common random numbers shared by the arms, at per-arm strengths.
    ``config.renorm_warmup`` relaxes the renorm limits step by step (`renorm_limits`).
    """
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if isinstance(arms, Arm):
        arms = [arms] * (1 if isinstance(rngs, np.random.Generator) else len(rngs))
    arms = tuple(arms)
    k_arms = len(arms)
    if isinstance(rngs, np.random.Generator):
        rngs = [rngs] * k_arms
    rngs = list(rngs)
    if len(rngs) != k_arms or not k_arms:
        raise ValueError(f"need one Generator per arm (or one for all); got {len(rngs)} for {k_arms} arms")
    streams = _streams(rngs)
    dtype = config.np_dtype
    X = np.asarray(X, dtype=dtype)
    y = np.asarray(y, dtype=np.int64)
    n = len(X)
    batches_per_epoch = n // batch_size
    total = steps if steps is not None else epochs * batches_per_epoch
    if params is None:
        params = init_stack([s[0] for s in streams], config)
    elif params["W0"].ndim == 2:
        params = stack_params([{k: np.asarray(v, dtype=dtype) for k, v in params.items()}] * k_arms)
    else:
        params = {name: np.array(value, dtype=dtype) for name, value in params.items()}
    if state is None:
        state = init_stack_state(config, k_arms)
    elif state and next(iter(state.values())).ndim == 1:
        state = stack_params([{k: np.asarray(v, dtype=dtype) for k, v in state.items()}] * k_arms)
    else:
        state = {name: np.array(value, dtype=dtype) for name, value in state.items()}
    optimizer = StackOptimizer(list(arms), dtype)
    m_ref = config.reference_rows
    if (X_reference is None) != (m_ref == 0) or (X_reference is not None and len(X_reference) != m_ref):
        raise ValueError(f"X_reference must have config.reference_rows = {m_ref} rows (and is needed exactly then)")
    if X_reference is not None:
        X_reference = np.asarray(X_reference, dtype=dtype)
    # one arm runs through the (N, D) layout (views of the stacked arrays): the same numbers, less overhead
    single = k_arms == 1
    run_params = arm_params(params, 0) if single else params
    run_state = arm_params(state, 0) if single else state

    # batch plans: arms that share a Generator and an order share one plan (and one gather)
    plan_keys: dict[tuple, int] = {}
    plans: list[np.ndarray] = []
    arm_plan = np.empty(k_arms, dtype=np.int64)
    if plan is not None:
        plan = np.asarray(plan, dtype=np.int64)
        if plan.ndim not in (2, 3) or plan.shape[-2] < total or (plan.ndim == 3 and len(plan) != k_arms):
            raise ValueError(f"plan must be (steps, batch) or ({k_arms}, steps, batch) with at least {total} steps; "
                             f"got shape {plan.shape}")
        plans = [plan] if plan.ndim == 2 else list(plan)
        arm_plan[:] = 0 if plan.ndim == 2 else np.arange(k_arms)
    for k, (arm, (_, batch_rng, _)) in enumerate(zip(arms, streams) if plan is None else ()):
        key = (id(rngs[k]), arm.order)
        if key not in plan_keys:
            plan_keys[key] = len(plans)
            plans.append(batch_plan(batch_rng, n, batch_size, total, arm.order, y))
        arm_plan[k] = plan_keys[key]
    noise_rngs = noise if noise is not None else streams[0][2] if single else [s[2] for s in streams]
    base_config = config

    def stacked(values: dict) -> dict:  # run layout -> stack layout (views)
        if not single:
            return values
        return {name: value[None] if is_weight(name) else value[None, None] for name, value in values.items()}

    eval_steps: list[int] = []
    eval_loss: list[np.ndarray] = []
    eval_accuracy: list[np.ndarray] = []
    alive = np.ones(k_arms, dtype=bool)

    def run_eval(step: int) -> None:
        logits, _, _ = forward(run_params, run_state, X_eval, config, False, tape=False)
        loss, _ = nn.softmax_cross_entropy(logits, y_eval)
        accuracy = logits_accuracy(logits, y_eval)
        eval_steps.append(step)
        eval_loss.append(np.where(alive, loss, np.nan))
        eval_accuracy.append(np.where(alive, accuracy, np.nan))

    hooks = _hooks(record)
    need_before = any(getattr(hook, "needs_deltas", True) for hook in hooks)  # copy params before each step?
    do_eval = X_eval is not None and y_eval is not None
    if do_eval:
        X_eval = np.asarray(X_eval, dtype=dtype)
        y_eval = np.asarray(y_eval, dtype=np.int64)
    losses = np.full((k_arms, total), np.nan)
    taken = np.zeros(k_arms, dtype=np.int64)
    all_alive = True
    ran = 0
    stopped = False
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # divergence is detected from the loss, not from warnings
        if do_eval:
            run_eval(0)
        for step in range(total):
            if len(plans) == 1:
                index = plans[0][step]                            # (B,): the same batch for every arm
            else:
                index = np.stack([plan[step] for plan in plans])[arm_plan]   # (K, B)
            xb, yb = X[index], y[index]
            acts = {} if hooks else None
            if base_config.renorm_warmup:
                config = replace(base_config, **dict(zip(("r_max", "d_max"), renorm_limits(base_config, step, total))))
            if m_ref:   # the reference rows first: they give the statistics, the loss is on the batch rows
                reference = X_reference if xb.ndim == 2 else np.broadcast_to(X_reference, xb.shape[:-2] + X_reference.shape)
                all_logits, tape, new_state = forward(run_params, run_state, np.concatenate([reference, xb], axis=-2),
                                                      config, True, noise_rngs, acts)
                logits = all_logits[..., m_ref:, :]
                loss, batch_dlogits = nn.softmax_cross_entropy(logits, yb)
                dlogits = np.zeros_like(all_logits)
                dlogits[..., m_ref:, :] = batch_dlogits
            else:
                logits, tape, new_state = forward(run_params, run_state, xb, config, True, noise_rngs, acts)
                loss, dlogits = nn.softmax_cross_entropy(logits, yb)
            ran = step + 1
            if single:  # python floats: the per-step bookkeeping of one arm costs nothing
                losses[0, step] = loss
                taken[0] = ran
                loss = np.array([loss])
                if not (math.isfinite(loss[0]) and loss[0] <= max_loss):  # NaN, +-inf, or above max_loss
                    optimizer.freeze(0)
                    alive[0] = False
                    break
            else:
                losses[alive, step] = loss[alive]
                taken[alive] = ran
                bad = alive & ~(np.isfinite(loss) & (loss <= max_loss))
                if bad.any():
                    for k in np.flatnonzero(bad):
                        optimizer.freeze(k)
                    alive &= ~bad
                    all_alive = False
                    if not alive.any():
                        break
            grads = stacked(backward(dlogits, tape))
            if not all_alive:  # frozen arms: no update, running statistics kept
                dead = ~alive
                for grad in grads.values():
                    grad[dead] = 0
                for key, value in new_state.items():
                    if value is not run_state[key]:
                        value[dead] = run_state[key][dead]
            optimizer.schedule(step)
            before = copy_params(params) if hooks and (need_before or step == 0) else None
            optimizer.step(params, grads)
            run_state = new_state
            if do_eval and eval_every and (step + 1) % eval_every == 0:
                run_eval(step + 1)
            if hooks:
                if single:
                    logits, acts = logits[None], {name: value[None] for name, value in acts.items()}
                info = StackStepInfo(
                    step, step // max(batches_per_epoch, 1), list(optimizer.lr_values), loss, alive.copy(),
                    np.broadcast_to(xb, (k_arms,) + xb.shape[-2:]), np.broadcast_to(yb, (k_arms, yb.shape[-1])),
                    logits, params, before, grads, stacked(run_state), acts, config,
                )
                if any([hook(step, info) is True for hook in hooks]):
                    stopped = True
                    break
        if do_eval and alive.any() and (not eval_steps or eval_steps[-1] != ran):
            run_eval(ran)
    seconds = time.perf_counter() - start

    state = stacked(run_state) if single else run_state
    losses = losses[:, :ran]
    diverged = ~alive
    frequencies = np.bincount(y) / n
    frequencies = frequencies[frequencies > 0]
    chance_loss = float(-(frequencies * np.log(frequencies)).sum())
    stuck = np.array([
        not diverged[k] and taken[k] > 0 and _final_loss(losses[k, : taken[k]], False) >= 0.95 * chance_loss
        for k in range(k_arms)
    ], dtype=bool)
    return StackResult(
        params=params, state=state, config=config, arms=arms, losses=losses, diverged=diverged, stuck=stuck,
        stopped=stopped, chance_loss=chance_loss, eval_steps=np.array(eval_steps, dtype=np.int64),
        eval_loss=np.array(eval_loss, dtype=np.float64).reshape(-1, k_arms),
        eval_accuracy=np.array(eval_accuracy, dtype=np.float64).reshape(-1, k_arms), seconds=seconds, taken=taken,
    )


def renorm_limits(config: MLPConfig, step: int, steps: int) -> tuple[float, float]:
    """Batch renorm's clipping limits (r_max, d_max) at ``step`` of ``steps`` under ``config.renorm_warmup``.

    (hold, d_full, r_full), fractions of the steps (Ioffe 2017, section 4: 5k, 25k and 40k of 100k):
    r_max = 1, d_max = 0 (plain batch norm) until hold, then linear to ``config.d_max`` at d_full and
    to ``config.r_max`` at r_full. No warm-up: the config's limits.
    """
    if not config.renorm_warmup:
        return config.r_max, config.d_max
    hold, d_full, r_full = config.renorm_warmup
    t = step / steps

    def ramp(full: float) -> float:
        return 1.0 if full <= hold else float(np.clip((t - hold) / (full - hold), 0.0, 1.0))

    return 1.0 + (config.r_max - 1.0) * ramp(r_full), config.d_max * ramp(d_full)


# ----------------------------------------------------------------------------- recorders (hooks for train_stack)


class ParamTrajectory:
    """Hook: copies of the named parameters (e.g. ``gamma0``, ``beta0``) at step 0 (before
    training) and after every ``every``-th update. ``steps``: (T,); ``arrays()``: {name: (T, K, ...)}."""

    needs_deltas = False  # the loop need not copy the parameters before every step

    def __init__(self, names, every: int = 1):
        self.names, self.every = list(names), every
        self.steps: list[int] = []
        self.values: dict[str, list] = {name: [] for name in self.names}

    def __call__(self, step: int, info: StackStepInfo) -> None:
        if step == 0:
            self.steps.append(0)
            for name in self.names:
                self.values[name].append(info.params_before[name].copy())
        if (step + 1) % self.every == 0:
            self.steps.append(step + 1)
            for name in self.names:
                self.values[name].append(info.params[name].copy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.stack(v) for name, v in self.values.items()}


class ProbeMoments:
    """Hook: per-layer, per-feature mean and variance over a FIXED probe set, every ``every`` steps.

    The network of each arm (after the update) is run on X_probe in eval mode (``train=False``,
    running statistics) or with the probe set's own batch statistics (``train=True``; not for the
    noisy norm). ``moments()``: {``pre0``, ``norm0``, ``act0``, ...: (mean, var) each (T, K, width)}.
    ``initial=True`` (train mode only: the hook never sees the running statistics before the first
    step) also records the network before training, as step 0 (from ``params_before``).
    """

    needs_deltas = False  # the loop need not copy the parameters before every step

    def __init__(self, X_probe: np.ndarray, every: int = 1, train: bool = False, initial: bool = False):
        if initial and not train:
            raise ValueError("ProbeMoments(initial=True) needs train=True (batch statistics of the probe)")
        self.X_probe, self.every, self.train, self.initial = X_probe, every, train, initial
        self.steps: list[int] = []
        self.values: dict[str, list] = {}

    def __call__(self, step: int, info: StackStepInfo) -> None:
        if self.initial and step == 0:
            self._record(0, info.params_before, info.state, info.config)
        if (step + 1) % self.every:
            return
        self._record(step + 1, info.params, info.state, info.config)

    def _record(self, step: int, params: Params, state: State, config: MLPConfig) -> None:
        record: dict[str, np.ndarray] = {}
        forward(params, state, self.X_probe, config, self.train, record=record, tape=False)
        self.steps.append(step)
        for name, value in record.items():
            if name != "logits":
                self.values.setdefault(name, []).append(_moments64(value, -2))

    def moments(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (np.stack([m for m, _ in v]), np.stack([s for _, s in v])) for name, v in self.values.items()}


class GradientNorms:
    """Hook: per-arm L2 norm of each parameter's gradient every ``every`` steps; ``arrays()``: {name: (T, K)}."""

    needs_deltas = False  # the loop need not copy the parameters before every step

    def __init__(self, every: int = 1):
        self.every = every
        self.steps: list[int] = []
        self.values: dict[str, list] = {}

    def __call__(self, step: int, info: StackStepInfo) -> None:
        if (step + 1) % self.every:
            return
        self.steps.append(step + 1)
        for name, grad in info.grads.items():
            g = grad.reshape(len(grad), -1).astype(np.float64)
            self.values.setdefault(name, []).append(np.sqrt(np.einsum("ki,ki->k", g, g)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.stack(v) for name, v in self.values.items()}


# ----------------------------------------------------------------------------- one network


def train(
    rng: np.random.Generator,
    config: MLPConfig,
    X: np.ndarray,
    y: np.ndarray,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float | Callable[[int], float] = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    order: Literal["shuffled", "class-sorted", "fixed"] = "shuffled",
    record: Callable[[int, StepInfo], bool | None] | None = None,
    X_eval: np.ndarray | None = None,
    y_eval: np.ndarray | None = None,
    eval_every: int | None = None,
    params: Params | None = None,
    state: State | None = None,
    max_loss: float = math.inf,
) -> TrainResult:
    """Train one MLP with SGD on softmax cross-entropy: `train_stack` with a single arm.

    ``rng`` is split into three child streams: initial weights, batch order (see
    `bnclaims.data.batches`, ``order``; the last partial batch of an epoch is dropped)
    and layer noise -- so arms that differ only in normalization share weights and
    batches. ``params``/``state`` start from given values instead (copied, never modified).
    Give exactly one of ``steps`` and ``epochs``. ``lr`` is a number or ``lr(step)``.

    ``record(step, info)`` is called after every update with a `StepInfo`; returning True
    stops training. Without a hook the loop does no extra work. Stops early, with
    ``diverged=True``, at the first NaN/inf loss (or loss above ``max_loss``, if given:
    large learning rates can keep a ReLU/tanh net finite but far above chance).
    """
    arm = Arm(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, order=order)
    hook = None
    if record is not None:
        def hook(step: int, info: StackStepInfo):
            single = StepInfo(
                step, info.epoch, info.lr[0], float(info.loss[0]), info.x[0], info.y[0], info.logits[0],
                arm_params(info.params, 0), arm_params(info.params_before, 0), arm_params(info.grads, 0),
                arm_params(info.state, 0), {name: value[0] for name, value in info.activations.items()},
            )
            return record(step, single)
    result = train_stack(
        rng, config, X, y, arm, steps=steps, epochs=epochs, batch_size=batch_size, record=hook,
        X_eval=X_eval, y_eval=y_eval, eval_every=eval_every, params=params, state=state, max_loss=max_loss,
    )
    return result.arm(0)
