"""Build, inspect and remove the lab network (see the diagram in :mod:`ddos_shield.lab`).

Everything is done with ``ip``, ``bridge``, ``tc`` and ``nft`` run inside the lab's
namespaces, so what the lab is can be read straight off the commands below.

Beyond the address plan, a few choices keep measurements exact:

* the attacker's neighbour entries (and the shield's entries for the attacker) are
  permanent, the bridge's forwarding entries static, DAD and router solicitation off,
  and the attacker's kernel neither answers SYN-ACKs with RSTs nor sends MLD reports,
  so the attacker's transmit counter counts the generator's packets and nothing else;
* the upstream bridge drops SYN-ACKs addressed to the attacker (hping3 would count the
  victim's retransmitted SYN-ACKs against its ``-c`` and stop early);
* dsl-up has IPv6 and bridge netfilter off: it is a wire, not a host.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ddos_shield.errors import LabError
from ddos_shield.lab import (
    ATTACKER_IF,
    ATTACKER_MAC,
    ATTACKER_SOURCES_V4,
    ATTACKER_SOURCES_V6,
    ATTACKER_V4,
    ATTACKER_V6,
    CARPET_V4,
    CLIENT_IF,
    CLIENT_MAC,
    CLIENT_V4,
    CLIENT_V6,
    GUARD_TABLE,
    INSIDE_V4,
    INSIDE_V6,
    LAB_NETS,
    LAB_PIN_DIR,
    LAB_RUN_DIR,
    NS_ATTACKER,
    NS_CLIENT,
    NS_PREFIX,
    NS_SHIELD,
    NS_UPSTREAM,
    NS_VICTIM,
    OUTSIDE_V4,
    OUTSIDE_V6,
    SHIELD_IN_MAC,
    SHIELD_IN_V4,
    SHIELD_IN_V6,
    SHIELD_INSIDE_IF,
    SHIELD_OUT_MAC,
    SHIELD_OUT_V4,
    SHIELD_OUT_V6,
    SHIELD_OUTSIDE_IF,
    SPOOF_V4,
    SPOOF_V6,
    UPSTREAM_BRIDGE,
    UPSTREAM_PORTS,
    VICTIM_HTTP_PORT,
    VICTIM_IF,
    VICTIM_MAC,
    VICTIM_V4,
    VICTIM_V6,
)

NAMESPACES = (NS_ATTACKER, NS_CLIENT, NS_UPSTREAM, NS_SHIELD, NS_VICTIM)
VICTIM_PID_FILE = f"{LAB_RUN_DIR}/victim.pid"
VICTIM_LOG_FILE = f"{LAB_RUN_DIR}/victim.log"
#: Extra table in dsl-atk: the attacking host stays silent (see the module docstring).
ATTACKER_QUIET_TABLE = "dsl_quiet"
_NETNS_DIR = Path("/run/netns")


# ---- running things inside the lab ----------------------------------------------


def _ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    if not ns.startswith(NS_PREFIX) or "/" in ns:
        raise LabError(f"namespace: expected a {NS_PREFIX}* lab namespace, got {ns!r}")
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside lab namespace ``ns`` and wait for it.

    Defaults: text mode, output captured, a 60 s time limit and ``check=True``, where a
    failure raises :class:`LabError` naming the command and its stderr (pass
    ``check=False`` to get the CompletedProcess whatever the exit code).
    """
    check = kw.pop("check", True)
    kw.setdefault("text", True)
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    full = _ns_argv(ns, argv)
    try:
        proc: subprocess.CompletedProcess[str] = subprocess.run(full, check=False, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{ns}: {' '.join(argv)}: {e}") from e
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if isinstance(proc.stderr, str) else ""
        raise LabError(f"{ns}: {' '.join(argv)} exited {proc.returncode}: {err}")
    return proc


def popen_in(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` inside lab namespace ``ns`` and return at once; ``kw`` go to :class:`subprocess.Popen`.

    Bytes or text as with Popen itself (pass ``text=True`` for text).  ``ip netns exec``
    execs the command, so the Popen's pid is the command's own pid.
    """
    try:
        proc: subprocess.Popen[Any] = subprocess.Popen(_ns_argv(ns, argv), **kw)
    except OSError as e:
        raise LabError(f"{ns}: {' '.join(argv)}: {e}") from e
    return proc


def _ip_json(ns: str, args: Sequence[str]) -> Any:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise LabError(f"{ns}: ip {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else []


def if_counters(ns: str, ifname: str) -> dict[str, int]:
    """The kernel's packet and byte counters of ``ifname`` in ``ns`` (rx/tx packets, bytes, dropped)."""
    links = _ip_json(ns, ["-s", "link", "show", "dev", ifname])
    if not links:
        raise LabError(f"{ns}: no interface {ifname}")
    stats = links[0].get("stats64") or links[0].get("stats") or {}
    rx, tx = stats.get("rx", {}), stats.get("tx", {})
    return {
        "rx_packets": int(rx.get("packets", 0)),
        "rx_bytes": int(rx.get("bytes", 0)),
        "rx_dropped": int(rx.get("dropped", 0)),
        "tx_packets": int(tx.get("packets", 0)),
        "tx_bytes": int(tx.get("bytes", 0)),
        "tx_dropped": int(tx.get("dropped", 0)),
    }


def snmp(ns: str) -> dict[str, int]:
    """The IP/ICMP/TCP/UDP protocol counters of ``ns`` (/proc/net/snmp and snmp6), e.g. ``UdpNoPorts``, ``Udp6NoPorts``."""
    out = run_in(ns, ["cat", "/proc/net/snmp", "/proc/net/snmp6"])
    counters: dict[str, int] = {}
    lines = out.stdout.splitlines()
    for head, vals in itertools.pairwise(lines):
        # snmp: pairs of "Proto: names" / "Proto: values" lines
        if ":" in head and head.split(":", 1)[0] == vals.split(":", 1)[0] and not head.split()[1].isdigit():
            proto = head.split(":", 1)[0]
            for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
                if v.lstrip("-").isdigit():
                    counters[proto + k] = int(v)
    for line in lines:
        # snmp6: "Name value" lines
        parts = line.split()
        if len(parts) == 2 and ":" not in parts[0] and parts[1].isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def _batch(ns: str | None, tool: str, lines: Sequence[str]) -> None:
    """Run several ``ip``/``tc``/``bridge`` commands in one process (``-batch -``)."""
    argv = [tool] + (["-n", ns] if ns else []) + ["-batch", "-"]
    out = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise LabError(f"{ns or 'host'}: {tool} -batch failed: {out.stderr.strip()}")


def lab_namespaces() -> list[str]:
    """Names of the network namespaces present whose name starts with the lab prefix."""
    try:
        return sorted(n for n in os.listdir(_NETNS_DIR) if n.startswith(NS_PREFIX))
    except FileNotFoundError:
        return []


def _is_mountpoint(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def _nets(version: int) -> str:
    return ", ".join(str(n) for n in LAB_NETS if n.version == version)


def guard_ruleset() -> str:
    """The nftables guard installed in every lab namespace (``nft -f`` syntax)."""
    return f"""\
table inet {GUARD_TABLE} {{
    set lab4 {{ type ipv4_addr; flags interval; elements = {{ {_nets(4)} }}; }}
    set lab6 {{ type ipv6_addr; flags interval; elements = {{ {_nets(6)} }}; }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "lo" accept
        # Link scope cannot leave the link: neighbour discovery needs it.
        ip6 daddr {{ fe80::/10, ff02::/16 }} accept
        ip daddr != @lab4 counter drop
        ip6 daddr != @lab6 counter drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip daddr != @lab4 counter drop
        ip6 daddr != @lab6 counter drop
    }}
}}
"""


def _quiet_ruleset() -> str:
    # A flooding host that answered the victim's SYN-ACKs with RSTs, or announced its
    # multicast groups, would add packets of its own to the attacker's transmit counter.
    return f"""\
table inet {ATTACKER_QUIET_TABLE} {{
    chain output {{
        type filter hook output priority filter; policy accept;
        tcp flags & rst == rst counter drop
        icmpv6 type {{ mld-listener-report, mld2-listener-report, nd-router-solicit }} counter drop
    }}
}}
"""


def _upstream_ruleset() -> str:
    # The victim answers a SYN flood from the attacker's own address with SYN-ACKs, and
    # retransmits them; hping3 stops once it has *received* -c packets, so those answers
    # would end its run early.  A flooding host ignores them anyway: the wire drops them.
    return f"""\
table bridge {ATTACKER_QUIET_TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ether daddr {ATTACKER_MAC} tcp flags & (syn | ack) == syn | ack counter drop
    }}
}}
"""


def _nft(ns: str, ruleset: str) -> None:
    run_in(ns, ["nft", "-f", "-"], input=ruleset)


SESSION_LOCK = f"{LAB_RUN_DIR}/session.lock"


@contextlib.contextmanager
def lab_session(timeout: float = 900.0) -> Iterator[None]:
    """Hold the lab for one user at a time: an exclusive flock on :data:`SESSION_LOCK`.

    The lab's names are fixed, so two test runs on one machine would tear down each
    other's lab; test fixtures wrap ``up() ... down()`` in this.  Waits up to
    ``timeout`` seconds for the lab to be free, then raises :class:`LabError`.
    """
    Path(LAB_RUN_DIR).mkdir(parents=True, exist_ok=True)
    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the lab is held by another session ({SESSION_LOCK}) for over {timeout} s"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


class Lab:
    """The lab network: five namespaces, a bridge, a routing shield, a shaped link, an HTTP victim.

    Usage::

        lab = Lab()
        lab.up(capacity_mbit=10.0, queue_packets=100)   # idempotent: removes leftovers first
        print(lab.status()["victim"])                   # {'pid': 1234, 'alive': True}
        lab.down()                                      # every dsl-* namespace, processes, bpffs

    Everything lives in the kernel, so a ``Lab()`` made in another process sees the same lab.
    """

    python: str

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    # ---- life cycle ---------------------------------------------------------------

    def up(self, capacity_mbit: float = 10.0, queue_packets: int = 100) -> None:
        """Build the lab from scratch and return once the victim answers HTTP over IPv4 and IPv6."""
        if not capacity_mbit > 0:
            raise LabError(f"capacity_mbit: expected a positive number, got {capacity_mbit!r}")
        if not (isinstance(queue_packets, int) and queue_packets > 0):
            raise LabError(f"queue_packets: expected a positive integer, got {queue_packets!r}")
        self.down()
        try:
            Path(LAB_RUN_DIR).mkdir(parents=True, exist_ok=True)
            self._mount_bpffs()
            self._namespaces()
            # The guard goes in before any interface exists.
            for ns in NAMESPACES:
                _nft(ns, guard_ruleset())
            _nft(NS_ATTACKER, _quiet_ruleset())
            self._links()
            self._addresses()
            self.shape(capacity_mbit, queue_packets)
            _nft(NS_UPSTREAM, _upstream_ruleset())
            self._start_victim()
            self._wait_ready()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Kill every process in the lab's namespaces, delete every dsl-* namespace, unmount the lab bpffs."""
        present = lab_namespaces()
        pids: set[int] = set()
        for ns in present:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30, check=False)
            pids.update(int(p) for p in out.stdout.split() if p.isdigit())
        pids.discard(os.getpid())
        _terminate(pids)
        for ns in present:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        left = [ns for ns in lab_namespaces() if ns in present]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(VICTIM_PID_FILE)
        if _is_mountpoint(LAB_PIN_DIR):
            out = subprocess.run(["umount", LAB_PIN_DIR], capture_output=True, text=True, timeout=30, check=False)
            if out.returncode != 0:
                subprocess.run(["umount", "-l", LAB_PIN_DIR], capture_output=True, timeout=30, check=False)
        if left:
            raise LabError(f"could not delete namespaces {left}")

    def is_up(self) -> bool:
        """All five namespaces exist and the victim process is alive."""
        present = set(lab_namespaces())
        return all(ns in present for ns in NAMESPACES) and self._victim_pid() is not None

    # ---- the bottleneck -----------------------------------------------------------

    def shape(self, capacity_mbit: float, queue_packets: int) -> None:
        """(Re)set the bottleneck on the shield's in0: htb at ``capacity_mbit`` over a pfifo of ``queue_packets``."""
        rate = f"{round(capacity_mbit * 1000)}kbit"
        shown = subprocess.run(
            ["tc", "-n", NS_SHIELD, "-j", "qdisc", "show", "dev", SHIELD_INSIDE_IF],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        roots = [q for q in json.loads(shown.stdout or "[]") if q.get("root")] if shown.returncode == 0 else []
        # htb cannot be "changed" in place: keep an existing root, (re)set its class and queue.
        has_htb = any(q.get("kind") == "htb" and q.get("handle") == "1:" for q in roots)
        _batch(
            NS_SHIELD,
            "tc",
            [
                *([] if has_htb else [f"qdisc replace dev {SHIELD_INSIDE_IF} root handle 1: htb default 10"]),
                f"class replace dev {SHIELD_INSIDE_IF} parent 1: classid 1:10 htb rate {rate} ceil {rate}",
                f"qdisc replace dev {SHIELD_INSIDE_IF} parent 1:10 handle 10: pfifo limit {queue_packets}",
            ],
        )

    def bottleneck(self) -> dict[str, Any]:
        """Parameters and counters of the bottleneck as the kernel reports them."""
        out = subprocess.run(
            ["tc", "-n", NS_SHIELD, "-j", "-s", "qdisc", "show", "dev", SHIELD_INSIDE_IF],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        # tc prints classes as text only (no JSON for "class show").
        classes = subprocess.run(
            ["tc", "-n", NS_SHIELD, "class", "show", "dev", SHIELD_INSIDE_IF],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if out.returncode != 0 or classes.returncode != 0:
            raise LabError(f"{NS_SHIELD}: cannot read the qdiscs of {SHIELD_INSIDE_IF}: {out.stderr.strip()}")
        qdiscs = json.loads(out.stdout or "[]")
        fifo = next((q for q in qdiscs if q.get("kind") == "pfifo"), None)
        m = re.search(r"^class htb 1:10 .*?\brate (\d+(?:\.\d+)?)([KMG]?)bit", classes.stdout, re.M)
        rate_bit = float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)] if m else None
        return {
            "kind": "htb+pfifo" if fifo and m else None,
            "capacity_mbit": rate_bit / 1e6 if rate_bit is not None else None,
            "queue_packets": int(fifo["options"]["limit"]) if fifo else None,
            "sent_packets": int(fifo.get("packets", 0)) if fifo else 0,
            "dropped_packets": int(fifo.get("drops", 0)) if fifo else 0,
            "backlog_packets": int(fifo.get("qlen", 0)) if fifo else 0,
        }

    # ---- inspection ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The lab as the kernel sees it, JSON-serialisable."""
        present = lab_namespaces()
        interfaces: dict[str, dict[str, Any]] = {}
        for ns in NAMESPACES:
            if ns not in present:
                continue
            interfaces[ns] = {}
            for link in _ip_json(ns, ["-s", "addr", "show"]):
                name = link["ifname"]
                if name == "lo":
                    continue
                stats = link.get("stats64") or link.get("stats") or {}
                rx, tx = stats.get("rx", {}), stats.get("tx", {})
                interfaces[ns][name] = {
                    "mac": link.get("address"),
                    "state": link.get("operstate"),
                    "addresses": [
                        f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link"
                    ],
                    "counters": {
                        "rx_packets": rx.get("packets", 0),
                        "rx_bytes": rx.get("bytes", 0),
                        "rx_dropped": rx.get("dropped", 0),
                        "tx_packets": tx.get("packets", 0),
                        "tx_bytes": tx.get("bytes", 0),
                        "tx_dropped": tx.get("dropped", 0),
                    },
                }
        xdp: dict[str, Any] = {"attached": False, "mode": None, "prog_id": None}
        bottleneck: dict[str, Any] | None = None
        if NS_SHIELD in present:
            link = _ip_json(NS_SHIELD, ["link", "show", "dev", SHIELD_OUTSIDE_IF])
            info = link[0].get("xdp") if link else None
            if info:
                prog = info.get("prog") or {}
                xdp = {"attached": True, "mode": _xdp_mode(info.get("mode")), "prog_id": prog.get("id")}
            bottleneck = self.bottleneck()
        pid = self._victim_pid()
        return {
            "up": all(ns in present for ns in NAMESPACES) and pid is not None,
            "namespaces": {ns: ns in present for ns in NAMESPACES},
            "other_lab_namespaces": [ns for ns in present if ns not in NAMESPACES],
            "interfaces": interfaces,
            "victim": {"pid": pid, "alive": pid is not None, "port": VICTIM_HTTP_PORT},
            "shaping": bottleneck,
            "xdp_out0": xdp,
            "guard": {ns: guard_drops(ns) for ns in NAMESPACES if ns in present},
            "bpffs": {"path": LAB_PIN_DIR, "mounted": _is_mountpoint(LAB_PIN_DIR)},
        }

    # ---- building -------------------------------------------------------------------

    def _mount_bpffs(self) -> None:
        Path(LAB_PIN_DIR).mkdir(parents=True, exist_ok=True)
        if not _is_mountpoint(LAB_PIN_DIR):
            out = subprocess.run(
                ["mount", "-t", "bpf", "bpf", LAB_PIN_DIR], capture_output=True, text=True, timeout=30, check=False
            )
            if out.returncode != 0:
                raise LabError(f"cannot mount bpffs at {LAB_PIN_DIR}: {out.stderr.strip()}")

    def _namespaces(self) -> None:
        for ns in NAMESPACES:
            out = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=30, check=False)
            if out.returncode != 0:
                raise LabError(f"cannot create namespace {ns}: {out.stderr.strip()}")
        # Set before any interface exists, so that every interface inherits the defaults.
        common = [
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.router_solicitations=0",
            "net.ipv6.conf.default.router_solicitations=0",
            "net.ipv6.conf.all.accept_ra=0",
            "net.ipv6.conf.default.accept_ra=0",
        ]
        extra = {
            NS_SHIELD: ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            NS_UPSTREAM: ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        }
        for ns in NAMESPACES:
            run_in(ns, ["sysctl", "-q", "-w", *common, *extra.get(ns, [])])
            _batch(ns, "ip", ["link set lo up"])
        # Bridged frames must not detour through the host's br_netfilter hooks, where loaded.
        bridge_nf = [
            f"net.bridge.bridge-nf-call-{t}=0"
            for t in ("iptables", "ip6tables", "arptables")
            if Path(f"/proc/sys/net/bridge/bridge-nf-call-{t}").exists()
        ]
        if bridge_nf:
            run_in(NS_UPSTREAM, ["sysctl", "-q", "-w", *bridge_nf], check=False)

    def _links(self) -> None:
        atk, cli, shield = (UPSTREAM_PORTS[n] for n in (NS_ATTACKER, NS_CLIENT, NS_SHIELD))
        _batch(
            None,
            "ip",
            [
                f"link add name {ATTACKER_IF} netns {NS_ATTACKER} address {ATTACKER_MAC} type veth "
                f"peer name {atk} netns {NS_UPSTREAM}",
                f"link add name {CLIENT_IF} netns {NS_CLIENT} address {CLIENT_MAC} type veth "
                f"peer name {cli} netns {NS_UPSTREAM}",
                f"link add name {SHIELD_OUTSIDE_IF} netns {NS_SHIELD} address {SHIELD_OUT_MAC} type veth "
                f"peer name {shield} netns {NS_UPSTREAM}",
                f"link add name {SHIELD_INSIDE_IF} netns {NS_SHIELD} address {SHIELD_IN_MAC} type veth "
                f"peer name {VICTIM_IF} netns {NS_VICTIM} address {VICTIM_MAC}",
            ],
        )
        _batch(
            NS_UPSTREAM,
            "ip",
            [
                f"link add name {UPSTREAM_BRIDGE} type bridge mcast_snooping 0",
                f"link set {UPSTREAM_BRIDGE} up",
                *(f"link set {port} master {UPSTREAM_BRIDGE} up" for port in (atk, cli, shield)),
            ],
        )
        _batch(
            NS_UPSTREAM,
            "bridge",
            [
                f"fdb replace {ATTACKER_MAC} dev {atk} master static",
                f"fdb replace {CLIENT_MAC} dev {cli} master static",
                f"fdb replace {SHIELD_OUT_MAC} dev {shield} master static",
            ],
        )

    def _addresses(self) -> None:
        v4len, v6len = OUTSIDE_V4.prefixlen, OUTSIDE_V6.prefixlen
        in4len, in6len = INSIDE_V4.prefixlen, INSIDE_V6.prefixlen
        _batch(
            NS_ATTACKER,
            "ip",
            [
                *(f"addr add {a}/{v4len} dev {ATTACKER_IF}" for a in ATTACKER_SOURCES_V4),
                *(f"addr add {a}/{v6len} dev {ATTACKER_IF} nodad" for a in ATTACKER_SOURCES_V6),
                f"link set {ATTACKER_IF} up",
                f"neigh replace {SHIELD_OUT_V4} lladdr {SHIELD_OUT_MAC} dev {ATTACKER_IF} nud permanent",
                f"neigh replace {SHIELD_OUT_V6} lladdr {SHIELD_OUT_MAC} dev {ATTACKER_IF} nud permanent",
                f"route add default via {SHIELD_OUT_V4} dev {ATTACKER_IF}",
                f"route add default via {SHIELD_OUT_V6} dev {ATTACKER_IF}",
            ],
        )
        _batch(
            NS_CLIENT,
            "ip",
            [
                f"addr add {CLIENT_V4}/{v4len} dev {CLIENT_IF}",
                f"addr add {CLIENT_V6}/{v6len} dev {CLIENT_IF} nodad",
                f"link set {CLIENT_IF} up",
                f"route add default via {SHIELD_OUT_V4} dev {CLIENT_IF}",
                f"route add default via {SHIELD_OUT_V6} dev {CLIENT_IF}",
            ],
        )
        _batch(
            NS_SHIELD,
            "ip",
            [
                f"addr add {SHIELD_OUT_V4}/{v4len} dev {SHIELD_OUTSIDE_IF}",
                f"addr add {SHIELD_OUT_V6}/{v6len} dev {SHIELD_OUTSIDE_IF} nodad",
                f"addr add {SHIELD_IN_V4}/{in4len} dev {SHIELD_INSIDE_IF}",
                f"addr add {SHIELD_IN_V6}/{in6len} dev {SHIELD_INSIDE_IF} nodad",
                f"link set {SHIELD_OUTSIDE_IF} up",
                f"link set {SHIELD_INSIDE_IF} up",
                *(
                    f"neigh replace {a} lladdr {ATTACKER_MAC} dev {SHIELD_OUTSIDE_IF} nud permanent"
                    for a in (*ATTACKER_SOURCES_V4, *ATTACKER_SOURCES_V6)
                ),
                # The victim's answers to spoofed sources go to the attacker, whose kernel drops them.
                f"route add {SPOOF_V4} via {ATTACKER_V4} dev {SHIELD_OUTSIDE_IF}",
                f"route add {SPOOF_V6} via {ATTACKER_V6} dev {SHIELD_OUTSIDE_IF}",
            ],
        )
        _batch(
            NS_VICTIM,
            "ip",
            [
                f"addr add {VICTIM_V4}/{in4len} dev {VICTIM_IF}",
                f"addr add {VICTIM_V6}/{in6len} dev {VICTIM_IF} nodad",
                # every address of CARPET_V4 is the victim's too (it answers ARP for them)
                f"route add local {CARPET_V4} dev lo",
                f"link set {VICTIM_IF} up",
                f"route add default via {SHIELD_IN_V4} dev {VICTIM_IF}",
                f"route add default via {SHIELD_IN_V6} dev {VICTIM_IF}",
            ],
        )
        # Interfaces created before the "all" sysctl existed keep their own rp_filter; make it explicit.
        run_in(
            NS_SHIELD,
            ["sysctl", "-q", "-w"] + [f"net.ipv4.conf.{i}.rp_filter=0" for i in (SHIELD_OUTSIDE_IF, SHIELD_INSIDE_IF)],
        )

    def _start_victim(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(VICTIM_PID_FILE)
        # The victim detaches itself once listening, so nothing here holds on to it.
        run_in(
            NS_VICTIM,
            [self.python, "-m", "ddos_shield.lab.victim", "--port", str(VICTIM_HTTP_PORT),
             "--pid-file", VICTIM_PID_FILE, "--daemon-log", VICTIM_LOG_FILE],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15.0
        while self._victim_pid() is None:
            if time.monotonic() > deadline:
                raise LabError(f"the victim did not start; see {VICTIM_LOG_FILE}")
            time.sleep(0.05)

    def _wait_ready(self, timeout: float = 15.0) -> None:
        from ddos_shield.lab.client import victim_url

        deadline = time.monotonic() + timeout
        # Carrier first: a generator started on an interface still coming up refuses to run.
        ends = [
            (NS_ATTACKER, ATTACKER_IF), (NS_CLIENT, CLIENT_IF), (NS_SHIELD, SHIELD_OUTSIDE_IF),
            (NS_SHIELD, SHIELD_INSIDE_IF), (NS_VICTIM, VICTIM_IF), *((NS_UPSTREAM, p) for p in UPSTREAM_PORTS.values()),
        ]  # fmt: skip
        while True:
            down = [(ns, i) for ns, i in ends if _ip_json(ns, ["link", "show", "dev", i])[0].get("operstate") != "UP"]
            if not down:
                break
            if time.monotonic() > deadline:
                raise LabError(f"interfaces not up: {down}")
            time.sleep(0.05)
        pending = [victim_url(4), victim_url(6)]
        last = ""
        while pending:
            url = pending[0]
            probe = run_in(
                NS_CLIENT,
                [self.python, "-m", "ddos_shield.lab.client", "--url", url, "--rate", "1", "--seconds", "1",
                 "--timeout", "1.0"],
                check=False,
            )  # fmt: skip
            lines = [json.loads(x) for x in probe.stdout.splitlines() if x.strip()]
            if lines and all(r["ok"] for r in lines):
                pending.pop(0)
                continue
            last = lines[-1]["error"] if lines else probe.stderr.strip()
            if time.monotonic() > deadline:
                raise LabError(f"the victim does not answer at {url}: {last}")
            time.sleep(0.1)

    @staticmethod
    def _victim_pid() -> int | None:
        try:
            pid = int(Path(VICTIM_PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"ddos_shield.lab.victim" in cmdline else None


def guard_drops(ns: str) -> dict[str, int] | None:
    """Packets and bytes the guard of ``ns`` has dropped so far (None if the table is missing)."""
    out = run_in(ns, ["nft", "-j", "list", "table", "inet", GUARD_TABLE], check=False)
    if out.returncode != 0:
        return None
    packets = byts = 0
    for item in json.loads(out.stdout).get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                packets += int(expr["counter"].get("packets", 0))
                byts += int(expr["counter"].get("bytes", 0))
    return {"packets": packets, "bytes": byts}


def _xdp_mode(mode: Any) -> str | None:
    # iproute2 reports the attach mode as a number (XDP_ATTACHED_*).
    names = {1: "native", 2: "generic", 3: "offload", 4: "multi"}
    return names.get(mode, str(mode)) if mode is not None else None


def _terminate(pids: set[int], grace: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _alive(p)}
        if alive:
            time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    # A zombie is dead for our purpose; its parent reaps it.
    return state != "Z"


__all__ = [
    "ATTACKER_QUIET_TABLE",
    "NAMESPACES",
    "SESSION_LOCK",
    "VICTIM_LOG_FILE",
    "VICTIM_PID_FILE",
    "Lab",
    "guard_drops",
    "guard_ruleset",
    "if_counters",
    "lab_namespaces",
    "lab_session",
    "popen_in",
    "run_in",
    "snmp",
]
