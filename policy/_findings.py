"""Findings: every problem the plan checks find, with a stable code and a location.

Exception tree of the policy layer:

    PlanError        a plan that has error-level findings was used where a valid one is needed
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Location:
    """Where in which file: 1-based line and column, and the path inside the document."""

    file: str
    line: int = 1
    column: int = 1
    path: tuple[str | int, ...] = ()

    @property
    def pointer(self) -> str:
        """The document path in a readable dotted form, e.g. statuses.paid.quotas."""
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    message: str
    location: Location

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "path": self.location.pointer,
        }

    def __str__(self) -> str:
        loc = self.location
        return f"{loc.file}:{loc.line}:{loc.column}: {self.code} {self.severity.value}: {self.message}"


@dataclass(frozen=True)
class PlanError(Exception):
    """A plan with error-level findings was used where a valid plan is needed."""

    findings: tuple[Finding, ...] = field(default=())

    def __str__(self) -> str:
        errors = [f for f in self.findings if f.is_error]
        head = f"the plan has {len(errors)} error(s)"
        return head + "".join(f"\n  {f}" for f in errors)
