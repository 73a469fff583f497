"""The fast paths of dsguard.mail.ipaddr give the stdlib's answers and errors."""

from __future__ import annotations

import ipaddress
import itertools
import random

import pytest

from dsguard.mail.ipaddr import canonical_ip, parse_ip


def _stdlib(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _check(text: str) -> None:
    assert canonical_ip(text) == _stdlib(text), text
    try:
        expected: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    try:
        got: ipaddress.IPv4Address | ipaddress.IPv6Address | None = parse_ip(text)
    except ValueError:
        got = None
    assert got == expected and type(got) is type(expected), text


@pytest.mark.parametrize(
    "text",
    [
        "192.0.2.1",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.",
        " 1.2.3.4",
        "1.2.3.4\n",
        "١.2.3.4",
        "1.2.3.²",
        "::",
        "::1",
        "1::",
        "2603:10b6:a03:2d9::a992",
        "2603:10B6:0A03:02D9:0:0:0:A992",
        "1:0:0:1:0:0:0:1",
        "0:0:1:0:0:1:0:0",
        "1:2:3:4:5:6:7::",
        "1:2:3:4:5:6:7::8",
        "1:::2",
        ":1::2",
        "1::2:",
        "::ffff:192.0.2.1",
        "fe80::1%eth0",
        "1:2:3:4:5:6:7:8:9",
        "12345::1",
        "g::1",
        "",
        ":",
        ":::",
    ],
)
def test_examples(text: str) -> None:
    _check(text)


def test_every_zero_pattern_in_every_spelling() -> None:
    for bits in itertools.product([0, 1], repeat=8):
        words = [f"{b:x}" for b in bits]
        forms = {":".join(words), ":".join(f"{b:04x}" for b in bits)}
        for start in range(8):
            for end in range(start + 1, 9):
                if all(b == 0 for b in bits[start:end]):
                    forms.add(":".join(words[:start]) + "::" + ":".join(words[end:]))
        for form in forms:
            _check(form)
            _check(form.upper())


def test_random_strings() -> None:
    rnd = random.Random(7)
    octets = [*map(str, range(260)), "00", "01", "010", "", "0x1", "+1"]
    hextets = ["0", "00", "0000", "1", "a", "F", "fe80", "ABCD", "12345", "g", "", "1.2.3.4"]
    for _ in range(20000):
        _check(".".join(rnd.choice(octets) for _ in range(rnd.choice([3, 4, 4, 5]))))
        text = ":".join(rnd.choice(hextets) for _ in range(rnd.randint(1, 10)))
        if rnd.random() < 0.3:
            i = rnd.randint(0, len(text))
            text = text[:i] + ":" + text[i:]
        _check(text)
