from django.urls import path

from campaigns import views, views_sops

app_name = "outreach"

urlpatterns = [
    path("today/", views.today, name="today"),
    path("tasks/<int:pk>/close/", views.task_close, name="task-close"),
    path("outbox/", views.outbox, name="outbox"),
    path("outbox/retry/", views.outbox_retry, name="outbox-retry"),
    path("campaigns/", views.campaign_list, name="campaigns"),
    path("campaigns/new/", views.campaign_edit, name="campaign-new"),
    path("campaigns/audience/", views.campaign_audience, name="campaign-audience"),
    path("campaigns/<int:pk>/", views.campaign_detail, name="campaign"),
    path("campaigns/<int:pk>/edit/", views.campaign_edit, name="campaign-edit"),
    path("campaigns/<int:pk>/progress/", views.campaign_progress, name="campaign-progress"),
    path("campaigns/<int:pk>/<slug:action>/", views.campaign_action, name="campaign-action"),
    path("templates/preview/", views.template_preview, name="template-preview"),
    path("sops/", views_sops.sop_list, name="sops"),
    path("sops/new/", views_sops.sop_edit, name="sop-new"),
    path("sops/<int:pk>/", views_sops.sop_edit, name="sop"),
    path("sops/<int:pk>/delete/", views_sops.sop_delete, name="sop-delete"),
    path("sops/steps/<int:pk>/resume/", views_sops.sop_step_resume, name="sop-step-resume"),
]
