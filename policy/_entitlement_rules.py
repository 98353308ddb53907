"""The meaning checks of features, seats, add-ons, credits, overage and anchored windows (see _rules.RULES)."""
from __future__ import annotations

from collections.abc import Iterator

from ._conditions import Condition, Group
from ._durations import DurationError, parse_duration
from ._entitlements import TIER_FEATURES, Anchoring
from ._findings import Finding, Severity
from ._model import Plan, QuotaKind, TriggerKind, Window

E, W = Severity.ERROR, Severity.WARNING
_ANCHORABLE = (Window.DAY, Window.WEEK, Window.MONTH)


def _f(code: str, severity: Severity, message: str, location) -> Finding:
    return Finding(code, severity, message, location)


def feature_names(plan: Plan) -> Iterator[Finding]:
    """Every feature a status, tier or add-on lists is declared; `tier` is the word for the tier's features."""
    declared = {f.name for f in plan.features}
    known = ", ".join(sorted(declared)) or "none declared"
    for f in plan.features:
        if f.name == TIER_FEATURES:
            yield _f("reserved-name", E, "'tier' is reserved for a status's `features: [tier]` (the tier's features); "
                                         "give this feature another name", f.location)
    owners = ([("statuses", s.name, s.features) for s in plan.statuses]
              + [("tiers", t.name, t.features) for t in plan.tiers]
              + [("addons", a.name, a.features) for a in plan.addons])
    for section, name, features in owners:
        for i, feature in enumerate(features):
            if feature in declared or (section == "statuses" and feature == TIER_FEATURES):
                continue
            yield _f("unknown-feature", E, f"{section}.{name} lists unknown feature '{feature}'; declared "
                                           f"features: {known} (add it under `features:`)",
                     plan.document.locate((section, name, "features", i)))
    uses_tier = [s for s in plan.statuses if TIER_FEATURES in s.features]
    if uses_tier and not plan.tiers:
        yield _f("no-tiers", E, f"status '{uses_tier[0].name}' grants the tier's features, but the plan declares "
                                "no tiers", plan.document.key_location(("statuses", uses_tier[0].name, "features")))
    granted = {f for s in plan.statuses if s.allows for f in s.features}
    if uses_tier:
        granted |= {f for t in plan.tiers for f in t.features} | {f for a in plan.addons for f in a.features}
    for f in plan.features:
        if f.name not in granted and f.name != TIER_FEATURES:
            yield _f("feature-never-granted", W, f"feature '{f.name}' is granted in no status that allows access "
                                                 "(directly, or through `features: [tier]` and a tier or add-on "
                                                 "that lists it): every check of it answers not_entitled",
                     f.location)


def entitlement_meters(plan: Plan) -> Iterator[Finding]:
    """Add-on quotas, credits and a tier's credit grants name declared meters."""
    meters = {m.name for m in plan.meters}
    known = ", ".join(sorted(meters))
    places = ([(("addons", a.name, "quotas", meter), meter) for a in plan.addons for meter, _ in a.quotas]
              + [(("credits", c.meter), c.meter) for c in plan.credits]
              + [(("tiers", t.name, "credits", g.meter), g.meter) for t in plan.tiers for g in t.credits])
    for path, meter in places:
        if meter not in meters:
            yield _f("unknown-meter", E, f"{'.'.join(map(str, path[:-1]))} names unknown meter '{meter}'; known "
                                         f"meters: {known}", plan.document.key_location(path))


def prices_select_one_thing(plan: Plan) -> Iterator[Finding]:
    """A price is a tier, an add-on or a credit pack, never two of them."""
    seen = {p: f"tier '{t.name}'" for t in plan.tiers for p in t.prices}
    places = ([(("addons", a.name, "prices", i), p, f"add-on '{a.name}'") for a in plan.addons
               for i, p in enumerate(a.prices)]
              + [(("credits", c.meter, "packs", p), p, f"the {c.meter} credit pack") for c in plan.credits
                 for p, _ in c.packs])
    for path, price, what in places:
        if price in seen and seen[price] != what:
            where = plan.document.key_location(path) if path[-2] == "packs" else plan.document.locate(path)
            yield _f("duplicate-price", E, f"price '{price}' is both {seen[price]} and {what}: a price is one "
                                           "tier, add-on or credit pack", where)
        seen.setdefault(price, what)


def _limited_quotas(plan: Plan):
    """(where, quota) of every limit, in statuses and tiers."""
    for s in plan.statuses:
        for q in s.quotas:
            yield ("statuses", s.name, "quotas", q.meter), q
    for t in plan.tiers:
        for q in t.quotas:
            yield ("tiers", t.name, "quotas", q.meter), q


def windows(plan: Plan) -> Iterator[Finding]:
    """`anchor: billing` moves where a day, week or month starts; the other windows have no such start."""
    for path, q in _limited_quotas(plan):
        if q.kind is QuotaKind.LIMIT and q.anchor is Anchoring.BILLING and q.window not in _ANCHORABLE:
            yield _f("anchor-without-calendar", E,
                     f"{q.meter}: `anchor: billing` sets where a day, week or month starts, but this quota is per "
                     f"{q.window.value}: remove the anchor, or count per day, week or month",
                     plan.document.key_location(path + ("anchor",)))


def overage_reported(plan: Plan) -> Iterator[Finding]:
    """Overage is billed through the meter's Stripe billing meter: without one it is allowed and never billed."""
    for path, q in _limited_quotas(plan):
        meter = plan.meter(q.meter)
        if q.overage is not None and meter is not None and meter.stripe_meter is None:
            yield _f("overage-unreported", W,
                     f"{q.meter} allows overage here, but meter '{q.meter}' has no `stripe_meter`: the overage would "
                     "be allowed and never billed (name the Stripe billing meter's event name on the meter)",
                     plan.document.key_location(path + ("overage",)))


def stripe_meters_distinct(plan: Plan) -> Iterator[Finding]:
    """Stripe adds up a billing meter's events per customer, whichever meter of the plan sent them: two meters
    with overage reporting to one event name are billed as one, each quota's cap bounding only its own share."""
    billed = {q.meter for _, q in _limited_quotas(plan) if q.overage is not None}
    first: dict[str, str] = {}
    for m in plan.meters:
        if m.stripe_meter is None or m.name not in billed:
            continue
        if m.stripe_meter in first:
            yield _f("stripe-meter-shared", W,
                     f"meters '{first[m.stripe_meter]}' and '{m.name}' both report overage to the Stripe billing "
                     f"meter '{m.stripe_meter}': Stripe bills their sum as one line at one price, and each quota's "
                     "`overage` cap bounds only its own share of it (up to the caps added up); give each meter a "
                     "billing meter of its own if they are priced or capped apart, or silence this finding",
                     plan.document.key_location(("meters", m.name, "stripe_meter")))
        else:
            first[m.stripe_meter] = m.name


def entitlements_used(plan: Plan) -> Iterator[Finding]:
    """Add-on quotas and credits apply only where a status counts the meter against a limit."""
    tier_meters = {q.meter for s in plan.statuses if s.allows for q in s.quotas if q.kind is QuotaKind.TIER}
    for a in plan.addons:
        for meter, _ in a.quotas:
            if meter not in tier_meters:
                yield _f("addon-quota-unused", W,
                         f"add-on '{a.name}' adds {meter}, but no status takes the tier's quota for {meter}: "
                         "the addition never applies (an add-on adds to the tier's quota)",
                         plan.document.key_location(("addons", a.name, "quotas", meter)))
    limited = {q.meter for s in plan.statuses if s.allows for q in s.quotas if q.kind is not QuotaKind.UNLIMITED}
    for c in plan.credits:
        if c.meter not in limited and plan.meter(c.meter) is not None:
            yield _f("credits-unspendable", W,
                     f"credits of {c.meter} are spent once a window's limit is used up, but no status that allows "
                     f"access has a limit for {c.meter}: they could never be spent",
                     plan.document.key_location(("credits", c.meter)))


def credit_durations(plan: Plan) -> Iterator[Finding]:
    for c in plan.credits:
        if c.expires_after_text is None:
            continue
        try:
            parse_duration(c.expires_after_text)
        except DurationError as exc:
            yield _f("invalid-duration", E, f"expires_after of the {c.meter} credits: {exc}",
                     plan.document.locate(("credits", c.meter, "expires_after")))


def credit_checkouts(plan: Plan) -> Iterator[Finding]:
    """A credit pack is bought through Checkout too: a transition on checkout.session.completed that does not test
    the session's `mode` would move a subject who only bought credits."""
    if not any(c.packs for c in plan.credits):
        return
    for t in plan.transitions:
        if t.trigger.kind is TriggerKind.STRIPE and t.trigger.name == "checkout.session.completed" \
                and not _tests(t.conditions, ("mode",)):
            yield _f("credit-checkout-moves-status", W,
                     f"the plan sells credit packs through Checkout, and this transition moves a subject to "
                     f"'{t.target}' on any completed Checkout, a credit purchase included: add "
                     "`when: {mode: subscription}`", plan.document.locate(("transitions", t.index, "on")))


def _tests(nodes, path: tuple[str, ...]) -> bool:
    for node in nodes:
        if isinstance(node, Condition) and node.path == path:
            return True
        if isinstance(node, Group) and node.kind == "all" and _tests(node.members, path):
            return True
    return False


def references(plan: Plan) -> Iterator[Finding]:
    """Names the new sections use resolve (they also report the codes of the older rules they extend:
    reserved-name, no-tiers, unknown-meter, duplicate-price, invalid-duration)."""
    for rule in (feature_names, entitlement_meters, prices_select_one_thing, credit_durations):
        yield from rule(plan)


# A code appears once in _rules.RULES: codes these rules share with older ones are listed there.
RULES = (
    ("unknown-feature/feature-never-granted", references),
    ("anchor-without-calendar", windows),
    ("overage-unreported", overage_reported),
    ("stripe-meter-shared", stripe_meters_distinct),
    ("addon-quota-unused/credits-unspendable", entitlements_used),
    ("credit-checkout-moves-status", credit_checkouts),
)
SILENCEABLE = frozenset({"feature-never-granted", "overage-unreported", "addon-quota-unused", "credits-unspendable",
                         "credit-checkout-moves-status", "stripe-meter-shared"})
