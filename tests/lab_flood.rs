//! Bad input at scale against `punchraw serve` in the NAT lab: 30,000 malformed datagrams
//! (random sizes and bytes, some with a valid STUN header, some rendezvous-looking) and
//! 1,000 half-open TCP connections (silent, or a partial STUN header) from host A. While the
//! connections are held the server must still answer a UDP Binding request within a second;
//! once they are closed a TCP Binding works again, and the server's resident memory is back
//! within 8 MiB of where it started. Needs root; skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{Lab, Node};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The traffic generator, run with python3 in host A's namespace. Prints one JSON object.
const FLOOD: &str = r#"
import json, os, random, resource, socket, struct, sys, time
SRV = "203.0.113.1"
random.seed(5)
COOKIE = 0x2112A442

def binding():
    tid = struct.pack("!I", COOKIE) + os.urandom(12)
    return struct.pack("!HH", 1, 0) + tid, tid

def junk(i):
    n = random.choice([0, 1, 19, 20, 21, 28, random.randrange(0, 1500)])
    body = os.urandom(n)
    k = i % 5
    if k == 0 and n >= 20:
        # A STUN header with a length that lies, then garbage attributes.
        body = struct.pack("!HHI", random.choice([1, 0x11, 0x101, 0x111, 0x3ff]),
                           random.randrange(0, 65536), COOKIE) + body[8:]
    elif k == 1:
        # A well-framed request whose attributes are garbage or truncated.
        attrs = os.urandom(random.randrange(0, 200) & ~3)
        body = struct.pack("!HHI", 1, len(attrs), COOKIE) + os.urandom(12) + attrs
    elif k == 2:
        body = b"PRV1" + random.choice([b"{", b"{\"t\":\"register\"}", os.urandom(n)])
    return body

out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
sent = 0
t0 = time.time()
for i in range(30000):
    port = 3478 if i % 4 else 3479
    while True:
        try:
            s.sendto(junk(i), (random.choice([SRV, "203.0.113.2"]), port))
            sent += 1
            break
        except BlockingIOError:
            time.sleep(0.0005)
out["udp_junk_sent"] = sent
out["udp_junk_s"] = round(time.time() - t0, 3)

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
conns = []
t0 = time.time()
for i in range(1000):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setblocking(False)
    try:
        c.connect((SRV, 3478))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        c.close()
        continue
    conns.append(c)
time.sleep(0.5)
partial = 0
for i, c in enumerate(conns):
    if i % 2:
        try:
            c.send(struct.pack("!HHI", 1, 0, COOKIE)[: 1 + i % 7])
            partial += 1
        except OSError:
            pass
out["tcp_opened"] = len(conns)
out["tcp_partial"] = partial
out["tcp_open_s"] = round(time.time() - t0, 3)

def udp_binding():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1.0)
    req, tid = binding()
    t = time.time()
    u.sendto(req, (SRV, 3478))
    try:
        while True:
            r, _ = u.recvfrom(2048)
            if r[:2] == b"\x01\x01" and r[4:20] == tid:
                return round((time.time() - t) * 1000, 2)
    except socket.timeout:
        return None

out["udp_rtt_ms_while_held"] = udp_binding()
for c in conns:
    c.close()

def tcp_binding():
    c = socket.create_connection((SRV, 3478), timeout=1.0)
    req, tid = binding()
    c.sendall(req)
    r = b""
    while len(r) < 20 or len(r) < 20 + struct.unpack("!H", r[2:4])[0]:
        d = c.recv(2048)
        if not d:
            return False
        r += d
    c.close()
    return r[:2] == b"\x01\x01" and r[4:20] == tid

ok, t0 = False, time.time()
while not ok and time.time() - t0 < 12:
    try:
        ok = tcp_binding()
    except OSError:
        ok = False
    if not ok:
        time.sleep(0.2)
out["tcp_binding_ok"] = ok
out["tcp_binding_after_s"] = round(time.time() - t0, 2)
out["udp_rtt_ms_after"] = udp_binding()
print(json.dumps(out))
"#;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn junk_and_half_open_connections_do_not_hurt_the_server() {
    let Some(lab) = Lab::up("port-restricted-cone", None) else {
        return;
    };
    let started = Instant::now();
    let srv = common::punchraw_serve_5780(&lab);
    let pid = srv.id();
    let rss0 = rss_kib(pid);

    let out = lab
        .cmd(Node::A, "python3")
        .args(["-c", FLOOD])
        .output()
        .expect("run python3 in host A");
    assert!(
        out.status.success(),
        "traffic generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "generator output {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("lab_flood: {v}");
    assert_eq!(v["udp_junk_sent"], 30000, "{v}");
    assert!(v["tcp_opened"].as_u64().unwrap_or(0) >= 990, "{v}");
    let rtt = v["udp_rtt_ms_while_held"].as_f64();
    assert!(
        rtt.is_some_and(|ms| ms < 1000.0),
        "no UDP answer within 1 s while the connections were held: {v}"
    );
    assert_eq!(v["tcp_binding_ok"], true, "{v}");
    assert!(v["udp_rtt_ms_after"].as_f64().is_some(), "{v}");

    // Memory: the connection threads are gone once the peers closed; give the server a
    // moment to notice and reap them.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut rss = rss_kib(pid);
    while rss > rss0 + 8 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        rss = rss_kib(pid);
    }
    eprintln!(
        "lab_flood: RSS {rss0} KiB at start, {rss} KiB after, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rss <= rss0 + 8 * 1024,
        "RSS {rss} KiB, started at {rss0} KiB: more than 8 MiB kept"
    );
    let mut srv = srv;
    assert!(
        srv.try_wait().expect("server status").is_none(),
        "the server exited"
    );
}
