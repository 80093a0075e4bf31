#!/usr/bin/env bash
# Builds portsentry, installs the shipped default files where Debian keeps them (existing
# files are never overwritten), and runs the daemon in the foreground on that config.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
install -d /etc/portsentry /etc/portsentry/plugins /usr/share/portsentry/lua
# State (history, journal) and what plugins log: 0750, as the package and the unit make them.
install -d -m 0750 /var/lib/portsentry /var/log/portsentry
for f in portsentry.conf portsentry.ignore portsentry.ignore.static; do
  [ -e "/etc/portsentry/$f" ] || install -m 0644 "conf/$f" "/etc/portsentry/$f"
done
[ -e /etc/default/portsentry ] || install -m 0644 conf/default-portsentry /etc/default/portsentry
cp -n plugins/*.lua /etc/portsentry/plugins/ 2>/dev/null || true
cp -r lua/. /usr/share/portsentry/lua/
target/release/portsentry --check-config -c /etc/portsentry/portsentry.conf
exec target/release/portsentry -c /etc/portsentry/portsentry.conf "$@"
