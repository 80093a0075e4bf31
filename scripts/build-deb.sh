#!/usr/bin/env bash
# Builds the Debian package: target/debian/portsentry_<version>-<revision>_amd64.deb.
#
#   ./scripts/build-deb.sh && apt install ./target/debian/portsentry_*.deb
#
# 1. the release binary; 2. that binary writes its own man pages and bash/zsh completions
# into target/assets (generated, never in git, so they cannot drift from --help and the
# config key table); 3. cargo deb --no-build packages them with the metadata in Cargo.toml.
#
# The version carries the epoch 1: because Debian's archive has portsentry 1.2-14: without
# it dpkg and apt would see 0.1.0 as a downgrade of 1.2 (apt refuses it, and `apt upgrade`
# would put 1.2 back). cargo-deb has no metadata key for an epoch, hence --deb-version here;
# the file name leaves the epoch out, as Debian's own file names do.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"

EPOCH=1
REVISION=1
version=$(cargo metadata --no-deps --format-version 1 --locked \
  | python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="portsentry"][0]["version"])')
target_dir=${CARGO_TARGET_DIR:-target}
deb="target/debian/portsentry_${version}-${REVISION}_amd64.deb"

# Reproducible pages: their date is the last commit's, not today's.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
fi

cargo build --release --locked
rm -rf target/assets
"$target_dir/release/portsentry" --generate-man target/assets/man \
  --generate-completions target/assets/completions >/dev/null
mkdir -p target/debian
cargo deb --no-build --locked --deb-version "${EPOCH}:${version}-${REVISION}" -o "$deb" >/dev/null
echo "$deb"
