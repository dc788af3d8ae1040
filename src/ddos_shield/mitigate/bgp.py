"""BGP enforcement: Flowspec rules and blackhole routes announced by an ExaBGP speaker.

The shield does not speak BGP itself: it runs Debian's ExaBGP with a generated
configuration (the ``[bgp]`` section: local AS, router id, peers) whose one process is
the bridge (:mod:`ddos_shield.mitigate.bgpbridge`).  This backend compiles each rule into
ExaBGP API lines and hands them to the bridge over a Unix socket in ``<state_dir>/bgp``;
the bridge writes them to ExaBGP, which announces them to every peer.

How rules become announcements (:func:`compile_rule`):

* ``Action.DROP`` -> a Flowspec rule (RFC 8955, RFC 8956 for IPv6) with the ``discard``
  action (traffic-rate 0);
* ``Action.RATE_LIMIT`` -> a Flowspec rule with a traffic-rate in bytes per second (the
  rule's packet rate times ``rate_packet_bytes``, or times its largest packet length);
* ``Action.BLACKHOLE`` -> a route for the target /32 or /128 with the BLACKHOLE community
  65535:666 (RFC 7999) plus the configured communities and next hop.  Refused unless
  ``bgp.blackhole = true`` (off by default: a blackhole drops all the target's traffic,
  which completes the attack).

Flowspec has no TTL component, so a rule that matches on TTL is refused (never silently
widened): :func:`flowspec_match` gives the match without it, for the policy to preview
and hand back if it accepts the wider rule.  A Flowspec rule must name its destination.

The **dead-man's switch** lives in the bridge: a thread here sends a heartbeat every
quarter of ``deadman_seconds``; when the bridge hears nothing for ``deadman_seconds`` it
withdraws every announcement.  ExaBGP and the bridge outlive the shield process on
purpose (as the kernel's rules do), so a restarted shield reconnects and :meth:`list`
reads back what is still announced; after a crash longer than ``deadman_seconds`` that
is nothing, and reconciliation re-applies what is still wanted.

Routers keep the hit counters of Flowspec rules: :meth:`BgpBackend.stats` returns zeros.

Example::

    >>> from ddos_shield.config import Bgp, BgpPeer
    >>> from ddos_shield.records import as_network
    >>> s = Bgp(local_as=64513, router_id="192.0.2.1",
    ...         peers=[BgpPeer(address="192.0.2.2", peer_as=64512, local_address="192.0.2.1")])
    >>> rule = Rule(Match(proto=17, dst=as_network("203.0.113.10/32"), dport=Range(53, 53)), Action.DROP, 2e9)
    >>> compile_rule(rule, s).announce[0]
    'announce flow route { match { destination 203.0.113.10/32; protocol =17; destination-port =53; } then { discard; } }'
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ddos_shield import __version__
from ddos_shield.config import Bgp, Config
from ddos_shield.errors import ConfigError, MitigationError
from ddos_shield.mitigate.base import Backend
from ddos_shield.records import Action, IPNetwork, Match, Range, Rule, RuleStats

log = logging.getLogger(__name__)

#: RFC 7999's well-known BLACKHOLE community.
BLACKHOLE_COMMUNITY = "65535:666"
#: Frame length (what :class:`~ddos_shield.records.Match` measures) minus what Flowspec's
#: packet length counts: RFC 8955 counts the IPv4 packet without layer 2; RFC 8956 counts
#: the IPv6 packet without layer 2 and without the fixed IPv6 header.
L2_BYTES = 14
IPV6_FIXED_BYTES = 40
_TCP_FLAG_NAMES = (
    (0x01, "fin"),
    (0x02, "syn"),
    (0x04, "rst"),
    (0x08, "push"),
    (0x10, "ack"),
    (0x20, "urg"),
    (0x40, "ece"),
    (0x80, "cwr"),
)
#: How long a request to the bridge may take (it waits up to 5 s for each ExaBGP ack).
REQUEST_SECONDS = 30.0
SOCKET_NAME = "bridge.sock"
PID_NAME = "exabgp.pid"
CONF_NAME = "exabgp.conf"
LOG_NAME = "exabgp.log"


# ---- compiling rules into ExaBGP API lines ----------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """ExaBGP API lines: ``announce[i]`` is undone by ``withdraw[i]``."""

    announce: tuple[str, ...]
    withdraw: tuple[str, ...]


def flowspec_match(match: Match) -> Match:
    """``match`` without what Flowspec cannot express (TTL): a wider match, to preview."""
    return replace(match, ttl=None)


def compile_rule(rule: Rule, settings: Bgp) -> Announcement:
    """The announcement of ``rule``; ``ValueError`` names why a rule cannot be announced."""
    if rule.action == Action.BLACKHOLE:
        return _blackhole(rule, settings)
    if rule.per_source:
        raise ValueError(
            "per_source: a Flowspec traffic-rate limits all matching traffic together, "
            "a per-source rate limit is enforced by the xdp and nftables backends only"
        )
    if rule.action in (Action.DROP, Action.RATE_LIMIT):
        return _flowspec(rule, settings)
    raise ValueError(f"action {rule.action.name.lower()}: nothing to announce over BGP")


def _blackhole(rule: Rule, s: Bgp) -> Announcement:
    m = rule.match
    if not s.blackhole:
        raise ValueError("blackhole routes are off (bgp.blackhole = false)")
    if m.fields() != ["dst"] or m.dst is None:
        raise ValueError(f"a blackhole rule matches only a destination, got {m.describe() or 'everything'}")
    if m.dst.prefixlen != m.dst.max_prefixlen:
        raise ValueError(f"a blackhole route covers one address (/32 or /128), got {m.dst}")
    if m.dst.version == 4:
        nh = s.next_hop
    elif s.next_hop6:
        nh = s.next_hop6
    else:
        raise ValueError(f"IPv6 blackhole for {m.dst} needs bgp.next_hop6")
    comms = list(dict.fromkeys([BLACKHOLE_COMMUNITY, *s.communities]))
    return Announcement(
        (f"announce route {m.dst} next-hop {nh} community [{' '.join(comms)}]",),
        (f"withdraw route {m.dst} next-hop {nh}",),
    )


def _numeric(r: Range) -> str:
    return f"={r.lo}" if r.lo == r.hi else f">={r.lo}&<={r.hi}"


def _flags(bits: int) -> str:
    return "+".join(name for bit, name in _TCP_FLAG_NAMES if bits & bit)


def _flowspec(rule: Rule, s: Bgp) -> Announcement:
    m = rule.match
    if not s.flowspec:
        raise ValueError("Flowspec is off (bgp.flowspec = false)")
    if m.ttl is not None:
        raise ValueError("ttl: Flowspec has no TTL component (RFC 8955); the rule would match more than asked")
    if m.dst is None:
        raise ValueError("a Flowspec rule must name its destination: upstream it would filter every destination")
    if m.src is not None and m.src.version != m.dst.version:
        raise ValueError(f"match mixes IPv4 and IPv6: src {m.src}, dst {m.dst}")
    v6 = m.dst.version == 6
    proto = m.proto
    if m.tcp_flags is not None:
        if proto not in (None, 6):
            raise ValueError(f"tcp_flags with protocol {proto}")
        proto = 6
    if (m.sport or m.dport) and proto not in (None, 6, 17):
        raise ValueError(f"ports only match TCP or UDP, not protocol {proto}")
    parts = [f"destination {m.dst};"]
    if m.src is not None:
        parts.append(f"source {m.src};")
    if proto is not None:
        if not 0 <= proto <= 255:
            raise ValueError(f"proto out of range: {proto}")
        parts.append(f"{'next-header' if v6 else 'protocol'} ={proto};")
    for name, r in (("source-port", m.sport), ("destination-port", m.dport)):
        if r is not None:
            if not 0 <= r.lo <= r.hi <= 0xFFFF:
                raise ValueError(f"{name} out of range: {r}")
            parts.append(f"{name} {_numeric(r)};")
    if m.tcp_flags is not None:
        mask, value = m.tcp_flags
        if not (0 <= mask <= 0xFF and 0 <= value <= 0xFF) or value & ~mask:
            raise ValueError(f"tcp_flags out of range or value outside mask: {m.tcp_flags}")
        ops = ([f"={_flags(value)}"] if value else []) + ([f"!{_flags(mask & ~value)}"] if mask & ~value else [])
        if ops:
            parts.append(f"tcp-flags [ {'&'.join(ops)} ];")
    hdr = L2_BYTES + (IPV6_FIXED_BYTES if v6 else 0)
    if m.length is not None:
        if m.length.hi < hdr or m.length.hi > 0xFFFF + hdr:
            raise ValueError(f"length {m.length}: no IPv{6 if v6 else 4} packet has that frame length")
        parts.append(f"packet-length {_numeric(Range(max(0, m.length.lo - hdr), m.length.hi - hdr))};")
    then = []
    if rule.action == Action.DROP:
        then.append("discard;")
    else:
        if rule.rate_pps <= 0:
            raise ValueError(f"rate-limit rule needs rate_pps > 0, got {rule.rate_pps}")
        size = m.length.hi - L2_BYTES if m.length is not None else s.rate_packet_bytes
        then.append(f"rate-limit {rule.rate_pps * size};")
    if s.flowspec_communities:
        then.append(f"community [{' '.join(s.flowspec_communities)}];")
    match = " ".join(parts)
    return Announcement(
        (f"announce flow route {{ match {{ {match} }} then {{ {' '.join(then)} }} }}",),
        (f"withdraw flow route {{ match {{ {match} }} }}",),
    )


# ---- the ExaBGP configuration ---------------------------------------------------------


def exabgp_config(settings: Bgp, bridge_cmd: str) -> str:
    """ExaBGP's configuration: the bridge process and one neighbor per peer."""
    fams = []
    if settings.blackhole:
        fams += ["ipv4 unicast;", "ipv6 unicast;"]
    if settings.flowspec:
        fams += ["ipv4 flow;", "ipv6 flow;"]
    if not fams:
        raise ValueError("bgp: flowspec and blackhole are both off: nothing could be announced")
    out = [
        "# generated by the shield's BGP backend (ddos_shield.mitigate.bgp); edits are overwritten",
        "process shield-bridge {",
        f"    run {bridge_cmd};",
        "    encoder text;",
        "}",
    ]
    for p in settings.peers:
        out += [
            f"neighbor {p.address} {{",
            f"    router-id {settings.router_id};",
            f"    local-address {p.local_address};",
            f"    local-as {settings.local_as};",
            f"    peer-as {p.peer_as};",
            f"    family {{ {' '.join(fams)} }}",
            "    api { processes [ shield-bridge ]; }",
            "}",
        ]
    return "\n".join(out) + "\n"


#: ExaBGP settings (environment overrides its env file): no CLI pipes, acks on, the
#: bridge never respawned and ExaBGP ending with it, no listening socket, no privilege
#: drop (the bridge must reach the shield's state directory).
EXABGP_ENV = {
    "exabgp_api_cli": "false",
    "exabgp_api_ack": "true",
    "exabgp_api_respawn": "false",
    "exabgp_api_terminate": "true",
    "exabgp_api_encoder": "text",
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_drop": "false",
    "exabgp_tcp_bind": "",
    "exabgp_log_destination": "stdout",
}


# ---- the backend -------------------------------------------------------------------------


class BgpBackend(Backend):
    """See the module docstring.  ``run_dir`` holds the socket, ExaBGP's config, pid and log."""

    name = "bgp"

    def __init__(
        self,
        settings: Bgp,
        run_dir: str | Path,
        *,
        python: str = sys.executable,
        start_timeout: float = 20.0,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        if any(c.isspace() for c in str(self.run_dir.resolve())) or any(c.isspace() for c in python):
            raise MitigationError(f"bgp: {self.run_dir} or {python}: ExaBGP's 'run' cannot take paths with spaces")
        self.socket_path = self.run_dir / SOCKET_NAME
        self._python = python
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buf = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._allow: list[IPNetwork] = []
        self._stop = threading.Event()
        # The speaker is started in the network namespace of the thread that made this
        # backend, even when a later call from another thread restarts it.
        self._netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        bridge_cmd = f"{python} -m ddos_shield.mitigate.bgpbridge --guard --socket {self.socket_path.resolve()} --deadman {settings.deadman_seconds:g}"
        try:
            base = exabgp_config(settings, bridge_cmd)
        except ValueError as e:
            raise MitigationError(str(e)) from e
        self.config_id = hashlib.sha256((__version__ + base).encode()).hexdigest()[:16]
        self._conf_text = base.replace(f"{bridge_cmd};", f"{bridge_cmd} --config-id {self.config_id};")
        with self._lock:
            self._ensure()
        self._beat = threading.Thread(target=self._heartbeat, name="bgp-heartbeat", daemon=True)
        self._beat.start()

    @classmethod
    def from_config(cls, config: Config) -> BgpBackend:
        """The backend of a configuration's ``[bgp]`` section, run from ``<state_dir>/bgp``."""
        if config.bgp is None:
            raise ConfigError("the bgp backend needs a [bgp] section")
        return cls(config.bgp, speaker_dir(config))

    # ---- the speaker ---------------------------------------------------------------

    def _connect(self) -> dict[str, Any] | None:
        """Connect to a running bridge; its hello, or None when none answers."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(REQUEST_SECONDS)
        try:
            s.connect(str(self.socket_path))
        except OSError:
            s.close()
            return None
        self._drop_conn()
        self._sock = s
        try:
            return self._send({"op": "hello"})
        except MitigationError:
            self._drop_conn()
            return None

    def _ensure(self, start: bool = True) -> None:
        """Connected to a bridge of this configuration: reconnect, or (``start``) start ExaBGP."""
        if self._sock is not None:
            return
        hello = self._connect()
        if hello is not None and hello.get("config_id") == self.config_id:
            return
        if not start:
            self._drop_conn()
            raise MitigationError(f"bgp: no bridge of this configuration answers on {self.socket_path}")
        if hello is not None:
            log.warning("bgp: the running speaker has another configuration; restarting it (its routes are withdrawn)")
        # a speaker whose bridge is gone may linger: never run two
        self._stop_speaker()
        self._start_speaker()

    def _start_speaker(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.run_dir / CONF_NAME
        conf.write_text(self._conf_text)
        env = {**os.environ, **EXABGP_ENV}
        with open(self.run_dir / LOG_NAME, "ab") as logf, _netns(self._netns):
            try:
                # its own session: the speaker outlives a crashed shield until the
                # dead-man's switch has withdrawn everything
                self._proc = subprocess.Popen(
                    [self.settings.exabgp, str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                    env=env,
                    start_new_session=True,
                )
            except OSError as e:
                raise MitigationError(f"bgp: cannot run {self.settings.exabgp}: {e.strerror}") from e
        (self.run_dir / PID_NAME).write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MitigationError(f"bgp: exabgp exited with {self._proc.returncode}: {self._log_tail()}")
            hello = self._connect()
            if hello is not None:
                if hello.get("config_id") != self.config_id:
                    raise MitigationError(f"bgp: another bridge answers on {self.socket_path}")
                log.info("bgp: speaker started, pid %d", self._proc.pid)
                return
            time.sleep(0.05)
        raise MitigationError(f"bgp: the bridge did not come up within {self._start_timeout:g} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = (self.run_dir / LOG_NAME).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in lines[-5:])

    def _speaker_pid(self) -> int | None:
        return speaker_pid(self.run_dir)

    def _stop_speaker(self) -> None:
        """Withdraw everything and stop this run directory's ExaBGP, if one runs."""
        self._drop_conn()
        proc, self._proc = self._proc, None
        stop_speaker(self.run_dir, reap=proc.poll if proc is not None else None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)

    def _drop_conn(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf = b""

    def _send(self, req: dict[str, Any]) -> dict[str, Any]:
        """One request on the current connection (lock held by the caller)."""
        if self._sock is None:
            raise _ConnectionLost("bgp: not connected to the bridge", delivered=False)
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError as e:
            self._drop_conn()
            raise _ConnectionLost(f"bgp: bridge {self.socket_path}: {e}", delivered=False) from e
        try:
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise OSError("the bridge closed the connection")
                self._buf += chunk
        except OSError as e:
            self._drop_conn()
            raise _ConnectionLost(f"bgp: bridge {self.socket_path}: {e}", delivered=True) from e
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError as e:
            self._drop_conn()
            raise MitigationError(f"bgp: unreadable reply from the bridge: {line[:200]!r}") from e
        if not reply.get("ok"):
            raise MitigationError(f"bgp: {reply.get('error', 'refused')}")
        return reply

    def _request(self, req: dict[str, Any], retry: bool = True) -> dict[str, Any]:
        """A request; after a broken connection, reconnect (or restart ExaBGP) and send it
        again, unless the bridge may have received it and ``retry`` is false."""
        with self._lock:
            self._ensure()
            try:
                return self._send(req)
            except _ConnectionLost as e:
                if e.delivered and not retry:
                    raise
            self._ensure()
            return self._send(req)

    def _heartbeat(self) -> None:
        interval = self.settings.deadman_seconds / 4
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    # reconnect if needed, never start a speaker from here: the next
                    # apply or list does, and announcements died with the old one
                    self._ensure(start=False)
                    self._send({"op": "heartbeat"})
            except MitigationError as e:
                log.error("bgp: heartbeat failed: %s", e)
            if self._proc is not None:
                self._proc.poll()  # reap a speaker that ended

    # ---- the interface ---------------------------------------------------------------

    def check(self, rule: Rule) -> Announcement:
        """The announcement of ``rule``, or :class:`MitigationError` saying why not."""
        m = rule.match
        if m.src is not None:
            for net in self._allow:
                if net.version == m.src.version and net.overlaps(m.src):
                    raise MitigationError(f"bgp: rule source {m.src} overlaps allow-listed {net}")
        try:
            return compile_rule(rule, self.settings)
        except ValueError as e:
            raise MitigationError(f"bgp: {e}") from e

    def apply(self, rule: Rule) -> Rule:
        ann = self.check(rule)
        reply = self._request(
            {
                "op": "apply",
                "id": rule.rule_id,
                "expires_at": rule.expires_at,
                "announce": list(ann.announce),
                "withdraw": list(ann.withdraw),
                "rule": _rule_json(rule),
            },
            retry=rule.rule_id != 0,  # an unnamed rule may have been announced before the break
        )
        return rule.with_id(int(reply["id"]))

    def withdraw(self, rule_id: int) -> None:
        self._request({"op": "withdraw", "id": rule_id})

    def list(self) -> list[Rule]:
        reply = self._request({"op": "list"})
        now = time.time()
        out = []
        for e in reply.get("entries", []):
            try:
                rule = _rule_from_json(e["rule"], int(e["id"]), float(e["expires_at"]))
            except (KeyError, TypeError, ValueError) as err:
                log.warning("bgp: skipped an announcement the shield cannot read back: %s", err)
                continue
            if rule.expires_at > now:
                out.append(rule)
        return out

    def status(self) -> dict[str, Any]:
        """The bridge's state: dead-man's switch (seconds, times fired), bypass, pid."""
        reply = self._request({"op": "hello"})
        return {k: v for k, v in reply.items() if k != "ok"}

    def stats(self) -> dict[int, RuleStats]:
        """Zeros: the routers that enforce Flowspec and blackholes keep the counters."""
        return {r.rule_id: RuleStats(r.rule_id, 0, 0, 0) for r in self.list()}

    def set_allowlist(self, sources: Sequence[IPNetwork]) -> None:
        """Rules whose source prefix overlaps the allow-list are refused.  Upstream
        routers know no allow-list: a fingerprint rule (no source) or a blackhole drops
        allow-listed sources too."""
        self._allow = list(sources)

    def set_bypass(self, on: bool) -> None:
        """On: every announcement is withdrawn but kept; off: announced again."""
        self._request({"op": "bypass", "on": on})

    def close(self) -> None:
        """Stop refreshing; announcements stay until the dead-man's switch withdraws them."""
        self._stop.set()
        self._beat.join(timeout=5)
        with self._lock:
            self._drop_conn()
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                # the speaker outlives this object (a backend of the same configuration
                # takes it over after a reload, or it waits for the dead-man's switch):
                # our child still, so something here must reap it when it ends
                threading.Thread(target=proc.wait, name="bgp-reaper", daemon=True).start()
            if self._netns >= 0:
                os.close(self._netns)
                self._netns = -1

    def shutdown(self) -> None:
        """Withdraw everything and stop the speaker (then close)."""
        self._stop.set()
        self._beat.join(timeout=5)
        with self._lock:
            if self._sock is None:
                self._connect()
            self._stop_speaker()
        self.close()


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def _netns(fd: int) -> Iterator[None]:
    """This thread in the network namespace ``fd`` for the block (see lab.netns.in_netns)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if fd < 0 or libc.setns(fd, _CLONE_NEWNET) != 0:
            raise MitigationError(
                f"bgp: cannot enter the speaker's network namespace: {os.strerror(ctypes.get_errno())}"
            )
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the shield's network namespace")
    finally:
        os.close(home)


def speaker_pid(run_dir: Path) -> int | None:
    """The pid of the ExaBGP running from ``run_dir``, if one runs."""
    try:
        pid = int((run_dir / PID_NAME).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # The pid file may be stale and the pid reused: only an exabgp on our config counts.
    conf = str(run_dir / CONF_NAME).encode()
    return pid if any(conf in a for a in cmdline) else None


def _ask_bridge(run_dir: Path, req: dict[str, Any]) -> dict[str, Any] | None:
    """One request to the bridge of ``run_dir`` on a connection of its own; None when
    no bridge answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(REQUEST_SECONDS)
    buf = b""
    try:
        s.connect(str(run_dir / SOCKET_NAME))
        s.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def set_speaker_bypass(run_dir: Path, on: bool) -> bool:
    """The kill switch for the speaker running from ``run_dir``, with or without a
    shield process: on withdraws every announcement and keeps it, off announces again.
    Whether a bridge took it."""
    reply = _ask_bridge(run_dir, {"op": "bypass", "on": on})
    return bool(reply and reply.get("ok"))


def stop_speaker(run_dir: Path, timeout: float = 5.0, reap: Callable[[], object] | None = None) -> bool:
    """Withdraw every announcement and stop the speaker running from ``run_dir`` (what
    ``ddos-shield stop --detach`` does); whether one was running.  The bridge is asked
    first (it withdraws, exits, and its guard stops ExaBGP); signals follow if needed."""
    found = _ask_bridge(run_dir, {"op": "shutdown"}) is not None
    pid = speaker_pid(run_dir)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if pid is None:
            break
        found = True
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and speaker_pid(run_dir) is not None:
            if reap is not None:
                reap()  # our own child: a zombie until waited for
            time.sleep(0.05)
        pid = speaker_pid(run_dir)
    return found


def speaker_dir(config: Config) -> Path:
    """Where the speaker of a configuration keeps its socket, configuration, pid and log."""
    return Path(config.shield.state_dir) / "bgp"


def open_backend(config: Config) -> BgpBackend:
    """The registry's entry point (:mod:`ddos_shield.mitigate.registry`): the backend of
    the configuration's ``[bgp]`` section."""
    return BgpBackend.from_config(config)


class _ConnectionLost(MitigationError):
    """The bridge's connection broke; ``delivered``: maybe after it received the request."""

    def __init__(self, msg: str, *, delivered: bool) -> None:
        super().__init__(msg)
        self.delivered = delivered


def _rule_json(rule: Rule) -> dict[str, Any]:
    """What the bridge keeps of a rule (its id and expiry it keeps apart)."""
    out = rule.to_json()
    del out["mitigation_id"], out["expires_at"]
    out["created_at"] = rule.created_at
    return out


def _rule_from_json(d: dict[str, Any], rule_id: int, expires_at: float) -> Rule:
    return Rule.from_json({**d, "mitigation_id": rule_id, "expires_at": expires_at})
