"""Pictures drawn on the server as SVG text: the plan's statuses and transitions, and usage against quota."""
from __future__ import annotations

from collections import deque

from plangate.policy import Plan

from ._html import e

_W, _H, _GAP_X, _GAP_Y = 170, 44, 50, 120


def plan_diagram(plan: Plan, counts: dict[str, int] | None = None) -> str:
    """The plan's statuses in layers (by the fewest moves from the initial status) and one arrow per pair of
    statuses that a transition joins, its triggers in its tooltip (written on the arrows, the shipped plan's
    triggers cover each other: `transitions_table` lists them); a status box shows how many subjects are in it
    when counts are given."""
    names = [s.name for s in plan.statuses]
    layer = _layers(names, [s.name for s in plan.statuses if s.initial], list(_pairs(plan)))
    rows: dict[int, list[str]] = {}
    for name in names:
        rows.setdefault(layer[name], []).append(name)
    width = max(len(r) for r in rows.values()) * (_W + _GAP_X) + _GAP_X
    at = {}
    for depth, row in rows.items():
        left = (width - len(row) * (_W + _GAP_X) + _GAP_X) / 2
        for i, name in enumerate(row):
            at[name] = (left + i * (_W + _GAP_X), _GAP_Y / 2 + depth * (_H + _GAP_Y))
    height = (max(rows) + 1) * (_H + _GAP_Y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plan-diagram" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'width="{width:.0f}" role="img" aria-label="the plan as a state diagram">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#556"/></marker></defs>']
    for (src, dst), labels in _pairs(plan).items():
        out.append(_arrow(at[src], at[dst], labels, src == dst))
    status = {s.name: s for s in plan.statuses}
    for name, (x, y) in at.items():
        s = status[name]
        fill = "#e8f3ec" if s.allows else "#f8e9e9"
        count = f" · {counts.get(name, 0)}" if counts is not None else ""
        out.append(f'<g class="status" data-status="{e(name)}"><rect x="{x:.0f}" y="{y:.0f}" width="{_W}" '
                   f'height="{_H}" rx="8" fill="{fill}" stroke="{"#1d2d44" if s.initial else "#889"}" '
                   f'stroke-width="{3 if s.initial or s.terminal else 1}"/>'
                   f'<text x="{x + _W / 2:.0f}" y="{y + 18:.0f}" text-anchor="middle" font-size="14" '
                   f'font-weight="bold">{e(name)}{e(count)}</text>'
                   f'<text x="{x + _W / 2:.0f}" y="{y + 35:.0f}" text-anchor="middle" font-size="11" fill="#445">'
                   f'{e(_facts(s))}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _pairs(plan: Plan) -> dict[tuple[str, str], list[str]]:
    """Each (from, to) pair of statuses a transition joins, with its triggers in the plan's order."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for t in plan.transitions:
        for src in dict.fromkeys(plan.sources_of(t)):
            triggers = pairs.setdefault((src, t.target), [])
            if str(t.trigger) not in triggers:
                triggers.append(str(t.trigger))
    return pairs


def transitions_table(plan: Plan) -> str:
    """The diagram's arrows as rows: from, to, and every trigger that moves a subject along it."""
    rows = "".join(f"<tr><td>{e(src)}</td><td>{e(dst)}</td><td>{e(', '.join(triggers))}</td></tr>"
                   for (src, dst), triggers in _pairs(plan).items())
    return f'<table class="transitions"><tr><th>from</th><th>to</th><th>on</th></tr>{rows}</table>'


def _facts(s) -> str:
    facts = ["access" if s.allows else "no access"]
    if s.has_timer:
        facts.append("timer")
    if s.terminal:
        facts.append("terminal")
    return ", ".join(facts)


def _layers(names: list[str], initial: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    queue = deque((n, 0) for n in initial)
    while queue:
        name, depth = queue.popleft()
        if name in out:
            continue
        out[name] = depth
        queue.extend((dst, depth + 1) for src, dst in edges if src == name and dst not in out)
    last = max(out.values(), default=-1) + 1
    return {n: out.get(n, last) for n in names}


def _arrow(a, b, labels: list[str], loop: bool) -> str:
    (ax, ay), (bx, by) = a, b
    title = f"<title>{e('; '.join(labels))}</title>"
    if loop:
        x, y = ax + _W, ay + _H / 2
        return (f'<g class="transition"><path d="M{x:.0f} {y - 8:.0f} c40 -30 40 46 0 16" fill="none" '
                f'stroke="#556" marker-end="url(#arrow)">{title}</path></g>')
    x1, x2 = ax + _W / 2, bx + _W / 2
    y1, y2 = (ay + _H, by) if by > ay else (ay, by + _H) if by < ay else (ay + _H, by + _H)
    bend = 30 * (1 if by >= ay else -1)
    cx, cy = (x1 + x2) / 2 + bend, (y1 + y2) / 2 + (bend if by == ay else 0)
    return (f'<g class="transition"><path d="M{x1:.0f} {y1:.0f} Q{cx:.0f} {cy:.0f} {x2:.0f} {y2:.0f}" fill="none" '
            f'stroke="#556" stroke-width="1.2" marker-end="url(#arrow)">{title}</path></g>')


def usage_bars(rows: list[dict]) -> str:
    """One bar per meter: used against the limit of its current window (full width: the limit)."""
    if not rows:
        return ""
    bar_w, line = 300, 26
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="usage" viewBox="0 0 {bar_w + 260} {line * len(rows) + 8}" '
           f'width="{bar_w + 260}" role="img" aria-label="usage against quota">']
    for i, row in enumerate(rows):
        y = 4 + i * line
        limit, used = row.get("limit"), row.get("used") or 0
        share = 1.0 if not limit else min(used / limit, 1.0)
        colour = "#a33" if not row.get("allowed") else "#3a6" if share < 0.8 else "#c80"
        text = f"{used} / {limit if limit is not None else 'unlimited'}"
        out.append(f'<text x="0" y="{y + 15}" font-size="12">{e(row["meter"])}</text>'
                   f'<rect x="120" y="{y}" width="{bar_w}" height="18" fill="#eef"/>'
                   f'<rect x="120" y="{y}" width="{bar_w * share:.0f}" height="18" fill="{colour}"/>'
                   f'<text x="{130 + bar_w}" y="{y + 15}" font-size="12">{e(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def usage_history(meter: str, limit: int | None, windows: list[tuple[str, int]]) -> str:
    """Columns of one meter's usage in its past windows and the current one (oldest first), against its limit
    (a dashed line) when it has one."""
    if not windows:
        return ""
    top = max([limit or 0, *(used for _, used in windows), 1])
    col, gap, height = 66, 10, 90
    width = len(windows) * (col + gap) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="usage-history" data-meter="{e(meter)}" '
           f'viewBox="0 0 {width} {height + 40}" width="{width}" role="img" '
           f'aria-label="{e(meter)} in past windows and the current one">']
    for i, (label, used) in enumerate(windows):
        x, h = 5 + i * (col + gap), round(height * used / top)
        fill = "#3a6" if i == len(windows) - 1 else "#8ab"
        out.append(f'<rect x="{x}" y="{height - h + 14}" width="{col}" height="{h}" fill="{fill}">'
                   f'<title>{e(label)}: {used}</title></rect>'
                   f'<text x="{x + col / 2}" y="{height - h + 10}" font-size="10" text-anchor="middle">{used}</text>'
                   f'<text x="{x + col / 2}" y="{height + 28}" font-size="9" text-anchor="middle">{e(label)}</text>')
    if limit:
        y = height - round(height * limit / top) + 14
        out.append(f'<line x1="0" x2="{width}" y1="{y}" y2="{y}" stroke="#a33" stroke-dasharray="4 3">'
                   f"<title>limit {limit}</title></line>")
    out.append("</svg>")
    return "".join(out)
