"""Syslog: RFC 5424 messages over UDP or TCP, the message in plain words or CEF.

Hand-written rather than through :class:`logging.handlers.SysLogHandler`, which
speaks the older BSD format (RFC 3164) and frames TCP with a newline, not RFC 6587
octet counting.

A message (``format = "rfc5424"``)::

    <130>1 2026-11-26T01:20:00.100000Z shield1 ddos-shield 4242 attack_start
    [ddosShield@32473 attack_id="7" target="203.0.113.10/32" group="web" types="udp_flood"
    pps="120000.0" ...] DDoS attack started: udp_flood on 203.0.113.10/32 ...

The structured-data ID uses 32473, the private enterprise number RFC 5612 reserves for
documentation; a site with its own number can match on the name part.  With
``format = "cef"`` the message part is an ArcSight Common Event Format record and the
structured data is empty (``-``).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ddos_shield import __version__
from ddos_shield.alerts.message import Alert, iso
from ddos_shield.alerts.sender import Retryable
from ddos_shield.config import Syslog

SD_ID = "ddosShield@32473"
_SEVERITY = {"emergency": 0, "alert": 1, "critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
#: syslog severity -> CEF severity (0-10)
_CEF_SEVERITY = {0: 10, 1: 9, 2: 8, 3: 7, 4: 5, 5: 3, 6: 2, 7: 1}


def _sd_value(v: Any) -> str:
    s = ",".join(str(x) for x in v) if isinstance(v, list) else str(v)
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _cef_header(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|")


def _cef_value(v: Any) -> str:
    s = ",".join(str(x) for x in v) if isinstance(v, list) else str(v)
    return s.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def _evidence_text(e: dict[str, Any]) -> str:
    if e.get("limit_pps") is not None:
        return f"{e.get('category')} {e.get('pps')} pps (limit {e.get('limit_pps')})"
    if e.get("floor_pps") is not None:
        return f"{e.get('category')} {e.get('pps')} pps (above its learned baseline; floor {e.get('floor_pps')})"
    return f"{e.get('category')} {e.get('pps')} pps ({e.get('basis', '')})"


def _fields(alert: Alert) -> dict[str, Any]:
    """The flat fields both formats carry."""
    p = alert.payload
    out: dict[str, Any] = {}
    a = p.get("attack") or {}
    for k in ("attack_id", "target", "group", "types", "pps", "bps", "peak_pps", "peak_bps", "url"):
        if a.get(k) not in (None, "", []):
            out[k] = a[k]
    m = p.get("mitigation") or {}
    for k in ("mitigation_id", "action", "description", "collateral_share", "actor", "reason"):
        if m.get(k) not in (None, ""):
            out["rule" if k == "description" else k] = m[k]
    ev = p.get("evidence") or []
    if ev:
        out["evidence"] = "; ".join(_evidence_text(e) for e in ev if isinstance(e, dict))
    return out


def format_rfc5424(alert: Alert, cfg: Syslog, hostname: str, pid: int, cef: bool = False) -> bytes:
    pri = cfg.facility * 8 + _SEVERITY.get(alert.severity, 5)
    ts = iso(float(alert.payload["ts"]))
    fields = _fields(alert)
    if cef:
        sd = "-"
        msg = format_cef(alert, fields)
    else:
        sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in fields.items()) + "]"
        msg = alert.summary
    header = f"<{pri}>1 {ts} {hostname or '-'} {cfg.app_name} {pid} {alert.kind[:32]} {sd} "
    return (header + msg).encode()


def format_cef(alert: Alert, fields: dict[str, Any]) -> str:
    p = alert.payload
    sev = _CEF_SEVERITY[_SEVERITY.get(alert.severity, 5)]
    ext: dict[str, Any] = {"rt": int(float(p["ts"]) * 1000), "msg": alert.summary}
    target = str(fields.get("target", ""))
    host, _, plen = target.partition("/")
    if target and ":" not in host and plen in ("", "32"):
        ext["dst"] = host
    elif target and ":" in host and plen in ("", "128"):
        ext["c6a3"] = host
        ext["c6a3Label"] = "Target IPv6 Address"
    ext.update(
        {
            "cs1Label": "attackTypes",
            "cs1": fields.get("types", ""),
            "cs2Label": "target",
            "cs2": target,
            "cs3Label": "hostGroup",
            "cs3": fields.get("group", ""),
            "cs4Label": "rule",
            "cs4": fields.get("rule", ""),
            "cs5Label": "evidence",
            "cs5": fields.get("evidence", ""),
            "cs6Label": "dashboard",
            "cs6": fields.get("url", ""),
            "cn1Label": "packetsPerSecond",
            "cn1": int(float(fields.get("pps") or 0)),
            "cn2Label": "peakPacketsPerSecond",
            "cn2": int(float(fields.get("peak_pps") or 0)),
            "cn3Label": "attackId",
            "cn3": fields.get("attack_id", ""),
        }
    )
    if fields.get("action"):
        ext["act"] = fields["action"]
    if fields.get("actor"):
        ext["suser"] = fields["actor"]
    header = "|".join(
        _cef_header(x)
        for x in ("CEF:0", "DDoS Shield", "ddos-shield", __version__, alert.kind, alert.summary.split(":")[0], sev)
    )
    return header + "|" + " ".join(f"{k}={_cef_value(v)}" for k, v in ext.items() if v not in ("", None))


class SyslogSender:
    def __init__(self, cfg: Syslog) -> None:
        self.cfg = cfg
        self.name = f"syslog:{cfg.address}"
        self.attempts = 3
        self.backoff = 0.5
        host, _, port = cfg.address.rpartition(":")
        self._addr = (host.strip("[]"), int(port))
        self._hostname = socket.gethostname()
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            kind = socket.SOCK_DGRAM if self.cfg.protocol == "udp" else socket.SOCK_STREAM
            info = socket.getaddrinfo(*self._addr, type=kind)[0]
            s = socket.socket(info[0], kind)
            s.settimeout(5.0)
            try:
                s.connect(info[4])
            except OSError:
                s.close()
                raise
            self._sock = s
        return self._sock

    def send(self, alert: Alert) -> None:
        msg = format_rfc5424(alert, self.cfg, self._hostname, os.getpid(), cef=self.cfg.format == "cef")
        try:
            s = self._connect()
            if self.cfg.protocol == "udp":
                s.send(msg)
            else:
                s.sendall(str(len(msg)).encode() + b" " + msg)  # RFC 6587 octet counting
        except OSError as e:
            self.close()  # reconnect on the next try
            raise Retryable(f"{self.cfg.address}: {e}") from e

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
