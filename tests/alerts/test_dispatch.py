"""Alerts from a real engine: an attack's start, throttled updates, its rule and its
end reach a real webhook receiver and syslog listener."""

from __future__ import annotations

import io

from ddos_shield.alerts import open_alerts
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.records import Category
from tests.alerts.receivers import SyslogListener, WebhookReceiver
from tests.traffic import packets, spoofed_v4


def test_engine_attack_alerts(tmp_path: object) -> None:
    hook, lst = WebhookReceiver(), SyslogListener("tcp")
    try:
        cfg = parse(
            f"""
protected = ["203.0.113.0/24"]
[shield]
interfaces = ["out0"]
[alerts]
dashboard_url = "http://127.0.0.1:8080"
update_interval_seconds = 2
[[alerts.webhooks]]
url = "{hook.url}"
secret = "k"
[[alerts.syslog]]
address = "{lst.address}"
protocol = "tcp"
[[groups]]
name = "default"
hold_seconds = 1.0
end_after_seconds = 1.0
[groups.thresholds]
udp = {{ pps = 5000 }}
"""
        )
        alerts = open_alerts(cfg)
        assert alerts is not None
        now = 1000.0
        dp = ReplayDataPlane(clock=lambda: now)
        sink = EventSink(io.StringIO())
        sink.subscribe(alerts)
        engine = Engine(cfg, dp, dp.backend, sink, clock=lambda: now)
        engine.start(now)
        srcs = spoofed_v4(500)
        for i in range(100):  # 6 s of flood (an update a second), then quiet
            if i < 60:
                dp.feed(packets(1000, src=srcs, dst="203.0.113.10", proto=17, category=Category.UDP, dport=53, ts=now))
            now += 0.1
            engine.tick(now)
        assert alerts.flush(20)
        got = hook.wait(1)
        kinds = [p["kind"] for p in got]
        assert kinds[:2] == ["attack_start", "mitigation_applied"]
        assert kinds[-2:] == ["attack_end", "mitigation_removed"]
        # ~5 updates in 6 s, at most one per 2 s gets through
        assert 1 <= kinds.count("attack_update") <= 3
        assert alerts.stats()["all"]["throttled"] >= 2
        start = got[0]
        assert start["attack"]["target"] == "203.0.113.10/32" and start["attack"]["group"] == "default"
        assert start["attack"]["url"] == f"http://127.0.0.1:8080/attacks/{start['attack']['attack_id']}"
        assert start["evidence"][0]["limit_pps"] == 5000 and start["evidence"][0]["pps"] > 5000
        rule = got[1]["mitigation"]
        assert rule["match"]["dport"] == {"min": 53, "max": 53} and rule["collateral_share"] is not None
        assert len(lst.wait(len(got))) == len(got)  # the same alerts on syslog
        alerts.close()
    finally:
        hook.close()
        lst.close()


def test_a_reload_takes_effect_on_the_next_event() -> None:
    from tests.alerts.test_message import CONFIG, attack

    hook, lst = WebhookReceiver(), SyslogListener("udp")
    try:
        first = parse(CONFIG + f'[[alerts.webhooks]]\nurl = "{hook.url}"\n')
        current = [first]
        d = open_alerts(first)
        assert d is not None
        d.follow(lambda: current[0])
        d(attack("attack_start", 100.0))
        assert d.flush(10)
        # the reloaded configuration: another link, and syslog instead of the webhook
        current[0] = parse(
            CONFIG.replace("https://shield.example.net/ui/", "https://noc.example.net")
            + f'[[alerts.syslog]]\naddress = "{lst.address}"\n'
        )
        d(attack("attack_end", 130.0))
        assert d.flush(10)
        assert [p["kind"] for p in hook.wait(1)] == ["attack_start"]
        [msg] = lst.wait(1)
        assert b"attack_end" in msg and b'url="https://noc.example.net/attacks/7"' in msg
        assert list(d.stats()) == [f"syslog:{lst.address}", "all"]
        d.close()
    finally:
        hook.close()
        lst.close()
