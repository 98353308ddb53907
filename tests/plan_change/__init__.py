"""Plans for the plan-change tests: v1.yaml and edits of it, each a small, named change."""
from __future__ import annotations

import re
from pathlib import Path

V1_PATH = Path(__file__).resolve().parent / "v1.yaml"
V1 = V1_PATH.read_text(encoding="utf-8")


def edited(*replacements: tuple[str, str], base: str = V1) -> str:
    """v1 with each (old, new) replaced (every occurrence); an old text that is not there is a broken test."""
    text = base
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return text


def renamed(old: str, new: str, base: str = V1) -> str:
    """A status (or tier) renamed wherever its name stands, the old name kept under renamed_from."""
    text = re.sub(rf"(?<![\w.:]){old}(?![\w.])", new, base)     # a name, not part of invoice.paid
    return text.replace(f"  {new}:\n", f"  {new}:\n    renamed_from: [{old}]\n", 1)


def lowered_pro(policy: str = "now", limit: int = 3000, base: str = V1) -> str:
    return edited(("requests: {limit: 5000, per: billing_period}",
                   f"requests: {{limit: {limit}, per: billing_period}}\n    existing_subscribers: {policy}"), base=base)


# billing_problem removed; where it led, canceled now leads
WITHOUT_BILLING_PROBLEM = (
    ("  billing_problem:\n    quotas:\n      requests: {limit: 5, per: day}\n", ""),
    ("    on: timer\n    to: billing_problem", "    on: timer\n    to: canceled"),
    ("[grace, billing_problem]", "[grace]"),
    ("[trial, paid, grace, billing_problem]", "[trial, paid, grace]"),
    ("[billing_problem, canceled]", "[canceled]"),
)
RETIRE_BILLING_PROBLEM = "\nretired:\n  statuses:\n    billing_problem: canceled\n"
# tier team removed
WITHOUT_TEAM = (("  team:\n    prices: [price_team]\n    quotas:\n      requests: {limit: 20000, per: billing_period}\n", ""),)
RETIRE_TEAM = "\nretired:\n  tiers:\n    team: pro\n"
