"""Test job: a three-level tree whose grandchild holds a listening TCP port.

main -> child -> grandchild (setsid, listening on 127.0.0.1:<port>).
Prints `port <port> pid <grandchild pid>` and `ready <main pid>`.
"""
import os
import signal
import socket

r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        os.write(w, f"port {sock.getsockname()[1]} pid {os.getpid()}\n".encode())
        os.close(w)
        while True:
            signal.pause()
    while True:
        signal.pause()
os.close(w)
with os.fdopen(r) as pipe:
    print(pipe.readline().strip())
print(f"ready {os.getpid()}", flush=True)
while True:
    signal.pause()
