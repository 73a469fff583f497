"""Received lines as Postfix, Exim, Exchange Online and Gmail write them."""

from pathlib import Path

import pytest

from dsguard.mail.headers import split_headers
from dsguard.mail.received import parse_received

DATA = Path(__file__).parents[2] / "data" / "mha-headers"


@pytest.mark.parametrize(
    ("line", "helo", "ip", "by", "auth"),
    [
        (
            "from o9.sgmail.github.com (167.89.101.2) by CO1NAM03FT028.mail.protection.outlook.com "
            "(10.152.80.189) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384_P384) "
            "id 15.20.696.11 via Frontend Transport; Sun, 22 Apr 2018 02:54:17 +0000",
            "o9.sgmail.github.com",
            "167.89.101.2",
            "co1nam03ft028.mail.protection.outlook.com",
            False,
        ),
        (
            "from WIN-3J8KQ2H1LDF (unknown [139.28.36.171]) by mx.contoso.com (Postfix) with ESMTP id 4Q1 "
            "for <joe@contoso.com>; Tue, 1 Jul 2025 10:00:00 +0000",
            "WIN-3J8KQ2H1LDF",
            "139.28.36.171",
            "mx.contoso.com",
            False,
        ),
        (
            "from [127.0.0.1] (139.28.36.171) by X.mail.protection.outlook.com (10.1.1.1) with Microsoft SMTP "
            "Server id 15.20.1 via Frontend Transport; Tue, 1 Jul 2025 10:00:00 +0000",
            "[127.0.0.1]",
            "139.28.36.171",
            "x.mail.protection.outlook.com",
            False,
        ),
        (
            "from host.example.net ([192.0.2.1] helo=WIN-123) by mx.contoso.com with esmtp (Exim 4.96) "
            "(envelope-from <a@example.net>) id 1x; Tue, 1 Jul 2025 10:00:00 +0000",
            "WIN-123",
            "192.0.2.1",
            "mx.contoso.com",
            False,
        ),
        (
            "from laptop (unknown [198.51.100.7]) (Authenticated sender: alice@contoso.com) by mx.contoso.com "
            "(Postfix) with ESMTPSA id X; Mon, 30 Jun 2025 10:00:00 +0000",
            "laptop",
            "198.51.100.7",
            "mx.contoso.com",
            True,
        ),
    ],
)
def test_forms(line: str, helo: str, ip: str, by: str, auth: bool) -> None:
    hop = parse_received(line, 0)
    assert (hop.from_name, hop.from_ip, hop.by, hop.authenticated) == (helo, ip, by, auth)


def test_the_helo_literal_is_never_taken_as_the_client_ip() -> None:
    hop = parse_received("from [10.9.9.9] (unknown [203.0.113.5]) by mx.contoso.com; Mon", 0)
    assert hop.from_ip == "203.0.113.5" and hop.from_name == "[10.9.9.9]"


@pytest.mark.parametrize(
    "name",
    [
        "received-chain-nfcu-to-outlook-2018-04-21.txt",
        "received-chain-github-to-outlook-2018-04-22.txt",
    ],
)
def test_real_exchange_online_chains(name: str) -> None:
    block = split_headers((DATA / name).read_bytes(), max_headers=50, max_header_bytes=65536)
    hops = [parse_received(h.value, i) for i, h in enumerate(block.headers)]
    frontend = [h for h in hops if h.by and h.by.endswith(".mail.protection.outlook.com")]
    assert len(frontend) == 1
    expected_ip = "199.204.166.217" if "nfcu" in name else "167.89.101.2"
    assert frontend[0].from_ip == expected_ip
    assert all(h.date for h in hops[:3])


@pytest.mark.parametrize("junk", ["", "((((((((((((", "from", "by ;;;", "from x (" + "(" * 5000])
def test_junk_does_not_raise(junk: str) -> None:
    parse_received(junk, 0)
