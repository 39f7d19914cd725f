"""The column-at-a-time validation of a whole batch (audiences.contacts._clean_columns) against the row-by-row path.

The batch path must give exactly what the row path gives, or hand the batch over to it: same contacts, same
COPY data (up to the random nonces of the encrypted fields), same rejections, same attribute catalogue."""

from __future__ import annotations

import random
import re

import pytest

from audiences import contacts as contacts_module
from audiences.contacts import DELIMITER, _clean_columns, prepare_batch
from audiences.pii import decrypt

SEALED = re.compile(r"\$[A-Za-z0-9_.-]+\$[A-Za-z0-9+/=]+")  # base64: never quoted in the COPY data


class Text(str):
    """A str subclass: the row path refuses its fast path for it, so must the batch path."""


def base_rows(count: int = 30) -> list[dict]:
    return [
        {
            "external_id": f"user-{index}",
            "email": f"User{index}@Example.com",
            "phone": f"+4477009{index:05d}" if index % 3 else "",
            "first_name": "Alex",
            "last_name": None if index % 5 == 0 else "Smith",
            "timezone": "Europe/London",
            "locale": "en_GB" if index % 2 else "fr",
            "attributes": {
                "plan": "pro",
                "orders": index,
                "ltv": index / 3,
                "vip": index % 2 == 0,
                "tags": ["a", "b"][: index % 3],
                "gone": None,
                "signed_up": "2026-01-02",
            },
        }
        for index in range(count)
    ]


def copied(batch) -> list[str]:
    """The COPY lines with the sealed fields decrypted, so two preparations of the same rows compare equal."""
    return [
        SEALED.sub(lambda match: "sealed:" + decrypt(match.group()), line)
        for line in batch.copy_data.decode().split("\n")
    ]


def prepared_both_ways(rows, monkeypatch):
    by_columns = prepare_batch(rows)
    with monkeypatch.context() as patch:
        patch.setattr(contacts_module, "_clean_columns", lambda rows: None)
        by_rows = prepare_batch(rows)
    return by_columns, by_rows


def assert_same(by_columns, by_rows):
    assert by_columns.external_ids == by_rows.external_ids
    assert by_columns.result.rejected == by_rows.result.rejected
    assert by_columns.catalogue == by_rows.catalogue
    assert copied(by_columns) == copied(by_rows)


def test_a_plain_batch_takes_the_column_path_and_matches_the_row_path(monkeypatch):
    rows = base_rows()
    assert _clean_columns(rows) is not None
    assert_same(*prepared_both_ways(rows, monkeypatch))


def test_rows_leaving_out_different_fields_take_the_column_path(monkeypatch):
    rows = base_rows()
    for index, row in enumerate(rows):
        del row[("email", "phone", "first_name", "timezone", "locale", "attributes")[index % 6]]
    rows[0]["attributes"] = None  # given as null: left as stored, like a row that leaves it out
    rows[1]["attributes"] = {}
    rows[2]["email"] = None  # null clears
    assert _clean_columns(rows) is not None
    by_columns, by_rows = prepared_both_ways(rows, monkeypatch)
    assert_same(by_columns, by_rows)
    fields = [line.split(DELIMITER) for line in copied(by_columns)]
    assert fields[0][-1] == "" and fields[1][-1] == "{}"  # NULL (keep) and an empty document
    assert fields[2][1] == contacts_module._EMPTY  # cleared


def test_formatted_phone_numbers_are_normalised_on_the_column_path(monkeypatch):
    rows = base_rows()
    rows[1]["phone"] = "+44 7700 900123"
    rows[2]["phone"] = " +1 (415) 555-0100 "
    assert _clean_columns(rows) is not None
    by_columns, by_rows = prepared_both_ways(rows, monkeypatch)
    assert_same(by_columns, by_rows)
    assert copied(by_columns)[1].split(DELIMITER)[2] == "sealed:+447700900123"


PROBES = [
    ("external_id", 42),  # the row path turns it into "42"
    ("external_id", "  padded  "),
    ("external_id", ""),
    ("external_id", "   "),
    ("external_id", "x" * 256),
    ("external_id", "id\x1fwith\x1eseparators"),
    ("external_id", "user-1"),  # repeats another row's id
    ("external_id", Text("subclass")),
    ("external_id", True),
    ("email", "  "),
    ("email", "not-an-email"),
    ("email", "user@[127.0.0.1]"),
    ("email", "x" * 250 + "@example.com"),
    ("email", 5),
    ("phone", "   "),
    ("phone", "+999123456789"),
    ("phone", "+12"),
    ("phone", "07700 900123"),
    ("phone", "+١٢٣٤٥٦٧٨٩٠"),
    ("first_name", "  "),
    ("first_name", " padded "),
    ("first_name", "n" * 151),
    ("first_name", " " + "n" * 150 + " "),
    ("first_name", "a\x1eb"),
    ("first_name", "line\nbreak"),
    ("last_name", 5),
    ("timezone", " Europe/Paris "),
    ("timezone", "  "),
    ("timezone", "Mars/Base"),
    ("locale", "pt_BR"),
    ("locale", " de "),
    ("locale", "  "),
    ("locale", "english please"),
    ("attributes", []),
    ("attributes", "text"),
    ("attributes", {"bad name": 1}),
    ("attributes", {5: 1}),
    ("attributes", {"n": float("nan")}),
    ("attributes", {"n": float("inf")}),
    ("attributes", {"nested": {"a": 1}}),
    ("attributes", {"list": [1, [2]]}),
    ("attributes", {"list": [1, {"a": 2}]}),
    ("attributes", {"list": list(range(101))}),
    ("attributes", {"list": ["a\x00b"]}),
    ("attributes", {"text": "t" * 2001}),
    ("attributes", {"text": "t" * 2000}),
    ("attributes", {"text": "nul\x00"}),
    ("attributes", {"text": "quote\x1e\x1fseparators"}),
    ("attributes", {"text": "a backslash sequence \\u0000, not a NUL"}),
    ("attributes", {"list": ["t" * 2500]}),  # list items have no length limit
    ("attributes", {"list": ["t" * 2500, "nul\x00"]}),
    ("attributes", {"list": [float("nan")]}),  # nor a finiteness check
    ("attributes", {"gone": None, "n": float("-inf")}),
    ("attributes", {"gone": None, "n": 1.5, "text": "t" * 1990}),  # a long document, every value fine
    ("attributes", {"tuple": (1, 2)}),
    ("attributes", {f"a{index}": index for index in range(101)}),
    ("attributes", {"big": 2**70}),
    ("unknown", 1),
]


@pytest.mark.parametrize(("key", "value"), PROBES, ids=[f"{key}={value!r}"[:60] for key, value in PROBES])
def test_one_unusual_value_gives_what_the_row_path_gives(key, value, monkeypatch):
    rows = base_rows()
    rows[7][key] = value
    assert_same(*prepared_both_ways(rows, monkeypatch))


def test_a_row_that_is_not_a_dict_or_lacks_an_id_hands_over_to_the_row_path(monkeypatch):
    for odd in ("not an object", {"email": "no-id@example.com"}):
        rows = [*base_rows(), odd]
        assert _clean_columns(rows) is None
        assert_same(*prepared_both_ways(rows, monkeypatch))


VALUES = {
    "email": ["a@example.com", " B@Example.com ", "", None, "  ", "bad", "c@example.org"],
    "phone": ["+447700900123", "+1 415 555 0100", "", None, "  ", "+12", "+33612345678"],
    "first_name": ["Ann", " Bo ", "", None, "  ", "x" * 151, "a\x1fb"],
    "last_name": ["Lee", "", None, 7],
    "timezone": ["Europe/Paris", " Asia/Tokyo ", "", None, "  ", "Nowhere/Else"],
    "locale": ["en", "en_GB", "", None, " pt_BR ", "??"],
    "attributes": [
        {"plan": "pro", "n": 1},
        {"tags": ["x", "y"], "ok": True},
        {"gone": None, "f": 2.5},
        {},
        None,
        {"bad key": 1},
        {"n": float("inf")},
        {"deep": {"a": 1}},
        {"t": "\x00"},
    ],
}


def test_random_batches_give_what_the_row_path_gives(monkeypatch):
    generator = random.Random(20261202)
    column_path_taken = 0
    for _ in range(400):
        rows = []
        for _row in range(generator.randrange(1, 12)):
            row: dict = {"external_id": f"id-{generator.randrange(0, 40)}"}
            for key, choices in VALUES.items():
                if generator.random() < 0.8:
                    # mostly values the column path takes, sometimes anything
                    row[key] = choices[generator.randrange(0, 3 if generator.random() < 0.9 else len(choices))]
            rows.append(row)
        column_path_taken += _clean_columns(rows) is not None
        assert_same(*prepared_both_ways(rows, monkeypatch))
    assert 50 < column_path_taken < 350  # both paths exercised
