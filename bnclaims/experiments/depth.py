"""Signal propagation in deep MLPs at initialisation: activation scale and gradient norm per layer.

One family: build a deep, narrow MLP on a batch of real digits, run one forward and one backward
pass, and record per hidden layer the size of the pre-activations and of the gradient reaching
them. Arms share the same random weight directions (only the scale differs) and nested input
batches, so every comparison is paired.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from bnclaims import model, nn, recorders
from bnclaims.experiments import axes, experiment


def relu_bn_rate_large_batch() -> float:
    """Per-layer growth of the squared gradient norm in a wide ReLU batch-norm MLP, batch -> inf.

    BN output z ~ N(0, 1) per feature; a = relu(z) has variance (pi - 1) / (2 pi); the next
    pre-activation h = a W (W ~ N(0, 1/width)) has that variance, so the next BN divides the
    gradient by it, relu keeps half of it: (1/2) * 2 pi / (pi - 1) = pi / (pi - 1) ~ 1.467
    (Yang et al. 2019, arXiv:1902.08129, large-batch ReLU limit).
    """
    return math.pi / (math.pi - 1.0)


def linear_bn_rate(batch_size: int) -> float:
    """Per-layer growth of the squared gradient norm in a wide linear batch-norm MLP with batch B.

    At the forward fixed point the centred batch vectors are isotropic in B - 1 dimensions, so a
    feature's batch variance is chi^2_{B-1} / (B - 1) and E[1 / var] = (B - 1) / (B - 3); the BN
    backward projection removes the batch mean and x_hat directions, keeping (B - 2) / (B - 1) of
    an isotropic gradient: (B - 2) / (B - 3) per layer (infinite for B <= 3).
    """
    if batch_size <= 3:
        return math.inf
    return (batch_size - 2) / (batch_size - 3)


def propagate(x: np.ndarray, y: np.ndarray, weights: list[np.ndarray], readout: np.ndarray,
              activation: str, batchnorm: bool, eps: float = 1e-5,
              residual: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One forward and backward pass (`model.forward`, its tape replayed); per hidden layer, the rms
    of the pre-activation and the gradient norm.

    x: (B, 64) inputs, y: (B,) labels; weights[l]: (fan_in, width) for hidden layer l (the first maps
    the input); readout: (width, 10). Hidden layer l: h_l = a_{l-1} @ weights[l], z_l = BN(h_l)
    (training mode, no affine) or h_l, a_l = activation(z_l); no biases. Loss: mean softmax
    cross-entropy of a_L @ readout. Returns (act_rms (L,) = rms of h_l, grad_norm (L,) = Frobenius
    norm of dLoss/dh_l). With `residual`, h_l is the stream of a pre-activation residual MLP
    (`model.MLPConfig.residual`: h_l = h_{l-1} + a_{l-1} @ weights[l] for l = 1 .. L-1; the weights
    are used as given).
    """
    config = model.MLPConfig(sizes=(x.shape[1],) + tuple(W.shape[1] for W in weights) + (readout.shape[1],),
                             activation=activation, norm="batch" if batchnorm else "none", affine=False,
                             hidden_bias=False, eps=eps, dtype=np.dtype(x.dtype).name,
                             residual=residual)
    params = {f"W{i}": W for i, W in enumerate(list(weights) + [readout])}
    record: dict = {}
    logits, tape, _ = model.forward(params, model.init_state(config), x, config, True, record=record)
    act_rms = np.array([math.sqrt(float(np.mean(np.square(record[f"pre{i}"], dtype=np.float64))))
                        for i in range(len(weights))])
    hidden_linears = {f"W{i}" for i in range(len(weights))}
    grad_norm = []
    dout = nn.softmax_cross_entropy(logits, y)[1]
    for backward_fn, cache, names in reversed(tape):     # names: () for the activation, (W, b) for a linear
        if names and names[0] in hidden_linears:          # dout is dLoss/dh_i here
            grad_norm.append(math.sqrt(float(np.sum(np.square(dout, dtype=np.float64)))))
        dout = backward_fn(dout, cache)[0] if names else backward_fn(dout, cache)
    return act_rms, np.array(grad_norm[::-1])


def _fitted_rate(grad_norm: np.ndarray, skip: int) -> float:
    """Per-layer factor of the SQUARED gradient norm, going from the top layer towards the input:
    exp of minus the least-squares slope of log(grad_norm^2) against the layer index, ignoring
    `skip` layers at each end (boundary effects of the input and readout layers)."""
    layers = np.arange(len(grad_norm))[skip:len(grad_norm) - skip]
    slope = np.polyfit(layers, 2.0 * np.log(grad_norm[skip:len(grad_norm) - skip]), 1)[0]
    return float(math.exp(-slope))


_NET = {"bn": "BN", "plain": "no normalization"}
_INIT = {"he": "He", "poor": "poor"}


@experiment(
    "depth-signal-propagation",
    metrics={
        **axes({"act_ratio_{net}_relu_poor": "rms pre-activation, last / first hidden layer: {net}, ReLU, poor init, "
                                             "batch `batch_size`"}, net=_NET),
        "act_ratio_plain_relu_he": "same without normalization, He init",
        **axes({"grad_ratio_{net}_relu_{init}": "gradient norm, first / last hidden layer: {net}, ReLU, {init} init, "
                                                "batch `batch_size`"}, net=_NET, init=_INIT),
        **axes({"grad_ratio_bn_linear_{b}": "gradient norm first / last: BN, linear, the {b} batch size of the sweep"},
               b={"small": "smallest", "large": "largest"}),
        "grad_ratio_plain_linear": "gradient norm first / last: no norm, linear, LeCun init",
        "rate_bn_relu_large": "fitted per-layer growth of the squared gradient norm: BN, ReLU, largest batch",
        "rate_theory_relu_large": "Yang et al. large-batch ReLU rate pi/(pi-1)",
        "rate_bn_linear_small": "fitted per-layer squared-gradient growth: BN, linear, smallest batch",
        "rate_theory_linear_small": "(B-2)/(B-3) at the smallest batch",
    },
    series={
        "layer": "hidden layer index 1..depth (x axis)",
        **axes({"grad_{net}_relu_{init}": "gradient norm per layer, {net}, ReLU, {init} init"}, net=_NET, init=_INIT),
        "act_bn_relu_poor": "rms pre-activation per layer, BN, ReLU, poor init",
        **axes({"act_plain_relu_{init}": "rms pre-activation per layer, no norm, ReLU, {init} init"}, init=_INIT),
        "sweep_batch_size": "batch sizes of the sweep (x axis)",
        **axes({"rate_bn_{act}": "fitted per-layer squared-gradient growth, BN {act}, per batch size"},
               act={"relu": "ReLU", "linear": "linear"}),
        "rate_theory_linear": "(B-2)/(B-3) per batch size",
        "rate_theory_relu": "pi/(pi-1) (large-batch limit) at every batch size",
    },
)
def depth_signal_propagation(rng: np.random.Generator, *, depth: int = 50, width: int = 256, batch_size: int = 32,
                             batch_sizes: list[int] = [4, 8, 16, 32, 64, 128, 256], poor_scale: float = 0.5,
                             skip: int = 5, residual: bool = False,
                             residual_init: Literal["depth", "plain"] = "depth") -> dict:
    """Activation scale and gradient norm per layer of a deep MLP at initialisation, BN vs none.

    Network: digits input (64) -> `depth` hidden layers of `width` units -> 10 logits, loss the
    softmax cross-entropy on the true labels of a batch of real (standardized) training digits.
    Hidden layer: linear (no bias) -> [batch norm, training mode, no affine] -> ReLU or identity.
    Inits: "He" std sqrt(2/fan_in) for ReLU, "LeCun" sqrt(1/fan_in) for linear (the correct
    ones), and "poor" = `poor_scale` x the correct std. All arms of a seed share the same
    Gaussian weight directions and nested input batches (the first B of one permutation).
    Measures, per hidden layer, the rms of the pre-activation and the norm of dLoss/d(pre-act),
    the first/last-layer ratios, and the fitted per-layer growth rate of the squared gradient
    norm over a batch-size sweep, beside the mean-field predictions (Yang et al. 2019).
    `residual`: every arm is a pre-activation residual MLP instead (`model.MLPConfig.residual`; the
    pre-activation is the stream h_l = h_{l-1} + a_{l-1} W_l), its block weights W_1 .. W_{depth-1}
    scaled by 1/sqrt(depth - 1) as `residual_init="depth"` does (`residual_init="plain"`: unscaled,
    as the plain net's), the same for every arm.
    """
    if min(batch_sizes) < 4 or batch_size < 2:
        raise ValueError("the sweep needs batch sizes >= 4 (the linear-BN rate (B-2)/(B-3) is infinite below)")
    split = recorders.digits(0.0)
    order = rng.permutation(len(split.y_train))[:max(max(batch_sizes), batch_size)]
    X_all, y_all = split.X_train[order], split.y_train[order]
    fan_ins = [64] + [width] * (depth - 1)
    # one set of Gaussian directions for every arm; only the scale differs (He or LeCun times `scale`)
    directions = [rng.standard_normal((f, width), dtype=np.float32) for f in fan_ins]
    readout = rng.standard_normal((width, 10), dtype=np.float32) * np.float32(math.sqrt(1.0 / width))

    def run(activation: str, batchnorm: bool, scale: float, b: int):
        gain = 2.0 if activation == "relu" else 1.0
        weights = [np.float32(scale * math.sqrt(gain / f)) * z for f, z in zip(fan_ins, directions)]
        if residual and residual_init == "depth":   # the block maps 1 .. depth-1 (`residual_init="depth"`); the first maps the input
            weights = weights[:1] + [np.float32(1.0 / math.sqrt(depth - 1)) * W for W in weights[1:]]
        return propagate(X_all[:b], y_all[:b], weights, readout, activation, batchnorm, residual=residual)

    relu = {(net, init): run("relu", net == "bn", poor_scale if init == "poor" else 1.0, batch_size)
            for net in _NET for init in _INIT}                 # (act_rms, grad_norm) per (net, init)
    _, grad_plain_linear = run("linear", False, 1.0, batch_size)
    sweep = [(run("relu", True, 1.0, b)[1], run("linear", True, 1.0, b)[1]) for b in batch_sizes]
    rates_relu = [_fitted_rate(g_relu, skip) for g_relu, _ in sweep]
    rates_linear = [_fitted_rate(g_lin, skip) for _, g_lin in sweep]
    small, large = int(np.argmin(batch_sizes)), int(np.argmax(batch_sizes))
    theory_linear = np.array([linear_bn_rate(b) for b in batch_sizes])
    return {
        **{f"act_ratio_{net}_relu_{init}": float(act[-1] / act[0]) for (net, init), (act, _) in relu.items()
           if (net, init) != ("bn", "he")},
        **{f"grad_ratio_{net}_relu_{init}": float(g[0] / g[-1]) for (net, init), (_, g) in relu.items()},
        "grad_ratio_bn_linear_small": float(sweep[small][1][0] / sweep[small][1][-1]),
        "grad_ratio_bn_linear_large": float(sweep[large][1][0] / sweep[large][1][-1]),
        "grad_ratio_plain_linear": float(grad_plain_linear[0] / grad_plain_linear[-1]),
        "rate_bn_relu_large": rates_relu[large], "rate_theory_relu_large": relu_bn_rate_large_batch(),
        "rate_bn_linear_small": rates_linear[small], "rate_theory_linear_small": float(theory_linear[small]),
        "layer": np.arange(1, depth + 1, dtype=float),
        **{f"grad_{net}_relu_{init}": g for (net, init), (_, g) in relu.items()},
        **{f"act_{net}_relu_{init}": act for (net, init), (act, _) in relu.items() if (net, init) != ("bn", "he")},
        "sweep_batch_size": np.array(batch_sizes, dtype=float),
        "rate_bn_relu": np.array(rates_relu), "rate_bn_linear": np.array(rates_linear),
        "rate_theory_linear": np.where(np.isfinite(theory_linear), theory_linear, np.nan),
        "rate_theory_relu": np.full(len(batch_sizes), relu_bn_rate_large_batch()),
    }
