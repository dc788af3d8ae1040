"""The console command: config example/check, help (the lab and run paths are in test_shield_lab.py)."""

from __future__ import annotations

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
