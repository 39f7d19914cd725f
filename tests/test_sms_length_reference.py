"""SMS length against vectors built from 3GPP TS 23.038 (the GSM 7-bit default alphabet and its extension table,
UCS-2) and TS 23.040 (140-octet user data, the 6-octet concatenation header).

Every vector's expected encoding, units and parts are written out by hand from the standard. Each is also checked
by an independent method: the text is actually encoded (septets from the standard's code table, transcribed here
row by row as the standard prints it, or UTF-16 code units), split into parts whose user data is built bit for bit
(header, fill bits, packed septets) and must fit 140 octets, and the parts are decoded again, one by one, back into
the text. No capacity (160, 153, 70, 67) is assumed by that method: it follows from the 140 octets.
"""

from __future__ import annotations

import pytest

from campaigns.content.sms import MAX_PARTS, describe_length, sms_length, sms_over_limit

# --- the standard's tables, transcribed independently ----------------------------------------------------------

# TS 23.038 §6.2.1, figure "default alphabet": rows 0x0-0xF (bits b4..b1), columns 0-7 (bits b7..b5). The code is
# column * 16 + row. "ESC" at 0x1B leads to the extension table.
_ROWS = [
    ["@", "Δ", " ", "0", "¡", "P", "¿", "p"],
    ["£", "_", "!", "1", "A", "Q", "a", "q"],
    ["$", "Φ", '"', "2", "B", "R", "b", "r"],
    ["¥", "Γ", "#", "3", "C", "S", "c", "s"],
    ["è", "Λ", "¤", "4", "D", "T", "d", "t"],
    ["é", "Ω", "%", "5", "E", "U", "e", "u"],
    ["ù", "Π", "&", "6", "F", "V", "f", "v"],
    ["ì", "Ψ", "'", "7", "G", "W", "g", "w"],
    ["ò", "Σ", "(", "8", "H", "X", "h", "x"],
    ["Ç", "Θ", ")", "9", "I", "Y", "i", "y"],
    ["\n", "Ξ", "*", ":", "J", "Z", "j", "z"],
    ["Ø", "ESC", "+", ";", "K", "Ä", "k", "ä"],
    ["ø", "Æ", ",", "<", "L", "Ö", "l", "ö"],
    ["\r", "æ", "-", "=", "M", "Ñ", "m", "ñ"],
    ["Å", "ß", ".", ">", "N", "Ü", "n", "ü"],
    ["å", "É", "/", "?", "O", "§", "o", "à"],
]
ESC = 0x1B
BASIC_CODE = {char: column * 16 + row for row, chars in enumerate(_ROWS) for column, char in enumerate(chars)}
del BASIC_CODE["ESC"]
# §6.2.1.1, the default alphabet extension table (after ESC).
EXTENSION_CODE = {"\x0c": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E,
                  "|": 0x40, "€": 0x65}  # fmt: skip
BASIC_CHAR = {code: char for char, code in BASIC_CODE.items()}
EXTENSION_CHAR = {code: char for char, code in EXTENSION_CODE.items()}

USER_DATA_OCTETS = 140  # TS 23.040 §9.2.3.16/24: TP-UD holds at most 140 octets
# TS 23.040 §9.2.3.24.1: UDHL, then IEI 0x00 (concatenated short messages, 8-bit reference), IEDL 3, reference,
# total, sequence: 6 octets in all.
CONCAT_HEADER_OCTETS = 6


def _header(reference: int, total: int, sequence: int) -> bytes:
    return bytes([5, 0x00, 3, reference, total, sequence])


def _septets(text: str) -> list[int] | None:
    """The text in the default alphabet (an extension character is ESC + its code), None if it cannot be."""
    septets: list[int] = []
    for char in text:
        if char in BASIC_CODE:
            septets.append(BASIC_CODE[char])
        elif char in EXTENSION_CODE:
            septets.extend((ESC, EXTENSION_CODE[char]))
        else:
            return None
    return septets


def _pack_bits(prefix: bytes, septets: list[int]) -> bytes:
    """TS 23.038 §6.1.2.1.1 packing after a user data header (TS 23.040 §9.2.3.24): the header's octets, fill bits
    up to the next septet boundary, then each septet, least significant bit first."""
    bits: list[int] = []
    for octet in prefix:
        bits.extend((octet >> i) & 1 for i in range(8))
    if prefix:
        bits.extend([0] * ((7 - len(bits) % 7) % 7))
    for septet in septets:
        bits.extend((septet >> i) & 1 for i in range(7))
    bits.extend([0] * ((8 - len(bits) % 8) % 8))
    return bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))


def _unpack_septets(user_data: bytes, header_octets: int, count: int) -> list[int]:
    bits = [(octet >> i) & 1 for octet in user_data for i in range(8)]
    start = header_octets * 8
    if header_octets:
        start += (7 - start % 7) % 7
    return [sum(bits[start + 7 * n + j] << j for j in range(7)) for n in range(count)]


def _gsm_parts(septets: list[int]) -> list[list[int]]:
    """Split as a sender must: one message when the septets fit 140 octets without a header; else parts whose
    header + packed septets fit 140 octets, none ending with an ESC (its character would be in the next part)."""
    if not septets:
        return []
    if len(_pack_bits(b"", septets)) <= USER_DATA_OCTETS:
        return [septets]
    parts: list[list[int]] = []
    current: list[int] = []
    for septet in septets:
        if len(_pack_bits(_header(1, 1, 1), [*current, septet])) > USER_DATA_OCTETS:
            carried = [current.pop()] if current[-1] == ESC else []
            parts.append(current)
            current = carried
        current.append(septet)
    parts.append(current)
    return parts


def _decode_gsm(septets: list[int]) -> str:
    chars, escaped = [], False
    for septet in septets:
        if escaped:
            chars.append(EXTENSION_CHAR[septet])
            escaped = False
        elif septet == ESC:
            escaped = True
        else:
            chars.append(BASIC_CHAR[septet])
    assert not escaped, "a part ends with an ESC"
    return "".join(chars)


def _ucs2_parts(text: str) -> list[bytes]:
    """UTF-16 code units (big-endian, as TS 23.038 §6.2.3 orders UCS-2) split into parts whose header + units fit
    140 octets, none ending with a high surrogate (its pair would be split)."""
    data = text.encode("utf-16-be")
    units = [data[i : i + 2] for i in range(0, len(data), 2)]
    if not units:
        return []
    if 2 * len(units) <= USER_DATA_OCTETS:
        return [data]
    parts: list[list[bytes]] = []
    current: list[bytes] = []
    for unit in units:
        if CONCAT_HEADER_OCTETS + 2 * (len(current) + 1) > USER_DATA_OCTETS:
            carried = [current.pop()] if 0xD8 <= current[-1][0] <= 0xDB else []
            parts.append(current)
            current = carried
        current.append(unit)
    parts.append(current)
    return [b"".join(part) for part in parts]


def independent_measure(text: str) -> tuple[str, int, list[int]]:
    """(encoding, units, units per part), by encoding, building each part's user data and decoding it back."""
    septets = _septets(text)
    if septets is not None:
        parts = _gsm_parts(septets)
        decoded = []
        for sequence, part in enumerate(parts, start=1):
            if len(parts) == 1:
                user_data = _pack_bits(b"", part)
                assert len(user_data) <= USER_DATA_OCTETS
                decoded.append(_decode_gsm(_unpack_septets(user_data, 0, len(part))))
            else:
                header = _header(0x42, len(parts), sequence)
                user_data = _pack_bits(header, part)
                assert len(user_data) <= USER_DATA_OCTETS
                assert user_data[:CONCAT_HEADER_OCTETS] == header
                decoded.append(_decode_gsm(_unpack_septets(user_data, CONCAT_HEADER_OCTETS, len(part))))
        assert "".join(decoded) == text
        return "GSM-7", len(septets), [len(part) for part in parts]
    parts_bytes = _ucs2_parts(text)
    overhead = CONCAT_HEADER_OCTETS if len(parts_bytes) > 1 else 0
    assert all(overhead + len(part) <= USER_DATA_OCTETS for part in parts_bytes)
    # Each part decodes on its own: no surrogate pair is split.
    assert "".join(part.decode("utf-16-be") for part in parts_bytes) == text
    return "UCS-2", len(text.encode("utf-16-be")) // 2, [len(part) // 2 for part in parts_bytes]


# --- the vectors ------------------------------------------------------------------------------------------------

EXTENSION_CHARACTERS = ["\x0c", "^", "{", "}", "\\", "[", "~", "]", "|", "€"]

VECTORS = [
    # (text, encoding, units, parts)
    ("", "GSM-7", 0, 0),
    ("a", "GSM-7", 1, 1),
    ("a" * 160, "GSM-7", 160, 1),  # 160 septets = 140 octets: one SMS
    ("a" * 161, "GSM-7", 161, 2),  # 153 + 8
    ("a" * 306, "GSM-7", 306, 2),  # 153 x 2
    ("a" * 307, "GSM-7", 307, 3),  # 153 x 2 + 1
    ("a" * 459, "GSM-7", 459, 3),  # 153 x 3
    ("a" * 460, "GSM-7", 460, 4),
    ("a" * 918, "GSM-7", 918, 6),  # 153 x 6, the cap
    ("a" * 919, "GSM-7", 919, 7),
    ("a" * 158 + "€", "GSM-7", 160, 1),  # € ends exactly at 160 in a single SMS
    ("a" * 159 + "€", "GSM-7", 161, 2),  # € at the single-SMS boundary: 153 + 8
    ("a" * 152 + "€", "GSM-7", 154, 1),  # an escape at 153-154 is fine in one SMS
    ("a" * 151 + "€" + "a" * 153, "GSM-7", 306, 2),  # the escape pair fills septets 152-153 of part 1
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # ESC would be septet 153: part 1 holds 152, ceil() says 2
    ("a" * 152 + "{" + "a" * 151, "GSM-7", 305, 2),  # the brace moves too: 152, then 153 with it
    ("a" * 305 + "€", "GSM-7", 307, 3),  # 153 + 152 (the pair moves) + 2
    ("€" * 80, "GSM-7", 160, 1),
    ("€" * 81, "GSM-7", 162, 2),  # 76 pairs (152) + 5 pairs
    ("€" * 459, "GSM-7", 918, 7),  # 918 septets, 76 pairs per part: 7 parts, past the cap that ceil() let through
    ("{" * 77, "GSM-7", 154, 1),
    ("{" * 80 + "a", "GSM-7", 161, 2),
    ("\n", "GSM-7", 1, 1),  # LF is in the basic table
    ("\r\n", "GSM-7", 2, 1),  # CR and LF: two septets
    ("Line one\r\nLine two\nend", "GSM-7", 22, 1),
    ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà", "GSM-7", 42, 1),  # the default alphabet's non-ASCII (42)
    ("ΔΦΓΛΩΠΨΣΘΞ", "GSM-7", 10, 1),  # Greek capitals that the alphabet has
    ("ΑΒΓ", "UCS-2", 3, 1),  # Greek Alpha and Beta look like A and B but are not in it
    ("ç", "UCS-2", 1, 1),  # only the capital Ç is in the alphabet
    ("Ç", "GSM-7", 1, 1),
    ("`", "UCS-2", 1, 1),  # the backtick is not in the alphabet
    ("\u2018quoted\u2019", "UCS-2", 8, 1),  # curly quotes are not
    ("\u201cquoted\u201d", "UCS-2", 8, 1),
    ("a \u2013 b", "UCS-2", 5, 1),  # an en dash is not
    ("a\tb", "UCS-2", 3, 1),  # nor a tab
    ("50\u00a0€", "UCS-2", 4, 1),  # nor a no-break space; in UCS-2 € is one unit
    ("á", "UCS-2", 1, 1),  # à is in the alphabet, á is not
    ("Hello Zoë", "UCS-2", 9, 1),
    ("e\u0301", "UCS-2", 2, 1),  # a decomposed accent: two code points, two units
    ("ç" * 70, "UCS-2", 70, 1),  # 70 x 2 = 140 octets: one SMS
    ("ç" * 71, "UCS-2", 71, 2),  # 67 + 4
    ("ç" * 134, "UCS-2", 134, 2),  # 67 x 2
    ("ç" * 135, "UCS-2", 135, 3),
    ("ç" * 402, "UCS-2", 402, 6),  # 67 x 6, the cap
    ("ç" * 403, "UCS-2", 403, 7),
    ("ç" * 68 + "😀", "UCS-2", 70, 1),  # a pair ending exactly at 70
    ("ç" * 69 + "😀", "UCS-2", 71, 2),  # 67 + 4
    ("ç" * 65 + "😀" + "ç" * 67, "UCS-2", 134, 2),  # the pair fills units 66-67 of part 1
    ("ç" * 66 + "😀" + "ç" * 66, "UCS-2", 134, 3),  # an emoji at 67 would be split: part 1 holds 66
    ("😀" * 35, "UCS-2", 70, 1),
    ("😀" * 36, "UCS-2", 72, 2),  # 33 pairs (66) + 3
    ("😀" * 201, "UCS-2", 402, 7),  # 402 units, 33 pairs per part: 7 parts, past the cap that ceil() let through
    ("Hi 😀", "UCS-2", 5, 1),
    ("🇬🇧", "UCS-2", 4, 1),  # a flag is two regional indicators, each a pair
    ("👨\u200d👩\u200d👧", "UCS-2", 8, 1),  # three pairs and two zero-width joiners
    ("Привет, мир", "UCS-2", 11, 1),
    ("日本語のテキスト", "UCS-2", 8, 1),
    ("مرحبا Zoë", "UCS-2", 9, 1),
    ("Price: 5€ {code} ç", "UCS-2", 18, 1),  # once UCS-2, extension characters are one unit each
    ("a" * 153 + "ë", "UCS-2", 154, 3),  # a 154-character GSM text plus one ë: UCS-2, 67 + 67 + 20
] + [(char, "GSM-7", 2, 1) for char in EXTENSION_CHARACTERS]  # every extension character: ESC + code


def test_there_are_at_least_forty_vectors():
    assert len(VECTORS) >= 40
    assert len({text for text, *_ in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize(("text", "encoding", "units", "parts"), VECTORS)
def test_vector(text, encoding, units, parts):
    independent_encoding, independent_units, independent_parts = independent_measure(text)
    assert (independent_encoding, independent_units, len(independent_parts)) == (encoding, units, parts)
    length = sms_length(text)
    assert (length.encoding, length.units, length.segments) == (encoding, units, parts)
    assert list(length.part_units) == independent_parts
    assert length.characters == len(text)


def test_the_capacities_follow_from_140_octets():
    # The independent method knows only the 140 octets and the 6-octet header; these are what it arrives at.
    assert independent_measure("a" * 160)[2] == [160]
    assert independent_measure("a" * 320)[2] == [153, 153, 14]
    assert independent_measure("ç" * 70)[2] == [70]
    assert independent_measure("ç" * 140)[2] == [67, 67, 6]


def test_the_escape_pair_moves_to_the_next_part_whole():
    length = sms_length("a" * 152 + "€" + "a" * 152)
    assert length.part_units == (152, 153, 1)
    assert length.per_segment == 153
    assert length.remaining == 152


def test_remaining_is_what_is_left_in_the_last_part():
    assert sms_length("").remaining == 160
    assert sms_length("a" * 150).remaining == 10
    assert sms_length("a" * 161).remaining == 145
    assert sms_length("ç" * 10).remaining == 60
    assert sms_length("ç" * 71).remaining == 63
    assert sms_length("😀" * 36).remaining == 61


def test_forced_ucs2_counts_code_units():
    length = sms_length("a" * 100 + "€", ucs2=True)
    assert (length.encoding, length.units, length.segments, length.non_gsm) == ("UCS-2", 101, 2, ())


def test_the_reason_names_the_characters_that_are_not_gsm7():
    length = sms_length("Hi Zoë, ça va? " + "a" * 60)
    assert length.non_gsm == ("ë", "ç")
    assert describe_length(length.as_dict()) == "2 parts (UCS-2, 'ë', 'ç' are not GSM-7)"
    assert sms_over_limit(length.as_dict(), multipart=False) == (
        "SMS is 2 parts (UCS-2, 'ë', 'ç' are not GSM-7); the campaign allows 1"
    )
    assert sms_over_limit(length.as_dict(), multipart=True) == ""


def test_the_cap_applies_with_multipart_allowed():
    assert sms_over_limit(sms_length("€" * 459).as_dict(), multipart=True) == (
        f"SMS is 7 parts (GSM-7); the campaign allows {MAX_PARTS}"
    )
    assert sms_over_limit(sms_length("a" * 918).as_dict(), multipart=True) == ""
