"""Uploaded images (in-app icons) stored through Django's storage API, in the public store (config.files): the
local filesystem by default, an S3-compatible bucket by configuration."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile

from config.files import save_public

MAX_ICON_BYTES = 256 * 1024
# Recognised by their first bytes, never by the name or the Content-Type the client sent.
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpg", b"GIF87a": "gif", b"GIF89a": "gif"}


def _image_kind(head: bytes) -> str | None:
    for signature, extension in SIGNATURES.items():
        if head.startswith(signature):
            return extension
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def store_icon(*, organisation_id: object, upload: UploadedFile) -> str:
    """Save an icon and return its absolute URL."""
    if upload.size is not None and upload.size > MAX_ICON_BYTES:
        raise ValidationError({"icon": [f"At most {MAX_ICON_BYTES // 1024} KB."]})
    data = upload.read(MAX_ICON_BYTES + 1)
    if len(data) > MAX_ICON_BYTES:
        raise ValidationError({"icon": [f"At most {MAX_ICON_BYTES // 1024} KB."]})
    kind = _image_kind(data[:16])
    if kind is None:
        raise ValidationError({"icon": ["A PNG, JPEG, GIF or WebP image."]})
    # The public store: the URL goes into messages and must keep working for as long as they are shown.
    return save_public(f"icons/{organisation_id}/{uuid.uuid4().hex}.{kind}", data)


def is_own_media_url(url: str) -> bool:
    base = settings.SITE_URL.rstrip("/") + "/" + settings.MEDIA_URL.lstrip("/")
    return url.startswith(base)
