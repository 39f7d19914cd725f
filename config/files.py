"""Files through Django's storage API (settings.STORAGES).

Two stores: "public" holds what recipients' apps load (in-app icons) at stable URLs; "default" holds private files
(CSV imports, generated reports) whose URLs expire. On the local disk the web service serves both (public files
under MEDIA_URL, private ones behind a signed, expiring link, the way an S3 presigned URL works); on S3 the bucket
serves them (settings.STORAGE_BACKEND).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.http import FileResponse, Http404, HttpRequest
from django.urls import reverse
from django.views.static import serve

SIGNING_SALT = "config.files.private"


class SignedURLFileSystemStorage(FileSystemStorage):
    """Private files on the local disk: `url()` is a link signed with SECRET_KEY that expires after
    PRIVATE_FILE_URL_SECONDS, answered by `private_file_view`."""

    def url(self, name: str | None) -> str:
        if not name:
            raise ValueError("A private file's URL needs its name.")
        return reverse("private-file", args=[signing.dumps(name, salt=SIGNING_SALT, compress=True)])


def absolute_url(url: str) -> str:
    """A storage URL as client apps can use it: S3's are absolute already, local ones are joined to SITE_URL."""
    return url if url.startswith(("http://", "https://")) else settings.SITE_URL.rstrip("/") + url


def save_public(name: str, content: bytes) -> str:
    """Save `content` where recipients' apps can load it and return its absolute URL (a new name if `name` is taken)."""
    storage = storages["public"]
    return absolute_url(storage.url(storage.save(name, ContentFile(content))))


def save_private(name: str, content: bytes) -> str:
    """Save `content` under `name`, replacing what was there (both private stores are configured to overwrite), and
    return an absolute, expiring URL to it."""
    storage = storages["default"]
    return absolute_url(storage.url(storage.save(name, ContentFile(content))))


def private_file_view(request: HttpRequest, token: str) -> FileResponse:
    """A private file by its signed link; a forged, altered or expired link, or a file gone since, is a 404."""
    try:
        name = signing.loads(token, salt=SIGNING_SALT, max_age=settings.PRIVATE_FILE_URL_SECONDS)
    except signing.BadSignature as exc:  # SignatureExpired is a BadSignature
        raise Http404("This link is not valid or has expired.") from exc
    storage = storages["default"]
    if not isinstance(name, str) or not storage.exists(name):
        raise Http404("This file no longer exists.")
    return FileResponse(storage.open(name, "rb"), as_attachment=True, filename=PurePosixPath(name).name)


def public_file_view(request: HttpRequest, path: str) -> FileResponse:
    """A public file from the local disk (STORAGE_BACKEND=local): gunicorn serves the few, small files recipients'
    apps load (in-app icons); a proxy in front may serve MEDIA_ROOT itself instead."""
    return serve(request, path, document_root=storages["public"].location)
