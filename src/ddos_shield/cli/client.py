"""The command line's client of the running shield's API (``ddos-shield mitigation ...``).

Where to connect and with which token, first found wins:

* token: ``--token``, ``$DDOS_SHIELD_TOKEN``, then the running shield's local admin
  token (``api-local.json`` in ``shield.state_dir``, readable by root only: see
  :mod:`ddos_shield.api.tokens` for why that is safe);
* address: ``--url``, ``$DDOS_SHIELD_URL``, the local file's, ``api.listen`` of
  ``--config``, then ``http://127.0.0.1:8470``.
"""

from __future__ import annotations

import getpass
import os
import ssl
from typing import Any

import httpx

from ddos_shield.api.tokens import loopback_if_any, read_local
from ddos_shield.config import Config
from ddos_shield.errors import ShieldError

DEFAULT_URL = "http://127.0.0.1:8470"


def _pinned(cafile: str) -> ssl.SSLContext:
    """Trust exactly the shield's own certificate on loopback: it may be issued for a
    name other than 127.0.0.1, and a leaf certificate is accepted as its own anchor."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


class ApiClient:
    """Calls the API; an error answer becomes a :class:`ShieldError` with the API's reason."""

    def __init__(self, url: str, token: str, *, verify: ssl.SSLContext | str | bool = True, local: bool = False):
        headers = {"authorization": f"Bearer {token}"}
        if local:
            # recorded as the actor of changes made with the local token (cli:<user>)
            headers["x-ddos-shield-user"] = os.environ.get("SUDO_USER") or getpass.getuser()
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=10.0)

    @classmethod
    def resolve(
        cls, config: Config, *, url: str | None = None, token: str | None = None, cafile: str | None = None
    ) -> ApiClient:
        local = read_local(config.shield.state_dir)
        token = token or os.environ.get("DDOS_SHIELD_TOKEN")
        use_local = False
        if not token and local is not None:
            token, use_local = local["token"], True
        if not token:
            raise ShieldError(
                "no API token: give --token or $DDOS_SHIELD_TOKEN "
                f"(or run as root on the shield's host, where {config.shield.state_dir}/api-local.json is read)"
            )
        url = url or os.environ.get("DDOS_SHIELD_URL")
        if not url and local is not None:
            url = local["url"]
            cafile = cafile or local.get("cafile") or None
        if not url and config.api.listen:
            host, port = config.api.address()
            url = f"{'https' if config.api.tls_cert else 'http'}://{loopback_if_any(host)}:{port}"
        verify: ssl.SSLContext | bool = _pinned(cafile) if cafile else True
        return cls(url or DEFAULT_URL, token, verify=verify, local=use_local)

    def request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = self._http.request(method, "/api/v1" + path, json=json)
        except httpx.HTTPError as e:
            raise ShieldError(f"{self.url}: cannot reach the shield's API: {e}") from e
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if isinstance(detail, dict) and "errors" in detail:
                detail = "\n".join(detail["errors"])
            elif isinstance(detail, list):  # FastAPI's request validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise ShieldError(f"{method} {path}: {r.status_code}: {detail}")
        return r.json()

    def close(self) -> None:
        self._http.close()
