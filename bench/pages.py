#!/usr/bin/env python
"""Benchmark (not a test) of the dashboard: the server time of every page and fragment.

    DATABASE_URL=postgres://…/crm_bench_pages REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python bench/pages.py [--repeats 10] [--only customers]

On the database DATABASE_URL names — meant for 1M customers made by `seed_demo`, with stages
(`evaluate_lifecycle`), tags (`evaluate_tag_rules`), the segment index (`build_segment_index`)
and metrics snapshots (`snapshot_metrics`); it refuses a database whose name lacks "bench"
unless --force — every dashboard page and htmx fragment is requested through Django's whole
stack in this process (the test client, signed in; no network, no browser), as an admin and as
the operator owning the most customers (≈ 50k of a million). First the metrics cache is warmed
the way beat keeps it warm (`metrics.reports.warm`), then each URL is asked once (warm-up) and
--repeats times; the table gives p50 / p95 / max in milliseconds and the queries of the last
request, and marks the rows over the 300 ms target. Writes nothing but the cache, except the
POST fragments, which only read (previews and the simulation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench")

TARGET_MS = 300


def _setup():
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["*"]
    settings.DEBUG = False


def _urls(user, admin: bool) -> list[tuple[str, str, dict | None]]:
    """(method, path, POST data) of every page and fragment, with real ids of this
    database."""
    from campaigns.models import Campaign, Sop
    from crm.models import Customer
    from lifecycle.models import Stage, StageModel
    from tagging.models import Segment, Tag, TagRule

    value = StageModel.objects.filter(key="value").first()
    dormant = Stage.objects.filter(model=value, key="dormant").first()
    tag = Tag.objects.order_by("pk").first()
    condition = {"all": [{"field": "stage", "model": "value", "op": "in", "value": ["dormant"]},
                         {"field": "orders_count", "op": "gte", "value": 1}]}
    segment = Segment.objects.order_by("pk").first()
    if segment is None:
        segment = Segment.objects.create(name="bench: dormant buyers", condition=condition)
    sop = Sop.objects.order_by("pk").first()
    campaign = Campaign.objects.order_by("-pk").first()
    rule = TagRule.objects.order_by("pk").first()
    urls: list[tuple[str, str, dict | None]] = [
        ("GET", "/", None),
        ("GET", "/customers/", None),
        ("GET", "/customers/?page=3", None),
        ("GET", "/customers/?q=王", None),
        ("GET", "/customers/?sort=-total_spent", None),
        ("GET", "/customers/?stage=value:dormant", None),
        ("GET", f"/customers/?tag={tag.name}" if tag else "/customers/?status=active", None),
        ("GET", f"/customers/?segment={segment.pk}", None),
        ("GET", "/customers/?condition=" + json.dumps(condition), None),
        ("GET", "/today/", None),
        ("GET", "/outbox/", None),
        ("GET", "/outbox/?status=failed", None),
        ("GET", "/segments/", None),
        ("GET", "/segments/new/", None),
        ("GET", f"/segments/{segment.pk}/", None),
        ("GET", f"/segments/{segment.pk}/count/", None),
        ("POST", "/segments/preview/", {"condition": json.dumps(condition)}),
        ("GET", "/tags/", None),
        ("GET", "/tags/rules/", None),
        ("GET", "/lifecycle/", None),
        ("GET", "/lifecycle/value/board/", None),
        ("GET", "/lifecycle/value/log/", None),
        ("GET", "/sops/", None),
        ("GET", "/campaigns/", None),
        ("GET", "/metrics/", None),
        ("GET", "/imports/", None),
        ("POST", "/templates/preview/", {"template": "{{ name }}，{{ owner.name }}为您推荐",
                                         "customer": ""}),
        ("POST", "/campaigns/audience/", {"audience": "segment", "segment": str(segment.pk)}),
    ]
    customer = (Customer.objects.order_by("-pk") if admin
                else Customer.objects.filter(owner=user).order_by("-pk")).first()
    if customer is not None:
        urls.append(("GET", f"/customers/{customer.pk}/", None))
    if dormant is not None:
        urls.append(("GET", "/lifecycle/value/board/dormant/?page=2", None))
    if rule is not None:
        urls.append(("GET", f"/tags/rules/{rule.pk}/", None))
    if sop is not None:
        urls.append(("GET", f"/sops/{sop.pk}/", None))
    if campaign is not None:
        urls += [("GET", f"/campaigns/{campaign.pk}/", None),
                 ("GET", f"/campaigns/{campaign.pk}/progress/", None)]
    if admin:
        urls += [("GET", "/campaigns/new/", None), ("GET", "/sops/new/", None),
                 ("GET", "/lifecycle/value/edit/", None),
                 ("POST", "/lifecycle/value/simulate/", None),
                 ("GET", "/settings/", None), ("GET", "/settings/schedules/", None),
                 ("GET", "/settings/users/", None)]
    return urls


def _simulate_form(client) -> dict:
    """The model editor's own form, posted back unchanged: what "Simulate" sends."""
    import re

    page = client.get("/lifecycle/value/edit/").content.decode()
    fields = {}
    for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page):
        fields[name] = value
    for name, text in re.findall(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', page,
                                 re.S):
        import html

        fields[name] = html.unescape(text)
    fields.pop("csrfmiddlewaretoken", None)
    return fields


def _measure(client, method: str, path: str, data: dict | None, repeats: int):
    from django.db import connection, reset_queries

    times, status, queries = [], None, 0
    for attempt in range(repeats + 1):
        reset_queries()
        started = time.perf_counter()
        if method == "GET":
            response = client.get(path, HTTP_HX_REQUEST="true" if "progress" in path
                                  or path.endswith("/count/") else None)
        else:
            response = client.post(path, data or {}, HTTP_HX_REQUEST="true")
        elapsed = (time.perf_counter() - started) * 1000
        status = response.status_code
        queries = len(connection.queries)
        if attempt:                       # the first is the warm-up
            times.append(elapsed)
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    return {"p50": statistics.median(times), "p95": p95, "max": times[-1], "status": status,
            "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", default="", help="only paths containing this text")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--no-warm", action="store_true", help="leave the metrics cache cold")
    opts = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if "bench" not in url.rsplit("/", 1)[-1] and not opts.force:
        raise SystemExit(f"refusing DATABASE_URL {url!r}: its name lacks 'bench'")
    _setup()
    from _common import machine
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db.models import Count
    from django.test import Client
    from django.test.utils import override_settings

    from crm.models import Customer
    from metrics import reports

    settings.DEBUG = True                 # count the queries
    User = get_user_model()
    admin = User.objects.filter(is_superuser=True).order_by("pk").first()
    top = (Customer.objects.values("owner").annotate(n=Count("id")).order_by("-n").first())
    operator = User.objects.get(pk=top["owner"])
    customers = Customer.objects.count()
    print(f"machine:   {machine()}")
    print(f"database:  {settings.DATABASES['default']['NAME']}, {customers:,} customers; "
          f"operator {operator.username} owns {top['n']:,}")
    if not opts.no_warm:
        started = time.perf_counter()
        warmed = reports.warm()
        print(f"metrics cache warmed: {warmed} answers in {time.perf_counter() - started:.1f} s")
    over = []
    with override_settings(ALLOWED_HOSTS=["*"]):
        for who, user in (("admin", admin), ("operator", operator)):
            client = Client(HTTP_ACCEPT_LANGUAGE="zh-hans")
            client.force_login(user)
            urls = _urls(user, admin=who == "admin")
            print(f"\n{who} ({user.username}) — ms over {opts.repeats} requests after one "
                  "warm-up")
            print(f"{'request':<64} {'p50':>7} {'p95':>7} {'max':>7} {'queries':>7} status")
            for method, path, data in urls:
                if opts.only and opts.only not in path:
                    continue
                if path.endswith("/simulate/"):
                    data = _simulate_form(client)
                row = _measure(client, method, path, data, opts.repeats)
                flag = "  > target" if row["p95"] > TARGET_MS else ""
                label = f"{method} {path}"[:64]
                print(f"{label:<64} {row['p50']:>7.0f} {row['p95']:>7.0f} {row['max']:>7.0f} "
                      f"{row['queries']:>7} {row['status']}{flag}")
                if flag:
                    over.append((who, label, row["p95"]))
    print(f"\nover the {TARGET_MS} ms p95 target: {len(over)}")
    for who, label, p95 in over:
        print(f"  {who:<9} {label} — p95 {p95:.0f} ms")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
