from django.urls import path

from tagging import views_segments as views

app_name = "segments"

urlpatterns = [
    path("segments/", views.segment_list, name="list"),
    path("segments/new/", views.segment_edit, name="new"),
    path("segments/preview/", views.segment_preview, name="preview"),
    path("segments/<int:pk>/", views.segment_edit, name="edit"),
    path("segments/<int:pk>/count/", views.segment_count, name="count"),
    path("segments/<int:pk>/delete/", views.segment_delete, name="delete"),
]
