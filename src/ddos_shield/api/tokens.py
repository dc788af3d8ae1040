"""API tokens: names, roles, and a file of their hashes.

A token is 32 random bytes (``secrets.token_urlsafe``), shown once when it is created;
the file (``api-tokens.json`` in ``shield.state_dir``, mode 0600) keeps only a salted
SHA-256 of it.  A slow password hash (scrypt, argon2) exists to make *guessing* a
low-entropy secret expensive; a 256-bit random token cannot be guessed whatever the
hash costs, so one SHA-256 is enough and keeps every request cheap.  The salt only
stops two files from sharing hashes.

Roles are ordered: ``viewer`` reads, ``operator`` also steers mitigations, ``admin``
also reads and reloads the configuration.

The running shield also holds one in-memory admin token of its own, written to
``api-local.json`` in the state directory (0600, root's) for the local command line:
whoever can read that file is root on the box, and root can already stop the shield,
edit its configuration and write its kernel maps, so the file grants nothing new; it
lets ``ddos-shield mitigation ...`` work on the box without any set-up.  It is made
anew at every start and removed at stop.

>>> import tempfile
>>> store = TokenStore(tempfile.mkdtemp())
>>> secret = store.create("noc", "operator")
>>> store.verify(secret).role
<Role.OPERATOR: 2>
>>> store.verify("wrong") is None
True
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddos_shield.errors import ShieldError

TOKENS_FILE = "api-tokens.json"
LOCAL_FILE = "api-local.json"
#: the name the shield's own local token carries (reserved: no stored token may use it)
LOCAL_NAME = "local"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"role {text!r}: expected viewer, operator or admin") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Token:
    """A token as the file holds it (never the secret itself)."""

    name: str
    role: Role
    created: float
    salt: str = ""
    digest: str = ""

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "role": str(self.role), "created": round(self.created, 3)}


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_secret() -> str:
    return "dss_" + secrets.token_urlsafe(32)


class TokenStore:
    """The token file of one state directory; re-read when it changes on disk, so
    tokens created or revoked by the command line take effect in the running shield
    at the next request."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / TOKENS_FILE
        self._cache: list[Token] = []
        self._stamp: tuple[int, int] | None = None
        self._local: Token | None = None

    # ---- reading ----------------------------------------------------------------

    def tokens(self) -> list[Token]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache, self._stamp = [], None
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._cache, self._stamp = self._read(), stamp
        return list(self._cache)

    def _read(self) -> list[Token]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {data.get('version')!r}, expected {FORMAT_VERSION}")
            return [
                Token(t["name"], Role.parse(t["role"]), float(t["created"]), t["salt"], t["digest"])
                for t in data["tokens"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ShieldError(f"{self.path}: unreadable token file: {e}") from e

    def verify(self, secret: str) -> Token | None:
        """The token whose secret this is, or None.  Every stored digest is compared in
        constant time, so the answer's timing says nothing about which one was close."""
        found: Token | None = None
        candidates = self.tokens() + ([self._local] if self._local else [])
        for t in candidates:
            if hmac.compare_digest(_digest(t.salt, secret), t.digest):
                found = t
        return found

    # ---- changing (the command line) ----------------------------------------------

    def create(self, name: str, role: str | Role) -> str:
        """Add a token; returns its secret (the only time it exists outside the caller)."""
        if not _NAME.match(name) or name == LOCAL_NAME:
            raise ShieldError(
                f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-' ('{LOCAL_NAME}' is reserved)"
            )
        r = role if isinstance(role, Role) else Role.parse(role)
        secret = new_secret()
        salt = secrets.token_hex(16)
        with self._locked():
            tokens = self.tokens()
            if any(t.name == name for t in tokens):
                raise ShieldError(f"token {name!r} exists already; revoke it first")
            self._write([*tokens, Token(name, r, time.time(), salt, _digest(salt, secret))])
        return secret

    def revoke(self, name: str) -> None:
        with self._locked():
            tokens = self.tokens()
            if not any(t.name == name for t in tokens):
                raise ShieldError(f"no token named {name!r}")
            self._write([t for t in tokens if t.name != name])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / (TOKENS_FILE + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            self._stamp = None  # another writer may have changed it while we waited
            yield

    def _write(self, tokens: list[Token]) -> None:
        data = {
            "version": FORMAT_VERSION,
            "tokens": [
                {"name": t.name, "role": str(t.role), "created": t.created, "salt": t.salt, "digest": t.digest}
                for t in tokens
            ],
        }
        _write_private(self.path, json.dumps(data, indent=1) + "\n")
        self._stamp = None

    # ---- the running shield's own local admin token ---------------------------------

    def start_local(self, url: str, cafile: str = "") -> None:
        """Make the local admin token and write it, with the API's address, for root."""
        secret = new_secret()
        salt = secrets.token_hex(16)
        self._local = Token(LOCAL_NAME, Role.ADMIN, time.time(), salt, _digest(salt, secret))
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.dir / LOCAL_FILE, json.dumps({"url": url, "token": secret, "cafile": cafile}) + "\n")

    def stop_local(self) -> None:
        self._local = None
        (self.dir / LOCAL_FILE).unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask and ignored for a leftover file
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_local(state_dir: str | Path) -> dict[str, str] | None:
    """The local token file of a running shield (None when absent or unreadable)."""
    try:
        data = json.loads((Path(state_dir) / LOCAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "token" in data and "url" in data else None


def loopback_if_any(host: str) -> str:
    """A wildcard listen address is reached on loopback from the shield's own host."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
