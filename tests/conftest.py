import sys
from pathlib import Path

# Import what in-process pytester runs would otherwise import first and then unload
# (pytester restores sys.modules afterwards; numpy's C core cannot be loaded twice).
import numpy  # noqa: F401
import scipy.stats  # noqa: F401

import bnclaims.render  # noqa: F401
import bnclaims.runner  # noqa: F401

# toy experiments used by engine tests (imported as `toy_experiments`)
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

pytest_plugins = ["pytester"]

# a user's project (its own pyproject.toml, claims and tests), run by tests/test_config.py in a copy:
# never collected in place
collect_ignore = ["project"]
