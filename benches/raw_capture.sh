#!/usr/bin/env bash
# Benchmark (not a test): the raw TCP sensor of this portsentry against Debian's PortSentry
# 1.2, both in -atcp, each alone in a defender network namespace, attacked from a second one.
#
#   (a) CPU seconds of the daemon while BULK_MB MiB of bulk TCP flow to a real service,
#       in MSS-sized segments; and while the defender uploads BULK_MB MiB to a service of
#       the attacker (ours also captures what the host sends: the SYNs and datagrams from
#       watched ports, for its flow table; its prefilter must drop the rest in the kernel)
#   (b) CPU seconds and detection lines logged for PROBES spoofed-source SYN probes
#       (BLOCK_TCP=0), counted until the log goes quiet, at RATE per second (the CPU
#       comparison with 1.2), then HIGH_PROBES at HIGH_RATE per second (does every probe
#       get logged?), and for ours HIGH_PROBES at HIGH_RATE again with every line also
#       copied to stderr; each with a freshly started daemon. Then both rates again with the
#       sources drawn from all of 10.0.0.0/8 ("wide", as hping3 --rand-source draws from all
#       of IPv4) instead of 10.78.0.0/16: with 65,024 addresses a flood of 100,000 repeats
#       sources, and a source that probes 3 ports reaches the forgeable trigger and is logged
#       in full (two lines a probe); with 16.6 million hardly any does. Also the achieved send rate,
#       the probes that reached the defender's stack, CPU per daemon thread, and our
#       daemon's own drop reports (probes, alerts, kernel capture drops)
#   (c) peak RSS (VmHWM) of the daemon over the run (highest of the run's daemons)
#   (d) a real scan inside a forged flood, blocking on (BLOCK_TCP=1, KILL_ROUTE adds an
#       unreachable route): `hping3 --rand-source -S -p 23` for FLOOD_SECS seconds (every SYN
#       from another address of the whole IPv4 space), and 1.5 s in an `nmap -sS` of 100
#       ports from a real address of the attacker ($SCANNER). Recorded: whether the real scanner was
#       blocked, how many forged sources were blocked, log lines written, daemon CPU. Ours
#       runs with the shipped evidence rules (FORGEABLE_SCAN_TRIGGER=3, BLOCK_RATE_LIMIT=60,
#       LOG_RATE_LIMIT at its default: 1 a second since issue 21, results recorded before
#       were taken at 200); 1.2 with SCAN_TRIGGER=0, as shipped.
#
# Medians of RUNS runs are written to benches/raw_capture.results.md and into the
# "raw capture" section of BENCHMARKS.md.
#
# 1.2's binary comes from `apt-get download portsentry` + `dpkg -x` into a temp dir. It has
# a fixed config path and always logs to /dev/log, so it runs in a private mount namespace
# with an overlay on /etc (its config written to the overlay's upper dir) and a private
# /dev whose `log` is the benchmark's syslog receiver: nothing on the host is touched.
# Ours logs to its own receiver socket (--syslog-socket) with --quiet, so both pay for
# syslog alike and nothing else (except in the stderr block).
#
# The probes come from examples/synflood.rs and the syslog receivers are
# examples/syslog_count.rs (Python could send only 30-70k probes/s here, and a slow
# receiver slows the daemon, whose syslog sends block when the receiver's queue is full).
# Both receivers run in the defender namespace, where net.unix.max_dgram_qlen is set to
# 512 (systemd's sysctl.d default; the kernel's default of 10 makes a syslog sender wait
# per line). The sysctl is per network namespace: the host's value is not touched.
#
# Needs root, python3, iproute2, util-linux (unshare), cargo, and network access to
# Debian's archive (for the .deb). Usage: benches/raw_capture.sh
# (env: RUNS BULK_MB PROBES RATE HIGH_RATE HIGH_PROBES OLD_HIGH GSO)
set -euo pipefail

RUNS=${RUNS:-3}
BULK_MB=${BULK_MB:-2048}
PROBES=${PROBES:-100000}
RATE=${RATE:-6000}
REACTION_PROBES=${REACTION_PROBES:-100}
HIGH_RATE=${HIGH_RATE:-100000}
HIGH_PROBES=${HIGH_PROBES:-$PROBES}
FLOOD_SECS=${FLOOD_SECS:-5}
OLD_HIGH=${OLD_HIGH:-1} # also flood 1.2 at HIGH_RATE (cheap: it loses most and finishes)
QUIET_SECS=${QUIET_SECS:-3}
MAX_WAIT=${MAX_WAIT:-60}
DROP_REPORT_SECS=11 # src/sensor/raw.rs DROP_REPORT and src/pipeline.rs DROP_REPORT_INTERVAL, + 1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/benches/raw_capture
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
bench_init psbench
# The real scanner of (d): not ATT4, which routes the forged 10.78.0.0/16 back and so is a
# gateway of the defender (protected, never blocked, by design).
SCANNER=10.77.250.3

echo "== building our daemon and the benchmark's tools (release)"
(cd "$ROOT" && cargo build --release --quiet --bins --example synflood --example syslog_count)
OURS=$ROOT/target/release/portsentry
SYNFLOOD=$ROOT/target/release/examples/synflood
SYSLOG_COUNT=$ROOT/target/release/examples/syslog_count
OURS_REV=$(ours_rev)

fetch_old12

echo "== network namespaces"
ip netns add "$DEF"; ip netns add "$ATT"
ip link add vd netns "$DEF" type veth peer name va netns "$ATT"
ip -n "$DEF" addr add $DEF4/24 dev vd; ip -n "$ATT" addr add $ATT4/24 dev va
ip -n "$ATT" addr add $SCANNER/24 dev va
for ns in "$DEF" "$ATT"; do ip -n "$ns" link set lo up; done
ip -n "$DEF" link set vd up; ip -n "$ATT" link set va up
# One MSS per packet on the wire, as from a NIC without GRO: the worst case for a daemon
# that copies every TCP segment (set GSO=1 to keep veth's 64 KiB GSO segments instead).
if [ "${GSO:-0}" = 0 ]; then
  ip -n "$ATT" link set va gso_max_size 1500; ip -n "$DEF" link set vd gso_max_size 1500
fi
# Spoofed sources live in 10.78.0.0/16: route them back to the attacker so that 1.2's raw
# socket (after routing, rp_filter) sees them as well as our capture (before routing).
ip -n "$DEF" route add 10.78.0.0/16 via $ATT4
# systemd's default queue length for Unix datagram sockets; set in the defender namespace
# only, before its receivers are created (a socket takes the value at creation).
ip netns exec "$DEF" sysctl -q -w net.unix.max_dgram_qlen=512

# The config of (a)-(c), of (d) with blocking on, or of (e) (see write_bench_conf).
write_conf() { # $1 = file, $2 = tag, $3 = block|react (optional: blocking on, for (d) and (e))
  local block_tcp=0 react=""
  [ "${3:-}" = block ] && block_tcp=1
  if [ "${3:-}" = react ]; then
    block_tcp=1
    # (e): the first packet of a source blocks it (1.2's behaviour), no budget in the way.
    react='FORGEABLE_SCAN_TRIGGER="1"
BLOCK_RATE_LIMIT="0"
BLOCK_RATE_LIMIT_PER_PREFIX="0"
ESCALATE_AFTER_V4="0"'
  fi
  write_bench_conf "$1" "$2" <<EOF
$react
ADVANCED_PORTS_TCP="1024"
ADVANCED_PORTS_UDP="1024"
ADVANCED_EXCLUDE_TCP="113,139"
ADVANCED_EXCLUDE_UDP="520,138,137,67"
BLOCK_TCP="$block_tcp"
KILL_HOSTS_DENY=""
EOF
}

PATTERN="SYN/Normal scan from host"

start_receiver() { # $1 = tag
  rm -f "$W/$1.log.sock" "$W/$1.count" "$W/$1.other"
  ip netns exec "$DEF" "$SYSLOG_COUNT" "$W/$1.log.sock" "$W/$1.count" "$PATTERN" "$W/$1.other" &
  PIDS+=($!)
  RX_PID=$!
  for _ in $(seq 50); do [ -S "$W/$1.log.sock" ] && break; sleep 0.1; done
}

# Starts a daemon in the defender namespace and sets DAEMON_PID. Ours runs with --quiet
# (syslog only, as 1.2 logs) unless $2 = stderr: then it also copies each line to stderr,
# which goes to $W/ours.stderr.
start_daemon() { # $1 = ours|old, $2 = quiet|stderr (ours only), $3 = block (optional)
  local tag=$1 quiet=--quiet
  mkdir -p "$W/$tag-etc"
  write_conf "$W/$tag-etc/portsentry.conf" "$tag" "${3:-}"
  start_receiver "$tag"
  if [ "$tag" = ours ]; then
    [ "${2:-quiet}" = stderr ] && quiet=
    ip netns exec "$DEF" "$OURS" -atcp -c "$W/ours-etc/portsentry.conf" --syslog-socket "$W/ours.log.sock" \
      $quiet </dev/null >/dev/null 2>"$W/ours.stderr" &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
  else
    start_old12 "$DEF" "$W/old-etc/portsentry.conf" -atcp "$W/old.log.sock"
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
# utime + stime of the daemon and cutime + cstime of its reaped children (the `ip route`
# forks of 1.2's KILL_ROUTE, the shell and commands of ours).
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
peak_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
secs() { awk -v t="$1" -v k="$TCK" 'BEGIN {printf "%.2f", t / k}'; }
count() { awk '{print $1}' "$W/$1.count" 2>/dev/null || echo 0; }

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
ip netns exec "$ATT" python3 "$HERE/sink.py" 5001 &
PIDS+=($!)
sleep 0.5

# Figures per run, keyed "tag phase" (phases: cmp = RATE, hi = HIGH_RATE, hierr = HIGH_RATE
# with ours copying its lines to stderr), each a space-separated list over the runs.
declare -A BULK_CPU BULK_OUT_CPU CPU LINES SENT_RATE REACHED ERRL DROP_P DROP_A DROP_K RSS
CSUM=0

# Sums the counts of one kind of our daemon's drop reports in a log file: the syslog
# receiver's file of non-detection lines, or the daemon's stderr.
drops() { # $1 = probes|alerts|kernel, $2 = file
  case $1 in
    probes) { grep -o '[0-9]* probes dropped' "$2" || true; } | awk '{s += $1} END {print s + 0}' ;;
    alerts) { grep -o '[0-9]* alerts dropped' "$2" || true; } | awk '{s += $1} END {print s + 0}' ;;
    kernel) { grep -o 'kernel dropped [0-9]*' "$2" || true; } | awk '{s += $3} END {print s + 0}' ;;
  esac
}

# CPU ticks per thread of the daemon, one "name<TAB>ticks" line each, sorted by name.
thread_ticks() { # $1 = pid
  for t in /proc/"$1"/task/*; do
    printf '%s\t%s\n' "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
  done 2>/dev/null | LC_ALL=C sort
}

# A TCP counter of the defender namespace's stack (/proc/net/snmp), e.g. InSegs.
tcp_mib() { # $1 = name
  ip netns exec "$DEF" awk -v k="$1" '$1 == "Tcp:" { if (!n) { for (i = 2; i <= NF; i++) h[$i] = i; n = 1 } else print $h[k] }' /proc/net/snmp
}

# Floods the running daemon with $3 probes at $4/s, waits for its log to go quiet, records
# the figures under "$1 $2" and prints them. "Reached" counts the segments the defender's
# TCP stack received meanwhile (AF_PACKET sees each before IP does); bad checksums too.
flood() { # $1 = tag, $2 = phase, $3 = probes, $4 = rate, $5 = wide (optional: sources from 10/8)
  local tag=$1 key="$1 $2" t0 t1 out in0 cs0 th0 start threads last cpu ev reached csum
  in0=$(tcp_mib InSegs); cs0=$(tcp_mib InCsumErrors)
  th0=$(thread_ticks "$DAEMON_PID")
  t0=$(cpu_ticks "$DAEMON_PID")
  start=$(date +%s.%N)
  out=$(SYNFLOOD_WIDE=$([ "${5:-}" = wide ] && echo 1 || echo 0) ip netns exec "$ATT" "$SYNFLOOD" "$3" "$4" $DEF4)
  wait_quiet "$tag"
  t1=$(cpu_ticks "$DAEMON_PID")
  # Where the daemon's CPU went, per thread (threads that used some), and when the last
  # detection line arrived, counted from the flood's start.
  threads=$(LC_ALL=C join -t $'\t' <(echo "$th0") <(thread_ticks "$DAEMON_PID") |
    awk -F'\t' -v k="$TCK" '$3 > $2 {printf "%s%s %.2fs", sep, $1, ($3 - $2) / k; sep = ", "}')
  last=$(awk -v s="$start" '{printf "%.2f", ($3 > 0) ? $3 - s : 0}' "$W/$tag.count")
  cpu=$(secs $((t1 - t0))); ev=$(count "$tag")
  reached=$(($(tcp_mib InSegs) - in0)); csum=$(($(tcp_mib InCsumErrors) - cs0))
  CSUM=$((CSUM + csum))
  CPU[$key]+="$cpu "; LINES[$key]+="$ev "; SENT_RATE[$key]+="${out#* } "; REACHED[$key]+="$reached "
  echo "   [$2] $3 SYNs sent in ${out% *} s (${out#* }/s), $reached reached the defender ($csum bad checksums)"
  echo "   [$2] daemon CPU ${cpu} s, $ev detection lines, the last ${last} s after the flood started"
  echo "   [$2] CPU by thread: $threads"
  if [ "$tag" = ours ]; then
    # Our daemon reports drops every DROP_REPORT_SECS (from its start): let it report the
    # flood's before it is stopped. Its reports reach syslog whether or not it is --quiet.
    sleep "$DROP_REPORT_SECS"
    local f="$W/ours.other" p a k
    p=$(drops probes "$f"); a=$(drops alerts "$f"); k=$(drops kernel "$f")
    DROP_P[$key]+="$p "; DROP_A[$key]+="$a "; DROP_K[$key]+="$k "
    echo "   [$2] drops reported: probes (sensor to filter) $p, alerts (filter to responders) $a, kernel capture $k"
    grep -h dropped "$f" | sed 's/^/   | /' || true
    if [ "$2" = hierr ]; then
      local e; e=$(grep -c "$PATTERN" "$W/ours.stderr" || true)
      ERRL[$key]+="$e "
      echo "   [$2] stderr: $e detection lines (receiver: $ev); drops there: probes" \
        "$(drops probes "$W/ours.stderr"), alerts $(drops alerts "$W/ours.stderr"), kernel $(drops kernel "$W/ours.stderr")"
    fi
  fi
}

# (d): a real scan inside a forged flood, blocking on. Records under the tag.
declare -A SCAN_BLOCKED FORGED_BLOCKED SCAN_LINES SCAN_CPU SCAN_SENT
scan_in_flood() { # $1 = ours|old
  local tag=$1 t0 t1 routes real forged lines hp
  ip -n "$DEF" route flush type unreachable 2>/dev/null || true
  start_daemon "$tag" quiet block
  t0=$(cpu_ticks "$DAEMON_PID")
  ip netns exec "$ATT" timeout $((FLOOD_SECS + 5)) hping3 --rand-source -S -p 23 -i u100 -q $DEF4 \
    >"$W/hping.out" 2>&1 &
  hp=$!
  sleep 1.5
  ip netns exec "$ATT" nmap -n -Pn -T4 --max-retries 1 -sS -S $SCANNER -e va -p 1-100 $DEF4 \
    >/dev/null 2>&1 || true
  sleep "$(awk -v f="$FLOOD_SECS" 'BEGIN {print (f > 1.5) ? f - 1.5 : 0}')"
  kill -INT "$hp" 2>/dev/null || true
  wait "$hp" 2>/dev/null || true
  wait_quiet "$tag"
  sleep 3 # blocks of the last probes
  t1=$(cpu_ticks "$DAEMON_PID")
  # (`ip route show type X` leaves the type word out of its lines: list them all.)
  routes=$(ip -n "$DEF" route show)
  real=$(echo "$routes" | grep -c "^unreachable $SCANNER " || true)
  forged=$(echo "$routes" | grep -v "^unreachable $SCANNER " | grep -c "^unreachable" || true)
  lines=$(( $(count "$tag") + $(wc -l < "$W/$tag.other" 2>/dev/null || echo 0) ))
  SCAN_BLOCKED[$tag]+="$real "; FORGED_BLOCKED[$tag]+="$forged "; SCAN_LINES[$tag]+="$lines "
  SCAN_CPU[$tag]+="$(secs $((t1 - t0))) "
  SCAN_SENT[$tag]+="$(grep -o '[0-9]* packets transmitted' "$W/hping.out" | awk '{print $1}') "
  echo "   [scan] real scanner blocked: $real; forged sources blocked: $forged; log lines: $lines;" \
    "daemon CPU $(secs $((t1 - t0))) s; $(grep -o '[0-9]* packets transmitted' "$W/hping.out" || echo '? packets')"
  stop_daemon
  ip -n "$DEF" route flush type unreachable 2>/dev/null || true
}

# (e): REACTION_PROBES forged sources at 10 a second, each blocked on its first SYN: from
# the send of the SYN to its unreachable route in the defender's table.
declare -A REACT_P50 REACT_P99 REACT_N
reaction() { # $1 = ours|old
  local tag=$1 out
  ip -n "$DEF" route flush type unreachable 2>/dev/null || true
  start_daemon "$tag" quiet react
  ip -n "$DEF" -ts monitor route >"$W/monitor.out" 2>/dev/null &
  local mon=$!
  sleep 0.3
  ip netns exec "$ATT" "$SYNFLOOD" "$REACTION_PROBES" 10 $DEF4 "$W/sent.log" >/dev/null
  sleep 2
  kill "$mon" 2>/dev/null || true; wait "$mon" 2>/dev/null || true
  out=$(python3 "$HERE/reaction.py" "$W/sent.log" "$W/monitor.out")
  set -- $out
  REACT_P50[$tag]+="$1 "; REACT_P99[$tag]+="$2 "; REACT_N[$tag]+="$3/$4 "
  echo "   [reaction] first packet -> route: p50 $1 ms, p99 $2 ms ($3 of $4 sources blocked)"
  stop_daemon
  ip -n "$DEF" route flush type unreachable 2>/dev/null || true
}

# RSS of our daemon idle, with the shipped config's modes (-tcp -udp) and with -atcp: VmRSS
# after IDLE_SECS.
declare -A IDLE_RSS
idle_rss() {
  local mode
  for mode in "-tcp -udp" "-atcp"; do
    mkdir -p "$W/ours-etc"
    write_conf "$W/ours-etc/portsentry.conf" ours
    start_receiver ours
    ip netns exec "$DEF" "$OURS" $mode -c "$W/ours-etc/portsentry.conf" --syslog-socket "$W/ours.log.sock" \
      --quiet </dev/null >/dev/null 2>&1 &
    DAEMON_PID=$!; PIDS+=("$DAEMON_PID")
    sleep "${IDLE_SECS:-5}"
    IDLE_RSS[$mode]+="$(awk '/^VmRSS/ {print $2}' "/proc/$DAEMON_PID/status") "
    echo "   idle RSS ($mode): $(awk "/^VmRSS/ {print \$2}" "/proc/$DAEMON_PID/status") KiB"
    stop_daemon
  done
}

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
    took=$(ip netns exec "$DEF" python3 "$HERE/bulk.py" $ATT4 5001 "$BULK_MB")
    t1=$(cpu_ticks "$DAEMON_PID")
    BULK_OUT_CPU[$tag]+="$(secs $((t1 - t0))) "
    echo "   upload ${BULK_MB} MiB in ${took}s: daemon CPU $(secs $((t1 - t0)))s"
    flood "$tag" cmp "$PROBES" "$RATE"
    peak=$(peak_kib "$DAEMON_PID")
    stop_daemon
    phases="hi"
    [ "$tag" = ours ] && phases="hi hierr"
    [ "$tag" = old ] && [ "$OLD_HIGH" != 1 ] && phases=""
    for phase in $phases; do
      start_daemon "$tag" "$([ "$phase" = hierr ] && echo stderr || echo quiet)"
      flood "$tag" "$phase" "$HIGH_PROBES" "$HIGH_RATE"
      p=$(peak_kib "$DAEMON_PID"); [ "$p" -gt "$peak" ] && peak=$p
      stop_daemon
    done
    # The same floods with sources drawn from all of 10.0.0.0/8 (16.6 million addresses, as
    # hping3 --rand-source draws from all of IPv4): hardly any source sends twice, so hardly
    # any reaches the forgeable trigger and gets its own lines.
    start_daemon "$tag" quiet
    flood "$tag" wcmp "$PROBES" "$RATE" wide
    stop_daemon
    start_daemon "$tag" quiet
    flood "$tag" whi "$HIGH_PROBES" "$HIGH_RATE" wide
    stop_daemon
    RSS[$tag]+="$peak "
    echo "   peak RSS of the run's daemons: $peak KiB"
    scan_in_flood "$tag"
    reaction "$tag"
  done
  idle_rss
done

# Median over the runs of CPU seconds / probes that reached the defender, in µs.
per_probe() { # $1 = key
  local c r out=""
  read -r -a cs <<<"${CPU[$1]:-}"; read -r -a rs <<<"${REACHED[$1]:-}"
  for i in "${!cs[@]}"; do
    r=${rs[$i]:-0}; [ "$r" -gt 0 ] || continue
    out+="$(awk -v c="${cs[$i]}" -v r="$r" 'BEGIN {printf "%.1f", c * 1e6 / r}') "
  done
  m "$out"
}

RESULT=$ROOT/benches/raw_capture.results.md
O="ours cmp"; X="old cmp"; OH="ours hi"; XH="old hi"; OE="ours hierr"
OW="ours wcmp"; XW="old wcmp"; OWH="ours whi"; XWH="old whi"
{
  echo "## Raw capture: -atcp against PortSentry $OLD_VERSION"
  echo
  echo "Command (root): \`RUNS=$RUNS BULK_MB=$BULK_MB PROBES=$PROBES RATE=$RATE HIGH_RATE=$HIGH_RATE HIGH_PROBES=$HIGH_PROBES benches/raw_capture.sh\`"
  echo "(also env OLD_HIGH, GSO). Generated on $(date -u +%Y-%m-%d) from $OURS_REV ($(machine))."
  echo "Medians of $RUNS runs; both daemons alone in a defender network namespace, traffic from"
  echo "a second namespace over a veth pair; CPU = user + system time of the daemon process and of"
  echo "its reaped children (cutime + cstime: 1.2's \`ip route\` forks, our commands)."
  echo "Probes from \`examples/synflood.rs\`; syslog counted by \`examples/syslog_count.rs\` in the"
  echo "defender namespace with net.unix.max_dgram_qlen=512 (systemd's default, set for that"
  echo "namespace only). Both daemons log to syslog only (ours with \`--quiet\`), except in the"
  echo "last block, where ours also copies every line to stderr (a file). Each block of (b) is"
  echo "a freshly started daemon. Each detected probe gives one counted \"SYN/Normal scan\" line"
  echo "and one \"Ignoring TCP response per configuration file setting.\" line (both daemons)."
  echo
  echo "| measure | ours | 1.2 |"
  echo "|---|---|---|"
  echo "| (a) CPU s while $BULK_MB MiB of bulk TCP flow to a real service | $(m "${BULK_CPU[ours]:-}") | $(m "${BULK_CPU[old]:-}") |"
  echo "| ... while the defender uploads $BULK_MB MiB to the attacker | $(m "${BULK_OUT_CPU[ours]:-}") | $(m "${BULK_OUT_CPU[old]:-}") |"
  echo "| (b) $PROBES forged-source SYNs at $RATE/s (BLOCK_TCP=0): achieved send rate, /s | $(m "${SENT_RATE[$O]:-}") | $(m "${SENT_RATE[$X]:-}") |"
  echo "| ... daemon CPU s (children included) | $(m "${CPU[$O]:-}") | $(m "${CPU[$X]:-}") |"
  echo "| ... daemon CPU per probe that reached the defender, µs | $(per_probe "$O") | $(per_probe "$X") |"
  echo "| ... detection lines logged | $(m "${LINES[$O]:-}") | $(m "${LINES[$X]:-}") |"
  echo "| (b) $HIGH_PROBES forged-source SYNs at $HIGH_RATE/s: achieved send rate, /s | $(m "${SENT_RATE[$OH]:-}") | $(m "${SENT_RATE[$XH]:-}") |"
  echo "| ... daemon CPU s (children included) | $(m "${CPU[$OH]:-}") | $(m "${CPU[$XH]:-}") |"
  echo "| ... daemon CPU per probe that reached the defender, µs | $(per_probe "$OH") | $(per_probe "$XH") |"
  echo "| ... detection lines logged | $(m "${LINES[$OH]:-}") | $(m "${LINES[$XH]:-}") |"
  echo "| ... drops ours reported: probes (sensor to filter) / alerts (filter to responders) / kernel capture | $(m "${DROP_P[$OH]:-}") / $(m "${DROP_A[$OH]:-}") / $(m "${DROP_K[$OH]:-}") | (no such report) |"
  echo "| (b) the same, ours also copying each line to stderr: achieved send rate, /s | $(m "${SENT_RATE[$OE]:-}") | |"
  echo "| ... daemon CPU s | $(m "${CPU[$OE]:-}") | |"
  echo "| ... detection lines logged (syslog receiver / stderr) | $(m "${LINES[$OE]:-}") / $(m "${ERRL[$OE]:-}") | |"
  echo "| ... drops ours reported: probes / alerts / kernel capture | $(m "${DROP_P[$OE]:-}") / $(m "${DROP_A[$OE]:-}") / $(m "${DROP_K[$OE]:-}") | |"
  echo "| (b) wide: sources from all of 10.0.0.0/8 (as hping3 --rand-source, hardly one repeats), $PROBES at $RATE/s: daemon CPU per probe, µs | $(per_probe "$OW") | $(per_probe "$XW") |"
  echo "| ... detection lines logged | $(m "${LINES[$OW]:-}") | $(m "${LINES[$XW]:-}") |"
  echo "| ... $HIGH_PROBES at $HIGH_RATE/s (achieved /s: $(m "${SENT_RATE[$OWH]:-}") / $(m "${SENT_RATE[$XWH]:-}")): daemon CPU per probe, µs | $(per_probe "$OWH") | $(per_probe "$XWH") |"
  echo "| ... detection lines logged | $(m "${LINES[$OWH]:-}") | $(m "${LINES[$XWH]:-}") |"
  echo "| (c) peak RSS, KiB (highest of the run's daemons: $HIGH_PROBES forged sources) | $(m "${RSS[ours]:-}") | $(m "${RSS[old]:-}") |"
  echo "| ... idle RSS, KiB, -tcp -udp / -atcp (ours) | $(m "${IDLE_RSS[-tcp -udp]:-}") / $(m "${IDLE_RSS[-atcp]:-}") | |"
  echo "| (e) reaction, first SYN of a source to its route, $REACTION_PROBES sources at 10/s: p50 ms | $(m "${REACT_P50[ours]:-}") | $(m "${REACT_P50[old]:-}") |"
  echo "| ... p99 ms | $(m "${REACT_P99[ours]:-}") | $(m "${REACT_P99[old]:-}") |"
  echo "| (d) nmap -sS of 100 ports inside a ${FLOOD_SECS} s hping3 --rand-source SYN flood (BLOCK_TCP=1): SYNs of the flood | $(m "${SCAN_SENT[ours]:-}") | $(m "${SCAN_SENT[old]:-}") |"
  echo "| ... real scanner blocked (1 = yes) | $(m "${SCAN_BLOCKED[ours]:-}") | $(m "${SCAN_BLOCKED[old]:-}") |"
  echo "| ... forged sources blocked | $(m "${FORGED_BLOCKED[ours]:-}") | $(m "${FORGED_BLOCKED[old]:-}") |"
  echo "| ... log lines written | $(m "${SCAN_LINES[ours]:-}") | $(m "${SCAN_LINES[old]:-}") |"
  echo "| ... daemon CPU s | $(m "${SCAN_CPU[ours]:-}") | $(m "${SCAN_CPU[old]:-}") |"
  echo
  echo "Raw figures per run (cmp: $RATE/s, hi: $HIGH_RATE/s, hierr: $HIGH_RATE/s with stderr, wcmp and whi: the same rates with wide sources; old = 1.2):"
  echo "bulk CPU ours [$(l "${BULK_CPU[ours]:-}")] 1.2 [$(l "${BULK_CPU[old]:-}")];"
  echo "upload CPU ours [$(l "${BULK_OUT_CPU[ours]:-}")] 1.2 [$(l "${BULK_OUT_CPU[old]:-}")];"
  for k in "$O" "$X" "$OH" "$XH" "$OE" "$OW" "$XW" "$OWH" "$XWH"; do
    [ -n "${CPU[$k]:-}" ] || continue
    line="$k: rate [$(l "${SENT_RATE[$k]}")], reached [$(l "${REACHED[$k]}")], CPU [$(l "${CPU[$k]}")], lines [$(l "${LINES[$k]}")]"
    if [ "${k%% *}" = ours ]; then
      line+=", drops probes [$(l "${DROP_P[$k]}")] alerts [$(l "${DROP_A[$k]}")] kernel [$(l "${DROP_K[$k]}")]"
      if [ -n "${ERRL[$k]:-}" ]; then line+=", stderr lines [$(l "${ERRL[$k]}")]"; fi
    fi
    echo "$line;"
  done
  echo "RSS ours [$(l "${RSS[ours]:-}")] 1.2 [$(l "${RSS[old]:-}")]; probes with a bad TCP checksum, all runs: $CSUM."
  echo "(e) reaction p50 ours [$(l "${REACT_P50[ours]:-}")] 1.2 [$(l "${REACT_P50[old]:-}")], p99 ours [$(l "${REACT_P99[ours]:-}")] 1.2 [$(l "${REACT_P99[old]:-}")], sources blocked ours [$(l "${REACT_N[ours]:-}")] 1.2 [$(l "${REACT_N[old]:-}")]; idle RSS -tcp -udp [$(l "${IDLE_RSS[-tcp -udp]:-}")] -atcp [$(l "${IDLE_RSS[-atcp]:-}")]."
  echo "(d) real scanner blocked ours [$(l "${SCAN_BLOCKED[ours]:-}")] 1.2 [$(l "${SCAN_BLOCKED[old]:-}")]; forged sources blocked ours [$(l "${FORGED_BLOCKED[ours]:-}")] 1.2 [$(l "${FORGED_BLOCKED[old]:-}")]; log lines ours [$(l "${SCAN_LINES[ours]:-}")] 1.2 [$(l "${SCAN_LINES[old]:-}")]; CPU ours [$(l "${SCAN_CPU[ours]:-}")] 1.2 [$(l "${SCAN_CPU[old]:-}")]."
  cat "$HERE/notes.md"
} > "$RESULT"
cat "$RESULT"

put_section raw_capture "$RESULT"
echo "== written to $RESULT and $ROOT/BENCHMARKS.md"
