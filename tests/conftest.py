import sys
from pathlib import Path

# toy experiments used by engine tests (imported as `toy_experiments`)
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

pytest_plugins = ["pytester"]
