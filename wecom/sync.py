"""Syncs between WeCom and the CRM: contacts, customer groups and corp tags.

A run is a `SyncRun` row that advances one page at a time; each page is written in one
transaction together with the run's cursor, so a run stopped anywhere (a worker killed, WeCom
refusing for a while) resumes where it was. Everything reaches crm and tagging through their
services, as WeCom's system user. Details in docs/WECOM.md."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from crm.models import Customer, Group, GroupMembership
from crm.services import channels_by_code, customers_upsert, events_ingest, group_save
from tagging.models import Tag, TagChange, TagGroup, TagSource
from tagging.services import customers_tags_change, tag_delete, tag_group_save, tag_save
from wecom.accounts import staff_users_ensure, system_user
from wecom.client import RATE_LIMITED, WeComClient, WeComError, api_enabled, client
from wecom.models import SyncCursor, SyncRun, TagLink

logger = logging.getLogger(__name__)

USERS_PER_CALL = 100       # batch/get_by_user takes at most 100 UserIDs ...
CONTACTS_PER_PAGE = 100    # ... and answers at most 100 contacts a page
GROUPS_PER_PAGE = 100
MARKS_PER_STEP = 500       # tag changes pushed with mark_tag per step
MAX_FAILURES_KEPT = 200
GENDERS = {1: Customer.Gender.MALE, 2: Customer.Gender.FEMALE}
TAG_CHANGES_CURSOR = "tag_changes"
INVALID_TAG = 40068


class SyncDisabled(Exception):
    """The WeCom API is not configured (WECOM_CORP_ID and WECOM_SECRET)."""


def _iso(seconds: Any) -> str:
    try:
        return datetime.fromtimestamp(int(seconds), tz=UTC).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _fail(run: SyncRun, item: str, exc: Exception | str) -> None:
    run.failed += 1
    if len(run.failures) < MAX_FAILURES_KEPT:
        code = exc.errcode if isinstance(exc, WeComError) else None
        run.failures.append({"item": item, "code": code, "message": str(exc)[:300]})


# --- Starting and running ------------------------------------------------------------------

def sync_start(*, kinds: list[str] | None = None, trigger: str = "manual",
               enqueue: bool = True) -> list[SyncRun]:
    """A queued run of each kind (all three by default), or the run of that kind already
    queued or running; each is run by a task after commit."""
    if not api_enabled():
        raise SyncDisabled(_("WeCom is not configured: set WECOM_CORP_ID and WECOM_SECRET."))
    runs = []
    for kind in kinds or [SyncRun.Kind.TAGS, SyncRun.Kind.CONTACTS, SyncRun.Kind.GROUPS]:
        run = SyncRun.objects.filter(kind=kind, status__in=[SyncRun.Status.QUEUED,
                                                            SyncRun.Status.RUNNING]).first()
        if run is None:
            try:
                with transaction.atomic():
                    run = SyncRun.objects.create(kind=kind, trigger=trigger)
            except IntegrityError:      # another request opened one a moment ago
                run = SyncRun.objects.get(kind=kind, status__in=[SyncRun.Status.QUEUED,
                                                                 SyncRun.Status.RUNNING])
            else:
                if enqueue:
                    from wecom.tasks import run_sync

                    transaction.on_commit(lambda pk=run.pk: run_sync.delay(pk))
        runs.append(run)
    return runs


def sync_run(*, run_id: int, api: WeComClient | None = None,
             max_steps: int | None = None) -> SyncRun | None:
    """Advance a run page by page until it is done (or `max_steps` pages). Each page holds the
    run's row lock, so two workers given the same run take turns instead of doubling it.
    WeCom busy after the client's backoff leaves the run open for the sweeper to resume; any
    other refusal of the whole run fails it with WeCom's message."""
    api = api or client()
    steps = 0
    run = None
    while max_steps is None or steps < max_steps:
        with transaction.atomic():
            run = (SyncRun.objects.select_for_update(skip_locked=True)
                   .filter(pk=run_id, status__in=[SyncRun.Status.QUEUED,
                                                  SyncRun.Status.RUNNING]).first())
            if run is None:
                return SyncRun.objects.filter(pk=run_id).first()
            if run.status == SyncRun.Status.QUEUED:
                run.status, run.started_at = SyncRun.Status.RUNNING, timezone.now()
            stop = False
            try:
                with transaction.atomic():
                    done = STEPS[run.kind](run, api)
            except WeComError as exc:
                logger.warning("wecom.sync_interrupted", extra={
                    "run": run.pk, "kind": run.kind, "errcode": exc.errcode})
                run.refresh_from_db()      # the page's counts went with its rollback
                run.error = str(exc)[:1000]
                if exc.errcode not in RATE_LIMITED:
                    run.status, run.finished_at = SyncRun.Status.FAILED, timezone.now()
                stop = True
            else:
                if done:
                    run.status, run.finished_at = SyncRun.Status.DONE, timezone.now()
                    run.error = ""
            run.save()
        steps += 1
        if stop or run.status != SyncRun.Status.RUNNING:
            break
    if run is not None and run.status == SyncRun.Status.DONE:
        logger.info("wecom.sync_done", extra={
            "run": run.pk, "kind": run.kind, "processed": run.processed, "failed": run.failed})
    return run


def syncs_resume(*, stale_after_seconds: int = 300) -> list[int]:
    """Runs left open without progress (a lost task, a killed worker, WeCom busy): enqueued
    again. A run merely slow is safe to enqueue twice (see sync_run)."""
    from wecom.tasks import run_sync

    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    ids = list(SyncRun.objects.filter(status__in=[SyncRun.Status.QUEUED, SyncRun.Status.RUNNING],
                                      updated_at__lt=cutoff).values_list("pk", flat=True))
    for run_id in ids:
        run_sync.delay(run_id)
    return ids


# --- Contacts ------------------------------------------------------------------------------

def _contact_rows(entries: list[tuple[dict, dict]]) -> list[dict[str, str]]:
    """Rows for crm's upsert, one per external contact: the profile always; owner, channel and
    joining time only for a customer not known yet (the first staff member who added them)."""
    first: dict[str, tuple[dict, dict]] = {}
    for contact, follow in entries:
        ext = str(contact.get("external_userid") or "")
        if not ext:
            continue
        known = first.get(ext)
        if known is None or int(follow.get("createtime") or 0) < int(
                known[1].get("createtime") or 0):
            first[ext] = (contact, follow)
    existing = set(Customer.objects.filter(external_id__in=first.keys())
                   .values_list("external_id", flat=True))
    owners = staff_users_ensure({str(f.get("userid") or "") for c, f in first.values()})
    channels_by_code({str(f["state"])[:64] for c, f in first.values() if f.get("state")},
                     create_missing=True)
    rows = []
    for ext, (contact, follow) in first.items():
        row = {"external_id": ext, "name": str(contact.get("name") or "")[:100],
               "gender": str(GENDERS.get(contact.get("gender"), Customer.Gender.UNKNOWN))}
        if ext not in existing:
            if str(follow.get("userid") or "") in owners:
                row["owner"] = str(follow["userid"])
            if follow.get("state"):
                row["channel"] = str(follow["state"])[:64]
            row["joined_at"] = _iso(follow.get("createtime"))
        rows.append(row)
    return rows


def _tags_add_from_wecom(tag_ids_by_contact: dict[str, set[str]]) -> int:
    """Give the customers the local tags of the WeCom tags they hold (one statement set per
    tag, not per customer)."""
    links = dict(TagLink.objects.filter(kind=TagLink.Kind.TAG, tag__isnull=False,
                                        wecom_id__in=set().union(*tag_ids_by_contact.values()))
                 .values_list("wecom_id", "tag_id"))
    holders: dict[int, list[str]] = defaultdict(list)
    for ext, wecom_ids in tag_ids_by_contact.items():
        for wecom_id in wecom_ids:
            if wecom_id in links:
                holders[links[wecom_id]].append(ext)
    added = 0
    actor = system_user()
    for tag in Tag.objects.filter(pk__in=holders.keys()):
        added += customers_tags_change(
            customers=Customer.objects.filter(external_id__in=holders[tag.pk]), add=[tag],
            remove=[], actor=actor, source=TagSource.SYNC).added
    return added


def _contacts_write(run: SyncRun | None, entries: list[tuple[dict, dict]]) -> None:
    rows = _contact_rows(entries)
    report = customers_upsert(rows=rows, actor=system_user())
    if run is not None:
        run.processed += len(rows)
        run.created += report.extra.get("created", 0)
        run.updated += report.extra.get("updated", 0)
        for rejected in report.rejected:
            _fail(run, rows[rejected["index"]]["external_id"], rejected["message"])
    tags: dict[str, set[str]] = defaultdict(set)
    for contact, follow in entries:
        ids = follow.get("tag_id")
        if ids is None:     # externalcontact/get's shape: tags as objects
            ids = [t.get("tag_id") for t in follow.get("tags") or [] if t.get("type", 1) == 1]
        tags[str(contact.get("external_userid") or "")].update(str(i) for i in ids if i)
    if any(tags.values()):
        _tags_add_from_wecom(tags)


def _step_contacts(run: SyncRun, api: WeComClient) -> bool:
    state = run.state
    if "users" not in state:
        users = api.get("externalcontact/get_follow_user_list").get("follow_user") or []
        staff_users_ensure(users)
        run.state = state = {"users": users, "pos": 0, "size": USERS_PER_CALL, "cursor": ""}
        return not users
    users, pos, size = state["users"], state["pos"], state["size"]
    window = users[pos:pos + size]
    try:
        data = api.post("externalcontact/batch/get_by_user", {
            "userid_list": window, "cursor": state["cursor"], "limit": CONTACTS_PER_PAGE})
    except WeComError as exc:
        if exc.errcode in RATE_LIMITED:
            raise
        if size > 1:
            # One UserID spoils the whole call: go through this window one user at a time.
            state.update(size=1, cursor="")
        else:
            _fail(run, _("staff %(user)s") % {"user": window[0]}, exc)
            _advance_user(state)
        return state["pos"] >= len(users)
    entries = [(e.get("external_contact") or {}, e.get("follow_info") or {})
               for e in data.get("external_contact_list") or []]
    if entries:
        _contacts_write(run, entries)
    if data.get("next_cursor"):
        state["cursor"] = data["next_cursor"]
    else:
        _advance_user(state)
    return state["pos"] >= len(users)


def _advance_user(state: dict) -> None:
    state["pos"] += state["size"]
    state["cursor"] = ""
    if state["size"] == 1 and state["pos"] % USERS_PER_CALL == 0:
        state["size"] = USERS_PER_CALL     # past the window that needed single calls


def contact_refresh(*, external_user_id: str, api: WeComClient | None = None) -> str:
    """Read one contact from WeCom (its profile and its tags with every staff member) and make
    the customer match: the profile written, WeCom's tags added, and the ones that came from
    WeCom taken away when WeCom no longer has them."""
    api = api or client()
    data = api.get("externalcontact/get", external_userid=external_user_id)
    contact = data.get("external_contact") or {}
    follows = data.get("follow_user") or []
    _contacts_write(None, [(contact, f) for f in follows] or [(contact, {})])
    held = {str(t.get("tag_id")) for f in follows for t in f.get("tags") or []
            if t.get("type", 1) == 1 and t.get("tag_id")}
    # Only tags that came from WeCom go when WeCom no longer has them: one given here (by
    # hand, a rule, a QR code) may simply not be marked in WeCom yet.
    stale = Tag.objects.filter(wecom_link__isnull=False, customer_tags__source=TagSource.SYNC,
                               customer_tags__customer__external_id=external_user_id,
                               ).exclude(wecom_link__wecom_id__in=held)
    removed = 0
    for tag in stale:
        removed += customers_tags_change(
            customers=Customer.objects.filter(external_id=external_user_id), add=[],
            remove=[tag], actor=system_user(), source=TagSource.SYNC).removed
    return _("profile refreshed; %(n)d tags taken away") % {"n": removed} if removed else ""


# --- Customer groups -----------------------------------------------------------------------

def group_apply(detail: dict[str, Any], *, left_at: datetime | None = None) -> Group:
    """Make the group and its membership match WeCom's `groupchat/get` answer: the group
    written; members who are customers joined, customers no longer in it left (both as crm
    events, so the timeline and the metrics see them)."""
    chat_id = str(detail.get("chat_id") or "")
    owners = staff_users_ensure({str(detail.get("owner") or "")})
    actor = system_user()
    group = Group.objects.filter(chat_id=chat_id).first()
    fields = {"chat_id": chat_id, "name": str(detail.get("name") or "")[:100],
              "notice": str(detail.get("notice") or "")}
    owner = get_user_model().objects.filter(pk__in=owners.values()).first()
    fields["owner"] = owner         # None: a group whose owner WeCom does not name
    group = group_save(actor=actor, group=group, **fields)
    members = {str(m.get("userid")): m for m in detail.get("member_list") or []
               if int(m.get("type") or 0) == 2 and m.get("userid")}
    known = set(Customer.objects.filter(external_id__in=members.keys())
                .values_list("external_id", flat=True))
    items = [{"customer": ext, "type": "group_joined",
              "idempotency_key": f"wecom:joined:{chat_id}:{ext}:{members[ext].get('join_time')}",
              "occurred_at": _iso(members[ext].get("join_time")) or None,
              "data": {"group": chat_id, "name": fields["name"], "source": "wecom"}}
             for ext in sorted(known)]
    left_at = left_at or timezone.now()
    gone = (GroupMembership.objects.filter(group=group, left_at__isnull=True)
            .exclude(customer__external_id__in=known)
            .values_list("customer__external_id", "joined_at"))
    items += [{"customer": ext, "type": "group_left",
               "idempotency_key": f"wecom:left:{chat_id}:{ext}:{int(joined.timestamp())}",
               "occurred_at": max(left_at, joined).isoformat(),
               "data": {"group": chat_id, "source": "wecom"}} for ext, joined in gone]
    if items:
        events_ingest(items=items, actor=actor)
    return group


def _step_groups(run: SyncRun, api: WeComClient) -> bool:
    data = api.post("externalcontact/groupchat/list", {
        "status_filter": 0, "cursor": run.state.get("cursor", ""), "limit": GROUPS_PER_PAGE})
    for chat in data.get("group_chat_list") or []:
        chat_id = str(chat.get("chat_id") or "")
        try:
            detail = api.post("externalcontact/groupchat/get", {"chat_id": chat_id,
                                                                "need_name": 1})
            with transaction.atomic():
                group_apply(detail.get("group_chat") or {})
        except WeComError as exc:
            if exc.errcode in RATE_LIMITED:
                raise
            _fail(run, _("group %(id)s") % {"id": chat_id}, exc)
            continue
        run.processed += 1
    run.state = {"cursor": data.get("next_cursor") or ""}
    return not run.state["cursor"]


# --- Corp tags -----------------------------------------------------------------------------

def _link(kind: str, wecom_id: str, name: str, *, origin: str = "wecom", **target) -> None:
    TagLink.objects.update_or_create(wecom_id=wecom_id, defaults={
        "kind": kind, "name": name, "synced_at": timezone.now(), **target},
        create_defaults={"kind": kind, "name": name, "origin": origin, **target})


def _unique_group_name(name: str) -> str:
    candidate, n = name[:64], 2
    while TagGroup.objects.filter(name=candidate).exists():
        candidate = f"{name[:60]} ({n})"
        n += 1
    return candidate


def tags_pull(*, api: WeComClient, run: SyncRun | None = None) -> dict[str, int]:
    """WeCom's corp tags here: groups and tags created, renamed (when WeCom renamed them since
    the names last agreed) and deleted (when WeCom deleted a linked one)."""
    data = api.post("externalcontact/get_corp_tag_list", {})
    links = {link.wecom_id: link for link in TagLink.objects.select_related("tag", "group")}
    seen: set[str] = set()
    counts = {"created": 0, "renamed": 0, "deleted": 0}
    actor = system_user()
    for wgroup in data.get("tag_group") or []:
        if wgroup.get("deleted"):
            continue
        gid, gname = str(wgroup["group_id"]), str(wgroup.get("group_name") or "")[:64]
        seen.add(gid)
        link = links.get(gid)
        if link is not None and link.group is None:
            continue            # deleted here: the push deletes it in WeCom
        group = link.group if link else None
        if group is None:
            group = TagGroup.objects.filter(name=gname, wecom_link__isnull=True).first()
        if group is None:
            group = tag_group_save(group=None, name=_unique_group_name(gname),
                                   order=int(wgroup.get("order") or 0))
            counts["created"] += 1
        elif link and gname != link.name and group.name == link.name:
            group = tag_group_save(group=group, name=_unique_group_name(gname))
            counts["renamed"] += 1
        _link(TagLink.Kind.GROUP, gid, gname, group=group)
        for wtag in wgroup.get("tag") or []:
            if wtag.get("deleted"):
                continue
            tid, tname = str(wtag["id"]), str(wtag.get("name") or "")[:64]
            seen.add(tid)
            tlink = links.get(tid)
            if tlink is not None and tlink.tag is None:
                continue        # deleted here: the push deletes it in WeCom
            tag = tlink.tag if tlink else None
            if tag is None:
                tag = Tag.objects.filter(group=group, name=tname,
                                         wecom_link__isnull=True).first()
            if tag is None:
                tag = tag_save(tag=None, group=group, name=tname,
                               order=int(wtag.get("order") or 0))
                counts["created"] += 1
            elif tlink and tname != tlink.name and tag.name == tlink.name:
                tag = tag_save(tag=tag, name=tname)
                counts["renamed"] += 1
            _link(TagLink.Kind.TAG, tid, tname, tag=tag)
    for wecom_id, link in links.items():
        if wecom_id in seen:
            continue
        local = link.tag or link.group
        # Gone from WeCom. A tag made there goes here too; one made here, or built in (a rule
        # or a stage model may need it), only loses its link: the push makes it in WeCom again.
        if local is not None and link.origin == "wecom" and not local.key:
            if link.tag is not None:
                tag_delete(tag=link.tag, actor=actor)
                counts["deleted"] += 1
            elif not link.group.tags.exists():
                link.group.delete()
                counts["deleted"] += 1
        link.delete()
    if run is not None:
        run.processed += len(seen)
        run.created += counts["created"]
        run.updated += counts["renamed"] + counts["deleted"]
    return counts


def tags_push(*, api: WeComClient, run: SyncRun | None = None) -> dict[str, int]:
    """Tag groups and tags made, renamed or deleted here, made the same in WeCom."""
    counts = {"created": 0, "renamed": 0, "deleted": 0}

    def attempt(item: str, path: str, body: dict) -> dict | None:
        try:
            return api.post(f"externalcontact/{path}", body)
        except WeComError as exc:
            if exc.errcode in RATE_LIMITED:
                raise
            if path == "del_corp_tag" and exc.errcode == INVALID_TAG:
                return {}       # gone already (with its group, or deleted in WeCom too)
            if run is not None:
                _fail(run, item, exc)
            logger.warning("wecom.tag_push_failed", extra={"item": item, "errcode": exc.errcode})
            return None

    for link in TagLink.objects.filter(tag__isnull=True, group__isnull=True):
        key = "tag_id" if link.kind == TagLink.Kind.TAG else "group_id"
        if attempt(link.name, "del_corp_tag", {key: [link.wecom_id]}) is not None:
            link.delete()
            counts["deleted"] += 1
    for link in TagLink.objects.select_related("tag", "group").filter(
            Q(tag__isnull=False) | Q(group__isnull=False)):
        local = link.tag or link.group
        if local.name != link.name and attempt(local.name, "edit_corp_tag", {
                "id": link.wecom_id, "name": local.name}) is not None:
            link.name, link.synced_at = local.name, timezone.now()
            link.save(update_fields=["name", "synced_at"])
            counts["renamed"] += 1
    linked_groups = {link.group_id: link.wecom_id for link in
                     TagLink.objects.filter(kind=TagLink.Kind.GROUP, group__isnull=False)}
    for group in TagGroup.objects.filter(tags__isnull=False, tags__wecom_link__isnull=True) \
            .distinct().order_by("order", "pk"):
        new_tags = list(group.tags.filter(wecom_link__isnull=True).order_by("order", "pk"))
        body: dict[str, Any] = {"tag": [{"name": t.name, "order": t.order} for t in new_tags]}
        body.update({"group_id": linked_groups[group.pk]} if group.pk in linked_groups else
                    {"group_name": group.name, "order": group.order})
        answer = attempt(group.name, "add_corp_tag", body)
        if answer is None:
            continue
        wgroup = answer.get("tag_group") or {}
        if group.pk not in linked_groups and wgroup.get("group_id"):
            _link(TagLink.Kind.GROUP, str(wgroup["group_id"]), group.name, origin="here",
                  group=group)
        by_name = {t.name: t for t in new_tags}
        for wtag in wgroup.get("tag") or []:
            tag = by_name.get(str(wtag.get("name")))
            if tag is not None:
                _link(TagLink.Kind.TAG, str(wtag["id"]), tag.name, origin="here", tag=tag)
                counts["created"] += 1
    if run is not None:
        run.updated += counts["created"] + counts["renamed"] + counts["deleted"]
    return counts


def _cursor(name: str) -> SyncCursor:
    cursor, created = SyncCursor.objects.select_for_update().get_or_create(name=name)
    if created:     # only changes made from now on: older ones predate the link
        cursor.position = TagChange.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        cursor.save(update_fields=["position"])
    return cursor


def tag_marks_push(*, api: WeComClient, run: SyncRun | None = None,
                   limit: int = MARKS_PER_STEP) -> int:
    """Customers' tag changes made here (not the ones that came from WeCom) since the last
    push, as `mark_tag` calls by the customer's owner; returns the changes read (0: none
    left). A failure for one customer is recorded and passed."""
    cursor = _cursor(TAG_CHANGES_CURSOR)
    changes = list(TagChange.objects.filter(pk__gt=cursor.position, tag__wecom_link__isnull=False)
                   .exclude(source=TagSource.SYNC).order_by("pk")
                   .values_list("pk", "customer_id", "tag__wecom_link__wecom_id", "action")[:limit])
    if not changes:
        return 0
    marks: dict[int, dict[str, str]] = defaultdict(dict)
    for _pk, customer_id, wecom_id, action in changes:
        marks[customer_id][wecom_id] = action       # the latest change of a tag wins
    customers = {pk: (ext, owner) for pk, ext, owner in Customer.objects.filter(
        pk__in=marks.keys()).values_list("pk", "external_id", "owner__username")}
    for customer_id, tags in marks.items():
        ext, owner = customers.get(customer_id, ("", ""))
        if not ext or not owner:
            continue
        add = sorted(w for w, a in tags.items() if a == TagChange.Action.ADDED)
        remove = sorted(w for w, a in tags.items() if a != TagChange.Action.ADDED)
        try:
            api.post("externalcontact/mark_tag", {"userid": owner, "external_userid": ext,
                                                  "add_tag": add, "remove_tag": remove})
        except WeComError as exc:
            if exc.errcode in RATE_LIMITED:
                raise
            if run is not None:
                _fail(run, ext, exc)
            continue
        if run is not None:
            run.processed += 1
    cursor.position = changes[-1][0]
    cursor.save(update_fields=["position"])
    return len(changes)


def _step_tags(run: SyncRun, api: WeComClient) -> bool:
    phase = run.state.get("phase", "pull")
    if phase == "pull":
        tags_pull(api=api, run=run)
        run.state = {"phase": "push"}
        return False
    if phase == "push":
        tags_push(api=api, run=run)
        run.state = {"phase": "marks"}
        return False
    return tag_marks_push(api=api, run=run) < MARKS_PER_STEP


STEPS = {SyncRun.Kind.CONTACTS: _step_contacts, SyncRun.Kind.GROUPS: _step_groups,
         SyncRun.Kind.TAGS: _step_tags}
