"""The task_service callback: an external scheduler calls the signed URL it was given when the alarm is due."""

from __future__ import annotations

from django.core import signing
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from config.outage import task_enqueue
from delivery.task_service import read_callback_token
from delivery.tasks import campaign_schedule_fire_task


@csrf_exempt
@require_POST
def task_service_callback_view(request: HttpRequest, token: str) -> HttpResponse:
    try:
        campaign_id = read_callback_token(token)
    except signing.BadSignature:
        return JsonResponse({"detail": "Unknown callback."}, status=404)
    # Accepted even when the broker is down: the pump starts any scheduled campaign whose time has come.
    task_enqueue(campaign_schedule_fire_task, campaign_id)
    return JsonResponse({"accepted": True}, status=202)
