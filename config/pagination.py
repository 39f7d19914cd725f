from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination


class StandardPagination(PageNumberPagination):
    """`page` and `page_size` (default 20). A page_size above 100 is clamped to 100; zero, negative or non-numeric
    values are a 400, because silently ignoring them hides client bugs."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Any) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        try:
            value = int(raw)
        except ValueError as exc:
            raise serializers.ValidationError({"page_size": ["A whole number between 1 and 100."]}) from exc
        if value < 1:
            raise serializers.ValidationError({"page_size": ["A whole number between 1 and 100."]})
        return min(value, self.max_page_size)

    def get_paginated_response(self, data: Any) -> Any:
        response = super().get_paginated_response(data)
        response.data["page_size"] = self.get_page_size(self.request)
        return response

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        result = super().get_paginated_response_schema(schema)
        result["properties"]["page_size"] = {"type": "integer", "example": 20}
        return result
