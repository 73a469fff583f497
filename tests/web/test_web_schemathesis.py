"""A property-based run of the API's own OpenAPI document (schemathesis): generated requests,
valid and invalid, for every operation, signed in with the session cookie and the CSRF header.

The schema is loaded from the app in-process (``schemathesis.openapi.from_asgi``); it is only
served to signed-in users, so the loader sends the cookie too. The store holds a quarantined
campaign message and events, so list, detail and dashboard calls meet real data. Checks: no
5xx ever; responses match the documented status codes, content types and schemas.

``DELETE /api/session`` (sign-out) is left out: it would end the session the run uses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.web.conftest import ADMIN, PASSWORD, Web

from dsguard.store import repository as repo

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_session(
    make_web: Callable[..., Web], hold: Callable[..., str]
) -> tuple[Web, dict[str, str], str]:
    # Generous throttling: generated sign-ins with random passwords must not lock the
    # address the run itself signed in from (that would be a 429, correctly, but useless).
    web = make_web(login_max_failures=100_000)
    hold()
    repo.record_event(
        web.store,
        front_door="gateway",
        client_ip="139.28.36.117",
        helo="WIN-3J8KQ2H1LDF",
        country="UA",
        mail_from="joe@contoso.com",
        rcpt_to=["joe@contoso.com"],
        header_from="joe@contoso.com",
        attribution="anonymous",
        p1="would_reject",
        p2="would_reject",
        mode="on",
        decision="refused",
        verdict=None,
        score=None,
        finding_ids=[],
        message_id=None,
        subject="New Missed Fax-msg",
        queue_id=None,
        at=datetime.now(UTC),
    )
    session, cookie = web.app.state.web.sessions.create(ADMIN)
    assert PASSWORD  # the admin exists in the store (the account check runs every 15 s)
    return web, {"dsguard_session": cookie}, session.csrf_token


@pytest.fixture
def api_schema(api_session: tuple[Web, dict[str, str], str]) -> Any:
    web, cookies, _csrf = api_session
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return schemathesis.openapi.from_asgi("/api/openapi.json", web.app, headers={"Cookie": cookie})


OPERATIONS = {
    "GET /api/session",
    "POST /api/session",
    "GET /api/quarantine",
    "GET /api/quarantine/{qid}",
    "GET /api/quarantine/{qid}/raw",
    "POST /api/quarantine/{qid}/release",
    "DELETE /api/quarantine/{qid}",
    "GET /api/events",
    "GET /api/dashboard",
    "GET /api/audit",
    "POST /api/scan",
}


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"]
)
def test_the_api_never_fails_with_a_server_error(
    api_session: tuple[Web, dict[str, str], str], api_schema: Any, mode: GenerationMode
) -> None:
    _web, cookies, csrf = api_session
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= OPERATIONS | {"DELETE /api/session"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        if operation.label == "DELETE /api/session":
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(
                headers={"X-CSRF-Token": csrf}, cookies=cookies, checks=CHECKS
            )
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        call()
    # The run was signed in (no 401) and reached the handlers, not only the validation layer.
    assert not any(
        401 in codes for label, codes in statuses.items() if label != "POST /api/session"
    )
    if mode is GenerationMode.POSITIVE:
        for label in (
            "GET /api/quarantine",
            "GET /api/events",
            "GET /api/dashboard",
            "POST /api/scan",
        ):
            assert 200 in statuses[label], (label, statuses[label])
