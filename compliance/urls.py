from django.urls import path

from compliance import views

app_name = "compliance"

urlpatterns = [
    path("contacts/<int:contact_id>/", views.contact_consent_view, name="contact"),
    path("suppressions/", views.suppression_list_view, name="suppressions"),
    path("suppressions/add/", views.suppression_add_view, name="suppression-add"),
    path("suppressions/import/", views.suppression_import_view, name="suppression-import"),
    path("suppressions/<int:suppression_id>/remove/", views.suppression_remove_view, name="suppression-remove"),
    path("holds/<int:hold_id>/release/", views.sending_hold_release_view, name="hold-release"),
    path("audit/", views.audit_log_view, name="audit"),
    path("audit.csv", views.audit_log_csv_view, name="audit-csv"),
    path("exclusions/", views.run_exclusions_view, name="exclusions"),
    path("exclusions.csv", views.run_exclusions_csv_view, name="exclusions-csv"),
]
