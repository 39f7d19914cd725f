from django.urls import path

from audiences import views

urlpatterns = [
    path("organisation/switch/", views.organisation_switch_view, name="organisation-switch"),
    path("settings/api-keys/", views.api_key_list_view, name="api-keys"),
    path("settings/organisation/", views.organisation_settings_view, name="organisation-settings"),
    path("settings/api-keys/<uuid:api_key_id>/revoke/", views.api_key_revoke_view, name="api-key-revoke"),
]
