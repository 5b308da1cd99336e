//! Watching TCP control segments and ICMP errors at the interface: an AF_PACKET socket with a
//! classic BPF filter (packet(7), SO_ATTACH_FILTER). It sees inbound packets before netfilter,
//! so also those our own firewall or the NAT lab's rules then drop, and outbound ones after
//! it, as they leave. What it reads goes through [`crate::core::wire::Seen`].
//!
//! Needs CAP_NET_RAW. The socket is opened once, before privileges are dropped.

use crate::core::wire::Seen;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime};

/// asm-generic/socket.h; libc does not export it for glibc targets.
const SO_ATTACH_FILTER: libc::c_int = 26;
/// Longest packet copied; control segments and ICMP errors are far shorter, and a capture
/// keeps the whole of each of them.
const SNAPLEN: u32 = 2048;

/// One instruction of a classic BPF program, before its jumps are resolved.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Load the 16-bit protocol of the frame (skb->protocol, the EtherType).
    LoadProto,
    LoadByte(u32),
    LoadWord(u32),
    /// Jump to label `yes` when A == k, else to label `no`.
    JumpEq(u32, Label, Label),
    Ret(u32),
    Mark(Label),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Accept,
    Drop,
    V4,
    V6,
    Tcp4,
    /// The next instruction.
    Next,
}

const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;

/// The filter: every ICMP/ICMPv6 packet, TCP to or from one of `hosts` (IPv4), and all IPv6
/// TCP when a host is IPv6 (extension headers make a short IPv6 address test unreliable; the
/// reader filters again).
fn program(hosts: &[IpAddr]) -> Vec<libc::sock_filter> {
    let v4: Vec<u32> = hosts
        .iter()
        .filter_map(|h| match h {
            IpAddr::V4(a) => Some(u32::from(*a)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let any_v6 = hosts.iter().any(IpAddr::is_ipv6);
    let mut ops = vec![
        Op::LoadProto,
        Op::JumpEq(ETHERTYPE_IPV4, Label::V4, Label::Next),
        Op::JumpEq(ETHERTYPE_IPV6, Label::V6, Label::Drop),
        Op::Mark(Label::V4),
        // IPv4 protocol field (RFC 791): offset 9.
        Op::LoadByte(9),
        Op::JumpEq(1, Label::Accept, Label::Next),
        Op::JumpEq(6, Label::Tcp4, Label::Drop),
        Op::Mark(Label::Tcp4),
        Op::LoadWord(12),
    ];
    for &a in &v4 {
        ops.push(Op::JumpEq(a, Label::Accept, Label::Next));
    }
    ops.push(Op::LoadWord(16));
    for &a in &v4 {
        ops.push(Op::JumpEq(a, Label::Accept, Label::Next));
    }
    ops.push(Op::Ret(0));
    ops.push(Op::Mark(Label::V6));
    // IPv6 next header (RFC 8200): offset 6. 58 is ICMPv6.
    ops.push(Op::LoadByte(6));
    ops.push(Op::JumpEq(58, Label::Accept, Label::Next));
    if any_v6 {
        ops.push(Op::JumpEq(6, Label::Accept, Label::Drop));
    }
    ops.push(Op::Mark(Label::Drop));
    ops.push(Op::Ret(0));
    ops.push(Op::Mark(Label::Accept));
    ops.push(Op::Ret(SNAPLEN));
    assemble(&ops)
}

/// Resolves labels into the relative jump offsets of classic BPF.
fn assemble(ops: &[Op]) -> Vec<libc::sock_filter> {
    // Index of each real instruction, and where each label points.
    let mut at = Vec::new();
    let mut labels = Vec::new();
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::Mark(l) => labels.push((*l, n)),
            _ => {
                at.push(n);
                n += 1;
            }
        }
    }
    let target = |l: Label, pc: usize| -> u8 {
        let to = match l {
            Label::Next => pc + 1,
            l => labels
                .iter()
                .find(|(m, _)| *m == l)
                .map(|(_, i)| *i)
                .expect("every label used is marked"),
        };
        u8::try_from(to - pc - 1).expect("the program is short and jumps only forward")
    };
    let ins = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut out = Vec::with_capacity(n);
    for op in ops {
        let pc = out.len();
        out.push(match *op {
            Op::Mark(_) => continue,
            Op::LoadProto => ins(
                libc::BPF_LD | libc::BPF_H | libc::BPF_ABS,
                0,
                0,
                (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32,
            ),
            Op::LoadByte(k) => ins(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, k),
            Op::LoadWord(k) => ins(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, k),
            Op::JumpEq(k, yes, no) => ins(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                target(yes, pc),
                target(no, pc),
                k,
            ),
            Op::Ret(k) => ins(libc::BPF_RET | libc::BPF_K, 0, 0, k),
        });
    }
    out
}

/// A packet read off the socket.
#[derive(Debug, Clone)]
pub struct Packet {
    /// When we read it off the socket (wall clock, not the kernel's timestamp).
    pub at: SystemTime,
    /// Sent by this host (PACKET_OUTGOING), rather than received.
    pub outgoing: bool,
    /// The IP packet, from its first header byte.
    pub data: Vec<u8>,
    /// What it is, when it is a TCP segment or an ICMP error about one.
    pub seen: Option<Seen>,
}

/// The AF_PACKET socket; closing it detaches the filter.
#[derive(Debug)]
pub struct Watcher {
    fd: OwnedFd,
    loopback: u32,
}

impl Watcher {
    /// Opens the socket on every interface, filtered to ICMP and TCP with `hosts`.
    pub fn open(hosts: &[IpAddr]) -> io::Result<Self> {
        // Protocol 0 receives nothing until the bind below, so no packet reaches the queue
        // before the filter is attached (packet(7)).
        // SAFETY: socket(2) takes plain integers; the returned descriptor is checked before
        // it is wrapped, and OwnedFd then closes it exactly once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let filter = program(hosts);
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: setsockopt(2) reads `prog` (and through it `filter`, `len` instructions)
        // during the call only; both outlive it. The kernel copies the program.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                &prog as *const libc::sock_fprog as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an all-zero sockaddr_ll is a valid value of this plain C struct.
        let mut all: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        all.sll_family = libc::AF_PACKET as u16;
        all.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: bind(2) reads `len` bytes of `all`, a live sockaddr_ll on our stack.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &all as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // Traffic on lo shows up twice (as sent and as received); the punch never uses it.
        let loopback = nix::net::if_::if_nametoindex("lo").unwrap_or(0);
        Ok(Watcher { fd, loopback })
    }

    /// Waits up to `timeout` for the socket to become readable.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        crate::os::poll::wait_readable(self.fd.as_fd(), timeout)
    }

    /// As [`Watcher::wait`], but also ends as soon as `wake` becomes readable (then `false`
    /// unless the socket is readable too): how the owner of a watching thread stops it
    /// without waiting out the timeout.
    pub fn wait_or_woken(
        &self,
        wake: &crate::os::poll::WakeFd,
        timeout: Duration,
    ) -> io::Result<bool> {
        Ok(crate::os::poll::readable(&[self.fd.as_fd(), wake.as_fd()], timeout)?[0])
    }

    /// The next packet, if one is queued (never blocks).
    pub fn recv(&self) -> io::Result<Option<Packet>> {
        let mut buf = vec![0u8; SNAPLEN as usize];
        loop {
            // SAFETY: an all-zero sockaddr_ll is a valid value of this plain C struct.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom(2) writes at most `buf.len()` bytes into `buf` and at most
            // `len` bytes into `from`; both are live and exclusively borrowed for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if from.sll_ifindex as u32 == self.loopback && self.loopback != 0 {
                continue;
            }
            buf.truncate(n as usize);
            let seen = Seen::parse(&buf);
            return Ok(Some(Packet {
                at: SystemTime::now(),
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                data: buf,
                seen,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    /// Runs the few classic BPF instructions [`program`] uses over `pkt` (an IP packet with
    /// EtherType `proto`), as the kernel would; returns the accepted length.
    fn run(prog: &[libc::sock_filter], proto: u16, pkt: &[u8]) -> u32 {
        let mut a = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            let load = |size: usize| -> Option<u32> {
                let at = i.k as usize;
                let b = pkt.get(at..at + size)?;
                Some(b.iter().fold(0u32, |v, &x| (v << 8) | u32::from(x)))
            };
            match code {
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => {
                    a = if i.k == (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32 {
                        u32::from(proto)
                    } else {
                        match load(2) {
                            Some(v) => v,
                            None => return 0,
                        }
                    }
                }
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => match load(1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => match load(4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
            pc += 1;
        }
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .tcp(1, 2, 3, 4)
            .syn()
            .write(&mut out, &[])
            .expect("build");
        out
    }

    #[test]
    fn the_filter_keeps_tcp_with_the_peer_and_every_icmp() {
        let peer = IpAddr::from([203, 0, 113, 20]);
        let server = IpAddr::from([203, 0, 113, 2]);
        let prog = program(&[peer, server]);
        let me = [10, 0, 1, 2];
        assert_eq!(run(&prog, 0x0800, &tcp4(me, [203, 0, 113, 20])), SNAPLEN);
        assert_eq!(run(&prog, 0x0800, &tcp4([203, 0, 113, 2], me)), SNAPLEN);
        assert_eq!(run(&prog, 0x0800, &tcp4(me, [198, 51, 100, 7])), 0);
        let mut icmp = Vec::new();
        PacketBuilder::ipv4([198, 51, 100, 7], me, 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut icmp, &[0; 28])
            .expect("build");
        assert_eq!(run(&prog, 0x0800, &icmp), SNAPLEN);
        let mut udp = Vec::new();
        PacketBuilder::ipv4(me, [203, 0, 113, 20], 64)
            .udp(1, 2)
            .write(&mut udp, b"x")
            .expect("build");
        assert_eq!(run(&prog, 0x0800, &udp), 0);
        // ARP and other EtherTypes never pass.
        assert_eq!(run(&prog, 0x0806, &[0; 28]), 0);
        // IPv6: ICMPv6 always, TCP only when an IPv6 host was asked for.
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[6] = 58;
        assert_eq!(run(&prog, 0x86dd, &v6), SNAPLEN);
        v6[6] = 6;
        assert_eq!(run(&prog, 0x86dd, &v6), 0);
        let prog6 = program(&["2001:db8::1".parse().expect("v6")]);
        assert_eq!(run(&prog6, 0x86dd, &v6), SNAPLEN);
        assert_eq!(run(&prog6, 0x0800, &tcp4(me, [203, 0, 113, 20])), 0);
    }
}
