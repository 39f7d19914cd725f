from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from analytics import views as tracking
from analytics.api import (
    CampaignAutoWinnerView,
    CampaignExperimentCsvView,
    CampaignExperimentPdfView,
    CampaignExperimentView,
    CampaignMetricsView,
    CampaignReportCsvView,
    CampaignReportPdfView,
    OverviewView,
)
from audiences import console_urls
from audiences.api import ApiKeyViewSet, OrganisationView, WebhookSecretRotateView
from audiences.event_api import EventIngestView, EventTypeViewSet
from audiences.segment_api import ContactViewSet, SegmentViewSet
from campaigns.api import CampaignViewSet
from campaigns.template_api import ContentTemplateViewSet
from campaigns.unsubscribes import CampaignUnsubscribesView
from compliance.api import (
    AuditLogViewSet,
    ContactPreferencesView,
    InboundView,
    RunExclusionViewSet,
    SuppressionViewSet,
)
from config import files, health, metrics
from config import views as config_views
from delivery.api import InboxViewSet, ReceiptView, RunViewSet, TriggerDecisionsView
from delivery.domain_api import SendingDomainViewSet
from delivery.gdpr_api import ContactEraseView, ContactExportView
from delivery.views import task_service_callback_view

router = DefaultRouter(trailing_slash=True)
router.register("campaigns", CampaignViewSet, basename="campaign")
router.register("api-keys", ApiKeyViewSet, basename="api-key")
router.register("contacts", ContactViewSet, basename="contact")
router.register("segments", SegmentViewSet, basename="segment")
router.register("content-templates", ContentTemplateViewSet, basename="content-template")
router.register("runs", RunViewSet, basename="run")
router.register("inbox", InboxViewSet, basename="inbox")
router.register("event-types", EventTypeViewSet, basename="event-type")
router.register("suppressions", SuppressionViewSet, basename="suppression")
router.register("audit-log", AuditLogViewSet, basename="audit-log")
router.register("run-exclusions", RunExclusionViewSet, basename="run-exclusion")
router.register("sending-domains", SendingDomainViewSet, basename="sending-domain")

urlpatterns = [
    path("", config_views.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("audiences.urls")),
    path("campaigns/", include("campaigns.urls")),
    path("delivery/", include("delivery.urls")),
    path("settings/sending-domains/", include("delivery.domain_views")),
    path("segments/", include(console_urls.segment_patterns)),
    path("contacts/", include(console_urls.contact_patterns)),
    path("events/", include(console_urls.event_patterns)),
    path("analytics/", include("analytics.urls")),
    path("admin/", admin.site.urls),
    path("t/c/<str:token>", tracking.click_redirect_view, name="track-click"),
    path("t/o/<str:token>.gif", tracking.open_pixel_view, name="track-open"),
    path("", include("delivery.consent_urls")),
    path("compliance/", include("compliance.urls")),
    path("api/v1/organisation/", OrganisationView.as_view(), name="api-organisation"),
    path("api/v1/organisation/webhook-secret/rotate/", WebhookSecretRotateView.as_view(), name="api-webhook-rotate"),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/runs/",
        RunViewSet.as_view({"get": "list"}),
        name="campaign-runs",
    ),
    path("api/v1/campaigns/<uuid:campaign_pk>/metrics/", CampaignMetricsView.as_view(), name="campaign-metrics"),
    path("api/v1/campaigns/<uuid:campaign_pk>/report.pdf", CampaignReportPdfView.as_view(), name="campaign-report-pdf"),
    path("api/v1/campaigns/<uuid:campaign_pk>/report.csv", CampaignReportCsvView.as_view(), name="campaign-report-csv"),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/experiment/", CampaignExperimentView.as_view(), name="campaign-experiment"
    ),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/experiment.csv",
        CampaignExperimentCsvView.as_view(),
        name="campaign-experiment-csv",
    ),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/experiment.pdf",
        CampaignExperimentPdfView.as_view(),
        name="campaign-experiment-pdf",
    ),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/auto-winner/",
        CampaignAutoWinnerView.as_view(),
        name="campaign-auto-winner",
    ),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/unsubscribes/",
        CampaignUnsubscribesView.as_view(),
        name="campaign-unsubscribes",
    ),
    path("api/v1/analytics/overview/", OverviewView.as_view(), name="analytics-overview"),
    path("api/v1/receipts/", ReceiptView.as_view(), name="api-receipts"),
    path("api/v1/inbound/", InboundView.as_view(), name="api-inbound"),
    path("api/v1/contacts/<int:contact_pk>/preferences/", ContactPreferencesView.as_view(), name="contact-preferences"),
    path("api/v1/contacts/<int:contact_pk>/export/", ContactExportView.as_view(), name="contact-export"),
    path("api/v1/contacts/<int:contact_pk>/erase/", ContactEraseView.as_view(), name="contact-erase"),
    path("api/v1/events/", EventIngestView.as_view(), name="api-events"),
    path(
        "api/v1/campaigns/<uuid:campaign_pk>/trigger-decisions/",
        TriggerDecisionsView.as_view(),
        name="campaign-trigger-decisions",
    ),
    path("api/v1/", include(router.urls)),
    path("hooks/task-service/<str:token>", task_service_callback_view, name="task-service-callback"),
    path("hooks/inbound/", include("delivery.inbound_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

# Files on the local disk (config.files): private ones by signed link, public ones (in-app icons) under MEDIA_URL
# unless a proxy serves MEDIA_ROOT (MEDIA_SERVE=false). On S3 the bucket serves both.
if settings.STORAGE_BACKEND == "local":
    urlpatterns.append(path("files/<str:token>", files.private_file_view, name="private-file"))
    if settings.MEDIA_SERVE:
        urlpatterns.append(re_path(r"^media/(?P<path>.+)$", files.public_file_view, name="media"))
