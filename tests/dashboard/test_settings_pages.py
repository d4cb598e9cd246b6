"""The settings pages (/settings/…, admins only): the outreach policy through the same service
as the `outreach-policy/` API, the periodic jobs' schedules (django-celery-beat rows seeded from
config/beat.py) and the staff users with their roles."""

import pytest
from django.contrib.auth import get_user_model
from django_celery_beat.models import PeriodicTask

from campaigns import services as campaign_services
from core import access, services
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

URLS = ["/settings/", "/settings/schedules/", "/settings/users/"]


@pytest.fixture
def jobs(db):
    services.periodic_tasks_sync()
    return {task.name: task for task in PeriodicTask.objects.all()}


def job(name: str) -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval", "crontab").get(name=name)


def flashes(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


POLICY = {"promo_min_days_between": "5", "promo_max_per_month": "2",
          "block_window_hours": "24", "block_rate_pause": "0.0300", "block_min_sends": "100",
          "max_attempts": "4"}


# --- Who may open them ------------------------------------------------------------------------

@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("method", ["get", "post"])
def test_signed_out_visitors_go_to_the_login_page(client, url, method):
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/login/?next={url}")


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("role", ["operator", "analyst"])
def test_operators_and_analysts_get_the_403_page(reader, jobs, url, method, role):
    user = UserFactory(username=f"who-{role}", roles=[role])
    before = (campaign_services.policy().max_attempts, job("campaigns-dispatch").interval_id,
              get_user_model().objects.count())
    data = {**POLICY, "task": jobs["campaigns-dispatch"].pk, "every": "99", "enabled": "1",
            "action": "create", "new-username": "sneaky", "new-password1": "x-Long-pass-42",
            "new-password2": "x-Long-pass-42", "new-role": "admin"}
    response = getattr(reader(user), method)(url, data)
    assert response.status_code == 403
    assert b"Only admins can open the settings." in response.content
    assert b"You cannot open this page" in response.content
    after = (campaign_services.policy().max_attempts, job("campaigns-dispatch").interval_id,
             get_user_model().objects.count())
    assert after == before


def test_a_user_without_a_role_gets_the_403_page(reader):
    assert reader(UserFactory(username="nobody")).get("/settings/").status_code == 403


@pytest.mark.parametrize("url", URLS)
def test_admins_open_every_page_with_the_shared_tabs(reader, admin_user, jobs, url,
                                                     django_assert_max_num_queries):
    page = reader(admin_user)
    with django_assert_max_num_queries(12):
        response = page.get(url)
    assert response.status_code == 200
    text = response.content.decode()
    for tab in ("Outreach policy", "Schedules", "Users and roles"):
        assert tab in text
    assert 'aria-current="page"' in text


def test_admins_by_group_are_admins_too(reader, jobs):
    boss = UserFactory(username="group-admin", roles=["admin"])
    assert reader(boss).put("/settings/").status_code == 405
    assert reader(boss).get("/settings/schedules/").status_code == 200


# --- Outreach policy --------------------------------------------------------------------------

def test_the_policy_page_shows_and_changes_what_policy_returns(reader, admin_user,
                                                               admin_api):
    page = reader(admin_user)
    text = page.get("/settings/").content.decode()
    assert 'name="promo_max_per_month" value="4"' in text
    assert "22:00 – 08:00" in text and "OUTREACH_QUIET_HOURS" in text

    response = page.post("/settings/", POLICY, follow=True)

    assert response.redirect_chain == [("/settings/", 302)]
    assert "Outreach policy saved." in flashes(response)
    saved = campaign_services.policy()
    assert (saved.promo_min_days_between, saved.promo_max_per_month, saved.block_window_hours,
            str(saved.block_rate_pause), saved.block_min_sends, saved.max_attempts) == (
        5, 2, 24, "0.0300", 100, 4)
    # The API reads the same row.
    assert admin_api.get("/api/v1/outreach-policy/").json()["promo_max_per_month"] == 2


@pytest.mark.parametrize(("field", "value", "message"), [
    ("promo_max_per_month", "-1", "Ensure this value is greater than or equal to 0."),
    ("max_attempts", "many", "Enter a whole number."),
    ("block_rate_pause", "0.12345", "Ensure that there are no more than 4 decimal places."),
    ("block_min_sends", "", "This field is required."),
])
def test_a_bad_policy_value_is_a_400_with_the_message(reader, admin_user, field, value,
                                                      message):
    response = reader(admin_user).post("/settings/", {**POLICY, field: value})
    assert response.status_code == 400
    text = response.content.decode()
    assert message in text
    assert "The policy was not saved" in text
    assert campaign_services.policy().promo_max_per_month == 4        # nothing saved


def test_the_policy_page_and_the_api_refuse_the_same_values(admin_api, reader, admin_user):
    """One set of rules: the form and the API's serializer both come from the model."""
    for field, value in [("promo_max_per_month", "-1"), ("block_rate_pause", "123.5")]:
        page = reader(admin_user).post("/settings/", {**POLICY, field: value})
        api = admin_api.put("/api/v1/outreach-policy/", {field: value}, format="json")
        assert (page.status_code, api.status_code) == (400, 400), field


def test_quiet_hours_are_shown_as_configured(reader, admin_user, settings):
    settings.OUTREACH_QUIET_HOURS = ""
    assert "Messages go out at any hour." in reader(admin_user).get("/settings/").content.decode()
    settings.OUTREACH_QUIET_HOURS = "late"
    text = reader(admin_user).get("/settings/").content.decode()
    assert "OUTREACH_QUIET_HOURS: use HH:MM-HH:MM" in text


# --- Schedules --------------------------------------------------------------------------------

def test_the_schedules_page_lists_every_job_with_what_it_does(reader, admin_user, jobs):
    PeriodicTask.objects.filter(name="campaigns-dispatch").update(total_run_count=7)
    text = reader(admin_user).get("/settings/schedules/").content.decode()
    assert text.count('data-job="') == len(jobs)
    assert "Send due messages" in text
    assert "Sends every queued message that is due, through its channel." in text
    assert "Nightly metric snapshot" in text
    assert 'name="every" value="15"' in text
    assert 'name="minute" value="10"' in text     # metrics-snapshot-nightly: 00:10
    assert ">7</td>" in text


def test_an_admin_edits_disables_and_resets_a_schedule(reader, admin_user, jobs):
    page = reader(admin_user)
    dispatch = jobs["campaigns-dispatch"]

    response = page.post("/settings/schedules/", {"task": dispatch.pk, "action": "save",
                                                  "every": "45", "enabled": "1"}, follow=True)
    assert response.redirect_chain[-1][0] == f"/settings/schedules/#job-{dispatch.pk}"
    assert "campaigns-dispatch: saved." in flashes(response)
    assert job("campaigns-dispatch").interval.every == 45
    assert 'data-customised' in response.content.decode()

    page.post("/settings/schedules/", {"task": dispatch.pk, "action": "save", "every": "45"})
    assert not job("campaigns-dispatch").enabled

    nightly = jobs["metrics-snapshot-nightly"]
    page.post("/settings/schedules/", {
        "task": nightly.pk, "action": "save", "enabled": "1", "minute": "30", "hour": "2",
        "day_of_month": "*", "month_of_year": "*", "day_of_week": "1-5"})
    cron = job("metrics-snapshot-nightly").crontab
    assert (cron.minute, cron.hour, cron.day_of_week) == ("30", "2", "1-5")

    services.periodic_tasks_sync()          # a deploy seeds again: the edits stay
    assert job("campaigns-dispatch").interval.every == 45

    response = page.post("/settings/schedules/", {"task": dispatch.pk, "action": "reset"},
                         follow=True)
    assert "campaigns-dispatch: back to its default schedule." in flashes(response)
    assert job("campaigns-dispatch").interval.every == 15
    assert job("campaigns-dispatch").enabled


@pytest.mark.parametrize(("data", "message"), [
    ({"every": "0"}, "Every: must be at least 1 second."),
    ({"every": "-3"}, "Every: must be at least 1 second."),
    ({"every": "soon"}, "Every (seconds): Enter a whole number."),
    ({"every": ""}, "Every: enter a whole number of seconds."),
])
def test_a_bad_interval_is_a_400_next_to_its_row(reader, admin_user, jobs, data, message):
    task = jobs["campaigns-dispatch"]
    response = reader(admin_user).post("/settings/schedules/",
                                       {"task": task.pk, "action": "save", "enabled": "1",
                                        **data})
    assert response.status_code == 400
    text = response.content.decode()
    assert message in text
    assert 'class="settings-row-invalid' in text
    assert job("campaigns-dispatch").interval.every == 15


def test_a_bad_crontab_field_is_a_400_naming_the_field(reader, admin_user, jobs):
    task = jobs["metrics-snapshot-nightly"]
    response = reader(admin_user).post("/settings/schedules/", {
        "task": task.pk, "action": "save", "enabled": "1", "minute": "75", "hour": "0",
        "day_of_month": "*", "month_of_year": "*", "day_of_week": "*"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "Minute: &#x27;75&#x27; is not a valid crontab value" in text
    assert 'name="minute" value="75"' in text         # what was typed stays in the field
    assert job("metrics-snapshot-nightly").crontab.minute == "10"


def test_an_unknown_job_is_a_404(reader, admin_user, jobs):
    page = reader(admin_user)
    assert page.post("/settings/schedules/", {"task": "999999", "every": "5"}).status_code == 404
    assert page.post("/settings/schedules/", {"task": "x"}).status_code == 404


# --- Users and roles --------------------------------------------------------------------------

def test_the_users_page_shows_names_roles_and_last_sign_in(reader, admin_user, wang, analyst,
                                                           django_assert_max_num_queries):
    UserFactory(username="gone", roles=["operator"], is_active=False)
    for index in range(10):
        UserFactory(username=f"many-{index}", roles=["operator"])
    page = reader(admin_user)
    with django_assert_max_num_queries(10):
        text = page.get("/settings/users/").content.decode()
    assert "王芳" in text and "芳 王" not in text            # core.people.staff_name
    assert 'data-user="op_wang"' in text and 'data-user="gone"' in text
    assert text.index('data-user="boss"') < text.index('data-user="op_wang"') < text.index(
        'data-user="gone"')


def test_an_admin_creates_a_user_with_a_role(reader, admin_user, client):
    response = reader(admin_user).post("/settings/users/", {
        "action": "create", "new-username": "op_zhao", "new-last_name": "赵",
        "new-first_name": "敏", "new-password1": "Quiet-river-2041",
        "new-password2": "Quiet-river-2041", "new-role": "operator"}, follow=True)
    assert "op_zhao created." in flashes(response)
    created = get_user_model().objects.get(username="op_zhao")
    assert access.user_role(created) == access.OPERATOR
    assert created.check_password("Quiet-river-2041")
    assert "赵敏" in response.content.decode()


@pytest.mark.parametrize(("changes", "message"), [
    ({"new-password2": "different-Pass-1"}, "The two password fields didn"),
    ({"new-password1": "short", "new-password2": "short"}, "This password is too short."),
    ({"new-username": "boss"}, "A user with that username already exists."),
    ({"new-role": "owner"}, "Select a valid choice."),
])
def test_a_bad_new_user_is_a_400_with_djangos_message(reader, admin_user, changes, message):
    data = {"action": "create", "new-username": "op_new", "new-password1": "Quiet-river-2041",
            "new-password2": "Quiet-river-2041", "new-role": "operator", **changes}
    response = reader(admin_user).post("/settings/users/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not get_user_model().objects.filter(username="op_new").exists()


def test_an_admin_changes_a_role_and_deactivates_a_user(reader, admin_user, operator):
    page = reader(admin_user)
    page.post("/settings/users/", {"action": "update", "user": operator.pk, "role": "analyst",
                                   "is_active": "1"})
    operator.refresh_from_db()
    assert access.user_role(operator) == access.ANALYST

    response = page.post("/settings/users/", {"action": "update", "user": operator.pk,
                                              "role": "analyst"}, follow=True)
    assert "op-a saved." in flashes(response)
    operator.refresh_from_db()
    assert not operator.is_active
    assert access.user_role(operator) is None          # cannot sign in, has no role in effect


def test_an_admin_cannot_demote_or_deactivate_themselves(reader):
    me = UserFactory(username="me-admin", roles=["admin"])
    page = reader(me)
    response = page.post("/settings/users/", {"action": "update", "user": me.pk,
                                              "role": "operator", "is_active": "1"})
    assert response.status_code == 400
    assert "You cannot remove your own admin role" in response.content.decode()
    response = page.post("/settings/users/", {"action": "update", "user": me.pk,
                                              "role": "admin"})
    assert response.status_code == 400
    assert "You cannot deactivate your own account" in response.content.decode()
    me.refresh_from_db()
    assert me.is_active and access.user_role(me) == access.ADMIN


def test_a_superusers_role_is_changed_in_the_django_admin(reader, admin_user):
    other = UserFactory(username="root2", is_superuser=True)
    response = reader(admin_user).post("/settings/users/", {
        "action": "update", "user": other.pk, "role": "analyst", "is_active": "1"})
    assert response.status_code == 400
    assert "root2 is a superuser and stays an admin" in response.content.decode()


def test_the_policy_page_edits_every_field_the_api_does():
    from campaigns.api import PolicySerializer
    from campaigns.views_settings import PolicyForm

    assert set(PolicyForm.base_fields) == set(PolicySerializer().fields)
