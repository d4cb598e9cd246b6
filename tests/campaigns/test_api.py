"""The outreach API (DESIGN §4 `sops/`, `campaigns/`, `messages/`, issue 5): SOPs with nested
steps and the stage guard, template checks and preview, the outbox scoped by role, delivery
receipts, operator tasks, the editable policy, and lists whose query count does not grow."""

import warnings
from datetime import timedelta

import pytest
from django.core.paginator import UnorderedObjectListWarning
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, Message, OperatorTask, Sop
from core.exceptions import ApplicationError
from crm import services as crm_services
from crm.models import Customer, Event
from lifecycle.hooks import StageEntry
from tagging.models import CustomerTag, Tag, TagGroup
from tests.campaigns.conftest import NOW, local, place
from tests.factories import ChannelFactory

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

WELCOME = "{{ name }}您好，我是{{ owner.name }}"


def _step(**fields):
    return {"order": 1, "delay_minutes": 5, "channel": "wecom", "category": "service",
            "template": WELCOME, **fields}


def _sop(api, model="value", stage="intro", steps=None, **fields):
    return api.post("/api/v1/sops/", {"name": "测试SOP", "model": model, "stage": stage,
                                      "steps": steps or [_step()], **fields}, format="json")


# --- SOPs -----------------------------------------------------------------------------------

def test_sop_crud_with_nested_steps(admin_api, op_api, builtin_models):
    created = _sop(admin_api, stage="growth", holdout_percent=10, steps=[
        _step(), _step(order=2, delay_minutes=0, day=2, at_time="19:30", category="promotional",
                       template="{{ name }}，{% if categories %}看您喜欢{{ categories|join('、') }}"
                                "{% endif %}，新品会员价")])
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["model"], body["stage"], body["holdout_percent"], body["overridden_by"]) == (
        "value", "growth", 10, None)
    assert [(s["order"], s["day"], s["at_time"], s["category"], s["stats"])
            for s in body["steps"]] == [(1, None, None, "service", {"sends": 0, "blocks": 0}),
                                        (2, 2, "19:30:00", "promotional",
                                         {"sends": 0, "blocks": 0})]

    listed = op_api.get("/api/v1/sops/").json()           # everyone reads
    assert body["id"] in [s["id"] for s in listed["results"]]

    changed = admin_api.patch(f"/api/v1/sops/{body['id']}/", {
        "name": "成长期 · 推荐", "steps": [_step(template="{{ name }}，最近好吗？")]},
        format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["name"] == "成长期 · 推荐"
    assert [(s["order"], s["template"]) for s in changed.json()["steps"]] == [
        (1, "{{ name }}，最近好吗？")]

    renamed = admin_api.patch(f"/api/v1/sops/{body['id']}/", {"active": False}, format="json")
    assert renamed.status_code == 200, renamed.json()
    assert len(renamed.json()["steps"]) == 1                 # steps kept when not given

    assert op_api.delete(f"/api/v1/sops/{body['id']}/").status_code == 403
    assert admin_api.delete(f"/api/v1/sops/{body['id']}/").status_code == 204
    assert not Sop.objects.filter(pk=body["id"]).exists()


@pytest.mark.parametrize("fields, message", [
    ({"steps": [_step(), _step()]}, "steps: each step has its own order"),
    ({"steps": [_step(day=1)]}, "steps[0]: give both day and at_time, or neither"),
    ({"steps": [_step(condition={"field": "city", "op": "older_than", "value": 1})]},
     "steps[0].condition.op: unknown operator 'older_than'"),
    ({"steps": [_step(), _step(order=2, condition={"all": [{"field": "city", "op": "eq",
                                                             "value": "x"}, {"any": 3}]})]},
     "steps[1].condition.all[1].any: "),
    ({"stage": "nope"}, "stage: value has no stage 'nope'"),
    ({"holdout_percent": 60}, "holdout_percent: between 0 and 50"),
    ({"goal": {"field": "nope", "op": "eq", "value": 1}}, "goal.field: unknown field 'nope'"),
])
def test_invalid_sops_are_400_naming_the_field(admin_api, builtin_models, fields, message):
    response = _sop(admin_api, **fields)
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_operators_and_analysts_cannot_write_sops(op_api, analyst, api_client_for,
                                                  builtin_models):
    assert _sop(op_api).status_code == 403
    assert _sop(api_client_for(analyst)).status_code == 403
    assert not Sop.objects.filter(name="测试SOP").exists()


# --- The stage guard on SOPs ----------------------------------------------------------------

@pytest.mark.parametrize("model, stage", [("value", "intro"), ("journey", "interest")])
def test_a_promotional_step_for_newcomers_is_refused_with_the_reason(admin_api, builtin_models,
                                                                      model, stage):
    response = _sop(admin_api, model=model, stage=stage, steps=[
        _step(), _step(order=2, category="promotional", template="限时优惠！")])

    assert response.status_code == 400
    assert response.json()["message"] == (
        f"steps: promotional messages to customers in {model}:{stage} are refused — a newcomer "
        "who is sold to before trusting the brand deletes it. Send service or "
        "content instead, exclude these stages, or ask an admin to override explicitly "
        "(override_stage_guard).")
    assert not Sop.objects.filter(name="测试SOP").exists()


def test_service_and_content_steps_for_newcomers_are_fine(admin_api, builtin_models):
    response = _sop(admin_api, steps=[_step(), _step(order=2, category="content")])
    assert response.status_code == 201, response.json()
    assert response.json()["override_stage_guard"] is False


def test_an_admin_override_is_allowed_and_recorded(admin_api, admin_user, builtin_models):
    response = _sop(admin_api, steps=[_step(category="promotional")],
                    override_stage_guard=True)

    assert response.status_code == 201, response.json()
    assert (response.json()["override_stage_guard"], response.json()["overridden_by"]) == (
        True, admin_user.username)
    sop = Sop.objects.get(pk=response.json()["id"])
    assert (sop.override_stage_guard, sop.overridden_by) == (True, admin_user)


def test_only_an_admin_may_override(operator, builtin_models):
    """Operators cannot write SOPs through the API at all (403); the service refuses their
    override too."""
    from tests.campaigns.conftest import stage as stage_of

    intro = stage_of("value", "intro")
    with pytest.raises(ApplicationError, match="only an admin may override the stage guard"):
        services.sop_save(sop=None, actor=operator, name="x", model=intro.model, stage=intro,
                          override_stage_guard=True,
                          steps=[_step(category="promotional")])
    assert not Sop.objects.filter(name="x").exists()


# --- Editing an SOP that customers are going through ----------------------------------------

def _enrol_two(make_sop, owner, steps):
    sop = make_sop("aipl", "awareness", steps=steps)
    people = [Customer.objects.create(external_id=f"edit-{i}", owner=owner) for i in range(2)]
    for person in people:
        place(person, "aipl", "awareness")
    services.sops_on_stage_entered(StageEntry(model="aipl", stage="awareness", at=NOW,
                                              source="rule",
                                              customer_ids=[p.pk for p in people]))
    return sop


def test_a_step_taken_out_sends_nothing_more(admin_api, make_sop, owner):
    sop = _enrol_two(make_sop, owner, [{"delay_minutes": 60}, {"delay_minutes": 120}])
    first = {"order": 1, "delay_minutes": 60, "channel": "console", "category": "service",
             "template": "你好 {{ name }}"}

    response = admin_api.patch(f"/api/v1/sops/{sop.pk}/", {"steps": [first]}, format="json")

    assert response.status_code == 200, response.json()
    result = services.messages_dispatch(now=NOW + timedelta(hours=3))
    assert result.sent == 2
    assert sorted(Message.objects.filter(enrollment__sop=sop).values_list(
        "due_at", "status", "skip_reason")) == [
        (NOW + timedelta(hours=1), "sent", ""), (NOW + timedelta(hours=1), "sent", ""),
        (NOW + timedelta(hours=2), "skipped", "paused"),
        (NOW + timedelta(hours=2), "skipped", "paused")]


def test_a_deactivated_sop_sends_nothing_more(admin_api, make_sop, owner):
    sop = _enrol_two(make_sop, owner, [{"delay_minutes": 0}, {"delay_minutes": 60}])
    assert services.messages_dispatch(now=NOW).sent == 2

    response = admin_api.patch(f"/api/v1/sops/{sop.pk}/", {"active": False}, format="json")

    assert response.status_code == 200, response.json()
    result = services.messages_dispatch(now=NOW + timedelta(hours=2))
    assert (result.sent, dict(result.skipped)) == (0, {"paused": 2})


# --- Templates ------------------------------------------------------------------------------

@pytest.mark.parametrize("template, reason", [
    ("{{ name }}{% if %}{% endif %}", "the template does not compile"),
    ("{% url 'nowhere' %}", "the template does not compile"),
    ("{{ customer.city + 1 }}", "the template does not render"),
    ("{% if False %}x{% endif %}", "the template renders to nothing"),
])
def test_a_step_template_that_does_not_render_is_refused_naming_the_step(
        admin_api, builtin_models, template, reason):
    response = _sop(admin_api, steps=[_step(), _step(order=2, template=template)])
    assert response.status_code == 400
    assert response.json()["message"].startswith(f"steps[1].template: {reason}")


@pytest.fixture
def known_customer(operator, builtin_models):
    """A customer of `operator` with a tag, stages and paid (and refunded) orders."""
    customer = Customer.objects.create(external_id="pv-lin", name="林小姐", city="杭州",
                                       owner=operator)
    group = TagGroup.objects.create(name="兴趣")
    CustomerTag.objects.create(customer=customer, tag=Tag.objects.create(group=group,
                                                                         name="护肤达人"),
                               added_at=NOW)
    place(customer, "value", "growth")
    place(customer, "journey", "trust")
    report = crm_services.orders_ingest(actor=operator, items=[
        {"customer": "pv-lin", "external_id": "pv-1", "source": "youzan", "amount": "199",
         "items": [{"sku": "a", "category": "护肤"}, {"sku": "b", "category": "彩妆"}]},
        {"customer": "pv-lin", "external_id": "pv-2", "source": "youzan", "amount": "99",
         "status": "refunded", "refunded_at": NOW.isoformat(),
         "items": [{"sku": "c", "category": "香水"}]}])
    assert report.accepted == 2, report.as_dict()
    return customer


PREVIEW = ("{{ name }}|{{ tags|join(',') }}|{{ stages.value }}/{{ stages.journey }}|"
           "{{ categories|join('、') }}|{{ owner.username }}|{{ customer.city }}")


def test_preview_for_a_real_customer(op_api, operator, known_customer):
    response = op_api.post("/api/v1/templates/preview/",
                           {"template": PREVIEW, "customer": known_customer.pk}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {"content": f"林小姐|护肤达人|growth/trust|彩妆、护肤|"
                                          f"{operator.username}|杭州"}


def test_preview_for_the_sample_customer(op_api):
    response = op_api.post("/api/v1/templates/preview/", {"template": PREVIEW}, format="json")
    assert response.status_code == 200
    assert response.json() == {"content": "林小姐|新客户|growth/trust|护肤|op_wang|杭州"}


def test_preview_refuses_bad_templates_and_other_peoples_customers(op_api, other_operator,
                                                                   analyst, api_client_for):
    bad = op_api.post("/api/v1/templates/preview/", {"template": "{% if %}"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["message"].startswith("template: the template does not compile")
    theirs = Customer.objects.create(external_id="pv-theirs", owner=other_operator)
    hidden = op_api.post("/api/v1/templates/preview/",
                         {"template": "{{ name }}", "customer": theirs.pk}, format="json")
    assert hidden.status_code == 404
    junk = op_api.post("/api/v1/templates/preview/", {"template": "x", "customer": "abc"},
                       format="json")
    assert junk.status_code == 400
    assert api_client_for(analyst).post("/api/v1/templates/preview/", {"template": "x"},
                                        format="json").status_code == 403


def test_a_template_cannot_reach_other_customers_or_secrets(op_api, operator, other_operator):
    """Templates see the customer's fields, not the ORM: walking relations from a customer
    must not reveal another operator's customers or a password hash."""
    channel = ChannelFactory(code="store-qr")
    mine = Customer.objects.create(external_id="leak-mine", name="Mine", owner=operator,
                                   channel=channel)
    Customer.objects.create(external_id="leak-theirs", name="Secret Other", phone="13999999999",
                            owner=other_operator, channel=channel)
    template = ("{{ name }}:{% for c in customer.channel.customers.all %}{{ c.name }} "
                "{{ c.phone }};{% endfor %}|{{ customer.owner.password }}|"
                "{{ customer.owner.customers.all }}|{{ customer.channel.code }}")

    response = op_api.post("/api/v1/templates/preview/",
                           {"template": template, "customer": mine.pk}, format="json")

    assert response.status_code == 200, response.json()
    content = response.json()["content"]
    assert content.startswith("Mine:")
    assert "Secret Other" not in content and "13999999999" not in content
    assert operator.password not in content and "md5$" not in content
    assert content.endswith("|store-qr")


# --- The outbox -----------------------------------------------------------------------------

@pytest.fixture
def outbox(queue, operator, other_operator):
    mine = Customer.objects.create(external_id="ob-mine", name="Mine", owner=operator)
    theirs = Customer.objects.create(external_id="ob-theirs", name="Theirs",
                                     owner=other_operator)
    campaign = Campaign.objects.create(name="c", condition={"all": []}, template="x",
                                       status="sending")
    return {
        "mine_sent": queue(mine, status="sent", sent_at=NOW, campaign=campaign),
        "mine_skipped": queue(mine, status="skipped", skip_reason="frequency_cap"),
        "mine_queued": queue(mine),
        "theirs": queue(theirs, campaign=campaign),
        "campaign": campaign, "mine": mine, "theirs_customer": theirs,
    }


def _ids(response) -> set[int]:
    assert response.status_code == 200, response.json()
    return {m["id"] for m in response.json()["results"]}


def test_messages_are_scoped_and_filtered(op_api, admin_api, outbox, analyst, api_client_for):
    mine = {outbox[k].pk for k in ("mine_sent", "mine_skipped", "mine_queued")}
    assert _ids(op_api.get("/api/v1/messages/")) == mine
    assert _ids(admin_api.get("/api/v1/messages/")) == mine | {outbox["theirs"].pk}
    assert _ids(op_api.get(f"/api/v1/messages/?campaign={outbox['campaign'].pk}")) == {
        outbox["mine_sent"].pk}
    assert _ids(admin_api.get(f"/api/v1/messages/?campaign={outbox['campaign'].pk}")) == {
        outbox["mine_sent"].pk, outbox["theirs"].pk}
    assert _ids(op_api.get("/api/v1/messages/?status=skipped")) == {outbox["mine_skipped"].pk}
    assert _ids(op_api.get("/api/v1/messages/?status=sent&status=queued")) == {
        outbox["mine_sent"].pk, outbox["mine_queued"].pk}
    assert _ids(admin_api.get(
        f"/api/v1/messages/?customer={outbox['theirs_customer'].pk}")) == {outbox["theirs"].pk}
    assert _ids(op_api.get(
        f"/api/v1/messages/?customer={outbox['theirs_customer'].pk}")) == set()

    detail = op_api.get(f"/api/v1/messages/{outbox['mine_skipped'].pk}/").json()
    assert (detail["status"], detail["skip_reason"], detail["customer"]) == (
        "skipped", "frequency_cap", outbox["mine"].pk)
    assert op_api.get(f"/api/v1/messages/{outbox['theirs'].pk}/").status_code == 404
    assert api_client_for(analyst).get("/api/v1/messages/").status_code == 403
    assert op_api.post("/api/v1/messages/", {}, format="json").status_code == 405


# --- Receipts -------------------------------------------------------------------------------

def _at(minute: int) -> str:
    return local(2026, 3, 2, 12, minute).isoformat()


@pytest.fixture
def receipts(op_api):
    def post(items):
        response = op_api.post("/api/v1/messages/receipts/", items, format="json")
        assert response.status_code == 200, response.json()
        return response.json()

    return post


def test_receipts_update_the_message_and_become_events(receipts, outbox):
    message = outbox["mine_sent"]
    Message.objects.filter(pk=message.pk).update(provider_id="prov-mine")
    Message.objects.filter(pk=outbox["theirs"].pk).update(provider_id="prov-theirs",
                                                          status="sent", sent_at=NOW)
    items = [
        {"message": message.pk, "status": "delivered", "at": _at(1)},
        {"provider_id": "prov-mine", "status": "read", "at": _at(5)},
        {"message": message.pk, "status": "clicked", "at": _at(6)},
        {"message": message.pk, "status": "replied", "at": _at(10)},
        {"message": 987654321, "status": "read"},
        {"message": outbox["theirs"].pk, "status": "read"},
        {"provider_id": "prov-theirs", "status": "read"},
        {"message": message.pk, "status": "opened"},
    ]

    report = receipts(items)

    assert (report["accepted"], report["duplicates"]) == (4, 0)
    assert [r["index"] for r in report["rejected"]] == [4, 5, 6, 7]
    assert report["rejected"][0]["message"] == "message: unknown message '987654321'"
    assert report["rejected"][3]["message"] == "status: one of delivered, read, replied, clicked"
    message.refresh_from_db()
    assert (message.status, message.delivered_at, message.read_at, message.clicked_at,
            message.replied_at) == ("replied", local(2026, 3, 2, 12, 1),
                                    local(2026, 3, 2, 12, 5), local(2026, 3, 2, 12, 6),
                                    local(2026, 3, 2, 12, 10))
    events = Event.objects.filter(customer=outbox["mine"]).order_by("occurred_at")
    assert [(e.type, e.data["message"]) for e in events] == [
        ("message_delivered", message.pk), ("message_read", message.pk),
        ("link_clicked", message.pk), ("message_in", message.pk)]
    assert all(e.data["campaign"] == outbox["campaign"].pk for e in events)
    theirs = Message.objects.get(pk=outbox["theirs"].pk)
    assert (theirs.status, theirs.read_at) == ("sent", None)
    assert not Event.objects.filter(customer=outbox["theirs_customer"]).exists()

    # The same receipts again (a provider retrying): nothing changes, nothing is stored twice.
    again = receipts(items[:4] + [{"message": message.pk, "status": "delivered"}])
    assert (again["accepted"], again["duplicates"]) == (0, 5)
    message.refresh_from_db()
    assert (message.status, message.delivered_at, message.replied_at) == (
        "replied", local(2026, 3, 2, 12, 1), local(2026, 3, 2, 12, 10))
    assert Event.objects.filter(customer=outbox["mine"]).count() == 4


def test_receipts_out_of_order_never_move_the_status_back(receipts, outbox):
    message = outbox["mine_sent"]
    receipts([{"message": message.pk, "status": "read", "at": _at(5)},
              {"message": message.pk, "status": "delivered", "at": _at(1)}])
    message.refresh_from_db()
    assert (message.status, message.delivered_at) == ("read", local(2026, 3, 2, 12, 1))

    receipts([{"message": message.pk, "status": "delivered", "at": _at(2)}])
    message.refresh_from_db()
    assert message.status == "read"


def test_an_admin_may_post_receipts_for_any_message(admin_api, outbox):
    response = admin_api.post("/api/v1/messages/receipts/",
                              {"message": outbox["theirs"].pk, "status": "delivered"},
                              format="json")
    assert response.json()["accepted"] == 1


# --- Operator tasks -------------------------------------------------------------------------

@pytest.fixture
def follow_up(make_sop, operator):
    """A manual 1-to-1 step for a customer of `operator`, dispatched in the quiet hours."""
    make_sop("aipl", "awareness", steps=[{"channel": "manual",
                                          "template": "1 对 1 回访 {{ name }}，了解使用感受"}])
    customer = Customer.objects.create(external_id="task-lin", name="林小姐", owner=operator)
    place(customer, "aipl", "awareness")
    services.sops_on_stage_entered(StageEntry(model="aipl", stage="awareness", at=NOW,
                                              source="rule", customer_ids=[customer.pk]))
    services.messages_dispatch(now=local(2026, 3, 2, 23, 0))
    return customer


def test_a_manual_step_becomes_a_follow_up_for_the_owner(follow_up, operator):
    message = Message.objects.get(customer=follow_up)
    assert (message.status, message.provider_id) == ("sent", f"task-{message.pk}")
    task = OperatorTask.objects.get()
    assert (task.kind, task.assignee, task.customer, task.status, task.message, task.due_at) == (
        "follow_up", operator, follow_up, "open", message, NOW)
    assert task.title == "Follow up one to one with 林小姐"
    assert task.body == "1 对 1 回访 林小姐，了解使用感受"


def test_my_tasks_and_closing_them(follow_up, op_api, operator, other_operator, api_client_for,
                                   admin_api):
    OperatorTask.objects.create(assignee=other_operator, kind="churn_warning", title="theirs",
                                due_at=NOW, dedupe_key="theirs-1")
    mine = op_api.get("/api/v1/tasks/").json()
    assert [(t["kind"], t["customer_name"], t["status"]) for t in mine["results"]] == [
        ("follow_up", "林小姐", "open")]
    task_id = mine["results"][0]["id"]
    other_api = api_client_for(other_operator)
    assert [t["title"] for t in other_api.get("/api/v1/tasks/").json()["results"]] == ["theirs"]
    assert len(admin_api.get("/api/v1/tasks/?all=1").json()["results"]) == 2

    # Someone else's to-do is not theirs to close (not even visible to them).
    assert other_api.post(f"/api/v1/tasks/{task_id}/close/", {"status": "done"},
                          format="json").status_code == 404
    bad = op_api.post(f"/api/v1/tasks/{task_id}/close/", {"status": "finished"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["message"] == "status: done or skipped"

    closed = op_api.post(f"/api/v1/tasks/{task_id}/close/",
                         {"status": "done", "note": "聊过了，下周再约"}, format="json")

    assert closed.status_code == 200, closed.json()
    assert (closed.json()["status"], closed.json()["closed_note"]) == ("done", "聊过了，下周再约")
    assert closed.json()["closed_at"] is not None
    assert op_api.get("/api/v1/tasks/?status=open").json()["results"] == []


def test_closing_someone_elses_task_by_the_service(follow_up, other_operator, admin_user):
    task = OperatorTask.objects.get()
    with pytest.raises(ApplicationError, match="This to-do is someone else's."):
        services.task_close(task=task, actor=other_operator, status="done")
    assert services.task_close(task=task, actor=admin_user, status="skipped").status == "skipped"


# --- The policy -----------------------------------------------------------------------------

def test_the_policy_is_editable_by_admins(admin_api, op_api):
    assert op_api.get("/api/v1/outreach-policy/").json()["promo_max_per_month"] == 4
    assert op_api.put("/api/v1/outreach-policy/", {"promo_max_per_month": 9},
                      format="json").status_code == 403
    response = admin_api.put("/api/v1/outreach-policy/", {"promo_max_per_month": 2,
                                                          "block_rate_pause": "0.0500"},
                             format="json")
    assert response.status_code == 200, response.json()
    policy = services.policy()
    assert (policy.promo_max_per_month, str(policy.block_rate_pause)) == (2, "0.0500")


# --- Lists: order and a fixed number of queries ---------------------------------------------

def test_campaigns_are_listed_newest_first(admin_api):
    for n in range(3):
        Campaign.objects.create(name=f"c{n}", condition={"all": []}, template="x")
        Campaign.objects.filter(name=f"c{n}").update(
            created_at=timezone.now() - timedelta(days=10 - n))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [c["name"] for c in admin_api.get("/api/v1/campaigns/").json()["results"]]
    assert names == ["c2", "c1", "c0"]
    # A page of an unordered list may repeat or miss campaigns.
    assert not [w for w in caught if issubclass(w.category, UnorderedObjectListWarning)]


def _query_count(api, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = api.get(url)
    assert response.status_code == 200, response.json()
    return len(captured)


def _add_sops(make_sop, n, start):
    for i in range(start, start + n):
        make_sop("aipl", "awareness", name=f"qc {i}", steps=[{}, {}])


def test_list_queries_do_not_grow_with_the_rows(admin_api, op_api, make_sop, queue, operator,
                                                 admin_user):
    def fill(start, n):
        _add_sops(make_sop, n, start)
        customer = Customer.objects.create(external_id=f"qc-{start}", owner=operator)
        for i in range(n):
            campaign = Campaign.objects.create(name=f"qc {start}-{i}", condition={"all": []},
                                               template="x", status="sending")
            queue(customer, campaign=campaign)
            OperatorTask.objects.create(assignee=operator, customer=customer, kind="follow_up",
                                        title="t", due_at=NOW, dedupe_key=f"qc-{start}-{i}")

    urls = ["/api/v1/sops/", "/api/v1/campaigns/", "/api/v1/messages/", "/api/v1/tasks/"]
    services.policy()             # the first read of the policy creates its row
    fill(0, 2)
    few = {url: _query_count(op_api, url) for url in urls}
    fill(10, 8)
    many = {url: _query_count(op_api, url) for url in urls}
    assert many == few
    assert max(many.values()) <= 10
