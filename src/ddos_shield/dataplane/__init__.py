"""The kernel side: the XDP program (``bpf/``), its loader, and the nftables fallback."""
