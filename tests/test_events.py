"""The event sink: JSON lines out, subscribers called, a failing subscriber contained."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from ddos_shield.events import EventSink


def test_subscribers_see_every_event_until_they_unsubscribe() -> None:
    buf = io.StringIO()
    sink = EventSink(buf)
    seen: list[dict[str, Any]] = []
    unsubscribe = sink.subscribe(seen.append)
    sink.emit("ready", 1.0, interfaces=["out0"])
    unsubscribe()
    sink.emit("stopped", 2.0)
    assert [e["event"] for e in seen] == ["ready"]
    assert [json.loads(line)["event"] for line in buf.getvalue().splitlines()] == ["ready", "stopped"]


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    sink = EventSink(io.StringIO())
    seen: list[str] = []

    def broken(_: dict[str, Any]) -> None:
        raise RuntimeError("receiver down")

    sink.subscribe(broken)
    sink.subscribe(lambda e: seen.append(e["event"]))
    sink.emit("ready", 1.0)
    assert seen == ["ready"]
    assert "receiver down" in caplog.text
