"""A real engine over the user-space replay data plane and the in-memory backend, the
real application served by uvicorn on a free loopback port, and a token of each role
(the kernel path is in the lab tests)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ddos_shield.api.app import create_app
from ddos_shield.api.metrics import shield_registry
from ddos_shield.api.server import ApiServer
from ddos_shield.api.tokens import TokenStore
from ddos_shield.api.view import ShieldView
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.records import Category
from ddos_shield.store import StoreWriter, open_store
from tests.traffic import packets, spoofed_v4

VICTIM = "203.0.113.10"
DNS = "203.0.113.53"
CLIENT = "198.51.100.10"


def config_text(state_dir: Path, udp_pps: int = 5000, critical: str = "") -> str:
    return f"""
protected = ["203.0.113.0/24", "2001:db8:113::/64"]
allowlist = ["198.51.100.53/32"]
never_block = ["203.0.113.200/32"]
critical = [{critical}]
[shield]
interfaces = ["out0"]
interval_ms = 100
state_dir = "{state_dir}"
[api]
listen = "127.0.0.1:8470"
[[groups]]
name = "default"
hold_seconds = 2.0
end_after_seconds = 1.0
[groups.thresholds]
udp = {{ pps = {udp_pps} }}
syn = {{ pps = 2000 }}
[[groups]]
name = "dns"
prefixes = ["203.0.113.53/32"]
[groups.thresholds]
udp = {{ pps = 50000 }}
"""


@dataclass
class Shield:
    """One engine, ticked by the test on its own clock (which starts at the real time)."""

    path: Path
    engine: Engine
    dp: ReplayDataPlane
    out: io.StringIO
    view: ShieldView
    tokens: TokenStore
    client: httpx.Client
    clock: dict[str, float]
    store: StoreWriter
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def now(self) -> float:
        return self.clock["now"]

    @now.setter
    def now(self, value: float) -> None:
        self.clock["now"] = value

    def run(self, seconds: float, *makers: Any) -> None:
        for _ in range(round(seconds / 0.1)):
            for make in makers:
                self.dp.feed(make(self.now))
            self.now += 0.1
            self.engine.tick(self.now)

    def as_(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secrets[role]}"}

    def get(self, path: str, role: str = "viewer", **kw: Any) -> Any:
        return self.client.get(path, headers=self.as_(role), **kw)

    def post(self, path: str, role: str = "operator", **kw: Any) -> Any:
        return self.client.post(path, headers=self.as_(role), **kw)


def legit(now: float) -> np.ndarray:
    return np.concatenate(
        [
            packets(2, src=CLIENT, dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, length=74, ts=now),
            packets(6, src=CLIENT, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, length=140, ts=now),
            packets(3, src=CLIENT, dst=DNS, proto=17, category=Category.UDP, dport=53, length=80, ts=now),
        ]
    )


_SRCS = spoofed_v4(2000)


def flood(now: float) -> np.ndarray:
    return packets(1000, src=_SRCS, dst=VICTIM, proto=17, category=Category.UDP, sport=1234, dport=9, ts=now)


@pytest.fixture
def shield(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shield]:
    """The history is in SQLite, or on PostgreSQL with ``@pytest.mark.parametrize("shield",
    ["postgresql"], indirect=True)``."""
    state = tmp_path / "state"
    cfg_path = tmp_path / "shield.toml"
    store = ""
    if getattr(request, "param", "sqlite") == "postgresql":
        store = f'[store]\nbackend = "postgresql"\ndsn = "{request.getfixturevalue("pg_dsn")}"\n'
    cfg_path.write_text(config_text(state) + store)
    cfg = parse(cfg_path.read_text(), str(cfg_path))
    box = {"now": time.time()}
    dp = ReplayDataPlane(clock=lambda: box["now"])
    out = io.StringIO()
    events = EventSink(out)
    engine = Engine(cfg, dp, dp.backend, events, clock=lambda: box["now"])
    engine.start(box["now"])
    store = open_store(cfg)
    assert store is not None
    events.subscribe(store)
    view = ShieldView(engine, events, config_path=str(cfg_path), history=store.history)
    tokens = TokenStore(state)
    registry = shield_registry(engine.snapshot, store=store, process=False)
    server = ApiServer(create_app(view, tokens, metrics=registry), cfg.api, port=0)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            s = Shield(tmp_path, engine, dp, out, view, tokens, client, box, store)
            for role in ("viewer", "operator", "admin"):
                s.secrets[role] = tokens.create(f"{role}-1", role)
            yield s
    finally:
        server.stop()
        view.close()
        store.close()
