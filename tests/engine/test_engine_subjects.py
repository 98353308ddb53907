"""The one rule for subject ids (plangate.engine.subject_problem), which the API and Stripe linking both apply."""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, strategies as st

from plangate.engine import MAX_SUBJECT, subject_problem

GOOD = ["alice", "u", "team/a b?x=1#100%", "d\u00e9", "\u6f22\u5b57", "a" * MAX_SUBJECT, "user@example.com",
        "\U0001F600 party"]
BAD = {
    "": "1 to 200", "a" * (MAX_SUBJECT + 1): "1 to 200",
    "ali\u200bce": "U+200B", "\u202eecila": "U+202E", "ali\u0085ce": "U+0085", "ali\u2028ce": "U+2028",
    "ali\u2029ce": "U+2029", "a\u00a0b": "U+00A0", "a\u3000b": "U+3000", "\ufeffalice": "U+FEFF",
    "ali\u00adce": "U+00AD", "a\x00b": "U+0000", "a\tb": "U+0009", "alice\n": "U+000A", "a\ud800": "U+D800",
    "a\ue000": "U+E000", " alice": "whitespace", "alice ": "whitespace",
    "de\u0301": "NFC",
}


@pytest.mark.parametrize("subject", GOOD)
def test_ids_that_are_subjects(subject):
    assert subject_problem(subject) is None


@pytest.mark.parametrize("subject, says", BAD.items())
def test_ids_that_are_not_and_why(subject, says):
    problem = subject_problem(subject)
    assert problem is not None and says in problem


@given(st.text(max_size=MAX_SUBJECT + 5))
def test_an_accepted_id_is_printable_nfc_text_without_whitespace_around_it(text):
    if subject_problem(text) is None:
        assert 0 < len(text) <= MAX_SUBJECT and text.isprintable() and text == text.strip()
        assert unicodedata.normalize("NFC", text) == text
