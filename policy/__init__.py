"""The plan language: read plans.yaml, check it, and model it as frozen values."""
from ._durations import DurationError, format_duration, parse_duration
from ._findings import Finding, Location, PlanError, Severity
from ._load import Checked, PlanFileError, check_file, check_text, load_plan
from ._load import read_text as read_plan_text
from ._conditions import PREVIOUS, Condition, Group, Op
from ._conditions import compile_all as compile_conditions
from ._entitlements import ADMIN_PRIORITY, PERIOD_PRIORITY, TIER_FEATURES, Anchoring, OnCancel
from ._stripe_events import is_known_event
from ._yaml import Document as YamlDocument
from ._yaml import parse as parse_yaml
from ._model import (
    ANCHORS, ANY, Access, Anchor, ExistingSubscribers, FailMode, Meter, Plan, Quota, QuotaKind, Retired, Status,
    SubjectLink, SubscriptionScope, Tier, Transition, Trigger, TriggerKind, Window, version_of,
)
from ._renames import How, Kind, Move, NameMap, Stranded, explain_stranded, stranded
from ._diff import Area, Impact, PlanChange, PlanDiff
from ._diff import diff as diff_plans
from ._rules import RULES
from ._rules import check as check_plan
from ._views import explain as explain_plan

__all__ = [
    "ANCHORS", "ANY", "Access", "Anchor", "Checked", "Condition", "DurationError", "ExistingSubscribers", "FailMode",
    "Finding", "Group", "Impact", "Kind", "Location", "Meter", "Move", "NameMap", "Op", "Plan", "PlanChange",
    "PlanDiff", "PlanError", "PlanFileError", "Quota", "QuotaKind", "RULES", "Retired", "Severity", "Status",
    "Stranded", "SubjectLink", "SubscriptionScope", "Tier", "Transition", "Trigger", "TriggerKind", "Window",
    "check_file", "check_plan", "check_text", "diff_plans", "explain_stranded", "format_duration", "load_plan",
    "parse_duration", "stranded", "version_of",
    # What the engine and the server build on (credits, windows, conditions, renames, scenario files):
    "ADMIN_PRIORITY", "PERIOD_PRIORITY", "TIER_FEATURES", "Anchoring", "Area", "How", "OnCancel", "YamlDocument",
    "PREVIOUS", "compile_conditions", "explain_plan", "is_known_event", "parse_yaml", "read_plan_text",
]
