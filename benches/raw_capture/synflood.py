"""Sends N TCP SYNs with spoofed sources (10.78.0.0/16) to DST, to random ports below 1024
(ADVANCED_EXCLUDE_TCP's 113 and 139 left out), paced at RATE per second. Stays inside the
benchmark's network namespaces: the defender routes 10.78.0.0/16 back to the attacker."""
import random
import socket
import struct
import sys
import time

n, rate, dst = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ports = [p for p in range(1, 1024) if p not in (113, 139)]
dstb = socket.inet_aton(dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rng = random.Random(12345)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF


t0 = time.time()
for i in range(n):
    src = bytes([10, 78, rng.randrange(256), rng.randrange(1, 255)])
    tcp = struct.pack("!HHIIBBHHH", rng.randrange(1024, 65535), rng.choice(ports),
                      rng.getrandbits(32), 0, 5 << 4, 0x02, 1024, 0, 0)
    c = csum(src + dstb + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dstb)
    s.sendto(ip + tcp, (dst, 0))
    if i % 200 == 0:
        ahead = t0 + i / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
print("%.2f" % (time.time() - t0))
