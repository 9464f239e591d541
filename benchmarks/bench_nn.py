"""Forward + backward time of the layers in bnclaims.nn, side by side with references.

Run:  python benchmarks/bench_nn.py

Columns: bnclaims.nn, a plain NumPy reference written below (the textbook formulas, one
expression per step), and PyTorch CPU when it is importable (the optional ``bench`` extra,
``pip install torch==2.13.0``, the CPU wheel); then the ratios, and issue 15's goals (ours /
torch at most 0.8x at 32x256, 0.85x at 256x256, 1.3x at 1024x1024). A second table times batch
norm on a stack of 10 arms (``(10, 32, 128)``) against 10 single-network calls; a third the image
layers against torch, with issue 18's goals (conv2d 64x16x8x8, 3x3 -> 32 channels, padding 1, at
most 3x torch; spatial batch norm at (64, 32, 8, 8) at most 2x torch autograd); a fourth conv2d
on a stack of 4 arms with per-arm kernels against 4 single calls (stride 1 and 2; the stack
should cost at most the singles). Everything runs
on one thread so the comparison is fair. Rows are added by functions named bench_<what>();
`main()` prints them all.
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
from bnclaims import nn  # noqa: E402

try:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
except ImportError:  # the torch column is skipped
    torch = None

SHAPES = [(32, 256), (256, 256), (1024, 1024)]
REPEAT = 15
# issue 15's goals for batch norm forward + backward, float32, one thread: ours / torch autograd at most
TORCH_GOALS = {(32, 256): 0.8, (256, 256): 0.85, (1024, 1024): 1.3}


def time_side_by_side(fns: dict, repeat: int = REPEAT) -> dict:
    """{name: (min, median) CPU seconds per call}, timeit-style, with the runs interleaved.

    Each function gets its own autoranged loop count; then `repeat` rounds time every function
    once per round, so a burst of load from elsewhere hits all columns alike. The clock is the
    process's CPU time: on a shared machine wall time also counts the time other processes hold
    the core, which swamps differences of 10 % (every column runs on this one thread).
    """
    timers, numbers, runs = {}, {}, {name: [] for name in fns}
    for name, fn in fns.items():
        fn()  # warm up caches and lazy initialisation
        timers[name] = timeit.Timer(fn, timer=time.process_time)
        numbers[name] = timers[name].autorange()[0]
    for _ in range(repeat):
        for name in fns:
            runs[name].append(timers[name].timeit(numbers[name]) / numbers[name])
    return {name: (min(r), float(np.median(r))) for name, r in runs.items()}


# ----------------------------------------------------------------------------- references

def reference_batchnorm_forward(x, gamma, beta, eps=1e-5):
    """The straightforward NumPy batch norm: every textbook step as its own expression."""
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    x_hat = (x - mean) / np.sqrt(var + eps)
    out = gamma * x_hat + beta
    return out, (x_hat, var, gamma, eps)


def reference_batchnorm_backward(dout, cache):
    x_hat, var, gamma, eps = cache
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_hat).sum(axis=0)
    dx_hat = dout * gamma
    dx = (n * dx_hat - dx_hat.sum(axis=0) - x_hat * (dx_hat * x_hat).sum(axis=0)) / (n * np.sqrt(var + eps))
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- rows

def bench_batchnorm(shapes=SHAPES, dtype=np.float32):
    """Rows (name, {column: (min, median) seconds}) for batchnorm forward + backward."""
    rows = []
    rng = np.random.default_rng(0)
    for n, d in shapes:
        x = rng.standard_normal((n, d)).astype(dtype)
        dout = rng.standard_normal((n, d)).astype(dtype)
        gamma = rng.uniform(0.5, 1.5, d).astype(dtype)
        beta = rng.standard_normal(d).astype(dtype)

        def ours():
            out, cache = nn.batchnorm_forward(x, gamma, beta)
            return nn.batchnorm_backward(dout, cache)

        def reference():
            out, cache = reference_batchnorm_forward(x, gamma, beta)
            return reference_batchnorm_backward(dout, cache)

        fns = {"bnclaims.nn": ours, "numpy ref": reference}
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            tg = torch.from_numpy(gamma).requires_grad_()
            tb = torch.from_numpy(beta).requires_grad_()
            tdout = torch.from_numpy(dout)

            def torch_step():
                out = F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5)
                return torch.autograd.grad(out, (tx, tg, tb), tdout)

            fns["torch"] = torch_step
        times = time_side_by_side(fns)
        rows.append((f"batchnorm fwd+bwd {n}x{d} {np.dtype(dtype).name}", times))
    return rows


def bench_stacked_batchnorm(arms: int = 10, shape=(32, 128), dtype=np.float32):
    """Rows for batch norm on a stack of `arms` arms (K, N, D) against `arms` single calls."""
    rng = np.random.default_rng(0)
    n, d = shape
    x = rng.standard_normal((arms, n, d)).astype(dtype)
    dout = rng.standard_normal((arms, n, d)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, (arms, 1, d)).astype(dtype)
    beta = rng.standard_normal((arms, 1, d)).astype(dtype)

    def stacked():
        out, cache = nn.batchnorm_forward(x, gamma, beta)
        return nn.batchnorm_backward(dout, cache)

    def singles():
        for k in range(arms):
            out, cache = nn.batchnorm_forward(x[k], gamma[k, 0], beta[k, 0])
            nn.batchnorm_backward(dout[k], cache)

    times = time_side_by_side({"bnclaims.nn": stacked, f"{arms} single calls": singles})
    return [(f"batchnorm fwd+bwd {arms}x{n}x{d} stacked", times)]


# issue 18's goals for the image layers, float32, one thread: ours / torch at most
CONV2D_GOAL, SPATIAL_BN_GOAL = 3.0, 2.0


def bench_conv2d(n=64, channels=16, filters=32, size=8, kernel=3, padding=1, dtype=np.float32):
    """Rows for conv2d forward + backward (im2col and one matmul) against torch's F.conv2d + autograd."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, channels, size, size)).astype(dtype)
    W = (rng.standard_normal((filters, channels, kernel, kernel)) / np.sqrt(channels * kernel * kernel)).astype(dtype)
    b = rng.standard_normal(filters).astype(dtype)
    out_size = size + 2 * padding - kernel + 1
    dout = rng.standard_normal((n, filters, out_size, out_size)).astype(dtype)

    def ours():
        out, cache = nn.conv2d_forward(x, W, b, stride=1, padding=padding)
        return nn.conv2d_backward(dout, cache)

    fns = {"bnclaims.nn": ours}
    if torch is not None:
        tx, tW, tb = (torch.from_numpy(a).requires_grad_() for a in (x, W, b))
        tdout = torch.from_numpy(dout)

        def torch_step():
            out = F.conv2d(tx, tW, tb, stride=1, padding=padding)
            return torch.autograd.grad(out, (tx, tW, tb), tdout)

        fns["torch"] = torch_step
    name = f"conv2d fwd+bwd {n}x{channels}x{size}x{size} {kernel}x{kernel}->{filters} pad {padding}"
    return [(name, time_side_by_side(fns))]


def bench_stacked_conv2d(arms: int = 4, n=64, channels=16, filters=32, size=8, kernel=3, padding=1,
                         strides=(1, 2), dtype=np.float32):
    """Rows for conv2d forward + backward on a stack of `arms` arms with per-arm kernels and biases,
    (K, N, C, H, W), against `arms` single calls (the goal: the stack costs at most the singles)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((arms, n, channels, size, size)).astype(dtype)
    W = (rng.standard_normal((arms, filters, channels, kernel, kernel)) / np.sqrt(channels * kernel * kernel)).astype(dtype)
    b = rng.standard_normal((arms, 1, filters)).astype(dtype)
    rows = []
    for stride in strides:
        out_size = (size + 2 * padding - kernel) // stride + 1
        dout = rng.standard_normal((arms, n, filters, out_size, out_size)).astype(dtype)

        def stacked():
            out, cache = nn.conv2d_forward(x, W, b, stride=stride, padding=padding)
            return nn.conv2d_backward(dout, cache)

        def singles():
            for k in range(arms):
                out, cache = nn.conv2d_forward(x[k], W[k], b[k, 0], stride=stride, padding=padding)
                nn.conv2d_backward(dout[k], cache)

        name = f"conv2d fwd+bwd {arms}x{n}x{channels}x{size}x{size} s{stride} stack"
        rows.append((name, time_side_by_side({"bnclaims.nn": stacked, f"{arms} single calls": singles})))
    return rows


def bench_spatial_batchnorm(shape=(64, 32, 8, 8), dtype=np.float32):
    """Rows for spatial batch norm forward + backward against torch's F.batch_norm + autograd."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)

    def ours():
        out, cache = nn.spatial_batchnorm_forward(x, gamma, beta)
        return nn.spatial_batchnorm_backward(dout, cache)

    fns = {"bnclaims.nn": ours}
    if torch is not None:
        tx, tg, tb = (torch.from_numpy(a).requires_grad_() for a in (x, gamma, beta))
        tdout = torch.from_numpy(dout)

        def torch_step():
            out = F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5)
            return torch.autograd.grad(out, (tx, tg, tb), tdout)

        fns["torch"] = torch_step
    return [("spatial batchnorm fwd+bwd " + "x".join(map(str, shape)), time_side_by_side(fns))]


def print_goal(name: str, times: dict, goal: float) -> None:
    ratio = times["bnclaims.nn"][0] / times["torch"][0]
    print(f"goal {name}: ours/torch {ratio:.2f}x <= {goal:.2f}x: {'met' if ratio <= goal else 'NOT met'}")


# ----------------------------------------------------------------------------- printing

def format_table(rows) -> str:
    """Times in microseconds (min / median) and the ratios of bnclaims.nn to each other column."""
    columns = []
    for _, times in rows:
        columns += [c for c in times if c not in columns]
    others = [c for c in columns if c != "bnclaims.nn"]
    width = {c: max(26, len(c) + 13) for c in columns}
    ratio_width = {c: max(18, len(c) + 7) for c in others}
    header = f"{'case':<40}" + "".join(f"{c + ' us min/med':>{width[c]}}" for c in columns)
    header += "".join(f"{'ours/' + c:>{ratio_width[c]}}" for c in others)
    lines = [header, "-" * len(header)]
    for name, times in rows:
        line = f"{name:<40}"
        for c in columns:
            cell = "%.1f / %.1f" % (times[c][0] * 1e6, times[c][1] * 1e6) if c in times else "-"
            line += f"{cell:>{width[c]}}"
        for c in others:
            cell = f"{times['bnclaims.nn'][0] / times[c][0]:.2f}x" if c in times else "-"
            line += f"{cell:>{ratio_width[c]}}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    print(f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not importable (column skipped)'}, "
          f"1 thread, CPU time; ratios use the min times (< 1 means bnclaims.nn is faster)")
    rows = bench_batchnorm()
    print(format_table(rows))
    if torch is not None:
        for (n, d), goal in TORCH_GOALS.items():
            times = dict(rows)[f"batchnorm fwd+bwd {n}x{d} float32"]
            ratio = times["bnclaims.nn"][0] / times["torch"][0]
            print(f"goal {n}x{d}: ours/torch {ratio:.2f}x <= {goal:.2f}x: {'met' if ratio <= goal else 'NOT met'}")
    print()
    print(format_table(bench_stacked_batchnorm()))
    print()
    image_rows = bench_conv2d() + bench_spatial_batchnorm()
    print(format_table(image_rows))
    if torch is not None:
        for (name, times), goal in zip(image_rows, (CONV2D_GOAL, SPATIAL_BN_GOAL)):
            print_goal(name.split(" fwd")[0], times, goal)
    print()
    print(format_table(bench_stacked_conv2d()))
    print()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_model  # the MLP SGD step rows (64-256x4-10 with BN at batch 32/128/512)

    bench_model.main()


if __name__ == "__main__":
    main()
