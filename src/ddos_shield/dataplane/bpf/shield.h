/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DDoS Shield: the one contract between the XDP program and the control plane.
 *
 * Every map, key, value and flag bit is defined here and nowhere else.  The
 * Python side never re-declares a layout: it reads the BTF of the compiled
 * object (dataplane/abi.py), so a change here is a change everywhere.
 *
 * Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d),
 * and an IPv4 prefix length p is stored as 96 + p.  One LPM key type serves
 * both families.
 *
 * Bump SHIELD_ABI_VERSION whenever a map's key or value layout changes; the
 * control plane then migrates the pinned maps (dataplane/migrate.py) instead
 * of silently reusing them.
 */
#ifndef DDOS_SHIELD_H
#define DDOS_SHIELD_H

#include <linux/types.h>

/* Constants are enum members (not #defines) so that they are carried in BTF
 * and the control plane can read them from the compiled object. */
enum shield_limits {
	SHIELD_ABI_VERSION = 1,
	SHIELD_SNAPLEN = 128,          /* bytes of each sampled packet */
	SHIELD_MAX_RULES = 65536,      /* rule slots (source and fingerprint) */
	SHIELD_MAX_DST = 131072,       /* LRU-bounded per-destination counters */
	SHIELD_MAX_PREFIXES = 16384,   /* protected / allow-list prefixes */
	SHIELD_MAX_FP_INDEX = 16384,   /* destination prefixes with fingerprint rules */
	SHIELD_FP_LIST_MAX = 16,       /* fingerprint rules checked per destination */
	SHIELD_MAX_SRC_BUCKETS = 131072, /* LRU-bounded (rule, source) buckets of per-source rate limits */
	SHIELD_RATE_BURST_DIV = 10,    /* a rule's rate limit holds 1/10 s of its rate as burst ... */
	SHIELD_RATE_MIN_BURST = 5,     /* ... and at least this many packets (as nftables' limit) */
	SHIELD_MAX_VLAN = 2,           /* VLAN tags parsed (QinQ) */
	SHIELD_MAX_EXTHDR = 6,         /* IPv6 extension headers walked */
	SHIELD_RINGBUF_BYTES = 4194304,
};

/* Traffic categories counted per destination. */
enum shield_cat {
	CAT_TCP_SYN = 0,   /* TCP with SYN set and ACK clear */
	CAT_TCP = 1,       /* every other TCP packet */
	CAT_UDP = 2,
	CAT_ICMP = 3,      /* ICMP and ICMPv6 */
	CAT_FRAG = 4,      /* non-first fragments (no transport header) */
	CAT_OTHER = 5,     /* GRE, ESP, anything else over IP */
	CAT_MAX = 6,
};

/* Rule actions. */
enum shield_action {
	ACT_NONE = 0,       /* free slot */
	ACT_DROP = 1,
	ACT_RATE_LIMIT = 2, /* token bucket of rule.rate_pps, split across CPUs (RF_PER_SOURCE: one per source) */
	ACT_OBSERVE = 3,    /* count hits, pass: dry-run and preview */
};

/* rule.fields: which match fields are in force (absent = wildcard). */
enum shield_field {
	F_PROTO = 1 << 0,
	F_SRC = 1 << 1,
	F_DST = 1 << 2,
	F_SPORT = 1 << 3,
	F_DPORT = 1 << 4,
	F_TCP_FLAGS = 1 << 5,
	F_LEN = 1 << 6,
	F_TTL = 1 << 7,
	F_NEED_PORTS = F_SPORT | F_DPORT | F_TCP_FLAGS,
};

/* rule.flags: how a rule acts. */
enum shield_rule_flag {
	RF_PER_SOURCE = 1 << 0,   /* ACT_RATE_LIMIT: rate_pps for each source address (map "src_buckets") */
};

/* Packet flags, kept in a sample so user space knows what the kernel saw. */
enum shield_pkt_flag {
	PKT_IPV6 = 1 << 0,
	PKT_FRAG = 1 << 1,        /* any fragment */
	PKT_FRAG_LATER = 1 << 2,  /* non-first fragment */
	PKT_VLAN = 1 << 3,
	PKT_PROTECTED = 1 << 4,   /* destination inside a protected prefix */
	PKT_ALLOWED = 1 << 5,     /* source on the allow-list */
	/* Set by flow telemetry, never by the kernel: what a flow record cannot tell. */
	PKT_TTL_UNKNOWN = 1 << 6, /* no TTL in the record */
	PKT_LEN_MEAN = 1 << 7,    /* length is the flow's mean packet length */
};

/* Verdicts recorded in samples. */
enum shield_verdict {
	V_PASS = 0,
	V_DROP = 1,
	V_RATE_LIMITED = 2,
	V_OBSERVED = 3,
	V_BYPASS = 4,
};

/* Global counters (per-CPU array "stats", indexed by this enum). */
enum shield_stat {
	ST_RX = 0,           /* every packet seen */
	ST_NON_IP = 1,       /* not IPv4/IPv6: passed untouched */
	ST_MALFORMED = 2,    /* truncated or invalid headers: passed, counted */
	ST_ALLOWED = 3,      /* source on the allow-list */
	ST_DROPPED = 4,
	ST_RATE_LIMITED = 5, /* dropped by a rate limit */
	ST_OBSERVED = 6,
	ST_SAMPLED = 7,
	ST_SAMPLE_LOST = 8,  /* ring buffer full */
	ST_BYPASS = 9,       /* passed because the kill switch is on */
	ST_UNPROTECTED = 10, /* destination outside the protected prefixes */
	ST_EXPIRED_HIT = 11, /* matched a rule past its expiry: ignored */
	ST_MAX = 12,
};

/* ---- keys and values ---------------------------------------------------- */

struct lpm_key {               /* LPM trie key for protected, allow, src_index, fp_index */
	__u32 prefixlen;           /* 0..128; IPv4 = 96 + p */
	__u8 addr[16];
};

struct config {                /* map "config", one element */
	__u32 abi_version;         /* SHIELD_ABI_VERSION of the program that created the maps */
	__u32 bypass;              /* kill switch: 1 = pass everything, count only */
	__u32 sample_every;        /* sample 1 in N counted packets; 0 = off */
	__u32 ipv6_prefix_len;     /* IPv6 destinations are aggregated to this length */
	__u32 nr_cpus;             /* possible CPUs, to split rate limits */
	__u32 next_rule_id;        /* persisted allocator so restarts never reuse an id */
	__u64 generation;          /* bumped by the control plane on every rule change */
};

struct protected_val {         /* map "protected" (LPM): destination prefixes we watch */
	__u32 group_id;
	__u32 flags;
};

struct rule {                  /* map "rules" (array, SHIELD_MAX_RULES slots) */
	__u32 rule_id;             /* 0 = slot free; otherwise unique, never reused */
	__u32 attack_id;           /* the attack that caused it, 0 = manual */
	__u8 action;               /* enum shield_action */
	__u8 proto;                /* IP protocol number, with F_PROTO */
	__u8 tcp_flags_mask;       /* with F_TCP_FLAGS: (flags & mask) == value */
	__u8 tcp_flags_value;
	__u16 fields;              /* enum shield_field bits */
	__u8 ttl_min, ttl_max;     /* hop limit for IPv6 */
	__u16 sport_min, sport_max;
	__u16 dport_min, dport_max;
	__u16 len_min, len_max;    /* packet length at the hook (L2 frame) */
	__u8 src_plen, dst_plen;   /* in the 16-byte address space */
	__u8 flags;                /* enum shield_rule_flag bits */
	__u8 pad;
	__u8 src[16];              /* masked */
	__u8 dst[16];              /* masked */
	__u32 src_mask[4];         /* precomputed masks, network order words */
	__u32 dst_mask[4];
	__u64 rate_pps;            /* ACT_RATE_LIMIT: total across CPUs */
	__u64 expires_ns;          /* CLOCK_MONOTONIC (checked with the coarse clock); 0 = never */
	__u64 created_ns;
};

struct rule_stats {            /* map "rule_stats" (per-CPU array, per slot) */
	__u64 pkts;                /* packets that matched */
	__u64 bytes;
	__u64 dropped;             /* of those, dropped */
	__u64 tokens;              /* unused: a rate limit's bucket is in "rule_buckets", shared */
	__u64 last_ns;             /* by the CPUs (kept for the layout) */
};

struct src_bucket_key {       /* map "src_buckets" (LRU hash): a per-source rate limit's bucket */
	__u32 rule_id;             /* ids are never reused: a withdrawn rule's buckets just age out */
	__u8 addr[16];             /* the source, IPv4-mapped */
};

struct src_bucket {            /* token bucket in packet-nanoseconds, shared by the CPUs; also */
	                           /* the value of map "rule_buckets" (a rule's own bucket) */
	__u64 tokens;
	__u64 last_ns;
};

struct slot_ref {              /* maps "src_index" (LPM) and "src_exact" (hash) on source: rule slot */
	__u32 slot;
};

struct fp_list {               /* map "fp_index" (LPM on destination) */
	__u32 count;               /* slots in use, <= SHIELD_FP_LIST_MAX */
	__u32 slots[SHIELD_FP_LIST_MAX];
};

struct dst_key {               /* map "dst_stats" (LRU per-CPU hash) */
	__u8 addr[16];             /* IPv4-mapped, or IPv6 masked to ipv6_prefix_len */
};

struct dst_counters {
	__u64 pkts[CAT_MAX];
	__u64 bytes[CAT_MAX];
	__u64 dropped_pkts;        /* of all categories, dropped by a rule */
	__u64 dropped_bytes;
	__u32 group_id;
	__u32 pad;
};

struct sample {                /* ring buffer "samples" record */
	__u64 ts_ns;               /* bpf_ktime_get_ns() */
	__u32 ifindex;
	__u32 pkt_len;             /* original frame length */
	__u16 cap_len;             /* bytes of data[] filled */
	__u8 verdict;              /* enum shield_verdict */
	__u8 cat;                  /* enum shield_cat */
	__u16 flags;               /* enum shield_pkt_flag */
	__u16 pad;
	__u32 rule_id;             /* rule that decided, 0 = none */
	__u32 sample_every;        /* N in force when it was taken (to scale counts) */
	__u8 data[SHIELD_SNAPLEN];
};


/* ---- maps (compiled into the BPF object only) ---------------------------- */
#ifdef __bpf__
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SHIELD_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct protected_val);
} protected SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SHIELD_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __u32);            /* unused, 0 */
} allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SHIELD_MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SHIELD_MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule_stats);
} rule_stats SEC(".maps");

/* A rate limit's token bucket, per rule slot, shared by the CPUs (zeroed with the slot:
 * last_ns == 0 is a full bucket). Not per CPU: a flood's packets may all land on one
 * CPU (one receive queue, one flow hash), and a per-CPU bucket of rate_pps / nr_cpus
 * then let through only its share of the rate. Concurrent updates may race, which lets
 * a few packets too many through, never too few. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SHIELD_MAX_RULES);
	__type(key, __u32);
	__type(value, struct src_bucket);
} rule_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SHIELD_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct slot_ref);
} src_index SEC(".maps");

/* Source rules on a single address (/32, /128) live in this hash instead of
 * src_index: a hash lookup costs the same at any number of rules, while an LPM
 * trie of thousands of host prefixes is walked node by node (~100 ns at 10,000).
 * src_index then holds only shorter prefixes, and is consulted on a miss here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SHIELD_MAX_RULES);
	__type(key, struct lpm_key);     /* prefixlen always 128 */
	__type(value, struct slot_ref);
} src_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SHIELD_MAX_FP_INDEX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct fp_list);
} fp_index SEC(".maps");

/* Per-source rate limits: one bucket per (rule, source), the least recently used
 * evicted when full (an evicted source comes back with a full bucket). Not per CPU:
 * a source's packets may be spread over CPUs, and each CPU holding rate_pps would
 * let it through at a multiple of the rate; concurrent updates of one bucket may
 * race, which lets a few packets too many through, never too few. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SHIELD_MAX_SRC_BUCKETS);
	__type(key, struct src_bucket_key);
	__type(value, struct src_bucket);
} src_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, SHIELD_MAX_DST);
	__type(key, struct dst_key);
	__type(value, struct dst_counters);
} dst_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SHIELD_RINGBUF_BYTES);
} samples SEC(".maps");

#endif /* __bpf__ */
#endif /* DDOS_SHIELD_H */
