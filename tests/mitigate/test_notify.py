"""The notify backend with real receivers: an HTTP server on loopback (the alert tests'
WebhookReceiver) and a real script that records what it reads on standard input."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ddos_shield.config import Notify, Webhook, parse
from ddos_shield.errors import ConfigError
from ddos_shield.mitigate.notify import NotifyBackend
from ddos_shield.records import Action, Match, Range, Rule, as_network
from tests.alerts.receivers import WebhookReceiver

RULE = Rule(Match(proto=17, dst=as_network("203.0.113.10/32"), dport=Range(53, 53)), Action.DROP, 2e9, rule_id=7)

# appends each JSON document it reads (one run, one document) to the file named by argv[1]
RECORDER = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def recorded(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_every_action_reaches_the_script_and_the_webhook(tmp_path: Path, hook: WebhookReceiver) -> None:
    out = tmp_path / "seen.jsonl"
    b = NotifyBackend(Notify(script=[sys.executable, "-c", RECORDER, str(out)], webhooks=[Webhook(url=hook.url)]))
    try:
        assert b.apply(RULE) == RULE
        b.apply(RULE.refreshed(2e9 + 60))  # a refresh is not news
        b.apply(Rule(RULE.match, Action.RATE_LIMIT, 2e9, rate_pps=100, rule_id=7))  # a change is
        assert [r.rule_id for r in b.list()] == [7] and b.stats()[7].packets == 0
        short = b.apply(Rule(Match(dst=as_network("203.0.113.11/32")), Action.BLACKHOLE, time.time() + 0.3))
        assert short.rule_id > 0
        b.set_bypass(True)
        b.withdraw(7)
        b.withdraw(7)  # idempotent: nothing more sent
        wait_for(lambda: len(recorded(out)) == 5)
        assert b.drain(10)
        docs = recorded(out)
        assert [(d["event"], d.get("rule", {}).get("action")) for d in docs] == [
            ("apply", "drop"),
            ("apply", "rate_limit"),
            ("apply", "blackhole"),
            ("bypass", None),
            ("withdraw", "rate_limit"),
        ]
        assert docs[0]["version"] == 1 and docs[0]["rule"]["match"]["dport"] == {"min": 53, "max": 53}
        assert docs[3]["bypass"] is True
        wait_for(lambda: len(recorded(out)) == 6)  # the short rule expires by itself
        assert recorded(out)[-1]["event"] == "expire" and recorded(out)[-1]["rule"]["mitigation_id"] == short.rule_id
        assert b.list() == []
        assert b.drain(10)
        assert [d["event"] for d in hook.wait(6)] == [d["event"] for d in recorded(out)]
        assert all(c["failed"] == 0 and c["dropped"] == 0 for c in b.counts().values())
    finally:
        b.close()


def test_a_hanging_script_is_killed_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "seen.jsonl"
    script = (
        "import sys, time\n"
        "doc = sys.stdin.read()\n"
        "if '\"203.0.113.66/32\"' in doc: time.sleep(60)\n"
        f"open({str(out)!r}, 'a').write(doc + '\\n')\n"
    )
    b = NotifyBackend(Notify(script=[sys.executable, "-c", script], script_timeout_seconds=0.5))
    try:
        t0 = time.monotonic()
        b.apply(Rule(Match(dst=as_network("203.0.113.66/32")), Action.DROP, 2e9, rule_id=1))
        b.apply(RULE)
        assert time.monotonic() - t0 < 0.5  # apply never waits for a hook
        wait_for(lambda: len(recorded(out)) == 1)
        assert recorded(out)[0]["rule"]["mitigation_id"] == 7  # the next one still went out
        assert b.drain(10)
        (counts,) = b.counts().values()
        assert counts["failed"] == 1 and counts["sent"] == 1
    finally:
        b.close()


def test_failing_receivers_are_counted(tmp_path: Path) -> None:
    hook = WebhookReceiver(fail_first=1)  # 503 once: retried
    try:
        b = NotifyBackend(
            Notify(
                script=[sys.executable, "-c", "import sys; sys.exit(3)"],
                webhooks=[Webhook(url=hook.url, attempts=2, backoff_seconds=0.1)],
            )
        )
        try:
            b.apply(RULE)
            assert b.drain(10)
            assert [d["event"] for d in hook.wait(1)] == ["apply"]
            counts = b.counts()
            assert next(v for k, v in counts.items() if k.startswith("script:"))["failed"] == 1
            assert next(v for k, v in counts.items() if k.startswith("webhook:"))["retried"] == 1
        finally:
            b.close()
    finally:
        hook.close()


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    b = NotifyBackend(Notify(script=[sys.executable, "-c", "import time; time.sleep(0.3)"], queue_size=1))
    try:
        for i in range(1, 6):
            b.apply(Rule(Match(dst=as_network(f"203.0.113.{i}/32")), Action.DROP, 2e9, rule_id=i))
        (counts,) = b.counts().values()
        assert counts["dropped"] >= 3  # one running, one queued, the rest dropped
        assert len(b.list()) == 5  # held all the same
    finally:
        b.close()


CONFIG_ROWS = [
    ("[notify]\n", ":2: notify: notify needs a 'script', a 'webhook' or both"),
    ('[notify]\nscript = ["x"]\nscript_timeout_seconds = 0\n', ":4: notify.script_timeout_seconds:"),
    ('[notify]\n[[notify.webhooks]]\nurl = "ftp://x"\n', ":4: notify.webhooks[0].url:"),
]


@pytest.mark.parametrize(("text", "want"), CONFIG_ROWS)
def test_config_mistakes_are_named(text: str, want: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse('protected = ["203.0.113.0/24"]\n' + text)
    assert want in str(e.value)


def test_from_config() -> None:
    cfg = parse('protected = ["203.0.113.0/24"]\n[notify]\nscript = ["true"]\n')
    b = NotifyBackend.from_config(cfg)
    b.close()
    with pytest.raises(ConfigError, match=r"\[notify\]"):
        NotifyBackend.from_config(parse('protected = ["203.0.113.0/24"]\n'))
