from django.urls import path

from crm import views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
]
