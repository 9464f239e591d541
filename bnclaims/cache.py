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
import importlib.util
import json
import math
import os
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Callable

import bnclaims

PACKAGE_DIR = Path(bnclaims.__file__).resolve().parent


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "bnclaims"
    return Path.cwd() / ".bnclaims-cache"


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as ``open()`` would create it under the current umask (mkstemp alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())  # a shared cache, JSON or site must be readable as any file the user makes
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


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so ``json.dumps(allow_nan=False)`` never fails
    and the output is JSON that every parser accepts (JavaScript's, jq's)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """Strict JSON text of ``value`` (non-finite numbers become null)."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


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
    """{file name: sha256} of everything ``module`` depends on: package-relative names for this package's
    files, module names for the files of an experiments module from outside it and of what it imports."""
    if module.startswith("bnclaims."):
        return {str(p.relative_to(PACKAGE_DIR)): file_hash(p) for p in dependency_files(module)}
    return dict(_external_hashes(module))


def _external_file(name: str) -> Path | None:
    """The source file of an importable module outside this package, without importing anything new."""
    mod = sys.modules.get(name)
    file = getattr(mod, "__file__", None) if mod is not None else None
    if file is None and mod is None and ("." not in name or name.rpartition(".")[0] in sys.modules):
        try:
            spec = importlib.util.find_spec(name)  # a lazy import: located, not run
        except (ImportError, ValueError, AttributeError):
            spec = None
        file = spec.origin if spec is not None and spec.has_location else None
    if not file or not file.endswith(".py") or not os.path.isfile(file):
        return None
    return Path(file).resolve()


def _user_root(module: str, file: Path) -> Path:
    """The directory whose modules count as the user's code: the one ``module`` was imported from, or
    its top-level package when that directory is an installation (site-packages, the standard library)."""
    depth = module.count(".") + (file.name == "__init__.py")
    root = file.parent
    for _ in range(depth):
        root = root.parent
    shared = {Path(p).resolve() for p in (sysconfig.get_paths().get(k) for k in ("purelib", "platlib", "stdlib"))
              if p}
    if root in shared or root.name in ("site-packages", "dist-packages"):
        root = root / module.split(".")[0]
    return root


@functools.cache
def _external_hashes(module: str) -> tuple[tuple[str, str], ...]:
    """The import closure of a user's experiments module: every module it imports, transitively, whose
    file lives beside it (under the same import root), plus this package's files that any of them use.
    Editing a helper the experiment imports then re-runs it, as editing the package does."""
    file = _external_file(module)
    if file is None:
        return ((module, "unknown"),)
    root = _user_root(module, file)
    hashes: dict[str, str] = {}
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == "bnclaims" or name.startswith("bnclaims."):
            hashes.update((str(p.relative_to(PACKAGE_DIR)), file_hash(p)) for p in dependency_files(name))
            continue
        path = _external_file(name)
        if path is None or not path.is_relative_to(root) or path.is_relative_to(PACKAGE_DIR):
            continue
        hashes[name] = file_hash(path)
        try:
            todo.extend(_imports(path, name))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            pass  # hashed, but its imports cannot be read: what it imports is not followed
    return tuple(sorted(hashes.items()))


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


@functools.cache
def blas() -> str:
    """The BLAS library numpy uses and the kernel it chose at run time, e.g. "scipy-openblas
    0.3.31 (kernel Haswell)": results differ in late digits between kernels. What numpy reports,
    plus OpenBLAS's own answer for the kernel where the library exposes it (no extra dependency)."""
    import ctypes

    import numpy

    try:
        info = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{info.get('name', 'unknown')} {info.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - an old numpy or an unusual build: say what we know
        name = "unknown BLAS"
    kernel = None
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            libraries = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
        for library in libraries:
            handle = ctypes.CDLL(library)
            for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                           "openblas_get_corename64_", "openblas_get_corename"):
                function = getattr(handle, symbol, None)
                if function is not None:
                    function.restype = ctypes.c_char_p
                    kernel = function().decode(errors="replace")
                    break
            if kernel:
                break
    except (OSError, AttributeError):
        pass  # no /proc (not Linux) or no such symbol: the kernel is not known
    return f"{name} (kernel {kernel})" if kernel else name


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def valid_run(entry: Any, key: str, metrics: frozenset[str] | None = None,
              series: frozenset[str] | None = None) -> bool:
    """Whether a cached seed run has the shape the runner relies on (and, when given, exactly these names)."""
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    m, s = entry.get("metrics"), entry.get("series")
    if not isinstance(m, dict) or not all(isinstance(k, str) and _finite_number(v) for k, v in m.items()):
        return False
    if not isinstance(s, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(x is None or _finite_number(x) for x in v)
            for k, v in s.items()):
        return False
    if not _finite_number(entry.get("seconds")) or not _finite_number(entry.get("cpu_seconds", 0.0)):
        return False
    return (metrics is None or set(m) == metrics) and (series is None or set(s) == series)


def valid_summary(entry: Any) -> bool:
    """Whether a claim's last-run record has the shape ``list`` and ``--explain`` rely on."""
    if not isinstance(entry, dict) or not isinstance(entry.get("verdict", ""), str):
        return False
    components = entry.get("components", {})
    if not isinstance(components, dict):
        return False
    return all(isinstance(components.get(k, {}), dict) for k in ("params", "code", "versions")) and \
        isinstance(components.get("seeds", []), list)


def _warn(message: str) -> None:
    print(f"bnclaims: warning: {message}", file=sys.stderr, flush=True)


class Cache:
    """Seed-run results under ``root/runs`` and the last result of each claim under ``root/claims``.

    The cache only ever saves work: an entry that cannot be read, or holds something other than a
    result, is a miss (named once in a warning); a cache that cannot be written (read-only, full,
    not a directory) is named once in a warning and the run goes on without it."""

    def __init__(self, root: Path, warn: Callable[[str], None] = _warn):
        self.root = root
        self.warn = warn
        self.writable = True
        self._warned: set[str] = set()

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.warn(message)

    def _run_path(self, key: str) -> Path:
        return self.root / "runs" / key[:2] / f"{key}.json"

    def _read(self, path: Path) -> Any:
        """The parsed entry, or None when missing or unreadable (which is a miss, not a problem)."""
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
                raise ValueError("not a cache entry")
            return json.loads(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None  # not cached (NotADirectoryError: --cache-dir names a file; the write says so)
        except (OSError, ValueError, RecursionError):
            self._warn_once(str(path), f"ignoring unreadable cache entry {path}; it will be recomputed")
            return None

    def get_run(self, key: str, metrics: frozenset[str] | None = None,
                series: frozenset[str] | None = None) -> dict | None:
        path = self._run_path(key)
        data = self._read(path)
        if data is None:
            return None
        if not valid_run(data, key, metrics, series):
            self._warn_once(str(path), f"ignoring invalid cache entry {path}; it will be recomputed")
            return None
        return data

    def _write(self, path: Path, data: bytes) -> None:
        if not self.writable:
            return
        try:
            atomic_write(path, data)
        except OSError as e:
            self.writable = False
            self._warn_once("write", f"cannot write the cache in {self.root} ({e.strerror or e}); "
                                     "going on without caching")

    def put_run(self, key: str, payload: dict) -> None:
        self._write(self._run_path(key), dumps({"key": key, **payload}, sort_keys=True).encode())

    def get_claim(self, claim_id: str) -> dict | None:
        path = self.root / "claims" / f"{claim_id}.json"
        data = self._read(path)
        if data is None:
            return None
        if not valid_summary(data):
            self._warn_once(str(path), f"ignoring invalid cache entry {path}")
            return None
        return data

    def put_claim(self, claim_id: str, summary: dict) -> None:
        self._write(self.root / "claims" / f"{claim_id}.json", dumps(summary, sort_keys=True, indent=1).encode())


MAX_ENTRY_BYTES = 256 << 20  # a seed's metrics and series; anything bigger was not written by bnclaims
