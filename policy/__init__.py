"""The plan language: read plans.yaml, check it, and model it as frozen values."""
from ._durations import DurationError, format_duration, parse_duration
from ._findings import Finding, Location, PlanError, Severity
from ._load import Checked, PlanFileError, check_file, check_text, load_plan
from ._conditions import Condition, Group, Op
from ._model import (
    ANCHORS, ANY, Access, Anchor, FailMode, Meter, Plan, Quota, QuotaKind, Status, SubjectLink, Tier,
    Transition, Trigger, TriggerKind, Window,
)
from ._rules import RULES
from ._rules import check as check_plan

__all__ = [
    "ANCHORS", "ANY", "Access", "Anchor", "Checked", "Condition", "DurationError", "FailMode", "Finding", "Group",
    "Location", "Meter", "Op", "Plan", "PlanError", "PlanFileError", "Quota", "QuotaKind", "RULES", "Severity", "Status",
    "SubjectLink", "Tier", "Transition", "Trigger", "TriggerKind", "Window", "check_file", "check_plan", "check_text",
    "format_duration", "load_plan", "parse_duration",
]
