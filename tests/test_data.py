"""Tests for bnclaims.data: the shipped digits, the fixed split, batches, generators."""

import numpy as np
import pytest
from scipy import stats

from bnclaims import data

EXPECTED_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_counts():
    X, y = data.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.array_equal(np.unique(X * 16), np.arange(17))  # exactly counts / 16
    assert np.bincount(y).tolist() == EXPECTED_COUNTS


def test_digits_cannot_be_corrupted_by_callers():
    X, y = data.load_digits()
    with pytest.raises(ValueError):
        X[0, 0] = 5.0
    with pytest.raises(ValueError):
        X.flags.writeable = True
    with pytest.raises(ValueError):
        y[0] = 3
    copy = X.copy()  # the way to get a modifiable array
    copy[:] = 0.0
    X2, _ = data.load_digits()
    assert X2.max() == 1.0


def test_split_is_fixed_stratified_and_disjoint():
    a = data.digits_split(validation_fraction=0.2)
    b = data.digits_split(validation_fraction=0.2)
    for name in ("train_index", "val_index", "test_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    parts = [set(a.train_index), set(a.val_index), set(a.test_index)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 1797
    assert len(a.y_test) == 450
    # Stratified: every class is within one example of its share, in every part.
    counts = np.array(EXPECTED_COUNTS)
    assert np.all(np.abs(np.bincount(a.y_test, minlength=10) - 0.25 * counts) <= 1)
    rest = counts - np.bincount(a.y_test, minlength=10)
    assert np.all(np.abs(np.bincount(a.y_val, minlength=10) - 0.2 * rest) <= 1)
    X, y = data.load_digits()
    assert np.array_equal(a.X_test, X[a.test_index]) and np.array_equal(a.y_test, y[a.test_index])


def test_split_test_set_independent_of_validation_and_global_seed():
    np.random.seed(123)  # global state must not matter
    a = data.digits_split()
    np.random.seed(456)
    b = data.digits_split(validation_fraction=0.3, standardize=True, dtype=np.float32)
    assert np.array_equal(a.test_index, b.test_index)
    assert len(a.y_val) == 0 and a.X_val.shape == (0, 64)
    assert set(b.train_index) | set(b.val_index) == set(a.train_index)


def test_split_standardization_uses_train_statistics_only():
    s = data.digits_split(validation_fraction=0.2, standardize=True)
    X, _ = data.load_digits()
    train = X[s.train_index]
    varying = train.std(axis=0) > 0
    assert np.allclose(s.X_train.mean(axis=0), 0.0, atol=1e-12)
    assert np.allclose(s.X_train.std(axis=0)[varying], 1.0)
    assert np.allclose(s.X_test, (X[s.test_index] - train.mean(0)) / s.pixel_std)
    assert not s.X_train.flags.writeable and not s.y_test.flags.writeable
    f32 = data.digits_split(standardize=True, dtype=np.float32)
    assert f32.X_train.dtype == np.float32 and f32.y_train.dtype == np.int64


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits_split(test_fraction=1.0)


def test_subsample_is_stratified_and_seeded():
    X, y = data.load_digits()
    Xa, ya = data.subsample(np.random.default_rng(1), X, y, 7)
    Xb, yb = data.subsample(np.random.default_rng(1), X, y, 7)
    Xc, _ = data.subsample(np.random.default_rng(2), X, y, 7)
    assert Xa.shape == (70, 64) and np.bincount(ya).tolist() == [7] * 10
    assert np.array_equal(Xa, Xb) and np.array_equal(ya, yb) and not np.array_equal(Xa, Xc)
    assert Xa.flags.writeable  # a new array, the caller's to modify
    with pytest.raises(ValueError):
        data.subsample(np.random.default_rng(0), X, y, 175)


# ---------------------------------------------------------------------------- batches


@pytest.mark.parametrize("order", ["shuffled", "class-sorted", "fixed"])
@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_cover_each_index_once_per_epoch(order, drop_last):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=103)
    out = data.batches(rng, 103, 10, order, labels=labels, drop_last=drop_last)
    flat = np.concatenate(out)
    assert len(flat) == len(np.unique(flat))  # never twice
    if drop_last:
        assert len(out) == 10 and all(len(b) == 10 for b in out)
    else:
        assert sorted(flat.tolist()) == list(range(103)) and len(out[-1]) == 3


def test_shuffled_batches_change_every_epoch_fixed_do_not():
    rng = np.random.default_rng(0)
    e1, e2 = (np.concatenate(data.batches(rng, 50, 5)) for _ in range(2))
    assert not np.array_equal(e1, e2)
    f1, f2 = (np.concatenate(data.batches(rng, 50, 5, "fixed")) for _ in range(2))
    assert np.array_equal(f1, np.arange(50)) and np.array_equal(f1, f2)
    again = np.concatenate(data.batches(np.random.default_rng(0), 50, 5))
    assert np.array_equal(again, e1)


def test_class_sorted_batches_are_mostly_single_class():
    s = data.digits_split()
    rng = np.random.default_rng(0)
    orders = []
    for _ in range(3):
        out = data.batches(rng, len(s.y_train), 32, "class-sorted", labels=s.y_train)
        classes_per_batch = [len(np.unique(s.y_train[b])) for b in out]
        assert max(classes_per_batch) == 2  # at most one class boundary per batch (~134 per class)
        assert np.mean(np.array(classes_per_batch) == 1) > 0.65
        labels_seen = s.y_train[np.concatenate(out)]
        orders.append(labels_seen[np.r_[0, np.flatnonzero(np.diff(labels_seen)) + 1]].tolist())
        assert sorted(orders[-1]) == list(range(10))  # each class is one contiguous run
    assert orders[0] != orders[1] or orders[1] != orders[2]  # class order reshuffled per epoch
    shuffled = data.batches(rng, len(s.y_train), 32, labels=s.y_train)
    assert np.mean([len(np.unique(s.y_train[b])) == 1 for b in shuffled]) == 0.0


def test_batches_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="labels"):
        data.batches(rng, 10, 2, "class-sorted")
    with pytest.raises(ValueError, match="order"):
        data.batches(rng, 10, 2, "sorted")
    with pytest.raises(ValueError, match="no batch"):
        data.batches(rng, 10, 11)


def test_epochs_streams_consecutive_epochs():
    stream = data.epochs(np.random.default_rng(3), 20, 5)
    got = np.concatenate([next(stream) for _ in range(8)])
    rng = np.random.default_rng(3)
    want = np.concatenate(data.batches(rng, 20, 5) + data.batches(rng, 20, 5))
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------------- generators


@pytest.mark.parametrize("shape", data.SHAPES)
def test_shaped_samples_have_the_population_moments_they_claim(shape):
    rng = np.random.default_rng(11)
    mean = np.array([-2.0, 0.0, 3.0])
    std = np.array([0.5, 1.0, 4.0])
    x = data.shaped_samples(rng, shape, 200_000, 3, mean, std)
    assert x.shape == (200_000, 3)
    z = (x - mean) / std
    # Standard error of the mean is 1/sqrt(n) ~ 0.0022; of the std at most ~0.006 (t with df=5).
    assert np.all(np.abs(z.mean(axis=0)) < 0.015)
    assert np.all(np.abs(z.std(axis=0) - 1.0) < 0.03)


def test_shaped_samples_differ_in_shape():
    rng = np.random.default_rng(5)
    n = 100_000
    skew = {s: stats.skew(data.shaped_samples(rng, s, n, 1)[:, 0]) for s in data.SHAPES}
    kurt = {s: stats.kurtosis(data.shaped_samples(rng, s, n, 1)[:, 0]) for s in data.SHAPES}  # excess
    assert abs(skew["exponential"] - 2.0) < 0.2 and abs(skew["normal"]) < 0.05
    assert abs(kurt["normal"]) < 0.1
    assert abs(kurt["uniform"] + 1.2) < 0.05
    assert kurt["bimodal"] < -1.0
    assert kurt["student-t"] > 2.0  # population excess kurtosis 6 at df=5; sample estimate is noisy
    with pytest.raises(ValueError, match="shape"):
        data.shaped_samples(rng, "cauchy", 3, 1)


@pytest.mark.parametrize("kind", ["none", "mean", "scale", "shape"])
def test_covariate_shift_changes_one_aspect(kind):
    rng = np.random.default_rng(2)
    source, target = data.covariate_shift(rng, 100_000, 2, kind, shift=1.5, scale=3.0)
    assert source.shape == target.shape == (100_000, 2)
    want_mean = 1.5 if kind == "mean" else 0.0
    want_std = 3.0 if kind == "scale" else 1.0
    assert np.all(np.abs(source.mean(0)) < 0.02) and np.all(np.abs(source.std(0) - 1) < 0.02)
    assert np.all(np.abs(target.mean(0) - want_mean) < 0.02 * want_std)
    assert np.all(np.abs(target.std(0) / want_std - 1) < 0.02)
    ks = stats.ks_2samp(source[:, 0], (target[:, 0] - want_mean) / want_std).pvalue
    assert (ks < 1e-6) if kind == "shape" else (ks > 1e-4)


def test_gaussian_mixture_geometry_and_balance():
    rng = np.random.default_rng(0)
    means = data.mixture_means(rng, 20, 4, separation=5.0)
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert np.allclose(dist[~np.eye(4, dtype=bool)], 5.0)
    X, y = data.gaussian_mixture(rng, 40_001, 20, 4, std=0.5, means=means)
    assert X.shape == (40_001, 20) and y.dtype == np.int64
    assert np.bincount(y).max() - np.bincount(y).min() <= 1
    for c in range(4):
        assert np.allclose(X[y == c].mean(0), means[c], atol=0.03)
        assert np.allclose(X[y == c].std(0), 0.5, atol=0.03)
    # Same seed -> same data; means drawn from the rng when not given.
    a = data.gaussian_mixture(np.random.default_rng(9), 10, 5, 3)
    b = data.gaussian_mixture(np.random.default_rng(9), 10, 5, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_teacher_student_noise_level_and_reusable_teacher():
    rng = np.random.default_rng(4)
    teacher = data.random_teacher(rng, 8, 16, out=2)
    X, y = data.teacher_student(rng, 50_000, 8, 16, noise=0.3, out=2, teacher=teacher)
    assert X.shape == (50_000, 8) and y.shape == (50_000, 2)
    residual = y - teacher(X)
    assert np.allclose(residual.mean(0), 0.0, atol=0.01)
    assert np.allclose(residual.std(0), 0.3, rtol=0.02)
    assert teacher(X).std() > 0.2  # a non-trivial function
    X0, y0 = data.teacher_student(rng, 10, 8, 16, noise=0.0, out=2, teacher=teacher)
    assert np.array_equal(y0, teacher(X0))


@pytest.mark.parametrize("length_dist", ["full", "uniform", "short"])
def test_padded_sequences_masks_match_lengths(length_dist):
    rng = np.random.default_rng(8)
    x, mask, lengths = data.padded_sequences(rng, 500, 24, 3, length_dist, min_len=2)
    assert x.shape == (500, 24, 3) and mask.shape == (500, 24) and mask.dtype == bool
    assert np.array_equal(mask.sum(1), lengths)
    assert lengths.min() >= 2 and lengths.max() <= 24
    assert np.array_equal(mask, np.arange(24)[None] < lengths[:, None])  # valid prefix
    assert np.all(x[~mask] == 0.0) and np.all(x[mask] != 0.0)
    valid = x[mask]
    assert abs(valid.mean()) < 0.05 and abs(valid.std() - 1) < 0.05
    if length_dist == "full":
        assert np.all(lengths == 24)
    elif length_dist == "short":
        assert np.median(lengths) < 8  # most sequences short: lots of padding
    else:
        assert 10 < lengths.mean() < 16


# ---------------------------------------------------------------------------- augmented digits (the harder task)


def test_augment_with_no_moves_is_the_identity_exactly():
    X, _ = data.load_digits()
    out = data.augment_images(np.random.default_rng(0), X[:50], rotation=0.0, shift=0.0, scale=0.0, noise=0.0)
    np.testing.assert_array_equal(out, X[:50])


def test_augment_moves_pixels_and_stays_in_range():
    X, _ = data.load_digits()
    out = data.augment_images(np.random.default_rng(1), X[:200])
    assert out.shape == (200, 64) and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - X[:200]).mean() > 0.05  # every image moved or noisy, not a copy


def test_augmented_split_is_fixed_and_shares_the_clean_split():
    a = data.augmented_digits_split()
    data._augmented_split.cache_clear()
    b = data.augmented_digits_split()
    assert a is not b
    for name in ("X_train", "y_train", "X_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    clean = data.digits_split(0.25, 0.2)
    np.testing.assert_array_equal(a.test_index, clean.test_index)
    np.testing.assert_array_equal(a.y_test, clean.y_test)
    np.testing.assert_array_equal(a.train_index, np.repeat(clean.train_index, 4))
    assert a.X_train.shape == (4 * len(clean.X_train), 64) and a.X_train.dtype == np.float32
    assert not a.X_train.flags.writeable and not a.X_test.flags.writeable
    np.testing.assert_allclose(a.X_train.astype(np.float64).mean(axis=0), 0.0, atol=1e-5)


def test_augmented_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="copies"):
        data.augmented_digits_split(0)
    with pytest.raises(ValueError, match="validation_fraction"):
        data.augmented_digits_split(2, 1.0)
