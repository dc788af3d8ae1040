"""Configuration: the example is valid, mistakes are named with line and field."""

from __future__ import annotations

import ipaddress

import pytest

from ddos_shield.config import example, parse
from ddos_shield.errors import ConfigError


def test_example_is_valid_and_complete() -> None:
    cfg = parse(example())
    assert [g.name for g in cfg.groups] == ["default", "dns"]
    assert cfg.group_of(ipaddress.ip_address("203.0.113.53")).name == "dns"
    assert cfg.group_of(ipaddress.ip_address("203.0.113.54")).name == "default"


BAD = [
    # (toml, expected "line: field" prefix fragment)
    ('protected = ["203.0.113.0/24"]\n[shield]\ninterval_ms = "fast"\n', ":3: shield.interval_ms:"),
    ('protected = ["203.0.113.0/33"]\n', ":1: protected:"),
    (
        'protected = ["203.0.113.0/24"]\n[[groups]]\nname = "a"\n[groups.thresholds]\nudp = { pps = -1 }\n',
        ":5: groups[0].thresholds.udp.pps:",
    ),
    (
        'protected = ["203.0.113.0/24"]\n[[groups]]\nname = "a"\n[[groups]]\nname = "b"\naction = "explode"\n',
        ":6: groups[1].action:",
    ),
    ('protected = ["203.0.113.0/24"]\n[shield]\ninterfacez = ["x"]\n', ":3: shield.interfacez: unknown field"),
    ("allowlist = []\n", ": protected: Field required"),
    (
        'protected = ["203.0.113.0/24"]\n[[groups]]\nname = "g"\nprefixes = ["192.0.2.0/24"]\n',
        "outside every protected prefix",
    ),
    ("protected = [\n", "<config>: "),  # TOML syntax error, tomllib names line and column
    # escalation ladders and protected lists
    ('protected = ["203.0.113.0/24"]\n[[groups]]\nname = "g"\nladder = ["drop", "blackhole"]\n', "allow_blackhole"),
    (
        'protected = ["203.0.113.0/24"]\n[[groups]]\nname = "g"\nallow_blackhole = true\nladder = ["blackhole", "drop"]\n',
        "only be the last step",
    ),
    (
        'protected = ["203.0.113.0/24"]\n[[groups]]\nname = "g"\nladder = ["drop", "nuke"]\n',
        ":4: groups[0].ladder[1].step:",
    ),
    ('protected = ["203.0.113.0/24"]\ncritical = ["plc"]\n', ":2: critical:"),
    # the history on PostgreSQL: a connection string, and never a password in it
    ('protected = ["203.0.113.0/24"]\n[store]\nbackend = "postgresql"\n', "store: dsn: backend = 'postgresql' needs"),
    (
        'protected = ["203.0.113.0/24"]\n[store]\nbackend = "postgresql"\ndsn = "postgresql://s:pw@db/h"\n',
        "dsn: holds a password",
    ),
    (
        'protected = ["203.0.113.0/24"]\n[store]\nbackend = "postgresql"\ndsn = "db h"\n',
        "dsn: not a libpq connection string",
    ),
]


@pytest.mark.parametrize(("text", "want"), BAD)
def test_mistakes_are_named(text: str, want: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert want in str(e.value)


def test_reference_doc_is_current() -> None:
    from pathlib import Path

    from ddos_shield.config import reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == reference(), (
        "regenerate: python -c 'from ddos_shield.config import reference; print(reference(), end=\"\")' > docs/configuration.md"
    )
