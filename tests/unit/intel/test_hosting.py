"""Free-hosting suffix matching: label boundaries, normalisation, most specific suffix."""

from __future__ import annotations

import pytest

from dsguard.intel.hosting import SuffixSet

FREE_HOSTING = SuffixSet([
    "firebaseapp.com", "web.app", "pages.dev", "core.windows.net", "web.core.windows.net",
    "*.netlify.app", ".github.io", "Vercel.APP.", "sites.google.com",
])


@pytest.mark.parametrize(
    ("host", "suffix"),
    [
        ("voice-e091b.firebaseapp.com", "firebaseapp.com"),  # the campaign's landing page
        ("x.web.app", "web.app"),
        ("web.app", "web.app"),
        ("a.b.c.pages.dev", "pages.dev"),
        ("X.WEB.APP.", "web.app"),
        ("site.netlify.app", "netlify.app"),
        ("user.github.io", "github.io"),
        ("demo.vercel.app", "vercel.app"),
        ("sites.google.com", "sites.google.com"),
        # the longest listed suffix is the one reported
        ("acct.web.core.windows.net", "web.core.windows.net"),
        ("acct.blob.core.windows.net", "core.windows.net"),
    ],
)
def test_host_matches_suffix_at_a_label_boundary(host: str, suffix: str) -> None:
    assert FREE_HOSTING.match(host) == suffix


@pytest.mark.parametrize(
    "host",
    [
        "notweb.app",  # ends with the text but not at a label boundary
        "web.app.evil.example",
        "google.com",  # parent of a listed suffix
        "docs.google.com",
        "app",
        "",
        "bad host.web.app",
    ],
)
def test_non_matching_hosts(host: str) -> None:
    assert FREE_HOSTING.match(host) is None


def test_unicode_host_is_compared_in_punycode() -> None:
    suffixes = SuffixSet(["xn--exmple-cua.com"])
    assert suffixes.match("www.exämple.com") == "xn--exmple-cua.com"


def test_empty_and_invalid_entries_are_ignored() -> None:
    suffixes = SuffixSet(["", "  ", "*.", "bad suffix", "example.com"])
    assert len(suffixes) == 1
    assert suffixes.match("a.example.com") == "example.com"
    assert SuffixSet([]).match("example.com") is None


def test_host_with_thousands_of_labels_is_cheap() -> None:
    assert FREE_HOSTING.match("a." * 50_000 + "web.app") == "web.app"
    assert FREE_HOSTING.match("a." * 50_000 + "example.com") is None
