"""Time of one SGD step of the bnclaims MLP, side by side with PyTorch CPU.

Run:  python benchmarks/bench_model.py

A step is forward + softmax cross-entropy + backward + SGD with momentum 0.9, float32.
Rows: 64-256x4-10 with batch norm (before ReLU) at batch 32 / 128 / 512, the same MLP
without normalization, and the 64-128-128-10 reference point of METHODS.md. Columns: bnclaims
(NumPy), PyTorch when importable, and their ratio; then BN / plain per implementation.
Everything runs on one thread. Times are CPU time of this process (so a busy machine that
deschedules us does not count), best of several repeats, in milliseconds.

Then the stacked step (issue 15's goal): K = 10 arms of a 64-128-128-10 BN MLP at batch 32,
each arm with its own batch, as ONE step of `model.train_stack`'s code, against 10 single-network
steps through the same code (`train_stack` with one arm runs the (N, D) layout). Goals: at most
0.2 ms per arm-step, and at most 0.8x the 10 single steps. The two are timed interleaved.

Then issue 18's larger nets, the same way with K = 4 arms (printed, no goal): the digits CNN
(1x8x8 -> conv 3x3 16 -> spatial BN -> ReLU -> conv 3x3 32 -> spatial BN -> ReLU -> average
pool -> 10) at batch 64, and a 16-layer residual width-64 BN MLP at batch 32 (with the plain
16-layer MLP beside it for the cost of the skips).
"""

import os

# one BLAS / OpenMP thread for numpy and torch alike; must be set before numpy is imported
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from bnclaims import model, nn  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # PyTorch is an optional extra (pip install torch==2.13.0)
    torch = None

REPEATS = 7


def best_ms(step, number: int) -> float:
    step()  # warm up (allocations, lazily created buffers)
    return min(timeit.repeat(step, number=number, repeat=REPEATS, timer=time.process_time)) / number * 1e3


def numpy_step(sizes, norm: str, batch: int):
    config = model.MLPConfig(sizes=sizes, norm=norm)
    rng = np.random.default_rng(0)
    params, state = model.init_params(rng, config), model.init_state(config)
    optimizer = model.SGD(0.01, momentum=0.9)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    holder = [state]

    def step():
        loss, grads, holder[0], _ = model.loss_and_grads(params, holder[0], x, y, config)
        optimizer.step(params, grads)

    return step


def torch_step(sizes, norm: str, batch: int):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if norm == "batch":
                layers.append(torch.nn.BatchNorm1d(fan_out))
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    return step


def loop_step(arms: int, sizes=(64, 128, 128, 10), batch: int = 32, norm: str = "batch", config=None):
    """One training step of `model.train_stack`'s loop body for `arms` arms (1: the (N, D) layout).

    ``config`` (an MLPConfig or CNNConfig) replaces ``sizes``/``norm``."""
    config = model.MLPConfig(sizes=sizes, norm=norm) if config is None else config
    sizes = config.sizes
    rng = np.random.default_rng(0)
    params = model.init_stack([rng] * arms, config)
    state = model.init_stack_state(config, arms)
    optimizer = model.StackOptimizer([model.Arm(lr=0.01, momentum=0.9)] * arms, np.float32)
    x = rng.standard_normal((arms, batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], (arms, batch))
    if arms == 1:  # what train_stack does for one arm: views in the single-network layout
        run_params, run_state, x, y = model.arm_params(params, 0), model.arm_params(state, 0), x[0], y[0]
    else:
        run_params, run_state = params, state
    holder = [run_state]

    def step():
        logits, tape, holder[0] = model.forward(run_params, holder[0], x, config, True)
        _, dlogits = nn.softmax_cross_entropy(logits, y)
        grads = model.backward(dlogits, tape)
        if arms == 1:
            grads = {k: v[None] if model.is_weight(k) else v[None, None] for k, v in grads.items()}
        optimizer.step(params, grads)

    return step


def bench_stacked(arms: int = 10, rounds: int = 9, config=None, batch: int = 32, number: int = 400):
    """(ms per single step, ms per stacked step of `arms` arms), interleaved, best of `rounds`.

    ``number`` single steps (and number // arms stacked steps) per timing."""
    single, stacked = loop_step(1, config=config, batch=batch), loop_step(arms, config=config, batch=batch)
    single(), stacked()
    times = {"single": [], "stacked": []}
    for _ in range(rounds):
        for name, fn, count in (("single", single, number), ("stacked", stacked, max(1, number // arms))):
            times[name].append(min(timeit.repeat(fn, number=count, repeat=1, timer=time.process_time)) / count)
    return min(times["single"]) * 1e3, min(times["stacked"]) * 1e3


def print_stacked(arms: int = 10) -> None:
    single, stacked = bench_stacked(arms)
    per_arm = stacked / arms
    print(f"\nstacked step, {arms} arms of 64-128-128-10 BN, batch 32, float32, momentum SGD (train_stack's loop body)")
    print(f"{'single step ms':>15s} {arms:>3d}x single ms {'stacked ms':>11s} {'per arm-step ms':>16s} "
          f"{'stacked / 10 single':>20s}")
    print(f"{single:15.3f} {arms * single:15.3f} {stacked:11.3f} {per_arm:16.3f} {stacked / (arms * single):19.2f}x")
    print(f"goals: per arm-step <= 0.200 ms ({'met' if per_arm <= 0.2 else 'NOT met'}), "
          f"stacked / 10 single <= 0.80x ({'met' if stacked <= 0.8 * arms * single else 'NOT met'})")


def print_larger(arms: int = 4) -> None:
    """Issue 18's nets: one train_stack step per arm, stacked K arms vs K single steps (printed only)."""
    deep = (64,) + (64,) * 16 + (10,)
    rows = [("residual MLP 64x16 BN", model.MLPConfig(sizes=deep, norm="batch", residual=True), 32, 200),
            ("residual MLP 64x16 none", model.MLPConfig(sizes=deep, norm="none", residual=True), 32, 200),
            ("plain MLP 64x16 BN", model.MLPConfig(sizes=deep, norm="batch"), 32, 200)]
    if hasattr(nn, "conv2d_forward"):
        rows += [("CNN 16-32 spatial BN", model.CNNConfig(norm="batch"), 64, 40),
                 ("CNN 16-32 none", model.CNNConfig(norm="none"), 64, 40),
                 ("CNN 16-32 stride 2, BN", model.CNNConfig(norm="batch", strides=(1, 2)), 64, 40)]
    else:
        print("\n(bnclaims.nn has no conv2d yet: no CNN rows)")
    print(f"\none training step (forward + loss + backward + momentum SGD), float32, {arms} arms stacked vs "
          f"{arms} single, best of 9 interleaved rounds")
    print(f"{'net':26s} {'batch':>5s} {'single ms':>10s} {'stacked ms':>11s} {'per arm-step ms':>16s} "
          f"{'stacked / single':>17s}")
    for name, config, batch, number in rows:
        single, stacked = bench_stacked(arms, config=config, batch=batch, number=number)
        print(f"{name:26s} {batch:5d} {single:10.3f} {stacked:11.3f} {stacked / arms:16.3f} "
              f"{stacked / (arms * single):16.2f}x")


def main() -> None:
    deep = (64, 256, 256, 256, 256, 10)
    rows = [(deep, b) for b in (32, 128, 512)] + [((64, 128, 128, 10), 32)]
    have_torch = torch is not None
    print(f"one SGD step (forward + loss + backward + momentum update), float32, 1 thread, CPU time, best of {REPEATS}")
    print(f"numpy {np.__version__}" + (f", torch {torch.__version__}" if have_torch else ", torch not installed"))
    header = f"{'sizes':22s} {'batch':>5s} {'norm':>5s} {'numpy ms':>9s}"
    if have_torch:
        header += f" {'torch ms':>9s} {'numpy/torch':>11s}"
    print(header)
    for sizes, batch in rows:
        number = max(50, 20_000 // batch)
        times = {}
        for norm in ("batch", "none"):
            ours = best_ms(numpy_step(sizes, norm, batch), number)
            line = f"{'-'.join(map(str, sizes)):22s} {batch:5d} {norm:>5s} {ours:9.3f}"
            times[norm, "numpy"] = ours
            if have_torch:
                theirs = best_ms(torch_step(sizes, norm, batch), number)
                times[norm, "torch"] = theirs
                line += f" {theirs:9.3f} {ours / theirs:11.2f}"
            print(line)
        ratio = f"{'':22s} {'':5s} {'BN/plain':>9s} numpy {times['batch', 'numpy'] / times['none', 'numpy']:.2f}"
        if have_torch:
            ratio += f", torch {times['batch', 'torch'] / times['none', 'torch']:.2f}"
        print(ratio)
    print_stacked()
    print_larger()


if __name__ == "__main__":
    main()
