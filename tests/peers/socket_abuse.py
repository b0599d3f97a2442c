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
held, refused, with_message = [], 0, 0
def connect():
    # A busy daemon accepts late: a full listen backlog answers EAGAIN at
    # once on a Unix socket, so retry for a while.
    deadline = time.monotonic() + 20
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (BlockingIOError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


for _ in range(n):
    s = connect()
    try:
        s.sendall(b'{"cmd":"stat')
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed already; its error line is still readable
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
    except ConnectionResetError:
        data = b""
    # Closed at once: refused (the error line, or a reset when the
    # daemon closed with our request unread).
    refused += 1
    with_message += b"too many connections" in data
    s.close()
print(json.dumps({"open": len(still), "refused": refused,
                  "refused_with_message": with_message}), flush=True)

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
