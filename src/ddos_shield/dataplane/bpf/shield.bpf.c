// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * DDoS Shield XDP program: parse, look up, count, verdict.
 *
 * Policy is data in the maps of shield.h; this file only applies it.  Per packet:
 *   parse -> kill switch -> allow-list -> source rule -> fingerprint rules
 *   -> per-destination counters (protected prefixes only) -> sample.
 * The clock is read only when a rule matched (coarse) or a sample is taken.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "shield.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Clang emits BTF only for types that something references: this read-only
 * global references every enum and the ring-buffer record, so that the control
 * plane can read all of the contract from the object (dataplane/abi.py). */
struct shield_abi {
	enum shield_limits limits;
	enum shield_cat cat;
	enum shield_action action;
	enum shield_field field;
	enum shield_rule_flag rule_flag;
	enum shield_pkt_flag pkt_flag;
	enum shield_verdict verdict;
	enum shield_stat stat;
	struct sample sample;
	struct dst_key dst_key;
};
const volatile struct shield_abi shield_abi;

#define NSEC_PER_SEC 1000000000ULL

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

#ifndef IPPROTO_HOPOPTS
#define IPPROTO_HOPOPTS 0
#endif
#define IPPROTO_ROUTING_HDR 43
#define IPPROTO_FRAGMENT_HDR 44
#define IPPROTO_ICMPV6_NUM 58
#define IPPROTO_DSTOPTS_HDR 60
#define IPPROTO_AH_HDR 51

enum parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP = 1,
	PARSE_MALFORMED = 2,
};

struct pkt {
	struct lpm_key src;    /* prefixlen 128, ready for LPM lookups */
	struct lpm_key dst;
	__u32 len;             /* frame length at the hook */
	__u16 sport, dport;    /* host order; ICMP: dport = type << 8 | code */
	__u16 flags;           /* enum shield_pkt_flag */
	__u8 proto, tcp_flags, ttl, cat;
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
	__be16 frag_off;       /* fragment header only */
	__be32 id;
};

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/* Rules read the coarse clock (same CLOCK_MONOTONIC base, one tick of lag), which
 * costs a fraction of bpf_ktime_get_ns; expiry and token refill need no better. */
static __always_inline __u64 clock_now(__u64 *now)
{
	if (!*now)
		*now = bpf_ktime_get_coarse_ns();
	return *now;
}

static __always_inline int parse(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cur, *l4;
	__be16 h_proto;
	__u8 nexthdr;

	p->len = end - data;
	if ((void *)(eth + 1) > end)
		return PARSE_MALFORMED;
	h_proto = eth->h_proto;
	cur = eth + 1;

#pragma unroll
	for (int i = 0; i < SHIELD_MAX_VLAN; i++) {
		struct vlan_tag *vh = cur;

		if (h_proto != bpf_htons(ETH_P_8021Q) && h_proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > end)
			return PARSE_MALFORMED;
		h_proto = vh->proto;
		cur = vh + 1;
		p->flags |= PKT_VLAN;
	}

	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		__u32 ihl;
		__u32 *s = (__u32 *)p->src.addr, *d = (__u32 *)p->dst.addr;

		if ((void *)(ip + 1) > end)
			return PARSE_MALFORMED;
		ihl = ip->ihl * 4;
		if (ip->version != 4 || ihl < sizeof(*ip))
			return PARSE_MALFORMED;
		l4 = cur + ihl;
		if (l4 > end)
			return PARSE_MALFORMED;
		s[2] = bpf_htonl(0xffff);
		s[3] = ip->saddr;
		d[2] = bpf_htonl(0xffff);
		d[3] = ip->daddr;
		p->proto = ip->protocol;
		p->ttl = ip->ttl;
		if (ip->frag_off & bpf_htons(0x3fff)) {
			p->flags |= PKT_FRAG;
			if (ip->frag_off & bpf_htons(0x1fff))
				p->flags |= PKT_FRAG_LATER;
		}
	} else if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;

		if ((void *)(ip6 + 1) > end)
			return PARSE_MALFORMED;
		__builtin_memcpy(p->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(p->dst.addr, &ip6->daddr, 16);
		p->ttl = ip6->hop_limit;
		p->flags |= PKT_IPV6;
		nexthdr = ip6->nexthdr;
		l4 = ip6 + 1;

#pragma unroll
		for (int i = 0; i < SHIELD_MAX_EXTHDR; i++) {
			struct ext_hdr *eh = l4;

			if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING_HDR &&
			    nexthdr != IPPROTO_DSTOPTS_HDR && nexthdr != IPPROTO_FRAGMENT_HDR &&
			    nexthdr != IPPROTO_AH_HDR)
				break;
			if ((void *)(eh + 1) > end)
				return PARSE_MALFORMED;
			if (nexthdr == IPPROTO_FRAGMENT_HDR) {
				p->flags |= PKT_FRAG;
				if (eh->frag_off & bpf_htons(0xfff8))
					p->flags |= PKT_FRAG_LATER;
				l4 += 8;
			} else if (nexthdr == IPPROTO_AH_HDR) {
				l4 += ((__u32)eh->hdrlen + 2) * 4;
			} else {
				l4 += ((__u32)eh->hdrlen + 1) * 8;
			}
			nexthdr = eh->nexthdr;
		}
		p->proto = nexthdr;
	} else {
		return PARSE_NON_IP;
	}

	if (p->flags & PKT_FRAG_LATER) {
		p->cat = CAT_FRAG;
		return PARSE_OK;
	}
	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 *t = l4;

		if ((void *)(t + 20) > end)
			return PARSE_MALFORMED;
		p->sport = ((__u16)t[0] << 8) | t[1];
		p->dport = ((__u16)t[2] << 8) | t[3];
		p->tcp_flags = t[13];
		p->cat = (t[13] & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN ? CAT_TCP_SYN : CAT_TCP;
		break;
	}
	case IPPROTO_UDP: {
		__u8 *u = l4;

		if ((void *)(u + 8) > end)
			return PARSE_MALFORMED;
		p->sport = ((__u16)u[0] << 8) | u[1];
		p->dport = ((__u16)u[2] << 8) | u[3];
		p->cat = CAT_UDP;
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_NUM: {
		__u8 *ic = l4;

		/* type/code in dport, as flow exporters and capture/decode.py do */
		if ((void *)(ic + 2) <= end)
			p->dport = ((__u16)ic[0] << 8) | ic[1];
		p->cat = CAT_ICMP;
		break;
	}
	default:
		p->cat = CAT_OTHER;
	}
	return PARSE_OK;
}

static __always_inline int addr_match(const __u8 *pkt_addr, const __u8 *want, const __u32 *mask)
{
	const __u32 *a = (const __u32 *)pkt_addr, *w = (const __u32 *)want;

	return ((a[0] & mask[0]) == w[0]) & ((a[1] & mask[1]) == w[1]) &
	       ((a[2] & mask[2]) == w[2]) & ((a[3] & mask[3]) == w[3]);
}

/* Does an active rule match?  check_dst is 0 for fingerprint rules, whose
 * destination the fp_index lookup has already decided. */
static __always_inline int rule_match(const struct rule *r, const struct pkt *p, int check_dst, __u64 *now)
{
	__u16 f = r->fields;

	if (r->action == ACT_NONE)
		return 0;
	if ((f & F_NEED_PORTS) && (p->flags & PKT_FRAG_LATER))
		return 0;
	if ((f & F_PROTO) && r->proto != p->proto)
		return 0;
	if ((f & F_SRC) && !addr_match(p->src.addr, r->src, r->src_mask))
		return 0;
	if (check_dst && (f & F_DST) && !addr_match(p->dst.addr, r->dst, r->dst_mask))
		return 0;
	if ((f & F_SPORT) && (p->sport < r->sport_min || p->sport > r->sport_max))
		return 0;
	if ((f & F_DPORT) && (p->dport < r->dport_min || p->dport > r->dport_max))
		return 0;
	if ((f & F_TCP_FLAGS) && (p->tcp_flags & r->tcp_flags_mask) != r->tcp_flags_value)
		return 0;
	if ((f & F_LEN) && (p->len < r->len_min || p->len > r->len_max))
		return 0;
	if ((f & F_TTL) && (p->ttl < r->ttl_min || p->ttl > r->ttl_max))
		return 0;
	if (r->expires_ns && clock_now(now) >= r->expires_ns) {
		stat_inc(ST_EXPIRED_HIT);
		return 0;
	}
	return 1;
}

/* Refill a bucket (tokens in packet-nanoseconds) for the time since it was last seen,
 * at most a second's worth at once, capped at burst; take one packet if it holds one. */
static __always_inline int bucket_spend(struct src_bucket *b, __u64 rate, __u64 burst, __u64 t)
{
	if (t > b->last_ns) {
		__u64 elapsed = t - b->last_ns;

		if (elapsed > NSEC_PER_SEC)
			elapsed = NSEC_PER_SEC;
		b->tokens += elapsed * rate;
		if (b->tokens > burst)
			b->tokens = burst;
		b->last_ns = t;
	}
	if (b->tokens >= NSEC_PER_SEC) {
		b->tokens -= NSEC_PER_SEC;
		return 1;
	}
	return 0;
}

/* A rule's token bucket (map rule_buckets, shared by the CPUs) in packet-nanoseconds:
 * refills at rate_pps, holds a tenth of a second of it (at least SHIELD_RATE_MIN_BURST
 * packets: a second's worth let a flood through whole for as long as it took to drain,
 * past the ladder's settle time), and starts full (last_ns == 0 after the control plane
 * zeroes the slot), so a test run sees exactly one burst. */
static __always_inline int bucket_take(const struct rule *r, __u32 slot, __u64 *now)
{
	struct src_bucket *b = bpf_map_lookup_elem(&rule_buckets, &slot);
	__u64 rate = r->rate_pps ? r->rate_pps : 1;
	__u64 pkts = rate / SHIELD_RATE_BURST_DIV;
	__u64 burst = (pkts > SHIELD_RATE_MIN_BURST ? pkts : SHIELD_RATE_MIN_BURST) * NSEC_PER_SEC;
	__u64 t = clock_now(now);

	if (!b)
		return 1;
	if (!b->last_ns) {
		b->tokens = burst;
		b->last_ns = t;
	}
	return bucket_spend(b, rate, burst, t);
}

/* The bucket of one source of a per-source rate limit (RF_PER_SOURCE): rate_pps for
 * that source alone, one second of burst, full for a source not seen before. */
static __always_inline int src_bucket_take(const struct rule *r, const struct pkt *p, __u64 *now)
{
	struct src_bucket_key k = { .rule_id = r->rule_id };
	struct src_bucket *b;
	__u64 rate = r->rate_pps ? r->rate_pps : 1;
	__u64 burst = rate * NSEC_PER_SEC, t = clock_now(now);

	__builtin_memcpy(k.addr, p->src.addr, sizeof(k.addr));
	b = bpf_map_lookup_elem(&src_buckets, &k);
	if (!b) {
		struct src_bucket fresh = { .tokens = burst - NSEC_PER_SEC, .last_ns = t };

		bpf_map_update_elem(&src_buckets, &k, &fresh, BPF_NOEXIST);
		return 1;
	}
	return bucket_spend(b, rate, burst, t);
}

static __always_inline void ipv6_mask(__u8 *addr, __u32 plen)
{
	__u32 *w = (__u32 *)addr;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 lo = i * 32;

		if (plen <= lo)
			w[i] = 0;
		else if (plen < lo + 32)
			w[i] &= bpf_htonl(~0U << (lo + 32 - plen));
	}
}

SEC("xdp")
int shield_xdp(struct xdp_md *ctx)
{
	struct pkt p = {};
	struct config *cfg;
	struct rule *r = NULL;
	struct protected_val *pv;
	__u32 zero = 0, slot = 0, rule_id = 0;
	__u64 now = 0;
	int action = XDP_PASS, rc;
	__u8 verdict = V_PASS;

	stat_inc(ST_RX);
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return XDP_PASS;

	rc = parse(ctx, &p);
	if (rc == PARSE_NON_IP) {
		stat_inc(ST_NON_IP);
		return XDP_PASS;
	}
	if (rc != PARSE_OK) {
		stat_inc(ST_MALFORMED);
		return XDP_PASS;
	}
	p.src.prefixlen = 128;
	p.dst.prefixlen = 128;

	if (cfg->bypass) {
		verdict = V_BYPASS;
		stat_inc(ST_BYPASS);
		goto account;
	}
	if (bpf_map_lookup_elem(&allow, &p.src)) {
		p.flags |= PKT_ALLOWED;
		stat_inc(ST_ALLOWED);
		goto account;
	}

	{
		struct slot_ref *ref = bpf_map_lookup_elem(&src_exact, &p.src);

		if (!ref)
			ref = bpf_map_lookup_elem(&src_index, &p.src);

		if (ref) {
			slot = ref->slot;
			r = bpf_map_lookup_elem(&rules, &slot);
			if (r && !rule_match(r, &p, 1, &now))
				r = NULL;
		}
	}
	if (!r) {
		struct fp_list *fl = bpf_map_lookup_elem(&fp_index, &p.dst);

		if (fl) {
			for (__u32 i = 0; i < SHIELD_FP_LIST_MAX; i++) {
				if (i >= fl->count)
					break;
				slot = fl->slots[i];
				r = bpf_map_lookup_elem(&rules, &slot);
				if (r && rule_match(r, &p, 0, &now))
					break;
				r = NULL;
			}
		}
	}

	if (r) {
		struct rule_stats *rs = bpf_map_lookup_elem(&rule_stats, &slot);

		rule_id = r->rule_id;
		if (rs) {
			rs->pkts += 1;
			rs->bytes += p.len;
		}
		if (r->action == ACT_DROP) {
			action = XDP_DROP;
			verdict = V_DROP;
		} else if (r->action == ACT_RATE_LIMIT) {
			int ok = (r->flags & RF_PER_SOURCE) ? src_bucket_take(r, &p, &now)
							    : bucket_take(r, slot, &now);

			if (!ok) {
				action = XDP_DROP;
				verdict = V_RATE_LIMITED;
				stat_inc(ST_RATE_LIMITED);
			}
		} else {
			verdict = V_OBSERVED;
			stat_inc(ST_OBSERVED);
		}
		if (action == XDP_DROP) {
			if (rs)
				rs->dropped += 1;
			stat_inc(ST_DROPPED);
		}
	}

account:
	pv = bpf_map_lookup_elem(&protected, &p.dst);
	if (!pv) {
		stat_inc(ST_UNPROTECTED);
		return action;
	}
	p.flags |= PKT_PROTECTED;

	{
		struct dst_key k;
		struct dst_counters *c;
		__u32 cat = p.cat;

		__builtin_memcpy(k.addr, p.dst.addr, 16);
		if (p.flags & PKT_IPV6)
			ipv6_mask(k.addr, cfg->ipv6_prefix_len);
		c = bpf_map_lookup_elem(&dst_stats, &k);
		if (!c) {
			struct dst_counters fresh = {};

			bpf_map_update_elem(&dst_stats, &k, &fresh, BPF_NOEXIST);
			c = bpf_map_lookup_elem(&dst_stats, &k);
		}
		if (c) {
			if (cat >= CAT_MAX)
				cat = CAT_OTHER;
			c->pkts[cat] += 1;
			c->bytes[cat] += p.len;
			if (action == XDP_DROP) {
				c->dropped_pkts += 1;
				c->dropped_bytes += p.len;
			}
			c->group_id = pv->group_id;
		}
	}

	{
		__u32 every = cfg->sample_every;
		struct sample *s;
		__u32 cap;

		if (!every || (every > 1 && bpf_get_prandom_u32() % every))
			return action;
		s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
		if (!s) {
			stat_inc(ST_SAMPLE_LOST);
			return action;
		}
		cap = p.len < SHIELD_SNAPLEN ? p.len : SHIELD_SNAPLEN;
		s->ts_ns = bpf_ktime_get_ns();
		s->ifindex = ctx->ingress_ifindex;
		s->pkt_len = p.len;
		s->cap_len = cap;
		s->verdict = verdict;
		s->cat = p.cat;
		s->flags = p.flags;
		s->pad = 0;
		s->rule_id = rule_id;
		s->sample_every = every;
		/* The arithmetic bounds the length to [1, SNAPLEN] in a form the
		 * verifier tracks (a plain "cap >= 1" test is lost on a register copy);
		 * the frame holds at least an Ethernet header, so cap is never 0. */
		_Static_assert((SHIELD_SNAPLEN & (SHIELD_SNAPLEN - 1)) == 0, "SNAPLEN must be a power of 2");
		if (bpf_xdp_load_bytes(ctx, 0, s->data, ((cap - 1) & (SHIELD_SNAPLEN - 1)) + 1))
			s->cap_len = 0;
		bpf_ringbuf_submit(s, 0);
		stat_inc(ST_SAMPLED);
	}
	return action;
}
