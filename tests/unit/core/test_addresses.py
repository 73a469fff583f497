"""Every interpretation of a From header is seen (Composition Kills, section 5.2)."""

import pytest

from dsguard.mail.addresses import parse_address_field, parse_path


@pytest.mark.parametrize(
    ("raw", "claimed", "odd"),
    [
        ("Joe Bloggs <joe@contoso.com>", {"contoso.com"}, False),
        ('"Bloggs, Joe" <joe@contoso.com>', {"contoso.com"}, False),
        ("=?utf-8?q?J=C3=B6rg?= <jorg@example.org>", {"example.org"}, False),
        # A15: the encoded word decodes to an address
        (
            "=?utf-8?B?PGFkbWluQGNvbnRvc28uY29tPg==?=,<second@example.net>",
            {"contoso.com", "example.net"},
            True,
        ),
        # A16: route syntax
        ("<@example.net,@any.com:admin@contoso.com>", {"contoso.com"}, True),
        # A17: quoted pair outside quotes
        ("<admin@contoso.com>\\,<second@example.net>", {"contoso.com", "example.net"}, True),
        # A19: text after the angle brackets
        ("<any@example.net>admin@contoso.com", {"contoso.com", "example.net"}, True),
    ],
)
def test_claimed_domains_and_ambiguity(raw: str, claimed: set[str], odd: bool) -> None:
    field = parse_address_field(raw)
    assert set(field.claimed_domains) == claimed
    assert bool(field.oddities) is odd


def test_display_name_address_is_reported_but_not_claimed() -> None:
    field = parse_address_field('"admin@contoso.com" <x@example.net>')
    assert field.claimed_domains == ("example.net",)
    assert field.display_name_addresses == ("admin@contoso.com",)
    assert field.first is not None and field.first.addr == "x@example.net"


def test_several_mailboxes() -> None:
    field = parse_address_field("<first@example.net>, <admin@contoso.com>")
    assert [m.addr for m in field.mailboxes] == ["first@example.net", "admin@contoso.com"]


def test_hostile_length_is_capped() -> None:
    field = parse_address_field("a" * 100000 + "@contoso.com")
    assert any("longer than" in o for o in field.oddities)


@pytest.mark.parametrize(
    ("value", "addr"),
    [
        ("<joe@contoso.com>", "joe@contoso.com"),
        ("<>", ""),
        ("", None),
        ("<@relay.example.net:joe@contoso.com>", "joe@contoso.com"),
        ("joe@contoso.com", "joe@contoso.com"),
    ],
)
def test_parse_path(value: str, addr: str | None) -> None:
    assert parse_path(value) == addr
