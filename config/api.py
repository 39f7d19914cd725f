from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import Conflict
from config.logs import request_id


def django_validation_error_detail(exc: DjangoValidationError) -> dict[str, Any]:
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): [str(m) for e in errors for m in e.messages]
            for field, errors in exc.error_dict.items()
        }
    return {"non_field_errors": list(exc.messages)}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = _error_response(exc, context)
    rid = request_id()
    if response is not None and rid and isinstance(response.data, dict) and "detail" in response.data:
        # The id of the log lines that tell this request's story (config.logs), for the client's bug report. Only in
        # error objects ({"detail": …}): a validation error's body maps fields to messages, where a request_id key
        # could be a field's; those carry the id in the X-Request-ID header, as every response does.
        response.data["request_id"] = rid
    return response


def _error_response(exc: Exception, context: dict[str, Any]) -> Response | None:
    from audiences.adapters import AdapterError  # config is below the apps; imported when the first error comes

    if isinstance(exc, AdapterError):
        # An external service (isA_Data, isA_Creative…) failing is its outage, not our bug: a 503 saying which.
        return Response(
            {"detail": f"A service this needs is unavailable: {exc}", "code": "service_unavailable"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "30"},
        )
    if isinstance(exc, Conflict):
        return Response({"detail": exc.message, "code": exc.code, **exc.extra}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        return Response(django_validation_error_detail(exc), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ObjectDoesNotExist):
        # Scoped getters raise DoesNotExist for other organisations' objects too: both are simply "not found".
        return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return drf_exception_handler(exc, context)
