"""IP -> country through iptocc's bundled registry data."""

from __future__ import annotations

import pytest

from dsguard.intel.geo import country_of


def test_campaign_range_address_resolves_from_bundled_registry_data() -> None:
    # 139.28.40.42 (artus.net.pl, a legitimate sender inside 139.28.0.0/16) is registered in
    # Poland in iptocc's data, not in Ukraine: the reason the /16 is not an indicator.
    assert country_of("139.28.40.42") == "PL"


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4() -> None:
    assert country_of("::ffff:139.28.40.42") == "PL"


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",  # private
        "127.0.0.1",  # loopback
        "169.254.1.1",  # link-local
        "100.64.0.1",  # shared address space (CGNAT)
        "192.0.2.1",  # documentation
        "224.0.0.251",  # multicast
        "::1",
        "fe80::1",
        "2001:db8::1",
        "junk",
        "",
        " 8.8.8.8",
        "999.1.1.1",
    ],
)
def test_no_country_for_non_global_or_invalid_addresses(ip: str) -> None:
    assert country_of(ip) is None


def test_global_address_gives_a_two_letter_code() -> None:
    code = country_of("2a00:1450::1")
    assert code is not None
    assert len(code) == 2
    assert code.isupper()


def test_addresses_that_never_recur_are_not_kept() -> None:
    # Mail from ever new senders: the memo stops storing (mail.memo) and still answers.
    country_of.cache_clear()
    try:
        for i in range(3000):
            assert country_of(f"10.{i // 256}.{i % 256}.1") is None
        assert country_of("139.28.40.42") == "PL"
        info = country_of.cache_info()
        assert not info.storing and info.currsize == 0
        country_of.cache_clear()
        assert country_of("139.28.40.42") == "PL" == country_of("139.28.40.42")
        assert country_of.cache_info().hits == 1
    finally:
        country_of.cache_clear()
