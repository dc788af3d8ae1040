"""``ddos-shield``: the one console command (see ``ddos-shield --help``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddos_shield.errors import ShieldError

if TYPE_CHECKING:
    from ddos_shield.config import Config
    from ddos_shield.mitigate.base import Backend

DESCRIPTION = """\
DDoS Shield watches the traffic of the protected prefixes on the interfaces it is
given, detects floods within a fraction of a second and blocks them in the kernel
(XDP, or nftables where XDP cannot attach), keeping legitimate users served.

commands:
  run --config FILE        run the shield: attach the data plane, detect, mitigate,
                           write JSON events (one per line), keep the history ([store]),
                           send alerts ([alerts]) and show a live view
  stop [--detach]          stop the running shield; protection stays in the kernel
                           unless --detach removes it (and withdraws every BGP
                           announcement, which otherwise go after bgp.deadman_seconds)
  status [--json]          the data plane's state and counters (no running shield needed),
                           and the running shield's own through its API when it has one
  baseline show [--json]   the learned baselines, as last stored in shield.state_dir
  bypass on|off            the kill switch: pass everything, drop nothing (works even
                           when the control process is dead)
  config example|check     print an annotated example configuration / validate one
  lab up|down|status       build, remove or inspect the namespace test network
  lab attack KIND          launch a real, bounded attack inside the lab
  demo [--json]            lab + shield + attacks one after another, then a summary
  analyze FILE...          replay pcap/pcapng captures through the detection; report attacks
  build                    compile the XDP program and the pcap record walker (set-up does it)
  token create|list|revoke API tokens (roles viewer, operator, admin) for the REST API
                           and the dashboard
  mitigation list|add|approve|withdraw
                           steer the running shield through its API (as root on its
                           host no token is needed)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddos-shield", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run the shield",
        description="Attach the data plane, detect and mitigate. Each attack climbs its host group's "
        "escalation ladder (observe, rate_limit, drop, drop_sources, flowspec, blackhole), one step at a "
        "time while the traffic reaching the target stays above its thresholds; drops on critical assets "
        "wait for an operator's approval; nothing covers the never-block list. At start the backends are "
        "reconciled with the record of mitigations in shield.state_dir. The history (attacks, mitigations, "
        "audit log, attack captures) goes to an SQLite file, or PostgreSQL when configured ([store]); alerts go to "
        "webhooks, syslog and e-mail ([alerts]). SIGHUP re-reads the configuration file (as the API's reload: "
        "validated whole, refused with the reasons logged, or swapped in at once).",
    )
    r.add_argument("--config", "-c", required=True, help="configuration file (TOML)")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and report everything (ladder, approvals, operators' rules), enforce nothing, keep no record",
    )
    r.add_argument("--no-live", action="store_true", help="no live view on the terminal")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("stop", help="stop the running shield")
    s.add_argument("--config", "-c", help="configuration file (for its state and pin directories)")
    s.add_argument(
        "--detach",
        action="store_true",
        help="also detach the data plane, remove its rules and withdraw every BGP announcement",
    )
    s.set_defaults(func=_cmd_stop)

    st = sub.add_parser("status", help="the data plane's state and counters")
    st.add_argument("--config", "-c", help="configuration file (for its pin directory)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_cmd_status)

    bl = sub.add_parser("baseline", help="the learned baselines")
    blsub = bl.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    bls = blsub.add_parser(
        "show",
        help="the baselines as last stored (every save_every_seconds and at stop)",
        description="Print the learned baselines as the running shield last stored them in shield.state_dir: "
        "per destination, learning or learned, and per category the level and spread of packets, bits and "
        "new flows per second.",
    )
    bls.add_argument("--config", "-c", help="configuration file (for its state directory)")
    bls.add_argument("--json", action="store_true", help="print JSON")
    bls.add_argument("--top", type=int, default=50, help="the most recently active destinations shown (default 50)")
    bls.set_defaults(func=_cmd_baseline_show)

    bp = sub.add_parser("bypass", help="the kill switch: pass everything while on")
    bp.add_argument("state", choices=("on", "off"))
    bp.add_argument("--config", "-c", help="configuration file (for its pin directory)")
    bp.set_defaults(func=_cmd_bypass)

    c = sub.add_parser("config", help="example configuration, validation")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    csub.add_parser("example", help="print an annotated example configuration").set_defaults(func=_cmd_config_example)
    chk = csub.add_parser("check", help="validate a configuration file; names the line and field of each mistake")
    chk.add_argument("file")
    chk.set_defaults(func=_cmd_config_check)

    lab = sub.add_parser("lab", help="the namespace test network")
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = lsub.add_parser("up", help="build the lab (tears down leftovers first)")
    up.add_argument("--capacity-mbit", type=float, default=10.0, help="bottleneck in front of the victim")
    up.add_argument("--queue-packets", type=int, default=100, help="bottleneck queue length in packets")
    up.set_defaults(func=_cmd_lab_up)
    lsub.add_parser("down", help="remove the lab").set_defaults(func=_cmd_lab_down)
    lsub.add_parser("status", help="show the lab as JSON").set_defaults(func=_cmd_lab_status)
    atk = lsub.add_parser("attack", help="launch a bounded attack at the lab's victim")
    atk.add_argument(
        "kind",
        help="syn, udp, icmp, frag, scan (fixed source); udp-spoofed, syn-spoofed, ack-spoofed, rst-spoofed, "
        "synack-spoofed, gre-spoofed, reflect-spoofed (UDP answers from --sport)",
    )
    atk.add_argument("--family", type=int, choices=(4, 6), default=4)
    atk.add_argument("--pps", type=int, default=20000, help="offered packets per second")
    atk.add_argument("--seconds", type=float, default=5.0, help="duration (the packet count is pps x seconds)")
    atk.add_argument("--dport", type=int, default=80)
    atk.add_argument("--sport", type=int, help="reflect-spoofed: the reflectors' service port (53 by default)")
    atk.add_argument("--payload", type=int, default=32, help="bytes after the UDP/ICMP/GRE header")
    atk.add_argument("--cpu", type=int, help="pin the generator to this CPU")
    atk.add_argument(
        "--spread", metavar="PREFIX", help="carpet bomb: destinations count through this lab prefix (IPv4 /24-/30)"
    )
    atk.add_argument(
        "--many-sources", action="store_true", help="syn-spoofed over IPv6: every packet from a new source"
    )
    atk.set_defaults(func=_cmd_lab_attack)

    d = sub.add_parser("demo", help="lab + shield + real attacks, then a summary")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    d.add_argument("--attacks", default=None, help="comma-separated KIND[/6] list (default: all kinds)")
    d.add_argument("--pps", type=int, default=20000, help="attack rate")
    d.add_argument("--seconds", type=float, default=5.0, help="attack duration")
    d.set_defaults(func=_cmd_demo)

    an = sub.add_parser(
        "analyze",
        help="replay captures through the detection and report the attacks",
        description="Replay pcap/pcapng captures through the shield's own detection at their own timestamps "
        "(as fast as possible) and report each attack: type, target, start and end, peak rates, top sources "
        "or spoofed share, and the rule the shield would have applied (dry run). Exit status 0 whether or not "
        "attacks were found, 2 when a file cannot be read.",
    )
    an.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng files, each analysed on its own")
    an.add_argument(
        "--config",
        "-c",
        help="configuration file whose protected prefixes and groups apply "
        "(default: every destination protected with the default group's thresholds)",
    )
    an.add_argument("--json", action="store_true", help="print the report as one JSON object")
    an.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report to FILE")
    an.set_defaults(func=_cmd_analyze)

    _add_token_parser(sub)
    _add_mitigation_parser(sub)

    b = sub.add_parser("build", help="compile the XDP program and the pcap record walker")
    b.add_argument("--force", action="store_true", help="rebuild even if they are up to date")
    b.set_defaults(func=_cmd_build)
    return p


def _add_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser(
        "token",
        help="API tokens for the REST API and the dashboard",
        description="Tokens are kept hashed in shield.state_dir/api-tokens.json (0600); a running shield "
        "sees changes at once. Roles: viewer reads; operator also adds, approves and withdraws mitigations; "
        "admin also views and reloads the configuration.",
    )
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="create a token and print it (once: it is not stored)")
    c.add_argument("name", help="the token's name: changes made with it are recorded as token:NAME")
    c.add_argument("--role", choices=("viewer", "operator", "admin"), default="viewer")
    ls = tsub.add_parser("list", help="names, roles and creation times (never the tokens)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    rv = tsub.add_parser("revoke", help="revoke a token (refused from the next request on)")
    rv.add_argument("name")
    for p in (c, ls, rv):
        p.add_argument("--config", "-c", help="configuration file (for shield.state_dir)")
        p.set_defaults(func=_cmd_token)


def _add_mitigation_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "mitigation",
        help="list, add, approve or withdraw mitigations of the running shield",
        description="Acts on the running shield through its API (api.listen). Token: --token, "
        "$DDOS_SHIELD_TOKEN, or as root on the shield's host the shield's local admin token. "
        "Address: --url, $DDOS_SHIELD_URL, the local token's, api.listen of --config, http://127.0.0.1:8470.",
    )
    msub = m.add_subparsers(dest="mitigation_command", required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="rules in force and those awaiting approval")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add = msub.add_parser("add", help="put a rule in force by hand")
    add.add_argument("--src", help="source prefix (CIDR or address)")
    add.add_argument("--dst", help="destination prefix (CIDR or address)")
    add.add_argument("--proto", help="IP protocol: tcp, udp, icmp, icmpv6 or a number")
    add.add_argument("--sport", help="source port or range LO-HI")
    add.add_argument("--dport", help="destination port or range LO-HI")
    add.add_argument(
        "--action",
        choices=("drop", "rate_limit", "observe", "blackhole"),
        default="drop",
        help="what to do with the matching traffic (default drop); blackhole: a BGP route for one address "
        "(--dst only, /32 or /128) with the BLACKHOLE community 65535:666, announced by the bgp backend, for "
        "admin tokens only (root's local token is one): all the target's traffic is dropped upstream",
    )
    add.add_argument(
        "--backend",
        help="enforcement backend by name (default: the data plane's; bgp for --action blackhole); "
        "'bgp' with drop or rate_limit announces the rule upstream as Flowspec",
    )
    add.add_argument("--rate-pps", type=int, default=0, help="with --action rate_limit: packets per second let through")
    add.add_argument(
        "--per-source",
        action="store_true",
        help="with --action rate_limit: the rate applies to each source address separately (a source above it "
        "is cut to it, sources below are untouched); not on the bgp backend",
    )
    add.add_argument("--ttl", type=float, default=600.0, help="seconds the rule stays unless withdrawn (default 600)")
    add.add_argument("--reason", required=True, help="why (recorded with the rule)")
    ap = msub.add_parser("approve", help="approve a mitigation that awaits an operator")
    ap.add_argument("id", type=int, help="mitigation id")
    wd = msub.add_parser("withdraw", help="withdraw a mitigation now")
    wd.add_argument("id", type=int, help="mitigation id")
    wd.add_argument("--reason", default="withdrawn by an operator", help="why (recorded)")
    for p in (ls, add, ap, wd):
        p.add_argument("--config", "-c", help="configuration file (for shield.state_dir and api.listen)")
        p.add_argument("--url", help="the API's base URL, e.g. https://shield.example:8470")
        p.add_argument("--token", help="API token (default: $DDOS_SHIELD_TOKEN, or root's local token)")
        p.add_argument("--cafile", help="PEM file to verify the API's TLS certificate with")
        p.set_defaults(func=_cmd_mitigation)


# ---- run / stop ---------------------------------------------------------------------


def _pid_file(state_dir: str) -> Path:
    return Path(state_dir) / "shield.pid"


def _cmd_run(args: argparse.Namespace) -> int:
    from ddos_shield import config as configmod
    from ddos_shield.alerts import AlertDispatcher, senders_for
    from ddos_shield.api.server import ApiService
    from ddos_shield.capture.sources import open_sources
    from ddos_shield.dataplane import open_dataplane
    from ddos_shield.dataplane.base import DataPlane
    from ddos_shield.dataplane.replay import ReplayDataPlane
    from ddos_shield.engine import Engine
    from ddos_shield.engine.ledger import FILE_NAME as LEDGER_FILE
    from ddos_shield.events import EventSink
    from ddos_shield.mitigate.registry import open_backends
    from ddos_shield.store import PacketTap, StoreError, open_store
    from ddos_shield.store.baseline import FILE_NAME as BASELINE_FILE

    cfg = configmod.load(args.config)
    if args.dry_run:
        cfg = cfg.model_copy(update={"shield": cfg.shield.model_copy(update={"dry_run": True})})
    state = Path(cfg.shield.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    pidf = _pid_file(cfg.shield.state_dir)
    _refuse_second_instance(pidf)
    events = EventSink.open(cfg.events.file)
    # the history: a writer thread fed by the event bus, attack captures from the tap
    tap = PacketTap() if cfg.store.enabled and cfg.store.pcap_packets_per_attack else None
    try:
        store = open_store(cfg, tap)
    except StoreError as e:
        # protection comes first: the shield runs on without its history
        logging.getLogger(__name__).error("%s; running without the history", e)
        events.emit("store_failed", time.time(), reason=str(e))
        store, tap = None, None
    if store is not None:
        events.subscribe(store)
    # webhooks, syslog, e-mail: each on its own thread (kept with none, so that a reload may add some)
    alerts = AlertDispatcher(cfg, senders_for(cfg))
    events.subscribe(alerts)
    if cfg.shield.interfaces:
        dataplane: DataPlane = open_dataplane(cfg)
    else:
        # flow collectors and mirror ports only: detect and decide, nothing to enforce on
        logging.getLogger(__name__).warning("no shield.interfaces: detection only, rules are not enforced")
        dataplane = ReplayDataPlane()
        dataplane.name = "none"
    # in dry run the engine shadows every backend with an in-memory one itself
    engine = Engine(
        cfg,
        dataplane,
        dataplane.backend,
        events,
        sources=open_sources(cfg),
        tap=tap,
        backends=open_backends(cfg),
        state_file=state / LEDGER_FILE,
        baseline_file=state / BASELINE_FILE,
    )
    # a reload through the API swaps engine.config: the history and the alerts follow it
    if store is not None:
        store.follow(lambda: engine.config)
    alerts.follow(lambda: engine.config)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    pidf.write_text(f"{os.getpid()}\n")
    detached = False
    api: ApiService | None = None

    def _reload_file() -> None:
        from ddos_shield.api.view import ReloadRefused, ShieldView

        # the same path as the API's reload (validation, restart-only settings, events)
        view = api.view if api is not None else ShieldView(engine, events, config_path=args.config)
        try:
            view.reload(None, actor="signal:SIGHUP")
        except ReloadRefused as e:
            logging.getLogger(__name__).error("SIGHUP: reload refused: %s", "; ".join(e.errors))
        finally:
            if api is None:
                view.close()

    def _on_hup(signum: int, _frame: object) -> None:
        # not in the handler itself: it interrupts the main thread, maybe inside a tick
        threading.Thread(target=_reload_file, name="sighup-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, _on_hup)
    try:
        engine.start(time.time())
        if cfg.api.listen:
            try:
                api = ApiService(engine, events, cfg, config_path=args.config, store=store, alerts=alerts)
            except ShieldError as e:
                # protection comes first: the shield runs on without its management service
                logging.getLogger(__name__).error("%s; running without the API", e)
                events.emit("api_failed", time.time(), reason=str(e))
        print("ready", file=sys.stderr, flush=True)
        live = None
        if not args.no_live and sys.stderr.isatty():
            from ddos_shield.cli.live import LiveView

            live = LiveView(engine)
            live.start()
        try:
            engine.run(stop)
        finally:
            if live is not None:
                live.stop()
    finally:
        if api is not None:
            api.stop()
        engine.close()
        detached = cfg.shield.detach_on_stop
        dataplane.close(detach=detached)
        _close_backends([b for b in engine.backends.values() if b is not dataplane.backend], detached)
        events.emit("stopped", time.time(), detached=detached)
        alerts.close()  # delivers what is queued, a bounded wait
        if store is not None:
            store.close()  # writes what is queued first
        events.close()
        pidf.unlink(missing_ok=True)
    return 0


def _close_backends(backends: list[Backend], detached: bool) -> None:
    """The further backends: notify delivers what is queued; BGP stops refreshing (its
    announcements go after bgp.deadman_seconds) or, detached, withdraws them at once."""
    from ddos_shield.mitigate.bgp import BgpBackend

    for b in backends:
        try:
            if detached and isinstance(b, BgpBackend):
                b.shutdown()
            else:
                b.close()
        except ShieldError as e:
            logging.getLogger(__name__).error("closing backend %s: %s", b.name, e)


def _refuse_second_instance(pidf: Path) -> None:
    try:
        pid = int(pidf.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # stale pid file of a killed shield: take over
    raise ShieldError(f"a shield is already running (pid {pid}, {pidf}); stop it first")


def _cmd_stop(args: argparse.Namespace) -> int:
    cfg = _config_or_default(args.config)
    pidf = _pid_file(cfg.shield.state_dir)
    try:
        pid = int(pidf.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            print(f"ddos-shield: pid {pid} did not stop within 10 s", file=sys.stderr)
            return 1
        except ProcessLookupError:
            print(f"stopped pid {pid}")
    else:
        print("no shield running")
    if args.detach:
        from ddos_shield.dataplane import detach_all
        from ddos_shield.engine.ledger import FILE_NAME as LEDGER_FILE
        from ddos_shield.engine.ledger import remove_record

        for what in detach_all(cfg):
            print(f"removed {what}")
        from ddos_shield.mitigate.bgp import speaker_dir, stop_speaker

        if stop_speaker(speaker_dir(cfg)):
            print("withdrew every BGP announcement and stopped the speaker")
        # the record of mitigations goes with them: a next start must not re-apply them
        for gone in remove_record(Path(cfg.shield.state_dir) / LEDGER_FILE):
            print(f"removed {gone}")
    return 0


def _config_or_default(path: str | None) -> Config:
    from ddos_shield import config as configmod

    return configmod.load(path) if path else configmod.Config(protected=[])


def _cmd_status(args: argparse.Namespace) -> int:
    from ddos_shield.dataplane import open_control

    cfg = _config_or_default(args.config)
    ctl = open_control(cfg)
    try:
        pid = _pid_file(cfg.shield.state_dir)
        info = {
            "kind": ctl.name,
            "dataplane": ctl.global_stats(),
            "bypass": ctl.bypass,
            "pin_dir": cfg.shield.pin_dir,
            "shield_pid": int(pid.read_text()) if pid.exists() else None,
        }
    finally:
        ctl.close()
    shield = _shield_status(cfg) if info["shield_pid"] else None
    if shield is not None:
        info["shield"] = shield
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"{info['kind']} data plane; kill switch {'ON' if info['bypass'] else 'off'}; "
            f"shield process {info['shield_pid'] or 'not running'}"
        )
        if shield is not None:
            print(
                f"  attacks under way {shield['attacks_active']}, mitigations in force {shield['mitigations_active']}, "
                f"loop p50 {shield['loop_ms_p50']:.1f} ms, up {shield['uptime_s']:.0f} s"
            )
        for k, v in info["dataplane"].items():  # type: ignore[attr-defined]
            print(f"  {k:14} {v}")
    return 0


def _shield_status(cfg: Config) -> dict[str, Any] | None:
    """The running shield's own status through its API, when this user can reach it
    without a token (root on its host); None otherwise: the data plane's view stands alone."""
    from ddos_shield.api.tokens import read_local
    from ddos_shield.cli.client import ApiClient

    if read_local(cfg.shield.state_dir) is None:
        return None
    client = ApiClient.resolve(cfg)
    try:
        st: dict[str, Any] = client.request("GET", "/status")
    except ShieldError as e:
        logging.getLogger(__name__).warning("%s", e)
        return None
    finally:
        client.close()
    return {
        k: st[k] for k in ("uptime_s", "attacks_active", "mitigations_active", "loop_ms_p50", "dataplane", "dry_run")
    }


def _cmd_baseline_show(args: argparse.Namespace) -> int:
    from ddos_shield.store.baseline import FILE_NAME, load

    cfg = _config_or_default(args.config)
    path = Path(cfg.shield.state_dir) / FILE_NAME
    if not path.exists():
        print(f"ddos-shield: {path}: no baselines stored yet", file=sys.stderr)
        return 1
    b = load(path, cfg.baseline)
    now = time.time()
    rows = b.rows(now, limit=max(args.top, 0))
    if args.json:
        print(json.dumps({"path": str(path), **b.summary(now), "rows": rows}))
        return 0
    s = b.summary(now)
    print(
        f"{path}: {s['destinations']} destinations, {s['learned']} learned, {s['learning']} learning, "
        f"{s['daily_profile']} with a daily profile"
    )
    for r in rows:
        state = "learning" if r["learning"] else "learned"
        print(f"  {r['destination']:40} {state:9} {r['learned_seconds']:>10.0f} s learned")
        for cat, m in r["categories"].items():
            pps, bps = m["pps"], m["bps"]
            print(
                f"    {cat:6} {pps['level']:>12.1f} pps +- {pps['spread']:<10.1f} "
                f"{bps['level'] / 1e6:>10.3f} Mbit/s +- {bps['spread'] / 1e6:.3f}"
            )
    return 0


def _cmd_bypass(args: argparse.Namespace) -> int:
    from ddos_shield.dataplane import open_control
    from ddos_shield.mitigate.bgp import set_speaker_bypass, speaker_dir

    cfg = _config_or_default(args.config)
    on = args.state == "on"
    # the BGP speaker first: its bridge answers whether or not a shield process runs
    if set_speaker_bypass(speaker_dir(cfg), on):
        print(f"BGP: {'every announcement withdrawn (kept for bypass off)' if on else 'announcements restored'}")
    ctl = open_control(cfg)
    try:
        # The running shield rewrites the config map (sampling rate) now and then; make
        # sure the switch is seen to hold before saying so.
        for _ in range(5):
            ctl.set_bypass(on)
            time.sleep(0.2)
            if ctl.bypass == on:
                break
        else:
            raise ShieldError("the kill switch did not hold; is another process rewriting the data plane?")
    finally:
        ctl.close()
    print(f"kill switch {'ON: nothing is dropped' if on else 'off: rules enforced'}")
    return 0


# ---- config -------------------------------------------------------------------------


def _cmd_config_example(args: argparse.Namespace) -> int:
    from ddos_shield.config import example

    print(example())
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from ddos_shield.config import load

    cfg = load(args.file)
    groups = ", ".join(g.name for g in cfg.groups)
    print(f"{args.file}: ok ({len(cfg.protected)} protected prefixes; groups: {groups})")
    return 0


# ---- lab and demo -------------------------------------------------------------------


def _cmd_lab_up(args: argparse.Namespace) -> int:
    from ddos_shield.lab.topology import Lab

    Lab().up(capacity_mbit=args.capacity_mbit, queue_packets=args.queue_packets)
    print("lab up")
    return 0


def _cmd_lab_down(args: argparse.Namespace) -> int:
    from ddos_shield.lab.topology import Lab

    Lab().down()
    print("lab down")
    return 0


def _cmd_lab_status(args: argparse.Namespace) -> int:
    from ddos_shield.lab.topology import Lab

    print(json.dumps(Lab().status(), indent=2))
    return 0


def _cmd_lab_attack(args: argparse.Namespace) -> int:
    from ddos_shield.lab.attack import AttackSpec, launch

    spec = AttackSpec(
        kind=args.kind,
        family=args.family,
        pps=args.pps,
        seconds=args.seconds,
        dport=args.dport,
        cpu=args.cpu,
        spread=args.spread,
        many_sources=args.many_sources,
        sport=args.sport,
        payload=args.payload,
    )
    report = launch(spec).wait()
    print(json.dumps(report.to_json()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ddos_shield.lab.demo import run_demo

    return run_demo(json_out=args.json, attacks=args.attacks, pps=args.pps, seconds=args.seconds)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ddos_shield import config as configmod
    from ddos_shield.engine.offline import analyze
    from ddos_shield.ui import report

    cfg = configmod.load(args.config) if args.config else None
    with report.progress(sys.stderr) as progress:
        result = analyze(args.files, cfg, progress, config_path=args.config)
    if args.html:
        try:
            Path(args.html).write_text(report.render_html(result))
        except OSError as e:
            raise ShieldError(f"{args.html}: cannot write: {e.strerror or e}") from e
    print(report.render_json(result) if args.json else report.render_text(result).rstrip("\n"))
    return 0


# ---- tokens and mitigations (the API) ------------------------------------------------


def _cmd_token(args: argparse.Namespace) -> int:
    from ddos_shield.api.tokens import TokenStore

    cfg = _config_or_default(args.config)
    store = TokenStore(cfg.shield.state_dir)
    if args.token_command == "create":
        secret = store.create(args.name, args.role)
        print(secret)
        print(f"token {args.name!r} ({args.role}) created; it is shown only now", file=sys.stderr)
    elif args.token_command == "revoke":
        store.revoke(args.name)
        print(f"token {args.name!r} revoked")
    else:
        tokens = [t.public() for t in store.tokens()]
        if args.json:
            print(json.dumps(tokens))
        for t in [] if args.json else tokens:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["created"]))
            print(f"{t['name']:24} {t['role']:9} created {created}")
    return 0


def _cmd_mitigation(args: argparse.Namespace) -> int:
    from ddos_shield.cli.client import ApiClient

    cfg = _config_or_default(args.config)
    client = ApiClient.resolve(cfg, url=args.url, token=args.token, cafile=args.cafile)
    try:
        if args.mitigation_command == "list":
            out = client.request("GET", "/mitigations")
            if args.json:
                print(json.dumps(out))
            else:
                _print_mitigations(out["mitigations"])
        elif args.mitigation_command == "add":
            body = {
                "match": _match_from_args(args),
                "action": args.action,
                "ttl": args.ttl,
                "rate_pps": args.rate_pps,
                "reason": args.reason,
            }
            if args.per_source:
                body["per_source"] = True
            if args.backend:
                body["backend"] = args.backend
            rule = client.request("POST", "/mitigations", body)["mitigation"]
            print(f"mitigation {rule['mitigation_id']} added: {rule['action']} {_describe(rule['match'])}{_rate(rule)}")
        elif args.mitigation_command == "approve":
            rule = client.request("POST", f"/mitigations/{args.id}/approve")["mitigation"]
            print(f"mitigation {rule['mitigation_id']} approved: {rule['action']} {_describe(rule['match'])}")
        else:
            client.request("POST", f"/mitigations/{args.id}/withdraw", {"reason": args.reason})
            print(f"mitigation {args.id} withdrawn")
    finally:
        client.close()
    return 0


_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47}


def _match_from_args(args: argparse.Namespace) -> dict[str, object]:
    from ddos_shield.records import as_network

    match: dict[str, object] = {}
    for f in ("src", "dst"):
        v = getattr(args, f)
        if v:
            try:
                match[f] = str(as_network(v))
            except ValueError as e:
                raise ShieldError(f"--{f} {v!r}: {e}") from e
    if args.proto:
        p = args.proto.lower()
        if p not in _PROTOS and not (p.isdigit() and 0 <= int(p) < 256):
            raise ShieldError(f"--proto {args.proto!r}: expected tcp, udp, icmp, icmpv6, gre or 0-255")
        match["proto"] = _PROTOS.get(p) or int(p)
    for f in ("sport", "dport"):
        v = getattr(args, f)
        if v:
            lo, _, hi = v.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ShieldError(f"--{f} {v!r}: expected a port or a range LO-HI")
            match[f] = {"min": int(lo), "max": int(hi or lo)}
    if not match:
        raise ShieldError("give at least one of --src, --dst, --proto, --sport, --dport")
    return match


def _describe(match: dict[str, object]) -> str:
    from ddos_shield.records import Match

    return Match.from_json(match).describe()


def _print_mitigations(items: list[dict[str, Any]]) -> None:
    if not items:
        print("no mitigations")
        return
    print(f"{'id':>6} {'state':9} {'action':10} {'hits':>10} {'dropped':>10} {'left':>7}  match  (actor: reason)")
    for m in items:
        hits = m["hits"]
        print(
            f"{m['mitigation_id']:>6} {m['state']!s:9} {m['action']!s:10} {hits['packets']:>10} "
            f"{hits['dropped']:>10} {m['time_left']:>6.0f}s  {_describe(m['match'])}{_rate(m)}  "
            f"({m['actor']}: {m['reason']})"
        )


def _rate(rule: dict[str, Any]) -> str:
    """`` at N pps`` (`` per source``) for a rate limit, nothing for other actions."""
    if rule.get("action") != "rate_limit":
        return ""
    return f" at {rule.get('rate_pps')} pps" + (" per source" if rule.get("per_source") else "")


def _cmd_build(args: argparse.Namespace) -> int:
    from ddos_shield.capture import native
    from ddos_shield.dataplane.build import build

    print(build(force=args.force))
    try:
        print(native.build(force=args.force))
    except ShieldError as e:  # captures are still read, with the (slower) numpy walk
        print(f"warning: {e}; analyze reads pcap files without it", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        rc: int = args.func(args)
    except ShieldError as e:
        print(f"ddos-shield: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
