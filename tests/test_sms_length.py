"""SMS counting against the GSM 03.38 / TS 23.038 rules and well-known vectors."""

from __future__ import annotations

import pytest

from campaigns.content.sms import GSM7_BASIC, sms_length


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("Hello", "GSM-7", 5, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),  # 153 + 8
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension characters count twice
        ("€" * 81, "GSM-7", 162, 2),
        ("{}[]~|^\\", "GSM-7", 16, 1),
        ("£¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡ÄÖÑÜ§¿äöñüà@$", "GSM-7", 41, 1),  # 41 basic characters
        ("Ça coûte 5€", "UCS-2", 11, 1),  # û is not in GSM-7
        ("ç" * 70, "UCS-2", 70, 1),  # lowercase ç is not GSM-7 (only Ç is)
        ("ç" * 71, "UCS-2", 71, 2),  # 67 + 4
        ("ç" * 134, "UCS-2", 134, 2),
        ("ç" * 135, "UCS-2", 135, 3),
        ("Hi 😀", "UCS-2", 5, 1),  # the emoji is a surrogate pair: two UTF-16 units
        ("😀" * 35, "UCS-2", 70, 1),
        ("😀" * 36, "UCS-2", 72, 2),
        ("Привет", "UCS-2", 6, 1),
        ("`", "UCS-2", 1, 1),  # the backtick is not in GSM 03.38
    ],
)
def test_vectors(text, encoding, units, segments):
    result = sms_length(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_the_basic_alphabet_has_128_characters():
    assert len(GSM7_BASIC) == 128
    assert sms_length(GSM7_BASIC.replace("\x1b", "")).encoding == "GSM-7"


def test_remaining_counts_down_in_the_current_segment():
    assert sms_length("a" * 150).remaining == 10
    assert sms_length("a" * 161).remaining == 153 - 8
    assert sms_length("ç" * 10).remaining == 60
