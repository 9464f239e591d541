"""A content-addressed cache of seed runs, written atomically.

One file per (experiment, parameters, seed, code, versions): the key is the SHA-256 of
all of them, so any change to a claim's parameters, to the experiment's source or to
anything in the package it imports, or to numpy/scipy, re-runs exactly what it affects.
Files are written to a temporary name and renamed into place, so a kill at any moment
leaves either the old entry, the new one, or none — never half a file.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import bnclaims

PACKAGE_DIR = Path(bnclaims.__file__).resolve().parent


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "bnclaims"
    return Path.cwd() / ".bnclaims-cache"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _module_file(module: str) -> Path | None:
    """File of a module inside this package (``bnclaims.x.y``), or None for anything outside."""
    if module != "bnclaims" and not module.startswith("bnclaims."):
        return None
    parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


@functools.cache  # each file is parsed once however many experiments import it
def _imports(path: Path, module: str) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return frozenset(found)


@functools.cache
def dependency_files(module: str) -> tuple[Path, ...]:
    """Every file of this package that ``module`` imports, transitively (itself included)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        todo.extend(_imports(path, name))
    files = set(seen.values())
    if "bnclaims.data" in seen:  # data.py reads the shipped datasets
        files.update(p for p in (PACKAGE_DIR / "datasets").iterdir() if p.is_file())
    return tuple(sorted(files))


@functools.cache
def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_hashes(module: str) -> dict[str, str]:
    """{package-relative file name: sha256} of everything ``module`` depends on."""
    if not module.startswith("bnclaims."):
        # an experiment from outside the package: hash its own file
        mod = sys.modules.get(module)
        file = getattr(mod, "__file__", None)
        return {module: file_hash(Path(file))} if file else {module: "unknown"}
    return {str(p.relative_to(PACKAGE_DIR)): file_hash(p) for p in dependency_files(module)}


@functools.cache
def versions() -> dict[str, str]:
    import numpy
    import scipy

    return {
        "bnclaims": bnclaims.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Cache:
    """Seed-run results under ``root/runs`` and the last result of each claim under ``root/claims``."""

    def __init__(self, root: Path):
        self.root = root

    def _run_path(self, key: str) -> Path:
        return self.root / "runs" / key[:2] / f"{key}.json"

    def get_run(self, key: str) -> dict | None:
        try:
            data = json.loads(self._run_path(key).read_bytes())
        except (OSError, ValueError):
            return None  # missing or unreadable: treated as not cached
        return data if isinstance(data, dict) and data.get("key") == key else None

    def put_run(self, key: str, payload: dict) -> None:
        atomic_write(self._run_path(key), json.dumps({"key": key, **payload}, sort_keys=True).encode())

    def get_claim(self, claim_id: str) -> dict | None:
        try:
            data = json.loads((self.root / "claims" / f"{claim_id}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put_claim(self, claim_id: str, summary: dict) -> None:
        atomic_write(self.root / "claims" / f"{claim_id}.json", json.dumps(summary, sort_keys=True, indent=1).encode())
