"""The dashboard's pages of the metrics app: the workbench and the Metrics page."""

from django.urls import path

from metrics import views

app_name = "metrics"
urlpatterns = [path("", views.workbench, name="home"),
               path("metrics/", views.dashboard, name="dashboard")]
