"""/settings/… (admins): one URL prefix and one set of tabs over pages from three apps — the
outreach policy from campaigns, the schedules and users from core, the WeCom connection from
wecom. The URLconf sits here, with the rest of the project's wiring, because core may not
import campaigns."""

from django.urls import path

from campaigns import views_settings as campaigns_settings
from core import views_settings as core_settings
from wecom import views_dashboard as wecom_settings

app_name = "settings"

urlpatterns = [
    path("", campaigns_settings.policy, name="policy"),
    path("schedules/", core_settings.schedules, name="schedules"),
    path("users/", core_settings.users, name="users"),
    path("audit/", core_settings.audit_log, name="audit"),
    path("wecom/", wecom_settings.settings_page, name="wecom"),
    path("wecom/runs/", wecom_settings.sync_runs, name="wecom-runs"),
]
