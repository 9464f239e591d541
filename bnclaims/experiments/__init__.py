"""The built-in experiments, one module per family (imported by `bnclaims.registry.load_all`).

The registry -- the `experiment` decorator, parameter types, `axes` and `spread` for outputs
declared by named axes -- is `bnclaims.registry`; its names are re-exported here, so experiment
modules (built-in or a user's) write ``from bnclaims.experiments import experiment``.
"""

from bnclaims.errors import ExperimentDefinitionError, ExperimentError  # noqa: F401 - re-exported
from bnclaims.registry import (  # noqa: F401 - re-exported
    _REGISTRY, NAME_PATTERN, Experiment, Param, Range, axes, check_value, experiment, get,
    json_schema, load_all, run_experiment, source_path, spread, type_name,
)
