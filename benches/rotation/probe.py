"""The rotation of benches/rotation.sh, as the scanner sees it (run in the attacker namespace).

Usage: probe.py DST4 DST6 GAP_MS WAIT_MS PORTS SRC...
From each SRC in turn, one non-blocking TCP connect to DST4 or DST6 (by the source's family)
on the next of PORTS (comma-separated, cycled), GAP_MS apart. Each probe is judged WAIT_MS
after it left: answered (the connect completed or was refused: a SYN-ACK or an RST came
back), silent (still pending: the source is blocked), or other (any other error).
Prints one line: `answers=N silent=N other=N`. With PROBE_SENT_FILE set, the wall-clock time
of the first connect (ns since the epoch) is written there, so that a caller can time what
follows from the probe itself rather than from the interpreter's start.
The same measure as tests/e2e/prefix.rs's `rotate`.
"""
import collections, errno, os, select, socket, sys, time

dst4, dst6 = sys.argv[1], sys.argv[2]
gap, wait = float(sys.argv[3]) / 1000, float(sys.argv[4]) / 1000
ports = [int(p) for p in sys.argv[5].split(",")]
sources = sys.argv[6:]
counts = collections.Counter(answers=0, silent=0, other=0)


def judge(sock):
    p = select.poll()
    p.register(sock, select.POLLOUT)
    if not p.poll(0):
        counts["silent"] += 1
    else:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        counts["answers" if err in (0, errno.ECONNREFUSED) else "other"] += 1
    sock.close()


flying = collections.deque()
for i, src in enumerate(sources):
    v6 = ":" in src
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((src, 0))
    err = s.connect_ex((dst6 if v6 else dst4, ports[i % len(ports)]))
    if err not in (0, errno.EINPROGRESS):
        sys.exit(f"connect from {src}: {errno.errorcode.get(err, err)}")
    if i == 0 and os.environ.get("PROBE_SENT_FILE"):
        with open(os.environ["PROBE_SENT_FILE"], "w") as f:
            f.write(str(time.time_ns()))
    flying.append((time.monotonic(), s))
    while flying and time.monotonic() - flying[0][0] >= wait:
        judge(flying.popleft()[1])
    time.sleep(gap)
while flying:
    sent, s = flying.popleft()
    time.sleep(max(0.0, wait - (time.monotonic() - sent)))
    judge(s)
print(" ".join(f"{k}={counts[k]}" for k in ("answers", "silent", "other")))
