"""Sign-in, sessions and the sign-in gate of the web UI.

Nothing works without signing in; cookies are hardened; sessions end on sign-out, after the
idle timeout, after their absolute lifetime, and when the admin account is removed; sign-in
is throttled per IP and per user; every response carries the security headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http.cookies import SimpleCookie

import pytest
from tests.web.conftest import (
    ADMIN,
    PASSWORD,
    SAMPLE_QID,
    Admin,
    Web,
    app_routes,
    csrf_of,
    login_token,
    sign_in,
)

from dsguard.store import repository as repo
from dsguard.web.sessions import ACCOUNT_RECHECK_SECONDS


def _set_cookie(response: object) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):  # type: ignore[attr-defined]
        jar.load(header)
    return jar


def test_every_page_and_action_sends_a_signed_out_browser_to_sign_in(web: Web) -> None:
    checked = 0
    with web.client() as client:
        for method, path in app_routes(web):
            if path.startswith("/api") or path in ("/login", "/favicon.ico"):
                continue
            response = client.request(method, path, follow_redirects=False)
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/login"), (method, path)
            checked += 1
    assert checked >= 10  # dashboard, quarantine pages and actions, audit, events, scan, logout


def test_every_api_call_answers_401_json_without_a_session(web: Web) -> None:
    checked = 0
    with web.client() as client:
        for method, path in [*app_routes(web), ("GET", "/api/openapi.json")]:
            if not path.startswith("/api") or (method, path) == ("POST", "/api/session"):
                continue
            response = client.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json() == {"detail": "not signed in"}
            checked += 1
    assert checked >= 10


def test_a_page_remembers_where_the_admin_wanted_to_go(web: Web) -> None:
    with web.client() as client:
        first = client.get("/quarantine?verdict=malicious", follow_redirects=False)
        assert first.headers["location"] == "/login?next=%2Fquarantine%3Fverdict%3Dmalicious"
        page = client.get(first.headers["location"])
        assert 'name="next" value="/quarantine?verdict=malicious"' in page.text
        response = client.post(
            "/login",
            data={
                "username": ADMIN,
                "password": PASSWORD,
                "login_token": login_token(client),
                "next": "/quarantine?verdict=malicious",
            },
            follow_redirects=False,
        )
        assert response.headers["location"] == "/quarantine?verdict=malicious"


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", ""],
)
def test_sign_in_never_redirects_off_site(web: Web, target: str) -> None:
    with web.client() as client:
        response = client.post(
            "/login",
            data={
                "username": ADMIN,
                "password": PASSWORD,
                "login_token": login_token(client),
                "next": target,
            },
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"


def test_sign_in_sets_a_hardened_session_cookie_and_is_audited(web: Web) -> None:
    with web.client() as client:
        response = sign_in(client)
        assert response.status_code == 303
        cookie = _set_cookie(response)["dsguard_session"]
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "strict"
        assert cookie["path"] == "/"
        assert not cookie["secure"]  # plain HTTP on loopback: a Secure cookie would be dropped
        assert int(cookie["max-age"]) == int(web.config.web.session_max_age)
        dashboard = client.get("/")
        assert dashboard.status_code == 200
        assert "Direct Send dashboard" in dashboard.text
    [entry] = repo.list_audit(web.store, target="web").items
    assert (entry.actor, entry.action, entry.detail) == ("web:admin", "login", "from 127.0.0.1")


def test_over_https_the_cookie_is_secure_host_only_and_hsts_is_sent(web: Web) -> None:
    with web.client(base_url="https://testserver") as client:
        response = sign_in(client)
        assert response.status_code == 303
        cookie = _set_cookie(response)["__Host-dsguard_session"]
        assert cookie["secure"] is True
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "strict"
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["strict-transport-security"].startswith("max-age=")


def test_wrong_password_and_unknown_user_get_the_same_answer(web: Web) -> None:
    with web.client() as client:
        wrong = sign_in(client, password="not the password")
        unknown = sign_in(client, username="mallory")
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong user name or password." in wrong.text
        assert "Wrong user name or password." in unknown.text
        assert "dsguard_session" not in wrong.headers.get("set-cookie", "")
        assert client.get("/", follow_redirects=False).status_code == 303
    failures = [e for e in repo.list_audit(web.store).items if e.action == "login_failed"]
    assert {(e.actor, e.detail) for e in failures} == {
        ("web:admin", "from 127.0.0.1"),
        ("web:mallory", "from 127.0.0.1"),
    }


def test_sign_in_is_throttled_per_ip(make_web: Callable[..., Web]) -> None:
    web = make_web(login_max_failures=3, login_window=600.0)
    with (
        web.client(client_ip="198.51.100.7") as attacker,
        web.client(client_ip="192.0.2.1") as other,
    ):
        for name in ("alice", "bob", "carol"):  # one IP guessing several accounts
            assert sign_in(attacker, username=name, password="guess").status_code == 401
        locked = sign_in(attacker)  # even the right password is not checked now
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 600
        assert "Too many failed sign-ins" in locked.text
        assert sign_in(other).status_code == 303  # another address is not affected
        web.clock.advance(601)
        assert sign_in(attacker).status_code == 303


def test_sign_in_is_throttled_per_user(make_web: Callable[..., Web]) -> None:
    web = make_web(login_max_failures=3, login_window=600.0)
    repo.add_user(web.store, "second", "another long password", kind="admin")
    for i in range(3):  # a spray against one account from different addresses
        with web.client(client_ip=f"198.51.100.{i + 1}") as client:
            assert sign_in(client, password="guess").status_code == 401
    with web.client(client_ip="192.0.2.9") as client:
        assert sign_in(client).status_code == 429  # the user name is locked for now
        assert (
            sign_in(client, username="second", password="another long password").status_code == 303
        )
    web.clock.advance(601)
    with web.client(client_ip="192.0.2.9") as client:
        assert sign_in(client).status_code == 303


def test_api_sign_in_is_throttled_too(make_web: Callable[..., Web]) -> None:
    web = make_web(login_max_failures=2)
    with web.client() as client:
        for _ in range(2):
            assert (
                client.post("/api/session", json={"username": ADMIN, "password": "x"}).status_code
                == 401
            )
        response = client.post("/api/session", json={"username": ADMIN, "password": PASSWORD})
        assert response.status_code == 429
        assert response.headers["retry-after"]


def test_the_sign_in_form_only_works_for_the_browser_it_was_given_to(web: Web) -> None:
    with web.client() as victim, web.client() as attacker:
        token = login_token(attacker)  # a form the attacker fetched, posted from the victim
        response = victim.post(
            "/login",
            data={"username": ADMIN, "password": PASSWORD, "login_token": token, "next": "/"},
            follow_redirects=False,
        )
        assert response.status_code == 403
        assert "expired or was not sent by this browser" in response.text
        assert victim.get("/", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session_on_the_server(signed_in: Admin, web: Web) -> None:
    stolen = dict(signed_in.client.cookies)
    response = signed_in.post("/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303
    with web.client() as thief:
        thief.cookies.update(stolen)  # a copy of the cookie made before signing out
        assert thief.get("/", follow_redirects=False).status_code == 303
        assert thief.get("/api/quarantine").status_code == 401
    actions = [e.action for e in repo.list_audit(web.store, target="web").items]
    assert actions[:2] == ["logout", "login"]


def test_api_sign_in_and_out(web: Web) -> None:
    with web.client() as client:
        response = client.post("/api/session", json={"username": ADMIN, "password": PASSWORD})
        assert response.status_code == 200
        info = response.json()
        assert info["username"] == ADMIN
        assert client.get("/api/session").json()["csrf_token"] == info["csrf_token"]
        assert client.delete("/api/session").status_code == 403  # no CSRF header
        assert (
            client.delete("/api/session", headers={"X-CSRF-Token": info["csrf_token"]}).status_code
            == 204
        )
        assert client.get("/api/session").status_code == 401


def test_idle_sessions_expire(make_web: Callable[..., Web]) -> None:
    web = make_web(session_idle_timeout=600.0)
    with web.client() as client:
        sign_in(client)
        for _ in range(3):  # activity keeps it alive
            web.clock.advance(500)
            assert client.get("/").status_code == 200
        web.clock.advance(601)
        assert client.get("/", follow_redirects=False).status_code == 303


def test_sessions_end_after_their_absolute_lifetime(make_web: Callable[..., Web]) -> None:
    web = make_web(session_idle_timeout=600.0, session_max_age=3600.0)
    with web.client() as client:
        sign_in(client)
        for _ in range(7):  # 3500 s of steady use
            web.clock.advance(500)
            assert client.get("/").status_code == 200
        web.clock.advance(200)  # 3700 s after sign-in
        assert client.get("/", follow_redirects=False).status_code == 303


def test_removing_the_admin_ends_its_sessions(signed_in: Admin, web: Web) -> None:
    assert signed_in.client.get("/").status_code == 200
    assert repo.remove_user(web.store, ADMIN, "admin")
    web.clock.advance(ACCOUNT_RECHECK_SECONDS)
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303
    repo.add_user(web.store, ADMIN, PASSWORD, kind="admin")  # re-created: a new sign-in is needed
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303


def test_forged_and_foreign_cookies_are_refused(
    signed_in: Admin, make_web: Callable[..., Web]
) -> None:
    value = signed_in.client.cookies["dsguard_session"]
    sid, _dot, signature = value.rpartition(".")
    other = make_web()  # same store, different app: a different in-memory session table
    with other.client() as client:
        client.cookies["dsguard_session"] = value
        assert client.get("/", follow_redirects=False).status_code == 303
    with other.client() as client:
        client.cookies["dsguard_session"] = sid + "." + signature[::-1]
        assert client.get("/", follow_redirects=False).status_code == 303
    signed_in.client.cookies.clear()
    signed_in.client.cookies["dsguard_session"] = sid + "x." + signature
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303
    signed_in.client.cookies["dsguard_session"] = value  # the genuine one still works
    assert signed_in.client.get("/").status_code == 200


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def _check_headers(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, (name, response)
    csp = headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["script-src"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert not re.search(r"https?:", csp)  # nothing from other hosts, no CDN


def test_every_kind_of_response_carries_the_security_headers(signed_in: Admin, web: Web) -> None:
    client = signed_in.client
    responses = [
        client.get("/"),
        client.get("/quarantine"),
        client.get("/api/quarantine"),
        client.get("/static/style.css"),
        client.get("/no/such/page"),
        client.get("/quarantine/not-an-id"),
        client.get("/api/quarantine/" + SAMPLE_QID),
    ]
    with web.client() as anonymous:
        responses += [
            anonymous.get("/login"),
            anonymous.get("/", follow_redirects=False),
            anonymous.get("/api/events"),
            anonymous.post("/api/session", json={"username": "x", "password": "y"}),
        ]
    for response in responses:
        _check_headers(response)
    assert responses[0].headers["cache-control"] == "no-store"  # mail data is never cached
    assert responses[2].headers["cache-control"] == "no-store"
    assert responses[3].headers["content-type"].startswith("text/css")


def test_the_openapi_document_is_for_signed_in_users(signed_in: Admin) -> None:
    document = signed_in.client.get("/api/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/api/quarantine",
        "/api/quarantine/{qid}",
        "/api/events",
        "/api/dashboard",
        "/api/scan",
    ):
        assert path in paths
    assert not any(not p.startswith("/api/") for p in paths)  # the pages are not part of it
    assert csrf_of(signed_in.client) == signed_in.csrf


def test_no_swagger_pages_that_would_load_scripts_from_a_cdn(signed_in: Admin) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert signed_in.client.get(path).status_code == 404
