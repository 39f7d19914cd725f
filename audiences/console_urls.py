from django.urls import path

from audiences import console

segment_patterns = (
    [
        path("", console.segment_list_view, name="list"),
        path("new/", console.segment_create_view, name="create"),
        path("estimate/", console.rules_estimate_view, name="estimate"),
        path("prebuilt/", console.segment_prebuilt_pick_view, name="prebuilt-pick"),
        path("<uuid:segment_id>/", console.segment_detail_view, name="detail"),
        path("<uuid:segment_id>/edit/", console.segment_edit_view, name="edit"),
        path("<uuid:segment_id>/delete/", console.segment_delete_view, name="delete"),
    ],
    "segments",
)
contact_patterns = (
    [
        path("", console.contact_list_view, name="list"),
        path("import/", console.contact_import_view, name="import-start"),
        path("imports/<uuid:import_id>/", console.contact_import_detail_view, name="import"),
        path("imports/<uuid:import_id>/rejected.csv", console.contact_import_report_view, name="import-report"),
    ],
    "contacts",
)
event_patterns = (
    [path("", console.event_type_list_view, name="list")],
    "events",
)
