from django.urls import path

from lifecycle import views

app_name = "lifecycle-dashboard"

urlpatterns = [
    path("customers/<int:pk>/stage/", views.customer_stage_edit, name="customer-stage"),
]
