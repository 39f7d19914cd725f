from django.urls import path

from delivery import console

app_name = "delivery"

urlpatterns = [
    path("campaigns/<uuid:campaign_id>/runs/", console.campaign_runs_view, name="campaign-runs"),
]
