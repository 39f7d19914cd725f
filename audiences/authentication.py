from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from audiences.access import actor_for_api_key, with_client_ip
from audiences.models import ApiKey
from audiences.services import api_key_authenticate


class ApiKeyPrincipal:
    """Stands in for `request.user` when an API key authenticates; the key has no Django user behind it."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key

    def get_username(self) -> str:
        return f"api-key:{self.api_key.prefix}"

    def __str__(self) -> str:
        return self.get_username()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[ApiKeyPrincipal, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        secret = secret.strip()
        if not secret:
            raise exceptions.AuthenticationFailed("Empty bearer token.")
        api_key = api_key_authenticate(secret)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return ApiKeyPrincipal(api_key), with_client_ip(actor_for_api_key(api_key), request)

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "audiences.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An organisation API key (`cs_…`)."}
