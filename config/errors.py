"""Domain errors that services raise and every interface (API, console, admin) knows how to show."""

from __future__ import annotations

from typing import Any


class Conflict(Exception):
    """The request is valid but the object's current state does not allow it (HTTP 409)."""

    def __init__(self, message: str, *, code: str = "conflict", **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra
