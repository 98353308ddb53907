"""What a subject id is: one rule for every door a subject comes in by (the API, a Stripe object naming it).

A subject id is 1 to MAX_SUBJECT characters, printable (str.isprintable: no control, format, surrogate,
private-use, unassigned or separator characters but the plain space), without whitespace at either end, and in
Unicode NFC. So one string is one subject: no invisible character, bidirectional override or other normal form
of the same text can name a second subject that looks like the first.
"""
from __future__ import annotations

import unicodedata

MAX_SUBJECT = 200


def subject_problem(value: str) -> str | None:
    """What is wrong with `value` as a subject id (to follow "the subject ..."), or None when it is one."""
    if not 0 < len(value) <= MAX_SUBJECT:
        return f"must be 1 to {MAX_SUBJECT} characters long"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return (f"must be printable text: U+{ord(bad):04X} ({unicodedata.category(bad)}) is a control, format or "
                f"separator character or is not one at all")
    if value[0].isspace() or value[-1].isspace():
        return "must not start or end with whitespace"
    if not value.isascii() and not unicodedata.is_normalized("NFC", value):
        return "must be in Unicode normal form NFC (normalize it with NFC first)"
    return None
