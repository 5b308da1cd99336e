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
}

# Inputs that once crashed a target (kept so every run starts by replaying them).
regressions = {
    # Empty FINGERPRINT as the last attribute: Message::parse read past the buffer.
    "regress_fingerprint_len0": bytes.fromhex("001100082112a442f986fa87dfae80220027000b4100000080280000"),
}

for target, seeds in {
    "stun_parse": {**requests, **responses, **regressions},
    "server_handle": {**requests, **responses, **regressions},
}.items():
    d = os.path.join(HERE, "corpus_seed", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds in {d}")
