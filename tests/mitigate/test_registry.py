"""The backend registry: kinds named by the configuration, clear errors otherwise."""

from __future__ import annotations

import importlib.util

import pytest

from ddos_shield.config import parse
from ddos_shield.errors import ConfigError
from ddos_shield.mitigate.registry import KINDS, open_backends


def test_no_further_backends_by_default() -> None:
    assert open_backends(parse('protected = ["203.0.113.0/24"]')) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_kind_that_is_not_installed_is_named(kind: str) -> None:
    if importlib.util.find_spec(KINDS[kind]) is not None:
        pytest.skip(f"{KINDS[kind]} is installed: its own tests open it")
    cfg = parse(f'protected = ["203.0.113.0/24"]\n[mitigation]\nbackends = ["{kind}"]\n')
    with pytest.raises(ConfigError, match=rf"mitigation.backends\[0\]: backend '{kind}' is not part"):
        open_backends(cfg)


def test_unknown_kind_is_a_config_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r":3: mitigation.backends\[0\]"):
        parse('protected = ["203.0.113.0/24"]\n[mitigation]\nbackends = ["carrier-pigeon"]\n')
