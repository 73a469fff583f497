"""IOC lists: the bundled campaign list, user files, and the matching rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsguard.errors import InputError
from dsguard.intel.iocs import IocDB, IocMatch

USER_LIST = """\
# Incident 2025-07: Direct Send spoofing seen at contoso.com
203.0.113.7            # sender seen in message trace
198.51.100.0/28        # VPS block used for injection
2001:db8:bad::/48      # IPv6 block

evil.example.com       # QR landing page
hxxps://login.example[.]net/owa   # defanged, as in the advisory
hxxp[:]//tracker(.)example.org/t?id=42
https://files.example.com/share/doc#frag  # a '#' inside a URL is not a comment
"""


@pytest.fixture
def user_list(tmp_path: Path) -> str:
    path = tmp_path / "incident.txt"
    path.write_text(USER_LIST, encoding="utf-8")
    return str(path)


@pytest.fixture
def db(user_list: str) -> IocDB:
    return IocDB.load([user_list], bundled=False)


def write(tmp_path: Path, text: str, name: str = "list.txt") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- bundled list
def test_bundled_list_has_the_published_campaign_domains() -> None:
    bundled = IocDB.load()
    assert len(bundled) == 2
    voice = bundled.match_host("voice-e091b.firebaseapp.com")
    assert voice is not None
    assert voice.indicator == "voice-e091b.firebaseapp.com"  # refanged from [.]
    assert voice.source == "bundled"
    assert voice.note.startswith("unverified: from the seed write-up only")
    found = bundled.match_url("https://mv4lh.bsfff.es/secure/login")
    assert found is not None
    assert found.indicator == "mv4lh.bsfff.es"


def test_bundled_list_does_not_flag_the_whole_139_28_range_or_the_platform() -> None:
    bundled = IocDB.load()
    # 139.28.40.42 is a legitimate sender in the /16 the campaign was reported from.
    assert bundled.match_ip("139.28.40.42") is None
    # Other apps on the same free-hosting platform are not indicators.
    assert bundled.match_host("firebaseapp.com") is None
    assert bundled.match_host("voice-other.firebaseapp.com") is None


def test_bundled_list_can_be_left_out() -> None:
    assert len(IocDB.load(bundled=False)) == 0
    assert IocDB.load(bundled=False).match_host("voice-e091b.firebaseapp.com") is None


# ------------------------------------------------------------------------------------ parsing
def test_user_list_entries_notes_and_source(db: IocDB, user_list: str) -> None:
    assert len(db) == 7
    assert db.match_ip("203.0.113.7") == IocMatch(
        "203.0.113.7", user_list, "sender seen in message trace"
    )


def test_defanged_entries_are_refanged(db: IocDB, user_list: str) -> None:
    assert db.match_url("https://login.example.net/owa") == IocMatch(
        "https://login.example.net/owa", user_list, "defanged, as in the advisory"
    )
    found = db.match_url("http://tracker.example.org/t?id=42")
    assert found is not None
    assert found.indicator == "http://tracker.example.org/t?id=42"
    assert found.note == ""


def test_hash_inside_a_url_is_not_a_comment(db: IocDB) -> None:
    found = db.match_url("https://files.example.com/share/doc")
    assert found is not None
    assert found.indicator == "https://files.example.com/share/doc#frag"
    assert found.note == "a '#' inside a URL is not a comment"


def test_bad_line_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "# header\nevil.example.com\nfoo bar\n")
    with pytest.raises(InputError) as caught:
        IocDB.load([path], bundled=False)
    assert caught.value.name == path
    assert caught.value.problem == "line 3: 'foo bar' is not an IP, CIDR, domain or URL"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1.2.3", "'1.2.3' is not an IP, CIDR, domain or URL"),
        ("joe@evil.example.com", "'joe@evil.example.com' is not an IP, CIDR, domain or URL"),
        ("evil.example.com/login", "a URL needs its scheme, e.g. https://evil.example.com/login"),
        ("300.1.1.1/24", "is not an IP, CIDR, domain or URL"),
        ("com", "'com' is a single label"),
        ("0.0.0.0/0", "too broad"),
        ("139.0.0.0/7", "too broad"),
        ("https://", "'https://' is not a valid URL"),
    ],
)
def test_invalid_indicators_are_refused(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, line + "\n")
    with pytest.raises(InputError) as caught:
        IocDB.load([path], bundled=False)
    assert caught.value.problem.startswith("line 1: ")
    assert problem in caught.value.problem


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(InputError) as caught:
        IocDB.load([missing], bundled=False)
    assert caught.value.name == missing
    assert "cannot read IOC list" in caught.value.problem


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"evil.example.com\n# caf\xe9\n")
    with pytest.raises(InputError) as caught:
        IocDB.load([str(path)], bundled=False)
    assert caught.value.problem == "line 2: not valid UTF-8"


def test_first_entry_wins_when_lists_repeat_an_indicator(tmp_path: Path) -> None:
    path = write(tmp_path, "voice-e091b.firebaseapp.com  # mine\n")
    merged = IocDB.load([path])
    found = merged.match_host("voice-e091b.firebaseapp.com")
    assert found is not None
    assert found.source == "bundled"
    assert len(merged) == 2


# ----------------------------------------------------------------------------------- matching
@pytest.mark.parametrize(
    ("ip", "indicator"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("198.51.100.0", "198.51.100.0/28"),
        ("198.51.100.15", "198.51.100.0/28"),
        ("2001:db8:bad:1::25", "2001:db8:bad::/48"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[2001:db8:bad::1]", "2001:db8:bad::/48"),
    ],
)
def test_ip_matches_exact_address_or_listed_range(db: IocDB, ip: str, indicator: str) -> None:
    found = db.match_ip(ip)
    assert found is not None
    assert found.indicator == indicator


@pytest.mark.parametrize("ip", ["203.0.113.8", "198.51.100.16", "2001:db8:bae::1", "junk", ""])
def test_ip_outside_every_entry_does_not_match(db: IocDB, ip: str) -> None:
    assert db.match_ip(ip) is None


def test_most_specific_range_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "10.0.0.0/8  # wide\n10.1.0.0/16  # narrow\n")
    ranges = IocDB.load([path], bundled=False)
    found = ranges.match_ip("10.1.2.3")
    assert found is not None
    assert found.note == "narrow"


@pytest.mark.parametrize(
    "host",
    ["evil.example.com", "a.b.evil.example.com", "EVIL.Example.COM.", "ä.evil.example.com"],
)
def test_host_matches_listed_domain_and_its_subdomains(db: IocDB, host: str) -> None:
    found = db.match_host(host)
    assert found is not None
    assert found.indicator == "evil.example.com"


@pytest.mark.parametrize(
    "host", ["notevil.example.com", "example.com", "evil.example.com.attacker.example", "", "a b"]
)
def test_sibling_parent_and_lookalike_hosts_do_not_match(db: IocDB, host: str) -> None:
    assert db.match_host(host) is None


def test_ip_literal_host_is_matched_as_an_ip(db: IocDB) -> None:
    found = db.match_host("198.51.100.3")
    assert found is not None
    assert found.indicator == "198.51.100.0/28"
    assert db.match_url("http://[2001:db8:bad::9]:8080/x") is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example.net/owa",
        "http://login.example.net/owa",  # scheme does not matter
        "https://login.example.net:443/owa/",  # default port, trailing slash
        "https://login.example.net/owa?email=joe@contoso.com",  # per-victim query added
        "https://login.example.net/owa#am9l",  # fragment ignored
        "https://attacker@LOGIN.example.net/owa",  # userinfo ignored, host case
    ],
)
def test_listed_url_matches_equivalent_urls(db: IocDB, url: str) -> None:
    found = db.match_url(url)
    assert found is not None
    assert found.indicator == "https://login.example.net/owa"


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example.net/other",
        "https://login.example.net:8443/owa",
        "https://login.example.net/OWA",
        "http://tracker.example.org/t?id=43",  # a listed query must match exactly
        "http://tracker.example.org/t",
    ],
)
def test_listed_url_does_not_match_other_resources_on_its_host(db: IocDB, url: str) -> None:
    assert db.match_url(url) is None


def test_url_falls_back_to_domain_match(db: IocDB) -> None:
    found = db.match_url("https://cdn.evil.example.com/qr?x=1")
    assert found is not None
    assert found.indicator == "evil.example.com"


def test_backslash_trick_does_not_hide_a_listed_host(db: IocDB) -> None:
    # Browsers go to evil.example.com; the part after "\\@" is not the host.
    found = db.match_url("https://evil.example.com\\@contoso.com/")
    assert found is not None
    assert found.indicator == "evil.example.com"
    assert db.match_url("not a url") is None
