from django.urls import path

from crm import views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("customers/", views.customer_list, name="customer-list"),
    path("customers/<int:pk>/", views.customer_detail, name="customer-detail"),
    path("customers/<int:pk>/notes/", views.customer_notes, name="customer-notes"),
]
