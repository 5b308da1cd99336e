#!/usr/bin/env python3
"""Background flows for natlab: other subscribers behind the same NAT.

Opens RATE new UDP flows per second from SRC to DST, one datagram each.
Every flow has a 5-tuple the NAT has not seen for a long time, so the NAT
allocates a new mapping for it: a sequential NAT's counter (natlab's
symmetric-sequential, cgn-block-sequential) moves by one per flow between a
host's own flows, as it does on a NAT shared with other users.  Flow i goes
from source port 10000 + i mod 50000 to destination port 1024 + (i div
50000) mod 64000: 50000 consecutive flows never repeat a tuple, which outlasts
conntrack's 30 s for unreplied UDP up to the highest RATE (1000/s).

natlab.sh runs it in the lab's namespace LAB-bga (LAB-bgb) and sends to the
server namespace's discard address (dropped there, nothing comes back).  The
schedule is a fixed rate from the start: a late send is made up for at once
unless more than a second behind (a stalled machine), when the schedule
restarts from now rather than bursting.

It writes its pid file once its first flow is sent and removes it on exit.
It exits on SIGTERM/SIGINT/SIGHUP and when its own namespace is deleted
(/run/netns/NS gone or no longer this process's namespace).  At exit it
prints how many flows it opened to stderr (natlab.sh's log).

Usage: natlab-bgflows.py --pidfile FILE --netns NS --src IP --dst IP --rate N
"""

import argparse
import os
import signal
import socket
import sys
import time

WATCH_INTERVAL = 0.5  # seconds between checks that the namespace still exists
SPORT_BASE, SPORT_COUNT = 10000, 50000
DPORT_BASE, DPORT_COUNT = 1024, 64000


def netns_alive(name):
    """Our namespace is still the one /run/netns/NAME names."""
    try:
        named = os.stat(f"/run/netns/{name}")
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def flow_ports(i):
    """Source and destination port of flow i."""
    return (SPORT_BASE + i % SPORT_COUNT,
            DPORT_BASE + (i // SPORT_COUNT) % DPORT_COUNT)


def send_flow(src, dst, i):
    sport, dport = flow_ports(i)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, sport))
        s.sendto(b"natlab background flow", (dst, dport))
        return True
    except OSError:
        return False  # e.g. a full neighbour queue while ARP resolves: that flow only
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--netns", required=True, help="name of the namespace this runs in")
    ap.add_argument("--src", required=True, help="address to send from")
    ap.add_argument("--dst", required=True, help="discard address to send to")
    ap.add_argument("--rate", type=int, required=True, help="new flows per second (1-1000)")
    args = ap.parse_args()
    if not 1 <= args.rate <= 1000:
        ap.error("--rate must be 1-1000")

    stop = False

    def on_signal(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    interval = 1.0 / args.rate
    sent = failed = i = 0
    start = time.monotonic()
    next_watch = start + WATCH_INTERVAL
    wrote_pid = False
    try:
        while not stop:
            if send_flow(args.src, args.dst, i):
                sent += 1
            else:
                failed += 1
            i += 1
            if not wrote_pid:
                tmp = f"{args.pidfile}.tmp{os.getpid()}"
                with open(tmp, "w") as f:
                    f.write(f"{os.getpid()}\n")
                os.rename(tmp, args.pidfile)  # appears complete or not at all
                wrote_pid = True
            now = time.monotonic()
            if now >= next_watch:
                if not netns_alive(args.netns):
                    break
                next_watch = now + WATCH_INTERVAL
            due = start + i * interval
            if due < now - 1.0:
                start = now - i * interval  # restart the schedule from now
                due = now
            if due > now:
                time.sleep(due - now)
    finally:
        if wrote_pid:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
        print(f"natlab-bgflows: exit, {sent} flows opened, {failed} failed", file=sys.stderr)


if __name__ == "__main__":
    main()
