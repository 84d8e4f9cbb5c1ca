"""Test job: send each argument as one sd_notify datagram to $NOTIFY_SOCKET, then wait.

Special arguments: @oversized (5000 bytes), @nul (a NUL byte), @latin1 (not
UTF-8), @stay (send nothing; wait for a signal instead of EOF).  Then prints
NOTIFY_SOCKET, WATCHDOG_PID and WATCHDOG_USEC as it got them (VAR=value
lines) and waits for EOF on stdin.
usage: notify_send.py MESSAGE...
"""
import os
import signal
import socket
import sys

SPECIAL = {"@oversized": b"STATUS=" + b"x" * 5000, "@nul": b"STATUS=a\0b", "@latin1": b"STATUS=\xe9t\xe9"}

address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for arg in sys.argv[1:]:
    if arg == "@stay":
        continue
    sock.sendto(SPECIAL.get(arg, arg.encode()), address)
for name in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC"):
    if name in os.environ:
        print(f"{name}={os.environ[name]}", flush=True)
if "@stay" in sys.argv:
    while True:
        signal.pause()
sys.stdin.read()
