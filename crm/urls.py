from django.urls import path

from crm import views, views_bulk, views_imports

app_name = "dashboard"

urlpatterns = [
    path("customers/", views.customer_list, name="customer-list"),
    path("customers/<int:pk>/", views.customer_detail, name="customer-detail"),
    path("customers/<int:pk>/notes/", views.customer_notes, name="customer-notes"),
    path("customers/<int:pk>/personal-data/", views.customer_personal_data,
         name="customer-personal-data"),
    path("imports/", views_imports.imports, name="imports"),
    path("imports/sample.csv", views_imports.import_sample, name="import-sample"),
    path("imports/<int:pk>/", views_imports.import_detail, name="import"),
    path("imports/<int:pk>/progress/", views_imports.import_progress, name="import-progress"),
    path("imports/<int:pk>/errors.csv", views_imports.import_errors_csv, name="import-errors"),
    path("customers/bulk/", views_bulk.customer_bulk, name="customer-bulk"),
    path("customers/jobs/<slug:kind>/<int:pk>/", views_bulk.customer_job, name="customer-job"),
    path("customers/jobs/<slug:kind>/<int:pk>/progress/", views_bulk.customer_job_progress,
         name="customer-job-progress"),
    path("customers/exports/<int:pk>/download/", views_bulk.customer_export_download,
         name="customer-export-download"),
]
