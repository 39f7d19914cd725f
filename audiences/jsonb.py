"""jsonb read through a raw cursor, as the ORM reads it.

Django's psycopg 3 setup loads jsonb columns as text (JSONField parses them itself, in from_db_value), so a raw query
that selects `attributes` or `properties` gets a string. Handed on unparsed, templates see a string where the contact's
attributes should be: blanks, and failures on every `if` or loop. Any raw read of a jsonb column parses it here, so a
real send sees exactly the values a preview (which reads through the ORM) shows.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# orjson is several times faster than the standard parser, but it reads an integer beyond 64 bits as a float
# (123456789012345678901234567890 → 1.2345678901234568e+29) and refuses a number beyond a double's range, where
# jsonb (numeric) and JSONField keep them exact. PostgreSQL writes jsonb numbers in plain notation, so any such
# number shows as a run of 19 or more digits (so does a very small one, 0.0000…1): those documents, rare, go to the
# standard parser, which is what JSONField uses. A long digit run inside a string only costs the slower parse.
_LONG_NUMBER = re.compile(r"\d{19}")
_LONG_NUMBER_BYTES = re.compile(rb"\d{19}")


def jsonb_loads(value: Any) -> Any:
    """A jsonb value from a raw cursor as Python data, equal to what JSONField gives for the same column. Values
    already parsed (a cursor set up to parse jsonb) pass through; SQL NULL is None."""
    if isinstance(value, str):
        return json.loads(value) if _LONG_NUMBER.search(value) else orjson.loads(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return json.loads(data) if _LONG_NUMBER_BYTES.search(data) else orjson.loads(data)
    return value
