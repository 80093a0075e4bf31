#!/usr/bin/env bash
# Benchmark (not a test): a scanner that changes its source address for every probe (issue
# 17), against this portsentry and Debian's PortSentry 1.2 side by side, both in -tcp, each
# alone in a defender network namespace, probed from a second one:
#
#   (1) 400 probes from 400 addresses of one IPv6 /64 (fd77:250:5::/64), one trap port each
#       (cycling through the trap ports), GAP_MS apart
#   (2) right after, 120 probes from 120 addresses of one IPv4 /24 (10.78.5.0/24)
#   (3) right after, one probe from a fresh address of another /24 (10.77.250.9): is it
#       blocked, and how many ms after its connect does its route appear (routes polled
#       every ~20-40 ms)?
#
# Each probe is one non-blocking connect; it is "answered" when a SYN-ACK or an RST came back
# within WAIT_MS (the scanner learned the port), silent when not (the source was blocked):
# benches/rotation/probe.py, the same measure as tests/e2e/prefix.rs. "Blocks" are the
# unreachable routes inside the rotated prefix in the defender namespace right after the
# phase (host routes and the prefix's own route), "blocked whole" whether the prefix's own
# route is there.
#
# Both daemons: TCP_PORTS = the 50 ports 2000-2049 (1.2 keeps at most 64), SCAN_TRIGGER=0,
# BLOCK_TCP=1, KILL_ROUTE="/sbin/ip route add unreachable $TARGET$" and KILL_HOSTS_DENY (1.2's
# fixed /etc/hosts.deny is on an overlay, see benches/lib.sh; ours writes one in the temp
# dir). Ours: every other key at its default (rate limits, SCAN_PREFIX_*, ESCALATE_*).
# The defender reaches the rotated prefixes by on-link routes (no gateway: a gateway would be
# protected). Each daemon run gets fresh namespaces and files.
#
# Medians of RUNS runs are written to benches/rotation.results.md and into the "Prefix
# rotation" section of BENCHMARKS.md. Needs root, python3, iproute2, util-linux (unshare),
# cargo, and network access to Debian's archive (for the .deb).
# Usage: benches/rotation.sh   (env: RUNS GAP_MS WAIT_MS FRESH_WAIT PROFILE=release|debug;
# OURS_BIN=path OURS_REV=label to run another build of ours instead of building this tree;
# KEEP=1 keeps the temp dir with the daemons' syslog lines of every run)
set -euo pipefail

RUNS=${RUNS:-3}
GAP_MS=${GAP_MS:-20}
WAIT_MS=${WAIT_MS:-900}
PROFILE=${PROFILE:-release}
FRESH_WAIT=${FRESH_WAIT:-3} # seconds the fresh scanner's block is waited for

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/benches/rotation
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
bench_init psrot
DEF6=fd77:250::1
ATT6=fd77:250::2
FRESH=10.77.250.9
NET6=fd77:250:5::/64
NET4=10.78.5.0/24
PORTS=$(seq -s, 2000 2049)

if [ -n "${OURS_BIN:-}" ]; then
  # Another build of ours (e.g. an older revision, for before/after figures): OURS_REV names it.
  OURS=$OURS_BIN
  OURS_REV=${OURS_REV:-$OURS_BIN}
else
  echo "== building our daemon ($PROFILE)"
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release --quiet --bins)
  else
    (cd "$ROOT" && cargo build --quiet --bins)
  fi
  OURS=$ROOT/target/$PROFILE/portsentry
  OURS_REV=$(ours_rev)
fi
fetch_old12

# A fresh pair of namespaces for every daemon run: nothing of the previous run is left (routes,
# and the TIME_WAIT sockets of its answered probes, which would keep 1.2 from binding its trap
# ports: it sets no SO_REUSEADDR).
SRC6=$(for i in $(seq 0 399); do printf 'fd77:250:5::%x ' $((0x1000 + i)); done)
SRC4=$(for i in $(seq 1 120); do printf '10.78.5.%d ' "$i"; done)
{
  for a in $SRC6; do echo "addr add $a/64 dev va nodad"; done
  for a in $SRC4; do echo "addr add $a/24 dev va"; done
  echo "addr add $FRESH/24 dev va"
} > "$W/addrs"
setup_lab() {
  teardown_namespaces
  ip netns add "$DEF"; ip netns add "$ATT"
  ip link add vd netns "$DEF" type veth peer name va netns "$ATT"
  ip -n "$DEF" addr add $DEF4/24 dev vd; ip -n "$ATT" addr add $ATT4/24 dev va
  ip -n "$DEF" addr add $DEF6/64 dev vd nodad; ip -n "$ATT" addr add $ATT6/64 dev va nodad
  for ns in "$DEF" "$ATT"; do ip -n "$ns" link set lo up; done
  ip -n "$DEF" link set vd up; ip -n "$ATT" link set va up
  # The rotating addresses, and on-link routes to them that cover the prefixes (a route of
  # the prefix itself would stand in the way of `ip route add unreachable <prefix>`).
  ip -n "$ATT" -batch "$W/addrs"
  ip -n "$DEF" route add 10.78.0.0/16 dev vd
  ip -n "$DEF" route add fd77:250::/32 dev vd
}

declare -A L4 L6
# Both daemons' config (see write_bench_conf): the trap ports, blocking on, and hosts.deny.
write_conf() { # $1 = file, $2 = tag
  write_bench_conf "$1" "$2" <<CONF
TCP_PORTS="$PORTS"
BLOCK_TCP="1"
KILL_HOSTS_DENY="ALL: \$TARGET\$ : DENY"
CONF
}

# A syslog receiver for daemon $1 (both daemons log to syslog alike): the lines go to
# $W/$1.syslog, kept for a look when a figure needs explaining.
start_receiver() { # $1 = tag
  rm -f "$W/$1.log.sock"
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as out:
    while True:
        out.write(s.recv(8192).decode(errors="replace") + "\n")
        out.flush()' "$W/$1.log.sock" "$W/$1.syslog" &
  RX_PID=$!
  PIDS+=("$RX_PID")
  for _ in $(seq 50); do [ -S "$W/$1.log.sock" ] && break; sleep 0.1; done
}

start_daemon() { # $1 = ours|old
  local tag=$1
  setup_lab
  write_conf "$W/$tag.conf" "$tag"
  start_receiver "$tag"
  if [ "$tag" = ours ]; then
    ip netns exec "$DEF" "$OURS" -tcp -c "$W/ours.conf" --syslog-socket "$W/ours.log.sock" --quiet \
      </dev/null >/dev/null 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 200); do grep -q "now active and listening" "$W/ours.syslog" 2>/dev/null && break; sleep 0.1; done
  else
    start_old12 "$DEF" "$W/old.conf" -tcp "$W/old.log.sock"
    for _ in $(seq 50); do grep -q "now active and listening" "$W/old.syslog" 2>/dev/null && break; sleep 0.1; done
  fi
  PIDS+=("$DAEMON_PID")
  kill -0 "$DAEMON_PID" 2>/dev/null || { echo "$tag daemon died at start" >&2; exit 1; }
  # Which families it listens on (1.2 binds IPv4 sockets only): listening sockets on the
  # trap ports, IPv4 (0.0.0.0:port) and IPv6 or dual-stack ([::]:port, *:port).
  local ls; ls=$(ip netns exec "$DEF" ss -Hltn | awk '{print $4}' | grep ':20[0-4][0-9]$' || true)
  L4[$tag]=$(echo "$ls" | grep -c '^0\.0\.0\.0:' || true)
  L6[$tag]=$(echo "$ls" | grep -c '^\(\[::\]\|\*\):' || true)
}

stop_daemon() { # $1 = tag
  kill "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
  kill "$RX_PID" 2>/dev/null || true
  wait "$RX_PID" 2>/dev/null || true
  mv "$W/$1.syslog" "$W/$1.run$run.syslog"
}

routes() { ip -n "$DEF" route show; ip -n "$DEF" -6 route show; }
# Unreachable routes inside a prefix given by its text before the host part (`fd77:250:5:`).
blocks_in() { routes | grep -c "^unreachable $1" || true; }
whole() { routes | grep -c "^unreachable $1 " || true; }

probe() { # sources...
  ip netns exec "$ATT" python3 "$HERE/probe.py" $DEF4 $DEF6 "$GAP_MS" "$WAIT_MS" "$PORTS" "$@"
}
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

declare -A A6 B6 W6 A4 B4 W4 FB FMS
for run in $(seq "$RUNS"); do
  for tag in ours old; do
    echo "== run $run: $tag"
    start_daemon "$tag"
    # shellcheck disable=SC2086
    out=$(probe $SRC6)
    A6[$tag]+="$(field answers "$out") "; B6[$tag]+="$(blocks_in fd77:250:5:) "; W6[$tag]+="$(whole $NET6) "
    echo "   /64: $out; blocks $(blocks_in fd77:250:5:), blocked whole $(whole $NET6)"
    # shellcheck disable=SC2086
    out=$(probe $SRC4)
    A4[$tag]+="$(field answers "$out") "; B4[$tag]+="$(blocks_in 10.78.5.) "; W4[$tag]+="$(whole $NET4) "
    echo "   /24: $out; blocks $(blocks_in 10.78.5.), blocked whole $(whole $NET4)"
    rm -f "$W/sent"
    PROBE_SENT_FILE=$W/sent probe $FRESH >/dev/null &
    pp=$!
    ms=""
    start=$(date +%s%N)
    while [ $(( ($(date +%s%N) - start) / 1000000 )) -lt $((FRESH_WAIT * 1000)) ]; do
      # (Counted, not `grep -q`: with pipefail, grep leaving early fails the pipeline.)
      if [ -s "$W/sent" ] && [ "$(routes | grep -c "^unreachable $FRESH " || true)" -gt 0 ]; then
        # From the probe's connect (written by probe.py) to the route seen.
        ms=$(( ($(date +%s%N) - $(cat "$W/sent")) / 1000000 ))
        break
      fi
      sleep 0.02
    done
    wait "$pp" || true
    if [ -n "$ms" ]; then FB[$tag]+="1 "; FMS[$tag]+="$ms "; else FB[$tag]+="0 "; fi
    if [ -n "$ms" ]; then echo "   fresh scanner: blocked after $ms ms"; else echo "   fresh scanner: not blocked within $FRESH_WAIT s"; fi
    stop_daemon "$tag"
  done
done

RESULT=$ROOT/benches/rotation.results.md
ms_or_none() { local v; v=$(m "${1:-}"); [ "$v" = "not run" ] && echo "never blocked" || echo "$v"; }
{
  echo "## Prefix rotation: -tcp against PortSentry $OLD_VERSION"
  echo
  echo "Command (root): \`RUNS=$RUNS GAP_MS=$GAP_MS WAIT_MS=$WAIT_MS PROFILE=$PROFILE benches/rotation.sh\`${OURS_BIN:+ with OURS_BIN}."
  echo "Generated on $(date -u +%Y-%m-%d) from $OURS_REV ($(machine))."
  echo "Medians of $RUNS runs. A scanner changes its source address for every probe: one TCP"
  echo "connect per address, ${GAP_MS} ms apart, to the next of 50 trap ports; an answer is a"
  echo "SYN-ACK or an RST within ${WAIT_MS} ms (the port was learned). Both daemons: \`-tcp\`,"
  echo "\`SCAN_TRIGGER=\"0\"\`, route + hosts.deny responders; ours with every other key at its"
  echo "default. Blocks = unreachable routes inside the rotated prefix right after the phase."
  echo
  echo "| measure | ours | 1.2 |"
  echo "|---|---|---|"
  echo "| listening sockets on the trap ports, IPv4 / IPv6 or dual-stack (last run) | ${L4[ours]:-?} / ${L6[ours]:-?} | ${L4[old]:-?} / ${L6[old]:-?} |"
  echo "| (1) 400 probes from 400 addresses of one IPv6 /64: answers | $(m "${A6[ours]:-}") | $(m "${A6[old]:-}") |"
  echo "| ... blocks made inside the /64 | $(m "${B6[ours]:-}") | $(m "${B6[old]:-}") |"
  echo "| ... the /64 blocked whole (1 = yes) | $(m "${W6[ours]:-}") | $(m "${W6[old]:-}") |"
  echo "| (2) then 120 probes from 120 addresses of one IPv4 /24: answers | $(m "${A4[ours]:-}") | $(m "${A4[old]:-}") |"
  echo "| ... blocks made inside the /24 | $(m "${B4[ours]:-}") | $(m "${B4[old]:-}") |"
  echo "| ... the /24 blocked whole (1 = yes) | $(m "${W4[ours]:-}") | $(m "${W4[old]:-}") |"
  echo "| (3) then one probe from a fresh address of another /24: blocked within ${FRESH_WAIT} s (1 = yes) | $(m "${FB[ours]:-}") | $(m "${FB[old]:-}") |"
  echo "| ... ms from its probe to its route (runs where it was blocked) | $(ms_or_none "${FMS[ours]:-}") | $(ms_or_none "${FMS[old]:-}") |"
  echo
  echo "Per run: (1) answers ours [$(l "${A6[ours]:-}")] 1.2 [$(l "${A6[old]:-}")], blocks ours [$(l "${B6[ours]:-}")] 1.2 [$(l "${B6[old]:-}")];"
  echo "(2) answers ours [$(l "${A4[ours]:-}")] 1.2 [$(l "${A4[old]:-}")], blocks ours [$(l "${B4[ours]:-}")] 1.2 [$(l "${B4[old]:-}")];"
  echo "(3) blocked ours [$(l "${FB[ours]:-}")] 1.2 [$(l "${FB[old]:-}")], ms ours [$(l "${FMS[ours]:-}")] 1.2 [$(l "${FMS[old]:-}")]."
  cat "$HERE/notes.md"
} > "$RESULT"
cat "$RESULT"
put_section rotation "$RESULT"
echo "== written to $RESULT and $ROOT/BENCHMARKS.md"
