from django.urls import path

from tagging import views

app_name = "tagging-dashboard"

urlpatterns = [
    path("customers/<int:pk>/tags/", views.customer_tags_edit, name="customer-tags"),
    path("tags/", views.tags, name="tags"),
    path("tags/new/", views.tag_create, name="tag-create"),
    path("tags/groups/new/", views.group_create, name="group-create"),
    path("tags/groups/<int:pk>/", views.group_edit, name="group-edit"),
    path("tags/rules/", views.rules, name="rules"),
    path("tags/rules/new/", views.rule_create, name="rule-create"),
    path("tags/rules/<int:pk>/", views.rule_edit, name="rule-edit"),
    path("tags/rules/<int:pk>/run/", views.rule_run, name="rule-run"),
    path("tags/<int:pk>/", views.tag_edit, name="tag-edit"),
    path("tags/<int:pk>/merge/", views.tag_merge, name="tag-merge"),
    path("tags/<int:pk>/delete/", views.tag_delete, name="tag-delete"),
]
