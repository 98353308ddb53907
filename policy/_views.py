"""Views of a checked plan for people: the state diagram (Mermaid or Graphviz DOT) and a
status-by-status explanation a product owner can read without knowing the file format."""
from __future__ import annotations

from ._entitlements import TIER_FEATURES
from ._model import FailMode, Plan, Quota, QuotaKind, Status, SubscriptionScope, Transition, TriggerKind


def _edges(plan: Plan) -> list[tuple[str, str, Transition]]:
    """(source, target, transition) for every arrow, in the order the plan lists transitions;
    `from: any` gives one arrow per status it covers."""
    return [(src, t.target, t) for t in plan.transitions for src in dict.fromkeys(plan.sources_of(t))]


def _arrow_label(plan: Plan, source: str, t: Transition) -> str:
    label = str(t.trigger)
    status = plan.status(source)
    if t.trigger.kind is TriggerKind.TIMER and status and status.has_timer:
        label += f" ({_timer_short(status)})"
    if t.conditions:
        label += " [" + ", ".join(map(str, t.conditions)) + "]"
    if t.subscription is not SubscriptionScope.FOLLOWED:
        label += f" ({t.subscription.value} subscription)"
    return label


def _facts(status: Status) -> list[str]:
    """Short lines shown inside a status's box."""
    lines = [] if status.allows else ["no access"]
    for q in status.quotas if status.allows else ():
        lines.append(f"{q.meter} {'tier quota' if q.kind is QuotaKind.TIER else q.describe()}")
    if status.has_timer:
        lines.append(f"timer {_timer_short(status)}")
    if status.grace:
        lines.append("grace")
    return lines


def _timer_short(status: Status) -> str:
    """"7d", "trial_end + 2h", or "trial_end + 2h else 8d"."""
    parts = [status.expires_at_text, status.expires_after_text]
    return " else ".join(p for p in parts if p)


def mermaid(plan: Plan) -> str:
    """A Mermaid stateDiagram-v2: [*] marks the initial status and follows terminal ones."""
    lines = ["stateDiagram-v2"]
    for s in plan.statuses:
        if s.initial:
            lines.append(f"    [*] --> {s.name}")
    for s in plan.statuses:
        lines.extend(f"    {s.name} : {_mermaid_text(fact)}" for fact in _facts(s))
    for source, target, t in _edges(plan):
        lines.append(f"    {source} --> {target} : {_mermaid_text(_arrow_label(plan, source, t))}")
    for s in plan.statuses:
        if s.terminal:
            lines.append(f"    {s.name} --> [*]")
    return "\n".join(lines) + "\n"


_MERMAID_ENTITIES = str.maketrans({"#": "#35;", ";": "#59;", "%": "#37;"})


def _mermaid_text(text: str) -> str:
    # Mermaid ends a label at ';', reads '#...;' as an entity and '%%' as a comment: write them as entities.
    return text.translate(_MERMAID_ENTITIES)


def dot(plan: Plan) -> str:
    """A Graphviz digraph: a point leads to the initial status, terminal ones have a double border."""
    lines = ["digraph plan {", "    rankdir=LR;", '    node [shape=box, style=rounded, fontname="Helvetica"];',
             '    edge [fontname="Helvetica", fontsize=10];', '    "__start" [shape=point, label=""];']
    for s in plan.statuses:
        label = "\\n".join(_dot_text(part) for part in [s.name, *_facts(s)])
        extra = ", peripheries=2" if s.terminal else ""
        extra += ', style="rounded,dashed"' if not s.allows else ""
        lines.append(f'    "{_dot_text(s.name)}" [label="{label}"{extra}];')
    for s in plan.statuses:
        if s.initial:
            lines.append(f'    "__start" -> "{_dot_text(s.name)}";')
    for source, target, t in _edges(plan):
        lines.append(f'    "{_dot_text(source)}" -> "{_dot_text(target)}" '
                     f'[label="{_dot_text(_arrow_label(plan, source, t))}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


GRAPH_FORMATS = {"mermaid": mermaid, "dot": dot}


def explain(plan: Plan) -> str:
    """Each status in plain words: access, quota and fail mode per meter, timer, and what moves a subject on."""
    tiers = ", ".join(t.name + (" (default)" if t.name == plan.default_tier else "") for t in plan.tiers)
    out = [f"{plan.file}: {len(plan.statuses)} statuses; meters: {', '.join(m.name for m in plan.meters)}; "
           f"tiers: {tiers or 'none'}; time zone: {plan.timezone}."]
    if plan.features:
        out.append("Features (yes/no entitlements): " + ", ".join(
            f.name + (f" ({f.description})" if f.description else "") for f in plan.features) + ".")
    if plan.initial:
        out.append(f"A subject nobody has seen yet starts in {plan.initial.name}.")
    for s in plan.statuses:
        out.append("")
        out.extend(_explain_status(plan, s))
    out.extend(_explain_extras(plan))
    return "\n".join(out) + "\n"


def _explain_extras(plan: Plan) -> list[str]:
    """Tiers' features and grants, add-ons and credits, in plain words."""
    out: list[str] = []
    for tier in plan.tiers:
        if tier.features or tier.credits:
            out += ["", f"tier {tier.name}"]
            if tier.features:
                out.append(f"  features:  {', '.join(tier.features)} (where a status grants `features: [tier]`)")
            out += [f"  credits:   {g.meter}: {g.describe()}, spent first" for g in tier.credits]
    for a in plan.addons:
        out += ["", f"add-on {a.name} (prices {', '.join(a.prices)})"]
        if a.description:
            out.append(f"  {a.description}")
        out.append("  while the subscription (or item) that bought it is live, where a status takes the tier's "
                   "features or quota:")
        if a.features:
            out.append(f"  features:  {', '.join(a.features)}")
        out += [f"  {meter + ':':<10} +{amount} a window per unit of its quantity, on top of the tier's limit"
                for meter, amount in a.quotas]
    for c in plan.credits:
        out += ["", f"credits of {c.meter}" + (f": {c.description}" if c.description else "")]
        out.append(f"  spent once a window's limit of {c.meter} is used up, before any overage; never twice")
        for price, amount in c.packs:
            out.append(f"  bought:    a one-time Checkout payment of {price} grants {amount} per unit of quantity")
        life = f"expire {c.expires_after_text} after the payment" if c.expires_after_text else "never expire"
        out.append(f"  they {life}; priority {c.priority} (lower numbers are spent first); an admin may grant more")
        out.append("  when the subscription ends: " + ("kept" if c.on_cancel.value == "keep" else
                                                      "those granted before cannot be spent"))
    return out


def _explain_status(plan: Plan, s: Status) -> list[str]:
    marks = [word for word, on in (("initial", s.initial), ("trial", s.trial), ("paying", s.paying),
                                   ("grace", s.grace), ("terminal", s.terminal)) if on]
    out = [s.name + (f" ({', '.join(marks)})" if marks else "")]
    if s.description:
        out.append(f"  {s.description}")
    if not s.allows:
        out.append("  access:    denied: no work at all")
    else:
        out.append("  access:    allowed, within the quotas below")
        if s.features:
            out.append(f"  features:  {_features_text(plan, s)}")
        for meter in plan.meters:
            out.append(f"  {meter.name + ':':<10} {_quota_text(plan, s.quota(meter.name))}")
            extra = _beyond_limit_text(plan, s.quota(meter.name))
            if extra:
                out.append(f"  {'':<10} {extra}")
            out.append(f"  {'':<10} if the usage store cannot be read: {_fail_mode_text(plan, s, meter.name)}")
    out.extend(_timer_lines(plan, s))
    moves = [t for t in plan.transitions if s.name in plan.sources_of(t)]
    if s.terminal or not moves:
        out.append("  moves on:  never" + (" (terminal)" if s.terminal else ""))
        return out
    out.append("  moves on:")
    labels = [_explain_trigger(plan, s, t) for t in moves]
    width = max(map(len, labels))
    out.extend(f"    {label:<{width}}  -> {t.target}" + (" (stays)" if t.target == s.name else "")
               for label, t in zip(labels, moves))
    return out


def _features_text(plan: Plan, s: Status) -> str:
    named = [f for f in s.features if f != TIER_FEATURES]
    parts = [", ".join(named)] if named else []
    if TIER_FEATURES in s.features:
        per_tier = "; ".join(f"{t.name}: {', '.join(t.features) or 'none'}" for t in plan.tiers)
        addons = [a.name for a in plan.addons if a.features]
        parts.append(f"the subscribed tier's ({per_tier})" + (f" and its live add-ons' ({', '.join(addons)})"
                                                               if addons else ""))
    return " and ".join(parts) + "; any other feature: not entitled"


def _beyond_limit_text(plan: Plan, q: Quota | None) -> str:
    """What happens past the limit: credits, add-ons (for a tier quota)."""
    if q is None or q.kind is QuotaKind.UNLIMITED:
        return ""
    notes = []
    if q.kind is QuotaKind.TIER:
        adds = [f"{a.name} +{a.adds(q.meter)}" for a in plan.addons if a.adds(q.meter)]
        if adds:
            notes.append("add-ons add to it (" + ", ".join(adds) + " per unit)")
    if plan.credit(q.meter) is not None or any(g.meter == q.meter for t in plan.tiers for g in t.credits):
        notes.append("past the limit, the subject's credits are spent")
    return "; ".join(notes)


def _quota_text(plan: Plan, q: Quota | None) -> str:
    if q is None:
        return "no quota here, so none of it is allowed"
    if q.kind is not QuotaKind.TIER:
        return q.describe()
    per_tier = []
    for tier in plan.tiers:
        tq = next((x for x in tier.quotas if x.meter == q.meter), None)
        per_tier.append(f"{tier.name}: {tq.describe() if tq else 'none'}")
    return "the subscribed tier's quota (" + ("; ".join(per_tier) or "no tiers") + ")"


def _fail_mode_text(plan: Plan, s: Status, meter: str) -> str:
    declared = plan.meter(meter)
    default = declared.fail_mode if declared else FailMode.CLOSED
    mode = dict(s.fail_modes).get(meter, default)
    text = "open (work goes ahead)" if mode is FailMode.OPEN else "closed (work stops)"
    return text + (f", overriding the meter's {default.value}" if mode is not default else "")


def _timer_lines(plan: Plan, s: Status) -> list[str]:
    if not s.has_timer:
        return ["  timer:     none"]
    targets = [t.target for t in plan.transitions
               if t.trigger.kind is TriggerKind.TIMER and s.name in plan.sources_of(t)]
    moves = f"moves to {' or '.join(targets) or '?'}"
    if s.expires_at_text is None:
        return [f"  timer:     after {s.expires_after_text} in this status, {moves}"]
    fallback = (f"; while the subscription has no {s.expires_at.date if s.expires_at else 'such date'}, "
                f"after {s.expires_after_text} in this status") if s.expires_after_text else ""
    return [f"  timer:     at the subscription's {s.expires_at_text}{fallback}; then {moves} "
            "(the timer follows the date when Stripe moves it)"]


def _explain_trigger(plan: Plan, s: Status, t: Transition) -> str:
    if t.trigger.kind is TriggerKind.TIMER:
        text = f"when the timer runs out ({_timer_short(s)})"
    elif t.trigger.kind is TriggerKind.STRIPE:
        text = f"on Stripe {t.trigger.name}"
    else:
        text = f"on admin action {t.trigger.name}"
    if t.subscription is SubscriptionScope.OTHER:
        text += " about another of its subscriptions than the one its status follows"
    elif t.subscription is SubscriptionScope.ENDED:
        text += " about one of its subscriptions that has ended (an invoice paid after the end)"
    elif t.subscription is SubscriptionScope.ANY:
        text += " about any of its subscriptions"
    for i, c in enumerate(t.conditions):
        text += (" if " if i == 0 else " and ") + c.words()
    return text
