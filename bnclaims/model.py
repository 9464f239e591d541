"""A multi-layer perceptron built from `bnclaims.nn`, an SGD optimizer and a training loop.

The model is data, not an object: parameters are a dict of arrays (``W0, b0, gamma0,
beta0, ..., W{L}, b{L}``), running statistics another dict (``running_mean{i},
running_var{i}``), and an `MLPConfig` says how to wire them. Hidden layer ``i`` is::

    norm_position="before":  linear -> norm -> activation
    norm_position="after":   linear -> activation -> norm

and the last layer is a plain linear map to the logits (never normalized).

`forward` records a tape of ``(backward_fn, cache, param_names)``; `backward` replays it
in reverse -- micrograd's idea at layer granularity.

Randomness: `train` splits its Generator into independent child streams for the
initial weights, the batch order and the layer noise, so two configs that differ
only in normalization get the same weights and the same batches for the same seed
(gamma/beta start at 1/0 and draw nothing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal

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
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        for name, value, allowed in (
            ("activation", self.activation, ACTIVATIONS),
            ("norm", self.norm, NORMS),
            ("norm_position", self.norm_position, ("before", "after")),
            ("init", self.init, INITS),
            ("dtype", self.dtype, ("float32", "float64")),
        ):
            if value not in allowed:
                raise ValueError(f"MLPConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"MLPConfig.sizes needs at least input and output widths >= 1; got {self.sizes}")
        if self.norm == "group" and any(w % self.groups for w in self.hidden_sizes):
            raise ValueError(f"groups={self.groups} must divide every hidden width {self.hidden_sizes}")

    @property
    def n_layers(self) -> int:
        """Number of linear layers (hidden layers + the output layer)."""
        return len(self.sizes) - 1

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return self.sizes[1:-1]

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


# ----------------------------------------------------------------------------- parameters


def init_params(rng: np.random.Generator, config: MLPConfig) -> Params:
    """Fresh parameters: ``W{i}: (sizes[i], sizes[i+1])``, ``b{i}`` zeros, and for each hidden
    layer with an affine norm ``gamma{i}`` ones, ``beta{i}`` zeros.

    Only the weights draw from ``rng`` (one standard-normal block per layer, in order, scaled
    afterwards), so the same ``rng`` state gives the same weights for every norm, placement,
    affine setting, init kind and dtype with the same sizes.
    """
    dtype = config.np_dtype
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(zip(config.sizes[:-1], config.sizes[1:])):
        z = rng.standard_normal((fan_in, fan_out))
        gain = {"he": math.sqrt(2.0 / fan_in), "lecun": math.sqrt(1.0 / fan_in), "scale": 1.0}[config.init]
        params[f"W{i}"] = (config.init_scale * gain * z).astype(dtype)
        params[f"b{i}"] = np.zeros(fan_out, dtype)
        if i < config.n_layers - 1 and config.norm != "none" and config.affine:
            params[f"gamma{i}"] = np.ones(fan_out, dtype)
            params[f"beta{i}"] = np.zeros(fan_out, dtype)
    return params


def init_state(config: MLPConfig) -> State:
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


def _activation(h: np.ndarray, config: MLPConfig, tape: Tape) -> np.ndarray:
    if config.activation == "relu":
        h, cache = nn.relu_forward(h)
        tape.append((nn.relu_backward, cache, ()))
    elif config.activation == "tanh":
        h, cache = _tanh_forward(h)
        tape.append((_tanh_backward, cache, ()))
    return h


def _norm(h, i, params, state, new_state, config, train, rng, tape):
    """Normalize hidden layer ``i``; append to the tape; put updated running stats in new_state."""
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
        out, cache = nn.batchnorm_eval_forward(h, running_mean, running_var, gamma, beta, eps)
        tape.append((nn.batchnorm_eval_backward, cache, names))
        return out
    n = h.shape[0]
    if kind == "batch":
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
        noise_scale, noise_shift = nn.sample_covariate_noise(
            rng, n, h.shape[1], config.noise_mean_shift, config.noise_scale_spread, h.dtype
        )
        out, cache = nn.noisy_batchnorm_forward(h, gamma, beta, noise_scale, noise_shift, eps)
        backward = nn.noisy_batchnorm_backward
    tape.append((backward, cache, names))
    batch_mean, batch_var = nn.batch_stats(cache)
    new_state[mean_key], new_state[var_key] = nn.update_running_stats(
        running_mean, running_var, batch_mean, batch_var, n, config.momentum
    )
    return out


def forward(
    params: Params,
    state: State,
    x: np.ndarray,
    config: MLPConfig,
    train: bool = True,
    rng: np.random.Generator | None = None,
    record: dict | None = None,
) -> tuple[np.ndarray, Tape, State]:
    """Logits of the MLP for a batch.

    x: (N, sizes[0]), cast to ``config.dtype``. ``train=True`` normalizes with batch
    statistics and returns updated running statistics; ``train=False`` uses the running
    statistics (layer/group norm behave the same in both modes). ``rng`` is needed only
    by the noisy norm in training. Nothing passed in is modified.

    When ``record`` is a dict it is filled, per hidden layer ``i``, with ``pre{i}`` (the
    input of the norm), ``norm{i}`` (its output) and ``act{i}`` (the activation output),
    each (N, sizes[i+1]); with norm="none", ``norm{i}`` is ``pre{i}``. Also ``logits``.
    The arrays are the forward's own (no copies): do not modify them.

    Returns ``(logits (N, sizes[-1]), caches, new_state)``; ``caches`` is the tape for `backward`.
    """
    h = np.asarray(x, dtype=config.np_dtype)
    tape: Tape = []
    new_state = dict(state)
    last = config.n_layers - 1
    for i in range(config.n_layers):
        h, cache = nn.linear_forward(h, params[f"W{i}"], params[f"b{i}"])
        tape.append((nn.linear_backward, cache, (f"W{i}", f"b{i}")))
        if i == last:
            break
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
    return h, tape, new_state


def backward(dlogits: np.ndarray, caches: Tape, config: MLPConfig | None = None) -> Params:
    """Gradients of the loss for every parameter, from dL/dlogits (N, classes) and the tape.

    Returns a dict with the same keys as the parameters. (``config`` is accepted for
    symmetry with `forward`; the tape already knows every layer.)
    """
    grads: Params = {}
    dout = dlogits
    for backward_fn, cache, names in reversed(caches):
        if not names:
            dout = backward_fn(dout, cache)
            continue
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
        lr, mu = self.lr, self.momentum
        for name, grad in grads.items():
            p = params[name]
            if self.weight_decay and self.decay(name):
                grad = grad + self.weight_decay * p
            if mu:
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = grad.copy()
                else:
                    v *= mu
                    v += grad
                grad = grad + mu * v if self.nesterov else v
            p -= lr * grad
        return params


# ----------------------------------------------------------------------------- training


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
                v = value.astype(np.float64)
                out[name] = (v.mean(axis=0), v.var(axis=0))
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
    """Train an MLP with SGD on softmax cross-entropy; a pure function of its arguments.

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
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    init_rng, batch_rng, noise_rng = rng.spawn(3)
    dtype = config.np_dtype
    X = np.asarray(X, dtype=dtype)
    y = np.asarray(y, dtype=np.int64)
    n = len(X)
    batches_per_epoch = n // batch_size
    total = steps if steps is not None else epochs * batches_per_epoch
    if params is None:
        params = init_params(init_rng, config)
    else:
        params = {name: np.array(value, dtype=dtype) for name, value in params.items()}
    state = init_state(config) if state is None else {k: np.array(v, dtype=dtype) for k, v in state.items()}
    optimizer = SGD(lr if not callable(lr) else lr(0), momentum, weight_decay, nesterov)
    stream = data.epochs(batch_rng, n, batch_size, order, labels=y)

    eval_steps: list[int] = []
    eval_loss: list[float] = []
    eval_accuracy: list[float] = []

    def run_eval(step: int) -> None:
        loss, acc = evaluate(params, state, X_eval, y_eval, config)
        eval_steps.append(step)
        eval_loss.append(loss)
        eval_accuracy.append(acc)

    do_eval = X_eval is not None and y_eval is not None
    losses = np.empty(total, dtype=np.float64)
    diverged = stopped = False
    taken = 0
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # divergence is detected from the loss, not from warnings
        if do_eval:
            run_eval(0)
        for step in range(total):
            index = next(stream)
            xb, yb = X[index], y[index]
            acts = {} if record is not None else None
            logits, tape, new_state = forward(params, state, xb, config, True, noise_rng, acts)
            loss, dlogits = nn.softmax_cross_entropy(logits, yb)
            losses[step] = loss
            taken = step + 1
            if not loss <= max_loss:  # NaN compares False
                diverged = True
                break
            grads = backward(dlogits, tape)
            if callable(lr):
                optimizer.lr = lr(step)
            before = copy_params(params) if record is not None else None
            optimizer.step(params, grads)
            state = new_state
            if do_eval and eval_every and (step + 1) % eval_every == 0:
                run_eval(step + 1)
            if record is not None:
                info = StepInfo(
                    step, step // max(batches_per_epoch, 1), optimizer.lr, loss, xb, yb, logits,
                    params, before, grads, state, acts,
                )
                if record(step, info) is True:
                    stopped = True
                    break
        if do_eval and not diverged and (not eval_steps or eval_steps[-1] != taken):
            run_eval(taken)
    seconds = time.perf_counter() - start

    losses = losses[:taken]
    frequencies = np.bincount(y) / n
    frequencies = frequencies[frequencies > 0]
    chance_loss = float(-(frequencies * np.log(frequencies)).sum())
    return TrainResult(
        params=params,
        state=state,
        config=config,
        losses=losses,
        diverged=diverged,
        stuck=not diverged and taken > 0 and _final_loss(losses, diverged) >= 0.95 * chance_loss,
        stopped=stopped,
        chance_loss=chance_loss,
        eval_steps=np.array(eval_steps, dtype=np.int64),
        eval_loss=np.array(eval_loss, dtype=np.float64),
        eval_accuracy=np.array(eval_accuracy, dtype=np.float64),
        seconds=seconds,
    )
