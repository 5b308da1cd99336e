#!/usr/bin/env python3
"""Observe how a natlab NAT really behaves (used by natlab-selftest.sh).

One process does every side of a test: it enters the lab's namespaces with
setns(2) to create its sockets (a socket stays in the namespace it was created
in), so no receiver has to be started and synchronised in another process.

Usage: natlab-probe.py LAB CHECK [ARGS]
  kind              side A: mapping, filtering, allocation (UDP and TCP),
                    reaction to unsolicited inbound, hairpinning
  timeout SECS      side A and B: a binding idle for SECS+1.5 s is gone
  loss              side A: fraction of packets passed, each direction
  punch             A <-> B: UDP hole punch and TCP simultaneous open
  direct            A <-> B: plain routing (both sides "none")
  hops              A -> NAT B: who answers UDP probes with TTL 1, 2 and 3
                    (time exceeded), as low-TTL priming sees it
  block             side A of a cgn-* kind (double NAT): many flows, UDP
                    and TCP: mapping, allocation, every public port inside
                    the CGN's block (BLOCK_A), translated or not; the
                    hops to the server (home NAT, CGN inside, server)
  hairpin           side A (--hairpin): a second socket (UDP, TCP) of host A
                    reaches the first one's mapping through the NAT's public
                    address; the source seen, and the way back
  seqgap N          side A (symmetric-sequential): the public ports of N+1
                    consecutive flows of host A, 0.2 s apart; the gaps
Prints one line of KEY=VALUE pairs.
"""

import contextlib
import ctypes
import errno
import os
import select
import socket
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux value; Python lacks the name
HERE = os.path.dirname(os.path.abspath(__file__))
LIBC = ctypes.CDLL(None, use_errno=True)
ROOT_NS = os.open("/proc/self/ns/net", os.O_RDONLY)


def _setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name):
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(fd)
        yield
    finally:
        _setns(ROOT_NS)
        os.close(fd)


class Lab:
    def __init__(self, name):
        self.name = name
        out = subprocess.run(
            [os.path.join(HERE, "natlab.sh"), "info", "--name", name],
            check=True, capture_output=True, text=True).stdout
        self.info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def __getitem__(self, key):
        return self.info[key]

    def ns(self, node):
        return f"{self.name}-{node}"

    def udp(self, node, ip, port):
        with netns(self.ns(node)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # Room for the bursts of check_loss (root may exceed rmem_max).
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
            s.bind((ip, port))
        return s

    def tcp(self, node, ip, port, listen=False):
        with netns(self.ns(node)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((ip, port))
            if listen:
                s.listen(16)
        return s

    def raw_icmp(self, node):
        with netns(self.ns(node)):
            return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)


def recv_all(sock, wait):
    """Every datagram arriving on sock within `wait` seconds: [(data, src)]."""
    got = []
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            got.append(sock.recvfrom(2048))
        except OSError:  # e.g. ECONNREFUSED queued by an ICMP error
            pass
    return got


def recv_one(sock, wait=1.0):
    """The first datagram arriving within `wait` seconds; TimeoutError if none."""
    got = recv_first(sock, wait)
    if got is None:
        raise TimeoutError("expected datagram did not arrive")
    return got


def recv_first(sock, wait):
    """The first datagram arriving within `wait` seconds, or None."""
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            return sock.recvfrom(2048)
    return None


def connect_all(socks_dests, wait):
    """Non-blocking connect of each (sock, dest) at once: list of ok/refused/timeout/err."""
    res = {}
    for s, d in socks_dests:
        s.setblocking(False)
        rc = s.connect_ex(d)
        if rc not in (0, errno.EINPROGRESS):
            res[s] = "refused" if rc == errno.ECONNREFUSED else errno.errorcode.get(rc, str(rc))
    end = time.monotonic() + wait
    pending = [s for s, _ in socks_dests if s not in res]
    while pending and (left := end - time.monotonic()) > 0:
        _, w, _ = select.select([], pending, [], left)
        for s in w:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            res[s] = "ok" if err == 0 else ("refused" if err == errno.ECONNREFUSED
                                           else errno.errorcode.get(err, str(err)))
            pending.remove(s)
    for s in pending:
        res[s] = "timeout"
    return [res[s] for s, _ in socks_dests]


def classify_mapping(host_ip, seen):
    """seen: public endpoints observed by SRV1:x, SRV2:x, SRV2:x+1 (in that order)."""
    if all(ip == host_ip for ip, _ in seen):
        return "none"
    if seen[0] == seen[1] == seen[2]:
        return "EIM"
    if seen[1] == seen[2]:
        return "ADM"
    return "APDM"


def classify_alloc(mapping, lport, ports):
    if mapping in ("none", "EIM"):
        return "preserve" if all(p == lport for p in ports) else "fixed"
    if mapping == "ADM":
        return "hash"
    steps = [(b - a) % 65536 for a, b in zip(ports, ports[1:])]
    if all(s == 1 for s in steps):
        return "seq+1"
    if len(set(ports)) == len(ports):
        return "random"
    return "?"


def classify_filter(same_ip_other_port, other_ip):
    if same_ip_other_port and other_ip:
        return "EIF"
    if same_ip_other_port:
        return "ADF"
    if not other_ip:
        return "APDF"
    return "?"


def udp_map(lab, lport):
    a, s1, s2 = lab["A"], lab["SRV1"], lab["SRV2"]
    dests = [(s1, 4000), (s2, 4000), (s2, 4001)]
    rx = [lab.udp("srv", ip, port) for ip, port in dests]
    tx = lab.udp("a", a, lport)
    seen = []
    # One destination at a time so the NAT allocates in a known order.
    for dest, r in zip(dests, rx):
        tx.sendto(b"map", dest)
        seen.append(recv_one(r)[1])
    for s in rx + [tx]:
        s.close()
    mapping = classify_mapping(a, seen)
    return mapping, classify_alloc(mapping, lport, [p for _, p in seen]), seen


def tcp_map(lab, lport):
    a, s1, s2 = lab["A"], lab["SRV1"], lab["SRV2"]
    dests = [(s1, 4000), (s2, 4000), (s2, 4001)]
    listeners = [lab.tcp("srv", ip, port, listen=True) for ip, port in dests]
    conns, seen = [], []
    for dest, lst in zip(dests, listeners):
        c = lab.tcp("a", a, lport)
        c.settimeout(2.0)
        c.connect(dest)
        conns.append(c)
        lst.settimeout(2.0)
        peer, addr = lst.accept()
        peer.close()
        seen.append(addr)
    for s in conns + listeners:
        s.close()
    mapping = classify_mapping(a, seen)
    return mapping, classify_alloc(mapping, lport, [p for _, p in seen]), seen


def udp_filter(lab, lport):
    """A talks to SRV1:5000; who else can reach A's mapping?  Also hairpinning."""
    a, s1, s2 = lab["A"], lab["SRV1"], lab["SRV2"]
    prim = lab.udp("srv", s1, 5000)
    same_ip = lab.udp("srv", s1, 5001)
    other_ip = lab.udp("srv", s2, 5000)
    tx = lab.udp("a", a, lport)
    tx.sendto(b"hello", (s1, 5000))
    _, mapped = recv_one(prim)
    same_ip.sendto(b"port", mapped)
    other_ip.sendto(b"addr", mapped)
    time.sleep(0.05)  # let the unsolicited ones go first
    prim.sendto(b"ctl", mapped)
    got = {data for data, _ in recv_all(tx, 0.4)}
    if b"ctl" not in got:
        raise RuntimeError("udp-filter: reply from the contacted endpoint did not arrive")
    filt = classify_filter(b"port" in got, b"addr" in got)

    hairpin = "-"
    if mapped[0] != a:
        # Another socket on A sends to A's own public endpoint.
        other = lab.udp("a", a, lport + 1)
        other.sendto(b"hairpin", mapped)
        hairpin = "yes" if recv_all(tx, 0.2) else "no"
        other.close()
    for s in (prim, same_ip, other_ip, tx):
        s.close()
    return filt, hairpin


def tcp_filter(lab, lport):
    """A connects to SRV1:5000 and also listens on its port: who else gets in?"""
    a, s1, s2 = lab["A"], lab["SRV1"], lab["SRV2"]
    prim = lab.tcp("srv", s1, 5000, listen=True)
    c = lab.tcp("a", a, lport)
    c.settimeout(2.0)
    c.connect((s1, 5000))
    prim.settimeout(2.0)
    peer, mapped = prim.accept()
    listener = lab.tcp("a", a, lport, listen=True)
    same_ip = lab.tcp("srv", s1, 5001)
    other_ip = lab.tcp("srv", s2, 5000)
    res = connect_all([(same_ip, mapped), (other_ip, mapped)], 0.5)
    for s in (peer, c, listener, prim, same_ip, other_ip):
        s.close()
    return classify_filter(res[0] == "ok", res[1] == "ok"), res


def icmp_unreach_protos(raw, wait):
    """Protocols (6/17) of ICMP port-unreachables arriving on raw within wait."""
    protos = set()
    for data, _ in recv_all(raw, wait):
        ihl = (data[0] & 0x0F) * 4
        icmp = data[ihl:]
        if len(icmp) >= 8 + 20 and icmp[0] == 3 and icmp[1] == 3:
            protos.add(icmp[8 + 9])  # protocol field of the quoted IP header
    return protos


def unsolicited(lab, lport):
    """srv sends UDP and a TCP SYN to port lport of NAT A, which has no mapping.

    Returns (reaction, port_after): what came back, and whether A's next
    flow from lport to that same srv endpoint still gets public port lport.
    (A NAT that let the unsolicited packet through to its own stack would
    hold a conntrack entry that pushes A's flow to another port.)"""
    a, s1, nat = lab["A"], lab["SRV1"], lab["NAT_A"]
    raw = lab.raw_icmp("srv")
    u = lab.udp("srv", s1, 5100)
    u.sendto(b"unsolicited", (nat, lport))
    t = lab.tcp("srv", s1, 5101)
    tcp_res = connect_all([(t, (nat, lport))], 0.5)[0]
    protos = icmp_unreach_protos(raw, 0.1)
    t.close()
    raw.close()
    udp_icmp, tcp_icmp = 17 in protos, 6 in protos
    if not udp_icmp and tcp_res == "timeout":
        reaction = "drop"
    elif not udp_icmp and tcp_res == "refused" and not tcp_icmp:
        reaction = "tcp-rst"
    elif udp_icmp and tcp_res == "refused" and tcp_icmp:
        reaction = "icmp"
    elif udp_icmp and tcp_res == "refused":
        reaction = "stack"  # a host without firewall: ICMP for UDP, RST for TCP
    else:
        reaction = f"?(udp_icmp={udp_icmp},tcp={tcp_res},tcp_icmp={tcp_icmp})"

    ua = lab.udp("a", a, lport)
    ua.sendto(b"after", (s1, 5100))
    _, useen = recv_one(u)
    lst = lab.tcp("srv", s1, 5101, listen=True)
    ta = lab.tcp("a", a, lport)
    ta.settimeout(2.0)
    ta.connect((s1, 5101))
    lst.settimeout(2.0)
    peer, tseen = lst.accept()
    for s in (u, ua, lst, ta, peer):
        s.close()
    kept = "preserve" if useen[1] == lport and tseen[1] == lport else "other"
    return reaction, kept


def check_kind(lab):
    um, ua, useen = udp_map(lab, 41000)
    tm, ta, tseen = tcp_map(lab, 42000)
    uf, hairpin = udp_filter(lab, 41010)
    tf, tres = tcp_filter(lab, 42010)
    un, kept = unsolicited(lab, 43500)
    print(f"udp_map={um} udp_alloc={ua} tcp_map={tm} tcp_alloc={ta} "
          f"udp_filter={uf} tcp_filter={tf} unsolicited={un} after_unsolicited={kept} hairpin={hairpin} "
          f"udp_seen={','.join(f'{i}:{p}' for i, p in useen)} "
          f"tcp_seen={','.join(f'{i}:{p}' for i, p in tseen)}")


def check_timeout(lab, secs):
    """A binding (conntrack and, for cone kinds, the DNAT map) lives SECS idle.

    Each side opens a binding to SRV1, refreshes it, then stays idle: a reply
    shortly before SECS must get in, one SECS+1.5 s after the last outbound
    packet must not.  Both sides are checked at the same time."""
    sides = [s for s in ("a", "b") if f"NAT_{s.upper()}" in lab.info]
    srv = lab.udp("srv", lab["SRV1"], 4500)
    hosts, mapped = {}, {}
    for side in sides:
        hosts[side] = lab.udp(side, lab[side.upper()], 43000)
        hosts[side].sendto(side.encode(), (lab["SRV1"], 4500))
        data, src = recv_one(srv)
        mapped[data.decode()] = src
    time.sleep(max(secs - 1.0, 0.2))
    early = {}
    for side in sides:
        srv.sendto(b"early", mapped[side])
    for side in sides:
        early[side] = bool(recv_all(hosts[side], 0.3))
        hosts[side].sendto(b"keep", (lab["SRV1"], 4500))  # refresh, then idle
    recv_all(srv, 0.2)
    time.sleep(secs + 1.5)
    out = []
    for side in sides:
        srv.sendto(b"late", mapped[side])
    for side in sides:
        late = bool(recv_all(hosts[side], 0.3))
        out.append(f"{side}_alive={'yes' if early[side] else 'no'} "
                   f"{side}_after_idle={'yes' if late else 'no'}")
        hosts[side].close()
    srv.close()
    print(" ".join(out))


def check_loss(lab, n=400):
    srv = lab.udp("srv", lab["SRV1"], 4600)
    a = lab.udp("a", lab["A"], 43100)
    mapped = None
    for _ in range(50):  # the opening packet itself may be lost
        a.sendto(b"open", (lab["SRV1"], 4600))
        got = recv_all(srv, 0.05)
        if got:
            mapped = got[0][1]
            break
    if mapped is None:
        raise RuntimeError("loss: nothing got through")
    recv_all(srv, 0.1)
    for i in range(n):
        a.sendto(b"up%d" % i, (lab["SRV1"], 4600))
        if i % 20 == 19:
            time.sleep(0.002)  # stay clear of the per-CPU backlog limit
    up = len(recv_all(srv, 0.5))
    for i in range(n):
        srv.sendto(b"down%d" % i, mapped)
        if i % 20 == 19:
            time.sleep(0.002)
    down = len(recv_all(a, 0.5))
    print(f"sent={n} up_passed={up} down_passed={down}")


def check_punch(lab):
    a, b = lab["A"], lab["B"]
    nat_a, nat_b = lab["NAT_A"], lab["NAT_B"]
    # UDP: both NATs preserve ports, so each side knows the other's endpoint.
    sa = lab.udp("a", a, 44000)
    sb = lab.udp("b", b, 44000)
    sa.sendto(b"a1", (nat_b, 44000))      # opens NAT A, dropped by NAT B
    time.sleep(0.05)
    sb.sendto(b"b1", (nat_a, 44000))      # opens NAT B, passes NAT A
    got_a = [d for d, _ in recv_all(sa, 0.3)]
    sa.sendto(b"a2", (nat_b, 44000))
    got_b = [d for d, _ in recv_all(sb, 0.3)]
    udp = "ok" if got_a == [b"b1"] and got_b == [b"a2"] else f"fail(a={got_a},b={got_b})"
    sa.close()
    sb.close()
    # TCP simultaneous open: A's SYN dies at NAT B, B's SYN crosses into A.
    ta = lab.tcp("a", a, 44001)
    tb = lab.tcp("b", b, 44001)
    ta.setblocking(False)
    tb.setblocking(False)
    ta.connect_ex((nat_b, 44001))
    time.sleep(0.1)
    tb.connect_ex((nat_a, 44001))
    end = time.monotonic() + 3.0
    state = {}
    while len(state) < 2 and time.monotonic() < end:
        _, w, _ = select.select([], [s for s in (ta, tb) if s not in state], [], 0.1)
        for s in w:
            state[s] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    tcp = "ok" if state.get(ta) == 0 and state.get(tb) == 0 else \
        f"fail(a={state.get(ta)},b={state.get(tb)})"
    if tcp == "ok":
        ta.setblocking(True)
        tb.setblocking(True)
        ta.sendall(b"x")
        tb.settimeout(1.0)
        if tb.recv(1) != b"x":
            tcp = "fail(data)"
    ta.close()
    tb.close()
    print(f"udp_punch={udp} tcp_simultaneous_open={tcp}")


def check_direct(lab):
    sa = lab.udp("a", lab["A"], 44100)
    sb = lab.udp("b", lab["B"], 44100)
    sa.sendto(b"direct", (lab["B"], 44100))
    got = recv_first(sb, 1.0)
    ok = got is not None and got[1] == (lab["A"], 44100)
    print(f"direct={'ok' if ok else 'fail'}")
    sa.close()
    sb.close()


IP_RECVERR = 11
SO_EE_ORIGIN_ICMP = 2


def check_hops(lab):
    """One UDP probe per TTL from host A toward NAT B's address, each TTL sent twice (routers
    rate-limit ICMP); the ICMP errors come back on the socket's error queue (ip(7))."""
    seen = hops(lab, lab["NAT_B"])
    print(" ".join(f"ttl{t}={seen.get(t, 'silent')}" for t in (1, 2, 3)))


def hops(lab, dest):
    """{ttl: who answered} for TTLs 1-3 of UDP probes from host A to dest."""
    s = lab.udp("a", lab["A"], 0)
    s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    s.setblocking(False)
    seen = {}
    for _ in range(2):
        for ttl in (1, 2, 3):
            s.setsockopt(socket.SOL_IP, socket.IP_TTL, ttl)
            for _attempt in range(3):
                try:
                    s.sendto(bytes([ttl]), (dest, 33434))
                    break
                except OSError:
                    pass  # an earlier probe's error reported by this send
        deadline = time.time() + 0.3
        while time.time() < deadline:
            try:
                data, anc, _flags, _addr = s.recvmsg(64, 512, socket.MSG_ERRQUEUE)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            for _lvl, _typ, d in anc:
                origin, icmp_type = d[4], d[5]
                if origin == SO_EE_ORIGIN_ICMP and data:
                    who = socket.inet_ntoa(d[20:24]) if icmp_type == 11 else "reached"
                    seen.setdefault(data[0], who)
    s.close()
    return seen


def block_alloc(ports, lo, size):
    """How a CGN allocated the public ports of consecutive new flows inside its block.

    seq+1: each port one past the one before, wrapping inside the block.  random: not
    that, and the ports spread over at least half the block (n >= 20 uniform draws
    fall within half of it with probability < n / 2^(n-1))."""
    steps = [((b - lo) - (a - lo)) % size for a, b in zip(ports, ports[1:])]
    if all(st == 1 for st in steps):
        return "seq+1"
    if max(ports) - min(ports) >= size // 2 and len(set(ports)) >= len(ports) // 2:
        return "random"
    return "?"


def block_mapping(lport, ports_one_source, other_sources):
    """ports_one_source: public ports of one local port toward many destinations;
    other_sources: [(local port, public port)] toward one destination."""
    if len(set(ports_one_source)) == 1:
        translated = all(p != lp for lp, p in [(lport, ports_one_source[0])] + other_sources)
        distinct = len({p for _, p in other_sources}) == len(other_sources)
        return "EIM", ("translated" if translated and distinct else "?")
    return "APDM", None


def check_block(lab, n_udp=24, n_tcp=20):
    a, s1, s2 = lab["A"], lab["SRV1"], lab["SRV2"]
    lo, hi = (int(x) for x in lab["BLOCK_A"].split("-"))
    size = hi - lo + 1
    out = {}

    # UDP: one local port to n_udp destinations, one at a time (the NAT
    # allocates in a known order), then 6 more local ports to one destination.
    dests = [((s1, s2)[i % 2], 6000 + i) for i in range(n_udp)]
    rx = [lab.udp("srv", ip, port) for ip, port in dests]
    tx = lab.udp("a", a, 41100)
    ports = []
    for dest, r in zip(dests, rx):
        tx.sendto(b"blk", dest)
        ports.append(recv_one(r)[1][1])
    others = []
    for i in range(6):
        t = lab.udp("a", a, 41101 + i)
        t.sendto(b"src", dests[0])
        others.append((41101 + i, recv_one(rx[0])[1][1]))
        t.close()
    for s in rx + [tx]:
        s.close()
    mapping, eim_alloc = block_mapping(41100, ports, others)
    out["udp_map"] = mapping
    out["udp_alloc"] = eim_alloc or block_alloc(ports, lo, size)
    every = ports + [p for _, p in others]
    out["udp_in_block"] = "yes" if all(lo <= p <= hi for p in every) else "no"
    out["udp_ports"] = ",".join(map(str, every))

    # TCP: the same with connections (one local port, SO_REUSEADDR/PORT).
    dests = [((s1, s2)[i % 2], 6100 + i) for i in range(n_tcp)]
    listeners = [lab.tcp("srv", ip, port, listen=True) for ip, port in dests]
    conns, ports = [], []

    def connect_from(lport, dest, lst):
        c = lab.tcp("a", a, lport)
        c.settimeout(2.0)
        c.connect(dest)
        conns.append(c)
        lst.settimeout(2.0)
        peer, addr = lst.accept()
        peer.close()
        return addr[1]

    for dest, lst in zip(dests, listeners):
        ports.append(connect_from(42100, dest, lst))
    others = [(42101 + i, connect_from(42101 + i, dests[0], listeners[0])) for i in range(6)]
    for s in conns + listeners:
        s.close()
    mapping, eim_alloc = block_mapping(42100, ports, others)
    out["tcp_map"] = mapping
    out["tcp_alloc"] = eim_alloc or block_alloc(ports, lo, size)
    every = ports + [p for _, p in others]
    out["tcp_in_block"] = "yes" if all(lo <= p <= hi for p in every) else "no"
    out["tcp_ports"] = ",".join(map(str, every))

    # The double NAT on the way: home NAT (LAN side), CGN (its 100.64 side), server.
    seen = hops(lab, s1)
    out["hops"] = ",".join(seen.get(t, "silent") for t in (1, 2, 3))
    print(" ".join(f"{k}={v}" for k, v in out.items()))


def hairpin_source(src, sender_mapped, nat, host):
    """What a hairpinned packet's source says: the sender's own mapping (RFC 4787
    REQ-9b), another public port of the NAT (a new mapping: APDM), or untranslated."""
    if src == sender_mapped:
        return "mapped"
    if src[0] == nat:
        return "nat-other"
    if src[0] == host:
        return "internal"
    return f"?{src[0]}:{src[1]}"


def check_hairpin(lab):
    """X and Y, two sockets of host A, each first talk to SRV1 (so each has a
    mapping the server sees); then Y sends to X's mapping.  With hairpinning X
    gets it from Y's mapping (EIM) or from another public port of the NAT,
    and X's answer to that source reaches Y from X's mapping."""
    a, s1, nat = lab["A"], lab["SRV1"], lab["NAT_A"]
    out = {}
    srv = lab.udp("srv", s1, 4700)
    x = lab.udp("a", a, 45000)
    y = lab.udp("a", a, 45001)
    x.sendto(b"x", (s1, 4700))
    mx = recv_one(srv)[1]
    y.sendto(b"y", (s1, 4700))
    my = recv_one(srv)[1]
    y.sendto(b"hairpin", mx)
    got = recv_first(x, 1.0)
    out["udp_hairpin"] = "yes" if got and got[0] == b"hairpin" else "no"
    out["udp_src"] = hairpin_source(got[1], my, nat, a) if got else "-"
    back = "-"
    if got:
        x.sendto(b"back", got[1])
        r = recv_first(y, 1.0)
        back = "yes" if r == (b"back", mx) else ("no" if r is None else f"?{r[1][0]}:{r[1][1]}")
    out["udp_back"] = back
    # Nothing else of the NAT answers: a public port nobody holds stays dead.
    y.sendto(b"nobody", (nat, 45999))
    out["udp_unmapped"] = "silent" if not recv_all(x, 0.2) + recv_all(y, 0.01) else "answered"
    if "BG_A" in lab.info:
        # Another host of the LAN (the background flows' namespace) does the
        # same from X's local port: its mapping to SRV1 cannot keep that port
        # (X's mapping holds it toward the same endpoint), so a source equal to
        # Z's mapping shows the NAT reusing it (REQ-9b), not preserving the port.
        z = lab.udp("bga", lab["BG_A"], 45000)
        z.sendto(b"z", (s1, 4700))
        mz = recv_one(srv)[1]
        z.sendto(b"lan-hairpin", mx)
        got = recv_first(x, 1.0)
        out["lan_hairpin"] = "yes" if got and got[0] == b"lan-hairpin" else "no"
        out["lan_src"] = hairpin_source(got[1], mz, nat, lab["BG_A"]) if got else "-"
        out["lan_translated"] = "yes" if mz[1] != 45000 else "no"
        z.close()
    for s in (srv, x, y):
        s.close()

    # TCP: X connects to SRV1 and listens on its port; Y connects to SRV1, then
    # from the same port to X's mapping.
    lst = lab.tcp("srv", s1, 4701, listen=True)
    lst.settimeout(2.0)
    conns = []

    def via_srv(lport):
        c = lab.tcp("a", a, lport)
        c.settimeout(2.0)
        c.connect((s1, 4701))
        conns.append(c)
        peer, addr = lst.accept()
        conns.append(peer)
        return addr

    mx = via_srv(45010)
    xl = lab.tcp("a", a, 45010, listen=True)
    xl.settimeout(1.0)
    my = via_srv(45011)
    yc = lab.tcp("a", a, 45011)
    res = connect_all([(yc, mx)], 1.0)[0]
    out["tcp_hairpin"] = "yes" if res == "ok" else "no"
    out["tcp_src"] = "-"
    if res == "ok":
        try:
            peer, src = xl.accept()
            conns.append(peer)
            out["tcp_src"] = hairpin_source(src, my, nat, a)
        except OSError:
            out["tcp_src"] = "not-accepted"
    for s in conns + [lst, xl, yc]:
        s.close()
    out["tcp_seen"] = f"x={mx[0]}:{mx[1]},y={my[0]}:{my[1]}"
    print(" ".join(f"{k}={v}" for k, v in out.items()))


def check_seqgap(lab, n):
    """Public ports of n+1 consecutive new flows of host A, 0.2 s apart, and
    the gaps between them (modulo the NAT's range)."""
    a, s1 = lab["A"], lab["SRV1"]
    srv = lab.udp("srv", s1, 4800)
    ports = []
    for i in range(n + 1):
        t = lab.udp("a", a, 45100 + i)
        t.sendto(b"seq", (s1, 4800))
        ports.append(recv_one(srv)[1][1])
        t.close()
        time.sleep(0.2)
    srv.close()
    gaps = [(b - a) % 1000 for a, b in zip(ports, ports[1:])]
    print(f"gaps={','.join(map(str, gaps))} ports={','.join(map(str, ports))}")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    lab = Lab(argv[1])
    check = argv[2]
    if check == "kind":
        check_kind(lab)
    elif check == "timeout":
        check_timeout(lab, float(argv[3]))
    elif check == "loss":
        check_loss(lab)
    elif check == "punch":
        check_punch(lab)
    elif check == "direct":
        check_direct(lab)
    elif check == "hops":
        check_hops(lab)
    elif check == "block":
        check_block(lab)
    elif check == "hairpin":
        check_hairpin(lab)
    elif check == "seqgap":
        check_seqgap(lab, int(argv[3]))
    else:
        print(f"unknown check {check!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
