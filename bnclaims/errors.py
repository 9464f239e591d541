"""One exception hierarchy for everything a user can cause.

A `UserError` is printed as one line (``file:line:col: message``) and never as a
traceback, unless the CLI runs with ``--debug``.
"""

from __future__ import annotations

from dataclasses import dataclass


class BnclaimsError(Exception):
    """Base class of every error bnclaims raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One problem in one file, with a position where the problem has one."""

    path: str
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"

    def to_json(self) -> dict:
        return {"path": self.path, "line": self.line, "column": self.column, "message": self.message}


class UserError(BnclaimsError):
    """Something the user can fix: bad arguments, an unknown claim id, ..."""


class ClaimFileError(UserError):
    """One or more problems in claim files; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ExperimentError(BnclaimsError):
    """An experiment raised, timed out, died, or returned something invalid."""


class ExperimentDefinitionError(UserError, TypeError):
    """An experiment function is defined wrongly (its signature, annotations or declared names); raised
    when its module is imported, named by the function and its file and line.

    Also a TypeError, which registration raised before this class existed."""
