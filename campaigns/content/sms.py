"""SMS length the way carriers count it (3GPP TS 23.038).

A message that fits the GSM 03.38 7-bit alphabet is encoded GSM-7: 160 septets in one SMS, 153 per part when split
(the user-data header takes 7). Characters of the extension table (| ^ € { } [ ] ~ \\ and form feed) are sent as
escape + character, so they count twice. Anything outside the alphabet forces UCS-2: 70 characters in one SMS,
67 per part, where characters outside the Basic Multilingual Plane (most emoji) take two UTF-16 code units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The GSM 03.38 basic character set (default alphabet), in code order.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The basic character set extension table: each costs an escape septet plus itself.
GSM7_EXTENSION = "\x0c^{}\\[~]|€"

_BASIC = frozenset(GSM7_BASIC) - {"\x1b"}
_EXTENSION = frozenset(GSM7_EXTENSION)

SINGLE_GSM7, PART_GSM7 = 160, 153
SINGLE_UCS2, PART_UCS2 = 70, 67
MAX_PARTS = 6


@dataclass(frozen=True)
class SmsLength:
    encoding: str  # "GSM-7" or "UCS-2"
    characters: int  # what a person counts
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # the capacity of each segment for this message
    remaining: int  # units left in the last segment

    def as_dict(self) -> dict[str, object]:
        return {
            "encoding": self.encoding,
            "characters": self.characters,
            "units": self.units,
            "segments": self.segments,
            "per_segment": self.per_segment,
            "remaining": self.remaining,
        }


def is_gsm7(text: str) -> bool:
    return all(ch in _BASIC or ch in _EXTENSION for ch in text)


def sms_length(text: str) -> SmsLength:
    if is_gsm7(text):
        units = sum(2 if ch in _EXTENSION else 1 for ch in text)
        single, part, encoding = SINGLE_GSM7, PART_GSM7, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part, encoding = SINGLE_UCS2, PART_UCS2, "UCS-2"
    if units <= single:
        segments, capacity = (1 if units else 0), single
    else:
        segments, capacity = math.ceil(units / part), part
    used_in_last = units - (segments - 1) * capacity if segments else 0
    return SmsLength(
        encoding=encoding,
        characters=len(text),
        units=units,
        segments=segments,
        per_segment=capacity,
        remaining=capacity - used_in_last if segments else single,
    )
