"""The policy layer's commands: lint (and the views of a plan). Imports nothing from engine or server."""
from __future__ import annotations

import json
import sys
from typing import TextIO

from ._findings import Finding
from ._load import PlanFileError, check_file
from ._model import Plan

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def lint(files: list[str], fmt: str = "text", strict: bool = False, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Check each file; exit 0 clean, 1 on an error finding (or a warning with strict), 2 on I/O problems."""
    out = out or sys.stdout
    err = err or sys.stderr
    findings: list[Finding] = []
    for path in files:
        try:
            findings.extend(check_file(path).findings)
        except PlanFileError as exc:
            print(f"plangate lint: {exc}", file=err)
            return EXIT_USAGE
    findings.sort(key=lambda f: (f.location.file, f.location.line, f.location.column, f.code))
    out.write(_FORMATS[fmt](findings))
    failing = [f for f in findings if f.is_error or strict]
    if fmt == "text":
        errors = sum(f.is_error for f in findings)
        warnings = len(findings) - errors
        summary = f"{len(files)} file(s) checked: {errors} error(s), {warnings} warning(s)"
        print(summary if findings else f"{summary}. The plan is clean.", file=err)
    return EXIT_FINDINGS if failing else EXIT_OK


def _text(findings: list[Finding]) -> str:
    return "".join(f"{f}\n" for f in findings)


def _json(findings: list[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2) + "\n"


def _github(findings: list[Finding]) -> str:
    def escape(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(text: str) -> str:
        return escape(text).replace(":", "%3A").replace(",", "%2C")

    lines = []
    for f in findings:
        level = "error" if f.is_error else "warning"
        loc = f.location
        lines.append(f"::{level} file={prop(loc.file)},line={loc.line},col={loc.column},"
                     f"title={prop(f.code)}::{escape(f.message)}\n")
    return "".join(lines)


_FORMATS = {"text": _text, "json": _json, "github": _github}
FORMATS = tuple(_FORMATS)


def graph(file: str = "plans.yaml", fmt: str = "mermaid", out: TextIO | None = None,
          err: TextIO | None = None) -> int:
    """Print the state diagram; exit 1 with the findings when the plan has errors, 2 on I/O problems."""
    from ._views import GRAPH_FORMATS

    plan, code = _checked_plan("graph", file, err or sys.stderr)
    if plan is not None:
        (out or sys.stdout).write(GRAPH_FORMATS[fmt](plan))
    return code


def explain(file: str = "plans.yaml", out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print each status in plain words; exit codes as for graph."""
    from ._views import explain as explain_plan

    plan, code = _checked_plan("explain", file, err or sys.stderr)
    if plan is not None:
        (out or sys.stdout).write(explain_plan(plan))
    return code


def _checked_plan(command: str, file: str, err: TextIO) -> tuple[Plan | None, int]:
    """The plan of a file with no error finding (warnings go to err), or None and the exit code."""
    try:
        checked = check_file(file)
    except PlanFileError as exc:
        print(f"plangate {command}: {exc}", file=err)
        return None, EXIT_USAGE
    err.write(_text(list(checked.findings)))
    if not checked.ok:
        print(f"plangate {command}: {file} has errors; fix them first (plangate lint {file})", file=err)
        return None, EXIT_FINDINGS
    return checked.plan, EXIT_OK


GRAPH_FORMATS = ("mermaid", "dot")
