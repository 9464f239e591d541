"""Files that stand beside a thread (``claims/threads/<thread><suffix>``): sentence maps and answers.

One way to find them, read them and report what cannot be read, for every kind: the thread they
belong to must be there and readable, the file is at most 1 MiB of YAML, and its root is a mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bnclaims.errors import Problem
from bnclaims.yamlpos import MAX_BYTES, Located, YamlProblem, load


def companions(claims_dir: Path, suffix: str, what: str) -> Iterator[tuple[Path, str, str | None, Problem | None]]:
    """(path, thread file name, thread text, problem) for every ``threads/*<suffix>``; the text is None
    and the problem says why when the thread beside it cannot be read."""
    from bnclaims.claims import display_path

    threads_dir = Path(claims_dir) / "threads"
    if not threads_dir.is_dir():
        return
    for path in sorted(threads_dir.glob(f"*{suffix}")):
        thread_name = path.name[: -len(suffix)] + ".txt"
        thread_path = threads_dir / thread_name
        try:
            text = thread_path.read_text(encoding="utf-8") if thread_path.is_file() else None
        except (OSError, UnicodeDecodeError):
            text = None
        problem = None if text is not None else Problem(display_path(path), f"no thread {thread_name} beside this {what}")
        yield path, thread_name, text, problem


def read_mapping(path: Path, shown: str, expected: str) -> tuple[Located | None, list[Problem]]:
    """The YAML mapping in ``path``, or the one-line problems that say why not (``expected`` names the keys)."""
    try:
        data = path.read_bytes()
        if len(data) > MAX_BYTES:
            return None, [Problem(shown, f"file is larger than 1 MiB (found {len(data)} bytes)")]
        root = load(data)
    except OSError as e:
        return None, [Problem(shown, f"cannot read file ({e.strerror})")]
    except YamlProblem as e:
        return None, [Problem(shown, e.message, e.line, e.column)]
    if root.kind != "map":
        return None, [Problem(shown, f"expected a YAML mapping with {expected}", root.line, root.column)]
    return root, []


def get(node: Located, key: str) -> Located | None:
    """The value of ``key`` in a mapping node, or None."""
    entry = node.value.get(key) if node.kind == "map" else None
    return entry[1] if entry else None
