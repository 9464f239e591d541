"""The shape of the loss landscape with and without batch norm.

One experiment, ``loss-landscape``: along the SGD trajectory of a BN MLP and of the same MLP
without normalization, it measures on a fixed probe batch

* loss Lipschitzness: how much the loss varies when stepping along the gradient with steps of
  several sizes (Santurkar et al. 2018, arXiv:1805.11604, section 3.1, Fig. 4a);
* gradient predictiveness: how far the gradient moves along the same steps, ||g(w) - g(w - eta g)||
  (Fig. 4b), and the "effective beta-smoothness": the largest of those changes per unit distance
  moved, ||g(w) - g(w - eta g)|| / ||eta g|| (Fig. 4c);
* the largest Hessian eigenvalue (sharpness), by Lanczos (scipy's ``eigsh``, which='LA') on exact
  Hessian-vector products (`bnclaims.model.hessian_vector_product`: the R-operator on the model's
  own forward/backward, batch norm in training mode with every Jacobian term of the statistics).

The networks, their gradients and their training are `bnclaims.model`'s (float64); vectors of the
optimisation (gradients, directions) are flat, in the order of `model.flatten_params`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from bnclaims import data, model
from bnclaims.experiments import axes, experiment

ARMS = ("bn", "plain")
SETTINGS = ("low", "high")


def configs(sizes) -> dict[str, model.MLPConfig]:
    """The paired networks: BN before every ReLU (hidden layers without a bias, which the mean
    subtraction removes) and the same MLP without normalization, He init, float64."""
    return {"bn": model.MLPConfig(sizes=tuple(sizes), norm="batch", hidden_bias=False, dtype="float64"),
            "plain": model.MLPConfig(sizes=tuple(sizes), norm="none", dtype="float64")}


def loss_and_grad(params: model.Params, config: model.MLPConfig, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(training-mode loss, flat gradient) of the network on (x, y)."""
    loss, grads, _, _ = model.loss_and_grads(params, model.init_state(config), x, y, config)
    return loss, model.flatten_params(grads)


def top_eigenvalue(params: model.Params, config: model.MLPConfig, x: np.ndarray, y: np.ndarray,
                   rng: np.random.Generator, tol: float = 1e-4) -> tuple[float, int]:
    """Largest algebraic eigenvalue of the Hessian of the loss on (x, y) by Lanczos (ARPACK eigsh,
    which='LA') on exact Hessian-vector products, from a random start drawn from `rng`.
    Returns (eigenvalue, number of Hessian-vector products)."""
    hvp = model.hessian_vector_product(params, x, y, config)
    calls = 0

    def matvec(v):
        nonlocal calls
        calls += 1
        direction = model.unflatten_params(np.asarray(v, dtype=np.float64).ravel(), params)
        return model.flatten_params(hvp(direction))

    size = model.flatten_params(params).size
    op = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    value = eigsh(op, k=1, which="LA", v0=rng.standard_normal(size), tol=tol, ncv=min(size, 20),
                  return_eigenvectors=False)
    return float(value[0]), calls


def gradient_walk(params: model.Params, config: model.MLPConfig, x: np.ndarray, y: np.ndarray,
                  step_sizes: np.ndarray):
    """Santurkar et al.'s measures at one point, stepping along the negative gradient g of (x, y).

    Returns (loss variation = max - min of the loss over the steps w - eta g, eta in step_sizes;
    gradient change = max over eta of ||g(w) - g(w - eta g)||;
    effective beta-smoothness = max over eta of ||g(w) - g(w - eta g)|| / ||eta g||;
    gradient norm ||g||)."""
    _, grad = loss_and_grad(params, config, x, y)
    flat = model.flatten_params(params)
    norm = float(np.linalg.norm(grad))
    losses, changes = [], []
    for eta in step_sizes:
        loss, moved = loss_and_grad(model.unflatten_params(flat - eta * grad, params), config, x, y)
        losses.append(loss)
        changes.append(float(np.linalg.norm(moved - grad)))
    losses = np.nan_to_num(np.array(losses), nan=np.inf)
    changes = np.nan_to_num(np.array(changes), nan=np.inf)
    beta = changes / (np.asarray(step_sizes) * max(norm, 1e-300))
    return float(losses.max() - losses.min()), float(changes.max()), float(beta.max()), norm


# ============================================================================ the experiment

MEASURES = {
    "loss_variation": "variation of the probe loss along the gradient: max - min over the step sizes",
    "grad_change": "gradient predictiveness: largest ||g(w) - g(w - eta g)|| over the step sizes",
    "beta_smooth": "effective beta-smoothness: largest ||g(w) - g(w - eta g)|| / ||eta g|| over the step sizes",
    "top_eig": "largest Hessian eigenvalue of the probe loss (Lanczos on exact Hessian-vector products)",
}
EXTRA = {
    "grad_norm": "norm of the probe gradient ||g|| (sets how far a step eta g moves)",
    "loss": "probe loss (training mode)",
}


def digits(dataset: Literal["digits", "augmented"] = "digits") -> data.Split:
    """The shared digits split (test 25 %, validation 20 % of the rest), standardized, float64;
    "augmented": the same split moved, turned and noisy (`data.augmented_digits_split`, 4 copies of
    each training image: 4,312 rows)."""
    if dataset == "augmented":
        return data.augmented_digits_split(4, 0.2, standardize=True, dtype=np.float64)
    return data.digits_split(0.25, 0.2, standardize=True, dtype=np.float64)


def measure(params: model.Params, config: model.MLPConfig, x: np.ndarray, y: np.ndarray, step_sizes: np.ndarray,
            rng: np.random.Generator, tol: float) -> dict:
    """All landscape measures at ``params`` on (x, y); see MEASURES and EXTRA."""
    variation, change, beta, norm = gradient_walk(params, config, x, y, step_sizes)
    eig, _ = top_eigenvalue(params, config, x, y, rng, tol)
    loss, _ = model.evaluate(params, model.init_state(config), x, y, config, train=True)
    return {"loss_variation": variation, "grad_change": change, "beta_smooth": beta, "top_eig": eig,
            "grad_norm": norm, "loss": loss}


def train_with_checkpoints(config: model.MLPConfig, start: model.Params, X: np.ndarray, y: np.ndarray,
                           plan: np.ndarray, lrs: list[float], checkpoints: list[int]):
    """Plain SGD from ``start`` along the batches ``plan`` (steps, B), one arm per learning rate, in
    one `model.train_stack`. Returns per arm {checkpoint: params after that many steps, or None
    once the arm has diverged (NaN/inf loss)}, and (K,) diverged flags."""
    steps = max(checkpoints)
    every = math.gcd(*[c for c in checkpoints if c > 0]) if steps else 1
    trajectory = model.ParamTrajectory(list(start), every=every)
    # the Generator draws nothing: the weights and the batches are given
    result = model.train_stack(np.random.default_rng(0), config, X, y, [model.Arm(lr=lr) for lr in lrs],
                               steps=steps, batch_size=plan.shape[1], plan=plan, params=start, record=trajectory)
    saved = dict(zip(trajectory.steps, range(len(trajectory.steps))))
    values = trajectory.arrays()
    points = []
    for k in range(len(lrs)):
        at = {}
        for c in checkpoints:
            if c == 0:
                at[c] = start
            elif result.diverged[k] and c > result.steps[k]:
                at[c] = None
            else:
                at[c] = model.arm_params({name: value[saved[c]] for name, value in values.items()}, k)
        points.append(at)
    return points, result.diverged


@experiment(
    "loss-landscape",
    metrics=axes({
        "{measure}_{arm}_{setting}": "{measure}; {arm}, {setting} common LR, geometric mean over the checkpoints after step 0",
        "{measure}_{arm}_init": "{measure}; {arm}, at initialisation",
        "{extra}_{arm}_{setting}": "{extra}; {arm}, {setting} common LR, geometric mean over the checkpoints after step 0",
        "final_loss[arm, setting]": "probe loss at the end of training, {arm}, {setting} LR",
        "val_acc[arm, setting]": "validation accuracy at the end, {arm}, {setting} LR (BN: probe statistics)",
        "diverged": "runs whose loss went NaN/inf",
    }, measure=MEASURES, extra=EXTRA, arm=ARMS, setting=SETTINGS),
    series=axes({
        "step": "checkpoints (SGD steps), 0 = initialisation",
        "{quantity}_{arm}_{setting}_curve": "{quantity} at each checkpoint, {arm}, {setting} LR",
    }, quantity=[*MEASURES, *EXTRA], arm=ARMS, setting=SETTINGS),
)
def loss_landscape(rng: np.random.Generator, *, hidden: list[int] = [64, 64], batch_size: int = 32,
                   lrs: list[float] = [0.1, 0.4], checkpoints: list[int] = [0, 25, 50, 100, 200, 400],
                   probe_size: int = 256, step_multipliers: list[float] = [0.25, 0.5, 1.0, 2.0, 4.0],
                   lanczos_tol: float = 1e-3, dataset: Literal["digits", "augmented"] = "digits") -> dict:
    """Is the loss landscape smoother / better conditioned with batch norm?

    Network 64-[hidden]-10, ReLU, float64, SGD without momentum, batch `batch_size`, on the digits
    training split (1,078 images); BN before every ReLU vs the same MLP without normalization
    (same initial weights, same batches), each trained at two common learning rates
    `lrs` = [low, high] (0.4 is the no-norm net's best LR in the `noisy-bn-speed` sweep).
    At every checkpoint (SGD steps; 0 = initialisation), on a fixed probe of `probe_size` training
    images (BN statistics of the probe, as in training), with g the probe gradient and step sizes
    eta = lr x `step_multipliers`: the loss variation, gradient change and effective
    beta-smoothness of Santurkar et al. 2018 (section 3.1), and the largest Hessian eigenvalue
    (Lanczos, relative tolerance `lanczos_tol`, exact R-operator products). Metrics: geometric
    mean over the checkpoints after initialisation, per arm and LR; and the values at
    initialisation. `dataset` "augmented": the harder moved, turned and noisy digits
    (`data.augmented_digits_split`, 4,312 training rows) instead of the 1,078 clean ones.
    """
    split = digits(dataset)
    X, y = split.X_train, split.y_train
    nets = configs([X.shape[1], *hidden, 10])
    init_rng, order_rng, probe_rng, lanczos_rng = rng.spawn(4)
    probe = np.sort(probe_rng.choice(len(y), size=min(probe_size, len(y)), replace=False))
    xp, yp = X[probe], y[probe]
    plan = model.batch_plan(order_rng, len(y), batch_size, max(checkpoints))
    state = init_rng.bit_generator.state
    start = {}
    for arm in ARMS:  # the same draws: the same initial weights for both arms
        init_rng.bit_generator.state = state
        start[arm] = model.init_params(init_rng, nets[arm])
    lanczos_seed = int(lanczos_rng.integers(2**63))
    out: dict = {"step": np.asarray(checkpoints, dtype=float)}
    diverged = 0
    for arm in ARMS:
        config = nets[arm]
        with np.errstate(all="ignore"):
            points, arm_diverged = train_with_checkpoints(config, start[arm], X, y, plan, lrs, checkpoints)
        diverged += int(arm_diverged.sum())
        for s, lr, at in zip(SETTINGS, lrs, points):
            step_sizes = np.asarray(step_multipliers, dtype=np.float64) * lr
            curves = {m: [] for m in [*MEASURES, *EXTRA]}
            with np.errstate(all="ignore"):
                for step in checkpoints:
                    # the same Lanczos start for both arms at a checkpoint (same size only for same arch)
                    values = {m: np.nan for m in curves} if at[step] is None else \
                        measure(at[step], config, xp, yp, step_sizes, np.random.default_rng([lanczos_seed, step]),
                                lanczos_tol)
                    for m in curves:
                        curves[m].append(values[m])
            final = at[max(checkpoints)]
            out[f"final_loss_{arm}_{s}"] = 1e3 if final is None else float(curves["loss"][-1])
            if final is None:
                out[f"val_acc_{arm}_{s}"] = 0.0
            else:  # BN normalizes with the statistics of the probe rows
                logits, _, _ = model.forward(final, model.population_state(final, xp, config), split.X_val, config,
                                             train=False)
                out[f"val_acc_{arm}_{s}"] = model.logits_accuracy(logits, split.y_val)
            for m in curves:
                curve = np.asarray(curves[m], dtype=np.float64)
                out[f"{m}_{arm}_{s}_curve"] = curve
                trained = curve[np.asarray(checkpoints) > 0]
                out[f"{m}_{arm}_{s}"] = float(np.exp(np.mean(np.log(np.abs(trained) + 1e-300))))
                if s == SETTINGS[0] and m in MEASURES:
                    out[f"{m}_{arm}_init"] = float(curve[0])
    out["diverged"] = float(diverged)
    return out
