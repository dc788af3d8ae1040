"""The console command: config example/check, help (the lab and run paths are in test_shield_lab.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ddos_shield.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_example_passes_check(tmp_path: Path) -> None:
    ex = cli("config", "example")
    assert ex.returncode == 0
    f = tmp_path / "shield.toml"
    f.write_text(ex.stdout)
    chk = cli("config", "check", str(f))
    assert chk.returncode == 0, chk.stderr


def test_check_names_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('protected = ["203.0.113.0/24"]\n\n[[groups]]\nname = "web"\nhold_seconds = "long"\n')
    chk = cli("config", "check", str(f))
    assert chk.returncode == 2
    assert f"{f}:5: groups[0].hold_seconds:" in chk.stderr


def test_help_lists_every_command() -> None:
    out = cli("--help").stdout
    for cmd in ("run", "stop", "config", "lab", "demo", "build"):
        assert f"\n  {cmd}" in out


def test_baseline_show_reads_the_stored_file(tmp_path: Path) -> None:
    from ddos_shield.config import Baseline as Settings
    from ddos_shield.detect.baseline import Baselines
    from ddos_shield.records import Category, addr_bytes, empty_rates
    from ddos_shield.store.baseline import FILE_NAME, save

    cfg = tmp_path / "shield.toml"
    cfg.write_text(
        f'protected = ["203.0.113.0/24"]\n[shield]\nstate_dir = "{tmp_path}"\n[baseline]\nlearning_seconds = 5\n'
    )
    missing = cli("baseline", "show", "--config", str(cfg))
    assert missing.returncode == 1 and "no baselines stored yet" in missing.stderr
    b = Baselines(Settings(learning_seconds=5))
    r = empty_rates(1)
    r["dst"][0] = list(addr_bytes("203.0.113.10"))
    r["pps"][0, Category.UDP] = 100
    for i in range(100):
        b.learn(r, 1000.0 + i * 0.1)
    save(tmp_path / FILE_NAME, b.state())
    out = cli("baseline", "show", "--json", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["learned"] == 1
    [row] = data["rows"]
    assert row["destination"] == "203.0.113.10" and row["categories"]["udp"]["pps"]["level"] == 100.0
    text = cli("baseline", "show", "--config", str(cfg))
    assert text.returncode == 0 and "203.0.113.10" in text.stdout


def test_run_keeps_a_history_and_protects_on_without_one(tmp_path: Path) -> None:
    """`run` (detection only: no interfaces) writes its history; a history it cannot open
    is an event, and the shield runs on."""
    import signal
    import sqlite3
    import time

    def run_once(extra: str) -> list[dict[str, object]]:
        events = tmp_path / "events.jsonl"
        events.unlink(missing_ok=True)
        cfg = tmp_path / "run.toml"
        cfg.write_text(
            f'protected = ["203.0.113.0/24"]\n[shield]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[events]\nfile = "{events}"\n{extra}'
        )
        with subprocess.Popen(
            [sys.executable, "-m", "ddos_shield.cli.main", "run", "--config", str(cfg), "--no-live"],
            stderr=subprocess.PIPE,
            text=True,
        ) as p:
            try:
                assert p.stderr is not None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and "ready" not in p.stderr.readline():
                    pass
                p.send_signal(signal.SIGTERM)
                assert p.wait(30) == 0
            finally:
                p.kill()
        return [json.loads(line) for line in events.read_text().splitlines()]

    kinds = [e["event"] for e in run_once("")]
    assert "store_failed" not in kinds and kinds[-1] == "stopped"
    db = sqlite3.connect(tmp_path / "state" / "history.sqlite3")
    assert db.execute("SELECT version FROM schema_version").fetchone() == (2,)
    db.close()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 100)
    evs = run_once(f'[store]\npath = "{junk}"\n')
    failed = [e for e in evs if e["event"] == "store_failed"]
    assert len(failed) == 1 and "junk.sqlite3" in str(failed[0]["reason"])
    assert [e["event"] for e in evs][-1] == "stopped"


def test_sighup_reloads_the_file_or_refuses_it_naming_the_field(tmp_path: Path) -> None:
    """`run` re-reads its configuration on SIGHUP (no API configured): a valid change is
    in force (config_reloaded), a bad one refused with file, line and field (config_refused)."""
    import signal
    import time

    events = tmp_path / "events.jsonl"
    cfg = tmp_path / "run.toml"
    base = (
        f'protected = ["203.0.113.0/24"]\n[shield]\nstate_dir = "{tmp_path / "state"}"\n[events]\nfile = "{events}"\n'
    )
    cfg.write_text(base)

    def wait_for(name: str) -> dict[str, object]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == name]
            if found:
                return dict(found[-1])
            time.sleep(0.1)
        raise AssertionError(f"no {name} event")

    with subprocess.Popen(
        [sys.executable, "-m", "ddos_shield.cli.main", "run", "--config", str(cfg), "--no-live"],
        stderr=subprocess.PIPE,
        text=True,
    ) as p:
        try:
            assert p.stderr is not None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "ready" not in p.stderr.readline():
                pass
            cfg.write_text(base.replace("[shield]", 'allowlist = ["198.51.100.53/32"]\n[shield]'))
            p.send_signal(signal.SIGHUP)
            done = wait_for("config_reloaded")
            assert (done["actor"], done["source"]) == ("signal:SIGHUP", "file")
            cfg.write_text(base + "[[groups]]\nname = 7\n")
            p.send_signal(signal.SIGHUP)
            refused = wait_for("config_refused")
            assert refused["actor"] == "signal:SIGHUP" and "run.toml:7: groups[0].name" in str(refused["errors"])
            assert p.poll() is None  # the shield runs on with the configuration before
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0
        finally:
            p.kill()
