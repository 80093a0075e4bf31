#!/usr/bin/env bash
# Benchmark (not a test): the raw TCP sensor of this portsentry against Debian's PortSentry
# 1.2, both in -atcp, each alone in a defender network namespace, attacked from a second one.
#
#   (a) CPU seconds of the daemon while BULK_MB MiB of bulk TCP flow to a real service,
#       in MSS-sized segments
#   (b) CPU seconds and detection lines logged for PROBES spoofed-source SYN probes
#       (BLOCK_TCP=0, sent at RATE per second), counted until the log goes quiet
#   (c) peak RSS (VmHWM) of the daemon over the run
#
# Medians of RUNS runs are written to benches/raw_capture.results.md and into the
# "raw capture" section of BENCHMARKS.md.
#
# 1.2's binary comes from `apt-get download portsentry` + `dpkg -x` into a temp dir. It has
# a fixed config path and always logs to /dev/log, so it runs in a private mount namespace
# with an overlay on /etc (its config written to the overlay's upper dir) and a private
# /dev whose `log` is the benchmark's syslog receiver: nothing on the host is touched.
# Ours logs to its own receiver socket (--syslog-socket), so both pay for syslog alike.
#
# Needs root, python3, iproute2, util-linux (unshare), and network access to Debian's
# archive (for the .deb). Usage: benches/raw_capture.sh  (env: RUNS BULK_MB PROBES RATE GSO)
set -euo pipefail

RUNS=${RUNS:-3}
BULK_MB=${BULK_MB:-2048}
PROBES=${PROBES:-100000}
RATE=${RATE:-10000}
QUIET_SECS=${QUIET_SECS:-3}
MAX_WAIT=${MAX_WAIT:-60}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/benches/raw_capture
[ "$(id -u)" = 0 ] || { echo "raw_capture.sh: needs root" >&2; exit 1; }

W=$(mktemp -d /tmp/psbench.XXXXXX)
DEF=psbench-$$-d
ATT=psbench-$$-a
DEF4=10.77.250.1
ATT4=10.77.250.2
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "$DEF" "$ATT"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT

echo "== building our daemon (release)"
(cd "$ROOT" && cargo build --release --quiet)
OURS=$ROOT/target/release/portsentry

echo "== fetching Debian's portsentry 1.2"
(cd "$W" && apt-get download -q portsentry >/dev/null 2>&1) || {
  echo "raw_capture.sh: apt-get download portsentry failed (run apt-get update?)" >&2; exit 1; }
dpkg -x "$W"/portsentry_*.deb "$W/deb"
OLD=$W/deb/usr/sbin/portsentry
OLD_VERSION=$(basename "$W"/portsentry_*.deb .deb | sed 's/^portsentry_//')

echo "== network namespaces"
ip netns add "$DEF"; ip netns add "$ATT"
ip link add vd netns "$DEF" type veth peer name va netns "$ATT"
ip -n "$DEF" addr add $DEF4/24 dev vd; ip -n "$ATT" addr add $ATT4/24 dev va
for ns in "$DEF" "$ATT"; do ip -n "$ns" link set lo up; done
ip -n "$DEF" link set vd up; ip -n "$ATT" link set va up
# One MSS per packet on the wire, as from a NIC without GRO: the worst case for a daemon
# that copies every TCP segment (set GSO=1 to keep veth's 64 KiB GSO segments instead).
if [ "${GSO:-0}" = 0 ]; then ip -n "$ATT" link set va gso_max_size 1500; fi
# Spoofed sources live in 10.78.0.0/16: route them back to the attacker so that 1.2's raw
# socket (after routing, rp_filter) sees them as well as our capture (before routing).
ip -n "$DEF" route add 10.78.0.0/16 via $ATT4

write_conf() { # $1 = file, $2 = tag
  cat > "$1" <<EOF
ADVANCED_PORTS_TCP="1024"
ADVANCED_PORTS_UDP="1024"
ADVANCED_EXCLUDE_TCP="113,139"
ADVANCED_EXCLUDE_UDP="520,138,137,67"
IGNORE_FILE="$W/$2.ignore"
HISTORY_FILE="$W/$2.history"
BLOCKED_FILE="$W/$2.blocked"
HOSTS_DENY_FILE="$W/$2.hosts.deny"
RESOLVE_HOST="0"
BLOCK_TCP="0"
BLOCK_UDP="0"
SCAN_TRIGGER="0"
EOF
  echo "127.0.0.1/32" > "$W/$2.ignore"
  rm -f "$W/$2.history" "$W/$2".blocked*
}

start_receiver() { # $1 = tag
  rm -f "$W/$1.log.sock" "$W/$1.count"
  python3 "$HERE/syslog_rx.py" "$W/$1.log.sock" "$W/$1.count" "SYN/Normal scan from host" &
  PIDS+=($!)
  RX_PID=$!
  for _ in $(seq 50); do [ -S "$W/$1.log.sock" ] && break; sleep 0.1; done
}

# Starts a daemon in the defender namespace and sets DAEMON_PID.
start_daemon() { # $1 = ours|old
  local tag=$1
  write_conf "$W/$tag.conf" "$tag"
  start_receiver "$tag"
  if [ "$tag" = ours ]; then
    ip netns exec "$DEF" "$OURS" -atcp -c "$W/ours.conf" --syslog-socket "$W/ours.log.sock" \
      --quiet </dev/null >/dev/null 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
  else
    mkdir -p "$W/etc-up" "$W/etc-work" "$W/olddev"
    ip netns exec "$DEF" unshare -m --propagation private sh -c "
      set -e
      mount --rbind /dev '$W/olddev'
      mount -t tmpfs tmpfs /dev
      for n in null zero random urandom; do touch /dev/\$n; mount --bind '$W/olddev'/\$n /dev/\$n; done
      touch /dev/log; mount --bind '$W/old.log.sock' /dev/log
      mount -t overlay overlay -o lowerdir=/etc,upperdir='$W/etc-up',workdir='$W/etc-work' /etc
      mkdir -p /etc/portsentry
      cp '$W/old.conf' /etc/portsentry/portsentry.conf
      exec '$OLD' -atcp" </dev/null >/dev/null 2>&1
    # 1.2 daemonizes: find the process left in the namespace.
    DAEMON_PID=""
    for _ in $(seq 50); do
      for p in $(ip netns pids "$DEF"); do
        [ "$(cat /proc/"$p"/comm 2>/dev/null)" = portsentry ] && DAEMON_PID=$p
      done
      [ -n "$DAEMON_PID" ] && break
      sleep 0.1
    done
    [ -n "$DAEMON_PID" ] || { echo "1.2 did not start" >&2; exit 1; }
    PIDS+=("$DAEMON_PID")
  fi
  sleep 2 # start-up (1.2 tries to bind every port below the limit)
  kill -0 "$DAEMON_PID" 2>/dev/null || { echo "$tag daemon died at start" >&2; exit 1; }
}

stop_daemon() {
  kill "$DAEMON_PID" 2>/dev/null || true
  kill "$RX_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  wait "$RX_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
}

TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
secs() { awk -v t="$1" -v k="$TCK" 'BEGIN {printf "%.2f", t / k}'; }
count() { cat "$W/$1.count" 2>/dev/null || echo 0; }

# Waits until the receiver's count stops moving for QUIET_SECS (or MAX_WAIT).
wait_quiet() { # $1 = tag
  local last=-1 still=0 waited=0
  while [ $still -lt $((QUIET_SECS * 5)) ] && [ $waited -lt $((MAX_WAIT * 5)) ]; do
    sleep 0.2
    local c; c=$(count "$1")
    if [ "$c" = "$last" ]; then still=$((still + 1)); else still=0; last=$c; fi
    waited=$((waited + 1))
  done
}

ip netns exec "$DEF" python3 "$HERE/sink.py" 5001 &
PIDS+=($!)
sleep 0.5

declare -A BULK_CPU SYN_CPU SYN_EVENTS RSS
for run in $(seq "$RUNS"); do
  for tag in ours old; do
    echo "== run $run: $tag"
    start_daemon "$tag"
    t0=$(cpu_ticks "$DAEMON_PID")
    took=$(ip netns exec "$ATT" python3 "$HERE/bulk.py" $DEF4 5001 "$BULK_MB")
    t1=$(cpu_ticks "$DAEMON_PID")
    BULK_CPU[$tag]+="$(secs $((t1 - t0))) "
    echo "   bulk ${BULK_MB} MiB in ${took}s: daemon CPU $(secs $((t1 - t0)))s"
    t0=$(cpu_ticks "$DAEMON_PID")
    sent=$(ip netns exec "$ATT" python3 "$HERE/synflood.py" "$PROBES" "$RATE" $DEF4)
    wait_quiet "$tag"
    t1=$(cpu_ticks "$DAEMON_PID")
    ev=$(count "$tag")
    SYN_CPU[$tag]+="$(secs $((t1 - t0))) "
    SYN_EVENTS[$tag]+="$ev "
    rss=$(peak_kib "$DAEMON_PID")
    RSS[$tag]+="$rss "
    echo "   $PROBES SYNs in ${sent}s: daemon CPU $(secs $((t1 - t0)))s, $ev detection lines, peak RSS ${rss} KiB"
    stop_daemon
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

KERNEL=$(uname -r)
CPU=$(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//')
RESULT=$ROOT/benches/raw_capture.results.md
{
  echo "## Raw capture: -atcp against PortSentry $OLD_VERSION"
  echo
  echo "Command (root): \`benches/raw_capture.sh\` (env RUNS, BULK_MB, PROBES, RATE, GSO). Generated on $(date -u +%Y-%m-%d) (kernel $KERNEL, $CPU, $(nproc) cores)."
  echo "Medians of $RUNS runs; both daemons alone in a defender network namespace, traffic from"
  echo "a second namespace over a veth pair; CPU = user + system time of the daemon process."
  echo
  echo "| measure | ours | 1.2 |"
  echo "|---|---|---|"
  echo "| (a) CPU s while $BULK_MB MiB of bulk TCP flow to a real service | $(echo "${BULK_CPU[ours]}" | median) | $(echo "${BULK_CPU[old]}" | median) |"
  echo "| (b) CPU s for $PROBES spoofed-source SYNs at $RATE/s (BLOCK_TCP=0) | $(echo "${SYN_CPU[ours]}" | median) | $(echo "${SYN_CPU[old]}" | median) |"
  echo "| (b) detection lines logged for those $PROBES SYNs | $(echo "${SYN_EVENTS[ours]}" | median) | $(echo "${SYN_EVENTS[old]}" | median) |"
  echo "| (c) peak RSS, KiB | $(echo "${RSS[ours]}" | median) | $(echo "${RSS[old]}" | median) |"
  echo
  echo "Raw figures per run: bulk CPU ours [${BULK_CPU[ours]% }] 1.2 [${BULK_CPU[old]% }];"
  echo "SYN CPU ours [${SYN_CPU[ours]% }] 1.2 [${SYN_CPU[old]% }];"
  echo "lines ours [${SYN_EVENTS[ours]% }] 1.2 [${SYN_EVENTS[old]% }]; RSS ours [${RSS[ours]% }] 1.2 [${RSS[old]% }]."
  cat "$HERE/notes.md"
} > "$RESULT"
cat "$RESULT"

# Replace (or add) the section in BENCHMARKS.md.
BM=$ROOT/BENCHMARKS.md
[ -f "$BM" ] || printf '# Benchmarks\n' > "$BM"
python3 - "$BM" "$RESULT" <<'EOF'
import sys
bm, res = sys.argv[1], sys.argv[2]
text = open(bm).read()
section = "<!-- raw_capture:begin -->\n" + open(res).read() + "<!-- raw_capture:end -->\n"
b, e = "<!-- raw_capture:begin -->", "<!-- raw_capture:end -->\n"
if b in text and e in text:
    text = text[:text.index(b)] + section + text[text.index(e) + len(e):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(bm, "w").write(text)
EOF
echo "== written to $RESULT and $BM"
