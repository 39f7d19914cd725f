"""SMS length the way carriers count it (3GPP TS 23.038 §6.1.2.1 and §6.2.1, TS 23.040 §9.2.3.24.1).

A message that fits the GSM 7-bit default alphabet is encoded GSM-7: 160 septets in one SMS (140 octets). Split,
each part carries a 6-octet concatenation header, which with its fill bit takes 7 septets: 153 septets per part.
Characters of the extension table (form feed ^ { } \\ [ ~ ] | €) are sent as ESC + character, two septets, and the
pair is never split between parts: a part that would end with the ESC ends one septet early and holds 152.
Anything outside the alphabet forces UCS-2: 70 code units in one SMS, 67 per part. Strictly UCS-2 has no characters
beyond the Basic Multilingual Plane; carriers send UTF-16, so those (most emoji) count as the two code units of a
surrogate pair, and a pair is never split either (a part that would split one holds 66).

Parts are counted by packing greedily, unit by unit, as a sender splits the message, not by dividing the total: the
two differ exactly at the part boundaries. Line endings count as sent: "\\n" is one septet (LF is in the basic
table), "\\r\\n" two. Combining sequences are measured as their code points (a decomposed "e" + U+0308 is UCS-2,
although "ë" would not be in GSM-7 either). National language shift tables (TS 23.038 §6.2.1.2.4, e.g. Turkish,
Portuguese, Indian scripts) are out of scope: no message is sent with them, so they are not counted with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

# The GSM 7-bit default alphabet (TS 23.038 §6.2.1), in code order 0x00-0x7F; 0x1B is the escape to the extension.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The default alphabet extension table (§6.2.1.1): each costs the escape septet plus itself.
GSM7_EXTENSION = "\x0c^{}\\[~]|€"

_BASIC = frozenset(GSM7_BASIC) - {"\x1b"}
_EXTENSION = frozenset(GSM7_EXTENSION)
_GSM7 = _BASIC | _EXTENSION
# Every character GSM-7 can carry, for a set-based check in SQL (translate(value, GSM7_CHARACTERS, '') leaves the
# characters that force UCS-2).
GSM7_CHARACTERS = "".join(sorted(_BASIC | _EXTENSION))

SINGLE_GSM7, PART_GSM7 = 160, 153
SINGLE_UCS2, PART_UCS2 = 70, 67
MAX_PARTS = 6
# How many of the characters that force UCS-2 a measurement names (enough to find them in the text).
NAMED_NON_GSM = 5


class SmsLength(NamedTuple):  # a tuple: every SMS sent is measured, and a frozen dataclass costs 4 µs to make
    encoding: str  # "GSM-7" or "UCS-2"
    characters: int  # what a person counts (code points)
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int  # parts as sent; 0 for an empty text
    per_segment: int  # the capacity of a part of this message: 160/70 single, 153/67 concatenated
    remaining: int  # units left in the last part
    part_units: tuple[int, ...] = ()  # units in each part, as packed
    non_gsm: tuple[str, ...] = ()  # the first distinct characters that made it UCS-2, in text order

    @property
    def parts(self) -> int:
        return self.segments

    def as_dict(self) -> dict[str, object]:
        return {
            "encoding": self.encoding,
            "characters": self.characters,
            "units": self.units,
            "segments": self.segments,
            "per_segment": self.per_segment,
            "remaining": self.remaining,
            "part_units": list(self.part_units),
            "non_gsm": list(self.non_gsm),
        }


def is_gsm7(text: str) -> bool:
    return _GSM7.issuperset(text)


def non_gsm_characters(text: str, limit: int = NAMED_NON_GSM) -> tuple[str, ...]:
    # The distinct characters in text order first (C speed), then the few that are not in the alphabet.
    return tuple(ch for ch in dict.fromkeys(text) if ch not in _GSM7)[:limit]


def _pack(weights: list[int], single: int, part: int) -> tuple[int, ...]:
    """Units per part: everything in one part when it fits, else parts of `part` units filled in order, where a
    character's units (an escape pair, a surrogate pair) all go into the same part."""
    total = sum(weights)
    if total == 0:
        return ()
    if total <= single:
        return (total,)
    parts: list[int] = []
    used = 0
    for weight in weights:
        if used + weight > part:
            parts.append(used)
            used = 0
        used += weight
    parts.append(used)
    return tuple(parts)


def sms_length(text: str, *, ucs2: bool = False) -> SmsLength:
    """The text measured as it would be sent; `ucs2` measures it as UCS-2 even when GSM-7 could carry it (what a
    message becomes once one character of a personalised value is not in the alphabet)."""
    # Every message is measured as it is sent: totals at C speed first, and the unit-by-unit packing only for the
    # texts that need more than one part.
    gsm7 = not ucs2 and _GSM7.issuperset(text)
    non_gsm = () if gsm7 else non_gsm_characters(text)
    if gsm7:
        units = len(text) if _EXTENSION.isdisjoint(text) else len(text) + sum(map(text.count, _EXTENSION))
        single, part, encoding = SINGLE_GSM7, PART_GSM7, "GSM-7"
    else:
        units = len(text.encode("utf-16-le", "surrogatepass")) // 2
        single, part, encoding = SINGLE_UCS2, PART_UCS2, "UCS-2"
    if units <= single:
        part_units: tuple[int, ...] = (units,) if units else ()
    elif gsm7:
        part_units = _pack([2 if ch in _EXTENSION else 1 for ch in text], single, part)
    else:
        part_units = _pack([2 if ord(ch) > 0xFFFF else 1 for ch in text], single, part)
    capacity = part if len(part_units) > 1 else single
    return SmsLength(
        encoding=encoding,
        characters=len(text),
        units=units,
        segments=len(part_units),
        per_segment=capacity,
        remaining=capacity - (part_units[-1] if part_units else 0),
        part_units=part_units,
        non_gsm=non_gsm,
    )


def describe_length(length: Mapping[str, Any]) -> str:
    """ "2 parts (UCS-2, 'ë' is not GSM-7)": how many parts and why it has that encoding. Takes `as_dict()`'s form,
    which is what a rendered payload carries."""
    parts, encoding, non_gsm = length["segments"], length["encoding"], length.get("non_gsm") or ()
    count = f"{parts} part" + ("" if parts == 1 else "s")
    if encoding == "UCS-2" and non_gsm:
        names = ", ".join(repr(ch) for ch in non_gsm)
        verb = "is" if len(non_gsm) == 1 else "are"
        return f"{count} ({encoding}, {names} {verb} not GSM-7)"
    return f"{count} ({encoding})"


def allowed_parts(*, multipart: bool) -> int:
    return MAX_PARTS if multipart else 1


def sms_over_limit(length: Mapping[str, Any], *, multipart: bool) -> str:
    """Why a message of this length (`as_dict()`'s form) may not be sent, "" when it may: more than one part
    without multi-part messages, or more than MAX_PARTS with them. The same rule at save and at send."""
    allowed = allowed_parts(multipart=multipart)
    if length["segments"] <= allowed:
        return ""
    return f"SMS is {describe_length(length)}; the campaign allows {allowed}"
