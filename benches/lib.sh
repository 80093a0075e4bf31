# Shared by the benchmark scripts (sourced, not run): their start and clean-up, Debian's
# PortSentry 1.2 fetched and run safely, medians, and the BENCHMARKS.md sections. Needs $ROOT.

# The common start of a benchmark: root only; W a fresh temp dir /tmp/$1.XXXXXX; DEF and ATT
# the names of its defender and attacker network namespaces, DEF4 and ATT4 their IPv4
# addresses; PIDS the background processes that [cleanup] kills at exit.
bench_init() { # $1 = short name (psbench, psrot)
  [ "$(id -u)" = 0 ] || { echo "$(basename "$0"): needs root" >&2; exit 1; }
  W=$(mktemp -d "/tmp/$1.XXXXXX")
  DEF=$1-$$-d
  ATT=$1-$$-a
  DEF4=10.77.250.1
  ATT4=10.77.250.2
  PIDS=()
  trap cleanup EXIT
}

# Kills what is left in the two namespaces and deletes them.
teardown_namespaces() {
  for ns in "$DEF" "$ATT"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

# At exit: the background processes, the namespaces, and the temp dir (kept with KEEP=1).
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  teardown_namespaces
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}

# The revision of ours being measured: the short commit, with "+changes" when src/ differs.
ours_rev() {
  local rev
  rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(cd "$ROOT" && git status --porcelain -- src 2>/dev/null)" ]; then rev="$rev+changes"; fi
  echo "$rev"
}

# The machine, for the results: "kernel K, CPU model, N cores".
machine() {
  echo "kernel $(uname -r), $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//'), $(nproc) cores"
}

# Writes a benchmark config for daemon $2 to file $1: the lines on stdin first (the first
# occurrence of a key wins, in 1.2 and ours), then what every benchmark config holds: the
# files the daemon reads in $W/$2-etc (an ignore file of 127.0.0.1 only), the files it
# writes in $W/$2-var (emptied here), as Debian lays them out (/etc/portsentry,
# /var/lib/portsentry: ours watches its config's directory, and a history file written
# beside the config would wake the watcher on every logged probe), no reverse DNS, no UDP
# blocking, an unreachable route as KILL_ROUTE, and SCAN_TRIGGER="0".
write_bench_conf() { # $1 = file, $2 = tag; the config's own lines on stdin
  mkdir -p "$W/$2-etc"
  rm -rf "$W/$2-var"; mkdir -p "$W/$2-var"
  echo "127.0.0.1/32" > "$W/$2-etc/portsentry.ignore"
  {
    cat
    cat <<CONF
IGNORE_FILE="$W/$2-etc/portsentry.ignore"
HISTORY_FILE="$W/$2-var/portsentry.history"
BLOCKED_FILE="$W/$2-var/portsentry.blocked"
HOSTS_DENY_FILE="$W/$2-var/hosts.deny"
BLOCK_STATE_FILE="$W/$2-var/portsentry.state"
CONTROL_SOCKET="$W/$2-var/portsentry.sock"
RESOLVE_HOST="0"
BLOCK_UDP="0"
KILL_ROUTE="/sbin/ip route add unreachable \$TARGET\$"
SCAN_TRIGGER="0"
CONF
  } > "$1"
}

# Fetches Debian's portsentry .deb with `apt-get download` and unpacks it into $W/deb: sets
# OLD (its binary) and OLD_VERSION.
fetch_old12() {
  echo "== fetching Debian's portsentry 1.2"
  (cd "$W" && apt-get download -q portsentry >/dev/null 2>&1) || {
    echo "$(basename "$0"): apt-get download portsentry failed (run apt-get update?)" >&2; exit 1; }
  dpkg -x "$W"/portsentry_*.deb "$W/deb"
  OLD=$W/deb/usr/sbin/portsentry
  OLD_VERSION=$(basename "$W"/portsentry_*.deb .deb | sed 's/^portsentry_//')
}

# Starts 1.2 in network namespace $1 with config file $2 and mode flag $3 (`-atcp`), and
# sets DAEMON_PID. 1.2 has a fixed config path and always logs to /dev/log, so it runs in a
# private mount namespace with an overlay on /etc (its config, and the /etc/hosts.deny it
# writes, go to the overlay's upper dir $W/etc-up) and a private /dev whose `log` is the
# socket $4 (none: 1.2's syslog lines go nowhere): nothing on the host is touched. 1.2
# daemonizes: its process is found in the network namespace.
start_old12() { # $1 = netns, $2 = config file, $3 = mode flag, $4 = syslog socket (optional)
  local log=""
  [ -n "${4:-}" ] && log="touch /dev/log; mount --bind '$4' /dev/log"
  mkdir -p "$W/etc-up" "$W/etc-work" "$W/olddev"
  ip netns exec "$1" unshare -m --propagation private sh -c "
    set -e
    mount --rbind /dev '$W/olddev'
    mount -t tmpfs tmpfs /dev
    for n in null zero random urandom; do touch /dev/\$n; mount --bind '$W/olddev'/\$n /dev/\$n; done
    $log
    mount -t overlay overlay -o lowerdir=/etc,upperdir='$W/etc-up',workdir='$W/etc-work' /etc
    mkdir -p /etc/portsentry
    cp '$2' /etc/portsentry/portsentry.conf
    exec '$OLD' $3" </dev/null >/dev/null 2>"$W/old12.start.log"
  DAEMON_PID=""
  for _ in $(seq 100); do
    for p in $(ip netns pids "$1"); do
      [ "$(cat /proc/"$p"/comm 2>/dev/null)" = portsentry ] && DAEMON_PID=$p
    done
    [ -n "$DAEMON_PID" ] && break
    sleep 0.1
  done
  [ -n "$DAEMON_PID" ] || { echo "1.2 did not start:" >&2; cat "$W/old12.start.log" >&2; exit 1; }
}

# The median of the numbers on stdin (blank-separated), empty when there are none.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# The median of a per-run list, or "not run".
m() { local v; v=$(echo "${1:-}" | median); echo "${v:-not run}"; }
# A per-run list without its trailing space.
l() { echo "${1:-}" | sed 's/ *$//'; }

# Replaces (or adds) the section `<!-- $1:begin -->` … `<!-- $1:end -->` of BENCHMARKS.md
# with the contents of file $2.
put_section() { # $1 = section name, $2 = results file
  local bm=$ROOT/BENCHMARKS.md
  [ -f "$bm" ] || printf '# Benchmarks\n' > "$bm"
  python3 - "$bm" "$1" "$2" <<'PY'
import sys
bm, name, res = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(bm).read()
b, e = f"<!-- {name}:begin -->", f"<!-- {name}:end -->\n"
section = b + "\n" + open(res).read() + e
if b in text and e in text:
    text = text[:text.index(b)] + section + text[text.index(e) + len(e):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(bm, "w").write(text)
PY
}
