"""`plangate test [PLAN] [SCENARIO ...]`: run scenario files against a plan, like a test runner.

Exit 0 when every scenario passed, 1 when any failed, 2 on usage or file problems (a missing
file, a broken scenario file, a plan with error findings).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from plangate.policy import PlanError, PlanFileError
from plangate.policy import read_plan_text as read_text

from ._playback import Result, play
from ._scenario import Scenario, ScenarioError, looks_like_scenario, parse_scenario
from ._table import StateTable, compile_file

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_PLAN = "plans.yaml"
SCENARIO_DIR = "scenarios"
STORY = "story.yaml"
_SUFFIXES = (".yaml", ".yml")


class _Usage(Exception):
    """A problem with the command line or a file: reported, then exit 2."""


def run_scenarios(args: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        plan, sources = split_arguments(args)
        table = _compile(plan)
        files = scenario_files(sources)
    except _Usage as exc:
        print(f"plangate test: {exc}", file=err)
        return EXIT_USAGE
    scenarios, broken = _parse_all(files, table, err)
    results = [play(table, s) for s in scenarios]
    for result in results:
        _report(result, out)
    failed = sum(not r.passed for r in results)
    summary = f"{len(results) - failed} passed, {failed} failed"
    print(summary + (f", {broken} file(s) could not run" if broken else ""), file=out)
    return EXIT_USAGE if broken else EXIT_FAILED if failed else EXIT_PASSED


def split_arguments(args: list[str]) -> tuple[Path, list[Path]]:
    """The plan and the scenario sources. The first argument is the plan unless it is a directory
    or a scenario file; without scenarios, the `scenarios` directory next to the plan is used."""
    paths = [Path(a) for a in args]
    if len(paths) == 1 and not paths[0].exists():      # a plan or a scenario? neither is there
        raise _Usage(f"{paths[0]}: no such file or directory (plangate test [PLAN] [SCENARIO ...])")
    if paths and not _is_scenario_source(paths[0]):
        plan, sources = paths[0], paths[1:]
    else:
        plan, sources = Path(DEFAULT_PLAN), paths
    return plan, sources or [plan.parent / SCENARIO_DIR]


def _is_scenario_source(path: Path) -> bool:
    if path.is_dir():
        return True
    try:
        return path.is_file() and looks_like_scenario(read_text(path), str(path))
    except PlanFileError:
        return False


def _compile(plan: Path) -> StateTable:
    try:
        return compile_file(plan)
    except PlanFileError as exc:
        raise _Usage(f"plan {exc}") from None
    except PlanError as exc:
        findings = "".join(f"\n  {f}" for f in exc.findings if f.is_error)
        raise _Usage(f"the plan {plan} has errors; fix them first (plangate lint {plan}):{findings}") from None


def scenario_files(sources: list[Path]) -> list[Path]:
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            # A folder's stories, and the story of each folder in it that holds one beside its event files
            # (`plangate test scenarios/lifecycles` runs the lifecycle corpus).
            found = sorted(p for p in [*source.iterdir(), *source.glob(f"*/{STORY}")]
                           if p.suffix in _SUFFIXES and p.is_file())
            if not found:
                raise _Usage(f"{source}: no scenario files (*.yaml) in this directory")
            files.extend(found)
        elif source.is_file():
            files.append(source)
        else:
            raise _Usage(f"{source}: no such file or directory")
    return list(dict.fromkeys(files))   # a file named twice (itself and by its directory) runs once


def _parse_all(files: list[Path], table: StateTable, err: TextIO) -> tuple[list[Scenario], int]:
    scenarios, broken = [], 0
    for path in files:
        try:
            scenarios.append(parse_scenario(read_text(path), str(path), table))
        except PlanFileError as exc:
            print(f"plangate test: {exc}", file=err)
            broken += 1
        except ScenarioError as exc:
            print(exc, file=err)
            broken += 1
    return scenarios, broken


def _report(result: Result, out: TextIO) -> None:
    s = result.scenario
    print(f"{'PASS' if result.passed else 'FAIL'} {s.name} ({s.file})", file=out)
    if result.failure is not None:
        print("  " + result.failure.describe(s.file), file=out)
