"""Layers import only to their left (policy <- engine <- server), and the policy commands stay light."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("aiohttp", "stripe", "asyncpg", "sqlite3", "psycopg", "aiocron")
# Each layer (a folder, installed as plangate.<folder>) and the packages it must not import.
FORBIDDEN = {"policy": {"plangate.engine", "plangate.server", "plangate.client"},
             "engine": {"plangate.server", "plangate.client"}}

PROBE = """
import io, json, sys, contextlib
from plangate.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main({argv!r})
print(json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
"""


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    # the module's dotted parts; for __init__ too, dropping `level` parts leaves the right package
    here = ["plangate", package, *path.relative_to(REPO / package).with_suffix("").parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:-node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
    return names


def _python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


class TestLayerImports:
    @pytest.mark.parametrize("package", sorted(FORBIDDEN))
    def test_imports_nothing_from_the_layers_to_its_right(self, package):
        offences = [
            f"{path.relative_to(REPO)} imports {name}"
            for path in _python_files(package)
            for name in _imported_modules(path, package)
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package])
        ]
        assert offences == []

    def test_the_check_sees_relative_imports(self):
        assert _imported_modules(REPO / "policy" / "cli.py", "policy") >= {"plangate.policy._load",
                                                                           "plangate.policy._findings"}

    def test_nothing_imports_a_folder_by_its_repository_name(self):
        # Run from the checkout, `import server` would load a second copy of plangate.server (two Gate classes,
        # two enums whose members compare unequal): every import uses the installed name.
        tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
        offences = []
        for name in tracked.stdout.split():
            tree = ast.parse((REPO / name).read_text(encoding="utf-8"), name)
            for node in ast.walk(tree):
                imported = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                offences += [f"{name}:{node.lineno} {m}" for m in imported
                             if m.split(".")[0] in {"policy", "engine", "server", "schema", "plangate_schema"}]
        assert offences == []


class TestLightCommands:
    @pytest.mark.parametrize("argv", [["lint", "plans.yaml"], ["graph", "plans.yaml"], ["explain", "plans.yaml"]],
                             ids=lambda argv: argv[0])
    def test_loads_no_server_dependency(self, argv):
        done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["code"] == 0
        loaded = {name.split(".")[0] for name in result["modules"]}
        assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
        assert "plangate.engine" not in result["modules"]

    def test_clean_lint_does_not_import_jsonschema(self):
        # jsonschema's import is over a third of a lint's time; a clean plan is confirmed without it
        done = subprocess.run([sys.executable, "-c", PROBE.format(argv=["lint", "plans.yaml"])], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["code"] == 0
        assert "jsonschema" not in result["modules"]
