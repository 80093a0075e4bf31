"""Sends N MiB to HOST:PORT over one TCP connection and prints the seconds it took."""
import socket
import sys
import time

host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = b"\x5a" * (1 << 20)
c = socket.create_connection((host, port), timeout=30)
t0 = time.time()
for _ in range(mib):
    c.sendall(block)
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close()
print("%.2f" % (time.time() - t0))
