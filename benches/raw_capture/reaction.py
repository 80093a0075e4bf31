#!/usr/bin/env python3
"""Reaction time of a daemon, for benches/raw_capture.sh: from each probe's send (the
synflood LOG: `<source> <unix µs>`) to the unreachable route for that source appearing in
the defender's table (`ip -ts monitor route` output, local time). Prints
`<p50 ms> <p99 ms> <routes matched> <probes sent>`; a probe whose route never came is left
out of the percentiles and counted by the difference."""
import sys
from datetime import datetime

sent_file, monitor_file = sys.argv[1], sys.argv[2]
sent = {}
for line in open(sent_file):
    src, us = line.split()
    sent.setdefault(src, int(us) / 1e6)
delays = []
for line in open(monitor_file):
    if not line.startswith("[") or "unreachable" not in line or "Deleted" in line:
        continue
    stamp, rest = line[1:].split("] ", 1)
    words = rest.split()
    if len(words) < 2 or words[0] != "unreachable":
        continue
    src = words[1]
    if src in sent:
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        delays.append((at - sent.pop(src)) * 1000)
delays.sort()
def pct(p):
    if not delays:
        return float("nan")
    return delays[min(len(delays) - 1, int(round(p / 100 * (len(delays) - 1))))]
print(f"{pct(50):.2f} {pct(99):.2f} {len(delays)} {len(delays) + len(sent)}")
