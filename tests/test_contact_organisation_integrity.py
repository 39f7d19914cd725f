"""contact.organisation stays referentially sound without a per-row foreign-key check (audiences migration 0009):
every way of writing contacts refuses an organisation that does not exist, and an organisation cannot go while
its contacts remain."""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, connection, transaction

from audiences.contacts import contacts_upsert_rows, prepare_batch, write_batch
from audiences.models import Contact, Organisation
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)

MISSING = uuid.UUID("00000000-0000-4000-8000-00000000dead")


def _insert_raw(organisation_id: uuid.UUID, external_id: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_contact (organisation_id, external_id, email, phone, first_name, last_name,"
            " timezone, locale, attributes, created_at, updated_at)"
            " VALUES (%s, %s, '', '', '', '', '', '', '{}', now(), now())",
            [organisation_id, external_id],
        )


def test_insert_for_a_missing_organisation_is_refused():
    with pytest.raises(IntegrityError, match="contact_organisation_exists"), transaction.atomic():
        _insert_raw(MISSING, "ghost")
    assert not Contact.objects.filter(external_id="ghost").exists()


def test_orm_create_for_a_missing_organisation_is_refused():
    with pytest.raises(IntegrityError), transaction.atomic():
        Contact.objects.create(organisation_id=MISSING, external_id="ghost")


def test_a_multi_row_insert_naming_one_missing_organisation_writes_nothing():
    organisation = OrganisationFactory()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_contact (organisation_id, external_id, email, phone, first_name, last_name,"
            " timezone, locale, attributes, created_at, updated_at)"
            " SELECT o, 'c' || g, '', '', '', '', '', '', '{}', now(), now()"
            " FROM generate_series(1, 500) AS g,"
            " LATERAL (SELECT CASE WHEN g = 250 THEN %s::uuid ELSE %s::uuid END AS o) AS x",
            [MISSING, organisation.pk],
        )
    assert not Contact.objects.filter(organisation=organisation).exists()


def test_copy_and_merge_paths_for_a_missing_organisation_are_refused():
    ghost = Organisation(pk=MISSING, slug="ghost", name="Ghost")  # never saved
    rows = [{"external_id": f"g{i}", "email": f"g{i}@example.com"} for i in range(3)]
    with pytest.raises(IntegrityError):
        write_batch(ghost, prepare_batch(rows), try_insert=True)  # COPY + INSERT … SELECT
    with pytest.raises(IntegrityError):
        write_batch(ghost, prepare_batch(rows), try_insert=False)  # MERGE
    assert not Contact.objects.filter(organisation_id=MISSING).exists()


def test_the_bulk_upsert_still_writes_for_a_real_organisation():
    organisation = OrganisationFactory()
    result = contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "a"}, {"external_id": "b"}])
    assert result.created == 2
    result = contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "a", "first_name": "Ann"}])
    assert result.updated == 1
    assert Contact.objects.get(organisation=organisation, external_id="a").first_name == "Ann"


def test_moving_a_contact_to_a_missing_organisation_is_refused_and_to_a_real_one_allowed():
    organisation, other = OrganisationFactory(), OrganisationFactory()
    contact = Contact.objects.create(organisation=organisation, external_id="mover")
    with pytest.raises(IntegrityError), transaction.atomic():
        Contact.objects.filter(pk=contact.pk).update(organisation_id=MISSING)
    Contact.objects.filter(pk=contact.pk).update(organisation_id=other.pk)
    assert Contact.objects.get(pk=contact.pk).organisation_id == other.pk
    contact.refresh_from_db()
    contact.first_name = "Still here"
    contact.save()  # saving every column, organisation included, is not a move


def test_an_organisation_with_contacts_cannot_be_deleted_behind_django():
    organisation = OrganisationFactory()
    Contact.objects.create(organisation=organisation, external_id="stays")
    with pytest.raises(IntegrityError, match="still has contacts"), transaction.atomic(), connection.cursor() as cur:
        cur.execute("DELETE FROM audiences_organisation WHERE id = %s", [organisation.pk])
    assert Organisation.objects.filter(pk=organisation.pk).exists()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audiences_organisation SET id = %s WHERE id = %s", [MISSING, organisation.pk])


def test_the_check_is_deferred_for_organisations_like_the_constraint_was():
    organisation = OrganisationFactory()
    Contact.objects.create(organisation=organisation, external_id="first")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audiences_organisation WHERE id = %s", [organisation.pk])  # contacts remain …
        cursor.execute("DELETE FROM audiences_contact WHERE organisation_id = %s", [organisation.pk])  # … briefly
    assert not Organisation.objects.filter(pk=organisation.pk).exists()


def test_django_cascade_deletes_an_organisation_with_its_contacts():
    organisation = OrganisationFactory()
    Contact.objects.create(organisation=organisation, external_id="one")
    Contact.objects.create(organisation=organisation, external_id="two")
    organisation.delete()
    assert not Contact.objects.filter(organisation_id=organisation.pk).exists()


def test_truncating_organisations_alone_is_refused_but_both_tables_together_is_not():
    organisation = OrganisationFactory()
    Contact.objects.create(organisation=organisation, external_id="stays")
    with pytest.raises(IntegrityError, match="cannot truncate"), transaction.atomic(), connection.cursor() as cur:
        cur.execute("TRUNCATE audiences_organisation CASCADE")
    assert Contact.objects.filter(organisation=organisation).exists()
