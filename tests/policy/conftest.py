"""Fixtures shared by the policy tests: where the repository and its shipped plan are."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shipped_plan() -> Path:
    return REPO / "plans.yaml"


@pytest.fixture
def in_repo(monkeypatch) -> Path:
    """Run from the repository root, where `plangate lint` finds plans.yaml by default."""
    monkeypatch.chdir(REPO)
    return REPO
