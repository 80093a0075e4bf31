#!/usr/bin/env bash
# Installs what building, running and testing portsentry needs on Debian 12 (as root):
# Debian packages, and a Rust toolchain through rustup when cargo is missing or too old.
set -euo pipefail

need_apt=()
for pkg in build-essential pkg-config iproute2 nmap nftables iptables procps python3 tcpdump systemd tcpd \
           netcat-openbsd ca-certificates curl kmod hping3 dpkg-dev logrotate bubblewrap time; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Debian 12's own rustc (1.63) is too old for this crate (edition 2024): use rustup's stable.
if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1 || ! cargo --version | awk '{split($2,v,"."); exit !(v[1]>1 || v[2]>=85)}'; then
  echo "setup: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo --version

# cargo-deb builds the Debian package (scripts/build-deb.sh, and the package test in
# scripts/test.sh). Installed once, pinned, so a clean CI machine pays the ~3 minutes of
# compiling it only on its first run.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  echo "setup: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

# CrowdSec's Local API for the fleet's end-to-end tests (tests/e2e/fleet.rs): Debian's crowdsec
# binaries unpacked into a fixed cache directory, never installed (its postinst registers with
# the central API and starts services). The tests start `crowdsec` themselves on loopback.
CROWDSEC_CACHE=/var/cache/portsentry-test/crowdsec
if [ ! -x "$CROWDSEC_CACHE/usr/bin/crowdsec" ] || [ ! -x "$CROWDSEC_CACHE/usr/bin/cscli" ]; then
  echo "setup: unpacking Debian's crowdsec binaries into $CROWDSEC_CACHE"
  crowdsec_tmp=$(mktemp -d)
  (cd "$crowdsec_tmp" && apt-get download crowdsec >/dev/null 2>&1) || {
    apt-get update -qq
    (cd "$crowdsec_tmp" && apt-get download crowdsec >/dev/null)
  }
  mkdir -p "$CROWDSEC_CACHE"
  dpkg -x "$crowdsec_tmp"/crowdsec_*.deb "$CROWDSEC_CACHE"
  rm -rf "$crowdsec_tmp"
fi
