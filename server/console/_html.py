"""The console's page frame: escaping, the layout and its CSS (small, responsive, no script)."""
from __future__ import annotations

import re
from html import escape
from urllib.parse import quote

from aiohttp import web

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{background:#1d2d44;color:#fff;padding:.5em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:1em;max-width:70em;margin:auto}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #dde;padding:.3em;
text-align:left;vertical-align:top}section{margin-bottom:1.5em}.wide{overflow-x:auto}
.bad{color:#a11}.ok{color:#175}.muted{color:#667}pre{white-space:pre-wrap;background:#fff;padding:.5em}
input,select,button{font:inherit;padding:.3em;margin:.2em 0}label{display:block;margin:.3em 0}
svg{max-width:100%;height:auto;background:#fff}
@media (max-width:40em){main{padding:.5em}td,th{font-size:13px}}
"""


def e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


# A plan rule's place as the engine writes it, "<path>/plans.yaml:157 transitions[2]": the directories before the
# file's name, where a rule's path in the plan follows.
_RULE_DIRECTORIES = re.compile(r"(?<![^\s(])/[^\s\"'<>()&]*/(?=[^/\s\"'<>()&]+\.ya?ml:[0-9]+ "
                               r"(?:statuses|transitions|tiers|meters|credits|addons|features|stripe)\b)")


def without_directories(text: str, file: str | None = None) -> str:
    """text with every plan rule's file named by its name alone: the console never shows the gate's directories.
    `file`: the plan file the gate runs, replaced whole first (its directories may hold a space); the reasons of
    transitions and events name the file as it was when they were written."""
    if file:
        text = text.replace(e(file), e(file.rsplit("/", 1)[-1]))
    return _RULE_DIRECTORIES.sub("", text)


def link(path: str, text) -> str:
    return f'<a href="{e(path)}">{e(text)}</a>'


def subject_path(subject: str, then: str = "") -> str:
    """A subject's page, or (then: "/transition") its action. A subject `.` or `..` goes in the query: a browser takes
    either for a step of an address's path, escaped or not, and went to another page."""
    if subject in (".", ".."):
        return f"/console/subject{then}?id={quote(subject, safe='')}"
    return "/console/subjects/" + quote(subject, safe="") + then


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">'


def page(title: str, body: str, *, csrf: str | None = None, who: str | None = None,
         status: int = 200) -> web.Response:
    nav = ""
    if csrf is not None:
        nav = ("".join(link(p, t) for p, t in (("/console/", "Find"), ("/console/events", "Webhooks"),
                                               ("/console/jobs", "Jobs"), ("/console/plan", "Plan"),
                                               ("/console/health", "Health")))
               + f'<span class="muted">{e(who)}</span>'
               + f'<form method="post" action="/console/logout">{csrf_field(csrf)}<button>Log out</button></form>')
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{e(title)} · plangate console</title><style>{_CSS}</style></head>'
            f'<body><header><strong>plangate</strong>{nav}</header><main><h1>{e(title)}</h1>{body}</main>'
            f'</body></html>')
    return web.Response(text=html, status=status, content_type="text/html", headers=_HEADERS)


# No framing, no scripts from anywhere, no inline script at all; the CSS is inline.
_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                                       "form-action 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
