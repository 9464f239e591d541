"""Experiment registry: the `experiment` decorator, parameter types and checks, and `load_all`.

The built-in experiments live in `bnclaims.experiments`, which re-exports these names.

An experiment is a plain function registered by name::

    @experiment(
        "bn-output-moments",
        metrics={"max_abs_mean": "largest |batch mean| of the normalized output"},
        series={"batch_size": "batch sizes swept (x axis)"},
    )
    def output_moments(rng: np.random.Generator, *, batch_size: int = 32, eps: float = 1e-5):
        ...
        return {"max_abs_mean": 1e-8, "batch_size": np.array([...])}

* the first argument is a ``numpy.random.Generator`` (the only source of randomness);
* every other parameter is keyword-only, annotated and has a default; annotations are
  restricted to ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``list[...]``,
  unions of those (``float | list[float]``), ``Annotated[int | float, Range(...)]`` (bounds),
  ``dict[str, ...]`` (a mapping from names the claim chooses) and ``TypedDict`` classes (named
  settings, every key optional), so claim files can be checked against them without running
  anything, and each parameter has a JSON Schema (`json_schema`, `Experiment.params_schema`);
* it returns a dict with every declared metric (a finite scalar, used by verdict rules)
  and every declared series (a 1-D array, used by plots); nothing else.

Metric and series names may depend on the parameters (``test_acc_<arm>`` for each arm a claim
declares): such an experiment passes ``names=fn``, where ``fn(params)`` (params with defaults
filled in) returns ``(metrics, series)`` dicts of name: description. Everyone asks the record,
never the decorator's dicts: ``exp.metric_names(params)``, ``exp.series_names(params)``.

Experiments never read files, print or touch global state.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import pkgutil
import re
import types
import typing
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from bnclaims.errors import ExperimentDefinitionError, ExperimentError

MAX_SERIES_POINTS = 1_000_000  # per series and seed: plots need far fewer, and the cache keeps every point

_SCALARS = (int, float, bool, str)


@dataclass(frozen=True)
class Range:
    """Bounds for ``Annotated[int, Range(1)]`` or ``Annotated[float, Range(0, 1, low_open=True)]``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return not (self.high is not None and (value > self.high or self.high_open and value == self.high))

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else ""

    def schema(self) -> dict:
        out = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return out


def _is_typed_dict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__annotations__") \
        and hasattr(annotation, "__total__")


def _typed_dict_fields(annotation: Any) -> dict[str, Any]:
    return typing.get_type_hints(annotation, include_extras=True)


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any

    @property
    def type_name(self) -> str:
        return type_name(self.annotation)


@dataclass(frozen=True)
class Experiment:
    name: str
    func: Callable[..., dict]
    metrics: dict[str, str]  # fixed names; with `names`, the patterns shown in listings
    series: dict[str, str]
    params: dict[str, Param]
    module: str
    source_file: str
    first_line: int
    doc: str = ""
    extra: dict = field(default_factory=dict)
    names: Callable[[dict], tuple[dict[str, str], dict[str, str]]] | None = None

    def defaults(self) -> dict[str, Any]:
        return {name: p.default for name, p in self.params.items()}

    def _names(self, params: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, str]]:
        if self.names is None:
            return self.metrics, self.series
        full = self.defaults()
        full.update(params or {})
        try:
            metrics, series = self.names(full)
        except Exception:  # noqa: BLE001 - invalid params: reported by the parameter check itself
            return self.metrics, self.series
        return dict(metrics), dict(series)

    def metric_names(self, params: dict[str, Any] | None = None) -> dict[str, str]:
        """{name: description} of the metrics this experiment returns for ``params`` (defaults filled in)."""
        return self._names(params)[0]

    def series_names(self, params: dict[str, Any] | None = None) -> dict[str, str]:
        """{name: description} of the series this experiment returns for ``params``."""
        return self._names(params)[1]

    def resolved(self, params: dict[str, Any] | None = None) -> "Experiment":
        """This record with ``metrics``/``series`` set to the names for ``params`` (itself when fixed)."""
        if self.names is None:
            return self
        metrics, series = self._names(params)
        return dataclasses.replace(self, metrics=metrics, series=series)

    def params_schema(self) -> dict:
        """JSON Schema of this experiment's ``params`` mapping."""
        return {"type": "object", "additionalProperties": False,
                "properties": {name: {**json_schema(p.annotation), "default": p.default}
                               for name, p in self.params.items()}}


_REGISTRY: dict[str, Experiment] = {}
_LOADED = False


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_name(item)}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        bounds = " ".join(e.text() for e in extras if isinstance(e, Range))
        return f"{type_name(base)} {bounds}".strip()
    if _is_union(origin):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is dict:
        return f"mapping of name to {type_name(typing.get_args(annotation)[1])}"
    if _is_typed_dict(annotation):
        fields = ", ".join(f"{k}: {type_name(v)}" for k, v in _typed_dict_fields(annotation).items())
        return f"settings {{{fields}}}"
    return getattr(annotation, "__name__", str(annotation))


def json_schema(annotation: Any) -> dict:
    """The JSON Schema of a parameter annotation (for editors; `check_value` is the same check)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return {"type": "array", "items": json_schema(typing.get_args(annotation)[0])}
    if origin is Literal:
        return {"enum": list(typing.get_args(annotation))}
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        out = json_schema(base)
        for e in extras:
            if isinstance(e, Range):
                out.update(e.schema())
        return out
    if _is_union(origin):
        return {"anyOf": [json_schema(a) for a in typing.get_args(annotation)]}
    if origin is dict:
        return {"type": "object", "propertyNames": {"pattern": NAME_PATTERN},
                "additionalProperties": json_schema(typing.get_args(annotation)[1])}
    if _is_typed_dict(annotation):
        return {"type": "object", "additionalProperties": False,
                "properties": {k: json_schema(v) for k, v in _typed_dict_fields(annotation).items()},
                **({"description": inspect.getdoc(annotation)} if annotation.__doc__ else {})}
    return {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
            str: {"type": "string"}}[annotation]


NAME_PATTERN = "^[a-z][a-z0-9_]*$"  # keys of dict[str, ...] params: they become parts of metric names


def _check_annotation(where: str, annotation: Any) -> None:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        if not all(isinstance(e, Range) for e in extras) or base not in (int, float):
            raise ExperimentDefinitionError(f"{where}: Annotated[...] takes int or float with Range(...) bounds")
    elif _is_union(origin):
        for arg in typing.get_args(annotation):
            _check_annotation(where, arg)
    elif origin is dict:
        key, value = typing.get_args(annotation)
        if key is not str:
            raise ExperimentDefinitionError(f"{where}: dict parameters map str names to values (dict[str, ...])")
        _check_annotation(where, value)
    elif _is_typed_dict(annotation):
        for key, value in _typed_dict_fields(annotation).items():
            _check_annotation(f"{where}, setting {key!r}", value)
    elif origin is list:
        args = typing.get_args(annotation)
        if len(args) != 1:
            raise ExperimentDefinitionError(f"{where}: list needs one item type, as list[float]")
        _check_annotation(where, args[0])
    elif origin is Literal:
        if not all(isinstance(a, _SCALARS) for a in typing.get_args(annotation)):
            raise ExperimentDefinitionError(f"{where}: Literal values must be int, float, bool or str")
    elif annotation is None:
        raise ExperimentDefinitionError(f"{where}: has no type annotation (annotate it: int, float, bool, str, "
                                        "Literal[...] or list[...])")
    elif annotation not in _SCALARS:
        raise ExperimentDefinitionError(f"{where}: unsupported parameter annotation {type_name(annotation)!r} "
                                        "(use int, float, bool, str, Literal[...] or list[...])")


def _where(func: Callable) -> str:
    """``file:line: function 'name'`` for errors in an experiment's definition."""
    code = getattr(func, "__code__", None)
    place = f"{code.co_filename}:{code.co_firstlineno}: " if code is not None else ""
    return f"{place}function {getattr(func, '__qualname__', repr(func))!r}"


def experiment(name: str, *, metrics: dict[str, str], series: dict[str, str] | None = None,
               names: Callable[[dict], tuple[dict[str, str], dict[str, str]]] | None = None):
    """Register ``func`` as the experiment ``name``; see the module docstring.

    ``names(params)``, when given, returns the (metrics, series) for a claim's params; ``metrics``
    and ``series`` are then what listings show (patterns such as ``test_acc_<arm>``).
    """

    def register(func: Callable[..., dict]) -> Callable[..., dict]:
        where_func = f"{_where(func)} (experiment {name!r})"
        if not callable(func):
            raise ExperimentDefinitionError(f"experiment {name!r}: @experiment must decorate a function")
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ExperimentDefinitionError(f"{where_func}: experiment {name!r} registered twice "
                                            f"(also {_where(_REGISTRY[name].func)})")
        try:
            hints = typing.get_type_hints(func, include_extras=True)
            signature = inspect.signature(func)
        except Exception as e:  # noqa: BLE001 - an annotation that does not evaluate, a builtin...
            raise ExperimentDefinitionError(f"{where_func}: cannot read its signature "
                                            f"({type(e).__name__}: {e})") from None
        parameters = list(signature.parameters.values())
        if not parameters or parameters[0].name != "rng":
            raise ExperimentDefinitionError(f"{where_func}: first parameter must be 'rng'")
        params = {}
        for p in parameters[1:]:
            where = f"{where_func}, parameter {p.name!r}"
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
                raise ExperimentDefinitionError(f"{where}: must be keyword-only with a default "
                                                f"(def f(rng, *, {p.name}: float = 1.0))")
            _check_annotation(where, hints.get(p.name))
            params[p.name] = Param(p.name, hints[p.name], p.default)
        if not isinstance(metrics, dict) or not isinstance(series or {}, dict):
            raise ExperimentDefinitionError(f"{where_func}: metrics and series must be dicts of name: description")
        overlap = set(metrics) & set(series or {})
        if overlap:
            raise ExperimentDefinitionError(f"{where_func}: names both metric and series: {sorted(overlap)}")
        lines, first_line = inspect.getsourcelines(func)
        _REGISTRY[name] = Experiment(
            name=name,
            func=func,
            metrics=dict(metrics),
            series=dict(series or {}),
            params=params,
            module=func.__module__,
            source_file=inspect.getsourcefile(func) or "",
            first_line=first_line,
            doc=inspect.getdoc(func) or "",
            names=names,
        )
        return func

    return register


_AXES_KEY = re.compile(r"(\w+)\[\s*(\w+(?:\s*,\s*\w+)*)\s*\]")
_AXIS_FIELD = re.compile(r"\{(\w+)\}")


def _axis_key(key: str) -> str:
    """``name[a, b]`` -> ``name_{a}_{b}``; other keys unchanged."""
    m = _AXES_KEY.fullmatch(key)
    return "_".join([m[1]] + ["{%s}" % a.strip() for a in m[2].split(",")]) if m else key


def _cells(key: str, axes: dict) -> list[tuple[str, dict[str, str]]]:
    """Every (flat name, {axis: label}) of a declaration key, in the axes' order (first axis slowest)."""
    key = _axis_key(key)
    names = list(dict.fromkeys(_AXIS_FIELD.findall(key)))
    unknown = [n for n in names if n not in axes]
    if unknown:
        raise ExperimentDefinitionError(f"output {key!r} names axes {unknown} that are not given")
    values = [list(axes[n].items()) if isinstance(axes[n], dict) else [(v, v) for v in axes[n]] for n in names]
    return [(key.format(**{n: v for n, (v, _) in zip(names, combo)}), {n: lab for n, (_, lab) in zip(names, combo)})
            for combo in itertools.product(*values)]


def axes(entries: dict[str, str], **axes) -> dict[str, str]:
    """Declare outputs once by named axes; the registry and the rules see the flat names.

    ``axes({"test_acc[arm]": "test accuracy, {arm}"}, arm={"bn": "BN MLP", "plain": "plain MLP"})``
    declares ``test_acc_bn`` ("test accuracy, BN MLP") and ``test_acc_plain``. ``name[a, b]`` is
    short for ``name_{a}_{b}``; a ``{axis}`` anywhere in a key takes each value of that axis (first
    axis slowest), and in the description each value's label (the value itself when the axis is a
    list rather than a dict of value: label). Keys that name no axis pass through unchanged.
    """
    out: dict[str, str] = {}
    for key, text in entries.items():
        for name, labels in _cells(key, axes):
            out[name] = text.format(**labels) if labels else text
    return out


def spread(key: str, values, **axes) -> dict[str, Any]:
    """The results side of `axes`: ``spread("test_acc[arm]", acc, arm=("bn", "plain"))`` is
    ``{"test_acc_bn": acc[0], "test_acc_plain": acc[1]}``; ``values`` has one leading axis per named
    axis, in the order the key names them (a scalar metric comes out as a Python float)."""
    cells = _cells(key, axes)
    flat = np.asarray(values).reshape((len(cells),) + np.shape(values)[len(_AXIS_FIELD.findall(_axis_key(key))):])
    return {name: float(v) if np.ndim(v) == 0 else v for (name, _), v in zip(cells, flat)}


def load_all() -> dict[str, Experiment]:
    """Import every module of this package (registering its experiments); return the registry."""
    global _LOADED
    if not _LOADED:
        package = importlib.import_module("bnclaims.experiments")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"bnclaims.experiments.{info.name}")
        _LOADED = True
    return _REGISTRY


def get(name: str) -> Experiment:
    return load_all()[name]


def check_value(annotation: Any, value: Any) -> tuple[bool, Any]:
    """Return (ok, converted value) for a claim-file value against a parameter annotation.

    ``bool`` is never accepted for ``int``/``float``; an ``int`` is accepted for ``float``.
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        ok, converted = check_value(base, value)
        return (True, converted) if ok and all(converted in e for e in extras if isinstance(e, Range)) else (False, None)
    if _is_union(origin):
        for arg in typing.get_args(annotation):
            ok, converted = check_value(arg, value)
            if ok:
                return True, converted
        return False, None
    if origin is dict:
        item = typing.get_args(annotation)[1]
        if not isinstance(value, dict) or not value:
            return False, None
        out = {}
        for key, v in value.items():
            ok, converted = check_value(item, v)
            if not isinstance(key, str) or not re.match(NAME_PATTERN, key) or not ok:
                return False, None
            out[key] = converted
        return True, out
    if _is_typed_dict(annotation):
        fields = _typed_dict_fields(annotation)
        if not isinstance(value, dict) or set(value) - set(fields):
            return False, None
        out = {}
        for key, v in value.items():
            ok, converted = check_value(fields[key], v)
            if not ok:
                return False, None
            out[key] = converted
        return True, out
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            return False, None
        out = []
        for v in value:
            ok, converted = check_value(item, v)
            if not ok:
                return False, None
            out.append(converted)
        return True, out
    if origin is Literal:
        choices = typing.get_args(annotation)
        ok = any(type(value) is type(c) and value == c for c in choices)
        return ok, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None
        return True, float(value)
    if annotation is str:
        return isinstance(value, str), value
    return False, None


def run_experiment(exp: Experiment, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """Call ``exp`` with a fresh Generator for ``seed`` and validate what it returns.

    Returns ``{"metrics": {name: float}, "series": {name: list[float]}}``.
    Raises ExperimentError when the result is missing names or holds NaN/inf scalars.
    """
    rng = np.random.default_rng(seed)
    kwargs = exp.defaults()
    kwargs.update(params)
    exp = exp.resolved(kwargs)
    out = exp.func(rng, **kwargs)
    if not isinstance(out, dict):
        raise ExperimentError(f"experiment {exp.name!r} returned {type(out).__name__}, not a dict")
    missing = [n for n in list(exp.metrics) + list(exp.series) if n not in out]
    if missing:
        raise ExperimentError(f"experiment {exp.name!r} did not return {', '.join(missing)}")
    undeclared = sorted(set(out) - set(exp.metrics) - set(exp.series))
    if undeclared:
        raise ExperimentError(f"experiment {exp.name!r} returned undeclared {', '.join(undeclared)}")
    metrics: dict[str, float] = {}
    for name in exp.metrics:
        value = np.asarray(out[name])
        if value.shape != ():
            raise ExperimentError(f"metric {name!r} is not a scalar (shape {value.shape})")
        value = float(value)
        if not np.isfinite(value):
            raise ExperimentError(f"metric {name!r} is {value}")
        metrics[name] = value
    series: dict[str, list[float]] = {}
    for name in exp.series:
        value = np.asarray(out[name], dtype=np.float64)
        if value.ndim != 1:
            raise ExperimentError(f"series {name!r} is not 1-D (shape {value.shape})")
        if value.size > MAX_SERIES_POINTS:
            raise ExperimentError(f"series {name!r} has {value.size} points (at most {MAX_SERIES_POINTS:,}; "
                                  "thin it, e.g. every 10th step)")
        if np.isinf(value).any():
            raise ExperimentError(f"series {name!r} holds inf; use NaN for a missing point")
        series[name] = [None if np.isnan(v) else float(v) for v in value]
    return {"metrics": metrics, "series": series}


def source_path(exp: Experiment) -> Path:
    return Path(exp.source_file)
