from django.urls import path

from delivery import consent_views, gdpr_views

urlpatterns = [
    path("u/<str:token>", consent_views.unsubscribe_view, name="unsubscribe"),
    path("p/<str:token>", consent_views.preferences_view, name="preferences"),
    path(
        "compliance/contacts/<int:contact_id>/export.json", gdpr_views.contact_export_view, name="contact-export-file"
    ),
    path("compliance/contacts/<int:contact_id>/erase/", gdpr_views.contact_erase_view, name="contact-erase-console"),
]
