"""The service as `ddos-shield run` serves it: uvicorn in a thread over TLS, the local
admin token for root's command line, and the `ddos-shield mitigation|token` commands."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ddos_shield.api.server import ApiService
from ddos_shield.api.tokens import read_local
from ddos_shield.cli.main import main
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from tests.api.conftest import config_text


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ApiService, Path, Engine, io.StringIO]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=shield.test",
         "-addext", "subjectAltName=DNS:shield.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    text = config_text(tmp_path / "state").replace(
        'listen = "127.0.0.1:8470"', f'listen = "127.0.0.1:8470"\ntls_cert = "{cert}"\ntls_key = "{key}"'
    )
    cfg_path = tmp_path / "shield.toml"
    cfg_path.write_text(text)
    cfg = parse(text, str(cfg_path))
    dp = ReplayDataPlane()
    out = io.StringIO()
    events = EventSink(out)
    engine = Engine(cfg, dp, dp.backend, events)
    engine.start(time.time())
    engine.tick(time.time())
    svc = ApiService(engine, events, cfg, config_path=str(cfg_path), port=0)
    try:
        yield svc, cfg_path, engine, out
    finally:
        svc.stop()


def test_tls_and_the_local_token(served: tuple[ApiService, Path, Engine, io.StringIO]) -> None:
    svc, cfg_path, _, _ = served
    assert svc.url.startswith("https://127.0.0.1:")
    local = read_local(cfg_path.parent / "state")
    assert local is not None and local["url"] == svc.url
    # a client that checks certificates the usual way refuses the self-signed one
    with pytest.raises(httpx.ConnectError):
        httpx.get(svc.url + "/healthz", timeout=5)
    r = httpx.get(svc.url + "/healthz", verify=False, timeout=5)
    assert r.status_code == 200
    # plain HTTP on the TLS port gets nothing
    with pytest.raises(httpx.HTTPError):
        httpx.get(svc.url.replace("https", "http") + "/healthz", timeout=5)


def test_mitigation_commands_act_as_root_through_the_local_token(
    served: tuple[ApiService, Path, Engine, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg_path, engine, out = served
    c = ["--config", str(cfg_path)]
    assert main(["mitigation", "add", *c, "--src", "198.18.7.0/24", "--proto", "udp", "--dport", "9-10",
                 "--ttl", "300", "--reason", "ticket 7"]) == 0  # fmt: skip
    added = capsys.readouterr().out
    assert "added: drop proto=17 src=198.18.7.0/24 dport=9-10" in added
    (m,) = engine.mitigations()
    assert (m["actor"], m["reason"]) == (f"cli:{_user()}", "ticket 7")
    assert main(["mitigation", "list", *c, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["mitigations"]
    assert [x["mitigation_id"] for x in listed] == [m["mitigation_id"]]
    assert main(["mitigation", "list", *c]) == 0
    assert "proto=17 src=198.18.7.0/24 dport=9-10" in capsys.readouterr().out
    assert main(["mitigation", "withdraw", *c, str(m["mitigation_id"]), "--reason", "done"]) == 0
    assert engine.mitigations() == []
    removed = [json.loads(x) for x in out.getvalue().splitlines() if '"mitigation_removed"' in x]
    assert [(e["actor"], e["reason"]) for e in removed] == [(f"cli:{_user()}", "done")]
    # refusals come back with the API's reason and exit status 2
    assert main(["mitigation", "withdraw", *c, "999999"]) == 2
    assert "404: no mitigation 999999" in capsys.readouterr().err
    assert main(["mitigation", "add", *c, "--src", "198.51.100.53", "--reason", "x"]) == 2
    assert "409: refused:" in capsys.readouterr().err
    assert main(["mitigation", "add", *c, "--dport", "http", "--reason", "x"]) == 2
    assert "--dport 'http': expected a port or a range LO-HI" in capsys.readouterr().err
    # a per-source rate limit
    assert main(["mitigation", "add", *c, "--proto", "udp", "--dport", "53", "--action", "rate_limit",
                 "--rate-pps", "100", "--per-source", "--reason", "few heavy resolvers"]) == 0  # fmt: skip
    assert "added: rate_limit proto=17 dport=53 at 100 pps per source" in capsys.readouterr().out
    (m,) = engine.mitigations()
    assert (m["action"], m["rate_pps"], m["per_source"]) == ("rate_limit", 100, True)
    assert main(["mitigation", "list", *c]) == 0
    assert "proto=17 dport=53 at 100 pps per source" in capsys.readouterr().out
    assert main(["mitigation", "add", *c, "--proto", "udp", "--per-source", "--reason", "x"]) == 2
    assert "per_source: only for action rate_limit" in capsys.readouterr().err


def test_token_commands_and_a_viewer_token_from_the_environment(
    served: tuple[ApiService, Path, Engine, io.StringIO],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, cfg_path, _, _ = served
    c = ["--config", str(cfg_path)]
    assert main(["token", "create", "wall", "--role", "viewer", *c]) == 0
    secret = capsys.readouterr().out.strip()
    assert main(["token", "list", "--json", *c]) == 0
    assert [(t["name"], t["role"]) for t in json.loads(capsys.readouterr().out)] == [("wall", "viewer")]
    monkeypatch.setenv("DDOS_SHIELD_TOKEN", secret)
    assert main(["mitigation", "list", *c]) == 0
    assert "no mitigations" in capsys.readouterr().out
    assert main(["mitigation", "add", *c, "--proto", "udp", "--reason", "x"]) == 2
    assert "403: token 'wall' has role viewer; this needs operator or above" in capsys.readouterr().err
    assert main(["token", "revoke", "wall", *c]) == 0
    capsys.readouterr()
    assert main(["mitigation", "list", *c]) == 2
    assert "401: unknown or revoked token" in capsys.readouterr().err


def _user() -> str:
    import getpass
    import os

    return os.environ.get("SUDO_USER") or getpass.getuser()


def test_a_taken_port_is_named_and_the_first_server_stays(served: tuple[ApiService, Path, Engine, io.StringIO]) -> None:
    from ddos_shield.api.server import ApiServer
    from ddos_shield.errors import ShieldError

    svc, cfg_path, _, _ = served
    port = int(svc.url.rsplit(":", 1)[1])
    cfg = parse(cfg_path.read_text())
    second = ApiServer(svc.server.app, cfg.api, port=port)
    with pytest.raises(ShieldError, match=f"api.listen 127.0.0.1:{port}: the API did not start"):
        second.start()
    assert httpx.get(svc.url + "/healthz", verify=False, timeout=5).status_code == 200


def test_status_adds_the_running_shields_own_figures(served: tuple[ApiService, Path, Engine, io.StringIO]) -> None:
    from ddos_shield.cli.main import _shield_status

    _, cfg_path, _, _ = served
    st = _shield_status(parse(cfg_path.read_text()))
    assert st is not None and st["dataplane"] == "replay" and st["attacks_active"] == 0
