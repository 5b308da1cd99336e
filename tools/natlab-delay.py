#!/usr/bin/env python3
"""A userspace delay element for natlab (the kernel here has no netem).

Bridges two interfaces of the network namespace it runs in: every frame read
from one (AF_PACKET) is sent out of the other after DELAY ms, in both
directions, optionally +- a uniform jitter.  Without --reorder a frame never
leaves before the previous frame of the same direction (jitter then only
stretches gaps, as on a real path with one queue).  At most --limit frames
wait at a time; more are dropped (tail drop), so memory stays bounded.

It writes its pid file once its sockets are ready and removes it on exit.  It
exits on SIGTERM/SIGINT, when one of its interfaces disappears (a veth pair
dies with either end's namespace) and when its own namespace is deleted
(/run/netns/NS gone or no longer this process's namespace).

Usage: natlab-delay.py --pidfile FILE --netns NS [--reorder] [--limit N]
                       [--seed S] IF1 IF2 DELAY_MS [JITTER_MS]

The senders into the path must have TX checksum offload off (ethtool -K IF
tx off): frames of a veth carry unfinished UDP/TCP checksums otherwise, which
the receiver behind the element drops silently.  natlab.sh does that.
"""

import argparse
import errno
import heapq
import os
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # linux/if_packet.h: a frame this host sent (ours too)
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_RCVBUFFORCE = 33
# Large enough for any frame a veth can hand over (GSO frames included, should
# offloads be on).
FRAME_MAX = 65536 + 64
# How often the namespace and the interfaces are checked (seconds).
WATCH_INTERVAL = 0.5


def open_port(ifname):
    """A raw socket bound to IFNAME, with IFNAME in promiscuous mode."""
    # Protocol 0 at creation: nothing is queued until bind() names the
    # interface, so no frame of another interface slips in.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, ETH_P_ALL))
    index = socket.if_nametoindex(ifname)
    # struct packet_mreq {int ifindex; u16 type; u16 alen; u8 address[8];}
    mreq = index.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder) + bytes(10)
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    return s


def netns_alive(name):
    """Our namespace is still the one /run/netns/NAME names."""
    try:
        named = os.stat(f"/run/netns/{name}")
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def interfaces_alive(names):
    try:
        for n in names:
            socket.if_nametoindex(n)
    except OSError:
        return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--netns", required=True, help="name of the namespace this runs in")
    ap.add_argument("--reorder", action="store_true",
                    help="let jitter reorder frames of one direction")
    ap.add_argument("--limit", type=int, default=4096,
                    help="frames waiting at most (both directions); more are dropped")
    ap.add_argument("--seed", type=int, default=None, help="seed of the jitter")
    ap.add_argument("if1")
    ap.add_argument("if2")
    ap.add_argument("delay_ms", type=float)
    ap.add_argument("jitter_ms", type=float, nargs="?", default=0.0)
    args = ap.parse_args()
    if args.delay_ms < 0 or args.jitter_ms < 0 or args.jitter_ms > args.delay_ms:
        ap.error("need 0 <= JITTER_MS <= DELAY_MS")
    if args.limit < 1:
        ap.error("--limit must be positive")

    delay = args.delay_ms / 1000.0
    jitter = args.jitter_ms / 1000.0
    rng = random.Random(args.seed)

    ports = [open_port(args.if1), open_port(args.if2)]
    # fd -> (direction index, socket to send out of)
    route = {ports[0].fileno(): (0, ports[1]), ports[1].fileno(): (1, ports[0])}

    stop = False

    def on_signal(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = f"{args.pidfile}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(tmp, args.pidfile)  # appears complete or not at all

    heap = []          # (due, seq, out socket, frame): the one timer heap
    seq = 0            # tie breaker: equal due times leave in arrival order
    last_due = [0.0, 0.0]  # per direction, for the no-reordering rule
    dropped = sent = 0
    next_watch = time.monotonic() + WATCH_INTERVAL
    poller = select.poll()
    for p in ports:
        poller.register(p.fileno(), select.POLLIN)

    try:
        while not stop:
            now = time.monotonic()
            if now >= next_watch:
                if not (netns_alive(args.netns) and interfaces_alive([args.if1, args.if2])):
                    break
                next_watch = now + WATCH_INTERVAL
            wake = next_watch
            if heap:
                wake = min(wake, heap[0][0])
            timeout_ms = max(0.0, (wake - now) * 1000.0)
            try:
                events = poller.poll(timeout_ms)
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd, ev in events:
                if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    stop = True  # the interface went away
                    continue
                direction, out = route[fd]
                sock = ports[direction]
                # Drain what is queued, bounded so that the other direction
                # and due frames are not starved.
                for _ in range(256):
                    try:
                        frame, addr = sock.recvfrom(FRAME_MAX)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                            stop = True
                            break
                        raise
                    if addr[2] == PACKET_OUTGOING:
                        continue  # our own send out of this interface
                    if len(heap) >= args.limit:
                        dropped += 1
                        continue
                    due = now + delay
                    if jitter:
                        due += rng.uniform(-jitter, jitter)
                    if not args.reorder:
                        due = max(due, last_due[direction])
                        last_due[direction] = due
                    heapq.heappush(heap, (due, seq, out, frame))
                    seq += 1
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, out, frame = heapq.heappop(heap)
                try:
                    out.send(frame)
                    sent += 1
                except OSError as e:
                    # A full device queue or an oversize frame loses this
                    # frame only, as a real link would.
                    if e.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                        stop = True
                        break
                    dropped += 1
    finally:
        try:
            os.unlink(args.pidfile)
        except OSError:
            pass
        print(f"natlab-delay: exit, {sent} frames sent, {dropped} dropped, {len(heap)} left",
              file=sys.stderr)


if __name__ == "__main__":
    main()
