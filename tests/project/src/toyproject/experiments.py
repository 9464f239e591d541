"""The project's experiments, registered with bnclaims (named in [tool.bnclaims] experiments)."""

from __future__ import annotations

import numpy as np

from bnclaims.experiments import experiment
from bnclaims.nn import batchnorm_forward


@experiment("toyproject-bn-moments",
            metrics={"max_abs_mean": "largest |batch mean| of a feature after batch norm (without γ, β)",
                     "max_std_gap": "largest |batch std - 1| of a feature after batch norm (without γ, β)",
                     "max_mean_gap_affine": "largest |batch mean - β| of a feature with γ, β"})
def bn_moments(rng: np.random.Generator, *, batch: int = 64, features: int = 16, scale: float = 10.0) -> dict:
    """Normalize a random batch (features of spread ``scale``) in training mode and measure its moments."""
    x = rng.normal(3.0, scale, size=(batch, features))
    out, _ = batchnorm_forward(x, None, None)
    gamma, beta = rng.uniform(0.5, 2.0, features), rng.normal(0.0, 1.0, features)
    affine, _ = batchnorm_forward(x, gamma, beta)
    return {"max_abs_mean": float(np.abs(out.mean(axis=0)).max()),
            "max_std_gap": float(np.abs(out.std(axis=0) - 1.0).max()),
            "max_mean_gap_affine": float(np.abs(affine.mean(axis=0) - beta).max())}
