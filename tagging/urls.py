from django.urls import path

from tagging import views

app_name = "tagging-dashboard"

urlpatterns = [
    path("customers/<int:pk>/tags/", views.customer_tags_edit, name="customer-tags"),
]
