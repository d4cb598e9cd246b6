from django.urls import path

from campaigns import views

app_name = "outreach"

urlpatterns = [
    path("today/", views.today, name="today"),
    path("tasks/<int:pk>/close/", views.task_close, name="task-close"),
    path("outbox/", views.outbox, name="outbox"),
    path("outbox/retry/", views.outbox_retry, name="outbox-retry"),
]
