"""CSRF: every state change needs the session's token, and cross-site requests are refused.

The attacker's position: a page in the admin's browser (another site, or another port on the
same host, which is "same-site" for cookies) that makes the browser send a request with the
admin's cookies. Without the token, and with the browser's Origin / Sec-Fetch-Site headers,
nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.web.conftest import SAMPLE_QID, Admin, Web, app_routes, sign_in

from dsguard.store import repository as repo


def _state_changes(web: Web, qid: str) -> list[tuple[str, str]]:
    changes = []
    for method, path in app_routes(web):
        if method in ("GET", "HEAD", "OPTIONS") or (
            path in ("/login", "/api/session") and method == "POST"
        ):
            continue
        changes.append((method, path.replace(SAMPLE_QID, qid)))
    return changes


def test_every_state_change_is_refused_without_the_token(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    qid = hold()
    changes = _state_changes(web, qid)
    assert ("POST", f"/quarantine/{qid}/release") in changes
    assert ("DELETE", f"/api/quarantine/{qid}") in changes
    assert ("POST", "/logout") in changes
    for method, path in changes:
        for token in (None, "", "x" * 43, signed_in.csrf + "x"):
            headers = {} if token is None else {"X-CSRF-Token": token}
            response = signed_in.client.request(
                method, path, headers=headers, follow_redirects=False
            )
            assert response.status_code == 403, (method, path, token, response.status_code)
        form = signed_in.client.request(
            method, path, data={"csrf_token": "wrong"}, follow_redirects=False
        )
        assert form.status_code == 403, (method, path)
    item = repo.get_quarantined(web.store, qid)
    assert item is not None and item.status == "held" and item.raw is not None
    assert signed_in.client.get("/").status_code == 200  # still signed in: logout was refused too


def test_a_token_from_another_session_does_not_count(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    qid = hold()
    with web.client() as other:
        sign_in(other)
        other_token = other.get("/api/session").json()["csrf_token"]
    assert other_token != signed_in.csrf
    response = signed_in.client.post(
        f"/quarantine/{qid}/delete", data={"csrf_token": other_token}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "CSRF token missing or wrong" in response.text
    assert repo.get_quarantined(web.store, qid).status == "held"  # type: ignore[union-attr]


def test_with_the_token_the_same_request_works(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    qid = hold()
    response = signed_in.post(f"/quarantine/{qid}/delete")
    assert response.status_code == 303
    assert repo.get_quarantined(web.store, qid).status == "deleted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port on the same host
        {"Origin": "http://evil.example"},
        {"Origin": "http://testserver:8080"},
    ],
)
def test_cross_site_requests_are_refused_even_with_the_token(
    signed_in: Admin, web: Web, hold: Callable[..., str], headers: dict[str, str]
) -> None:
    qid = hold()
    response = signed_in.api("POST", f"/api/quarantine/{qid}/release", headers=headers)
    assert response.status_code == 403
    assert response.json() == {"detail": "cross-site request refused"}
    assert repo.get_quarantined(web.store, qid).status == "held"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Origin": "null"},  # our own form under no-referrer
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
        {"Origin": "http://testserver"},
    ],
)
def test_same_origin_requests_with_the_token_pass(
    signed_in: Admin, web: Web, hold: Callable[..., str], headers: dict[str, str]
) -> None:
    qid = hold()
    response = signed_in.post(f"/quarantine/{qid}/delete", headers=headers)
    assert response.status_code == 303


def test_cross_site_sign_in_is_refused(web: Web) -> None:
    with web.client() as client:
        response = client.post(
            "/api/session",
            json={"username": "admin", "password": "correct horse battery staple"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert response.status_code == 403
        assert "dsguard_session" not in response.headers.get("set-cookie", "")


def test_api_sign_in_takes_json_only(web: Web) -> None:
    # A cross-site HTML form can send urlencoded or text/plain bodies, never application/json.
    with web.client() as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            response = client.post(
                "/api/session",
                content=b'{"username": "admin", "password": "correct horse battery staple"}',
                headers={"Content-Type": content_type},
            )
            assert response.status_code == 422, content_type
            assert "dsguard_session" not in response.headers.get("set-cookie", "")


def test_state_changes_are_never_reachable_by_get(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    qid = hold()
    for path in (
        f"/quarantine/{qid}/release",
        f"/quarantine/{qid}/delete",
        "/logout",
        f"/api/quarantine/{qid}/release",
    ):
        assert signed_in.client.get(path).status_code == 405, path
    assert repo.get_quarantined(web.store, qid).status == "held"  # type: ignore[union-attr]
