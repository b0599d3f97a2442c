#!/usr/bin/env python3
"""Abuse the status socket: open N connections that send a request without
its newline and never read. Prints one JSON line when they are open
(`{"open": n, "refused": r}`), then waits for the daemon to close them and
prints `{"closed": c, "still_open": s, "seconds": t}`.

usage: socket_abuse.py SOCKET N WAIT_S
"""
import json
import select
import socket
import sys
import time

path, n, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held, refused = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b'{"cmd":"stat')
    s.setblocking(False)
    held.append(s)
time.sleep(0.5)
still = []
for s in held:
    try:
        data = s.recv(4096)
    except BlockingIOError:
        still.append(s)
        continue
    if b"too many connections" in data:
        refused += 1
    s.close()
print(json.dumps({"open": len(still), "refused": refused}), flush=True)

start = time.monotonic()
closed = 0
while still and time.monotonic() - start < wait_s:
    readable, _, _ = select.select(still, [], [], 0.2)
    for s in readable:
        try:
            data = s.recv(4096)
        except (ConnectionResetError, BlockingIOError):
            data = b""
        if not data:
            closed += 1
            still.remove(s)
            s.close()
print(json.dumps({"closed": closed, "still_open": len(still),
                  "seconds": round(time.monotonic() - start, 2)}), flush=True)
