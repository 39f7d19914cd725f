"""CSV import from the console: background task, progress, typed attributes, and the rejected-rows report."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from audiences.models import Contact, ContactImport
from audiences.services import contact_import_run
from audiences.tasks import contacts_import_task
from tests.factories import console_client

pytestmark = pytest.mark.django_db

CSV = (
    "external_id,email,phone,first_name,timezone,plan,ltv,vip,signed_up\n"
    "u1,ONE@example.com,+447700900001,One,Europe/London,pro,12.5,true,2026-01-02\n"
    "u2,bad-email,,Two,,free,3,false,\n"
    ",missing@example.com,,,,,,,\n"
    "u4,four@example.com,12345,Four,Mars/Base,pro,,,\n"
    "=cmd|' /C calc'!A0,evil@example.com,,,Nowhere/Land,,,,\n"
    "u6,six@example.com,,Six,,team,7,,\n"
)


def upload(client: Client, content: str = CSV, name: str = "people.csv"):
    return client.post("/contacts/import/", {"file": SimpleUploadedFile(name, content.encode(), "text/csv")})


def test_import_runs_in_the_background_and_reports_progress(teammate, django_capture_on_commit_callbacks):
    client = console_client(teammate)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = upload(client)
    job = ContactImport.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/contacts/imports/{job.pk}/"
    assert len(callbacks) == 1  # the task is queued only once the upload is committed
    assert job.status == "pending"
    page = client.get(f"/contacts/imports/{job.pk}/").content.decode()
    assert 'hx-trigger="every 1s"' in page  # the page polls while the import runs

    stored = job.file.name
    assert job.file.storage.exists(stored)
    contacts_import_task.apply(args=[str(job.pk)])

    job.refresh_from_db()
    assert (job.status, job.total_rows, job.processed_rows) == ("completed", 6, 6)
    # The upload held addresses in clear: it is gone once the import is done (the contacts keep them encrypted).
    assert not job.file and not job.file.storage.exists(stored)
    assert (job.created_count, job.updated_count, job.rejected_count) == (2, 0, 4)
    one = Contact.objects.get(external_id="u1")
    assert (one.email, one.phone, one.first_name) == ("one@example.com", "+447700900001", "One")
    assert one.attributes == {"plan": "pro", "ltv": 12.5, "vip": True, "signed_up": "2026-01-02"}
    assert Contact.objects.get(external_id="u6").attributes == {"plan": "team", "ltv": 7}
    progress = client.get(f"/contacts/imports/{job.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 1s"' not in progress  # finished: polling stops
    assert "100%" in progress


def test_rejected_rows_report_names_rows_and_reasons_safely(teammate, django_capture_on_commit_callbacks):
    client = console_client(teammate)
    with django_capture_on_commit_callbacks(execute=False):
        upload(client)
    job = ContactImport.objects.get()
    contact_import_run(job.pk)
    response = client.get(f"/contacts/imports/{job.pk}/rejected.csv")
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["row", "external_id", "reasons"]
    by_row = {row[0]: row for row in rows[1:]}
    assert set(by_row) == {"3", "4", "5", "6"}
    assert "email" in by_row["3"][2]
    assert "external_id" in by_row["4"][2]
    assert "phone" in by_row["5"][2] and "timezone" in by_row["5"][2]
    # A formula-looking external id is reported, but cannot run in a spreadsheet.
    assert by_row["6"][1] == "=cmd|' /C calc'!A0" or by_row["6"][1].startswith("'")
    assert not any(cell.startswith("=") for row in rows[1:] for cell in row[2:])


def test_a_rerun_after_an_interruption_resumes(teammate, django_capture_on_commit_callbacks):
    client = console_client(teammate)
    with django_capture_on_commit_callbacks(execute=False):
        upload(client)
    job = ContactImport.objects.get()
    ContactImport.objects.filter(pk=job.pk).update(status="running", processed_rows=3)  # died after 3 rows
    contact_import_run(job.pk)
    job.refresh_from_db()
    assert job.status == "completed"
    assert job.processed_rows == 6
    assert set(Contact.objects.values_list("external_id", flat=True)) == {"u6"}  # rows 1-3 were already done
    assert contact_import_run(job.pk) is None  # a duplicate delivery finds nothing to do


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("email\nx@example.com\n", "people.csv", "external_id column"),
        ("external_id\nu1\n", "people.xlsx", "Upload a .csv file."),
        (b"\xff\xfe\x00bad".decode("latin-1"), "people.csv", "external_id column"),
    ],
)
def test_bad_files_are_refused_with_a_message(teammate, content, name, message):
    client = console_client(teammate)
    response = client.post(
        "/contacts/import/", {"file": SimpleUploadedFile(name, content.encode(), "text/csv")}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/contacts/"
    assert message in response.content.decode()
    assert not ContactImport.objects.exists()


def test_analysts_cannot_import(analyst):
    response = upload(console_client(analyst))
    assert response.status_code == 403
    assert not ContactImport.objects.exists()


def test_another_organisations_import_is_404(teammate, outsider, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        upload(console_client(teammate))
    job = ContactImport.objects.get()
    assert console_client(outsider).get(f"/contacts/imports/{job.pk}/").status_code == 404
    assert console_client(outsider).get(f"/contacts/imports/{job.pk}/rejected.csv").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_large_import_overlaps_validation_and_writes(organisation, teammate, monkeypatch):
    """Several chunks take the pipelined path: the next chunk is validated while a second connection writes."""
    import audiences.services as services_module
    from audiences.services import contact_import_start

    monkeypatch.setattr(services_module, "IMPORT_CHUNK", 7)
    lines = ["external_id,plan,score"] + [f"big{i},{'pro' if i % 2 else 'free'},{i}" for i in range(50)]
    lines.insert(10, ",pro,1")  # line 11 of the file has no external_id: rejected
    upload_file = SimpleUploadedFile("big.csv", ("\n".join(lines) + "\n").encode(), "text/csv")
    job = contact_import_start(actor=teammate.actor, upload=upload_file)
    job = contact_import_run(job.pk)
    assert (job.status, job.total_rows, job.processed_rows) == ("completed", 51, 51)
    assert (job.created_count, job.rejected_count) == (50, 1)
    assert Contact.objects.filter(organisation=organisation).count() == 50
    assert Contact.objects.get(external_id="big7").attributes == {"plan": "pro", "score": 7}
    assert job.rejected_report.startswith("11,")


def dict_reader_contacts(text: str) -> list[dict]:
    """The reference: what the import made of a file before it read rows by a header plan (csv.DictReader, every
    cell of every row looked at by column name)."""
    from audiences.services import STANDARD_CONTACT_FIELDS, csv_value

    contacts = []
    for row in csv.DictReader(io.StringIO(text)):
        contact, attributes = {}, {}
        for column, value in row.items():
            if column is None or value is None:
                continue
            name = column.strip()
            if name == "external_id" or name in STANDARD_CONTACT_FIELDS:
                if value.strip():
                    contact[name] = value.strip()
            elif value.strip():
                attributes[name.removeprefix("attributes.")] = csv_value(value)
        if attributes:
            contact["attributes"] = attributes
        contacts.append(contact)
    return contacts


@pytest.mark.parametrize(
    "text",
    [
        CSV,
        "external_id, email ,attributes.plan,plan,score\nu1,A@x.io,pro,team,1\n\nu2,,,,\nu3,b@x.io\n"
        "u4,c@x.io,a,b,2,extra,cells\n",
        # repeated names: the later column's cells
        "external_id,plan,plan,external_id\nu1,first,second,u1-again\nu2,,second,\n",
        " external_id ,first_name,vip,ratio,code\n  u1  ,  Ann  , TRUE ,-0.5,007\nu2,Bo,false,1e3,12345678901234567\n",
        "external_id\n",
    ],
    ids=["sample", "odd-widths-and-blank-lines", "repeated-columns", "spaces-and-numbers", "header-only"],
)
def test_rows_read_by_the_header_plan_match_the_dict_reader(text):
    from audiences.services import _import_batches

    batches = list(_import_batches(io.StringIO(text), skip=0))
    assert [contact for _, rows in batches for contact in rows] == dict_reader_contacts(text)
    assert [line for lines, _ in batches for line in lines] == list(range(2, 2 + len(dict_reader_contacts(text))))
    resumed = list(_import_batches(io.StringIO(text), skip=1))
    assert [contact for _, rows in resumed for contact in rows] == dict_reader_contacts(text)[1:]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "external_id",
        "external_id\n",
        "external_id\nu1\nu2",
        "external_id\r\nu1\r\nu2\r\n",
        "external_id\n\nu1\n\n",
        'external_id,note\nu1,"two\nlines"\nu2,x\n',
        "external_id\ru1\ru2\r",
        "external_id\nu1\r\nu2\rx\n",
        "external_id\n" + "u\n" * 3000,
    ],
)
def test_the_progress_total_counts_what_csv_reader_reads(text, tmp_path):
    from audiences.services import _count_rows

    path = tmp_path / "rows.csv"
    path.write_bytes(text.encode())
    with open(path, encoding="utf-8-sig", newline="") as handle:
        expected = sum(1 for _ in csv.reader(handle))
        handle.seek(0)
        assert _count_rows(handle) == expected
        assert handle.read() == text  # rewound for the import itself
