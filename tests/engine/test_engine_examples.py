"""examples/: the three plans of issue 19 (a SaaS with seats and SSO, an AI API with credits and overage, a B2B
contract) are clean under `plangate lint --strict`, and their stories pass in `plangate test`."""
from __future__ import annotations

from pathlib import Path

import pytest

from plangate.cli import main
from plangate.engine.cli import EXIT_PASSED

from .conftest import REPO

EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if (p / "plans.yaml").exists())


def test_there_are_three():
    assert [p.name for p in EXAMPLES] == ["ai-api", "b2b", "saas"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
class TestExample:
    def test_lints_clean_even_strict(self, example: Path, capsys):
        assert main(["lint", "--strict", str(example / "plans.yaml")]) == 0, capsys.readouterr()

    def test_its_stories_pass(self, example: Path, capsys):
        code = main(["test", str(example / "plans.yaml"), str(example / "scenarios")])
        out = capsys.readouterr().out
        assert code == EXIT_PASSED, out
        stories = len(list((example / "scenarios").glob("*.yaml")))
        assert stories >= 3 and out.rstrip().endswith(f"{stories} passed, 0 failed")

    def test_explain_speaks_of_what_it_uses(self, example: Path, capsys):
        assert main(["explain", str(example / "plans.yaml")]) == 0
        out = capsys.readouterr().out
        text = (example / "plans.yaml").read_text(encoding="utf-8")
        if "features:" in text:
            assert "Features (yes/no entitlements)" in out and "not entitled" in out
        if "per_unit: quantity" in text:
            assert "per seat" in out
        if "addons:" in text:
            assert "add-on " in out
        if "packs:" in text:
            assert "one-time Checkout payment" in out
        if "overage:" in text:
            assert "overage" in out
        if "anchor: billing" in text:
            assert "from the billing anniversary" in out
