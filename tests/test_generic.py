"""Tests of the generic experiment train-compare: claims about training written in YAML alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnclaims import experiments as registry
from bnclaims.claims import load_claims
from bnclaims.experiments import generic

ROOT = Path(__file__).resolve().parents[1]
THREADS = ROOT / "claims" / "threads"

CLAIM = """\
id: {id}
title: Batch norm trains at its best learning rate at least as well as a plain MLP
claim: A toy train-compare claim.
source:
  thread: 000_9d0fa3abc03cef76
  quote: "With fluctuating beta and gamma, the distribution also fluctuates."
tags: [toy]
experiment: train-compare
params:
  arms:
    bn: {{norm: batch, lr: [0.1, 0.3], epochs: 2, width: 32}}
    plain: {{norm: none, lr: 0.1, epochs: 2, width: 32}}
  target_accuracy: 0.8
seeds: 3
rule:
  conditions:
    - name: bn-at-least-as-good
      holds: {holds}
      tests: "With fluctuating"
plots:
  - title: validation accuracy
    x: curve_step_bn
    y: [{series}]
explanation: A toy.
scope: A toy scope.
"""


@pytest.fixture
def claims_dir(tmp_path: Path) -> Path:
    d = tmp_path / "claims"
    d.mkdir()
    shutil.copytree(THREADS, d / "threads", ignore=shutil.ignore_patterns("*.map.yaml", "*.answer.yaml"))
    return d


def load(claims_dir: Path, holds="mean(test_acc_bn - test_acc_plain) > -0.05", series="curve_val_acc_bn, curve_val_acc_plain"):
    path = claims_dir / "toy-train-compare.yaml"
    path.write_text(CLAIM.format(id="toy-train-compare", holds=holds, series=series), encoding="utf-8")
    return load_claims([path])


def test_a_train_compare_claim_passes_check(claims_dir):
    claims, problems = load(claims_dir)
    assert problems == [] and len(claims) == 1
    exp = registry.get("train-compare")
    metrics = exp.metric_names(claims[0].params)
    assert {"test_acc_bn", "gamma_step_bn", "diverged_plain", "max_lr_trains_plain"} <= set(metrics)
    assert "gamma_step_plain" not in metrics  # no gamma in an arm without normalization
    assert "curve_val_acc_plain" in exp.series_names(claims[0].params)


def test_a_train_compare_claim_passes_bnclaims_check_from_the_command_line(claims_dir):
    load(claims_dir)
    run = subprocess.run([sys.executable, "-m", "bnclaims", "check", str(claims_dir / "toy-train-compare.yaml")],
                         cwd=claims_dir.parent, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_unknown_arm_metric_gets_did_you_mean(claims_dir):
    _, problems = load(claims_dir, holds="mean(test_acc_bm - test_acc_plain) > -0.05")
    (problem,) = problems
    assert "unknown metric" in problem.message and "did you mean 'test_acc_bn'" in problem.message


def test_an_unknown_arm_series_in_a_plot_gets_did_you_mean(claims_dir):
    _, problems = load(claims_dir, series="curve_val_acc_bn, curve_val_acc_plian")
    (problem,) = problems
    assert "series" in problem.message and "did you mean 'curve_val_acc_plain'" in problem.message


@pytest.mark.parametrize("arms, fragment", [
    ("{bn: {norm: batchnorm}}", "parameter 'arms' must be mapping of name to settings"),
    ("{bn: {norm: batch, lr_grid: [0.1]}}", "parameter 'arms'"),        # unknown setting
    ("{bn: {norm: batch, lr: -0.1}}", "parameter 'arms'"),              # out of range
    ("{bn: {norm: batch, epochs: 2.5}}", "parameter 'arms'"),           # wrong type
    ("{Bad-Name: {norm: batch}}", "parameter 'arms'"),                  # not usable in a metric name
    ("{}", "parameter 'arms'"),                                          # no arm at all
])
def test_bad_arm_settings_are_refused_at_check(claims_dir, arms, fragment):
    text = CLAIM.format(id="toy-train-compare", holds="mean(test_acc_bn) > 0", series="curve_val_acc_bn")
    start = text.index("  arms:\n")
    end = text.index("  target_accuracy")
    text = text[:start] + f"  arms: {arms}\n" + text[end:]
    path = claims_dir / "toy-train-compare.yaml"
    path.write_text(text, encoding="utf-8")
    _, problems = load_claims([path])
    assert any(fragment in p.message for p in problems), [p.message for p in problems]


def test_params_schema_matches_the_checks():
    schema = registry.get("train-compare").params_schema()
    arms = schema["properties"]["arms"]
    assert arms["type"] == "object" and arms["propertyNames"]["pattern"] == registry.NAME_PATTERN
    settings = arms["additionalProperties"]
    assert settings["additionalProperties"] is False
    assert settings["properties"]["norm"]["enum"] == list(generic.model.NORMS)
    assert settings["properties"]["lr"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0}
    assert settings["properties"]["epochs"] == {"type": "integer", "minimum": 1, "maximum": 1000}


def test_a_diverging_arm_is_flagged_and_does_not_error_the_seed():
    exp = registry.get("train-compare")
    params = {"arms": {"wild": {"norm": "none", "lr": 1e4, "momentum": 0.9, "optimizer": "momentum", "epochs": 1,
                                "width": 16},
                       "calm": {"norm": "batch", "lr": [0.1, 1e4], "epochs": 1, "width": 16}}}
    out = registry.run_experiment(exp, 0, params)
    metrics = out["metrics"]
    assert metrics["diverged_wild"] == 1.0 and metrics["test_acc_wild"] == 0.0 and metrics["max_lr_trains_wild"] == 0.0
    assert metrics["diverged_calm"] == 0.0 and metrics["best_lr_calm"] == 0.1 and metrics["test_acc_calm"] > 0.5
    assert all(np.isfinite(v) for v in metrics.values())
    assert set(metrics) == set(exp.metric_names(params)) and set(out["series"]) == set(exp.series_names(params))
    assert out["series"]["grid_val_acc_calm"][1] < 0.2  # the rate 1e4 does not train (BN: stuck at chance)


def test_train_compare_is_deterministic_and_pairs_the_arms():
    exp = registry.get("train-compare")
    same = {"norm": "batch", "lr": 0.1, "epochs": 1, "width": 16}
    params = {"arms": {"a": same, "b": dict(same)}, "train_per_class": 20}
    first = registry.run_experiment(exp, 5, params)
    assert first == registry.run_experiment(exp, 5, params)
    # two arms with identical settings are the same network, trained on the same batches
    assert first["metrics"]["test_acc_a"] == first["metrics"]["test_acc_b"]
    assert first["series"]["curve_val_loss_a"] == first["series"]["curve_val_loss_b"]


def test_settings_that_depend_on_each_other_are_checked():
    with pytest.raises(ValueError, match="ghost_batch_size 12 must divide batch_size 32"):
        generic.check_arms({"g": {"norm": "ghost", "ghost_batch_size": 12}}, 1000)


def test_late_fluctuation_ignores_a_linear_trend():
    steps = np.arange(101, dtype=np.float64)
    trend = (0.01 * steps)[:, None]
    assert generic._late_fluctuation(trend, 100, 0.5) < 1e-12
    wiggle = trend + 0.1 * (-1.0) ** steps[:, None]
    assert abs(generic._late_fluctuation(wiggle, 100, 0.5) - 0.1) < 1e-3
    assert abs(generic._step_size(trend, 100) - 0.01) < 1e-12


def test_a_train_compare_claim_is_served_from_the_cache_and_its_page_describes_each_arm(claims_dir):
    load(claims_dir)  # (the fixture leaves out the real threads' maps and answers: they name the real claims)

    def bnclaims(*args):
        return subprocess.run([sys.executable, "-m", "bnclaims", *args, "--jobs", "1"], cwd=claims_dir.parent,
                              capture_output=True, text=True, timeout=600)

    first = bnclaims("run")
    assert first.returncode == 0, first.stdout + first.stderr
    second = bnclaims("build", "--out", "site", "--explain")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "warning" not in second.stderr.lower()
    assert "to run" not in second.stdout  # every seed came from the cache
    page = (claims_dir.parent / "site" / "claims" / "toy-train-compare.html").read_text()
    assert "<code>test_acc_bn</code>" in page and "<code>test_acc_plain</code>" in page


def test_new_metrics_train_accuracy_mode_comparison_and_input_noise():
    exp = registry.get("train-compare")
    base = {"lr": 0.3, "epochs": 2, "width": 16}
    params = {"arms": {"bn": {"norm": "batch", **base}, "plain": {"norm": "none", **base},
                       "free": {"norm": "batch", "reference": True, **base},
                       "ewa": {"norm": "running", **base}},
              "train_per_class": 10, "test_noise_std": 1.0}
    out = registry.run_experiment(exp, 1, params)
    metrics = out["metrics"]
    assert set(metrics) == set(exp.metric_names(params))
    # no batch statistics, nothing to change between the modes
    assert metrics["mode_flip_plain"] == 0.0 and metrics["mode_acc_gap_plain"] == 0.0
    for arm in ("bn", "plain", "free", "ewa"):
        assert 0.0 <= metrics[f"train_acc_{arm}"] <= 1.0 and 0.0 <= metrics[f"mode_flip_{arm}"] <= 1.0
        # noise of std 1 on standardized pixels costs accuracy
        assert metrics[f"noisy_test_acc_{arm}"] < metrics[f"test_acc_{arm}"]
        assert metrics[f"noise_acc_drop_{arm}"] == metrics[f"test_acc_{arm}"] - metrics[f"noisy_test_acc_{arm}"]
    # test batches of 32 against eval mode: batch statistics of 32 test images are not the running ones
    assert metrics["mode_flip_bn"] > 0.0
    # without test_noise_std the noise metric is not declared
    assert "noisy_test_acc_bn" not in exp.metric_names({"arms": {"bn": {"norm": "batch"}}})


def test_reference_statistics_need_batch_norm():
    with pytest.raises(ValueError, match="reference .* needs norm 'batch'"):
        generic.check_arms({"r": {"norm": "ghost", "reference": True}}, 1000)


def test_mode_comparison_of_running_averages_is_small_and_of_a_plain_network_zero():
    # running averages in training mode differ from eval mode only by the current batch's share (momentum 0.1)
    exp = registry.get("train-compare")
    base = {"lr": 0.1, "epochs": 3, "width": 32}
    params = {"arms": {"bn": {"norm": "batch", **base}, "ewa": {"norm": "running", **base}}, "train_per_class": 20}
    metrics = registry.run_experiment(exp, 2, params)["metrics"]
    assert metrics["mode_flip_ewa"] < metrics["mode_flip_bn"]


def test_norm_position_after_the_activation_is_a_different_network_from_the_same_start():
    exp = registry.get("train-compare")
    base = {"lr": 0.3, "epochs": 2, "width": 16}
    params = {"arms": {"before": {"norm": "batch", **base}, "after": {"norm": "batch", "norm_position": "after", **base},
                       "again": {"norm": "batch", "norm_position": "before", **base}}, "train_per_class": 10}
    metrics = registry.run_experiment(exp, 1, params)["metrics"]
    # the default is before the ReLU, so naming it changes nothing (same stack, bit for bit)
    assert metrics["test_acc_before"] == metrics["test_acc_again"]
    assert metrics["final_loss_before"] == metrics["final_loss_again"]
    # after the ReLU the same weights compute another function: the training differs
    assert metrics["final_loss_after"] != metrics["final_loss_before"]
    assert metrics["test_acc_after"] > 0.3 and metrics["diverged_after"] == 0.0


def test_residual_arms_need_two_hidden_layers_even_through_all_arms():
    with pytest.raises(ValueError, match="residual blocks need depth >= 2"):
        generic.check_arms({"r": {"depth": 1}}, 1000, {"residual": True})
    generic.check_arms({"r": {"depth": 2}}, 1000, {"residual": True})


def test_norm_position_after_needs_a_norm():
    with pytest.raises(ValueError, match="norm_position 'after' needs a norm"):
        generic.check_arms({"p": {"norm": "none", "norm_position": "after"}}, 1000)


def test_grid_flags_dead_units_and_the_trains_bar():
    exp = registry.get("train-compare")
    arms = {"calm": {"norm": "batch", "lr": [0.1, 1e4], "epochs": 1, "width": 16},
            "wild": {"norm": "none", "lr": 1e4, "momentum": 0.9, "optimizer": "momentum", "epochs": 1, "width": 16},
            "high": {"norm": "batch", "lr": 1e4, "epochs": 1, "width": 16}}
    out = registry.run_experiment(exp, 0, {"arms": arms})
    metrics, series = out["metrics"], out["series"]
    assert series["grid_diverged_calm"] == [0.0, 0.0] and series["grid_stuck_calm"] == [0.0, 1.0]
    assert series["grid_diverged_wild"] == [1.0] and series["grid_stuck_wild"] == [0.0]
    # a diverged network counts as all dead; BN stuck at chance has killed most of its last layer's ReLUs
    assert metrics["dead_units_wild"] == 1.0
    assert metrics["dead_units_high"] > 0.5 > metrics["dead_units_calm"]
    assert metrics["max_lr_trains_calm"] == 0.1
    strict = registry.run_experiment(exp, 0, {"arms": arms, "trains_accuracy": 0.999})["metrics"]
    assert strict["max_lr_trains_calm"] == 0.0                   # one epoch does not reach 99.9 %
    assert strict["test_acc_calm"] == metrics["test_acc_calm"]   # the bar changes nothing else


def test_all_arms_settings_apply_to_every_arm_unless_it_sets_its_own():
    exp = registry.get("train-compare")
    own = {"a": {"norm": "batch", "lr": 0.1, "epochs": 1, "width": 16},
           "b": {"norm": "none", "lr": 0.1, "epochs": 1, "width": 8}}
    shared = {"a": {"norm": "batch"}, "b": {"norm": "none", "width": 8}}
    params = {"arms": own, "train_per_class": 10}
    expected = registry.run_experiment(exp, 2, params)
    got = registry.run_experiment(exp, 2, {**params, "arms": shared,
                                          "all_arms": {"lr": 0.1, "epochs": 1, "width": 16}})
    assert got == expected
    # the metric names follow the merged settings too: no gamma metrics for an arm without affine
    assert "gamma_step_a" in generic.train_compare_names({"arms": shared})[0]
    assert "gamma_step_a" not in generic.train_compare_names({"arms": shared, "all_arms": {"affine": False}})[0]


def test_an_arm_repeating_another_arms_rate_is_trained_once_and_equals_its_run_alone():
    exp = registry.get("train-compare")
    base = {"norm": "batch", "epochs": 1, "width": 16}
    both = registry.run_experiment(exp, 3, {"arms": {"grid": {**base, "lr": [0.1, 0.3]}, "one": {**base, "lr": 0.3}},
                                            "train_per_class": 10})
    alone = registry.run_experiment(exp, 3, {"arms": {"one": {**base, "lr": 0.3}}, "train_per_class": 10})
    for name in ("test_acc", "final_loss", "val_acc", "gamma_step", "dead_units"):
        assert both["metrics"][f"{name}_one"] == alone["metrics"][f"{name}_one"]
    assert both["series"]["grid_val_acc_grid"][1] == both["metrics"]["val_acc_one"]


def test_residual_arms_are_pre_activation_residual_mlps():
    exp = registry.get("train-compare")
    base = {"norm": "batch", "lr": 0.1, "epochs": 5, "width": 16, "depth": 3}
    params = {"arms": {"res": {**base, "residual": True}, "mlp": base, "same": {**base, "residual": False}},
              "train_per_class": 10}
    metrics = registry.run_experiment(exp, 4, params)["metrics"]
    assert metrics["final_loss_same"] == metrics["final_loss_mlp"]
    assert metrics["final_loss_res"] != metrics["final_loss_mlp"] and metrics["test_acc_res"] > 0.3
