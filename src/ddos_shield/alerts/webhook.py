"""JSON webhooks: one POST per alert, signed with HMAC-SHA256.

The body is the alert's payload as compact JSON (UTF-8).  With a secret configured,
``X-DDoS-Shield-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body bytes with
the secret as key; a receiver recomputes it over the raw body before parsing it
(compare with :func:`hmac.compare_digest`).  ``X-DDoS-Shield-Event`` names the kind.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from ddos_shield.alerts.message import Alert
from ddos_shield.alerts.sender import Permanent, Retryable
from ddos_shield.config import Webhook

SIGNATURE_HEADER = "X-DDoS-Shield-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, cfg: Webhook) -> None:
        self.cfg = cfg
        self.name = f"webhook:{httpx.URL(cfg.url).host}"
        self.attempts = cfg.attempts
        self.backoff = cfg.backoff_seconds
        self._client = httpx.Client(timeout=cfg.timeout_seconds, follow_redirects=False)

    def send(self, alert: Alert) -> None:
        body = json.dumps(alert.payload, separators=(",", ":"), default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ddos-shield",
            "X-DDoS-Shield-Event": alert.kind,
        }
        if self.cfg.secret:
            headers[SIGNATURE_HEADER] = sign(self.cfg.secret, body)
        try:
            r = self._client.post(self.cfg.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            raise Retryable(f"{self.cfg.url}: {e}") from e
        if r.status_code >= 500 or r.status_code == 429:
            raise Retryable(f"{self.cfg.url}: HTTP {r.status_code}")
        if r.status_code >= 400:
            raise Permanent(f"{self.cfg.url}: HTTP {r.status_code}")

    def close(self) -> None:
        self._client.close()
