"""SMTP AUTH and web admin users: argon2id hashes, verification, rehashing."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from dsguard.store import Store
from dsguard.store.models import Account
from dsguard.store.repository import (
    add_user,
    list_users,
    remove_user,
    verify_password,
)

PASSWORD = "correct horse battery staple"


def _stored_hash(store: Store, username: str, kind: str) -> str:
    with store.session(write=False) as session:
        value = session.scalar(
            select(Account.password_hash).where(Account.username == username, Account.kind == kind)
        )
    assert value is not None
    return value


def test_add_and_verify(store: Store) -> None:
    add_user(
        store, "scanner", PASSWORD, kind="smtp", send_as=["Scanner@Contoso.com", "fax.contoso.com"]
    )
    user = verify_password(store, "scanner", PASSWORD, "smtp")
    assert user is not None
    assert user.username == "scanner"
    assert user.kind == "smtp"
    assert user.send_as == ("scanner@contoso.com", "fax.contoso.com")
    assert user.created_at.tzinfo is not None


def test_wrong_password_unknown_user_and_wrong_kind_fail(store: Store) -> None:
    add_user(store, "alice", PASSWORD, kind="admin")
    assert verify_password(store, "alice", PASSWORD + "x", "admin") is None
    assert verify_password(store, "alice", "", "admin") is None
    assert verify_password(store, "Alice", PASSWORD, "admin") is None  # names are exact
    assert verify_password(store, "mallory", PASSWORD, "admin") is None
    # An admin account is not an SMTP AUTH account.
    assert verify_password(store, "alice", PASSWORD, "smtp") is None


def test_hash_is_argon2id_and_never_the_password(store: Store) -> None:
    add_user(store, "alice", PASSWORD, kind="admin")
    stored = _stored_hash(store, "alice", "admin")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    with store.engine.connect() as connection:
        dump = repr(connection.exec_driver_sql("SELECT * FROM account").all())
    assert PASSWORD not in dump


def test_same_password_gets_different_salts(store: Store) -> None:
    add_user(store, "a", PASSWORD, kind="smtp")
    add_user(store, "b", PASSWORD, kind="smtp")
    assert _stored_hash(store, "a", "smtp") != _stored_hash(store, "b", "smtp")


def test_duplicate_add_is_a_value_error(store: Store) -> None:
    add_user(store, "alice", PASSWORD, kind="admin")
    with pytest.raises(ValueError, match="already exists"):
        add_user(store, "alice", "other password", kind="admin")
    # The first password still works; the same name may exist as the other kind.
    assert verify_password(store, "alice", PASSWORD, "admin") is not None
    add_user(store, "alice", "smtp password", kind="smtp")
    assert verify_password(store, "alice", "smtp password", "smtp") is not None


def test_remove_and_list(store: Store) -> None:
    add_user(store, "zed", PASSWORD, kind="smtp")
    add_user(store, "amy", PASSWORD, kind="smtp")
    add_user(store, "root", PASSWORD, kind="admin")
    assert [u.username for u in list_users(store, "smtp")] == ["amy", "zed"]
    assert [u.username for u in list_users(store, "admin")] == ["root"]
    assert remove_user(store, "zed", "smtp") is True
    assert remove_user(store, "zed", "smtp") is False
    assert remove_user(store, "root", "smtp") is False  # wrong kind
    assert [u.username for u in list_users(store, "smtp")] == ["amy"]
    assert verify_password(store, "zed", PASSWORD, "smtp") is None


@pytest.mark.parametrize(
    ("username", "password"),
    [("", PASSWORD), (" padded", PASSWORD), ("a\nb", PASSWORD), ("ok", ""), ("x" * 300, "p")],
)
def test_invalid_names_and_passwords_are_refused(
    store: Store, username: str, password: str
) -> None:
    with pytest.raises(ValueError, match=r"username|password"):
        add_user(store, username, password, kind="smtp")
    assert list_users(store, "smtp") == []


def test_outdated_hash_is_upgraded_on_successful_login(store: Store) -> None:
    add_user(store, "legacy", PASSWORD, kind="smtp")
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    with store.session() as session:
        session.execute(
            update(Account).where(Account.username == "legacy").values(password_hash=weak)
        )

    assert verify_password(store, "legacy", "wrong", "smtp") is None
    assert _stored_hash(store, "legacy", "smtp") == weak  # a failed login changes nothing

    assert verify_password(store, "legacy", PASSWORD, "smtp") is not None
    upgraded = _stored_hash(store, "legacy", "smtp")
    assert upgraded != weak
    assert not PasswordHasher().check_needs_rehash(upgraded)
    assert verify_password(store, "legacy", PASSWORD, "smtp") is not None


def test_corrupt_stored_hash_fails_closed(store: Store) -> None:
    add_user(store, "broken", PASSWORD, kind="admin")
    with store.session() as session:
        session.execute(
            update(Account).where(Account.username == "broken").values(password_hash=PASSWORD)
        )
    assert verify_password(store, "broken", PASSWORD, "admin") is None
