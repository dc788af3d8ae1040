"""The dashboard in real headless Chromium (Debian's) while a real attack runs in the lab.

The shield runs in the lab's dsl-shield namespace with its API on that namespace's
loopback; the browser runs in the same namespace (a wrapper execs Debian's chromium
through `ip netns exec`; Playwright drives it over a pipe, so no port crosses the
namespace).  An operator withdraws the attack's rule with the button; a viewer sees
the same rule with no button.  Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddos_shield import lab
from ddos_shield.api.tokens import TokenStore
from ddos_shield.config import load
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.demo import LabShield
from ddos_shield.lab.topology import Lab

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.lab,
    pytest.mark.kernel,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (dev.sh installs it)"),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
URL = "http://127.0.0.1:8470"


def test_operator_withdraws_the_attacks_rule_and_a_viewer_sees_no_button(the_lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shield = LabShield(tmp_path, hold_seconds=60.0, extra_config=f'\n[api]\nlisten = "{URL[7:]}"\n')
    tokens = TokenStore(load(shield.config_path).shield.state_dir)
    names = [f"dash-op-{os.getpid()}", f"dash-view-{os.getpid()}"]
    wrapper = tmp_path / "chromium-in-lab"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.NS_SHIELD} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    ARTIFACTS.mkdir(exist_ok=True)
    shield.start()
    attack = None
    try:
        operator, viewer = tokens.create(names[0], "operator"), tokens.create(names[1], "viewer")
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a new, empty profile
                executable_path=str(wrapper),
                args=ARGS,
                headless=True,
                viewport={"width": 1366, "height": 768},  # a laptop screen
            )
            try:
                pages = {}
                for role, secret in (("operator", operator), ("viewer", viewer)):
                    page = ctx.new_page()  # sessionStorage is per tab: one login each
                    page.on("dialog", lambda d: d.accept())
                    page.goto(URL + "/")
                    page.get_by_test_id("token-input").fill(secret)
                    page.get_by_test_id("login-button").click()
                    expect(page.get_by_test_id("who")).to_contain_text(f"({role})")
                    expect(page.get_by_test_id("connection")).to_have_text("live", timeout=10_000)
                    pages[role] = page
                attack = launch(AttackSpec(kind="syn", family=4, pps=8000, seconds=8.0))
                op = pages["operator"]
                # the attack under way, and the rule the shield took against it
                expect(op.get_by_test_id("attacks-active")).to_contain_text(f"{lab.VICTIM_V4}/32", timeout=10_000)
                expect(op.get_by_test_id("attacks-active")).to_contain_text("syn_flood")
                withdraw = op.locator("[data-testid^=withdraw-]").first
                expect(withdraw).to_be_visible(timeout=10_000)
                mid = withdraw.get_attribute("data-testid").removeprefix("withdraw-")  # type: ignore[union-attr]
                row = op.get_by_test_id(f"mitigation-{mid}")
                expect(row).to_contain_text(f"src={lab.ATTACKER_V4}/32")
                expect(op.get_by_test_id("connection")).to_contain_text("under attack")
                expect(op.get_by_test_id("rate-now")).to_contain_text("kpps")  # the flood, charted live
                time.sleep(2)  # a few points of the flood on the chart, and hit counters rising
                op.screenshot(path=str(ARTIFACTS / "dashboard-operator.png"), full_page=True)
                # the viewer sees the same attack and rule, and no button anywhere
                vw = pages["viewer"]
                expect(vw.get_by_test_id(f"mitigation-{mid}")).to_be_visible(timeout=5_000)
                expect(vw.get_by_test_id("attacks-active")).to_contain_text("syn_flood")
                assert vw.get_by_test_id("mitigations").locator("button").count() == 0
                vw.screenshot(path=str(ARTIFACTS / "dashboard-viewer.png"), full_page=True)
                # the operator withdraws it
                withdraw.click()
                expect(op.get_by_test_id(f"mitigation-{mid}")).to_have_count(0, timeout=10_000)
                expect(vw.get_by_test_id(f"mitigation-{mid}")).to_have_count(0, timeout=5_000)
                op.screenshot(path=str(ARTIFACTS / "dashboard-withdrawn.png"), full_page=True)
            finally:
                ctx.close()
        removed = shield.events.wait_for(
            lambda e: e["event"] == "mitigation_removed" and e["rule"]["mitigation_id"] == int(mid), 5
        )
        assert removed is not None
        assert (removed["actor"], removed["reason"]) == (f"token:{names[0]}", "withdrawn from the dashboard")
        print(f"screenshots: {ARTIFACTS}/dashboard-*.png")
    finally:
        if attack is not None:
            attack.stop()
        shield.stop()
        subprocess.run(
            ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main", "stop", "--detach",
             "--config", str(shield.config_path)],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        for n in names:
            if any(t.name == n for t in tokens.tokens()):
                tokens.revoke(n)
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
