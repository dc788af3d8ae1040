"""Tokens: hashed at rest, private file, roles, revocation, the local admin token."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ddos_shield.api.tokens import LOCAL_FILE, TOKENS_FILE, Role, TokenStore, read_local
from ddos_shield.errors import ShieldError


def test_created_tokens_are_stored_hashed_in_a_private_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    secret = store.create("noc", "operator")
    assert secret.startswith("dss_") and len(secret) >= 4 + 43  # 32 random bytes, base64url
    path = tmp_path / TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text and secret[4:] not in text
    (entry,) = json.loads(text)["tokens"]
    assert entry["name"] == "noc" and entry["role"] == "operator" and len(entry["digest"]) == 64
    tok = store.verify(secret)
    assert tok is not None and tok.name == "noc" and tok.role is Role.OPERATOR
    assert store.verify(secret + "x") is None and store.verify("") is None


def test_two_tokens_never_share_a_digest_and_another_store_sees_changes(tmp_path: Path) -> None:
    a, b = TokenStore(tmp_path), TokenStore(tmp_path)
    s1, s2 = a.create("one", "viewer"), a.create("two", "admin")
    assert s1 != s2
    assert [t.name for t in b.tokens()] == ["one", "two"]  # the running shield's view of the file
    assert b.verify(s2).role is Role.ADMIN  # type: ignore[union-attr]
    a.revoke("two")
    assert b.verify(s2) is None and b.verify(s1) is not None


@pytest.mark.parametrize(
    ("name", "role", "says"),
    [
        ("bad name", "viewer", "token name 'bad name'"),
        ("local", "viewer", "reserved"),
        ("x" * 65, "viewer", "token name"),
        ("ok", "root", "role 'root': expected viewer, operator or admin"),
    ],
)
def test_bad_names_and_roles_are_refused(tmp_path: Path, name: str, role: str, says: str) -> None:
    with pytest.raises((ShieldError, ValueError), match=says.replace("(", r"\(")):
        TokenStore(tmp_path).create(name, role)


def test_duplicates_and_unknown_revocations_are_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.create("noc", "viewer")
    with pytest.raises(ShieldError, match="exists already"):
        store.create("noc", "admin")
    with pytest.raises(ShieldError, match="no token named 'nobody'"):
        store.revoke("nobody")


def test_a_corrupt_token_file_is_named(tmp_path: Path) -> None:
    (tmp_path / TOKENS_FILE).write_text("{not json")
    with pytest.raises(ShieldError, match=f"{tmp_path / TOKENS_FILE}: unreadable token file"):
        TokenStore(tmp_path).verify("dss_x")


def test_the_local_admin_token_lives_while_the_shield_runs(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    old = os.umask(0)  # even with a permissive umask the file is private
    try:
        store.start_local("http://127.0.0.1:8470")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / LOCAL_FILE).stat().st_mode) == 0o600
    local = read_local(tmp_path)
    assert local is not None and local["url"] == "http://127.0.0.1:8470"
    tok = store.verify(local["token"])
    assert tok is not None and tok.name == "local" and tok.role is Role.ADMIN
    assert TokenStore(tmp_path).verify(local["token"]) is None  # held in memory, not in the token file
    store.stop_local()
    assert read_local(tmp_path) is None and store.verify(local["token"]) is None
