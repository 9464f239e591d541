"""Safe YAML reading that keeps the position of every value.

Claim files are parsed to a node tree (``yaml.compose`` with the pure-Python safe
loader) and converted to plain data by hand, so that:

* every mapping, sequence and scalar keeps its line and column (``Located``);
* duplicate keys, aliases, non-standard tags (``!!python/...``) and deep nesting are
  refused with a position instead of being silently accepted or crashing;
* nothing in the file can make the loader run code or expand an alias bomb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent

from bnclaims.errors import Problem

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32

# What YAML refuses to see raw, still reachable through "\e", "\x00", "\ud800" escapes: it would drive a
# terminal, break a one-line message, or fail to encode when the site is written. Tab and newline are text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_STANDARD_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:map",
}


@dataclass(frozen=True)
class Located:
    """A value read from YAML with its 1-based position."""

    value: Any  # str | int | float | bool | None | list[Located] | dict[str, tuple[Located, Located]]
    line: int
    column: int
    kind: str  # "map", "seq" or "scalar"

    def plain(self) -> Any:
        """The value with every position stripped (nested dicts and lists)."""
        if self.kind == "map":
            return {k: v.plain() for k, (_, v) in self.value.items()}
        if self.kind == "seq":
            return [item.plain() for item in self.value]
        return self.value


class YamlProblem(Exception):
    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _Loader(yaml.SafeLoader):
    """Safe loader that refuses aliases and nesting deeper than MAX_DEPTH while composing."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            raise YamlProblem("YAML aliases are not allowed in claim files", mark.line + 1, mark.column + 1)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlProblem(f"nesting deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _convert(node: yaml.Node, loader: _Loader) -> Located:
    line, column = _position(node)
    if node.tag not in _STANDARD_TAGS:
        raise YamlProblem(f"YAML tag is not allowed (found {node.tag.replace('tag:yaml.org,2002:', '!!')})", line, column)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, tuple[Located, Located]] = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, loader)
            if key.kind != "scalar" or not isinstance(key.value, str):
                found = {"map": "a mapping", "seq": "a list"}.get(key.kind) or repr(key.value)[:60]
                raise YamlProblem(f"keys must be strings (found {found})", key.line, key.column)
            if key.value in out:
                first = out[key.value][0]
                raise YamlProblem(
                    f"duplicate key '{key.value}' (first defined on line {first.line})", key.line, key.column
                )
            out[key.value] = (key, _convert(value_node, loader))
        return Located(out, line, column, "map")
    if isinstance(node, yaml.SequenceNode):
        return Located([_convert(item, loader) for item in node.value], line, column, "seq")
    value = loader.construct_object(node, deep=False)
    if isinstance(value, str) and (control := _CONTROL.search(value)):
        raise YamlProblem(f"text holds an unprintable character (found {control.group()!r})", line, column)
    return Located(value, line, column, "scalar")


_FOUND = re.compile(r"(?:found|got) (.+)$")


def _explain(e: yaml.MarkedYAMLError):
    """PyYAML's error as one house-style message, placed at the likely cause: the opening bracket or
    quote that was never closed rather than the line where the parser gave up."""
    problem, context = e.problem or "", e.context or ""
    found = _FOUND.search(problem)
    found = found.group(1).strip("'") if found else "something else"
    found = {"<scalar>": "a value", "<block mapping start>": "a key", "?": "a key", "<stream end>": "end of file",
             "<block end>": "less indentation"}.get(found, found)
    if "end of stream" in problem:
        found = "end of file"
    opened = e.context_mark
    if "expected a single document" in str(e):
        return "more than one YAML document (expected exactly one)", e.problem_mark
    if "flow sequence" in context and opened is not None:
        return (f"unclosed '[': the list that starts here has no ']' before line {e.problem_mark.line + 1} "
                f"(found {found!r})"), opened
    if "flow mapping" in context and opened is not None:
        return (f"unclosed '{{': the mapping that starts here has no '}}' before line {e.problem_mark.line + 1} "
                f"(found {found!r})"), opened
    if "quoted scalar" in context and opened is not None:
        return f"unclosed quote: the string that starts here never ends (found {found})", opened
    if "'\\t'" in problem:
        return "a tab cannot indent YAML; use spaces (found a tab)", e.problem_mark
    if "mapping values are not allowed" in problem:
        return "unexpected ':' in a value; quote a value that contains ': ' (found ':')", e.problem_mark
    if "expected <block end>" in problem:
        return ("indentation does not line up with the lines above: check this line and the one before "
                f"(found {found})"), e.problem_mark
    what = problem or context or "invalid YAML"
    return what, e.problem_mark or e.context_mark


def load(data: bytes) -> Located:
    """Parse one YAML document from ``data``; raise YamlProblem with a position on any problem."""
    if len(data) > MAX_BYTES:
        raise YamlProblem(f"file is larger than 1 MiB (found {len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        raise YamlProblem(f"file is not valid UTF-8 (found byte 0x{data[e.start]:02x})", line, column) from None
    if not text.strip():
        raise YamlProblem("file is empty (expected a claim: a YAML mapping)")
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise YamlProblem(f"invalid YAML: {e.reason} (found character #x{e.character:04x})", line, column) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlProblem("file holds no YAML document (expected a claim: a YAML mapping)")
        return _convert(node, loader)
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as e:
        what, mark = _explain(e)
        if mark is None:
            raise YamlProblem(f"invalid YAML: {what}") from None
        raise YamlProblem(f"invalid YAML: {what}", mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"invalid YAML: {e}") from None
    except (RecursionError, MemoryError):
        raise YamlProblem("YAML structure is too deeply nested or too large") from None
    except (ValueError, OverflowError, TypeError) as e:  # e.g. out-of-range timestamps in constructors
        raise YamlProblem(f"invalid YAML value: {e}") from None
    finally:
        loader.dispose()


def problem(path: str, where: Located | None, message: str) -> Problem:
    if where is None:
        return Problem(path, message)
    return Problem(path, message, where.line, where.column)
