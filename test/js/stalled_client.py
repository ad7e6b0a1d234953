"""A WebSocket client that upgrades, then stops reading.

Its receive buffer is 4 KiB (Node cannot set SO_RCVBUF), so the kernel does
not soak up megabytes on its behalf: the server's own bound is what trips.
Prints "upgraded"; waits for a line on stdin; then reads until the server
hangs up and prints "closed".
Usage: python3 stalled_client.py PORT PATH
"""
import base64
import os
import socket
import sys

port, path = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print("upgraded", flush=True)
sys.stdin.readline()
s.settimeout(10)
try:
    while s.recv(65536):
        pass
    print("closed", flush=True)
except OSError as e:
    print("error", e, flush=True)
