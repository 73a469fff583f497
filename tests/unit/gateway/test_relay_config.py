"""Downstream URLs and the retry schedule."""

from __future__ import annotations

import pytest

from dsguard.gateway.relay import Downstream, RetryPolicy, parse_downstream


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:2525", Downstream("127.0.0.1", 2525)),
        ("smtp://mail.contoso.com", Downstream("mail.contoso.com", 25)),
        ("SMTP://mail.contoso.com:25/", Downstream("mail.contoso.com", 25)),
        ("smtp+starttls://mail.contoso.com:587", Downstream("mail.contoso.com", 587, True)),
        ("smtp://[::1]:2525", Downstream("::1", 2525)),
        ("smtp://mx.contoso.com:25?timeout=15", Downstream("mx.contoso.com", 25, False, 15.0)),
    ],
)
def test_parse_downstream_accepts_smtp_urls(url: str, expected: Downstream) -> None:
    assert parse_downstream(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://mail.contoso.com", "scheme must be smtp://"),
        ("smtps://mail.contoso.com", "scheme must be smtp://"),
        ("mail.contoso.com:25", "scheme must be smtp://"),
        ("smtp://", "no host name"),
        ("smtp://:25", "no host name"),
        ("smtp://mail.contoso.com:99999", "port must be a number"),
        ("smtp://mail.contoso.com:0", "port must be a number"),
        ("smtp://mail.contoso.com:abc", "port must be a number"),
        ("smtp://user:secret@mail.contoso.com", "credentials"),
        ("smtp://mail.contoso.com/relay", "no path"),
        ("smtp://mail.contoso.com?tls=yes", "unknown parameter 'tls'"),
        ("smtp://mail.contoso.com?timeout=soon", "timeout must be seconds"),
        ("smtp://mail.contoso.com?timeout=0", "timeout must be seconds"),
    ],
)
def test_parse_downstream_names_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_downstream(url)


@pytest.mark.parametrize(
    "url", ["smtp://user:hunter2@mail.contoso.com", "smtps://user:hunter2@mail.contoso.com:25"]
)
def test_parse_downstream_errors_never_repeat_a_password(url: str) -> None:
    with pytest.raises(ValueError, match=r"\*\*\*@mail\.contoso\.com") as error:
        parse_downstream(url)
    assert "hunter2" not in str(error.value)


def test_backoff_grows_by_the_factor_up_to_the_cap() -> None:
    policy = RetryPolicy()  # 60 s, doubling, at most an hour
    assert [policy.delay(n) for n in range(1, 9)] == [
        60.0,
        120.0,
        240.0,
        480.0,
        960.0,
        1920.0,
        3600.0,
        3600.0,
    ]
    assert policy.delay(100_000) == 3600.0  # no overflow after many attempts


@pytest.mark.parametrize(
    "kwargs",
    [{"first_delay": 0}, {"max_delay": -1}, {"max_age": -1}, {"factor": 0.5}],
)
def test_nonsense_retry_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry"):
        RetryPolicy(**kwargs)
