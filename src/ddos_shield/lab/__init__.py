"""The lab: a test network of namespaces and veth pairs, and bounded attack generators.

::

    dsl-atk (attackers) ──┐
                           ├── br0 in dsl-up ── out0 [dsl-shield] in0 ══ bottleneck ══ dsl-vic (HTTP :80)
    dsl-cli (legit client)─┘        (XDP on out0)              (tc htb + pfifo on in0)

Everything here is addressed from documentation and benchmarking ranges, and every
namespace drops outgoing packets to any address outside :data:`LAB_NETS`.  The lab
has no link to the host's own network namespace.
"""

from __future__ import annotations

import ipaddress

NS_PREFIX = "dsl-"
NS_ATTACKER = "dsl-atk"
NS_CLIENT = "dsl-cli"
NS_UPSTREAM = "dsl-up"
NS_SHIELD = "dsl-shield"
NS_VICTIM = "dsl-vic"

SHIELD_OUTSIDE_IF = "out0"
SHIELD_INSIDE_IF = "in0"

OUTSIDE_V4 = ipaddress.ip_network("198.51.100.0/24")  # TEST-NET-2
INSIDE_V4 = ipaddress.ip_network("203.0.113.0/24")  # TEST-NET-3
SPOOF_V4 = ipaddress.ip_network("198.18.0.0/15")  # benchmarking range
OUTSIDE_V6 = ipaddress.ip_network("2001:db8:100::/64")
INSIDE_V6 = ipaddress.ip_network("2001:db8:113::/64")
SPOOF_V6 = ipaddress.ip_network("2001:2::/48")  # benchmarking range
LAB_NETS = (OUTSIDE_V4, INSIDE_V4, SPOOF_V4, OUTSIDE_V6, INSIDE_V6, SPOOF_V6)

SHIELD_OUT_V4 = ipaddress.ip_address("198.51.100.1")
SHIELD_OUT_V6 = ipaddress.ip_address("2001:db8:100::1")
SHIELD_IN_V4 = ipaddress.ip_address("203.0.113.1")
SHIELD_IN_V6 = ipaddress.ip_address("2001:db8:113::1")
CLIENT_V4 = ipaddress.ip_address("198.51.100.10")
CLIENT_V6 = ipaddress.ip_address("2001:db8:100::10")
ATTACKER_V4 = ipaddress.ip_address("198.51.100.66")  # plus .67-.69 as extra sources
ATTACKER_V6 = ipaddress.ip_address("2001:db8:100::66")  # plus ::67-::69
VICTIM_V4 = ipaddress.ip_address("203.0.113.10")
VICTIM_V6 = ipaddress.ip_address("2001:db8:113::10")
VICTIM_HTTP_PORT = 80
#: More of the victim's prefix: the victim answers for every address of it (a local
#: route), so a carpet bomb spread over them is delivered, and counted, as real traffic.
CARPET_V4 = ipaddress.ip_network("203.0.113.128/25")

#: Interface names outside the shield (one veth end in each end host; bridge ports in dsl-up).
ATTACKER_IF = "eth0"
CLIENT_IF = "eth0"
VICTIM_IF = "eth0"
UPSTREAM_BRIDGE = "br0"
UPSTREAM_PORTS = {NS_ATTACKER: "up-atk", NS_CLIENT: "up-cli", NS_SHIELD: "up-shield"}

#: Fixed, locally administered MACs: trafgen addresses frames to SHIELD_OUT_MAC, and the
#: bridge and the neighbour tables can be static, so no stray ARP/ND disturbs packet counts.
ATTACKER_MAC = "02:d5:1a:00:00:66"
CLIENT_MAC = "02:d5:1a:00:00:10"
SHIELD_OUT_MAC = "02:d5:1a:00:00:01"
SHIELD_IN_MAC = "02:d5:1a:00:71:01"
VICTIM_MAC = "02:d5:1a:00:71:10"

#: The attacker's own addresses: ATTACKER_V4/V6 and the three after each.
ATTACKER_SOURCES_V4 = tuple(ATTACKER_V4 + i for i in range(4))
ATTACKER_SOURCES_V6 = tuple(ATTACKER_V6 + i for i in range(4))

#: nftables table (inet) in every lab namespace that drops packets leaving for outside LAB_NETS.
GUARD_TABLE = "dsl_guard"

#: Run-time files of the lab (victim pid file and log); the bpffs below lives here too.
LAB_RUN_DIR = "/run/ddos-shield-lab"

#: bpffs mounted in the host's mount namespace, so a shield started with
#: ``ip netns exec`` (which remounts /sys) can still pin and find its objects.
LAB_PIN_DIR = "/run/ddos-shield-lab/bpf"


def in_lab(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when ``addr`` lies inside the lab's own ranges (the only allowed targets)."""
    a = ipaddress.ip_address(addr)
    return any(a.version == n.version and a in n for n in LAB_NETS)
