"""E-mail alerts through SMTP (smtplib): a short subject, the facts in the body, the
JSON payload attached for tools that read mail."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from typing import Any

from ddos_shield.alerts.message import Alert
from ddos_shield.alerts.sender import Permanent, Retryable
from ddos_shield.config import Email


def render_body(alert: Alert) -> str:
    p = alert.payload
    lines = [alert.summary, "", f"time: {p['time']}", f"severity: {alert.severity}"]
    a: dict[str, Any] = p.get("attack") or {}
    if a:
        lines += [
            "",
            f"attack {a.get('attack_id')}: {', '.join(a.get('types') or [])}",
            f"target: {a.get('target')} (host group {a.get('group')})",
            f"rate now: {a.get('pps')} pps, {a.get('bps')} bit/s; peak {a.get('peak_pps')} pps, {a.get('peak_bps')} bit/s",
            f"duration: {a.get('duration_seconds')} s",
        ]
        if a.get("url"):
            lines.append(f"dashboard: {a['url']}")
    for e in p.get("evidence") or []:
        if isinstance(e, dict):
            limit = (
                f"vs limit {e['limit_pps']} pps"
                if e.get("limit_pps") is not None
                else f"vs floor {e.get('floor_pps')} pps"
            )
            lines.append(f"evidence: {e.get('category')} {e.get('pps')} pps {limit} ({e.get('basis', '')})")
    m: dict[str, Any] = p.get("mitigation") or {}
    if m:
        lines += [
            "",
            f"rule {m.get('mitigation_id')}: {m.get('action')} {m.get('description')}",
            f"backend: {m.get('backend')}; actor: {m.get('actor')}; reason: {m.get('reason')}",
            f"expected collateral: {m.get('collateral_share')}; attack share matched: {m.get('attack_share')}",
        ]
    return "\n".join(lines) + "\n"


class EmailSender:
    def __init__(self, cfg: Email) -> None:
        self.cfg = cfg
        self.name = f"email:{cfg.smtp_host}:{cfg.smtp_port}"
        self.attempts = 3
        self.backoff = 2.0

    def send(self, alert: Alert) -> None:
        msg = EmailMessage()
        msg["Subject"] = f"[DDoS Shield] {alert.summary}"[:200]
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.recipients)
        msg["X-DDoS-Shield-Event"] = alert.kind
        msg.set_content(render_body(alert))
        msg.add_attachment(
            json.dumps(alert.payload, indent=2, default=str).encode(),
            maintype="application",
            subtype="json",
            filename=f"{alert.kind}.json",
        )
        try:
            with smtplib.SMTP(self.cfg.smtp_host, self.cfg.smtp_port, timeout=self.cfg.timeout_seconds) as smtp:
                if self.cfg.starttls:
                    smtp.starttls()
                if self.cfg.username:
                    smtp.login(self.cfg.username, self.cfg.password)
                smtp.send_message(msg)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPAuthenticationError) as e:
            raise Permanent(f"{self.name}: {e}") from e
        except (TimeoutError, smtplib.SMTPException, OSError) as e:
            raise Retryable(f"{self.name}: {e}") from e

    def close(self) -> None:
        return None
