"""Time of one SGD step of the bnclaims MLP, side by side with PyTorch CPU.

Run:  python benchmarks/bench_model.py

A step is forward + softmax cross-entropy + backward + SGD with momentum 0.9, float32.
Rows: 64-256x4-10 with batch norm (before ReLU) at batch 32 / 128 / 512, the same MLP
without normalization, and the 64-128-128-10 reference point of METHODS.md. Columns: bnclaims
(NumPy), PyTorch when importable, and their ratio; then BN / plain per implementation.
Everything runs on one thread. Times are CPU time of this process (so a busy machine that
deschedules us does not count), best of several repeats, in milliseconds.
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


if __name__ == "__main__":
    main()
