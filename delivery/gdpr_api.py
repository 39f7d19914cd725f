"""GDPR endpoints for one contact: export (GET, JSON) and erase (POST). Admins and compliance officers."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import gdpr


class ContactExportView(APIView):
    """Everything held about the contact: profile, attributes, preferences, unsubscribes, suppressions, segment
    lists, messages, engagement, in-app inbox, events and audit entries."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, contact_pk: int) -> Response:
        response = Response(gdpr.contact_export(actor=request.actor, contact_id=contact_pk))
        response["Content-Disposition"] = f'attachment; filename="contact-{contact_pk}.json"'
        return response


class ContactEraseView(APIView):
    """Erase the contact: personal data removed, messages and events anonymised (metrics unchanged), addresses
    kept suppressed as keyed hashes. Irreversible."""

    @extend_schema(request=None, responses={200: dict})
    def post(self, request: Request, contact_pk: int) -> Response:
        return Response({"erased": True, "anonymised": gdpr.contact_erase(actor=request.actor, contact_id=contact_pk)})
