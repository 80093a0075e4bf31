#!/usr/bin/env bash
# The Debian package test, run by scripts/test.sh (as root). It fails, naming what is wrong,
# when the package is: it builds the .deb (scripts/build-deb.sh), checks its control fields,
# contents, conffiles and maintainer scripts, then installs it with dpkg into throwaway roots
# (dpkg --root, the maintainer scripts run chrootless with DPKG_ROOT set, so they must not
# touch this host: no systemd, no start):
#  - a fresh install: the installed binary, chrooted into the root, checks the installed
#    configuration, so every absolute path of that configuration (ignore files, PLUGIN_DIR,
#    LUA_PATH_DIR) is resolved inside the package's own layout; /var/log/portsentry exists
#    (0750) and the unit makes it writable (LogsDirectory=), and the installed jsonlog plugin,
#    tried with --test-plugin, writes its default file there; the shipped man pages equal
#    what the installed binary generates; logrotate's copytruncate keeps an O_APPEND writer
#    (the daemon's history descriptor) on the rotated file; purge removes what it should;
#  - an upgrade from Debian's portsentry 1.2 (apt-get download) whose configuration the
#    admin edited: the admin's files are kept, ours land as .dpkg-dist, 1.2's init script
#    and ppp hooks go, and the installed binary accepts the kept 1.2 configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

fail() {
  echo "package test: FAIL: $*" >&2
  exit 1
}
PASSED=0
ok() { PASSED=$((PASSED + 1)); echo "package test: ok: $*"; }

# PACKAGE_TEST_KEEP=1 keeps the roots and the dpkg logs for a look after a failure.
work=$(mktemp -d /tmp/portsentry-package.XXXXXX)
if [ -z "${PACKAGE_TEST_KEEP:-}" ]; then
  trap 'rm -rf "$work"' EXIT
else
  echo "package test: keeping $work"
fi

# Files this host must not see change: the maintainer scripts run outside any chroot here.
host_witness() {
  ls -ld /etc/systemd/system/multi-user.target.wants/portsentry.service \
    /var/lib/systemd/deb-systemd-helper-enabled/portsentry.service.dsh-also \
    /etc/init.d/portsentry /var/lib/portsentry 2>&1 || true
}
host_before=$(host_witness)

# --- build -----------------------------------------------------------------------------
deb=$(./scripts/build-deb.sh | tail -n 1)
[ -f "$deb" ] || fail "scripts/build-deb.sh did not produce a package (last line: $deb)"
version=$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="portsentry"][0]["version"])')
[ "$deb" = "target/debian/portsentry_${version}-1_amd64.deb" ] || fail "package file name: $deb"
ok "built $deb"

# --- control fields ----------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = portsentry ] || fail "Package: $(field Package)"
[ "$(field Architecture)" = amd64 ] || fail "Architecture: $(field Architecture)"
deb_version=$(field Version)
[ "$deb_version" = "1:${version}-1" ] || fail "Version: $deb_version, expected 1:${version}-1"
dpkg --compare-versions "$deb_version" gt 1.2-14+b1 ||
  fail "$deb_version does not upgrade Debian's portsentry 1.2-14+b1"
case "$(field Depends)" in
  *libc6*iproute2* | *iproute2*libc6*) ;;
  *) fail "Depends: $(field Depends)" ;;
esac
ok "control: portsentry $deb_version amd64, upgrades 1.2, Depends: $(field Depends)"

# --- contents ----------------------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{print $1, $6}' | sed 's| \./| /|' >"$work/contents"
has() { # has MODE PATH
  grep -qx -- "$1 $2" "$work/contents" || fail "package lacks $2 with mode $1; it holds:
$(cat "$work/contents")"
}
has -rwxr-xr-x /usr/sbin/portsentry
for f in portsentry.conf portsentry.ignore portsentry.ignore.static; do
  has -rw-r--r-- "/etc/portsentry/$f"
done
has -rw-r--r-- /etc/default/portsentry
has -rw-r--r-- /lib/systemd/system/portsentry.service
has -rw-r--r-- /etc/logrotate.d/portsentry
for f in plugins/*.lua; do has -rw-r--r-- "/etc/portsentry/plugins/${f#plugins/}"; done
for f in lua/portsentry/*.lua; do has -rw-r--r-- "/usr/share/portsentry/lua/${f#lua/}"; done
for page in portsentry portsentry-status portsentry-list portsentry-block portsentry-unblock \
  portsentry-reload portsentry-replay; do
  has -rw-r--r-- "/usr/share/man/man8/$page.8.gz"
done
has -rw-r--r-- /usr/share/man/man5/portsentry.conf.5.gz
has -rw-r--r-- /usr/share/bash-completion/completions/portsentry
has -rw-r--r-- /usr/share/zsh/vendor-completions/_portsentry
has -rw-r--r-- /usr/share/doc/portsentry/copyright
if grep -q ' /usr/bin/' "$work/contents"; then fail "something in /usr/bin"; fi
ok "contents: binary, configuration, plugins, Lua library, unit, logrotate, man pages, completions"

# --- conffiles and maintainer scripts -------------------------------------------------------
dpkg-deb -e "$deb" "$work/control"
{
  printf '%s\n' /etc/default/portsentry /etc/logrotate.d/portsentry \
    /etc/portsentry/portsentry.conf /etc/portsentry/portsentry.ignore \
    /etc/portsentry/portsentry.ignore.static
  for f in plugins/*.lua; do echo "/etc/portsentry/plugins/${f#plugins/}"; done
} | sort >"$work/conffiles.expected"
sort "$work/control/conffiles" | diff -u "$work/conffiles.expected" - ||
  fail "conffiles differ from the expected list (above)"
for s in preinst postinst prerm postrm; do
  [ -x "$work/control/$s" ] || fail "no executable $s"
  sh -n "$work/control/$s" || fail "$s: syntax error"
done
ok "conffiles: every file under /etc, plugins included; maintainer scripts present"

# --- throwaway roots ---------------------------------------------------------------------------
new_root() {
  mkdir -p "$1/var/lib/dpkg/info" "$1/var/lib/dpkg/updates" "$1/var/lib/dpkg/triggers"
  touch "$1/var/lib/dpkg/status" "$1/var/lib/dpkg/available"
}
# Dependencies are not installed in an empty root; the scripts run with DPKG_ROOT set.
dpkg_in() { # dpkg_in ROOT ARGS...
  local root=$1
  shift
  dpkg --root="$root" --log=/dev/null --force-depends --force-script-chrootless "$@"
}
status_of() { dpkg-query --admindir="$1/var/lib/dpkg" -W -f='${Status} ${Version}' portsentry; }
# The binary links to glibc only: copying the libraries ldd names makes the root chrootable.
make_chrootable() {
  local lib
  for lib in $(ldd "$1/usr/sbin/portsentry" | grep -o '/[^ ]*'); do
    cp -L --parents "$lib" "$1"
  done
  mkdir -p "$1/tmp" "$1/dev"
  [ -e "$1/dev/null" ] || mknod -m 666 "$1/dev/null" c 1 3
}

# --- fresh install -------------------------------------------------------------------------------
fresh="$work/fresh"
new_root "$fresh"
dpkg_in "$fresh" -i "$deb" >"$work/fresh-install.log" 2>&1 ||
  fail "dpkg -i into an empty root: $(cat "$work/fresh-install.log")"
[ "$(status_of "$fresh")" = "install ok installed $deb_version" ] ||
  fail "status after install: $(status_of "$fresh")"
[ "$(stat -c %a "$fresh/var/lib/portsentry")" = 750 ] ||
  fail "/var/lib/portsentry: $(ls -ld "$fresh/var/lib/portsentry" 2>&1)"
[ "$(stat -c %a "$fresh/var/log/portsentry")" = 750 ] ||
  fail "/var/log/portsentry: $(ls -ld "$fresh/var/log/portsentry" 2>&1)"
unit="$fresh/lib/systemd/system/portsentry.service"
for line in LogsDirectory=portsentry LogsDirectoryMode=0750 StateDirectory=portsentry \
  StateDirectoryMode=0750 ReadWritePaths=-/run/xtables.lock; do
  grep -qx "$line" "$unit" || fail "the installed unit lacks $line"
done
[ ! -e "$fresh/etc/systemd" ] || fail "the scripts touched systemd in a root without it"
make_chrootable "$fresh"
out=$(chroot "$fresh" /usr/sbin/portsentry --check-config 2>&1) ||
  fail "installed binary refuses the installed configuration: $out"
case "$out" in
  *"/etc/portsentry/portsentry.conf: configuration OK"*) ;;
  *) fail "check-config said: $out" ;;
esac
ok "fresh install: installed portsentry --check-config accepts the installed configuration"

# Every shipped plugin, loaded from PLUGIN_DIR with the library from LUA_PATH_DIR, both at
# the defaults of the installed configuration.
sed -e 's|^LUA_RESPONDERS=.*|LUA_RESPONDERS="allowlist,iptables,jsonlog,mail,nftables"|' \
  "$fresh/etc/portsentry/portsentry.conf" >"$fresh/tmp/plugins.conf"
cat >>"$fresh/tmp/plugins.conf" <<'EOF'
ALLOWLIST_NETS="192.0.2.1"
JSONLOG_FILE="/var/log/portsentry/events.json"
MAIL_TO="root"
EOF
grep -q '^LUA_RESPONDERS="allowlist' "$fresh/tmp/plugins.conf" || fail "no LUA_RESPONDERS line to edit"
out=$(chroot "$fresh" /usr/sbin/portsentry --check-config -c /tmp/plugins.conf 2>&1) ||
  fail "the shipped plugins do not load from the installed layout: $out"
ok "fresh install: all shipped plugins load with the installed Lua library"

# The installed jsonlog plugin, as shipped (its default file in /var/log/portsentry), tried
# from inside the root: it loads the installed library and writes its line.
out=$(chroot "$fresh" /usr/sbin/portsentry --test-plugin /etc/portsentry/plugins/jsonlog.lua \
  --target 192.0.2.7 --port 31337 2>&1) || fail "--test-plugin jsonlog.lua failed: $out"
grep -q '"ip":"192.0.2.7"' "$fresh/var/log/portsentry/alerts.jsonl" ||
  fail "jsonlog wrote nothing to /var/log/portsentry/alerts.jsonl: $out"
ok "fresh install: --test-plugin jsonlog.lua writes /var/log/portsentry/alerts.jsonl (0750, the unit's LogsDirectory=)"

# The shipped pages are what the shipped binary generates (same date source as build-deb.sh).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
chroot "$fresh" /usr/sbin/portsentry --generate-man /tmp/man \
  --generate-completions /tmp/completions >/dev/null
for page in "$fresh"/tmp/man/*; do
  name=$(basename "$page")
  installed="$fresh/usr/share/man/man${name##*.}/$name.gz"
  zcat "$installed" | cmp -s - "$page" || fail "$installed is not what the binary generates"
done
cmp -s "$fresh/tmp/completions/portsentry.bash" \
  "$fresh/usr/share/bash-completion/completions/portsentry" || fail "stale bash completion"
cmp -s "$fresh/tmp/completions/_portsentry" \
  "$fresh/usr/share/zsh/vendor-completions/_portsentry" || fail "stale zsh completion"
bash -n "$fresh/usr/share/bash-completion/completions/portsentry" || fail "bash completion syntax"
ok "man pages and completions in the package are current with its binary"

# logrotate, as installed, on a history file held open with O_APPEND as the daemon holds it.
mkdir -p "$work/rotate"
history="$work/rotate/portsentry.history"
sed "s|/var/lib/portsentry/portsentry.history|$history|" \
  "$fresh/etc/logrotate.d/portsentry" >"$work/rotate/logrotate.conf"
grep -q "^$history {" "$work/rotate/logrotate.conf" || fail "logrotate file names no history file"
exec 3>>"$history"
echo "942286729 - 11/10/1999 20:18:49 Host: 192.0.2.1/192.0.2.1 Port: 111 TCP Blocked" >&3
inode=$(stat -c %i "$history")
logrotate -f -s "$work/rotate/state" "$work/rotate/logrotate.conf" ||
  fail "logrotate refused the installed file"
echo "942286730 - 11/10/1999 20:18:50 Host: 192.0.2.2/192.0.2.2 Port: 111 TCP Blocked" >&3
exec 3>&-
[ "$(stat -c %i "$history")" = "$inode" ] || fail "rotation replaced the history file"
[ "$(cat "$history")" = "942286730 - 11/10/1999 20:18:50 Host: 192.0.2.2/192.0.2.2 Port: 111 TCP Blocked" ] ||
  fail "after rotation the writer's line is not alone at the start: $(od -c "$history" | head)"
grep -q 192.0.2.1/192.0.2.1 "$history.1" || fail "rotated copy lacks the old line"
ok "logrotate: copytruncate keeps the daemon's O_APPEND descriptor on the watched file"

echo "1 - 01/01/1970 00:00:01 Host: 192.0.2.9/192.0.2.9 Port: 1 TCP Blocked" \
  >"$fresh/var/lib/portsentry/portsentry.history"
dpkg_in "$fresh" --purge portsentry >"$work/purge.log" 2>&1 || fail "purge: $(cat "$work/purge.log")"
for gone in /var/lib/portsentry /var/log/portsentry /etc/portsentry/portsentry.conf /etc/default/portsentry \
  /etc/logrotate.d/portsentry /usr/sbin/portsentry /lib/systemd/system/portsentry.service; do
  [ ! -e "$fresh$gone" ] || fail "purge left $gone"
done
ok "purge removes the configuration, the history and the plugins' logs"

# --- upgrade from Debian's portsentry 1.2 ------------------------------------------------------
# Its own maintainer scripts need debconf and, run chrootless, would call update-rc.d and
# invoke-rc.d on this host: they are stripped. What matters for the upgrade is what dpkg
# recorded (files, conffiles and their checksums), plus the two files 1.2's scripts write,
# recreated below as they write them.
cache=target/package-test
mkdir -p "$cache"
old=$(ls "$cache"/portsentry_1.2-*_amd64.deb 2>/dev/null | tail -n 1 || true)
if [ -z "$old" ]; then
  (cd "$cache" && apt-get download -q portsentry >/dev/null 2>&1) ||
    { apt-get update -qq && (cd "$cache" && apt-get download -q portsentry >/dev/null 2>&1); } ||
    fail "apt-get download portsentry (Debian's 1.2) failed"
  old=$(ls "$cache"/portsentry_1.2-*_amd64.deb | tail -n 1)
fi
dpkg-deb -R "$old" "$work/old"
rm -f "$work/old/DEBIAN/"{config,templates,preinst,postinst,prerm,postrm}
dpkg-deb -b "$work/old" "$work/old.deb" >/dev/null
old_version=$(dpkg-deb -f "$work/old.deb" Version)

up="$work/upgrade"
new_root "$up"
dpkg_in "$up" -i "$work/old.deb" >"$work/old-install.log" 2>&1 ||
  fail "installing 1.2: $(cat "$work/old-install.log")"
# 1.2's postinst writes /etc/default/portsentry; its init script builds portsentry.ignore.
cat >"$up/etc/default/portsentry" <<'EOF'
# /etc/default/portsentry
#  
# This file is read by /etc/init.d/portsentry. See the portsentry.8 
# manpage for details.
#
# The options in this file refer to commandline arguments (all in lowercase)
# of portsentry. Use only one tcp and udp mode at a time.
#
TCP_MODE="tcp"
UDP_MODE="udp"
EOF
{
  cat "$up/etc/portsentry/portsentry.ignore.static"
  echo 192.0.2.10
} >"$up/etc/portsentry/portsentry.ignore"
echo "942286729 - 11/10/1999 20:18:49 Host: 192.0.2.12/192.0.2.12 Port: 111 TCP Blocked" \
  >"$up/var/lib/portsentry/portsentry.history"
# The admin's edit.
grep -q '^SCAN_TRIGGER="0"' "$up/etc/portsentry/portsentry.conf" || fail "1.2's conf has no SCAN_TRIGGER=\"0\""
sed -i 's/^SCAN_TRIGGER="0"/SCAN_TRIGGER="2"/' "$up/etc/portsentry/portsentry.conf"
echo '# edited by the admin' >>"$up/etc/portsentry/portsentry.conf"
for f in etc/portsentry/portsentry.conf etc/default/portsentry etc/portsentry/portsentry.ignore; do
  mkdir -p "$work/admin/$(dirname "$f")"
  cp "$up/$f" "$work/admin/$f"
done
grep -qx /etc/portsentry/portsentry.conf "$up/var/lib/dpkg/info/portsentry.conffiles" ||
  fail "1.2 does not register /etc/portsentry/portsentry.conf as a conffile"

# What an unattended upgrade passes (apt -o Dpkg::Options::=--force-confdef,confold).
dpkg_in "$up" --force-confdef --force-confold -i "$deb" >"$work/upgrade.log" 2>&1 ||
  fail "upgrading 1.2 to $deb_version: $(cat "$work/upgrade.log")"
[ "$(status_of "$up")" = "install ok installed $deb_version" ] ||
  fail "status after upgrade: $(status_of "$up")"
for f in etc/portsentry/portsentry.conf etc/default/portsentry etc/portsentry/portsentry.ignore; do
  cmp -s "$up/$f" "$work/admin/$f" || fail "/$f: the admin's file was not kept"
done
cmp -s "$up/etc/portsentry/portsentry.conf.dpkg-dist" conf/portsentry.conf ||
  fail "our portsentry.conf is not beside the admin's as .dpkg-dist"
cmp -s "$up/etc/default/portsentry.dpkg-dist" conf/default-portsentry ||
  fail "our /etc/default/portsentry is not beside 1.2's as .dpkg-dist"
cmp -s "$up/etc/portsentry/portsentry.ignore.dpkg-dist" conf/portsentry.ignore ||
  fail "our portsentry.ignore is not beside 1.2's as .dpkg-dist"
# Unchanged since 1.2 installed it: dpkg replaces it silently.
cmp -s "$up/etc/portsentry/portsentry.ignore.static" conf/portsentry.ignore.static ||
  fail "the untouched 1.2 portsentry.ignore.static was not replaced by ours"
[ ! -e "$up/etc/portsentry/portsentry.ignore.static.dpkg-dist" ] || fail "needless .dpkg-dist"
for gone in /etc/init.d/portsentry /etc/ppp/ip-up.d/portsentry /etc/ppp/ip-down.d/portsentry \
  /usr/lib/portsentry/portsentry-build-ignore-file; do
  [ ! -e "$up$gone" ] || fail "1.2's $gone is still there after the upgrade"
  [ ! -e "$up$gone.dpkg-bak" ] || fail "1.2's unmodified $gone was kept as .dpkg-bak"
done
if grep -q '^/etc/init.d/' "$up/var/lib/dpkg/info/portsentry.conffiles"; then
  fail "the init script is still a registered conffile"
fi
grep -q '192.0.2.12/192.0.2.12 Port: 111 TCP Blocked' "$up/var/lib/portsentry/portsentry.history" ||
  fail "the 1.2 history was lost"
[ "$(stat -c %a "$up/var/lib/portsentry")" = 750 ] || fail "/var/lib/portsentry not tightened to 0750"
[ "$(stat -c %a "$up/var/log/portsentry")" = 750 ] || fail "/var/log/portsentry not made on the upgrade"
make_chrootable "$up"
out=$(chroot "$up" /usr/sbin/portsentry --check-config 2>&1) ||
  fail "the installed binary refuses the admin's kept 1.2 configuration: $out"
ok "upgrade from $old_version: admin's conf, default and ignore kept (ours as .dpkg-dist), init script and ppp hooks removed, history kept, 1.2 conf accepted"

[ "$(host_witness)" = "$host_before" ] || fail "the host changed:
before: $host_before
after:  $(host_witness)"
ok "nothing outside the throwaway roots changed"
# Every check above stops the script at its first failure, so reaching here means all passed.
echo "package: $PASSED passed, 0 failed"
