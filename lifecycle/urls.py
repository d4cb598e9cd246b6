from django.urls import path

from lifecycle import views

app_name = "lifecycle-dashboard"

urlpatterns = [
    path("customers/<int:pk>/stage/", views.customer_stage_edit, name="customer-stage"),
    path("lifecycle/", views.model_list, name="models"),
    path("lifecycle/new/", views.model_edit, name="model-new"),
    path("lifecycle/new/simulate/", views.model_simulate, name="simulate-new"),
    path("lifecycle/log/", views.transition_log, name="log-all"),
    path("lifecycle/<slug:key>/board/", views.board, name="board"),
    path("lifecycle/<slug:key>/board/<slug:stage_key>/", views.board_column, name="column"),
    path("lifecycle/<slug:key>/move/", views.board_move, name="move"),
    path("lifecycle/<slug:key>/edit/", views.model_edit, name="model-edit"),
    path("lifecycle/<slug:key>/simulate/", views.model_simulate, name="simulate"),
    path("lifecycle/<slug:key>/delete/", views.model_delete, name="model-delete"),
    path("lifecycle/<slug:key>/stages/<slug:stage_key>/delete/", views.stage_remove,
         name="stage-delete"),
    path("lifecycle/<slug:key>/log/", views.transition_log, name="log"),
]
