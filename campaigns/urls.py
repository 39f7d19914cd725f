from django.urls import path

from campaigns import content_views, unsubscribes, views

app_name = "campaigns"

urlpatterns = [
    path("", views.campaign_list_view, name="list"),
    path("deleted/", views.campaign_deleted_view, name="deleted"),
    path("new/", views.campaign_create_view, name="create"),
    path("audience/estimate/", views.audience_estimate_view, name="audience-estimate"),
    path("<uuid:campaign_id>/", views.campaign_detail_view, name="detail"),
    path("<uuid:campaign_id>/edit/", views.campaign_edit_view, name="edit"),
    path("<uuid:campaign_id>/content/", content_views.campaign_content_view, name="content"),
    path("<uuid:campaign_id>/content/preview/", content_views.campaign_content_preview_view, name="content-preview"),
    path("<uuid:campaign_id>/clone/", views.campaign_clone_view, name="clone"),
    path("<uuid:campaign_id>/audience/", views.campaign_audience_estimate_view, name="audience"),
    path("<uuid:campaign_id>/test-send/", views.campaign_test_send_view, name="test-send"),
    path("<uuid:campaign_id>/delete/", views.campaign_delete_view, name="delete"),
    path("<uuid:campaign_id>/restore/", views.campaign_restore_view, name="restore"),
    path("<uuid:campaign_id>/unsubscribes/", unsubscribes.campaign_unsubscribes_view, name="unsubscribes"),
    path("<uuid:campaign_id>/unsubscribes.csv", unsubscribes.campaign_unsubscribes_csv_view, name="unsubscribes-csv"),
    path("<uuid:campaign_id>/<str:action>/", views.campaign_transition_view, name="transition"),
]
