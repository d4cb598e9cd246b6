from django.urls import path

from wecom import views

app_name = "wecom"

urlpatterns = [
    path("callback/", views.callback, name="callback"),
]
