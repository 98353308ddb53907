"""The policy layer's commands: lint (and the views of a plan). Imports nothing from engine or server."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
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
    return "".join(_annotation("error" if f.is_error else "warning", f.location.file, f.location.line,
                               f.location.column, f.code, f.message) for f in findings)


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


class ImpactError(Exception):
    """The impact on stored subjects could not be computed (no store driver, store unreachable)."""


def diff(old_file: str, new_file: str, fmt: str = "text", out: TextIO | None = None, err: TextIO | None = None,
         impact=None) -> int:
    """What changed from old to new, and with `impact` (a callable from the PlanDiff to its Impact rows) what it
    does to stored subjects. Exit 0 when nothing is stranded, 1 when the new plan would strand subjects, 2 when
    no diff could be made (usage, a plan that cannot be read or has errors, the store)."""
    from ._diff import diff as plan_diff

    out, err = out or sys.stdout, err or sys.stderr
    plans = []
    for file in (old_file, new_file):
        plan, _ = _checked_plan("diff", file, err)
        if plan is None:
            return EXIT_USAGE       # not lint's 1 for error findings: diff's 1 says "would strand subjects"
        plans.append(plan)
    result = plan_diff(*plans)
    if impact is not None:
        try:
            result = replace(result, impact=tuple(impact(result)))
        except ImpactError as exc:
            print(f"plangate diff: {exc}", file=err)
            return EXIT_USAGE
    out.write(_DIFF_FORMATS[fmt](result))
    if fmt == "text":
        verdict = ("the new plan would strand stored subjects (see above): map each old name with renamed_from "
                   "or retired" if result.strands else "the new plan strands no subject")
        print(f"plangate diff: {verdict}", file=err)
    return EXIT_FINDINGS if result.strands else EXIT_OK


def _diff_text(result) -> str:
    from ._model import version_of

    old, new = result.old, result.new
    lines = [f"{old.file} ({version_of(old)}) -> {new.file} ({version_of(new)}): {len(result.changes)} change(s)"]
    for c in result.changes:
        mark = "[strands] " if c.strands else "[lowered] " if c.lowered else ""
        lines.append(f"{c.location.file}:{c.location.line}:{c.location.column}: {mark}{c.message}")
    if result.impact is not None:
        lines.append(f"impact on stored subjects: {len(result.impact)} finding(s)")
        lines += [f"  {'[stranded] ' if i.strands else ''}{i.message}" for i in result.impact]
    return "\n".join(lines) + "\n"


def _diff_json(result) -> str:
    return json.dumps(result.to_dict(), indent=2) + "\n"


def _diff_github(result) -> str:
    lines = []
    for c in result.changes:
        level = "error" if c.strands else "warning" if c.lowered or c.effect.value == "removed" else "notice"
        lines.append(_annotation(level, c.location.file, c.location.line, c.location.column,
                                 f"plan {c.area.value} {c.effect.value}", c.message))
    for i in result.impact or ():
        where = i.location or result.new.document.locate(())
        lines.append(_annotation("error" if i.strands else "notice", where.file, where.line, where.column,
                                 "stored subjects", i.message))
    return "".join(lines)


def _annotation(level: str, file: str, line: int, column: int, title: str, message: str) -> str:
    def escape(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(text: str) -> str:
        return escape(text).replace(":", "%3A").replace(",", "%2C")

    return f"::{level} file={prop(file)},line={line},col={column},title={prop(title)}::{escape(message)}\n"


_DIFF_FORMATS = {"text": _diff_text, "json": _diff_json, "github": _diff_github}
DIFF_FORMATS = tuple(_DIFF_FORMATS)
