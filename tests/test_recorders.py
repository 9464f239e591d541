"""The measuring helpers the experiments share (`bnclaims.recorders`)."""

from types import SimpleNamespace

import numpy as np
import pytest

from bnclaims import model, recorders


def test_steps_to_takes_the_first_checkpoint_at_the_target_and_censors_the_rest():
    curve = np.array([[0.1, 0.96, 0.9, 0.97], [0.1, 0.2, 0.3, 0.4]])
    steps = np.array([0, 5, 10, 15])
    np.testing.assert_array_equal(recorders.steps_to(curve, steps, 0.95), [5.0, np.nan])
    assert recorders.steps_to(curve, steps, 0.95, never=99).tolist() == [5.0, 99.0]


def test_masked_accuracy_scores_a_dead_arm_zero():
    logits = np.zeros((2, 3, 4))
    logits[:, np.arange(3), [0, 1, 2]] = 1.0
    y = np.array([0, 1, 3])
    assert recorders.masked_accuracy(logits, y, np.array([True, False])).tolist() == [2 / 3, 0.0]


def test_nan_after_divergence_blanks_each_arm_from_its_diverging_step():
    result = SimpleNamespace(diverged=np.array([False, True]), taken=np.array([5, 2]))
    values = recorders.nan_after_divergence(np.ones((4, 2)), np.array([0, 1, 2, 3]), result)
    assert np.isfinite(values[:, 0]).all()
    assert np.isfinite(values[:2, 1]).all() and np.isnan(values[2:, 1]).all()


def test_block_averages_average_whole_blocks_only():
    hook = recorders.BlockAverages(["w"], block=2)
    for step in range(5):
        hook(step, SimpleNamespace(params={"w": np.full((1, 3), float(step), dtype=np.float32)}))
    np.testing.assert_array_equal(hook.arrays()["w"][:, 0, 0], [0.5, 2.5])


def test_subsets_and_lrs_per_arm():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 7)
    index = recorders.per_class_subset(rng, y, 3)
    assert np.all(np.diff(index) > 0) and np.bincount(y[index]).tolist() == [3] * 10
    rows = recorders.sample_rows(rng, 20, 50)
    assert rows.tolist() == list(range(20))
    assert recorders.lrs_per_arm([], ("a", "b")) and not recorders.lrs_per_arm([0.1, 0.2], ("a", "b"))
    with pytest.raises(ValueError, match="one learning rate per arm"):
        recorders.lrs_per_arm([0.1], ("a", "b"))


def test_train_on_plan_pairs_arms_and_checkpoints_pad_with_dead():
    split = recorders.digits()
    config = model.MLPConfig(sizes=(64, 8, 10), norm="batch")
    plan = model.batch_plan(np.random.default_rng(1), len(split.y_train), 16, 6)
    params = model.init_params(np.random.default_rng(2), config)
    hook = recorders.Checkpoints(2, lambda index, p, alive: np.where(alive, index, -1.0), dead=-2.0)
    result = recorders.train_on_plan(config, split.X_train, split.y_train, [0.1, 1e6], plan, params, record=hook)
    assert result.diverged.tolist() == [False, True]
    values = hook.values(5)
    assert values.shape == (5, 2) and values[0].tolist() == [0, 0] and values[-1].tolist() == [-2.0, -2.0]
    alone = recorders.train_on_plan(config, split.X_train, split.y_train, [0.1], plan, params)
    np.testing.assert_array_equal(alone.params["W0"][0], result.params["W0"][0])
    assert recorders.eval_accuracy(result, split.X_val, split.y_val)[1] == 0.0


def test_dataset_split_digits_is_the_shared_split_and_augmented_keeps_the_roles():
    plain, digits = recorders.dataset_split("digits"), recorders.digits()
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert np.array_equal(getattr(plain, name), getattr(digits, name))
    augmented = recorders.dataset_split("augmented")
    assert augmented.X_train.shape == (4 * len(digits.y_train), 64) and augmented.X_train.dtype == np.float32
    assert np.array_equal(augmented.y_val, digits.y_val) and np.array_equal(augmented.y_test, digits.y_test)
    assert not np.array_equal(augmented.X_test, digits.X_test)   # the same test images, moved and noisy
    with pytest.raises(ValueError, match="dataset must be one of digits, augmented"):
        recorders.dataset_split("cifar")


def test_mlp_options_leave_the_default_config_and_switch_on_residual_blocks():
    sizes = (64, 16, 16, 10)
    assert model.MLPConfig(sizes, **recorders.mlp_options(False)) == model.MLPConfig(sizes)
    residual = model.MLPConfig(sizes, **recorders.mlp_options(True))
    assert residual.residual and residual.residual_layers == (1,)


def test_net_config_builds_the_mlp_as_before_or_the_digits_cnn():
    assert recorders.net_config("mlp", [16, 16], "batch") == model.MLPConfig((64, 16, 16, 10), norm="batch")
    assert recorders.net_config("mlp", [16, 16], residual=True).residual
    cnn = recorders.net_config("cnn", [4, 8], "batch")
    assert isinstance(cnn, model.CNNConfig) and cnn.channels == (4, 8) and cnn.strides == (1, 1)
    assert cnn.sizes == (64, 4, 8, 10) and cnn.norm == "batch"
    with pytest.raises(ValueError, match="arch must be one of mlp, cnn"):
        recorders.net_config("rnn", [4])
    with pytest.raises(ValueError, match="arch 'cnn' takes no residual"):
        recorders.net_config("cnn", [4, 4], residual=True)
