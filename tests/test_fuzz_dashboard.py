"""Fuzzing the dashboard: every page's forms and htmx fragments, as an admin and as an operator.

The routes come from the URL configuration (tests/route_walk.py, against the real objects made by
`world`). Each GET page is asked with generated query strings — its own filter fields, the usual
ones (page, q, stage, tag, start, end, sort …) and random ones, bad values all — with and without
`HX-Request: true`. Every route that takes a POST is sent generated form data: the field names
come from the rendered <form>s (and hx-post elements) that point at it, so a new form is covered
without touching this file; the values are missing, empty, very long, NUL / RTL unicode, huge or
negative numbers, malformed or far-future dates, lists where one value is expected, unknown
choices and ids of objects that do not exist. No answer may be a 5xx. Each request is rolled
back, so the pages keep their objects for the next.

CI runs a bounded, derandomised number of examples; FUZZ_EXAMPLES=200 FUZZ_SEARCH=1 searches
further by hand (the numbers are per route and role).
"""

import contextlib
import json
import os
import traceback
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from django.db import transaction
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from config.route_access import ROUTE_ACCESS
from tests.factories import UserFactory
from tests.route_walk import routes, world

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
SEARCH = os.environ.get("FUZZ_SEARCH") == "1"
FUZZ_ROLES = ("admin", "operator")
# Not fuzzed: signing out would end the session the rest of the walk runs in.
LEFT_OUT = {"logout"}
# The query parameters the dashboard's lists and charts read, asked on every page.
KNOWN_PARAMS = ("page", "page_size", "q", "search", "stage", "tag", "start", "end", "sort",
                "order", "status", "channel", "owner", "model", "segment", "campaign", "kind",
                "range", "compare", "customer", "cursor", "next", "days", "week", "metric")


class FormParser(HTMLParser):
    """The forms of a page: {action path: {field name: [values seen]}}; an element with
    hx-post counts as a form whose fields are every field on the page (hx-include picks them
    by name) plus its hx-vals."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.page = page
        self.forms: list[tuple[str, str, dict[str, list[str]]]] = []
        self.hx_posts: list[tuple[str, dict[str, list[str]]]] = []
        self.fields: dict[str, list[str]] = {}
        self._form: dict[str, list[str]] | None = None
        self._select: str | None = None

    def _path(self, url: str | None) -> str:
        return urlsplit(urljoin(self.page, url or "")).path

    def _field(self, name: str, value: str | None):
        for bag in (self.fields, self._form):
            if bag is not None:
                values = bag.setdefault(name, [])
                if value is not None and value not in values:
                    values.append(value)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "hx-post" in attrs:
            vals = {}
            with contextlib.suppress(ValueError, AttributeError):
                vals = {k: [str(v)] for k, v in json.loads(attrs.get("hx-vals") or "{}").items()}
            self.hx_posts.append((self._path(attrs["hx-post"]), vals))
        if tag == "form":
            self._form = {}
            self.forms.append(((attrs.get("method") or "get").lower(),
                               self._path(attrs.get("action")), self._form))
        elif tag in ("input", "textarea", "button") and attrs.get("name"):
            self._field(attrs["name"], attrs.get("value"))
        elif tag == "select" and attrs.get("name"):
            self._select = attrs["name"]
            self._field(self._select, None)
        elif tag == "option" and self._select:
            self._field(self._select, attrs.get("value"))

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None


# Values nobody should send, and a few everyone sends.
nasty_text = st.one_of(
    st.just(""), st.just(" "), st.text(max_size=12),
    st.text(alphabet=st.sampled_from("\x00\u202e\u200f\u0645\u05d0\ufeff\U0001f600a<>'\"%_\\"),
            min_size=1, max_size=8),
    st.just("x" * 5000), st.just("\x00"), st.just("\u202eevil"),
)
nasty_number = st.one_of(
    st.integers(-(2 ** 70), 2 ** 70).map(str), st.sampled_from(
        ["-1", "0", "999999999", "99999999999999999999", "1e309", "NaN", "inf", "-0", "1.5",
         "0x10", "１２"]))
nasty_date = st.sampled_from(
    ["2024-13-45", "0000-00-00", "9999-12-31", "31/12/2024", "2999-01-01", "2999-01-01T00:00",
     "1900-01-01", "0001-01-01", "2024-02-30", "today", "2024-01-01T25:61", "-2024-01-01",
     "20240101"])
nasty_scalar = st.one_of(nasty_text, nasty_number, nasty_date,
                         st.sampled_from(["zzz-unknown", "on", "true", "null", "[]", "{}", "0", "next",
                                          "//evil.example/", "https://evil.example/", "?a=1",
                                          '{"field": "nope"}', '{"op": "and", "children": 1}']))


def value_for(seen: list[str]):
    """One field's value: one of the values the page offers, or a nasty one; sometimes a
    list where one value is expected."""
    scalar = st.one_of(st.sampled_from(seen), nasty_scalar) if seen else nasty_scalar
    return st.one_of(scalar, st.lists(scalar, min_size=2, max_size=3))


@st.composite
def form_data(draw, fields: dict[str, list[str]]):
    """The form as the page would send it with one to three fields spoilt, or every field
    random (some left out), plus now and then a field the form does not have."""
    names = sorted(fields)
    if names and draw(st.booleans()):
        data = {name: fields[name][0] for name in names if fields[name]}
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
            if draw(st.booleans()):
                data.pop(name, None)
            else:
                data[name] = draw(value_for(fields[name]))
    else:
        data = {name: draw(value_for(fields[name])) for name in names if draw(st.booleans())}
    if draw(st.integers(0, 4)) == 0:
        data[draw(st.text("abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=10))] = draw(
            nasty_scalar)
    return data


@st.composite
def query_string(draw, own: list[str]):
    names = sorted({*KNOWN_PARAMS, *own})
    query = {name: draw(value_for([])) for name in draw(st.lists(st.sampled_from(names),
                                                                 max_size=4, unique=True))}
    if draw(st.booleans()):
        query[draw(st.text(min_size=1, max_size=8))] = draw(nasty_scalar)
    return query


@pytest.fixture
def site(client, walk_settings):
    """The signed-in clients of the fuzzed roles, the routes, and the forms found on the pages
    (each page read as each role)."""
    users = {role: UserFactory(username=f"fuzz-{role}", roles=[role])
             for role in ("analyst", "operator", "admin")}
    paths = {name: path for name, path in routes(world(users)).items()
             if not path.startswith(("/api/", "/admin/")) and name not in LEFT_OUT}
    clients = {}
    for role in FUZZ_ROLES:
        clients[role] = client.__class__(HTTP_ACCEPT_LANGUAGE="en")
        clients[role].force_login(users[role])
    forms: dict[str, dict[str, list[str]]] = {}
    filters: dict[str, list[str]] = {}
    for name, path in paths.items():
        if "get" not in ROUTE_ACCESS.get(name, {}):
            continue
        for role in FUZZ_ROLES:
            response = clients[role].get(path)
            if "html" not in response.get("Content-Type", ""):
                continue
            parser = FormParser(path)
            parser.feed(response.content.decode(errors="replace"))
            for method, action, fields in parser.forms:
                if method == "get":
                    filters.setdefault(action, []).extend(fields)
                else:
                    bag = forms.setdefault(action, {})
                    for field, values in fields.items():
                        bag.setdefault(field, [])
                        bag[field] += [v for v in values if v not in bag[field]]
            for action, vals in parser.hx_posts:
                bag = forms.setdefault(action, {})
                for field, values in {**parser.fields, **vals}.items():
                    bag.setdefault(field, [])
                    bag[field] += [v for v in values if v not in bag[field]]
    return clients, paths, forms, filters


def ask(client, method: str, path: str, **kwargs):
    with transaction.atomic():
        response = getattr(client, method)(path, **kwargs)
        transaction.set_rollback(True)
    return response


def fuzz(examples: int, strategy, send) -> str | None:
    """Runs `send` on `examples` drawn values; the failing example (shrunk) as text, or None."""
    @settings(max_examples=EXAMPLES or examples, deadline=None, derandomize=not SEARCH,
              database=None, suppress_health_check=list(HealthCheck),
              phases=[p for p in Phase if p is not Phase.explain])
    @given(strategy)
    def run(value):
        send(value)

    try:
        run()
    except Exception as error:  # every route is tried, every failure reported
        where = [f"{frame.filename}:{frame.lineno}" for frame in traceback.extract_tb(
            error.__traceback__) if "/.venv/" not in frame.filename and "/tests/" not in
            frame.filename][-1:]
        return "\n".join([f"{type(error).__name__}: {error}"[:500], *where,
                          *getattr(error, "__notes__", [])])
    return None


def _fuzz_routes(site, method: str, examples: int, cases) -> None:
    """Fuzz every route the table lets an admin or operator `method`, with (payload, htmx)
    drawn from `cases(path, forms, filters)`; every failure is reported together."""
    clients, paths, forms, filters = site
    failures = {}
    for name, path in sorted(paths.items()):
        allowed = ROUTE_ACCESS.get(name, {}).get(method, ())
        for role in FUZZ_ROLES:
            if role not in allowed:
                continue

            def send(case, role=role, path=path):
                payload, htmx = case
                headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
                note(f"{method.upper()} {path} {payload!r} htmx={htmx}")
                response = ask(clients[role], method, path, data=payload, **headers)
                assert response.status_code < 500, (payload, response.status_code)

            failure = fuzz(examples, st.tuples(cases(path, forms, filters), st.booleans()), send)
            if failure:
                failures[f"{method.upper()} {name} as {role}"] = failure
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())


def test_every_form_and_fragment_survives_bad_input(site):
    _fuzz_routes(site, "post", 8, lambda path, forms, _filters: form_data(forms.get(path, {})))


def test_every_page_and_fragment_survives_bad_query_strings(site):
    _fuzz_routes(site, "get", 4,
                 lambda path, _forms, filters: query_string(filters.get(path, [])))
