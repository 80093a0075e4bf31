"""A TCP service that reads and discards everything (the 'real service' of scenario a)."""
import socket
import sys

srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(4)
while True:
    c, _ = srv.accept()
    while c.recv_into(bytearray(1 << 20)):
        pass
    c.close()
