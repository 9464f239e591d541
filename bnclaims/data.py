"""Datasets: the shipped 8x8 digits, and synthetic generators.

Everything here is a pure function. Randomness comes only from an explicit
``numpy.random.Generator`` argument; the digits split uses its own fixed seed so
that every experiment, whatever its seed, reports on the same test set.

Arrays returned from caches (digits, splits) are read-only views: callers who
want to modify them take a copy.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np

N_CLASSES = 10
_SPLIT_SEED = 20240611  # fixed: the digits split must not depend on the experiment seed

SHAPES = ("normal", "exponential", "bimodal", "student-t", "uniform")
Shape = Literal["normal", "exponential", "bimodal", "student-t", "uniform"]


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (a view, so callers cannot flip the flag back on)."""
    a.flags.writeable = False
    view = a.view()
    view.flags.writeable = False
    return view


# ---------------------------------------------------------------------------- digits


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    resource = importlib.resources.files("bnclaims") / "datasets" / "digits.npz"
    with resource.open("rb") as f, np.load(f) as npz:
        images = npz["images"]
        labels = npz["labels"]
    X = images.astype(np.float64) / 16.0
    y = labels.astype(np.int64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digit images (see ``datasets/README.md``).

    Returns ``X: (1797, 64)`` float64 pixels in [0, 1] (counts 0..16 divided by 16)
    and ``y: (1797,)`` int64 labels 0..9, both read-only. Read once per process.
    """
    X, y = _digits()
    return _read_only(X), _read_only(y)


@dataclass(frozen=True)
class Split:
    """A train / validation / test split; every array is read-only.

    ``X_*: (n_*, 64)``, ``y_*: (n_*,)``; ``*_index`` are the rows of ``load_digits()``.
    ``pixel_mean``/``pixel_std`` are the train statistics used to standardize
    (zeros/ones when ``standardize=False``).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    test_index: np.ndarray
    pixel_mean: np.ndarray
    pixel_std: np.ndarray


def stratified_split_indices(
    rng: np.random.Generator, y: np.ndarray, fractions: tuple[float, ...]
) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``len(fractions) + 1`` parts, stratified by class.

    Per class ``c`` (``n_c`` examples, shuffled once), part ``j`` takes
    ``round(fractions[j] * n_c)`` examples in turn; the last part takes the rest.
    Each part is returned sorted.
    """
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for j, fraction in enumerate(fractions):
            take = int(round(fraction * len(idx)))
            parts[j].append(idx[start : start + take])
            start += take
        parts[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def _pixel_scale(X_train: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (mean, std) of the training rows, for (X - mean) / std; (0, 1) when not standardizing.
    Pixels constant in train (always 0 in the digits' border) get std 1, so they stay 0."""
    d = X_train.shape[1]
    if not standardize:
        return np.zeros(d), np.ones(d)
    std = X_train.std(axis=0)
    return X_train.mean(axis=0), np.where(std > 0, std, 1.0)


@functools.lru_cache(maxsize=32)
def _digits_split(
    test_fraction: float, validation_fraction: float, standardize: bool, dtype: np.dtype
) -> Split:
    X, y = _digits()
    rng = np.random.default_rng(_SPLIT_SEED)
    # Test first and from its own permutation, so the test set never depends on validation_fraction.
    test_index, rest = stratified_split_indices(rng, y, (test_fraction,))
    val_local, train_local = stratified_split_indices(rng, y[rest], (validation_fraction,))
    val_index, train_index = rest[val_local], rest[train_local]

    mean, std = _pixel_scale(X[train_index], standardize)

    def take(index: np.ndarray) -> np.ndarray:
        return _read_only(((X[index] - mean) / std).astype(dtype, copy=False))

    return Split(
        X_train=take(train_index),
        y_train=_read_only(y[train_index]),
        X_val=take(val_index),
        y_val=_read_only(y[val_index]),
        X_test=take(test_index),
        y_test=_read_only(y[test_index]),
        train_index=_read_only(train_index),
        val_index=_read_only(val_index),
        test_index=_read_only(test_index),
        pixel_mean=_read_only(mean),
        pixel_std=_read_only(std),
    )


def digits_split(
    test_fraction: float = 0.25,
    validation_fraction: float = 0.0,
    *,
    standardize: bool = False,
    dtype: type | np.dtype = np.float64,
) -> Split:
    """The fixed, stratified digits split every experiment shares.

    ``test_fraction`` of each class goes to test (450 of 1797 at 0.25), chosen with
    a constant internal seed: the same on every call, whatever the experiment seed.
    ``validation_fraction`` of what remains (per class) becomes the validation
    split, for choosing hyper-parameters; the test set does not change with it.
    ``standardize`` subtracts the per-pixel train mean and divides by the train std
    (pixels constant in train get std 1). Arrays are ``dtype`` and read-only.
    """
    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    return _digits_split(float(test_fraction), float(validation_fraction), bool(standardize), np.dtype(dtype))


_AUGMENT_SEED = 20261204  # fixed: the augmented digits do not depend on the experiment seed


def augment_images(rng: np.random.Generator, X: np.ndarray, *, rotation: float = 20.0, shift: float = 1.0,
                   scale: float = 0.1, noise: float = 0.1) -> np.ndarray:
    """Randomly moved, turned, resized and noisy copies of 8x8 images ``X: (n, 64)`` in [0, 1].

    Per image, independently: a rotation uniform in +-``rotation`` degrees and a scaling uniform in
    1 +- ``scale`` about the image centre, a translation uniform in +-``shift`` pixels along each
    axis (bilinear interpolation, zeros outside the image), then Gaussian pixel noise of std
    ``noise``, clipped back to [0, 1]. Returns float64 ``(n, 64)``.
    """
    from scipy import ndimage

    n = len(X)
    angles = np.deg2rad(rng.uniform(-rotation, rotation, n))
    scales = rng.uniform(1.0 - scale, 1.0 + scale, n)
    shifts = rng.uniform(-shift, shift, (n, 2))
    centre = np.array([3.5, 3.5])
    out = np.empty((n, 8, 8))
    for i, image in enumerate(np.asarray(X, dtype=np.float64).reshape(n, 8, 8)):
        c, s = np.cos(angles[i]), np.sin(angles[i])
        inverse = np.array([[c, s], [-s, c]]) / scales[i]  # output coordinates -> input coordinates
        offset = centre - inverse @ (centre + shifts[i])
        out[i] = ndimage.affine_transform(image, inverse, offset=offset, order=1, mode="constant", cval=0.0)
    out += noise * rng.standard_normal(out.shape)
    return np.clip(out, 0.0, 1.0).reshape(n, 64)


@functools.lru_cache(maxsize=8)
def _augmented_split(copies: int, validation_fraction: float, standardize: bool, dtype: np.dtype) -> Split:
    base = _digits_split(0.25, validation_fraction, False, np.dtype(np.float64))
    rng = np.random.default_rng(_AUGMENT_SEED)
    train_rng, val_rng, test_rng = rng.spawn(3)
    train_index = np.repeat(base.train_index, copies)
    X_train = augment_images(train_rng, np.repeat(base.X_train, copies, axis=0))
    X_val, X_test = augment_images(val_rng, base.X_val), augment_images(test_rng, base.X_test)
    mean, std = _pixel_scale(X_train, standardize)

    def take(X: np.ndarray) -> np.ndarray:
        return _read_only(((X - mean) / std).astype(dtype, copy=False))

    return Split(
        X_train=take(X_train), y_train=_read_only(np.repeat(base.y_train, copies)),
        X_val=take(X_val), y_val=base.y_val, X_test=take(X_test), y_test=base.y_test,
        train_index=_read_only(train_index), val_index=base.val_index, test_index=base.test_index,
        pixel_mean=_read_only(mean), pixel_std=_read_only(std),
    )


def augmented_digits_split(
    copies: int = 4,
    validation_fraction: float = 0.2,
    *,
    standardize: bool = True,
    dtype: type | np.dtype = np.float32,
) -> Split:
    """A harder task that ships: the digits split, every image randomly moved, turned and noisy.

    The same images and split as ``digits_split(0.25, validation_fraction)``, passed through
    `augment_images` (rotation +-20 degrees, scaling +-10 %, shift +-1 pixel, pixel noise 0.1)
    with a constant seed, so it is the same on every call and machine-independent up to
    interpolation round-off: ``copies`` augmented copies of each training image (4: 4,312 rows at
    the default split), one augmented copy of each validation and test image (a fixed augmented
    test set of 450). On the 8x8 digits these moves are large (one pixel is 1/8 of the image), so
    networks that reach ~98 % on the clean digits stop saturating here and arms can differ.
    ``train_index`` repeats each original row ``copies`` times. Standardized with the augmented
    training set's statistics; arrays are ``dtype`` and read-only.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    return _augmented_split(int(copies), float(validation_fraction), bool(standardize), np.dtype(dtype))


def subsample(
    rng: np.random.Generator, X: np.ndarray, y: np.ndarray, n_per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random subset: ``n_per_class`` examples of every class in ``y``.

    Returns new arrays ``(X_sub: (k * n_per_class, ...), y_sub)`` in the original order.
    """
    classes, counts = np.unique(y, return_counts=True)
    if n_per_class > counts.min():
        raise ValueError(f"n_per_class={n_per_class} but class {classes[counts.argmin()]} has {counts.min()}")
    index = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in classes]))
    return X[index], y[index]


# ---------------------------------------------------------------------------- batches


def batches(
    rng: np.random.Generator,
    n: int,
    batch_size: int,
    order: Literal["shuffled", "class-sorted", "fixed"] = "shuffled",
    labels: np.ndarray | None = None,
    drop_last: bool = True,
) -> list[np.ndarray]:
    """Index arrays for one epoch over ``n`` examples; each index appears at most once.

    * ``"shuffled"``: a fresh random permutation (call once per epoch), i.i.d.-like batches.
    * ``"class-sorted"``: non-i.i.d. batches: all examples of one class are consecutive
      (class order and order within a class reshuffled each epoch), so nearly every
      batch holds a single class; needs ``labels: (n,)``.
    * ``"fixed"``: ``0 .. n-1`` in order, the same every epoch; ``rng`` is not used.

    With ``drop_last`` the last, smaller batch is dropped (every batch then has
    ``batch_size`` rows); otherwise it is kept. Returns a list of int64 arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size {batch_size} > n {n} with drop_last=True leaves no batch")
    if order == "shuffled":
        index = rng.permutation(n)
    elif order == "fixed":
        index = np.arange(n)
    elif order == "class-sorted":
        if labels is None or len(labels) != n:
            raise ValueError("order='class-sorted' needs labels of length n")
        labels = np.asarray(labels)
        classes = rng.permutation(np.unique(labels))
        index = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in classes])
    else:
        raise ValueError(f"unknown order {order!r}; expected 'shuffled', 'class-sorted' or 'fixed'")
    index = index.astype(np.int64, copy=False)
    stop = (n // batch_size) * batch_size if drop_last else n
    return [index[i : i + batch_size] for i in range(0, stop, batch_size)]


def epochs(
    rng: np.random.Generator,
    n: int,
    batch_size: int,
    order: Literal["shuffled", "class-sorted", "fixed"] = "shuffled",
    labels: np.ndarray | None = None,
    drop_last: bool = True,
) -> Iterator[np.ndarray]:
    """Endless stream of batch indices: ``batches(...)`` for epoch 1, then epoch 2, ..."""
    while True:
        yield from batches(rng, n, batch_size, order, labels, drop_last)


# ---------------------------------------------------------------------------- synthetic


def shaped_samples(
    rng: np.random.Generator,
    shape: Shape,
    n: int,
    d: int,
    mean: float | np.ndarray = 0.0,
    std: float | np.ndarray = 1.0,
    *,
    df: float = 5.0,
) -> np.ndarray:
    """``(n, d)`` i.i.d. samples with population mean ``mean`` and std ``std`` exactly,
    whatever the ``shape`` (``mean``/``std`` may be scalars or ``(d,)`` arrays).

    Each shape is a standardized law (mean 0, variance 1), then scaled and shifted:
    * ``normal``: N(0, 1);
    * ``exponential``: Exp(1) - 1 (skewed, skewness 2);
    * ``bimodal``: +-0.9 with equal probability plus N(0, 0.19) (two modes, kurtosis < 3);
    * ``student-t``: t(df) * sqrt((df - 2) / df), heavy-tailed (needs ``df > 2``);
    * ``uniform``: U(-sqrt 3, sqrt 3) (bounded, kurtosis 1.8).
    """
    size = (n, d)
    if shape == "normal":
        z = rng.standard_normal(size)
    elif shape == "exponential":
        z = rng.standard_exponential(size) - 1.0
    elif shape == "bimodal":
        centre = 0.9
        sign = np.where(rng.random(size) < 0.5, -1.0, 1.0)
        z = centre * sign + np.sqrt(1.0 - centre**2) * rng.standard_normal(size)
    elif shape == "student-t":
        if df <= 2:
            raise ValueError(f"student-t needs df > 2 for a finite variance, got {df}")
        z = rng.standard_t(df, size) * np.sqrt((df - 2.0) / df)
    elif shape == "uniform":
        z = rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), size)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return mean + std * z


def covariate_shift(
    rng: np.random.Generator,
    n: int,
    d: int,
    kind: Literal["none", "mean", "scale", "shape"],
    *,
    shift: float = 1.0,
    scale: float = 2.0,
    source_shape: Shape = "normal",
    target_shape: Shape = "bimodal",
) -> tuple[np.ndarray, np.ndarray]:
    """A source and a target sample, ``(n, d)`` each, that differ in one aspect only.

    The source has mean 0, std 1 and ``source_shape``. The target is the same law
    except: ``"mean"`` adds ``shift`` to the mean; ``"scale"`` multiplies the std
    by ``scale``; ``"shape"`` swaps to ``target_shape`` with the same mean and std;
    ``"none"`` changes nothing (a control). Returns ``(source, target)``.
    """
    mean, std, shape = 0.0, 1.0, source_shape
    if kind == "mean":
        mean = shift
    elif kind == "scale":
        std = scale
    elif kind == "shape":
        shape = target_shape
    elif kind != "none":
        raise ValueError(f"unknown kind {kind!r}; expected 'none', 'mean', 'scale' or 'shape'")
    source = shaped_samples(rng, source_shape, n, d)
    target = shaped_samples(rng, shape, n, d, mean, std)
    return source, target


def mixture_means(rng: np.random.Generator, d: int, k: int, separation: float = 3.0) -> np.ndarray:
    """``(k, d)`` class means with every pairwise distance equal to ``separation``
    (needs ``k <= d``: scaled random orthonormal directions)."""
    if k > d:
        raise ValueError(f"k={k} equidistant means need d >= k, got d={d}")
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return (separation / np.sqrt(2.0)) * q.T


def gaussian_mixture(
    rng: np.random.Generator,
    n: int,
    d: int,
    k: int,
    separation: float = 3.0,
    *,
    std: float = 1.0,
    means: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A k-class Gaussian mixture: ``X: (n, d)`` float64, ``y: (n,)`` int64 in 0..k-1.

    Class ``c`` is N(means[c], std^2 I); the means are ``mixture_means(rng, d, k,
    separation)`` unless given (pass the same ``means`` to draw a test set of the
    same task). Classes are balanced (counts differ by at most one), order random.
    """
    if means is None:
        means = mixture_means(rng, d, k, separation)
    y = rng.permutation(np.arange(n) % k).astype(np.int64)
    X = means[y] + std * rng.standard_normal((n, d))
    return X, y


@dataclass(frozen=True)
class Teacher:
    """A random one-hidden-layer MLP ``y = act(x W1 + b1) W2``; ``W1: (d, width)``, ``W2: (width, out)``."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    activation: Literal["tanh", "relu"] = "tanh"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = x @ self.W1 + self.b1
        h = np.tanh(h) if self.activation == "tanh" else np.maximum(h, 0.0)
        return h @ self.W2


def random_teacher(
    rng: np.random.Generator, d: int, width: int, out: int = 1, activation: Literal["tanh", "relu"] = "tanh"
) -> Teacher:
    """A teacher with N(0, 1/d) first-layer weights, N(0, 0.1) biases and N(0, 1/width) readout."""
    W1 = rng.standard_normal((d, width)) / np.sqrt(d)
    b1 = 0.1 * rng.standard_normal(width)
    W2 = rng.standard_normal((width, out)) / np.sqrt(width)
    return Teacher(_read_only(W1), _read_only(b1), _read_only(W2), activation)


def teacher_student(
    rng: np.random.Generator,
    n: int,
    d: int,
    width: int,
    noise: float = 0.1,
    *,
    out: int = 1,
    teacher: Teacher | None = None,
    shape: Shape = "normal",
) -> tuple[np.ndarray, np.ndarray]:
    """Regression data from a random teacher MLP: ``X: (n, d)``, ``y: (n, out)`` float64.

    ``X`` has i.i.d. entries of mean 0, std 1 and the given ``shape``;
    ``y = teacher(X) + noise * N(0, 1)``. The teacher is ``random_teacher(rng, d,
    width, out)`` unless given (pass the same teacher for a test set of the same task).
    """
    if teacher is None:
        teacher = random_teacher(rng, d, width, out)
    X = shaped_samples(rng, shape, n, d)
    y = teacher(X)
    y = y + noise * rng.standard_normal(y.shape)
    return X, y


def padded_sequences(
    rng: np.random.Generator,
    batch: int,
    max_len: int,
    d: int,
    length_dist: Literal["full", "uniform", "short"] = "uniform",
    *,
    min_len: int = 1,
    shape: Shape = "normal",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A padded batch of variable-length sequences.

    Lengths: ``"full"`` all ``max_len``; ``"uniform"`` uniform on ``min_len..max_len``;
    ``"short"`` geometric with mean about ``max_len / 4``, clipped to ``min_len..max_len``
    (most sequences short, a few long: lots of padding).
    Returns ``x: (B, T, D)`` float64 (entries of mean 0, std 1 and ``shape`` where
    valid, exactly 0 in padding), ``mask: (B, T)`` bool (True = valid, a prefix of
    each row) and ``lengths: (B,)`` int64, with ``mask.sum(1) == lengths``.
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if length_dist == "full":
        lengths = np.full(batch, max_len, dtype=np.int64)
    elif length_dist == "uniform":
        lengths = rng.integers(min_len, max_len + 1, size=batch)
    elif length_dist == "short":
        lengths = np.clip(rng.geometric(min(1.0, 4.0 / max_len), size=batch), min_len, max_len)
    else:
        raise ValueError(f"unknown length_dist {length_dist!r}; expected 'full', 'uniform' or 'short'")
    lengths = lengths.astype(np.int64)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    x = shaped_samples(rng, shape, batch * max_len, d).reshape(batch, max_len, d)
    x[~mask] = 0.0
    return x, mask, lengths
