#!/usr/bin/env python3
"""Writes the small seed corpus under corpus_seed/<target>/. Independent of the Rust encoder
(struct, zlib.crc32, hmac), so the seeds double as a cross-check of its wire format.
Run from anywhere: python3 fuzz/make_seeds.py"""

import hashlib
import hmac
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
COOKIE = 0x2112A442
TID = bytes(range(1, 13))


def attr(typ, value):
    pad = (-len(value)) % 4
    return struct.pack(">HH", typ, len(value)) + value + b"\0" * pad


def header(mtype, body_len, tid16):
    return struct.pack(">HH", mtype, body_len) + tid16


def message(mtype, attrs, key=None, sha256_key=None, fingerprint=False, tid16=None):
    tid16 = tid16 or struct.pack(">I", COOKIE) + TID
    body = b"".join(attrs)
    if key is not None:
        prefix = header(mtype, len(body) + 24, tid16) + body
        body += attr(0x0008, hmac.new(key, prefix, hashlib.sha1).digest())
    if sha256_key is not None:
        prefix = header(mtype, len(body) + 36, tid16) + body
        body += attr(0x001C, hmac.new(sha256_key, prefix, hashlib.sha256).digest())
    if fingerprint:
        prefix = header(mtype, len(body) + 8, tid16) + body
        body += attr(0x8028, struct.pack(">I", (zlib.crc32(prefix) ^ 0x5354554E) & 0xFFFFFFFF))
    return header(mtype, len(body), tid16) + body


def xor_v4(ip, port):
    a = bytes(b ^ c for b, c in zip(ip, struct.pack(">I", COOKIE)))
    return struct.pack(">BBH", 0, 1, port ^ (COOKIE >> 16)) + a


def plain_v4(ip, port):
    return struct.pack(">BBH", 0, 1, port) + bytes(ip)


# RFC 5769 section 2.1 and 2.2 sample messages (published test vectors).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36"
    "000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c3"
    "8c7489f92af9ba53f06be7d780280004c07d4c96"
)

BINDING_REQUEST, BINDING_SUCCESS, BINDING_INDICATION = 0x0001, 0x0101, 0x0011

requests = {
    "binding_plain": message(BINDING_REQUEST, []),
    "binding_fingerprint": message(BINDING_REQUEST, [attr(0x8022, b"seed")], fingerprint=True),
    "change_ip_port": message(BINDING_REQUEST, [attr(0x0003, b"\0\0\0\x06")], fingerprint=True),
    "change_port": message(BINDING_REQUEST, [attr(0x0003, b"\0\0\0\x02")]),
    "response_port": message(BINDING_REQUEST, [attr(0x0027, b"\x9c\x41\0\0")], fingerprint=True),
    "padding": message(BINDING_REQUEST, [attr(0x0026, b"\0" * 200)], fingerprint=True),
    "unknown_required": message(BINDING_REQUEST, [attr(0x7777, b"abc"), attr(0x0024, b"\0\0\0\1")]),
    "integrity": message(
        BINDING_REQUEST, [attr(0x0006, b"user")], key=b"fuzz-key", sha256_key=b"fuzz-key", fingerprint=True
    ),
    "rfc3489": message(BINDING_REQUEST, [attr(0x0003, b"\0\0\0\x04")], tid16=bytes(range(16, 32))),
    "other_method": message(0x0002, []),
    "rfc5769_request": RFC5769_REQUEST,
    # punchraw's CONNECT-BACK (0xC0B0, CHANGE-REQUEST's flags), change IP and port.
    "connect_back": message(BINDING_REQUEST, [attr(0xC0B0, b"\0\0\0\x06")], fingerprint=True),
}
responses = {
    "indication": message(BINDING_INDICATION, [attr(0x8022, b"ind")]),
    "success": message(
        BINDING_SUCCESS,
        [attr(0x0020, xor_v4([192, 0, 2, 1], 32853)), attr(0x0001, plain_v4([192, 0, 2, 1], 32853))],
        fingerprint=True,
    ),
    "error_420": message(
        0x0111, [attr(0x0009, b"\0\0\x04\x14Unknown Attribute"), attr(0x000A, b"\x77\x77")], fingerprint=True
    ),
    "rfc5769_ipv4_response": RFC5769_IPV4_RESPONSE,
    # The answer to it: CONNECT-BACK-ORIGIN (0xC0B1) names where the SYN will come from.
    "connect_back_origin": message(
        BINDING_SUCCESS,
        [attr(0x0020, xor_v4([192, 0, 2, 1], 32853)), attr(0xC0B1, plain_v4([192, 0, 2, 2], 3479))],
        fingerprint=True,
    ),
}

# Inputs that once crashed a target (kept so every run starts by replaying them).
regressions = {
    # Empty FINGERPRINT as the last attribute: Message::parse read past the buffer.
    "regress_fingerprint_len0": bytes.fromhex("001100082112a442f986fa87dfae80220027000b4100000080280000"),
}


# rendezvous_msg and punch_input take records [source][advance][len: u16 BE][bytes].
def record(source, advance, data):
    return struct.pack(">BBH", source, advance, len(data)) + data


def rdv(obj_json):
    return b"PRV1" + obj_json.encode()


NAT = '{"mapping":"endpoint-independent","filtering":"address-and-port-dependent","allocation":"preserving","delta":null}'
MAC = "ab" * 32
KEYHEX = "cd" * 32
REGISTER_A = rdv(
    '{"t":"register","session":"team-42","peer":"0123456789abcdef","seq":1,"key":"%s",'
    '"locals":["10.0.1.2:40000"],"nat":%s,"rtt_ms":3,"mac":"%s"}' % (KEYHEX, NAT, MAC)
)
REGISTER_B = rdv(
    '{"t":"register","session":"team-42","peer":"fedcba9876543210","seq":1,'
    '"locals":["10.0.2.2:40000"],"nat":%s,"rtt_ms":4,"mac":"%s"}' % (NAT, MAC)
)
BYE = rdv('{"t":"bye","session":"team-42","peer":"0123456789abcdef","seq":2,"mac":"%s"}' % MAC)
rendezvous = {
    "register_one": record(0, 0, REGISTER_A),
    "register_pair": record(0, 0, REGISTER_A) + record(1, 5, REGISTER_B) + record(1, 5, REGISTER_B),
    "register_bye": record(0, 0, REGISTER_A) + record(0, 10, BYE),
    # Without the magic prefix in the data: the source's top bit adds it.
    "prefix_added": record(0x80, 0, REGISTER_A[4:]),
    "server_messages": record(2, 0, rdv('{"t":"waiting","you":"203.0.113.9:1","wait_left_ms":5}'))
    + record(2, 0, rdv('{"t":"error","code":"session-full","message":"x"}')),
    "junk": record(3, 200, b"PRV1{") + record(3, 200, b"\xff" * 40),
    # The TCP stream framing (PRV1, u16 BE length, JSON): measured and unframed.
    "stream_frame": record(0, 0, b"PRV1" + struct.pack(">H", len(REGISTER_A) - 4) + REGISTER_A[4:])
    + record(1, 0, b"PRV1\xff\xff"),
}

# What a server says to a client (even source: the server, odd: a stranger).
PEER_B = ('{"id":"fedcba9876543210","public":"203.0.113.20:40000","locals":["10.0.2.2:40000"],'
          '"nat":%s}' % NAT)
client = {
    "waiting_then_peer": record(0, 5, rdv('{"t":"waiting","you":"203.0.113.10:40000","wait_left_ms":60000}'))
    + record(0, 30, rdv('{"t":"peer","you":"203.0.113.10:40000","peer":%s,"start_in_ms":150}' % PEER_B)),
    "unknown_then_unavailable": record(0, 3, rdv('{"t":"error","code":"unknown-session","message":""}'))
    + record(0, 3, rdv('{"t":"error","code":"registry-unavailable","message":""}'))
    + record(0, 200, rdv('{"t":"error","code":"registry-unavailable","message":""}')),
    "stranger_and_rejected": record(1, 5, rdv('{"t":"peer","you":"203.0.113.10:40000","peer":%s,"start_in_ms":1}' % PEER_B))
    + record(0, 5, rdv('{"t":"waiting","you":"203.0.113.10:40000","wait_left_ms":9,"rejected":3}')),
}

# A punch check as the peer sends it (the target re-signs it with the session key).
PUNCH_TID = struct.pack(">I", COOKIE) + bytes(range(40, 52))
punch = {
    "check": b"\x80" + record(0, 0, message(BINDING_REQUEST, [attr(0xC0A1, b"\x42" * 32)], tid16=PUNCH_TID)),
    "nominate": b"\x00"
    + record(0, 20, message(BINDING_REQUEST, [attr(0xC0A1, b"\x42" * 32), attr(0xC0A2, b"")], tid16=PUNCH_TID))
    + record(0x10, 20, bytes([0x80]) + b"\0" * 40),
    "success": b"\x81" + record(0, 30, message(BINDING_SUCCESS, [attr(0x0020, xor_v4([198, 51, 100, 1], 50000))])),
    "stray": b"\x17" + record(1, 1, b"\xc0" + b"\0" * 30) + record(2, 255, b""),
}

def ipv4(src, dst, proto, payload, ttl=64):
    """An IPv4 header (no options) in front of payload; the checksum is left zero, which the
    parser under test does not check (the kernel already did)."""
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0,
                       bytes(src), bytes(dst)) + payload


def tcp_seg(sport, dport, seq, ack, flags):
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)


SYN, ACK, RST = 0x02, 0x10, 0x04
HOST, PEER_NAT, OWN_NAT = [10, 0, 1, 2], [203, 0, 113, 20], [10, 0, 1, 1]
OUR_SYN = ipv4(HOST, PEER_NAT, 6, tcp_seg(40000, 5000, 1000, 0, SYN))
captured = {
    "syn": OUR_SYN,
    "synack": ipv4(PEER_NAT, HOST, 6, tcp_seg(5000, 40000, 7000, 1001, SYN | ACK)),
    "rst": ipv4(PEER_NAT, HOST, 6, tcp_seg(5000, 40000, 0, 1001, RST | ACK)),
    # ICMP port unreachable and time exceeded quoting our SYN's header and 8 bytes.
    "icmp_unreachable": ipv4(PEER_NAT, HOST, 1, struct.pack(">BBHI", 3, 3, 0, 0) + OUR_SYN[:28]),
    "icmp_time_exceeded": ipv4(OWN_NAT, HOST, 1, struct.pack(">BBHI", 11, 0, 0, 0) + OUR_SYN[:28]),
}

# NAT-PMP (RFC 6886) and PCP (RFC 6887), written from the RFCs' layouts.
NONCE = bytes(range(12))
V4MAPPED = b"\0" * 10 + b"\xff\xff"
pmp_ext_ok = struct.pack(">BBHI4s", 0, 128, 0, 77, bytes([11, 22, 33, 44]))
pmp_map_ok = struct.pack(">BBHIHHI", 0, 129, 0, 77, 4000, 4000, 60)
pmp_unsupp = struct.pack(">BBHI", 0, 129, 1, 77)
pcp_map_body = NONCE + bytes([17, 0, 0, 0]) + struct.pack(">HH", 4000, 4000) + V4MAPPED + bytes([11, 22, 33, 44])
pcp_map_ok = struct.pack(">BBBBII", 2, 0x81, 0, 0, 60, 77) + b"\0" * 12 + pcp_map_body
pcp_announce = struct.pack(">BBBBII", 2, 0x80, 0, 0, 0, 3) + b"\0" * 12
pcp_request = struct.pack(">BBHI", 2, 1, 0, 60) + V4MAPPED + bytes([10, 0, 1, 2]) + pcp_map_body
portmap_parse = {
    "pmp_ext_ok": pmp_ext_ok, "pmp_map_ok": pmp_map_ok, "pmp_unsupp": pmp_unsupp,
    "pmp_request": struct.pack(">BBHHHI", 0, 1, 0, 4000, 4000, 60),
    "pcp_map_ok": pcp_map_ok, "pcp_announce": pcp_announce, "pcp_request": pcp_request,
}


def pm_record(source, advance, payload):
    return bytes([source, advance, len(payload)]) + payload


portmap_client = {
    # PCP on and NAT-PMP on, UDP: a NAT-PMP gateway's answers after a PCP request.
    "natpmp": b"\x03" + pm_record(0, 1, pmp_unsupp) + pm_record(0, 1, pmp_ext_ok)
    + pm_record(0, 1, pmp_map_ok) + pm_record(0x80, 1, pmp_map_ok),
    "announce": b"\x01" + pm_record(2, 1, pcp_announce) + pm_record(0, 200, pcp_announce),
}


def crafted(which, ttl=64):
    """The field layout the crafted_segment target reads: src ip, src port, dst ip, dst port,
    ttl, which (bits 0-1 the flags Syn/SynAck/Ack/Rst; then MSS, window scale, SACK-permitted,
    timestamps present), seq, ack, window, mss, wscale, tsval, tsecr."""
    return (bytes([10, 0, 1, 2]) + struct.pack(">H", 40000) + bytes([203, 0, 113, 20])
            + struct.pack(">H", 5000) + bytes([ttl, which])
            + struct.pack(">IIHHBII", 0x12345678, 0x9ABCDEF0, 64240, 1460, 7, 0xDEADBEEF, 0))


crafted_seeds = {
    "syn_all_options": crafted(0 | 4 | 8 | 16 | 32),
    "synack_low_ttl": crafted(1 | 4 | 32, ttl=2),
    "rst_bare": crafted(3),
}

def relay_offer(peer_id, ip, port, fp_hex, key=bytes([0x5A]) * 32):
    """The relay_offer target's layout, with the MAC the offer carries: HMAC-SHA256 under the
    punch key of a label, the peer id, the address as text and the fingerprint's hex, each
    after a NUL."""
    addr = "%d.%d.%d.%d:%d" % (*ip, port)
    msg = (b"punchraw v1 relay offer\0" + peer_id.encode() + b"\0" + addr.encode() + b"\0"
           + fp_hex.encode())
    mac = hmac.new(key, msg, hashlib.sha256).hexdigest()
    return (bytes([len(peer_id)]) + peer_id.encode() + b"\0" + bytes(ip) + struct.pack(">H", port)
            + bytes([len(fp_hex)]) + fp_hex.encode() + mac.encode())


def signed_pair(seed):
    """The genuine MAC with one digit pair "0x" spelled "+x", which reads as the same byte
    to a parser that accepts a sign."""
    mac = seed[-64:]
    i = next(k for k in range(0, 64, 2) if mac[k:k + 1] == b"0")
    return seed[:-64] + mac[:i] + b"+" + mac[i + 1:]


genuine = relay_offer("a1b2", [203, 0, 113, 5], 50000, "07" * 32)
relay_offer_seeds = {"genuine": genuine, "signed_mac": signed_pair(genuine)}

for target, seeds in {
    "stun_parse": {**requests, **responses, **regressions},
    "server_handle": {**requests, **responses, **regressions},
    "rendezvous_msg": rendezvous,
    "rendezvous_client": client,
    "punch_input": punch,
    "captured_packet": captured,
    "portmap_parse": portmap_parse,
    "portmap_client": portmap_client,
    "crafted_segment": crafted_seeds,
    "relay_offer": relay_offer_seeds,
}.items():
    d = os.path.join(HERE, "corpus_seed", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds in {d}")
