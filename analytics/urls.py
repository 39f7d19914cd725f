from django.urls import path

from analytics import console, global_control

app_name = "analytics"

urlpatterns = [
    path("", console.overview_view, name="overview"),
    path("campaigns/<uuid:campaign_id>/", console.campaign_report_view, name="report"),
    path("campaigns/<uuid:campaign_id>/live/", console.campaign_live_metrics_view, name="live"),
    path("campaigns/<uuid:campaign_id>/experiment/", console.campaign_experiment_view, name="experiment"),
    path("campaigns/<uuid:campaign_id>/auto-winner/", console.campaign_auto_winner_view, name="auto-winner"),
    path("global-control/", global_control.global_control_view, name="global-control"),
    path("notices/<int:notice_id>/read/", console.notice_read_view, name="notice-read"),
    path("campaigns/<uuid:campaign_id>/report.pdf", console.campaign_report_pdf_view, name="report-pdf"),
    path("campaigns/<uuid:campaign_id>/report.csv", console.campaign_report_csv_view, name="report-csv"),
]
