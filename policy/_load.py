"""From a file to a plan and its findings: YAML, then schema, then meaning."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import _rules, _schema, _yaml
from ._findings import Finding, PlanError
from ._model import Plan, build


class PlanFileError(OSError):
    """The plan file could not be read at all (missing, unreadable, not text)."""


@dataclass(frozen=True)
class Checked:
    """The outcome of checking one file: the plan when it could be built, and every finding."""

    plan: Plan | None
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(f.is_error for f in self.findings)


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PlanFileError(f"{path}: is a directory, not a plan file") from None
    except UnicodeDecodeError:
        raise PlanFileError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def check_text(text: str, file: str = "plans.yaml") -> Checked:
    """All findings of a plan text; later layers run only when the earlier ones found no error."""
    doc, findings = _yaml.parse(text, file)
    if doc is None:
        return Checked(None, tuple(findings))
    findings = _schema.check(doc)
    if findings:
        return Checked(None, tuple(findings))
    plan = build(doc)
    return Checked(plan, tuple(_rules.check(plan)))


def check_file(path: str | Path) -> Checked:
    """Like check_text; PlanFileError when the file cannot be read."""
    return check_text(read_text(path), str(path))


def load_plan(path: str | Path) -> Plan:
    """A plan with no error finding, or PlanError carrying the findings."""
    checked = check_file(path)
    if not checked.ok or checked.plan is None:
        raise PlanError(checked.findings)
    return checked.plan
