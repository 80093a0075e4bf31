"""Syslog receiver for the benchmark: binds a Unix datagram socket, counts the detection
lines, and rewrites the count file every 0.2 s until killed."""
import os
import socket
import sys
import time

path, count_file, pattern = sys.argv[1], sys.argv[2], sys.argv[3].encode()
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(path)
os.chmod(path, 0o666)
s.settimeout(0.2)
count = 0
last = 0.0
while True:
    try:
        msg = s.recv(8192)
        if pattern in msg:
            count += 1
    except socket.timeout:
        pass
    now = time.time()
    if now - last >= 0.2:
        with open(count_file + ".tmp", "w") as f:
            f.write(str(count))
        os.replace(count_file + ".tmp", count_file)
        last = now
