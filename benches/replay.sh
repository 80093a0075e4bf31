#!/usr/bin/env bash
# Benchmark (not a test): how fast `portsentry replay` reads a capture file on one core
# (issue 20, item 5: at least 1,000,000 packets a second, memory bounded).
#
# Two captures are generated once by examples/gen_pcap.rs and kept under
# target/bench-replay/ (delete them to regenerate):
#   bulk.pcap    ~1 GiB, Ethernet: four established TCP connections of the host 10.77.0.1
#                with 10.77.1.1-4 (1514-byte data frames both ways, a delayed ACK every two
#                segments), and inside them an nmap-like SYN scan of ports 1-1000 from
#                10.77.5.5, a forged SYN flood of 50,000 one-packet sources of 10.78.0.0/16,
#                UDP probes of 20 ports from 10.77.5.6, the host's DNS
#   probes.pcap  2,000,000 SYN probes (54-byte frames), each from a random source of
#                10.0.0.0/8 to a random port 1-1023 of the host
# Each file is replayed RUNS times with the default config in -atcp -audp:
#   portsentry replay -c conf/portsentry.conf -atcp -audp --local 10.77.0.1 --json FILE
# under /usr/bin/time -v (peak RSS). The JSON summary line gives packets, seconds and
# packets_per_second (the replay's own clock: both passes over the file, the report
# included; not the config load). The verdicts are checked: the SYN and UDP scanners
# would be blocked, none of the forged one-packet sources would.
#
# Medians go to target/bench-replay.txt and into the "Replay (issue 20)" section of
# BENCHMARKS.md (with benches/replay.notes.md). Needs cargo, python3 and GNU time
# (scripts/setup-deps.sh installs it); not root.
# Usage: benches/replay.sh   (env: RUNS=3 BULK_MIB=1024 PROBES=2000000; BENCHMARKS=0 to
# leave BENCHMARKS.md alone)
set -euo pipefail

RUNS=${RUNS:-3}
BULK_MIB=${BULK_MIB:-1024}
PROBES=${PROBES:-2000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
DATA=$ROOT/target/bench-replay
OUT=$ROOT/target/bench-replay.txt
BIN=$ROOT/target/release/portsentry
LOCAL=10.77.0.1
W=$(mktemp -d /tmp/psreplay.XXXXXX)
trap 'rm -rf "$W"' EXIT
[ -x /usr/bin/time ] || { echo "$(basename "$0"): needs GNU time (apt-get install time)" >&2; exit 1; }

echo "== building (release)"
(cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example gen_pcap)
mkdir -p "$DATA"
BULK=$DATA/bulk-${BULK_MIB}MiB.pcap
PROBE=$DATA/probes-$PROBES.pcap
if [ ! -s "$BULK" ]; then
  echo "== generating $BULK"
  start=$(date +%s%N)
  "$ROOT/target/release/examples/gen_pcap" bulk "$BULK.part" "$BULK_MIB" >/dev/null
  mv "$BULK.part" "$BULK"
  echo "   $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi
if [ ! -s "$PROBE" ]; then
  echo "== generating $PROBE"
  "$ROOT/target/release/examples/gen_pcap" probes "$PROBE.part" "$PROBES" >/dev/null
  mv "$PROBE.part" "$PROBE"
fi

# One replay of file $1 into $W/out.json and $W/time.txt; prints "pps seconds packets bytes
# rss_kib cpu_s" (cpu: user + system time of the replay, its figure on one core however
# loaded the machine is).
replay_once() {
  /usr/bin/time -v -o "$W/time.txt" "$BIN" replay -c "$ROOT/conf/portsentry.conf" -atcp -audp \
    --local $LOCAL --json "$1" > "$W/out.json"
  local rss cpu
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/time.txt")
  cpu=$(awk -F': ' '/User time|System time/ {t += $2} END {print t}' "$W/time.txt")
  python3 - "$W/out.json" "$rss" "$cpu" <<'PY'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1]) if '"type":"summary"' in l][-1]
print(s["packets_per_second"], s["seconds"], s["packets"], s["bytes"], sys.argv[2], sys.argv[3])
PY
}

# The verdicts of the last replay of the bulk file: "scanners blocked / forged blocked / would_block".
verdicts() {
  python3 - "$W/out.json" <<'PY'
import json, sys
src = [json.loads(l) for l in open(sys.argv[1])]
wb = [o for o in src if o.get("type") == "source" and o.get("verdict") == "would_block"]
scanners = sum(o["source"] in ("10.77.5.5", "10.77.5.6") for o in wb)
forged = sum(o["source"].startswith("10.78.") for o in wb)
summary = [o for o in src if o.get("type") == "summary"][-1]
print(scanners, forged, summary["would_block"], summary["sources"])
PY
}

declare -A PPS SECS MIBS RSS PKTS CPU CPPS
for f in bulk probes; do
  file=$BULK; [ $f = probes ] && file=$PROBE
  for run in $(seq "$RUNS"); do
    read -r pps secs pkts bytes rss cpu < <(replay_once "$file")
    cpps=$(awk -v p="$pkts" -v c="$cpu" 'BEGIN {printf "%.0f", p / (c > 0 ? c : 0.01)}')
    CPU[$f]+="$cpu "; CPPS[$f]+="$cpps "
    mibs=$(awk -v b="$bytes" -v s="$secs" 'BEGIN {printf "%.0f", b / 1048576 / s}')
    PPS[$f]+="$pps "; SECS[$f]+="$secs "; MIBS[$f]+="$mibs "; RSS[$f]+="$((rss / 1024)) "
    PKTS[$f]=$pkts
    printf '   %s run %d: %.0f packets/s, %.3f s, %s MiB/s, CPU %s s (%s packets per CPU second), peak RSS %d MiB\n' \
      $f "$run" "$pps" "$secs" "$mibs" "$cpu" "$cpps" $((rss / 1024))
  done
  if [ $f = bulk ]; then
    read -r scanners forged wb sources < <(verdicts)
    echo "   verdicts: $scanners of 2 scanners would block, $forged forged sources would block ($wb would_block of $sources sources)"
    [ "$scanners" = 2 ] && [ "$forged" = 0 ] || { echo "$(basename "$0"): wrong verdicts" >&2; exit 1; }
  fi
done
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

r0() { printf '%.0f' "$(m "$1")"; }
{
  echo "Command: \`benches/replay.sh\` (RUNS=$RUNS), i.e. \`portsentry replay -c conf/portsentry.conf -atcp -audp --local $LOCAL --json FILE\`."
  echo "Generated on $(date -u +%Y-%m-%d) from $(ours_rev) ($(machine)); load average at the end: $LOAD."
  echo "Medians of $RUNS runs; wall seconds as the replay's summary gives them (the first look at"
  echo "the host, the replay and the report); CPU = user + system time, so packets per CPU second"
  echo "is the figure on one core whatever else the machine runs."
  echo
  echo "| file | packets | size | packets/s (wall) | seconds | MiB/s | CPU s | packets per CPU second | peak RSS |"
  echo "|---|---|---|---|---|---|---|---|---|"
  echo "| bulk TCP with scans inside | ${PKTS[bulk]} | $(( $(stat -c %s "$BULK") >> 20 )) MiB | $(r0 "${PPS[bulk]}") | $(m "${SECS[bulk]}") | $(m "${MIBS[bulk]}") | $(m "${CPU[bulk]}") | $(r0 "${CPPS[bulk]}") | $(m "${RSS[bulk]}") MiB |"
  echo "| probe-heavy (SYN probes only) | ${PKTS[probes]} | $(( $(stat -c %s "$PROBE") >> 20 )) MiB | $(r0 "${PPS[probes]}") | $(m "${SECS[probes]}") | $(m "${MIBS[probes]}") | $(m "${CPU[probes]}") | $(r0 "${CPPS[probes]}") | $(m "${RSS[probes]}") MiB |"
  echo
  echo "Per run: bulk packets/s [$(l "${PPS[bulk]}")], per CPU second [$(l "${CPPS[bulk]}")]; probe-heavy packets/s [$(l "${PPS[probes]}")], per CPU second [$(l "${CPPS[probes]}")]."
  echo "Verdicts (bulk): $scanners of the 2 scanners would block, $forged of the 50,000 forged sources ($wb would_block of $sources sources)."
} > "$OUT"
cat "$OUT"
if [ "${BENCHMARKS:-1}" = 1 ]; then
  { echo "## Replay (issue 20)"; echo; cat "$OUT"; [ -f "$ROOT/benches/replay.notes.md" ] && { echo; cat "$ROOT/benches/replay.notes.md"; }; } > "$W/section.md"
  put_section replay "$W/section.md"
  echo "== written to $OUT and $ROOT/BENCHMARKS.md"
fi
