from django.urls import path

from wecom import views, views_dashboard

app_name = "wecom"

urlpatterns = [
    path("callback/", views.callback, name="callback"),
    path("qr-codes/", views_dashboard.contact_way_list, name="contact-ways"),
    path("qr-codes/new/", views_dashboard.contact_way_new, name="contact-way-new"),
    path("qr-codes/<int:pk>/", views_dashboard.contact_way_edit, name="contact-way"),
    path("qr-codes/<int:pk>/qr.png", views_dashboard.contact_way_qr, name="contact-way-qr"),
    path("mass-sends/", views_dashboard.mass_send_list, name="mass-sends"),
]
