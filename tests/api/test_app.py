"""The API over a real engine: every endpoint, every role, and the refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import DNS, VICTIM, Shield, config_text, flood, legit

API = "/api/v1"

# ---- authentication and roles -------------------------------------------------------

# (method, path, body, lowest role that may call it)
ROUTES: list[tuple[str, str, Any, str]] = [
    # reading
    ("GET", "/openapi.json", None, "viewer"),
    ("GET", "/status", None, "viewer"),
    ("GET", "/traffic", None, "viewer"),
    ("GET", "/attacks", None, "viewer"),
    ("GET", "/events", None, "viewer"),
    ("GET", "/mitigations", None, "viewer"),
    ("GET", "/groups", None, "viewer"),
    ("GET", "/protection", None, "viewer"),
    ("GET", "/history/attacks", None, "viewer"),
    ("GET", "/history/mitigations", None, "viewer"),
    ("GET", "/history/attacks/999999/pcap", None, "viewer"),
    ("GET", "/audit", None, "operator"),
    ("GET", "/stream", None, "viewer"),
    # steering mitigations
    ("POST", "/mitigations", {"match": {"src": "198.18.0.1/32"}, "ttl": 60, "reason": "t"}, "operator"),
    ("POST", "/mitigations/999999/approve", None, "operator"),
    ("POST", "/mitigations/999999/withdraw", None, "operator"),
    # configuration (may hold secrets of alert receivers)
    ("GET", "/config", None, "admin"),
    ("POST", "/config/validate", {"text": "protected = []"}, "admin"),
    ("POST", "/config/reload", {"text": "protected = ["}, "admin"),
]
ORDER = ["viewer", "operator", "admin"]
ROUTES.append(("GET", "/metrics", None, "viewer"))  # Prometheus scrapes with a bearer token too


def _check_stream(shield: Shield) -> None:
    assert shield.client.get(f"{API}/stream").status_code == 401
    with shield.client.stream("GET", f"{API}/stream", headers=shield.as_("viewer")) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "event: snapshot"
        data = json.loads(next(lines).removeprefix("data: "))
        assert {"pps", "attacks", "mitigations", "top_destinations", "top_sources"} <= set(data)


@pytest.mark.parametrize(("method", "path", "body", "least"), ROUTES)
def test_every_route_needs_a_token_of_its_role(shield: Shield, method: str, path: str, body: Any, least: str) -> None:
    url = path if path == "/metrics" else API + path
    if path == "/stream":  # an endless answer: only its status and first event are read
        _check_stream(shield)
        return
    # no token, a malformed header, an unknown token: 401 with the Bearer challenge
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer dss_nope"}):
        r = shield.client.request(method, url, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    for role in ORDER:
        r = shield.client.request(method, url, json=body, headers=shield.as_(role))
        if ORDER.index(role) < ORDER.index(least):
            assert r.status_code == 403, (role, r.text)
            assert least in r.json()["detail"]
        else:
            assert r.status_code not in (401, 403), (role, r.text)


def test_healthz_needs_no_token_and_says_when_the_loop_stalls(shield: Shield) -> None:
    shield.run(0.3)
    r = shield.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    shield.now -= 60  # as if the last tick were a minute old
    shield.engine.tick(shield.now)
    r = shield.client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "stalled"


def test_revoked_token_is_refused_at_the_next_request(shield: Shield) -> None:
    assert shield.get(f"{API}/status").status_code == 200
    shield.tokens.revoke("viewer-1")
    assert shield.get(f"{API}/status").status_code == 401


def test_a_damaged_token_file_lets_nobody_in_and_says_why(shield: Shield) -> None:
    (shield.path / "state" / "api-tokens.json").write_text("{damaged")
    r = shield.get(f"{API}/status", "admin")
    assert r.status_code == 503 and "api-tokens.json: unreadable token file" in r.json()["detail"]


def test_openapi_document_is_published_and_lists_the_routes(shield: Shield) -> None:
    doc = shield.get(f"{API}/openapi.json").json()
    paths = set(doc["paths"])
    assert {p if p == "/metrics" else API + p for _, p, _, _ in ROUTES if "999999" not in p} <= paths
    assert f"{API}/mitigations/{{mitigation_id}}/approve" in paths
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


# ---- status, traffic, attacks --------------------------------------------------------


def test_status_and_traffic_during_a_flood(shield: Shield) -> None:
    shield.run(1.0, legit)
    shield.run(2.0, legit, flood)
    st = shield.get(f"{API}/status").json()
    assert st["dataplane"] == "replay" and st["backend"] == "memory"
    assert st["attacks_active"] == 1 and st["mitigations_active"] >= 1
    assert st["you"] == {"name": "viewer-1", "role": "viewer", "actor": "token:viewer-1"}
    t = shield.get(f"{API}/traffic", params={"top": 3}).json()
    assert t["pps"]["udp"] > 5000
    top = t["top_destinations"]
    assert top[0]["dst"] == VICTIM and top[0]["group"] == "default" and top[0]["by_category"]["udp"] > 5000
    assert [d["group"] for d in top if d["dst"] == DNS] == ["dns"]
    groups = {g["group"]: g for g in t["groups"]}
    assert groups["dns"]["destinations"] == 1 and groups["dns"]["pps"]["udp"] > 0
    assert groups["default"]["pps"]["udp"] > 5000
    # top sources come from the sample window: the flood's spoofed sources each send little,
    # the client sends 11 packets a tick
    assert t["top_sources"][0]["src"] == "198.51.100.10"
    assert len(t["top_sources"]) == 3
    assert shield.get(f"{API}/traffic", params={"top": 0}).status_code == 422


def test_status_answers_while_a_tick_holds_the_engine(shield: Shield) -> None:
    import threading

    shield.run(0.3, legit)
    first = shield.get(f"{API}/status").json()
    held, done = threading.Event(), threading.Event()

    def long_tick() -> None:
        with shield.engine._lock:  # what a long tick under a flood does
            held.set()
            done.wait(20)

    t = threading.Thread(target=long_tick)
    t.start()
    try:
        held.wait(5)
        # were status to wait for the engine, this would never come back before `done`
        r = shield.get(f"{API}/status", timeout=5)
        assert r.status_code == 200 and r.json()["as_of"] == first["as_of"]
        assert shield.client.get("/healthz", timeout=5).status_code == 200
    finally:
        done.set()
        t.join()
    assert shield.get(f"{API}/status").json()["as_of"] > first["as_of"]


def test_attacks_live_and_past_with_timeline_and_rules(shield: Shield) -> None:
    shield.run(0.5, legit)
    shield.run(2.0, legit, flood)
    live = shield.get(f"{API}/attacks", params={"state": "active"}).json()["attacks"]
    assert len(live) == 1
    a = live[0]
    assert a["target"] == f"{VICTIM}/32" and a["attack_types"] == ["udp_flood"] and a["peak_pps"] > 5000
    assert a["rules"] and a["rules"][0]["match"]["dst"] == f"{VICTIM}/32"  # the fingerprint
    shield.run(4.0, legit)
    assert shield.get(f"{API}/attacks", params={"state": "active"}).json()["attacks"] == []
    past = shield.get(f"{API}/attacks", params={"state": "ended"}).json()["attacks"]
    assert [x["attack_id"] for x in past] == [a["attack_id"]]
    detail = shield.get(f"{API}/attacks/{a['attack_id']}").json()
    assert detail["state"] == "ended" and detail["ended"] > detail["started"]
    assert len(detail["timeline"]) >= 2 and max(p[1] for p in detail["timeline"]) > 5000
    assert [x["event"] for x in detail["actions"]] == ["mitigation_applied", "mitigation_removed"]
    assert shield.get(f"{API}/attacks/424242").status_code == 404
    evs = shield.get(f"{API}/events", params={"limit": 500}).json()["events"]
    assert {"ready", "attack_start", "attack_end", "mitigation_applied"} <= {e["event"] for e in evs}


@pytest.mark.parametrize("shield", ["sqlite", "postgresql"], indirect=True)
def test_history_from_the_store_and_the_audit_log(shield: Shield) -> None:
    shield.run(0.5, legit)
    shield.run(2.0, legit, flood)
    shield.run(4.0, legit)
    assert shield.store.flush()
    (a,) = shield.get(f"{API}/history/attacks").json()["attacks"]
    assert a["target"] == f"{VICTIM}/32"
    detail = shield.get(f"{API}/history/attacks/{a['attack_id']}").json()
    assert detail["fingerprints"] and detail["fingerprints"][0]["dst"] == f"{VICTIM}/32"
    pcap = shield.get(f"{API}/history/attacks/{a['attack_id']}/pcap")
    assert pcap.status_code == 200 and pcap.content[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng section header
    assert "attack-" in pcap.headers["content-disposition"]
    ms = shield.get(f"{API}/history/mitigations").json()["mitigations"]
    assert ms and ms[0]["attack_id"] == a["attack_id"]
    assert shield.get(f"{API}/history/attacks/424242").status_code == 404
    audit = shield.get(f"{API}/audit", "operator").json()["audit"]
    assert {"mitigation_applied", "mitigation_removed"} <= {x["action"] for x in audit}


def test_metrics_are_served_to_a_token_in_prometheus_text_format(shield: Shield) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    shield.run(0.5, legit)
    r = shield.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert "ddos_shield_traffic_packets_per_second" in names


def test_groups_and_protection(shield: Shield) -> None:
    g = shield.get(f"{API}/groups").json()["groups"]
    assert [x["name"] for x in g] == ["default", "dns"]
    assert g[1]["prefixes"] == ["203.0.113.53/32"] and g[1]["thresholds"]["udp"]["pps"] == 50000
    p = shield.get(f"{API}/protection").json()
    assert p["protected"] == ["203.0.113.0/24", "2001:db8:113::/64"]
    assert p["allowlist"] == ["198.51.100.53/32"]
    assert p["never_block"] == ["203.0.113.200/32"] and p["critical"] == []


# ---- mitigations ---------------------------------------------------------------------------


def test_operator_adds_lists_and_withdraws_a_mitigation(shield: Shield) -> None:
    body = {
        "match": {"proto": 17, "src": "198.18.0.0/24", "dst": f"{VICTIM}/32", "dport": 9},
        "action": "drop",
        "ttl": 120,
        "reason": "ticket 42",
    }
    r = shield.post(f"{API}/mitigations", json=body)
    assert r.status_code == 201, r.text
    mid = r.json()["mitigation"]["mitigation_id"]
    shield.run(0.3, legit)
    ms = shield.get(f"{API}/mitigations").json()["mitigations"]
    mine = [m for m in ms if m["mitigation_id"] == mid]
    assert len(mine) == 1
    m = mine[0]
    assert (m["state"], m["origin"], m["actor"], m["reason"]) == ("active", "manual", "token:operator-1", "ticket 42")
    assert 119 <= m["time_left"] <= 120
    assert m["match"] == body["match"] | {"dport": {"min": 9, "max": 9}}
    r = shield.post(f"{API}/mitigations/{mid}/withdraw", json={"reason": "resolved"})
    assert r.status_code == 200 and r.json() == {"withdrawn": mid}
    assert mid not in [m["mitigation_id"] for m in shield.get(f"{API}/mitigations").json()["mitigations"]]
    assert shield.post(f"{API}/mitigations/{mid}/withdraw").status_code == 404
    evs = {e["event"]: e for e in _events(shield) if e.get("rule", {}).get("mitigation_id") == mid}
    assert evs["mitigation_applied"]["actor"] == "token:operator-1"
    assert (evs["mitigation_removed"]["actor"], evs["mitigation_removed"]["reason"]) == ("token:operator-1", "resolved")


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        # malformed requests: 422 naming the field
        ({"match": {"dst": "203.0.113.300/32"}, "ttl": 60, "reason": "x"}, 422, "match:"),
        ({"match": {"color": "red"}, "ttl": 60, "reason": "x"}, 422, "unknown match field 'color'"),
        ({"match": {}, "ttl": 60, "reason": "x"}, 422, "match: empty"),
        ({"match": {"proto": 17}, "ttl": 0, "reason": "x"}, 422, "ttl"),
        ({"match": {"proto": 17}, "ttl": 60}, 422, "reason"),
        ({"match": {"proto": 17}, "action": "rate_limit", "ttl": 60, "reason": "x"}, 422, "rate_pps"),
        ({"match": {"proto": 17}, "action": "explode", "ttl": 60, "reason": "x"}, 422, "action"),
        ({"match": {"proto": 17}, "per_source": True, "ttl": 60, "reason": "x"}, 422, "per_source"),
        ({"match": {"proto": 17}, "per_source": "yes", "ttl": 60, "reason": "x"}, 422, "per_source"),
        # well-formed but refused by the shield: 409 with its reason
        ({"match": {"src": "198.51.100.53/32"}, "ttl": 60, "reason": "x"}, 409, "allow"),
        ({"match": {"dst": "203.0.113.0/24"}, "ttl": 60, "reason": "x"}, 409, "never-block"),
        ({"match": {"proto": 17}, "ttl": 60, "backend": "bgp", "reason": "x"}, 409, "backend"),
        ({"match": {"dst": "203.0.113.10"}, "action": "blackhole", "ttl": 60, "reason": "x"}, 403, "admin"),
    ],
)
def test_refused_mitigations_say_why(shield: Shield, body: dict[str, Any], status: int, says: str) -> None:
    r = shield.post(f"{API}/mitigations", json=body)
    assert r.status_code == status, r.text
    assert says in json.dumps(r.json()["detail"])
    assert shield.get(f"{API}/mitigations").json()["mitigations"] == []


def test_a_per_source_rate_limit_is_added_and_listed_as_such(shield: Shield) -> None:
    body = {"match": {"proto": 17, "dport": 53}, "action": "rate_limit", "rate_pps": 100, "per_source": True}
    r = shield.post(f"{API}/mitigations", json={**body, "ttl": 60, "reason": "few heavy resolvers"})
    assert r.status_code == 201, r.text
    assert (r.json()["mitigation"]["rate_pps"], r.json()["mitigation"]["per_source"]) == (100, True)
    (m,) = shield.get(f"{API}/mitigations").json()["mitigations"]
    assert (m["action"], m["rate_pps"], m["per_source"]) == ("rate_limit", 100, True)


def test_a_drop_on_a_critical_asset_waits_for_an_operators_approval(shield: Shield) -> None:
    text = config_text(shield.path / "state", critical=f'"{VICTIM}/32"')
    assert shield.post(f"{API}/config/reload", "admin", json={"text": text}).status_code == 200
    shield.run(0.5, legit)
    shield.run(2.0, legit, flood)
    ms = shield.get(f"{API}/mitigations").json()["mitigations"]
    pending = [m for m in ms if m["state"] == "pending"]
    assert len(pending) == 1 and pending[0]["action"] == "drop"
    assert [m["action"] for m in ms if m["state"] == "active"] == ["rate_limit"]
    mid = pending[0]["mitigation_id"]
    assert shield.post(f"{API}/mitigations/{mid}/approve", "viewer").status_code == 403
    r = shield.post(f"{API}/mitigations/{mid}/approve")
    assert r.status_code == 200, r.text
    assert r.json()["mitigation"]["mitigation_id"] == mid
    ms = shield.get(f"{API}/mitigations").json()["mitigations"]
    assert [(m["mitigation_id"], m["state"], m["action"]) for m in ms] == [(mid, "active", "drop")]
    # approving twice: refused with the reason
    r = shield.post(f"{API}/mitigations/{mid}/approve")
    assert r.status_code == 409 and "not pending" in r.json()["detail"]
    assert shield.post(f"{API}/mitigations/123456/approve").status_code == 404
    approved = [e for e in _events(shield) if e["event"] == "mitigation_approved"]
    assert [e["actor"] for e in approved] == ["token:operator-1"]


# ---- configuration --------------------------------------------------------------------


def test_config_view_for_admins(shield: Shield) -> None:
    body = shield.get(f"{API}/config", "admin").json()
    assert body["file"] == str(shield.path / "shield.toml")
    assert body["config"]["groups"][1]["name"] == "dns"


def test_validate_reports_every_problem_with_line_and_field(shield: Shield) -> None:
    bad = config_text(shield.path / "state").replace("udp = { pps = 50000 }", 'udp = { pps = "fast" }')
    bad = bad.replace('allowlist = ["198.51.100.53/32"]', 'allowlist = ["198.51.100.533/32"]')
    r = shield.post(f"{API}/config/validate", "admin", json={"text": bad})
    assert r.status_code == 422
    errors = r.json()["detail"]["errors"]
    assert any(e.startswith("<posted>:3: allowlist: ") and "198.51.100.533" in e for e in errors), errors
    assert any(e.startswith("<posted>:23: groups[1].thresholds.udp.pps: ") for e in errors), errors
    ok = shield.post(f"{API}/config/validate", "admin", json={"text": config_text(shield.path / "state")})
    assert ok.json() == {"valid": True}


def test_invalid_reload_is_refused_and_the_running_configuration_stays(shield: Shield) -> None:
    before = shield.engine.config
    text_before = (shield.path / "shield.toml").read_text()
    bad = config_text(shield.path / "state").replace("syn = { pps = 2000 }", "syn = { pps = -1 }")
    r = shield.post(f"{API}/config/reload", "admin", json={"text": bad})
    assert r.status_code == 422
    assert r.json()["detail"]["errors"] == [
        "<posted>:18: groups[0].thresholds.syn.pps: Input should be greater than or equal to 0, got -1"
    ]
    # a change that only a restart can make is refused too, by name
    moved = config_text(shield.path / "state").replace('interfaces = ["out0"]', 'interfaces = ["eth9"]')
    r = shield.post(f"{API}/config/reload", "admin", json={"text": moved})
    assert r.status_code == 422 and "shield.interfaces" in r.json()["detail"]["errors"][0]
    # a broken file on disk: reloading it is refused, naming the file
    (shield.path / "shield.toml").write_text(bad)
    r = shield.post(f"{API}/config/reload", "admin")
    assert r.status_code == 422
    assert r.json()["detail"]["errors"][0].startswith(f"{shield.path / 'shield.toml'}:18: groups[0].thresholds.syn.pps")
    assert shield.engine.config is before
    (shield.path / "shield.toml").write_text(text_before)
    refused = [e for e in _events(shield) if e["event"] == "config_refused"]
    assert [(e["actor"], e["source"]) for e in refused] == [
        ("token:admin-1", "posted"),
        ("token:admin-1", "posted"),
        ("token:admin-1", "file"),
    ]


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        # a port alone: loopback
        ("8470", ("127.0.0.1", 8470)),
        (":8471", ("127.0.0.1", 8471)),
        # an address: exactly there
        ("0.0.0.0:8470", ("0.0.0.0", 8470)),
        ("[::1]:8470", ("::1", 8470)),
    ],
)
def test_listen_binds_to_loopback_unless_told_otherwise(listen: str, address: tuple[str, int]) -> None:
    from ddos_shield.config import Api

    assert Api(listen=listen).address() == address


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:", "127.0.0.1:99999", "x:http"])
def test_a_bad_listen_names_the_field(listen: str) -> None:
    from ddos_shield.config import parse
    from ddos_shield.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"cfg:3: api.listen: expected 'address:port' or a port, e\.g\. '127\.0\.0\.1:8470', got '"
    ):
        parse(f'protected = []\n[api]\nlisten = "{listen}"\n', "cfg")


def test_reload_swaps_the_new_configuration_in_at_once(shield: Shield) -> None:
    # the UDP threshold goes up: a flood of 10 k pps is no attack any more
    new = config_text(shield.path / "state", udp_pps=20000)
    r = shield.post(f"{API}/config/reload", "admin", json={"text": new})
    assert r.status_code == 200, r.text
    assert r.json() == {"reloaded": True, "source": "posted", "saved": str(shield.path / "shield.toml")}
    assert shield.engine.config.group_for_name("default").thresholds.udp.pps == 20000
    assert (shield.path / "shield.toml").read_text() == new
    shield.run(2.0, legit, flood)
    assert shield.get(f"{API}/attacks").json()["attacks"] == []
    # and back from the file
    (shield.path / "shield.toml").write_text(config_text(shield.path / "state"))
    assert shield.post(f"{API}/config/reload", "admin").json()["source"] == "file"
    assert shield.engine.config.group_for_name("default").thresholds.udp.pps == 5000
    done = [(e["actor"], e["source"]) for e in _events(shield) if e["event"] == "config_reloaded"]
    assert done == [("token:admin-1", "posted"), ("token:admin-1", "file")]


# ---- the dashboard's files and the live stream ---------------------------------------------


def test_dashboard_files_are_served_without_data(shield: Shield) -> None:
    for path, kind in (("/", "text/html"), ("/attacks/7", "text/html"), ("/static/dashboard.js", "text/javascript")):
        r = shield.client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["cache-control"] == "no-store"


def _events(shield: Shield) -> list[dict[str, Any]]:
    return [json.loads(line) for line in shield.out.getvalue().splitlines()]
