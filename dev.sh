#!/usr/bin/env bash
# DDoS Shield developer entry point.  On a fresh Debian 12 machine, as root:
#   bash dev.sh demo     set everything up, then run the demo (lab + shield + real attacks)
#   bash dev.sh test     set everything up, then run the whole test suite
#   bash dev.sh setup    only set up (apt packages, virtual environment, BPF build)
# Set-up is idempotent and quick when already done.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

APT_PACKAGES=(python3-venv python3-dev clang llvm libbpf-dev libbpf1 bpftool libelf-dev
              nftables iproute2 hping3 netsniff-ng xdp-tools ethtool curl procps pmacct tshark softflowd
              exabgp gobgpd chromium postgresql)
VENV=.venv

setup() {
    if [ "$(id -u)" -ne 0 ]; then echo "dev.sh: run as root (it installs packages and builds namespaces)" >&2; exit 1; fi
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "dev.sh: installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
        # pmacct's and softflowd's own services would hold the flow ports the tests use; the
        # PostgreSQL tests start a private server of their own, the system one is not needed
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            systemctl disable --now pmacctd nfacctd sfacctd uacctd softflowd exabgp gobgpd postgresql >/dev/null 2>&1 || true
        fi
    fi
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    if [ ! -x "$VENV/bin/python" ]; then
        /usr/bin/python3 -m venv "$VENV"
    fi
    if ! cmp -s requirements.lock "$VENV/.installed.lock" 2>/dev/null || ! cmp -s pyproject.toml "$VENV/.installed.pyproject" 2>/dev/null; then
        "$VENV/bin/pip" install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
        cp requirements.lock "$VENV/.installed.lock"
        cp pyproject.toml "$VENV/.installed.pyproject"
    fi
    "$VENV/bin/ddos-shield" build >/dev/null
}

case "${1:-}" in
    setup) setup ;;
    demo) setup; shift; exec "$VENV/bin/ddos-shield" demo "$@" ;;
    test)
        setup; shift
        "$VENV/bin/ruff" check src tests bench
        "$VENV/bin/mypy"
        exec "$VENV/bin/pytest" "$@" ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
esac
