"""The lure finder (checks.lurescan) gives exactly the matches plain ``finditer`` gives.

A lure that the fast path missed would be a finding that silently disappears, so these tests
compare the two on the shipped phrase list and on hostile text: words glued to letters of
other scripts, underscores, digits, and punctuation right before a phrase.
"""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.checks.content import compile_lures
from dsguard.checks.lurescan import _FINDERS, iter_matches
from dsguard.config import load_config

LURES = load_config(None).lures.patterns
PATTERN = compile_lures(LURES)

# Pieces of the shipped phrases, and characters that decide where a word starts.
PIECES = [
    "voice", "mail", "voicemail", "message", "missed", "fax", "call", "msg", "listen now",
    "payroll", "pay slip", "bonus", "w-2", "w2", "w-9", "invoice", "overdue", "mfa",
    "qr code", "scan the qr", "docusign", "shared a document", "password reset",
    "sign-in to view", "review and sign", "e-signature request", "bank details",
    " ", "\n", "\t", "-", "_", ".", ":", "/", "(", ")", '"', "é", "ß", "ǆ", "٣", "x", "0", "9",
    "\u00a0", "\u2028", "İ",
]


def _finditer(pattern: re.Pattern[str], text: str) -> list[tuple[int, int, str | None]]:
    return [(m.start(), m.end(), m.lastgroup) for m in pattern.finditer(text)]


def test_the_shipped_phrase_list_gets_the_fast_finder() -> None:
    assert PATTERN in _FINDERS


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_fast_finder_equals_finditer(pieces: list[str]) -> None:
    text = "".join(pieces).lower()
    assert list(iter_matches(PATTERN, text)) == _finditer(PATTERN, text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fast_finder_equals_finditer_on_any_text(text: str) -> None:
    assert list(iter_matches(PATTERN, text)) == _finditer(PATTERN, text)


def test_overlapping_phrases_keep_finditer_order_and_spans() -> None:
    # "voice message" (VOICEMAIL) overlaps "message" phrases; "new missed fax" has two readings.
    text = "x\nnew missed fax voice message_voicemail, invoice(overdue) w-2 w2w w-9."
    assert list(iter_matches(PATTERN, text)) == _finditer(PATTERN, text)
    assert {group for _, _, group in iter_matches(PATTERN, text)} >= {
        "LURE_VOICEMAIL_FAX",
        "LURE_PAYMENT",
        "LURE_PAYROLL_HR",
    }


def test_phrases_without_a_leading_word_boundary_use_finditer() -> None:
    odd = {
        "LURE_PAYMENT": ("invoice", r"\bpay(?:ment)?\b"),
        "LURE_CREDENTIAL": (r"\b(?:pass|word)",),
    }
    pattern = compile_lures(odd)
    assert pattern not in _FINDERS
    text = "reinvoiced payment password"
    assert list(iter_matches(pattern, text)) == _finditer(pattern, text)
    assert [text[a:b] for a, b, _ in iter_matches(pattern, text)] == ["invoice", "payment", "pass"]


def test_custom_phrases_with_groups_lookarounds_and_classes_still_match_the_same() -> None:
    custom = {
        "LURE_PAYMENT": (r"\bin(?:voice|v)\b", r"\bpay[- ]?(?=now)", r"\b9[0-9]{2}\b"),
        "LURE_DOCUMENT_SHARE": (r"\bdoc(?<!xdoc)s?\b", r"\bs[]a-]+"),
    }
    pattern = compile_lures(custom)
    assert pattern in _FINDERS
    for text in ("inv invoice pay-now pay now 900 docs s]a-a", "_inv 9999 xdoc sa", "éinv inv"):
        assert list(iter_matches(pattern, text)) == _finditer(pattern, text)


def test_a_pattern_that_is_not_the_registered_one_falls_back() -> None:
    other = re.compile(r"\binvoice\b")
    assert list(iter_matches(other, "an invoice")) == [(3, 10, None)]


def test_phrases_sharing_a_first_letter_keep_the_pattern_order_across_findings() -> None:
    # At "payment" the earlier family's "\bpay" wins over the later "\bpayment": the finder
    # must report the same family and the same (shorter) match as the full pattern.
    custom = {
        "LURE_PAYROLL_HR": (r"\bpay", r"\bp(a)yslip\b"),
        "LURE_PAYMENT": (r"\bpayment\b", r"\bpayslip\b"),
        "LURE_CREDENTIAL": (r"\bpass(word)?\b",),
    }
    pattern = compile_lures(custom)
    assert pattern in _FINDERS
    for text in ("payment due", "a payslip", "password pass payment", "x-payment", "épay pay"):
        assert list(iter_matches(pattern, text)) == _finditer(pattern, text), text
    assert next(iter_matches(pattern, "payment"))[2] == "LURE_PAYROLL_HR"
