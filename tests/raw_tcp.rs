//! TCP simultaneous open at packet level (#11), driven piece by piece: each side sends a
//! crafted SYN from a raw socket, answers the peer's SYN with a crafted SYN-ACK, and moves
//! the connection into a kernel socket built with TCP_REPAIR at exactly the sequence numbers
//! and options the crafted handshake used. 1 MiB goes each way, checked by hash, through two
//! NATs whose connection tracking is strict (nf_conntrack_tcp_be_liberal=0, asserted).
//!
//! Each side runs on a thread that has entered its host's network namespace (setns on that
//! thread only: the test process itself stays outside, as the lab's teardown requires), with
//! the pieces of the library the raw SYN engine is made of: a placeholder socket holding the
//! port, the punch's nft rules (no RST from this host toward the peer), an AF_PACKET watcher
//! and the raw sender.
//!
//! Needs root, `ip` and `nft`; skipped otherwise (see tests/common/lab.rs).

mod common;

use common::lab::{Lab, LabOptions, Node};
use punchraw::core::wire::craft::{Crafted, Established, Flags};
use punchraw::core::wire::{Seen, Segment, TcpOptions};
use punchraw::os::nft::PunchRules;
use punchraw::os::packet::Watcher;
use punchraw::os::rawtcp::RawTcpSender;
use punchraw::os::tcp_repair;
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const LEN: usize = 1 << 20;
/// How often a side repeats its SYN until it hears from the peer: the first one is dropped
/// by the peer's NAT when it arrives before the peer's own SYN opened it.
const SYN_EVERY: Duration = Duration::from_millis(100);
const OUR_WINDOW: u16 = 64240;

/// When a side answers the peer's SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// At once, with a SYN-ACK.
    Prompt,
    /// Never: it waits for the peer's SYN-ACK and builds its socket from that.
    Late,
}

#[derive(Debug, Clone)]
struct Side {
    name: &'static str,
    ns: String,
    /// The host's address and punch port.
    local: SocketAddrV4,
    /// The peer's public endpoint.
    peer: SocketAddrV4,
    isn: u32,
    /// What our SYN (and SYN-ACK) carries.
    options: TcpOptions,
    answer: Answer,
    seed: u64,
    /// How long the socket stays in repair mode, ESTABLISHED with its options, before it
    /// leaves it (`tcp_repair::established_pausing`): long enough for the peer's SYN-ACK or
    /// window probe to arrive and be answered by the half-built socket.
    pause_in_repair: Duration,
}

/// What a side saw, for the report and the assertions.
#[derive(Debug)]
struct Outcome {
    /// What the socket was built from.
    from: Segment,
    established: Established,
    received_sha: Vec<u8>,
    /// `ss -tin` of the connection right after it was built.
    ss: String,
    /// From the start of the punch to the end of the exchange.
    elapsed: Duration,
    /// The first segments of the connection after the handshake, as the watcher saw them:
    /// (sent by us, kind, seq, ack, options).
    after: Vec<(bool, Segment, u32, u32, TcpOptions)>,
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64*: any fixed stream will do, both sides compute the other's.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Moves this thread (only) into the network namespace `ns`.
fn enter(ns: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns(2) takes a descriptor that `f` keeps open during the call; it changes
    // the calling thread's network namespace only (CLONE_NEWNET is per thread).
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bound with SO_REUSEADDR/SO_REUSEPORT, never listening: holds the port so no other
/// program takes it while the punch runs.
fn placeholder(at: SocketAddrV4) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SockAddr::from(SocketAddr::V4(at)))?;
    Ok(s)
}

/// What Linux puts in a SYN by default (TSval even: see os::tcp_repair).
fn linux_like(tsval: u32) -> TcpOptions {
    TcpOptions {
        mss: Some(1460),
        wscale: Some(7),
        sack_permitted: true,
        timestamps: Some((tsval, 0)),
    }
}

/// One side of the punch: crafted handshake, TCP_REPAIR socket, 1 MiB each way.
fn run_side(side: Side, start: Arc<Barrier>) -> Result<Outcome, String> {
    let err = |what: &str| {
        let n = side.name;
        let w = what.to_string();
        move |e: &dyn std::fmt::Display| format!("side {n}: {w}: {e}")
    };
    enter(&side.ns).map_err(|e| err("setns")(&e))?;
    let _hold = placeholder(side.local).map_err(|e| err("placeholder")(&e))?;
    let rules = PunchRules::install(&[IpAddr::V4(*side.peer.ip())], false)
        .map_err(|e| err("nft rules")(&e))?;
    let watcher = Watcher::open(&[IpAddr::V4(*side.peer.ip())]).map_err(|e| err("watcher")(&e))?;
    let raw = RawTcpSender::open().map_err(|e| err("raw socket")(&e))?;
    let ours = side.options;
    let syn = Crafted {
        src: side.local,
        dst: side.peer,
        ttl: 64,
        seq: side.isn,
        ack: 0,
        flags: Flags::Syn,
        window: OUR_WINDOW,
        options: ours,
        data: false,
    };
    start.wait();
    let started = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next_syn = Instant::now();
    let mut answered = false;
    let syn_due = true;
    let (from, established) = 'handshake: loop {
        let now = Instant::now();
        if now > deadline {
            return Err(format!(
                "side {}: no handshake within 10 s (saw the peer's SYN: {answered})",
                side.name
            ));
        }
        if syn_due && now >= next_syn {
            raw.send(&syn).map_err(|e| err("send SYN")(&e))?;
            next_syn = now + SYN_EVERY;
        }
        watcher
            .wait(
                next_syn
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(5)),
            )
            .map_err(|e| err("watch")(&e))?;
        while let Some(p) = watcher.recv().map_err(|e| err("watch")(&e))? {
            if p.outgoing {
                continue;
            }
            let Some(Seen::Tcp {
                src,
                dst,
                segment,
                seq,
                ack,
                window,
                options,
                ..
            }) = p.seen
            else {
                continue;
            };
            if src != SocketAddr::V4(side.peer) || dst != SocketAddr::V4(side.local) {
                continue;
            }
            let e = Established {
                local: side.local,
                remote: side.peer,
                snd_nxt: side.isn.wrapping_add(1),
                rcv_nxt: seq.wrapping_add(1),
                ours,
                theirs: options,
                peer_window: window,
                our_window: OUR_WINDOW,
                // Both sides answer at once here; the window probe is the test's final ACK.
                awaiting_peer: false,
                received: Vec::new(),
                first_flight: None,
            };
            match segment {
                Segment::Syn if side.answer == Answer::Prompt => {
                    // RFC 9293 section 3.5, figure 8: the SYN-ACK repeats our ISN and
                    // acknowledges theirs; RFC 7323 section 3.2: TSecr echoes their TSval.
                    let mut o = ours;
                    o.timestamps = match (ours.timestamps, options.timestamps) {
                        (Some((v, _)), Some((tv, _))) => Some((v, tv)),
                        (t, _) => t,
                    };
                    raw.send(&Crafted {
                        flags: Flags::SynAck,
                        ack: seq.wrapping_add(1),
                        options: o,
                        ..syn
                    })
                    .map_err(|e| err("send SYN-ACK")(&e))?;
                    break 'handshake (Segment::Syn, e);
                }
                Segment::Syn => answered = true,
                Segment::SynAck if ack == side.isn.wrapping_add(1) => {
                    break 'handshake (Segment::SynAck, e);
                }
                _ => {}
            }
        }
    };
    let stream =
        tcp_repair::established_pausing(&established, || std::thread::sleep(side.pause_in_repair))
            .map_err(|e| err("TCP_REPAIR")(&e))?;
    let ss = std::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| err("timeout")(&e))?;
    let mut writer = stream.try_clone().map_err(|e| err("clone")(&e))?;
    let payload = data(side.seed, LEN);
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut got = Vec::with_capacity(LEN);
    let read = (&stream).read_to_end(&mut got);
    let sent = sender
        .join()
        .map_err(|_| format!("side {}: writer panicked", side.name))?;
    sent.map_err(|e| err("send data")(&e))?;
    read.map_err(|e| err(&format!("receive data (got {} bytes)", got.len()))(&e))?;
    drop(stream);
    let mut after = Vec::new();
    while let Some(p) = watcher.recv().map_err(|e| err("watch")(&e))? {
        if let Some(Seen::Tcp {
            src,
            dst,
            segment,
            seq,
            ack,
            options,
            ..
        }) = p.seen
        {
            let ours = src == SocketAddr::V4(side.local) && dst == SocketAddr::V4(side.peer);
            let theirs = src == SocketAddr::V4(side.peer) && dst == SocketAddr::V4(side.local);
            if (ours || theirs) && after.len() < 12 {
                after.push((ours, segment, seq, ack, options));
            }
        }
    }
    drop(watcher);
    rules.remove().map_err(|e| err("remove nft rules")(&e))?;
    let left = punchraw::os::nft::tables();
    if !left.is_empty() {
        return Err(format!("side {}: nft tables left: {left:?}", side.name));
    }
    Ok(Outcome {
        from,
        established,
        received_sha: Sha256::digest(&got).to_vec(),
        ss,
        after,
        elapsed: started.elapsed(),
    })
}

/// The peer's segments after the handshake carry timestamps that continue its SYN's TSval
/// (TCP_TIMESTAMP took), and ours were echoed.
fn check_timestamps(name: &str, o: &Outcome) {
    let (Some((their_syn_tsval, _)), Some((our_syn_tsval, _))) = (
        o.established.theirs.timestamps,
        o.established.ours.timestamps,
    ) else {
        return;
    };
    let theirs: Vec<_> = o
        .after
        .iter()
        .filter(|s| !s.0 && s.1 == Segment::Other)
        .collect();
    assert!(
        !theirs.is_empty(),
        "{name}: saw none of the peer's segments"
    );
    let mut bare = 0;
    for s in theirs {
        let Some((tsval, tsecr)) = s.4.timestamps else {
            // The kernel takes TCP_REPAIR_OPTIONS only once connect() made the socket
            // ESTABLISHED, and a segment of ours arriving in between (our window probe, at 0 ms
            // delay) draws an ACK with no options at all (os::tcp_repair). Once, at the
            // handshake's position, before the peer sent anything else; a CI run saw it.
            let at_handshake = s.2 == o.established.rcv_nxt && s.3 == o.established.snd_nxt;
            if at_handshake && bare == 0 {
                bare += 1;
                continue;
            }
            panic!("{name}: a segment of the peer without timestamps: {s:?}");
        };
        // A millisecond clock (not a microsecond one) that went on from the SYN's value.
        let most = o.elapsed.as_millis() as u32 + 20;
        assert!(
            tsval.wrapping_sub(their_syn_tsval) <= most,
            "{name}: the peer's TSval {tsval} does not continue from its SYN's \
             {their_syn_tsval} on a millisecond clock ({} ms passed)",
            o.elapsed.as_millis()
        );
        assert!(
            tsecr == 0 || tsecr.wrapping_sub(our_syn_tsval) <= most,
            "{name}: the peer echoed {tsecr}, not our clock (from {our_syn_tsval})"
        );
    }
}

fn sysctl_in(lab: &Lab, node: Node, key: &str) -> String {
    let out = lab
        .cmd(node, "cat")
        .arg(format!("/proc/sys/{}", key.replace('.', "/")))
        .output()
        .expect("cat sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The NAT's conntrack entries for TCP to or from `port` (`/proc/net/nf_conntrack`).
fn conntrack(lab: &Lab, node: Node, port: u16) -> Vec<String> {
    let out = lab
        .cmd(node, "cat")
        .arg("/proc/net/nf_conntrack")
        .output()
        .expect("read nf_conntrack");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" tcp ") && l.contains(&format!("port={port} ")))
        .map(str::to_string)
        .collect()
}

/// Runs both sides at once and checks what arrived.
fn punch(lab: &Lab, a: Side, b: Side, nats: &[Node]) -> (Outcome, Outcome) {
    for &n in nats {
        assert_eq!(
            sysctl_in(lab, n, "net.netfilter.nf_conntrack_tcp_be_liberal"),
            "0",
            "{n:?} must track TCP strictly"
        );
    }
    let start = Arc::new(Barrier::new(2));
    let (sa, sb) = (start.clone(), start);
    let (seed_a, seed_b) = (a.seed, b.seed);
    let ta = std::thread::spawn(move || run_side(a, sa));
    let tb = std::thread::spawn(move || run_side(b, sb));
    let ra = ta.join().expect("side A panicked");
    let rb = tb.join().expect("side B panicked");
    let (oa, ob) = match (ra, rb) {
        (Ok(a), Ok(b)) => (a, b),
        (ra, rb) => panic!("punch failed:\n A: {ra:?}\n B: {rb:?}"),
    };
    for (n, o) in [("A", &oa), ("B", &ob)] {
        eprintln!("{n} built from {:?}: {:?}\n{}", o.from, o.established, o.ss);
        for seg in &o.after {
            eprintln!("  {n} {}: {seg:?}", if seg.0 { "sent" } else { "got" });
        }
        check_timestamps(n, o);
    }
    assert_eq!(oa.received_sha, Sha256::digest(data(seed_b, LEN)).to_vec());
    assert_eq!(ob.received_sha, Sha256::digest(data(seed_a, LEN)).to_vec());
    // Each side continued the other's sequence space exactly.
    assert_eq!(oa.established.snd_nxt, ob.established.rcv_nxt);
    assert_eq!(ob.established.snd_nxt, oa.established.rcv_nxt);
    (oa, ob)
}

fn sides(lab: &Lab, nat: bool, late_a: bool) -> (Side, Side) {
    let (pa, pb) = (45000, 46000);
    let (a_local, b_local, a_public, b_public) = if nat {
        (
            lab.addr("A"),
            lab.addr("B"),
            lab.addr("NAT_A"),
            lab.addr("NAT_B"),
        )
    } else {
        (lab.addr("A"), lab.addr("B"), lab.addr("A"), lab.addr("B"))
    };
    let a = Side {
        name: "A",
        ns: lab.ns(Node::A),
        local: SocketAddrV4::new(a_local, pa),
        // Port-restricted cones keep the port (endpoint-independent mapping, port
        // preservation): the peer's public port is its local one.
        peer: SocketAddrV4::new(b_public, pb),
        isn: 0x8000_0000 + 0x1234,
        options: linux_like(0xfff0_0000),
        answer: if late_a { Answer::Late } else { Answer::Prompt },
        seed: 0xa,
        pause_in_repair: Duration::ZERO,
    };
    let b = Side {
        name: "B",
        ns: lab.ns(Node::B),
        local: SocketAddrV4::new(b_local, pb),
        peer: SocketAddrV4::new(a_public, pa),
        isn: 0xffff_fff0,
        options: linux_like(78),
        answer: Answer::Prompt,
        seed: 0xb,
        pause_in_repair: Duration::ZERO,
    };
    (a, b)
}

#[test]
fn crafted_handshake_then_tcp_repair_without_nat() {
    let Some(lab) = Lab::up("none", Some("none")) else {
        return;
    };
    let (a, b) = sides(&lab, false, false);
    punch(&lab, a, b, &[]);
}

/// Both NATs tracked one connection, which reached ESTABLISHED (ASSURED) and, after both
/// FINs, TIME_WAIT: strict tracking accepted every segment of the crafted handshake and of
/// the repaired socket as one sequence space.
fn check_conntrack(lab: &Lab) {
    for (n, port) in [(Node::NatA, 45000), (Node::NatB, 46000)] {
        let ct = conntrack(lab, n, port);
        eprintln!("{n:?} conntrack: {ct:#?}");
        assert_eq!(ct.len(), 1, "{n:?}: one tracked connection: {ct:#?}");
        assert!(ct[0].contains("[ASSURED]"), "{n:?}: {}", ct[0]);
        assert!(ct[0].contains(" TIME_WAIT "), "{n:?}: {}", ct[0]);
    }
}

fn cones(delay_ms: u32) -> Option<Lab> {
    Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .delay_ms_if_any(delay_ms),
    )
}

#[test]
fn crafted_handshake_then_tcp_repair_through_two_strict_cones() {
    let Some(lab) = cones(0) else {
        return;
    };
    let (a, b) = sides(&lab, true, false);
    punch(&lab, a, b, &[Node::NatA, Node::NatB]);
    check_conntrack(&lab);
}

/// With 40 ms on each uplink the two SYNs cross on the wire: each NAT sees the peer's SYN
/// after its own (conntrack SYN_SENT2), both sides answer with a SYN-ACK, and each SYN-ACK
/// reaches a socket that is already ESTABLISHED.
#[test]
fn crossing_syns_through_two_strict_cones_at_40_ms() {
    let Some(lab) = cones(40) else {
        return;
    };
    let (a, b) = sides(&lab, true, false);
    let (oa, ob) = punch(&lab, a, b, &[Node::NatA, Node::NatB]);
    assert_eq!(
        (oa.from, ob.from),
        (Segment::Syn, Segment::Syn),
        "both SYNs got through"
    );
    check_conntrack(&lab);
}

/// A peer whose SYN carries an MSS only: no window scaling (the kernel's own scale must not
/// stay in force), no SACK, no timestamps, on either socket.
#[test]
fn a_peer_without_options_gets_none_negotiated() {
    let Some(lab) = cones(0) else {
        return;
    };
    let (a, mut b) = sides(&lab, true, false);
    b.options = TcpOptions {
        mss: Some(1400),
        ..TcpOptions::default()
    };
    let (oa, ob) = punch(&lab, a, b, &[Node::NatA, Node::NatB]);
    for (n, o) in [("A", &oa), ("B", &ob)] {
        // Scaling is on with shift 0 both ways: the same as none (see os::tcp_repair).
        assert!(o.ss.contains("wscale:0,0"), "{n}: {}", o.ss);
        for s in o.after.iter().filter(|s| s.1 == Segment::Other) {
            assert_eq!(s.4.timestamps, None, "{n}: {s:?}");
        }
    }
    check_conntrack(&lab);
}

#[test]
fn late_answer_builds_from_the_peers_syn_ack() {
    let Some(lab) = cones(0) else {
        return;
    };
    let (a, b) = sides(&lab, true, true);
    let (oa, _) = punch(&lab, a, b, &[Node::NatA, Node::NatB]);
    assert_eq!(
        oa.from,
        Segment::SynAck,
        "A never answered, so it heard a SYN-ACK"
    );
    check_conntrack(&lab);
}

/// What the kernel sends while a socket is still being built -- its ACK to the peer's
/// SYN-ACK or window probe arriving then -- is on the crafted timestamp clock too. One such
/// ACK on the kernel's own clock became the peer's ts_recent, and the peer then dropped
/// every later segment as old (PAWS): TLS over the raw engine's sockets stalled (about 1 in
/// 100 connects between two cones). B stays in repair mode for 100 ms so that the peer's
/// segment arrives then; check_timestamps sees B's answer on A's side.
#[test]
fn a_segment_answered_during_the_repair_continues_the_crafted_clock() {
    let Some(lab) = cones(0) else {
        return;
    };
    let (a, mut b) = sides(&lab, true, false);
    b.pause_in_repair = Duration::from_millis(100);
    punch(&lab, a, b, &[Node::NatA, Node::NatB]);
    check_conntrack(&lab);
}

/// A socket built after our own SYN-ACK (`awaiting_peer`) sends nothing when it leaves repair
/// mode -- a window probe would move our NAT's tracking to ESTABLISHED, which then drops our
/// repeated SYN-ACKs (core::punch::tcp::raw) -- and its first segment is the first data
/// written to it. Built after the peer's SYN-ACK, it sends the window probe at once.
#[test]
fn a_socket_awaiting_the_peer_sends_nothing_until_written_to() {
    let Some(lab) = Lab::up("none", Some("none")) else {
        return;
    };
    let (a, _) = sides(&lab, false, false);
    let watched = std::thread::spawn(move || -> Result<Vec<Vec<(Segment, u32)>>, String> {
        enter(&a.ns).map_err(|e| format!("setns: {e}"))?;
        let watcher =
            Watcher::open(&[IpAddr::V4(*a.peer.ip())]).map_err(|e| format!("watcher: {e}"))?;
        let mut seen = Vec::new();
        for (k, awaiting_peer) in [true, false].into_iter().enumerate() {
            let local = SocketAddrV4::new(*a.local.ip(), a.local.port() + k as u16);
            let _hold = placeholder(local).map_err(|e| format!("placeholder: {e}"))?;
            let e = Established {
                local,
                remote: a.peer,
                snd_nxt: a.isn.wrapping_add(1),
                rcv_nxt: 1001,
                ours: a.options,
                theirs: linux_like(500),
                peer_window: 64240,
                our_window: OUR_WINDOW,
                awaiting_peer,
                received: Vec::new(),
                first_flight: None,
            };
            let mut s = tcp_repair::established(&e).map_err(|e| format!("TCP_REPAIR: {e}"))?;
            let sent = |wait: Duration| -> Result<Vec<(Segment, u32)>, String> {
                let until = Instant::now() + wait;
                let mut out = Vec::new();
                while Instant::now() < until {
                    watcher
                        .wait(Duration::from_millis(20))
                        .map_err(|e| format!("watch: {e}"))?;
                    while let Some(p) = watcher.recv().map_err(|e| format!("watch: {e}"))? {
                        if let (
                            true,
                            Some(Seen::Tcp {
                                src, segment, seq, ..
                            }),
                        ) = (p.outgoing, p.seen)
                        {
                            if src == SocketAddr::V4(local) {
                                out.push((segment, seq));
                            }
                        }
                    }
                }
                Ok(out)
            };
            seen.push(sent(Duration::from_millis(300))?);
            if awaiting_peer {
                s.write_all(b"hello").map_err(|e| format!("write: {e}"))?;
                seen.push(sent(Duration::from_millis(200))?);
            }
        }
        Ok(seen)
    });
    let seen = watched
        .join()
        .expect("the watching thread panicked")
        .unwrap_or_else(|e| panic!("{e}"));
    let (isn, data) = (0x8000_0000u32 + 0x1234, 0x8000_0000u32 + 0x1235);
    assert_eq!(
        seen[0],
        [],
        "the awaiting socket sent before it was written to"
    );
    assert_eq!(seen[1].first(), Some(&(Segment::Other, data)), "{seen:?}");
    assert_eq!(
        seen[2],
        [(Segment::Other, isn)],
        "the window probe (seq = ISN) was not sent"
    );
}
