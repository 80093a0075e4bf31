#!/usr/bin/env bash
# Runs the whole test suite (unit and end-to-end) on a fresh Debian 12, as root.
# End-to-end tests create their own network namespaces; nothing touches the host's network.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" != 0 ]; then
  echo "test: the end-to-end tests need root (network namespaces, raw sockets)" >&2
  exit 1
fi
cargo build --all-targets --locked
cargo test --locked --all-targets -- --test-threads=2
# The Debian package: built (release), its contents and conffiles checked, installed into
# throwaway dpkg roots, and installed over Debian's portsentry 1.2.
./scripts/test-package.sh
