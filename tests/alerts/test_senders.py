"""Each receiver kind for real on loopback: a webhook server checking the signature
and a retry after a failure, syslog listeners on UDP and TCP (RFC 5424, CEF), and an
SMTP server (a minimal conversation, see receivers.py)."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest

from ddos_shield.alerts import AlertDispatcher
from ddos_shield.alerts.email import EmailSender
from ddos_shield.alerts.message import AlertBuilder
from ddos_shield.alerts.sender import SenderWorker
from ddos_shield.alerts.syslog import SyslogSender
from ddos_shield.alerts.webhook import SIGNATURE_HEADER, WebhookSender
from ddos_shield.config import Email, Syslog, Webhook, parse
from tests.alerts.receivers import SmtpServer, SyslogListener, WebhookReceiver
from tests.alerts.test_message import CONFIG, RULE, attack

SECRET = "s3cret-key"


def alerts() -> list[Any]:
    b = AlertBuilder(parse(CONFIG))
    evs = [
        attack("attack_start", 100.0),
        {**attack("mitigation_applied", 100.2), "rule": RULE, "backend": "xdp"},
        attack("attack_end", 130.0),
    ]
    return [a for ev in evs if (a := b.build(ev)) is not None]


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(fail_first=2)
    yield r
    r.close()


def test_webhook_signed_and_retried_after_failures(hook: WebhookReceiver) -> None:
    w = SenderWorker(WebhookSender(Webhook(url=hook.url, secret=SECRET, attempts=4, backoff_seconds=0.05)))
    for a in alerts():
        w.put(a)
    assert w.drain(20)
    w.close()
    got = hook.wait(3)
    assert [p["kind"] for p in got] == ["attack_start", "mitigation_applied", "attack_end"]
    assert hook.seen == 5  # the first alert took three tries
    assert w.counts == {"sent": 3, "failed": 0, "dropped": 0, "retried": 2}
    for headers, body in hook.requests:
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], want)
        assert headers["Content-Type"] == "application/json"
    assert got[1]["mitigation"]["collateral_share"] == 0.0004
    assert got[0]["attack"]["url"] == "https://shield.example.net/ui/attacks/7"


def test_webhook_gives_up_after_its_attempts() -> None:
    r = WebhookReceiver(fail_first=100)
    try:
        w = SenderWorker(WebhookSender(Webhook(url=r.url, attempts=3, backoff_seconds=0.01)))
        w.put(alerts()[0])
        assert w.drain(10)
        w.close()
        assert r.seen == 3 and w.counts["failed"] == 1 and w.counts["sent"] == 0
    finally:
        r.close()


RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\d+) (\S+) (-|\[.*?[^\\]\]) (.*)$", re.S)
SD_PARAM = re.compile(r'(\w+)="((?:[^"\\\]]|\\.)*)"')


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_syslog_rfc5424(protocol: str) -> None:
    lst = SyslogListener(protocol)
    try:
        w = SenderWorker(SyslogSender(Syslog(address=lst.address, protocol=protocol)))  # type: ignore[arg-type]
        for a in alerts():
            w.put(a)
        assert w.drain(10)
        w.close()
        msgs = lst.wait(3)
    finally:
        lst.close()
    assert len(msgs) == 3
    parsed = [RFC5424.match(m) for m in msgs]
    assert all(parsed)
    pri, ts, _host, app, _pid, msgid, sd, text = parsed[0].groups()  # type: ignore[union-attr]
    assert int(pri) == 4 * 8 + 2  # facility 4, severity critical
    assert ts == b"1970-01-01T00:01:40.000000Z" and app == b"ddos-shield" and msgid == b"attack_start"
    params = dict(SD_PARAM.findall(sd.decode()))
    assert sd.startswith(b"[ddosShield@32473 ")
    assert params["target"] == "203.0.113.10/32" and params["group"] == "web" and params["types"] == "udp_flood"
    assert params["url"] == "https://shield.example.net/ui/attacks/7"
    assert params["evidence"] == "udp 90000.0 pps (limit 20000)"
    assert text.startswith(b"DDoS attack started: udp_flood on 203.0.113.10/32")
    mit = dict(SD_PARAM.findall(parsed[1].group(7).decode()))  # type: ignore[union-attr]
    assert (mit["mitigation_id"], mit["action"], mit["rule"]) == ("12", "drop", "proto=17 dst=203.0.113.10/32 dport=53")


def test_syslog_cef() -> None:
    lst = SyslogListener("udp")
    try:
        w = SenderWorker(SyslogSender(Syslog(address=lst.address, format="cef")))
        a = alerts()
        w.put(a[1])
        assert w.drain(10)
        w.close()
        [msg] = lst.wait(1)
    finally:
        lst.close()
    m = RFC5424.match(msg)
    assert m is not None and m.group(7) == b"-"
    cef = m.group(8).decode()
    # CEF:Version|Device Vendor|Device Product|Device Version|Signature ID|Name|Severity|Extension
    head = re.split(r"(?<!\\)\|", cef, maxsplit=7)
    assert head[:7] == ["CEF:0", "DDoS Shield", "ddos-shield", "0.1.0", "mitigation_applied", "Mitigation applied", "5"]
    ext = dict(re.findall(r"(\w+)=((?:[^=\\]|\\.)*?)(?=\s\w+=|$)", head[7]))
    assert ext["dst"] == "203.0.113.10" and ext["act"] == "drop" and ext["cs1"] == "udp_flood"
    assert ext["cs4"] == "proto\\=17 dst\\=203.0.113.10/32 dport\\=53"  # '=' escaped in values
    assert ext["rt"] == "100200" and ext["cn3"] == "7"


def test_email_through_smtp() -> None:
    srv = SmtpServer()
    try:
        cfg = Email(
            smtp_host="127.0.0.1", smtp_port=srv.port, sender="shield@example.net", recipients=["noc@example.net"]
        )
        w = SenderWorker(EmailSender(cfg))
        w.put(alerts()[0])
        assert w.drain(10)
        w.close()
        [got] = srv.wait(1)
    finally:
        srv.close()
    assert got["from"] == "<shield@example.net>" and got["rcpt"] == ["<noc@example.net>"]
    msg: Message = email.message_from_bytes(got["data"])
    assert msg["Subject"].startswith("[DDoS Shield] DDoS attack started: udp_flood on 203.0.113.10/32")
    parts = list(msg.walk())
    text = next(p for p in parts if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert "target: 203.0.113.10/32 (host group web)" in text
    assert "dashboard: https://shield.example.net/ui/attacks/7" in text
    assert "evidence: udp 90000.0 pps vs limit 20000 pps" in text
    attached = next(p for p in parts if p.get_content_type() == "application/json")
    assert json.loads(attached.get_payload(decode=True))["kind"] == "attack_start"


def test_a_dead_receiver_does_not_hold_up_the_others() -> None:
    lst = SyslogListener("udp")
    cfg = parse(CONFIG)
    try:
        dead = WebhookSender(Webhook(url="http://127.0.0.1:9/", attempts=50, backoff_seconds=1.0, timeout_seconds=1))
        live = SyslogSender(Syslog(address=lst.address))
        d = AlertDispatcher(cfg, [dead, live])
        d(attack("attack_start", 100.0))
        assert len(lst.wait(1, timeout=5)) == 1  # delivered while the webhook still retries
        # counted just after the datagram left
        deadline = time.monotonic() + 5
        while d.stats()["syslog:" + lst.address]["sent"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.stats()["syslog:" + lst.address]["sent"] == 1
        assert d.stats()["webhook:127.0.0.1"]["sent"] == 0
        d.close(timeout=1.0)
    finally:
        lst.close()
