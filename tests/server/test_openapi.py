"""schema/openapi.json: a valid OpenAPI 3.1 document, in step with the app's routes and with _input.py,
and true of what a real gate answers, route by route and status by status."""
from __future__ import annotations

import gzip
import itertools
import json
import re
import sqlite3
import zlib
from datetime import datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict
from jsonschema import Draft202012Validator, FormatChecker
from yarl import URL
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from plangate.server.http.api import GATE
from plangate.server.http.app import ADMIN_PATHS
from plangate.server.store import USAGE_CEILING

from .conftest import TOKEN, _SCOPED, token_for
from .stripe_meters import KEY


@pytest.fixture
async def gate(start_gate, entitled_plan):
    """The shipped plan with credits and a feature: every route has something to answer. Its packs need a Stripe
    key (a reload refuses the plan without one); no test here asks Stripe (a port nothing listens on)."""
    return await start_gate(plan=entitled_plan, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE="http://127.0.0.1:9")

SPEC_PATH = Path(__file__).resolve().parents[2] / "schema" / "openapi.json"
SPEC = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
BASE = "urn:plangate:openapi"
REGISTRY = Registry().with_resource(BASE, Resource.from_contents(SPEC, default_specification=DRAFT202012))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
FORMATS = FormatChecker()
_serial = itertools.count()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value) -> bool:
    # What the gate writes: RFC 3339 in UTC with a Z (jsonschema checks no format without extra packages).
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", value):
        raise ValueError(f"{value!r} is not RFC 3339 UTC")
    datetime.fromisoformat(value)
    return True


def pointer(*parts: str) -> str:
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def validator(*parts: str) -> Draft202012Validator:
    """A validator for the schema at that place in the spec; its $refs resolve within the spec."""
    return Draft202012Validator({"$ref": BASE + pointer(*parts)}, registry=REGISTRY, format_checker=FORMATS)


def resolve(node: dict) -> tuple[dict, list[str]]:
    """(the object, its path in the spec) for a node that may be a {"$ref": "#/components/..."}."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in node["$ref"].removeprefix("#/").split("/")]
    found = SPEC
    for p in parts:
        found = found[int(p)] if isinstance(found, list) else found[p]
    return found, parts


def walk(node, path=()):
    """Every (path, dict) in the spec."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def operations():
    for template, item in SPEC["paths"].items():
        for method in METHODS:
            if method in item:
                yield template, method, item[method]


def schema_places():
    """Every place OpenAPI puts a schema: components, media types, parameters, headers."""
    for name in SPEC["components"]["schemas"]:
        yield ("components", "schemas", name)
    for path, node in walk(SPEC):
        if "schema" in node and path[:2] != ("components", "schemas"):
            yield path + ("schema",)


def documented(method: str, template: str, status: int, media: str, payload, headers) -> None:
    """Assert that the spec documents this status for this route, and that the answer matches it.
    template None: a request to no route (404, 405), answered as every operation's `default`."""
    if template is None:
        response = {"$ref": "#/components/responses/Unexpected"}
    else:
        responses = SPEC["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, which is not documented"
        place, response = ["paths", template, method.lower(), "responses", str(status)], responses[str(status)]
    if "$ref" in response:
        response, place = resolve(response)
    assert media in response["content"], f"{method} {template} {status}: {media} not documented"
    errors = sorted(validator(*place, "content", media, "schema").iter_errors(payload), key=str)
    assert not errors, f"{method} {template} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    for name in response.get("headers", {}):
        assert headers.get(name), f"{method} {template} {status}: header {name} documented, not sent"


async def call(gate, method: str, path: str, template: str, *, body=None, raw: bytes | None = None,
               token=_SCOPED, headers: dict | None = None) -> tuple[int, object]:
    """Send a real request, check the answer against the spec, return (status, payload)."""
    token = token_for(path) if token is _SCOPED else token
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token is not None else {})}
    kwargs = {"data": raw} if raw is not None else ({"json": body} if body is not None else {})
    url = URL(gate.url + path, encoded=True)    # the path as written, its escapes (good or bad) untouched
    async with gate.session.request(method, url, headers=headers, **kwargs) as resp:
        text, media = await resp.text(), resp.content_type
        payload = json.loads(text) if media == "application/json" else text
        documented(method, template, resp.status, media, payload, resp.headers)
        return resp.status, payload


class TestDocument:
    def test_is_openapi_3_1_with_the_2020_12_dialect(self):
        assert re.fullmatch(r"3\.1\.\d+", SPEC["openapi"])
        assert SPEC["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
        assert SPEC["info"]["title"] and isinstance(SPEC["info"]["version"], str)

    @pytest.mark.parametrize("place", list(schema_places()), ids=lambda p: "/".join(map(str, p)))
    def test_every_schema_is_a_valid_2020_12_schema(self, place):
        schema, _ = resolve({"$ref": pointer(*place)})
        Draft202012Validator.check_schema(schema)

    def test_every_ref_resolves(self):
        resolver = REGISTRY.resolver(base_uri=BASE)
        refs = [node["$ref"] for _, node in walk(SPEC) if "$ref" in node]
        assert refs
        for ref in refs:
            assert ref.startswith("#/components/"), ref
            assert resolver.lookup(ref).contents is not None

    def test_every_component_is_used(self):
        used = {node["$ref"] for _, node in walk(SPEC) if "$ref" in node}
        for kind, components in SPEC["components"].items():
            if kind == "securitySchemes":
                continue
            for name in components:
                assert pointer("components", kind, name) in used, f"components/{kind}/{name} is never used"

    @pytest.mark.parametrize("template, method, op", list(operations()), ids=lambda v: v if isinstance(v, str) else "")
    def test_operation_is_well_formed(self, template, method, op):
        item = SPEC["paths"][template]
        params = [p for p in item.get("parameters", []) + op.get("parameters", []) if p["in"] == "path"]
        assert sorted(p["name"] for p in params) == sorted(re.findall(r"{(\w+)}", template))
        assert all(p["required"] is True for p in params)
        assert op["responses"] and all(re.fullmatch(r"[1-5]\d\d|default", k) for k in op["responses"])
        for response in op["responses"].values():
            assert (resolve(response)[0] if "$ref" in response else response)["description"]
        secured = template.startswith("/v1/")
        assert bool(op.get("security")) == secured
        assert ("401" in op["responses"]) == secured
        assert ("403" in op["responses"]) == (template in ADMIN_PATHS) == (op.get("security") == [{"adminAuth": []}])
        for requirement in op.get("security", []):
            assert set(requirement) <= set(SPEC["components"]["securitySchemes"])
        if "requestBody" in op:
            assert "413" in op["responses"]
        if template in POSTS:    # bodies the gate validates are closed; Stripe's events are not ours to close
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert resolve(schema)[0]["additionalProperties"] is False

    def test_operation_ids_are_unique(self):
        ids = [op["operationId"] for _, _, op in operations()]
        assert len(ids) == len(set(ids))

    def test_error_codes_are_the_ones_the_server_uses(self):
        root = SPEC_PATH.parents[1] / "server" / "http"
        source = "".join(path.read_text(encoding="utf-8") for path in sorted(root.glob("*.py")))
        used = set(re.findall(r'BadRequest\(\d{3}, "(\w+)"', source))
        used |= set(re.findall(r'"(unknown_\w+)", "', source))                # inp.one_of(..., code, what)
        used |= set(re.findall(r'\d{3}: "(\w+)"', source))                   # app._HTTP_ERRORS
        used |= set(re.findall(r'_error\(\d{3}, "(\w+)"', source)) | {"http_error"}
        assert set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"]) == used


# Routes another part of the gate is still building; each leaves this set when the spec documents it.
NOT_YET_DOCUMENTED: set[tuple[str, str]] = set()


class TestRoutes:
    async def test_every_route_is_documented_and_every_documented_route_exists(self, gate):
        served = set()
        for route in gate.app.router.routes():
            # HEAD beside every GET; "*" answers a path's other methods (405) and every other path (404); the
            # console's HTML pages (/console) are for people, not part of the HTTP API
            if route.method not in ("HEAD", "*") and not route.resource.canonical.startswith("/console"):
                served.add((route.method.lower(), route.resource.canonical))
        documented = {(method, template) for template, method, _ in operations()}
        assert documented <= served, f"documented, not served: {sorted(documented - served)}"
        assert served - documented <= NOT_YET_DOCUMENTED, f"served, not documented: {sorted(served - documented)}"
        assert {r for r in served if r[1].startswith("/v1/")} <= documented

    async def test_openapi_json_serves_this_file(self, gate):
        status, payload = await call(gate, "GET", "/openapi.json", "/openapi.json", token=None)
        assert status == 200 and payload == SPEC


# --- requests: the documented bodies and what _input.py checks are the same thing ---------------------

def request_schema(template: str) -> tuple[dict, Draft202012Validator]:
    place = ("paths", template, "post", "requestBody", "content", "application/json", "schema")
    schema, _ = resolve(SPEC["paths"][template]["post"]["requestBody"]["content"]["application/json"]["schema"])
    return schema, validator(*place)


def full_bodies(template: str) -> list[dict]:
    """Bodies that use every documented field (transition: `to` or `action`, never both)."""
    n = next(_serial)
    base = {"subject": f"user-{n}", "meter": "requests", "amount": 2}
    return {
        "/v1/check": [base, {"subject": f"user-{n}", "feature": "priority_support"}],
        "/v1/consume": [{**base, "idempotency_key": f"job-{n}"}],
        "/v1/usage": [{**base, "idempotency_key": f"job-{n}"}],
        "/v1/subjects/{subject}/transition": [{"to": "paid", "reason": "support ticket 7", "actor": "ops"},
                                              {"action": "close_account", "reason": "abuse", "actor": "ops"}],
        "/v1/subjects/{subject}/erase": [{"actor": "privacy-desk"}],
        "/v1/subjects/{subject}/credits": [{"meter": "requests", "amount": 50, "reason": "goodwill", "actor": "ops",
                                            "idempotency_key": f"grant-{n}", "expires_at": "2099-01-01T00:00:00Z",
                                            "priority": 3}],
        "/v1/subjects/{subject}/traits": [{"traits": {"members": 3}, "actor": "ops", "reason": "a contract"}],
        "/v1/plan/reload": [{"actor": "ops"}],
        "/v1/plan/upgrade": [{"tier": "pro", "reason": "price change", "actor": "ops"},
                             {"subjects": [f"user-{n}"], "reason": "support ticket 8"}],
        "/v1/overage/resend": [{"actor": "ops", "reason": "meter created", "subject": f"user-{n}",
                                "event_name": "api_requests_overage", "identifier": f"pgo-{n}"}],
    }[template]


# Bodies the gate validates itself (the webhook's body is Stripe's event, verified by signature instead).
POSTS = [t for t, m, op in operations() if m == "post" and "requestBody" in op and t != "/webhook/stripe"]
BAD_TEXT = ["", "x" * 201, 5, True, ["a"], {"a": 1}, "a\x00b", "line\nbreak", "del\x7f"]
BAD_AMOUNT = [0, -1, -(2**63), 1.5, "1", True, None, [1], {}]
# What the Subject pattern refuses beyond Text's (the rest of the rule, NFC and printable, is tests/server/
# test_subjects.py's).
BAD_SUBJECT = BAD_TEXT + [" alice", "alice ", "\u0085alice"]
BAD_SUBJECTS = [[], "a", None, 5, {"a": 1}, [""], [5], ["a\x00b"], ["x"] * 51]


def concrete(template: str) -> str:
    return template.replace("{subject}", f"user-{next(_serial)}").replace("{job}", "sweep")


BAD_BY_NAME = {
    "expires_at": [5, True, None, [], {}],
    "priority": [-1, 1001, 1.5, "1", True, None],
    "traits": [{}, [], "x", None, {"Members": 1}, {"a": -1}, {"a": 1.5}, {"a": "1"}, {"a": True},
               {f"t{i}": 1 for i in range(33)}],
}


def bad_values(field: dict, name: str = "") -> list:
    if "$ref" not in field:
        return BAD_BY_NAME[name]
    kind = field["$ref"].rsplit("/", 1)[-1]
    return {"Text": BAD_TEXT, "Amount": BAD_AMOUNT, "Subject": BAD_SUBJECT, "SubjectList": BAD_SUBJECTS}[kind]


class TestRequestsMatchValidation:
    @pytest.mark.parametrize("template", POSTS)
    async def test_a_body_with_every_documented_field_is_accepted(self, gate, template):
        schema, check = request_schema(template)
        bodies = full_bodies(template)
        assert set().union(*bodies) == set(schema["properties"])
        for body in bodies:
            check.validate(body)
            status, payload = await call(gate, "POST", concrete(template), template, body=body)
            assert status == 200, payload

    @pytest.mark.parametrize("template", POSTS)
    async def test_an_undocumented_field_is_refused(self, gate, template):
        _, check = request_schema(template)
        body = {**full_bodies(template)[0], "colour": "red"}
        assert not check.is_valid(body)
        status, payload = await call(gate, "POST", concrete(template), template, body=body)
        assert (status, payload["error"]) == (400, "unknown_field")

    @pytest.mark.parametrize("template", POSTS)
    async def test_every_required_field_is_required(self, gate, template):
        schema, check = request_schema(template)
        for name in schema.get("required", ()):
            body = {k: v for k, v in full_bodies(template)[0].items() if k != name}
            assert not check.is_valid(body)
            status, payload = await call(gate, "POST", concrete(template), template, body=body)
            assert (status, payload["error"]) == (400, "missing_field"), name

    @pytest.mark.parametrize("template", POSTS)
    async def test_every_documented_field_is_checked(self, gate, template):
        """Each value the schema refuses, the gate refuses too (nothing documented goes unchecked)."""
        schema, check = request_schema(template)
        for name, field in schema["properties"].items():
            good = next(b for b in full_bodies(template) if name in b)
            for value in bad_values(field, name):
                body = {**good, name: value}
                assert not check.is_valid(body), (name, value)
                status, payload = await call(gate, "POST", concrete(template), template, body=body)
                assert (status, payload["error"]) == (400, "invalid_field"), (name, value, payload)

    @pytest.mark.parametrize("body", [{"reason": "r"}, {"to": "paid", "action": "close_account", "reason": "r"}])
    async def test_transition_wants_exactly_one_of_to_and_action(self, gate, body):
        _, check = request_schema("/v1/subjects/{subject}/transition")
        assert not check.is_valid(body)
        status, payload = await call(gate, "POST", "/v1/subjects/u/transition", "/v1/subjects/{subject}/transition",
                                     body=body)
        assert (status, payload["error"]) == (400, "invalid_field")


# --- responses: every documented error, for real --------------------------------------------------

DECIDE = ["/v1/check", "/v1/consume", "/v1/usage"]
OK_BODY = {"subject": "u", "meter": "requests", "amount": 1, "idempotency_key": "k-1"}
TOO_LARGE = b'{"subject": "' + b"a" * 20_000 + b'", "meter": "requests"}'


def with_key(template: str, body: dict) -> dict:
    return body if template != "/v1/check" else {k: v for k, v in body.items() if k != "idempotency_key"}


BAD_RAW = [
    (b"not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"\xff\xfe{}", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'"a string"', 400, "invalid_json"),
    (b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
    (b'{"subject": "\\ud800", "meter": "requests"}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": 100000000000}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": 1e400}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": NaN}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": 1.0}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "tokens"}', 422, "unknown_meter"),
    (b'{"subject": "u", "meter": "requests", "amount": 1, "amount": 1000}', 400, "duplicate_field"),
    (TOO_LARGE, 413, "body_too_large"),
]


class TestErrorsAsDocumented:
    @pytest.mark.parametrize("template", DECIDE)
    @pytest.mark.parametrize("raw, status, code", BAD_RAW, ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else None)
    async def test_bad_bodies(self, gate, template, raw, status, code):
        got, payload = await call(gate, "POST", template, template, raw=raw)
        assert (got, payload["error"]) == (status, code)

    @pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789", TOKEN.upper()])
    @pytest.mark.parametrize("template", [t for t, _, _ in operations() if t.startswith("/v1/")])
    async def test_without_the_right_token(self, gate, template, token):
        method = "POST" if "post" in SPEC["paths"][template] else "GET"
        body = with_key(template, OK_BODY) if method == "POST" else None
        got, payload = await call(gate, method, concrete(template), template, body=body, token=token)
        assert (got, payload["error"]) == (401, "unauthorized")

    @pytest.mark.parametrize("template", ["/v1/consume", "/v1/usage"])
    async def test_idempotency_key_reused_for_other_work(self, gate, template):
        assert (await call(gate, "POST", template, template, body=OK_BODY))[0] == 200
        for change in ({"amount": 2}, {"subject": "v"}):
            got, payload = await call(gate, "POST", template, template, body={**OK_BODY, **change})
            assert (got, payload["error"]) == (409, "idempotency_key_reused")

    async def test_usage_past_the_window_ceiling(self, gate):
        """A count the window cannot hold (past 2**62) is the documented 422; the window is filled by a plain SQL
        write in the gate's own SQLite file (tests/server/test_usage_ceiling.py covers both stores)."""
        assert (await call(gate, "POST", "/v1/usage", "/v1/usage", body=OK_BODY))[0] == 200
        with sqlite3.connect(gate.database) as db:
            db.execute("UPDATE quota_usage SET used = ? WHERE subject = 'u'", (USAGE_CEILING,))
        got, payload = await call(gate, "POST", "/v1/usage", "/v1/usage", body={**OK_BODY, "idempotency_key": "k-2"})
        assert (got, payload["error"]) == (422, "usage_ceiling")

    @pytest.mark.parametrize("body, code", [({"to": "nowhere", "reason": "r"}, "unknown_status"),
                                            ({"action": "launch", "reason": "r"}, "unknown_action")])
    async def test_unknown_status_or_action(self, gate, body, code):
        template = "/v1/subjects/{subject}/transition"
        got, payload = await call(gate, "POST", concrete(template), template, body=body)
        assert (got, payload["error"]) == (422, code)

    async def test_transition_body_too_large(self, gate):
        template = "/v1/subjects/{subject}/transition"
        got, payload = await call(gate, "POST", concrete(template), template, raw=TOO_LARGE)
        assert (got, payload["error"]) == (413, "body_too_large")

    # %FF and %C3%28 are no UTF-8, %zz and a trailing % no escape: aiohttp would leave them as they are, naming
    # the subject sent as %25FF (or %25zz).
    @pytest.mark.parametrize("subject", ["x" * 201, "a%01b", "%7F", "%FF", "a%C3%28", "%zz", "a%2"])
    async def test_bad_subject_in_the_path(self, gate, subject):
        for method, template, body in (("GET", "/v1/subjects/{subject}", None),
                                       ("POST", "/v1/subjects/{subject}/transition", {"to": "paid", "reason": "r"})):
            got, payload = await call(gate, method, template.replace("{subject}", subject), template, body=body)
            assert (got, payload["error"]) == (400, "invalid_field")

    async def test_a_percent_sign_in_a_subject_is_sent_escaped(self, gate):
        got, payload = await call(gate, "GET", "/v1/subjects/%25zz%25FF", "/v1/subjects/{subject}")
        assert (got, payload["subject"]) == (200, "%zz%FF")

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    async def test_a_body_not_in_the_content_encoding_it_names(self, gate, encoding):
        template = "/v1/consume"
        plain = json.dumps(OK_BODY).encode()
        got, payload = await call(gate, "POST", template, template, raw=plain, headers={"Content-Encoding": encoding})
        assert (got, payload["error"]) == (400, "invalid_body") and encoding in payload["message"]
        status, view = await gate.get("/v1/subjects/u")
        assert status == 200 and view["usage"][0]["used"] == 0
        # The connection closed after the 400 (what was left of the body cannot be told from a next request):
        # the session's next request, on a new connection, is answered.
        assert (await call(gate, "POST", "/v1/check", "/v1/check", body={"subject": "u", "meter": "requests"}))[0] \
            == 200
        packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
        got, payload = await call(gate, "POST", template, template, raw=packed, headers={"Content-Encoding": encoding})
        assert (got, payload["used"]) == (200, 1)

    # aiohttp knows br and zstd and answered them (without their decoders installed) in plain text before any
    # route ran; the others it passed on as if not encoded at all.
    @pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "x-made-up", "gzip, gzip"])
    @pytest.mark.parametrize("template", POSTS)
    async def test_a_content_encoding_the_gate_does_not_take_is_415(self, gate, template, encoding):
        path = concrete(template)
        raw = json.dumps(full_bodies(template)[0]).encode()
        got, payload = await call(gate, "POST", path, template, raw=raw, headers={"Content-Encoding": encoding})
        assert (got, payload["error"]) == (415, "unsupported_media_type") and encoding in payload["message"]
        got, _ = await call(gate, "POST", path, template, raw=raw)
        assert got == 200       # sent as it is: taken (the first was not)

    @pytest.mark.parametrize(("second", "status"), [("gzip", 415), ("", 200), ("identity", 200), (" , ", 200)])
    async def test_two_content_encoding_headers_are_the_list_they_make(self, gate, second, status):
        """Sent twice, the header is one list of codings: the first alone was decoded and the rest ignored. Empty
        elements and identity apply nothing (RFC 9110 5.6.1)."""
        plain = json.dumps(OK_BODY).encode()
        packed = gzip.compress(gzip.compress(plain)) if second == "gzip" else gzip.compress(plain)
        headers = CIMultiDict([("Authorization", f"Bearer {token_for('/v1/consume')}"), ("Content-Encoding", "gzip"),
                               ("Content-Encoding", second)])
        async with gate.session.post(gate.url + "/v1/consume", data=packed, headers=headers) as resp:
            payload = await resp.json()
            documented("POST", "/v1/consume", resp.status, resp.content_type, payload, resp.headers)
        assert resp.status == status, payload
        if status == 415:
            assert payload["error"] == "unsupported_media_type" and "gzip, gzip" in payload["message"]

    async def test_a_gzip_body_that_decodes_past_the_limit_is_413(self, gate):
        template = "/v1/consume"
        packed = gzip.compress(b'{"subject": "' + b"a" * 10_000_000 + b'", "meter": "requests"}')
        assert len(packed) < 20_000
        got, payload = await call(gate, "POST", template, template, raw=packed, headers={"Content-Encoding": "gzip"})
        assert (got, payload["error"]) == (413, "body_too_large")

    async def test_unknown_route_and_method_use_the_error_shape(self, gate):
        assert (await call(gate, "GET", "/v1/nothing", None))[1]["error"] == "not_found"
        assert (await call(gate, "GET", "/nothing", None, token=None))[1]["error"] == "not_found"
        assert (await call(gate, "GET", "/v1/check", None))[1]["error"] == "method_not_allowed"
        assert (await call(gate, "DELETE", "/v1/subjects/u", None))[1]["error"] == "method_not_allowed"

    async def test_unknown_job(self, gate):
        got, payload = await call(gate, "POST", "/v1/jobs/launch", "/v1/jobs/{job}")
        assert (got, payload["error"]) == (422, "unknown_job")

    async def test_store_unavailable(self, gate):
        await gate.app[GATE].store.close()
        subject = "/v1/subjects/{subject}"
        for method, template, body in (("POST", "/v1/usage", OK_BODY), ("GET", subject, None),
                                       ("POST", subject + "/transition", {"action": "close_account", "reason": "r"})):
            got, payload = await call(gate, method, concrete(template), template, body=body)
            assert (got, payload["error"]) == (503, "store_unavailable")
        got, payload = await call(gate, "POST", "/v1/jobs/sweep", "/v1/jobs/{job}")
        assert (got, payload["error"]) == (503, "job_failed")
        got, payload = await call(gate, "GET", "/readyz", "/readyz", token=None)
        assert got == 503 and payload["ready"] is False and payload["checks"]["store"]["ok"] is False
        for template in ("/v1/check", "/v1/consume"):      # the fail mode answers, still 200
            got, payload = await call(gate, "POST", template, template, body=with_key(template, OK_BODY))
            assert (got, payload["reason"], payload["status"]) == (200, "fail_open", None)


# --- responses: every kind of answer, for real ----------------------------------------------------

class TestAnswersAsDocumented:
    async def test_decisions_of_every_kind(self, gate):
        post = lambda t, **b: call(gate, "POST", t, t, body={"subject": "u", "meter": "requests", **b})  # noqa: E731
        assert (await post("/v1/check"))[1]["reason"] == "ok"
        got = [(await post("/v1/consume", amount=9, idempotency_key=f"c{i}"))[1] for i in range(3)]
        assert [g["counted"] for g in got] == [True, True, False] and got[2]["retry_after"] > 0
        assert (await post("/v1/consume", amount=9, idempotency_key="c0"))[1]["duplicate"] is True
        assert (await post("/v1/check", amount=5))[1]["reason"] == "quota_exhausted"
        assert (await post("/v1/usage", amount=50, idempotency_key="u0"))[1]["remaining"] == 0
        template = "/v1/subjects/{subject}/transition"
        moved = (await call(gate, "POST", "/v1/subjects/u/transition", template,
                            body={"action": "close_account", "reason": "r"}))[1]
        assert moved["moved"] is True and moved["to"] == "closed"
        assert (await post("/v1/check"))[1]["reason"] == "status_denies"
        assert (await post("/v1/consume"))[1]["counted"] is False
        view = (await call(gate, "GET", "/v1/subjects/u", "/v1/subjects/{subject}"))[1]
        assert view["known"] is True and view["transitions"][0]["to"] == "closed"
        stay = (await call(gate, "POST", "/v1/subjects/u/transition", template,
                           body={"to": "closed", "reason": "again", "actor": "ops"}))[1]
        assert stay["moved"] is False

    async def test_unknown_subject_view(self, gate):
        view = (await call(gate, "GET", "/v1/subjects/new%20user", "/v1/subjects/{subject}"))[1]
        assert (view["subject"], view["known"], view["transitions"]) == ("new user", False, [])

    @pytest.mark.parametrize("env, reason", [({"SUBSCRIPTION_ENABLED": "false"}, "disabled"),
                                             ({"SUBSCRIPTION_KILL_SWITCH": "true"}, "kill_switch")])
    async def test_settings_that_decide_alone(self, start_gate, env, reason):
        gate = await start_gate(**env)
        for template in DECIDE:
            got, payload = await call(gate, "POST", template, template, body=with_key(template, OK_BODY))
            assert (got, payload["reason"]) == (200, reason if template != "/v1/usage" else "ok")

    @pytest.mark.parametrize("job", ["sweep", "reconcile", "cleanup", "report"])
    async def test_jobs(self, gate, job):
        await call(gate, "POST", "/v1/usage", "/v1/usage", body=OK_BODY)
        got, payload = await call(gate, "POST", f"/v1/jobs/{job}", "/v1/jobs/{job}")
        assert (got, payload["job"]) == (200, job)

    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
    async def test_probes(self, gate, path):
        got, payload = await call(gate, "GET", path, path, token=None)
        assert got == 200 and payload
