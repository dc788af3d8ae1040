"""The backend registry: kinds named by the configuration, clear errors otherwise."""

from __future__ import annotations

import sys

import pytest

from ddos_shield.config import parse
from ddos_shield.errors import ConfigError
from ddos_shield.mitigate import registry
from ddos_shield.mitigate.registry import open_backends

BASE = 'protected = ["203.0.113.0/24"]\n'


def test_no_further_backends_by_default() -> None:
    assert open_backends(parse(BASE)) == []


def test_a_named_kind_is_opened_from_its_own_table() -> None:
    cfg = parse(BASE + f'[mitigation]\nbackends = ["notify"]\n[notify]\nscript = ["{sys.executable}", "-c", "pass"]\n')
    (b,) = open_backends(cfg)
    try:
        assert b.name == "notify" and b.list() == []
    finally:
        b.close()


def test_a_kind_whose_module_is_missing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.KINDS, "notify", "ddos_shield.mitigate.no_such_module")
    cfg = parse(BASE + f'[mitigation]\nbackends = ["notify"]\n[notify]\nscript = ["{sys.executable}"]\n')
    with pytest.raises(ConfigError, match=r"mitigation.backends\[0\]: backend 'notify' is not part"):
        open_backends(cfg)


def test_unknown_kind_is_a_config_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r":3: mitigation.backends\[0\]"):
        parse(BASE + '[mitigation]\nbackends = ["carrier-pigeon"]\n')
