"""An ordinary test of the project, beside its claims: the experiments module imports (from src/,
on the import path through [tool.bnclaims] paths) and returns its metrics."""

import numpy as np


def test_the_experiment_returns_its_metrics():
    from toyproject.experiments import bn_moments

    result = bn_moments(np.random.default_rng(0))
    assert set(result) == {"max_abs_mean", "max_std_gap", "max_mean_gap_affine"}
    assert result["max_abs_mean"] < 1e-9
