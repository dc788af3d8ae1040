"""The configuration: one typed schema, validated whole, passed in (never a global).

Load with :func:`load` (a file) or :func:`parse` (text); both raise
:class:`~ddos_shield.errors.ConfigError` naming the line and the field of the first
mistakes.  Every field carries a description; :func:`example` renders the annotated
example that ``ddos-shield config example`` prints and ``docs/configuration.md`` lists.

Host groups (``[[groups]]``) are the one place where thresholds, actions and hold times
live.  The group named ``default`` covers every protected destination that no other
group claims; the most specific prefix wins.

>>> cfg = parse('protected = ["203.0.113.0/24"]\\n')
>>> cfg.group_for_name("default").thresholds.udp.pps
20000
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ddos_shield.errors import ConfigError
from ddos_shield.records import Category, IPNetwork, as_network


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]


def _networks(values: list[str]) -> list[IPNetwork]:
    out = []
    for v in values:
        try:
            out.append(as_network(v))
        except ValueError as e:
            raise ValueError(f"{v!r} is not a prefix in CIDR form ({e})") from None
    return out


class Threshold(_Model):
    """Per-category limit: an attack when any rate is exceeded (0 = no limit)."""

    pps: int = Field(0, ge=0, description="packets per second at one destination")
    bps: int = Field(0, ge=0, description="bits per second at one destination")
    flows: int = Field(
        0,
        ge=0,
        description="new flows per second at one destination; syn only (SYN packets, counted exactly) and "
        "udp only (distinct source address and port pairs in the samples, an estimate: see docs/operating.md)",
    )

    def limits(self) -> tuple[int, int, int]:
        """(pps, bps, flows), in the order of :data:`~ddos_shield.records.RATE_METRICS`."""
        return (self.pps, self.bps, self.flows)


class Thresholds(_Model):
    syn: Threshold = Field(Threshold(pps=10000, bps=0), description="TCP SYN (no ACK)")
    tcp: Threshold = Field(Threshold(pps=50000, bps=0), description="other TCP")
    udp: Threshold = Field(Threshold(pps=20000, bps=0), description="UDP")
    icmp: Threshold = Field(Threshold(pps=5000, bps=0), description="ICMP and ICMPv6")
    frag: Threshold = Field(Threshold(pps=5000, bps=0), description="non-first IP fragments")
    other: Threshold = Field(Threshold(pps=5000, bps=0), description="other IP protocols")

    def for_category(self, cat: Category) -> Threshold:
        t: Threshold = getattr(self, _CAT_FIELD[cat])
        return t

    @model_validator(mode="after")
    def _check_flows(self) -> Thresholds:
        for cat, key in _CAT_FIELD.items():
            if cat not in FLOW_CATEGORIES and getattr(self, key).flows:
                raise ValueError(f"{key}.flows: new flows are measured only for syn and udp")
        return self


class Floors(Thresholds):
    """Baseline floors: per category, the rate below which traffic is never an attack,
    however far above its baseline (0 = this rate is not judged by the baseline)."""

    syn: Threshold = Field(Threshold(pps=1000), description="TCP SYN (no ACK)")
    tcp: Threshold = Field(Threshold(pps=5000), description="other TCP")
    udp: Threshold = Field(Threshold(pps=2000), description="UDP")
    icmp: Threshold = Field(Threshold(pps=1000), description="ICMP and ICMPv6")
    frag: Threshold = Field(Threshold(pps=1000), description="non-first IP fragments")
    other: Threshold = Field(Threshold(pps=1000), description="other IP protocols")


class GroupBaseline(_Model):
    """How a host group uses the learned baselines (``[groups.baseline]``)."""

    sensitivity: float = Field(
        6.0,
        ge=0,
        description="after learning, an attack is a rate above its baseline level by this many spreads "
        "(and above the floor); lower is more sensitive; 0 = this group keeps its static thresholds",
    )
    floor: Floors = Field(default_factory=Floors, description="per-category floors")


#: categories whose new flows per second are measured (``flows`` thresholds)
FLOW_CATEGORIES = (Category.TCP_SYN, Category.UDP)

_CAT_FIELD = {
    Category.TCP_SYN: "syn",
    Category.TCP: "tcp",
    Category.UDP: "udp",
    Category.ICMP: "icmp",
    Category.FRAG: "frag",
    Category.OTHER: "other",
}


StepName = Literal["observe", "rate_limit", "drop", "drop_sources", "syn_proxy", "flowspec", "blackhole"]
#: the backends able to take each ladder step ("local": the data plane's, XDP or nftables)
STEP_BACKENDS: dict[str, tuple[str, ...]] = {
    "observe": (),
    "rate_limit": ("local",),
    "drop": ("local",),
    "drop_sources": ("local",),
    "syn_proxy": ("nftables",),
    "flowspec": ("bgp",),
    "blackhole": ("bgp",),
}


class Step(_Model):
    """One rung of a host group's escalation ladder."""

    step: StepName = Field(
        description="'observe' (alert only), 'rate_limit' or 'drop' the attack's fingerprint (or its few sources), "
        "'drop_sources' (the heaviest attacking sources), 'syn_proxy' (SYN floods at one TCP service: the "
        "handshakes answered by the kernel's SYN proxy; needs the nftables data plane), "
        "'flowspec' (the fingerprint upstream, over BGP), "
        "'blackhole' (remote-triggered blackhole of the target, 65535:666: the last resort; needs allow_blackhole)"
    )
    ttl_seconds: float = Field(
        0.0, ge=0, description="expiry of this step's rules, pushed forward while the attack lasts (0 = hold_seconds)"
    )


def _prefix_thresholds() -> Thresholds:
    # Twice a host's defaults: a /24's normal traffic is many hosts' worth.
    return Thresholds(
        syn=Threshold(pps=20000),
        tcp=Threshold(pps=100000),
        udp=Threshold(pps=40000),
        icmp=Threshold(pps=10000),
        frag=Threshold(pps=10000),
        other=Threshold(pps=10000),
    )


class Carpet(_Model):
    """Carpet bombing: a flood spread thinly over many addresses of a prefix, each below
    its host thresholds, detected on the sum over the prefix."""

    enabled: bool = Field(True, description="detect carpet bombing on the group's prefixes")
    ipv4_prefix_len: int = Field(24, ge=8, le=31, description="IPv4 destinations are summed per prefix of this length")
    ipv6_prefix_len: int = Field(
        56,
        ge=8,
        le=127,
        description="IPv6 destinations (already counted per shield.ipv6_prefix_len) are summed per prefix of this length",
    )
    thresholds: Thresholds = Field(
        default_factory=_prefix_thresholds,
        description="per-category limits on the sum over a prefix (hosts over their own limits left out)",
    )
    min_destinations: int = Field(
        8, ge=2, description="a carpet reaches at least this many destinations of the prefix in the category"
    )
    max_host_share: float = Field(
        0.5, gt=0, le=1, description="and no one destination carries more than this share of the prefix's sum"
    )


class Group(_Model):
    """A host group: destinations that share thresholds and a response."""

    name: str = Field(description="unique name; 'default' covers every protected destination no other group claims")
    prefixes: list[str] = Field(default_factory=list, description="destination prefixes of this group")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="per-category limits")
    action: Literal["drop", "rate_limit", "observe"] = Field(
        "drop", description="drop the attack's traffic, rate-limit it, or only observe (alert, no rule)"
    )
    rate_limit_pps: PositiveInt = Field(1000, description="with action = 'rate_limit': packets per second let through")
    rate_limit_per_source: Literal["auto", "always", "never"] = Field(
        "auto",
        description="how the shield's rate limits on a fingerprint apply: 'auto' holds each source to "
        "per_source_pps where that alone keeps the attack below the thresholds (an attack from few sources, "
        "which an aggregate limit would share with the target's clients), and limits the whole "
        "fingerprint to rate_limit_pps otherwise; 'always' per source; 'never' the whole fingerprint",
    )
    per_source_pps: PositiveInt = Field(
        100, description="per-source rate limits: packets per second let through from each source"
    )
    hold_seconds: float = Field(
        60.0, ge=0, description="how long a rule stays after its attack ends (also the rule's kernel expiry)"
    )
    end_after_seconds: float = Field(
        10.0,
        gt=0,
        description="an attack ends after this long below its exit thresholds; an attack that went quiet and "
        "came back (pulsing) waits up to twice its longest quiet spell, at most twice this",
    )
    exit_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="hysteresis: an attack goes on while its rate stays above this share of the entry "
        "threshold (of the excess over the baseline level, once learned)",
    )
    ladder: list[Step] = Field(
        default_factory=list,
        description='escalation ladder, mildest first, e.g. ["rate_limit", "drop", "drop_sources", "flowspec"]: '
        "the next step is taken only when the traffic still reaching the target stays above its thresholds "
        "settle_seconds after the last one; empty = the one step named by 'action'",
    )
    settle_seconds: float = Field(
        3.0,
        gt=0,
        description="how long a ladder step is given to work before it is verified and the next is considered",
    )
    allow_blackhole: bool = Field(
        False, description="permit the 'blackhole' step (it takes the whole target off the Internet): off by default"
    )
    carpet: Carpet = Field(default_factory=Carpet, description="carpet-bombing detection over the group's prefixes")
    baseline: GroupBaseline = Field(default_factory=GroupBaseline, description="how this group uses baselines")

    @field_validator("prefixes")
    @classmethod
    def _check_prefixes(cls, v: list[str]) -> list[str]:
        _networks(v)
        return v

    @field_validator("ladder", mode="before")
    @classmethod
    def _steps_by_name(cls, v: Any) -> Any:
        # a ladder of plain names is the common case: ["rate_limit", "drop"]
        if isinstance(v, list):
            return [{"step": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _check_ladder(self) -> Group:
        names = [s.step for s in self.ladder]
        if len(set(names)) != len(names):
            raise ValueError(f"ladder: a step appears twice in {names}")
        if "blackhole" in names:
            if not self.allow_blackhole:
                raise ValueError("ladder: 'blackhole' takes the target off the Internet; set allow_blackhole = true")
            if names[-1] != "blackhole":
                raise ValueError("ladder: 'blackhole' can only be the last step")
        if "observe" in names and names[0] != "observe":
            raise ValueError("ladder: 'observe' can only be the first step")
        return self

    def steps(self) -> list[Step]:
        """The ladder, or the single step that ``action`` names."""
        return list(self.ladder) or [Step(step=self.action)]

    def networks(self) -> list[IPNetwork]:
        return _networks(self.prefixes)


class Shield(_Model):
    interfaces: list[str] = Field(
        default_factory=list, description="interfaces to watch and protect (the outside link)"
    )
    dataplane: Literal["auto", "xdp", "nftables"] = Field(
        "auto", description="'auto' uses XDP and falls back to nftables where XDP cannot attach"
    )
    xdp_mode: Literal["auto", "native", "generic"] = Field(
        "auto", description="XDP attach mode: native (driver) where supported, generic otherwise"
    )
    interval_ms: int = Field(100, ge=10, le=1000, description="control loop period: counters are read this often")
    pin_dir: str = Field(
        "/sys/fs/bpf/ddos_shield", description="bpffs directory where program, links and maps are pinned"
    )
    detach_on_stop: bool = Field(
        False, description="detach the data plane when the shield stops (default: protection stays)"
    )
    ipv6_prefix_len: int = Field(
        64, ge=8, le=128, description="IPv6 destinations are counted per prefix of this length"
    )
    sample_target_pps: int = Field(
        4000, gt=0, description="samples per second to aim for; the 1-in-N sampling rate adapts to the load"
    )
    dry_run: bool = Field(False, description="decide and report everything, enforce nothing")
    telemetry_window_seconds: float = Field(
        2.0,
        gt=0,
        description="rates from flow collectors and mirror ports are averaged over this window (exporters send in bursts)",
    )
    state_dir: str = Field(
        "/var/lib/ddos-shield", description="where the running shield keeps its pid file and its baselines"
    )


class Baseline(_Model):
    """Learned baselines (``[baseline]``); see :mod:`ddos_shield.detect.baseline`."""

    enabled: bool = Field(True, description="learn a baseline per destination and category and detect against it")
    learning_seconds: float = Field(
        86400.0,
        gt=0,
        description="a destination's static thresholds apply until its baseline has learned this long "
        "(time under attack does not count)",
    )
    adapt_seconds: float = Field(
        3600.0, gt=0, description="time constant of the baseline's moving averages: how fast it follows change"
    )
    max_destinations: int = Field(
        8192,
        gt=0,
        description="destinations with a baseline at most (about 4 KB each); when full, the least recently "
        "active destination still learning goes first, then the least recently active one",
    )
    save_every_seconds: float = Field(
        300.0, gt=0, description="the running shield writes its baselines to state_dir this often, and at stop"
    )


class Mitigation(_Model):
    max_sources_per_attack: int = Field(
        32,
        ge=0,
        description="block by source prefix when at most this many sources carry the attack; otherwise by fingerprint",
    )
    source_share: float = Field(
        0.9, gt=0, le=1, description="the chosen sources (or fingerprint) must cover this share of the attack's samples"
    )
    max_rules_total: int = Field(10000, gt=0, description="upper bound on rules the shield installs")
    min_samples: int = Field(20, gt=0, description="samples of an attack needed before a rule is built from them")
    backends: list[Literal["bgp", "notify"]] = Field(
        default_factory=list,
        description="enforcement besides the data plane's own (XDP or nftables): 'bgp' takes the ladder's "
        "upstream steps (Flowspec, blackhole), 'notify' hears of every action and enforces nothing",
    )
    max_rules_per_target: int = Field(
        64, gt=0, description="upper bound on rules for one target, over every step of its ladder"
    )
    max_collateral_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="preview: a fingerprint rule that would also match more than this share of the target's other "
        "recent traffic is refused (source rules and blackholes record the share but are not refused by it)",
    )
    verify_min_reduction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="verify: a step must cut the traffic reaching the target by this share within settle_seconds, "
        "or it is rolled back and the next step taken",
    )
    verify_max_legit_loss: float = Field(
        0.5,
        gt=0,
        le=1,
        description="verify: a step is rolled back when the target's other traffic falls by more than this share with it",
    )
    connection_syn_pps: PositiveInt = Field(
        20,
        description="a connection flood's 'rate_limit' step: new connections (SYNs without ACK) per second let "
        "through from each source the detector named, to its target; keep it well below "
        "classification.connection_flood_min_rate, above what one client opens at its own pace",
    )


class Classification(_Model):
    """Detectors of attacks that stay below flood rates (detect/scan.py, detect/connections.py)."""

    scan_window_seconds: float = Field(
        10.0, gt=0, le=300, description="port scans and host sweeps are counted over this window"
    )
    scan_min_ports: int = Field(
        64,
        ge=0,
        description="one source probing at least this many ports of one host in the window is a port scan (0: off)",
    )
    sweep_min_hosts: int = Field(
        64,
        ge=0,
        description="one source probing one port (or ping) on at least this many protected hosts in the window is a host sweep (0: off)",
    )
    connection_window_seconds: float = Field(
        30.0, gt=0, le=600, description="TCP connections per source and host are counted over this window"
    )
    connection_min_flows: int = Field(
        100,
        ge=0,
        description="one source with at least this many TCP connections to one host in the window: a connection flood or a slow attack (0: off)",
    )
    connection_flood_min_rate: float = Field(
        200.0,
        gt=0,
        description="new connections per second from that source (in its busiest second) that make it a "
        "connection flood; a browser opens a few a second, a busy API client opening one per request tens",
    )
    slow_max_pps_per_flow: float = Field(
        1.0, gt=0, description="below this many packets per second per connection, held connections are a slow attack"
    )
    slow_min_hold_seconds: float = Field(
        5.0,
        ge=0,
        description="a slow attack's connections keep sending for at least this long (half of them, in the window)",
    )


DEFAULT_PORTS = {"sflow": 6343, "netflow": 2055}


class Source(_Model):
    """A telemetry source besides the data plane: a flow collector or a mirror port."""

    type: Literal["sflow", "netflow", "mirror"] = Field(
        description="'sflow' (sFlow v5), 'netflow' (NetFlow v5, v9 and IPFIX on one port), "
        "'mirror' (a SPAN/mirror port read with AF_PACKET)"
    )
    listen: str = Field(
        "",
        description="flow collectors: 'address:port' to listen on (default 0.0.0.0:6343 sFlow, 0.0.0.0:2055 NetFlow)",
    )
    exporters: list[str] = Field(
        default_factory=list,
        description="flow collectors: addresses or prefixes of the trusted exporters; datagrams from others are counted and dropped",
    )
    sampling_rate: int = Field(
        1, gt=0, description="flow collectors: sampling rate assumed when the exporter does not say (1 = unsampled)"
    )
    interface: str = Field("", description="mirror: the interface that receives the mirrored traffic")
    sample_every: int = Field(1, gt=0, description="mirror: keep 1 packet in N (a kernel-side filter)")

    @model_validator(mode="after")
    def _check(self) -> Source:
        if self.type == "mirror":
            if not self.interface:
                raise ValueError("a mirror source needs 'interface'")
        else:
            if not self.exporters:
                raise ValueError(f"a {self.type} collector needs 'exporters' (the routers it trusts)")
            _networks([e if "/" in e else f"{e}/{128 if ':' in e else 32}" for e in self.exporters])
            self.address()
        return self

    def address(self) -> tuple[str, int]:
        """(host, port) a flow collector listens on."""
        if not self.listen:
            return ("0.0.0.0", DEFAULT_PORTS[self.type])
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen {self.listen!r}: expected 'address:port'")
        return (host.strip("[]") or "0.0.0.0", int(port))


class Events(_Model):
    file: str = Field("-", description="where JSON events go, one per line: '-' for stdout, or a file path (appended)")


class Store(_Model):
    """History: attacks, mitigations, the audit log and attack packet samples."""

    enabled: bool = Field(True, description="keep the history (off: nothing is written to disk)")
    backend: Literal["sqlite", "postgresql"] = Field(
        "sqlite", description="the database: an embedded SQLite file, or a PostgreSQL server (then `dsn`)"
    )
    path: str = Field("", description="SQLite database file (default: history.sqlite3 in shield.state_dir); WAL mode")
    dsn: str = Field(
        "",
        description="PostgreSQL: libpq connection string, 'host=db.example dbname=shield user=shield' or "
        "'postgresql://shield@db.example/shield'; no password here: libpq takes it from PGPASSWORD or the "
        "PGPASSFILE (~/.pgpass) file",
    )
    retention_days: float = Field(
        90.0, gt=0, description="attacks, mitigations and audit entries older than this are deleted"
    )
    max_attacks: PositiveInt = Field(
        10000, description="at most this many attacks are kept (oldest deleted first, with their packets)"
    )
    max_audit_rows: PositiveInt = Field(
        200000, description="at most this many audit-log entries are kept (oldest deleted first)"
    )
    retention_interval_seconds: float = Field(3600.0, gt=0, description="how often the retention limits are applied")
    pcap_packets_per_attack: int = Field(
        2000, ge=0, description="sampled packets kept per attack for its pcap download (0 = none)"
    )
    queue_size: PositiveInt = Field(
        100000, description="events waiting for the writer thread; beyond this they are counted and dropped"
    )

    @model_validator(mode="after")
    def _check_dsn(self) -> Store:
        if self.backend == "postgresql" and not self.dsn:
            raise ValueError("dsn: backend = 'postgresql' needs a connection string")
        if self.dsn:
            from psycopg.conninfo import conninfo_to_dict

            try:
                parts = conninfo_to_dict(self.dsn)
            except Exception as e:  # psycopg's ProgrammingError; its text does not echo the string
                raise ValueError(f"dsn: not a libpq connection string: {e}") from None
            if "password" in parts:
                # the configuration is shown through the API and in logs: the secret stays outside it
                raise ValueError("dsn: holds a password; give it in PGPASSWORD or a PGPASSFILE (~/.pgpass) instead")
        return self


class Webhook(_Model):
    url: str = Field(description="http:// or https:// address the JSON alert is POSTed to")
    secret: str = Field(
        "", description="HMAC-SHA256 key: the body's signature goes in the X-DDoS-Shield-Signature header (sha256=HEX)"
    )
    timeout_seconds: float = Field(5.0, gt=0, description="per attempt")
    attempts: PositiveInt = Field(5, description="tries before an alert is given up (and counted as failed)")
    backoff_seconds: float = Field(1.0, gt=0, description="wait before the second try, doubled at each further try")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v


class Syslog(_Model):
    address: str = Field(description="'host:port' of the syslog receiver")
    protocol: Literal["udp", "tcp"] = Field(
        "udp", description="UDP (one datagram each) or TCP (RFC 6587 octet counting)"
    )
    format: Literal["rfc5424", "cef"] = Field(
        "rfc5424", description="RFC 5424 with structured data, or ArcSight CEF in the RFC 5424 message for SIEMs"
    )
    facility: int = Field(4, ge=0, le=23, description="syslog facility number (4 = security/auth)")
    app_name: str = Field("ddos-shield", description="RFC 5424 APP-NAME")

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r}: expected 'host:port'")
        return v


class Email(_Model):
    smtp_host: str = Field(description="SMTP server")
    smtp_port: int = Field(25, gt=0, lt=65536, description="SMTP port")
    starttls: bool = Field(False, description="upgrade the connection with STARTTLS before sending")
    username: str = Field("", description="SMTP AUTH user (empty: no login)")
    password: str = Field("", description="SMTP AUTH password")
    sender: str = Field(description="From: address")
    recipients: list[str] = Field(min_length=1, description="To: addresses")
    timeout_seconds: float = Field(10.0, gt=0, description="SMTP connection timeout")


class Alerts(_Model):
    """Where alerts go: webhooks, syslog, e-mail (any number of each, all optional)."""

    dashboard_url: str = Field(
        "",
        description="base URL of the dashboard as operators reach it; alerts link to {dashboard_url}/attacks/{attack_id}",
    )
    update_interval_seconds: float = Field(
        300.0, ge=0, description="at most one alert per attack in this interval between its start and its end"
    )
    queue_size: PositiveInt = Field(
        1000, description="alerts waiting per receiver; beyond this they are counted and dropped"
    )
    webhooks: list[Webhook] = Field(default_factory=list, description="JSON webhooks")
    syslog: list[Syslog] = Field(default_factory=list, description="syslog receivers")
    email: list[Email] = Field(default_factory=list, description="e-mail through SMTP")


class Api(_Model):
    """The REST API and the web dashboard, served by the running shield (docs/api.md)."""

    listen: str = Field(
        "",
        description="'address:port' to serve the API and dashboard on, e.g. '127.0.0.1:8470'; a port alone "
        "('8470') binds to loopback; any other address exposes it to that network; empty: no API",
    )
    tls_cert: str = Field("", description="PEM certificate file: serve HTTPS (with tls_key); empty: plain HTTP")
    tls_key: str = Field("", description="PEM private key file of tls_cert")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        if v:
            _listen_address(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> Api:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    def address(self) -> tuple[str, int]:
        """(host, port) to listen on; loopback unless an address is given."""
        return _listen_address(self.listen)


def _listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected 'address:port' or a port, e.g. '127.0.0.1:8470'")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _community(value: str) -> str:
    """A standard BGP community 'ASN:value' (two 16-bit numbers)."""
    a, sep, b = value.partition(":")
    if not (sep and a.isdigit() and b.isdigit() and int(a) <= 0xFFFF and int(b) <= 0xFFFF):
        raise ValueError(f"community {value!r}: expected 'ASN:value', two numbers 0-65535")
    return value


def _address(value: str, version: int | None = None) -> str:
    try:
        a = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    if version is not None and a.version != version:
        raise ValueError(f"{value!r} is not an IPv{version} address")
    return value


class BgpPeer(_Model):
    """A router the shield's BGP speaker peers with."""

    address: str = Field(description="the router's address")
    peer_as: int = Field(ge=1, le=0xFFFFFFFF, description="the router's AS number")
    local_address: str = Field(description="the shield's own address on the session with this router")

    @field_validator("address", "local_address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        return _address(v)


class Bgp(_Model):
    """The BGP backend: an ExaBGP speaker the shield drives (see docs/deployment.md)."""

    local_as: int = Field(ge=1, le=0xFFFFFFFF, description="the shield's AS number")
    router_id: str = Field(description="the speaker's BGP router id (an IPv4 address)")
    peers: list[BgpPeer] = Field(min_length=1, description="the routers to announce to")
    flowspec: bool = Field(True, description="announce drop and rate-limit rules as Flowspec (RFC 8955/8956)")
    blackhole: bool = Field(
        False,
        description="allow blackhole routes (RFC 7999): all the target's traffic is dropped upstream, which "
        "completes the attack; off by default, an explicit last resort",
    )
    next_hop: str = Field(
        "self", description="next hop of IPv4 blackhole routes: 'self' (the session's local address) or an address"
    )
    next_hop6: str = Field(
        "", description="next hop of IPv6 blackhole routes (an IPv6 address); empty: IPv6 blackholes are refused"
    )
    communities: list[str] = Field(
        default_factory=list, description="communities added to blackhole routes besides BLACKHOLE (65535:666)"
    )
    flowspec_communities: list[str] = Field(default_factory=list, description="communities added to Flowspec rules")
    deadman_seconds: float = Field(
        30.0,
        ge=3,
        le=3600,
        description="the dead-man's switch: every announcement is withdrawn when the shield has not refreshed "
        "the speaker for this long (a crashed controller leaves nothing announced)",
    )
    rate_packet_bytes: int = Field(
        1500,
        ge=64,
        le=65535,
        description="Flowspec rate limits are in bytes per second: a rule's packet rate is multiplied by this "
        "packet size (or by the rule's largest packet length when it matches on length)",
    )
    exabgp: str = Field("exabgp", description="the ExaBGP program to run (Debian's exabgp 4.2)")

    @field_validator("router_id")
    @classmethod
    def _check_router_id(cls, v: str) -> str:
        return _address(v, 4)

    @field_validator("next_hop")
    @classmethod
    def _check_next_hop(cls, v: str) -> str:
        return v if v == "self" else _address(v, 4)

    @field_validator("next_hop6")
    @classmethod
    def _check_next_hop6(cls, v: str) -> str:
        return _address(v, 6) if v else v

    @field_validator("communities", "flowspec_communities")
    @classmethod
    def _check_communities(cls, v: list[str]) -> list[str]:
        return [_community(c) for c in v]


class Notify(_Model):
    """The notify backend: tells other systems about every action; it enforces nothing."""

    script: list[str] = Field(
        default_factory=list,
        description="a program and its arguments, run on every action with the action as JSON on standard input",
    )
    script_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="a script run taking longer is killed (with its children) and counted as failed"
    )
    webhooks: list[Webhook] = Field(default_factory=list, description="JSON webhooks told of every action")
    queue_size: PositiveInt = Field(
        1000, description="actions waiting per receiver; beyond this they are counted and dropped"
    )

    @model_validator(mode="after")
    def _check_some(self) -> Notify:
        if not self.script and not self.webhooks:
            raise ValueError("notify needs a 'script', a 'webhook' or both")
        return self


class Config(_Model):
    """The whole configuration (``ddos-shield config example`` prints it annotated)."""

    protected: list[str] = Field(description="destination prefixes the shield watches and protects")
    allowlist: list[str] = Field(
        default_factory=list,
        description="source prefixes never dropped nor rate-limited (checked first, in the kernel)",
    )
    never_block: list[str] = Field(
        default_factory=list,
        description="destination prefixes no drop rule, BGP blackhole or Flowspec rule may cover: "
        "such a rule is narrowed or refused (an event says which); rate limits still apply",
    )
    critical: list[str] = Field(
        default_factory=list,
        description="destination prefixes never dropped automatically (PLCs, SCADA, safety systems): "
        "the shield rate-limits their attacks and asks an operator, and drops only after approval",
    )
    shield: Shield = Field(default_factory=Shield, description="the data plane and the control loop")
    mitigation: Mitigation = Field(default_factory=Mitigation, description="how rules are built from attacks")
    classification: Classification = Field(
        default_factory=Classification, description="scans, sweeps, connection floods and slow attacks"
    )
    baseline: Baseline = Field(default_factory=Baseline, description="learned baselines of normal traffic")
    events: Events = Field(default_factory=Events, description="where the JSON events go")
    groups: list[Group] = Field(default_factory=list, description="host groups; a 'default' group is added if absent")
    sources: list[Source] = Field(
        default_factory=list, description="telemetry besides the data plane: flow collectors, mirror ports"
    )
    store: Store = Field(default_factory=Store, description="the history database")
    alerts: Alerts = Field(default_factory=Alerts, description="alerts to webhooks, syslog and e-mail")
    api: Api = Field(default_factory=Api, description="the REST API and web dashboard")
    bgp: Bgp | None = Field(None, description="the BGP backend (Flowspec and blackhole routes); absent: no BGP")
    notify: Notify | None = Field(None, description="the notify backend (a script, webhooks); absent: none")

    @field_validator("protected", "allowlist", "never_block", "critical")
    @classmethod
    def _check_nets(cls, v: list[str]) -> list[str]:
        _networks(v)
        return v

    @model_validator(mode="after")
    def _check_groups(self) -> Config:
        names = [g.name for g in self.groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"group names must be unique, repeated: {sorted(dup)}")
        if "default" not in names:
            object.__setattr__(self, "groups", [*self.groups, Group(name="default")])
        protected = self.protected_networks()
        for g in self.groups:
            for net in g.networks():
                if not any(net.version == p.version and net.subnet_of(p) for p in protected):  # type: ignore[arg-type]
                    raise ValueError(f"group {g.name!r}: prefix {net} lies outside every protected prefix")
        return self

    def protected_networks(self) -> list[IPNetwork]:
        return _networks(self.protected)

    def allow_networks(self) -> list[IPNetwork]:
        return _networks(self.allowlist)

    def never_block_networks(self) -> list[IPNetwork]:
        return _networks(self.never_block)

    def critical_networks(self) -> list[IPNetwork]:
        return _networks(self.critical)

    def group_for_name(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def group_ids(self) -> dict[str, int]:
        """Stable small integers for groups, as the data plane stores them (default = 0)."""
        ids = {"default": 0}
        for g in self.groups:
            if g.name != "default":
                ids[g.name] = len(ids)
        return ids

    def prefix_groups(self) -> dict[IPNetwork, int]:
        """Every prefix the data plane must watch, mapped to its group id."""
        ids = self.group_ids()
        out: dict[IPNetwork, int] = {p: 0 for p in self.protected_networks()}
        for g in self.groups:
            for net in g.networks():
                out[net] = ids[g.name]
        return out

    def group_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | IPNetwork) -> Group:
        """The most specific group whose prefixes cover ``addr`` (default otherwise)."""
        best: tuple[int, Group] | None = None
        net = addr if isinstance(addr, ipaddress.IPv4Network | ipaddress.IPv6Network) else ipaddress.ip_network(addr)
        for g in self.groups:
            for p in g.networks():
                covers = p.version == net.version and net.subnet_of(p)  # type: ignore[arg-type]
                if covers and (best is None or p.prefixlen > best[0]):
                    best = (p.prefixlen, g)
        return best[1] if best else self.group_for_name("default")


# ---- loading with line numbers -------------------------------------------------------


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from e
    return parse(text, str(p))


def parse(text: str, name: str = "<config>") -> Config:
    """Parse and validate TOML text; errors name ``file:line: field: problem``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: {e}") from e
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = [x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-"))]
            field = _dotted(loc)
            line = _find_line(text, loc)
            where = f"{name}:{line}" if line else name
            msg = err["msg"].removeprefix("Value error, ")
            if (
                err["type"] not in ("missing", "extra_forbidden")
                and "input" in err
                and not isinstance(err["input"], dict)
            ):
                msg += f", got {err['input']!r}"
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"{where}: {field or '(top level)'}: {msg}")
        raise ConfigError("\n".join(problems)) from e


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def _find_line(text: str, loc: list[Any]) -> int | None:
    """Best line for a field path: the key's own line, else its table's header.

    tomllib keeps no positions (and tomlkit's are not exposed), so this walks the
    headers and keys, counting ``[[array]]`` tables to resolve list indices.
    """
    path = [p for p in loc]
    table: list[Any] = []
    counts: dict[tuple[Any, ...], int] = {}
    best: tuple[int, int] | None = None  # (matched depth, line)
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        h = _HEADER.match(line)
        if h:
            parts = [x.strip().strip('"') for x in h.group(2).split(".")]
            if h.group(1) == "[[":
                key = tuple(parts)
                counts[key] = counts.get(key, -1) + 1
                # resolve earlier array parents as their current index
                table = []
                for i, part in enumerate(parts):
                    table.append(part)
                    sub = tuple(parts[: i + 1])
                    if sub in counts and (i < len(parts) - 1 or True):
                        table.append(counts[sub])
            else:
                table = []
                for i, part in enumerate(parts):
                    table.append(part)
                    sub = tuple(parts[: i + 1])
                    if sub in counts:
                        table.append(counts[sub])
            depth = _prefix_depth(table, path)
            if depth == len(table) and (best is None or depth > best[0]):
                best = (depth, lineno)
            continue
        k = _KEY.match(line)
        if k:
            full = [*table, k.group(1)]
            depth = _prefix_depth(full, path)
            if depth == len(full) and (best is None or depth > best[0]):
                best = (depth, lineno)
    return best[1] if best else None


def _prefix_depth(a: list[Any], b: list[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ---- the annotated example -----------------------------------------------------------


def example() -> str:
    """An annotated example configuration; every comment comes from the schema."""
    d = Config.model_fields
    s = Shield.model_fields
    g = Group.model_fields
    m = Mitigation.model_fields

    def c(desc: str | None) -> str:
        return f"# {desc}" if desc else ""

    lines = [
        "# DDoS Shield configuration (TOML).  `ddos-shield config check FILE` validates it.",
        "",
        c(d["protected"].description),
        'protected = ["203.0.113.0/24", "2001:db8:2::/64"]',
        "",
        c(d["allowlist"].description),
        'allowlist = ["198.51.100.53/32"]',
        "",
        c(d["never_block"].description),
        'never_block = ["203.0.113.1/32"]',
        "",
        c(d["critical"].description),
        "critical = []",
        "",
        "[shield]",
    ]
    for key, f in s.items():
        lines.append(c(f.description))
        val = f.default if key != "interfaces" else ["out0"]
        lines.append(f"{key} = {_toml(val)}")
    lines += ["", "[mitigation]"]
    for key, f in m.items():
        lines.append(c(f.description))
        lines.append(f"{key} = {_toml(f.get_default(call_default_factory=True))}")
    lines += ["", "[classification]"]
    for key, f in Classification.model_fields.items():
        lines.append(c(f.description))
        lines.append(f"{key} = {_toml(f.default)}")
    lines += ["", "[baseline]"]
    for key, f in Baseline.model_fields.items():
        lines.append(c(f.description))
        lines.append(f"{key} = {_toml(f.default)}")
    lines += ["", "[events]", c(Events.model_fields["file"].description), 'file = "-"', ""]
    lines.append("[api]")
    for key, f in Api.model_fields.items():
        lines += [c(f.description), f"{key} = {_toml('127.0.0.1:8470' if key == 'listen' else f.default)}"]
    lines.append("")
    lines.append("# " + (d["groups"].description or ""))
    lines.append("# Thresholds are per destination, per category: syn, tcp, udp, icmp, frag, other.")
    lines += ["[[groups]]", c(g["name"].description), 'name = "default"']
    for key in ("action", "rate_limit_pps", "hold_seconds", "end_after_seconds", "exit_ratio"):
        lines.append(c(g[key].description))
        lines.append(f"{key} = {_toml(g[key].default)}")
    lines.append(c(g["ladder"].description))
    lines.append('ladder = ["rate_limit", "drop", "drop_sources"]')
    for key in ("settle_seconds", "allow_blackhole"):
        lines.append(c(g[key].description))
        lines.append(f"{key} = {_toml(g[key].default)}")
    lines.append("[groups.thresholds]")
    for key, f in Thresholds.model_fields.items():
        t = f.default
        lines.append(f"{key} = {{ pps = {t.pps}, bps = {t.bps} }}  {c(f.description)}")
    lines += ["# " + (g["carpet"].description or ""), "[groups.carpet]"]
    for key, f in Carpet.model_fields.items():
        if key != "thresholds":
            lines += [c(f.description), f"{key} = {_toml(f.default)}"]
    lines += [c(Carpet.model_fields["thresholds"].description), "[groups.carpet.thresholds]"]
    lines += [f"{key} = {{ pps = {t.pps}, bps = {t.bps} }}" for key, t in _prefix_thresholds()]
    gb = GroupBaseline.model_fields
    lines += ["[groups.baseline]", c(gb["sensitivity"].description), f"sensitivity = {gb['sensitivity'].default!r}"]
    lines += ["# " + (Floors.__doc__ or "").split("\n")[0].strip(), "[groups.baseline.floor]"]
    for key, f in Floors.model_fields.items():
        t = f.default
        lines.append(f"{key} = {{ pps = {t.pps}, bps = {t.bps} }}  {c(f.description)}")
    lines += [
        "",
        "[[groups]]",
        'name = "dns"',
        c(g["prefixes"].description),
        'prefixes = ["203.0.113.53/32"]',
        'action = "rate_limit"',
        "rate_limit_pps = 5000",
        "[groups.thresholds]",
        "udp = { pps = 50000, bps = 400000000, flows = 20000 }",
        "[groups.baseline]",
        "sensitivity = 8.0",
        "",
    ]
    # upstream enforcement and hooks need peers and programs of the site: shown commented out
    bg, bp, nt = Bgp.model_fields, BgpPeer.model_fields, Notify.model_fields
    extra = ["# " + (Bgp.__doc__ or "").strip() + ' Needs mitigation.backends = ["bgp"].', "[bgp]"]
    extra += [
        c(bg["local_as"].description),
        "local_as = 64513",
        c(bg["router_id"].description),
        'router_id = "192.0.2.1"',
    ]
    for key in ("flowspec", "blackhole", "next_hop", "communities", "deadman_seconds"):
        extra += [c(bg[key].description), f"{key} = {_toml(bg[key].get_default(call_default_factory=True))}"]
    extra += ["[[bgp.peers]]", c(bp["address"].description), 'address = "192.0.2.2"']
    extra += [c(bp["peer_as"].description), "peer_as = 64512", c(bp["local_address"].description)]
    extra += ['local_address = "192.0.2.1"', ""]
    extra += ["# " + (Notify.__doc__ or "").strip() + ' Needs "notify" in mitigation.backends.', "[notify]"]
    extra += [c(nt["script"].description), 'script = ["/usr/local/bin/ddos-hook"]']
    extra += [
        c(nt["script_timeout_seconds"].description),
        f"script_timeout_seconds = {nt['script_timeout_seconds'].default!r}",
    ]
    lines += [x if x.startswith("#") or not x else "# " + x for x in extra]
    lines.append("")
    return "\n".join(lines)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def reference() -> str:
    """The configuration reference in Markdown (docs/configuration.md is this text)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- generated by ddos_shield.config.reference(); tests/test_config.py keeps it in sync -->",
        "",
        "The configuration is one TOML file, validated whole when the shield starts (and by",
        "`ddos-shield config check FILE`); a mistake is reported with its line and field and",
        "the shield does not start. `ddos-shield config example` prints an annotated example.",
        "",
    ]

    def table(title: str, model: type[BaseModel], note: str = "") -> None:
        out.extend([f"## {title}", ""])
        if note:
            out.extend([note, ""])
        out.extend(["| field | default | meaning |", "|---|---|---|"])
        for key, f in model.model_fields.items():
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                tables = ("thresholds", "baseline", "floor")
                default = f"`{_toml(f.default_factory())}`" if key not in tables else "see below"  # type: ignore[call-arg]
            else:
                default = f"`{_toml(f.default)}`"
            if isinstance(f.default, BaseModel) or (
                f.default_factory is not None
                and key
                in ("shield", "mitigation", "events", "store", "alerts", "classification", "api", "carpet", "baseline")
            ):
                default = "table"
            elif f.default is None and not f.is_required():
                default = "absent"
            out.append(f"| `{key}` | {default} | {f.description or ''} |")
        out.append("")

    table("Top level", Config)
    table("[shield]", Shield)
    table("[mitigation]", Mitigation)
    table("[classification]", Classification)
    table(
        "[baseline]",
        Baseline,
        "A baseline of normal traffic is learned per destination and category (packets, bits and new flows "
        "per second), with a daily profile once a day of history exists; see docs/operating.md.",
    )
    table("[events]", Events)
    table("[api]", Api, "The REST API and web dashboard (docs/api.md). Tokens live in `shield.state_dir`.")
    table(
        "[[sources]]",
        Source,
        "Telemetry besides the data plane, any number of them, all feeding the same detection: sFlow and "
        "NetFlow/IPFIX collectors (UDP listeners that trust only the exporters named) and mirror ports.",
    )
    table(
        "[store]",
        Store,
        "The history of attacks, mitigations and the audit log, with a sample of each attack's packets "
        "(downloadable as pcap), written by its own thread: in an embedded SQLite database by default, or in a "
        'PostgreSQL database with `backend = "postgresql"` and `dsn` (the password from PGPASSWORD or a '
        "PGPASSFILE, never here).",
    )
    table(
        "[alerts]",
        Alerts,
        "Alerts on attack start, update (throttled) and end and on each mitigation. Each receiver has its own "
        "thread and queue, so a slow one never delays the others nor the shield.",
    )
    table("[[alerts.webhooks]]", Webhook)
    table("[[alerts.syslog]]", Syslog)
    table("[[alerts.email]]", Email)
    table(
        "[bgp]",
        Bgp,
        "The BGP backend: the shield runs an ExaBGP speaker that announces Flowspec rules and, only when "
        "`blackhole = true`, blackhole routes to the routers below. Every announcement is withdrawn when the "
        "shield stops refreshing the speaker for `deadman_seconds`. See docs/deployment.md.",
    )
    table("[[bgp.peers]]", BgpPeer)
    table(
        "[notify]",
        Notify,
        "The notify backend tells other systems about every rule applied, withdrawn or expired and about the "
        "kill switch: a script with the action as JSON on standard input, and/or JSON webhooks. It enforces "
        "nothing: hooks are for notifying, never the main path of mitigation.",
    )
    table("[[notify.webhooks]]", Webhook)
    table(
        "[[groups]]",
        Group,
        "Host groups hold thresholds, actions and hold times. A group named `default` covers every "
        "protected destination that no other group claims (it is added with the defaults below if absent); "
        "for any other destination the group with the most specific prefix wins. A group's prefixes must lie "
        "inside the protected prefixes.",
    )
    out.extend(
        [
            "## [groups.thresholds]",
            "",
            "Per destination (an IPv4 address, or an IPv6 prefix of `shield.ipv6_prefix_len`), per category,",
            "`{ pps = N, bps = N, flows = N }`; an attack when any is exceeded; 0 means no limit.",
            "",
            "| category | default | traffic |",
            "|---|---|---|",
        ]
    )
    for key, f in Thresholds.model_fields.items():
        t = f.default
        out.append(f"| `{key}` | `{{ pps = {t.pps}, bps = {t.bps} }}` | {f.description} |")
    out.append("")
    out.append(f"`flows`: {Threshold.model_fields['flows'].description}.")
    out.append("")
    table("[groups.baseline]", GroupBaseline)
    out.extend(
        [
            "## [groups.baseline.floor]",
            "",
            (Floors.__doc__ or "").replace("\n    ", " ").strip(),
            "",
            "| category | default | traffic |",
            "|---|---|---|",
        ]
    )
    for key, f in Floors.model_fields.items():
        t = f.default
        out.append(f"| `{key}` | `{{ pps = {t.pps}, bps = {t.bps} }}` | {f.description} |")
    out.append("")
    table(
        "[groups.carpet]",
        Carpet,
        "Carpet bombing: a flood spread over many addresses of a prefix, each below its host thresholds. "
        "Destinations are summed per prefix of the lengths below (never wider than the group's own prefix), "
        "leaving out hosts that are over their own limits (those are host attacks); a prefix whose sum is over "
        "a limit, reached by at least `min_destinations` destinations none of which carries more than "
        "`max_host_share` of it, is an attack on the prefix (type `carpet_bombing`), mitigated by rules on the prefix.",
    )
    out.extend(["## [groups.carpet.thresholds]", "", "| category | default |", "|---|---|"])
    for key, t in _prefix_thresholds():
        out.append(f"| `{key}` | `{{ pps = {t.pps}, bps = {t.bps} }}` |")
    out.append("")
    return "\n".join(out)
