"""Files through Django's storage API (config.files): in-app icons in the public store, CSV imports and generated
reports in the private one; on the local disk (served by the web service) and on an S3-compatible store (moto's
server mode, a real HTTP server speaking the S3 protocol, with the settings module's own STORAGE_BACKEND=s3
wiring)."""

from __future__ import annotations

import json
import runpy
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from audiences.models import Contact, ContactImport
from audiences.tasks import contacts_import_task
from tests.factories import CampaignFactory, console_client

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
CSV = "external_id,email,first_name\nu1,one@example.com,One\nu2,two@example.com,Two\n"


def _upload_icon(persona, campaign) -> str:
    response = persona.api.post(
        f"/api/v1/campaigns/{campaign.pk}/in-app-icon/",
        {"icon": SimpleUploadedFile("i.png", PNG, "image/png")},
        format="multipart",
    )
    assert response.status_code == 201, response.data
    return response.data["icon_url"]


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture
def local_files(settings, tmp_path) -> Path:
    """Both local stores under this test's own directory."""
    settings.MEDIA_ROOT = str(tmp_path / "public")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.STORAGES["default"], "OPTIONS": {**settings.STORAGES["default"]["OPTIONS"]}},
    }
    settings.STORAGES["default"]["OPTIONS"]["location"] = str(tmp_path / "private")
    return tmp_path


def test_local_icon_is_served_by_the_web_service_at_its_absolute_url(teammate, local_files):
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["in_app"])
    url = _upload_icon(teammate, campaign)
    assert url.startswith("http://127.0.0.1:8000/media/icons/")
    assert len(list((local_files / "public" / "icons").rglob("*.png"))) == 1
    # No session, no key: the recipient's app loads it. DEBUG is off, as in production.
    response = Client().get(_path(url))
    assert (response.status_code, b"".join(response.streaming_content)) == (200, PNG)
    assert response["Content-Type"] == "image/png"


def test_local_report_is_stored_and_its_link_works_without_a_session_until_it_expires(teammate, local_files, settings):
    campaign = CampaignFactory(organisation=teammate.organisation, name="Winter sale")
    response = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv")
    assert response.status_code == 200
    link = response["Content-Location"]
    assert link.startswith("http://127.0.0.1:8000/files/")
    stored = local_files / "private" / "reports" / str(campaign.organisation_id) / f"campaign-{campaign.pk}-report.csv"
    assert stored.read_bytes() == response.content

    fetched = Client().get(_path(link))
    assert (fetched.status_code, b"".join(fetched.streaming_content)) == (200, response.content)
    assert fetched["Content-Disposition"] == f'attachment; filename="campaign-{campaign.pk}-report.csv"'

    # Generated again: the stored file is replaced, not piled up.
    assert teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv").status_code == 200
    assert len(list((local_files / "private" / "reports").rglob("*.csv"))) == 1

    token = urlsplit(link).path.rsplit("/", 1)[1]
    assert Client().get(f"/files/{token[:-2]}xx").status_code == 404  # altered
    settings.PRIVATE_FILE_URL_SECONDS = -1
    assert Client().get(_path(link)).status_code == 404  # expired


def test_local_import_is_private_and_never_under_the_public_media_url(teammate, local_files):
    client = console_client(teammate)
    response = client.post("/contacts/import/", {"file": SimpleUploadedFile("people.csv", CSV.encode(), "text/csv")})
    assert response.status_code == 302
    job = ContactImport.objects.get()
    assert (local_files / "private" / job.file.name).read_bytes() == CSV.encode()
    assert Client().get(f"/media/{job.file.name}").status_code == 404
    assert not (local_files / "public").exists() or not list((local_files / "public").rglob("*.csv"))


PUBLIC_PREFIX_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::campaign-files/public/*",
        }
    ],
}


def _client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="test-access",
        aws_secret_access_key="test-secret",
    )


@pytest.fixture
def s3(settings, monkeypatch) -> Iterator[str]:
    """moto's S3 server on a free port, a bucket in it, and STORAGES as config/settings.py builds it for
    STORAGE_BACKEND=s3 from the environment below."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    environment = {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "campaign-files",
        "S3_ENDPOINT_URL": endpoint,
        "S3_REGION": "eu-west-1",
        "S3_ACCESS_KEY_ID": "test-access",
        "S3_SECRET_ACCESS_KEY": "test-secret",
        "S3_ADDRESSING_STYLE": "path",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    built = runpy.run_path(str(ROOT / "config" / "settings.py"))
    settings.STORAGES = built["STORAGES"]
    settings.STORAGE_BACKEND = built["STORAGE_BACKEND"]
    client = _client(endpoint)
    client.create_bucket(Bucket="campaign-files", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    # What the operator sets up (settings.py, STORAGE_BACKEND=s3): anyone may read public/, nothing else.
    client.put_bucket_policy(Bucket="campaign-files", Policy=json.dumps(PUBLIC_PREFIX_POLICY))
    try:
        yield endpoint
    finally:
        server.stop()


def _bucket_keys(endpoint: str) -> set[str]:
    client = _client(endpoint)
    return {item["Key"] for item in client.list_objects_v2(Bucket="campaign-files").get("Contents", [])}


def test_s3_icon_report_and_import_go_through_the_bucket(teammate, s3):
    campaign = CampaignFactory(organisation=teammate.organisation, channels=["in_app"])
    icon_url = _upload_icon(teammate, campaign)
    assert icon_url.startswith(f"{s3}/campaign-files/public/icons/{campaign.organisation_id}/")
    assert "Signature" not in icon_url  # a stable URL: it lives in messages
    icon = httpx.get(icon_url)
    assert (icon.status_code, icon.content) == (200, PNG)

    report = teammate.api.get(f"/api/v1/campaigns/{campaign.pk}/report.csv")
    assert report.status_code == 200
    link = report["Content-Location"]
    assert link.startswith(f"{s3}/campaign-files/private/reports/{campaign.organisation_id}/")
    assert "X-Amz-Signature=" in link and "X-Amz-Expires=3600" in link  # presigned, expiring
    fetched = httpx.get(link)
    assert (fetched.status_code, fetched.content) == (200, report.content)
    assert httpx.get(link.split("?")[0]).status_code == 403  # the same object unsigned: refused

    client = console_client(teammate)
    response = client.post("/contacts/import/", {"file": SimpleUploadedFile("people.csv", CSV.encode(), "text/csv")})
    assert response.status_code == 302
    job = ContactImport.objects.get()
    assert f"private/{job.file.name}" in _bucket_keys(s3)
    contacts_import_task.apply(args=[str(job.pk)])
    job.refresh_from_db()
    assert (job.status, job.created_count) == ("completed", 2)
    assert sorted(Contact.objects.values_list("email", flat=True)) == ["one@example.com", "two@example.com"]
    # The upload held addresses in clear: gone from the bucket once imported.
    assert not any(key.startswith("private/imports/") for key in _bucket_keys(s3))
