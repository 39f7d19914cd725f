"""The bulk upsert's two write paths (INSERT of new contacts, MERGE) and the validation fast path."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from audiences import contacts as contacts_module
from audiences.contacts import (
    _validate_contact_fully,
    contacts_upsert_rows,
    contacts_upsert_stream,
    prepare_batch,
    validate_contact,
    write_batch,
)
from audiences.models import Contact, ContactAttribute

pytestmark = pytest.mark.django_db

FIELDS = ("external_id", "email", "phone", "first_name", "last_name", "timezone", "locale", "attributes")

ROWS = [
    {
        "external_id": "u1",
        "email": " U1@Example.com ",
        "phone": "+44 7700 900123",
        "first_name": "Una",
        "timezone": "Europe/London",
        "locale": "en_GB",
        "attributes": {"plan": "pro", "score": 3, "gone": None, "tags": ["a", "b"], "signed_up": "2026-01-02"},
    },
    {"external_id": 42, "attributes": {"plan": "free", "ltv": 1.5, "vip": False}},
    {"external_id": "u3", "first_name": "", "last_name": None},
    {"external_id": "awkward", "first_name": "a\x1fb\x1ec\rd\ne\\N\t", "attributes": {"note": 'x\x1e"y\x1f\\'}},
    {"external_id": "id\x1fwith\x1eseparators", "email": "plain@example.com"},
]


def stored(organisation):
    return {
        row["external_id"]: row
        for row in Contact.objects.filter(organisation=organisation).values(*FIELDS).order_by("external_id")
    }


def catalogue(organisation):
    return list(ContactAttribute.objects.filter(organisation=organisation).values_list("name", "type", "examples"))


def test_the_insert_path_stores_what_the_merge_path_stores(organisation, other_organisation):
    inserted, used_insert = write_batch(organisation, prepare_batch(ROWS), try_insert=True)
    merged, used_insert_too = write_batch(other_organisation, prepare_batch(ROWS), try_insert=False)
    assert (used_insert, used_insert_too) == (True, False)
    assert (inserted.created, inserted.updated, merged.created, merged.updated) == (5, 0, 5, 0)
    assert stored(organisation) == stored(other_organisation)
    assert catalogue(organisation) == catalogue(other_organisation)
    awkward = stored(organisation)["awkward"]
    assert awkward["first_name"] == "a\x1fb\x1ec\rd\ne\\N"  # strip() took the tab, nothing else changed
    assert awkward["attributes"] == {"note": 'x\x1e"y\x1f\\'}
    assert stored(organisation)["u1"]["attributes"] == {
        "plan": "pro",
        "score": 3,
        "tags": ["a", "b"],
        "signed_up": "2026-01-02",
    }
    assert stored(organisation)["u3"]["first_name"] == "" and "id\x1fwith\x1eseparators" in stored(organisation)


def test_a_batch_mixing_new_and_existing_contacts_merges(organisation):
    contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "old", "email": "old@example.com", "first_name": "Old", "attributes": {"a": 1, "b": 2}},
        ],
    )
    result = contacts_upsert_rows(
        organisation=organisation,
        rows=[
            {"external_id": "new1", "first_name": "New"},
            {"external_id": "old", "last_name": "Kept", "attributes": {"b": None, "c": 3}},
            {"external_id": "new2", "attributes": {"x": None, "y": "z"}},
        ],
    )
    assert (result.created, result.updated, result.rejected) == (2, 1, [])
    rows = stored(organisation)
    assert set(rows) == {"old", "new1", "new2"}  # the failed INSERT left nothing behind
    old = rows["old"]
    assert (old["email"], old["first_name"], old["last_name"]) == ("old@example.com", "Old", "Kept")
    assert old["attributes"] == {"a": 1, "c": 3}
    assert rows["new2"]["attributes"] == {"y": "z"}
    assert (rows["new1"]["email"], rows["new1"]["attributes"]) == ("", {})
    assert {name for name, _, _ in catalogue(organisation)} == {"a", "b", "c", "y"}


@pytest.mark.django_db(transaction=True)  # the stream writes from a second connection
def test_a_stream_switches_to_the_merge_once_it_meets_existing_contacts(organisation, monkeypatch):
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "b2-1", "first_name": "Before"}])
    tries = []
    original = contacts_module.write_batch

    def spy(organisation, batch, *, try_insert=True, wait_turn=None):
        if wait_turn is None:
            tries.append(try_insert)
            return original(organisation, batch, try_insert=try_insert)

        def recorded_turn():
            decision = wait_turn()
            tries.append(decision)
            return decision

        return original(organisation, batch, try_insert=try_insert, wait_turn=recorded_turn)

    monkeypatch.setattr(contacts_module, "write_batch", spy)
    batches = [
        (1, [{"external_id": f"b1-{i}"} for i in range(3)]),
        (2, [{"external_id": f"b2-{i}", "last_name": "L"} for i in range(3)]),  # b2-1 exists
        (3, [{"external_id": f"b3-{i}"} for i in range(3)]),
    ]
    results = {}
    total = contacts_upsert_stream(
        organisation=organisation, batches=batches, on_batch=lambda tag, result: results.setdefault(tag, result)
    )
    assert tries == [True, True, False]
    assert [(results[tag].created, results[tag].updated) for tag in (1, 2, 3)] == [(3, 0), (2, 1), (3, 0)]
    assert (total.created, total.updated) == (8, 1)
    before = Contact.objects.get(organisation=organisation, external_id="b2-1")
    assert (before.first_name, before.last_name) == ("Before", "L")


@pytest.mark.django_db(transaction=True)
def test_concurrent_imports_into_one_organisation_count_each_contact_once(organisation):
    """Two imports with overlapping ids at once: every contact created exactly once, the rest updates."""
    results = []
    errors = []

    def run(offset):
        try:
            batches = [(n, [{"external_id": f"c{offset + n * 50 + i}"} for i in range(50)]) for n in range(4)]
            results.append(contacts_upsert_stream(organisation=organisation, batches=batches))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(offset,)) for offset in (0, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Contact.objects.filter(organisation=organisation).count() == 300  # c0..c299
    assert sum(result.created for result in results) == 300
    assert sum(result.updated for result in results) == 100  # c100..c199 came twice


@pytest.mark.parametrize(
    "raw",
    [
        ROWS[0],
        ROWS[1],
        ROWS[2],
        {"external_id": "  padded  ", "email": "A.B+c@Sub.Example.org", "phone": "+1 (415) 555-0100"},
        {"external_id": "x", "phone": "+999123456789"},  # unknown country code
        {"external_id": "x", "phone": "+12"},
        {"external_id": "x", "email": "not-an-email"},
        {"external_id": "x", "email": "user@[127.0.0.1]"},  # Django's validator accepts it
        {"external_id": "x", "timezone": " Europe/Paris "},
        {"external_id": "x", "timezone": "Mars/Base"},
        {"external_id": "x", "locale": "pt_BR"},
        {"external_id": "x", "locale": "english please"},
        {"external_id": "x", "first_name": "n" * 151},
        {"external_id": "x", "first_name": 5},
        {"external_id": "x", "attributes": {"bad name": 1}},
        {"external_id": "x", "attributes": {"n": float("nan"), "ok": 1}},
        {"external_id": "x", "attributes": {"nested": {"a": 1}}},
        {"external_id": "x", "attributes": {"list": [1, [2]]}},
        {"external_id": "x", "attributes": {"text": "t" * 2001}},
        {"external_id": "x", "attributes": []},
        {"external_id": "x", "attributes": None},
        {"external_id": "x", "unknown": 1},
        {"external_id": "", "email": "e@example.com"},
        {"external_id": "x" * 256},
        {"external_id": True},
        {"email": "no-id@example.com"},
        "not an object",
    ],
)
def test_the_validation_fast_path_agrees_with_the_full_validation(raw):
    assert validate_contact(raw) == _validate_contact_fully(raw, partial=False)


def test_a_stream_inside_the_callers_transaction_writes_on_its_connection(organisation):
    """In a transaction (here the test's own), a second connection would wait forever on its locks."""
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "t2-0", "first_name": "Before"}])
    batches = [(n, [{"external_id": f"t{n}-{i}", "last_name": "L"} for i in range(3)]) for n in (1, 2, 3)]
    total = contacts_upsert_stream(organisation=organisation, batches=batches)
    assert (total.created, total.updated) == (8, 1)
    kept = Contact.objects.get(organisation=organisation, external_id="t2-0")
    assert (kept.first_name, kept.last_name) == ("Before", "L")


def test_attributes_encode_as_compact_json_and_big_integers_fall_back(organisation):
    import json

    from audiences.contacts import encode_attributes

    attributes = {"plan": "pro", "note": 'é\x1f\n"', "n": 3, "x": 1.5, "ok": True, "none": None, "l": [1, "a"]}
    assert json.loads(encode_attributes(attributes)) == attributes
    assert " " not in encode_attributes({"a": [1, 2], "b": {"c": 1}})
    assert "\x1f" not in encode_attributes(attributes) and "\n" not in encode_attributes(attributes)
    huge = {"id": 2**70}
    assert json.loads(encode_attributes(huge)) == huge
    contacts_upsert_rows(organisation=organisation, rows=[{"external_id": "big", "attributes": huge}])
    assert Contact.objects.get(organisation=organisation, external_id="big").attributes == huge


def test_an_import_stream_restores_the_garbage_collector_and_switch_interval(organisation):
    import gc
    import sys

    interval = sys.getswitchinterval()
    rows = [(n, [{"external_id": f"gc-{n}-{i}"} for i in range(3)]) for n in range(3)]
    contacts_upsert_stream(organisation=organisation, batches=iter(rows))
    assert gc.isenabled() and sys.getswitchinterval() == interval
    gc.disable()
    try:
        prepare_batch([{"external_id": "x"}])
        assert not gc.isenabled()  # a caller's pause is left alone
    finally:
        gc.enable()
    assert Contact.objects.filter(organisation=organisation, external_id__startswith="gc-").count() == 9


def _stream_in_thread(**kwargs):
    """Run contacts_upsert_stream in a thread with a deadline, so a writer that never gets its turn fails the test
    instead of hanging it. Returns (result, exception)."""
    outcome = {}

    def run():
        try:
            outcome["result"] = contacts_upsert_stream(**kwargs)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the stream hung"
    return outcome.get("result"), outcome.get("error")


@pytest.mark.django_db(transaction=True)
def test_two_writers_keep_batch_order_so_the_later_row_wins(organisation):
    """Batches overlap in pairs (each shares ids with the next), so the two writers' staging overlaps writes of
    the same contacts: the result must be as if the batches were written one after another."""
    batches = [
        (n, [{"external_id": f"p{n * 5 + i}", "first_name": f"batch {n}", "attributes": {"n": n}} for i in range(10)])
        for n in range(8)
    ]  # batch n holds p(5n)..p(5n+9): the second half comes again, changed, in batch n+1
    seen = []
    total, error = _stream_in_thread(
        organisation=organisation, batches=batches, on_batch=lambda tag, result: seen.append((tag, result.created))
    )
    assert error is None
    assert [tag for tag, _ in seen] == list(range(8))
    assert seen[0] == (0, 10) and all(created == 5 for _, created in seen[1:])
    assert (total.created, total.updated) == (45, 35)
    stored_rows = dict(Contact.objects.filter(organisation=organisation).values_list("external_id", "first_name"))
    assert len(stored_rows) == 45
    for number in range(45):
        last_batch = min(number // 5, 7)  # p(5n)..p(5n+4) last appear in batch n (batch 7 keeps p35..p44)
        assert stored_rows[f"p{number}"] == f"batch {last_batch}", number


@pytest.mark.django_db(transaction=True)
def test_a_failing_batch_stops_the_stream_without_writing_later_batches(organisation, monkeypatch):
    original = contacts_module.write_batch

    def failing_third(organisation, batch, **kwargs):
        if batch.external_ids[0] == "f2-0":
            raise RuntimeError("the database went away")
        return original(organisation, batch, **kwargs)

    monkeypatch.setattr(contacts_module, "write_batch", failing_third)
    batches = [(n, [{"external_id": f"f{n}-{i}"} for i in range(4)]) for n in range(6)]
    written = []
    _, error = _stream_in_thread(
        organisation=organisation, batches=iter(batches), on_batch=lambda tag, result: written.append(tag)
    )
    assert isinstance(error, RuntimeError)
    assert written == [0, 1]
    ids = set(Contact.objects.filter(organisation=organisation).values_list("external_id", flat=True))
    assert ids == {f"f{n}-{i}" for n in (0, 1) for i in range(4)}  # nothing after the failure, nothing out of order


@pytest.mark.django_db(transaction=True)
def test_a_wholly_rejected_batch_in_the_middle_passes_its_turn(organisation):
    batches = [
        (0, [{"external_id": "r0"}]),
        (1, [{"external_id": "r1"}]),
        (2, [{"email": "no id"}, {"external_id": ""}]),  # nothing valid
        (3, [{"external_id": "r3"}]),
        (4, [{"external_id": "r4"}]),
    ]
    seen = []
    total, error = _stream_in_thread(
        organisation=organisation, batches=batches, on_batch=lambda tag, result: seen.append(tag)
    )
    assert error is None
    assert seen == [0, 1, 2, 3, 4]
    assert (total.created, total.updated, len(total.rejected)) == (4, 0, 2)
    assert Contact.objects.filter(organisation=organisation).count() == 4


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+447700900123", "+447700900123"),
        ("+44 7700 900123", "+447700900123"),
        ("+44 (7700) 900-123", "+447700900123"),
        ("+14155550123", "+14155550123"),
        ("+12345678", "+12345678"),  # 8 digits: the shortest accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits: the longest E.164 allows
        ("+1234567890123456", None),  # 16 digits
        ("+1234567", None),  # 7 digits
        ("+0447700900123", None),  # no country code starts with 0
        ("447700900123", None),  # no +
        ("+2897700900123", None),  # 289 is not a country calling code (nor 28, and 2 is not one either)
        ("+٤٤7700900123", None),  # the country code in ASCII digits
    ],
)
def test_phone_numbers_normalise_to_e164(raw, expected):
    from django.core.exceptions import ValidationError

    from audiences.contacts import normalise_phone

    if expected is None:
        with pytest.raises(ValidationError):
            normalise_phone(raw)
    else:
        assert normalise_phone(raw) == expected


def test_write_turns_abandon_only_the_batches_after_the_failed_one():
    from audiences.contacts import StreamAbandoned, _WriteTurns

    turns = _WriteTurns()
    assert turns.wait_for(0) is True
    turns.done(0, all_new=False)
    turns.abandon(after=2)  # batch 2 failed while staging …
    assert turns.wait_for(1) is False  # … batch 1 still writes (and reports its own outcome first)
    turns.done(1, all_new=False)
    with pytest.raises(StreamAbandoned):
        turns.wait_for(3)
    turns.abandon()  # the stream's own error: everything still waiting gives up
    with pytest.raises(StreamAbandoned):
        turns.wait_for(2)


@pytest.mark.django_db(transaction=True)
def test_a_stream_closes_its_writer_connections(organisation):
    import time

    def backends():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return cursor.fetchone()[0]

    before = backends()
    batches = [(n, [{"external_id": f"cl{n}-{i}"} for i in range(3)]) for n in range(5)]
    contacts_upsert_stream(organisation=organisation, batches=batches)
    deadline = time.monotonic() + 5
    while backends() > before and time.monotonic() < deadline:
        time.sleep(0.05)  # a closed connection's backend exits a moment later
    assert backends() == before
