"""Fixtures shared by the engine tests: the shipped plan compiled, and small plans written to disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from plangate.engine import StateTable, compile_file

from .helpers import WINDOWS_PLAN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shipped() -> StateTable:
    return compile_file(REPO / "plans.yaml")


@pytest.fixture
def write_plan(tmp_path):
    """Write a plan text to a file and compile it."""
    def write(text: str, name: str = "plan.yaml") -> StateTable:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return compile_file(path)
    return write


@pytest.fixture
def windows_plan(write_plan):
    def make(timezone: str = "UTC") -> StateTable:
        return write_plan(WINDOWS_PLAN.format(timezone=timezone), f"windows-{timezone.replace('/', '-')}.yaml")
    return make


@pytest.fixture
def in_repo(monkeypatch) -> Path:
    """Run from the repository root, where `plangate test` finds plans.yaml and scenarios/."""
    monkeypatch.chdir(REPO)
    return REPO
