"""Project configuration: ``[tool.bnclaims]`` in the nearest ``pyproject.toml``, for the CLI and the plugin.

The file is found as pytest, coverage and ruff find theirs: the nearest ``pyproject.toml`` from the
working directory upwards (the first one found is the project's, whether or not it has the table).
Paths in it are relative to the folder of that file. Keys::

    [tool.bnclaims]
    claims = "myclaims"                    # claims directory (default: claims/)
    experiments = ["myproject.experiments"]  # experiments modules to import
    paths = ["."]                          # put on the import path, here and in worker processes (default ".")
    cache-dir = ".bnclaims-cache"          # result cache (default: $XDG_CACHE_HOME/bnclaims or ./.bnclaims-cache)
    jobs = 4                               # worker processes (default: all cores)

Precedence, the same for the CLI and the plugin (both resolve it through ``bnclaims.app.settings``):
command line > environment (``$BNCLAIMS_EXPERIMENTS``) > ``[tool.bnclaims]`` > the pytest ini key
``bnclaims_experiments`` (an alias, read from the same ``pyproject.toml``'s ``[tool.pytest.ini_options]``
by the CLI, from any pytest configuration by the plugin). For the experiments modules the first of these
that names any module is used, whole: the sources are not merged. Every mistake in the table is one line
naming the file, the line and the key.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bnclaims.errors import UserError

PYPROJECT = "pyproject.toml"
TABLE = "tool.bnclaims"
ENV_EXPERIMENTS = "BNCLAIMS_EXPERIMENTS"
INI_EXPERIMENTS = "bnclaims_experiments"

# key -> (kind, what the value must be); kinds: "path", "paths", "modules", "jobs"
KEYS = {
    "claims": ("path", "a string (a directory, relative to the pyproject.toml)"),
    "experiments": ("modules", "a list of module names"),
    "paths": ("paths", "a list of strings (directories, relative to the pyproject.toml)"),
    "cache-dir": ("path", "a string (a directory, relative to the pyproject.toml)"),
    "jobs": ("jobs", "an integer, 1 or more"),
}

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ProjectConfig:
    """What the nearest ``pyproject.toml`` says (all empty when there is none, or it has no table)."""

    file: Path | None = None  # the pyproject.toml read, if any
    claims: Path | None = None
    experiments: tuple[str, ...] | None = None  # None: not set (an empty list is "no modules")
    paths: tuple[Path, ...] = ()
    cache_dir: Path | None = None
    jobs: int | None = None
    ini_experiments: tuple[str, ...] = ()  # [tool.pytest.ini_options] bnclaims_experiments, the alias
    keys: frozenset[str] = field(default_factory=frozenset)  # the keys the table sets

    @property
    def root(self) -> Path | None:
        return self.file.parent if self.file else None

    def where(self, key: str) -> str:
        """How a message names a key: ``pyproject.toml [tool.bnclaims] jobs``."""
        return f"{_shown(self.file)} [{TABLE}] {key}"


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` (default: the working directory) upwards."""
    here = Path(start if start is not None else os.getcwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / PYPROJECT
        if candidate.is_file():
            return candidate
    return None


def load(start: Path | None = None) -> ProjectConfig:
    """Read and check ``[tool.bnclaims]`` of the nearest ``pyproject.toml``; a mistake is a UserError (one line)."""
    path = find_pyproject(start)
    if path is None:
        return ProjectConfig()
    return parse(path)


def parse(path: Path) -> ProjectConfig:
    import tomllib

    shown = _shown(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{shown}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{shown}: invalid TOML ({e})") from None
    tool = data.get("tool")
    table = tool.get("bnclaims") if isinstance(tool, dict) else None
    ini = _ini_alias(path, text, tool)
    if table is None:
        return ProjectConfig(file=path, ini_experiments=ini)
    if not isinstance(table, dict):
        raise UserError(f"{_at(path, text, None)}: [{TABLE}] must be a table (found {_found(table)})")
    root = path.parent.absolute()
    values: dict[str, object] = {}
    for key, value in table.items():
        if key not in KEYS:
            from bnclaims.claims import did_you_mean

            raise UserError(f"{_at(path, text, key)}: unknown key in [{TABLE}] (found '{key}'"
                            f"{did_you_mean(key, KEYS)}); keys: {', '.join(KEYS)}")
        kind, wanted = KEYS[key]
        values[key] = _value(path, text, key, kind, wanted, value, root)
    return ProjectConfig(
        file=path, claims=values.get("claims"), experiments=values.get("experiments"),
        paths=values.get("paths", (root,)), cache_dir=values.get("cache-dir"), jobs=values.get("jobs"),
        ini_experiments=ini, keys=frozenset(values),
    )


def _value(path: Path, text: str, key: str, kind: str, wanted: str, value, root: Path):
    def wrong(detail: str | None = None):
        return UserError(f"{_at(path, text, key)}: [{TABLE}] {key} must be {wanted} (found {detail or _found(value)})")

    if kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise wrong()
        return _resolve(root, value, absolute=key != "claims")
    if kind == "jobs":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise wrong()
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise wrong()
    if kind == "modules":
        for name in value:
            if not _MODULE.match(name.strip()):
                raise wrong(f"{name!r}, not a module name")
        return tuple(dict.fromkeys(v.strip() for v in value))
    folders = []
    for entry in value:
        folder = _resolve(root, entry, absolute=True)
        if not entry.strip() or not folder.is_dir():
            raise UserError(f"{_at(path, text, key)}: [{TABLE}] {key}: no such directory {entry!r} "
                            f"(relative to {_shown(root) or '.'})")
        folders.append(folder)
    return tuple(dict.fromkeys(folders))


def _ini_alias(path: Path, text: str, tool) -> tuple[str, ...]:
    """``bnclaims_experiments`` in ``[tool.pytest.ini_options]`` (a list, or one string of lines/commas)."""
    options = tool.get("pytest", {}).get("ini_options", {}) if isinstance(tool, dict) else {}
    value = options.get(INI_EXPERIMENTS) if isinstance(options, dict) else None
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.split(r"[\s,]+", value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{_shown(path)}: [tool.pytest.ini_options] {INI_EXPERIMENTS} must be a list of module "
                        f"names (found {_found(value)})")
    return tuple(dict.fromkeys(v.strip() for v in value if v.strip()))


# --------------------------------------------------------------------------- precedence

def env_experiments() -> tuple[str, ...] | None:
    """Modules named in ``$BNCLAIMS_EXPERIMENTS`` (comma-separated); None when it is unset or empty."""
    names = tuple(m.strip() for m in os.environ.get(ENV_EXPERIMENTS, "").split(",") if m.strip())
    return tuple(dict.fromkeys(names)) or None


def experiment_modules(cli, project: ProjectConfig, ini=None) -> tuple[tuple[str, ...], str]:
    """The experiments modules and where they came from: the first source that names any, in the order
    command line > ``$BNCLAIMS_EXPERIMENTS`` > ``[tool.bnclaims] experiments`` > the ini key ``bnclaims_experiments``.

    ``ini`` is the plugin's ``config.getini`` value (pytest's own configuration file decides); the CLI passes
    None and the ini key is read from the pyproject.toml's ``[tool.pytest.ini_options]``. An empty ``experiments = []`` in the table counts as set (it silences the ini key)."""
    cli = tuple(dict.fromkeys(m.strip() for m in cli or () if m.strip()))
    if cli:
        return cli, "command line"
    env = env_experiments()
    if env:
        return env, f"${ENV_EXPERIMENTS}"
    if project.experiments is not None:
        return project.experiments, project.where("experiments")
    ini = tuple(dict.fromkeys(m.strip() for m in (project.ini_experiments if ini is None else ini) if m.strip()))
    return ini, INI_EXPERIMENTS if ini else "none"


def add_import_paths(project: ProjectConfig) -> None:
    """Put the table's ``paths`` at the front of ``sys.path`` (once each). Worker processes are started
    with the ``spawn`` method, which gives them this process's ``sys.path`` (a Dask ``LocalCluster``'s
    too), so they import the same modules."""
    for folder in reversed(project.paths):
        entry = str(folder)
        if entry not in sys.path:
            sys.path.insert(0, entry)


# --------------------------------------------------------------------------- helpers

def _resolve(root: Path, value: str, absolute: bool = False) -> Path:
    """A path from the table: relative to the pyproject.toml's folder (``~`` expanded); absolute, or (for
    what messages show) relative to the working directory when it is inside it."""
    path = Path(os.path.normpath(root.absolute() / Path(value.strip()).expanduser()))
    if absolute:
        return path
    try:
        return path.relative_to(Path.cwd().absolute()) if path != Path.cwd().absolute() else Path(".")
    except ValueError:
        return path


def _shown(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(path.absolute().relative_to(Path.cwd().absolute()))
    except ValueError:
        return str(path)


def _found(value) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:39] + '…'}"


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _at(path: Path, text: str, key: str | None) -> str:
    """``file:line`` of ``key`` in ``[tool.bnclaims]`` (or of the table's header), found in the text; just the
    file when it cannot be found (a dotted or inline form)."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            name = header.group(1).replace('"', "").replace("'", "").replace(" ", "")
            inside = name == TABLE
            if (inside and key is None) or (key is not None and name == f"{TABLE}.{key}"):
                return f"{_shown(path)}:{number}"  # the table, or a key that is a sub-table
            continue
        if inside and key is not None and re.match(rf"""^\s*(["']?){re.escape(key)}\1\s*=""", line):
            return f"{_shown(path)}:{number}"
    return _shown(path)
