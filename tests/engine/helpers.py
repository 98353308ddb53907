"""Helpers for the engine tests: local times as Unix seconds, and a small plan with every window."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

# A small plan with one meter per kind of window; {timezone} is filled in per test.
WINDOWS_PLAN = """\
version: 1
timezone: {timezone}
meters:
  daily: {{}}
  weekly: {{}}
  monthly: {{}}
  forever: {{}}
  periodic: {{fail_mode: open}}
tiers:
  basic:
    prices: [price_basic]
    quotas:
      periodic: {{limit: 100, per: billing_period}}
  big:
    prices: [price_big]
    quotas:
      periodic: unlimited
default_tier: basic
statuses:
  free:
    initial: true
    quotas:
      daily: {{limit: 10, per: day}}
      weekly: {{limit: 50, per: week}}
      monthly: {{limit: 200, per: month}}
      forever: {{limit: 3, per: lifetime}}
  paid:
    paying: true
    quotas:
      periodic: tier
      daily: unlimited
  gone:
    access: deny
    terminal: true
transitions:
  - from: free
    on: stripe:customer.subscription.created
    to: paid
  - from: paid
    on: stripe:invoice.payment_failed
    to: free
  - from: any
    on: admin:close
    to: gone
"""


def at(text: str, tz: str = "UTC") -> float:
    """Unix seconds of a local wall-clock time, e.g. at("2026-03-29 12:00", "Europe/Berlin")."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()
