//! NAT lab harness for integration tests: drives `tools/natlab.sh`.
//!
//! ```ignore
//! mod common;
//! use common::lab::{Lab, Node, ChildGuard};
//!
//! let Some(lab) = Lab::up("port-restricted-cone", Some("full-cone")) else { return };
//! let srv = lab.spawn(Node::Srv, "sleep", ["5"]);
//! let out = lab.cmd(Node::A, "true").output().unwrap();
//! assert_eq!(lab.addr("SRV1").to_string(), "203.0.113.1");
//! // the lab's namespaces are removed when `lab` is dropped, also on panic
//! ```
//!
//! Without root, `ip` or `nft` the lab is skipped: `Lab::up` returns `None`
//! after printing "skipped: ..." to stderr, unless `PUNCHRAW_REQUIRE_LAB=1`
//! (as in CI), in which case it panics with the reason.
//!
//! Teardown kills every process found in the lab's namespaces (`ip netns
//! pids`), so never leave the test process's main thread inside one (setns).
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// natlab.sh's exit status for "a lab of that name already exists".
const EXIT_EXISTS: i32 = 3;

/// Serialises `natlab.sh up`/`down` within this test process: parallel test
/// threads then never race on iproute2's first-time setup of /run/netns.
static SCRIPT_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node of the lab topology (see the header of `tools/natlab.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The server, 203.0.113.1 and 203.0.113.2.
    Srv,
    /// Host A behind NAT A.
    A,
    /// Host B behind NAT B (only when the lab has a side B).
    B,
    /// NAT A (or plain router for kind `none`); for the `cgn-*` kinds the home NAT, whose
    /// WAN is in 100.64.0.0/10 (RFC 6598) behind [`Node::CgnA`].
    NatA,
    /// NAT B (for the `cgn-*` kinds the home NAT, behind [`Node::CgnB`]).
    NatB,
    /// The carrier-grade NAT in front of NAT A, holding the public address `NAT_A` (only
    /// with a `cgn-*` kind on side A).
    CgnA,
    /// The carrier-grade NAT in front of NAT B (only with a `cgn-*` kind on side B).
    CgnB,
    /// The "internet" bridge (useful for captures of all WAN traffic on `br0`).
    Wan,
    /// The other subscribers on NAT A's LAN, `BG_A` (only with background flows on side A,
    /// [`LabOptions::background_flows_a`]).
    BgA,
    /// The other subscribers on NAT B's LAN (only with background flows on side B).
    BgB,
}

impl Node {
    /// Suffix of the node's namespace name, `${LAB}-<suffix>`.
    pub fn suffix(self) -> &'static str {
        match self {
            Node::Srv => "srv",
            Node::A => "a",
            Node::B => "b",
            Node::NatA => "nata",
            Node::NatB => "natb",
            Node::CgnA => "cgna",
            Node::CgnB => "cgnb",
            Node::Wan => "wan",
            Node::BgA => "bga",
            Node::BgB => "bgb",
        }
    }
}

/// Parameters of `natlab.sh up`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabOptions {
    /// Kind of NAT A, e.g. `"port-restricted-cone"` (`natlab.sh kinds`).
    pub kind_a: String,
    /// Kind of NAT B; `None` for a lab with side A only.
    pub kind_b: Option<String>,
    /// Percentage (0-100) of forwarded packets each NAT drops, both ways.
    pub loss_pct: u8,
    /// `nf_conntrack_udp_timeout{,_stream}` inside the NATs, in seconds.
    pub udp_timeout_s: Option<u32>,
    /// A router hop between the "internet" and NAT B (`--router-b`).
    pub router_b: bool,
    /// One-way delay in ms of the delay element on each NAT's uplink, both
    /// directions (`--delay MS`); `None`: no element at all.
    pub delay_ms: Option<u32>,
    /// Uniform jitter in ms, +-, with `delay_ms` (`--delay MS/JITTER`).
    pub jitter_ms: u32,
    /// NAT B's uplink delays this instead of `delay_ms` (`--delay-b MS`): the two peers at
    /// different distances from the server.
    pub delay_b_ms: Option<u32>,
    /// Let the jitter reorder frames (`--reorder`).
    pub reorder: bool,
    /// Each side's public NAT routes unknown destinations (the other side's private LAN
    /// among them) out to the server, which drops them (`--default-route`): a probe of a
    /// peer's private address then takes a mapping, as behind a NAT with a default route.
    pub default_route: bool,
    /// NAT A loops LAN packets to its own public address back to the internal endpoint
    /// holding the port (`--hairpin a`; RFC 4787 section 6).
    pub hairpin_a: bool,
    /// The same for NAT B (`--hairpin b`).
    pub hairpin_b: bool,
    /// Other subscribers behind NAT A open this many new UDP flows per second
    /// (`--background-flows-a RATE`, 1-1000); 0: none.
    pub background_flows_a: u32,
    /// The same behind NAT B (`--background-flows-b RATE`).
    pub background_flows_b: u32,
    /// What an upnp-* kind's miniupnpd serves (`--portmap LIST`: "upnp,natpmp,pcp",
    /// "none", ...); `None`: natlab's default, all three.
    pub portmap: Option<String>,
    /// Dual stack (`--ipv6`): routed IPv6 LANs behind stateful IPv6 firewalls, no NAT66.
    pub ipv6: bool,
    /// With `ipv6`: the NAT kinds also translate IPv6 (`--nat66`, masquerade from ULA LANs).
    pub nat66: bool,
}

impl LabOptions {
    pub fn new(kind_a: &str) -> LabOptions {
        LabOptions {
            kind_a: kind_a.to_string(),
            kind_b: None,
            loss_pct: 0,
            udp_timeout_s: None,
            router_b: false,
            delay_ms: None,
            jitter_ms: 0,
            delay_b_ms: None,
            reorder: false,
            default_route: false,
            hairpin_a: false,
            hairpin_b: false,
            background_flows_a: 0,
            background_flows_b: 0,
            portmap: None,
            ipv6: false,
            nat66: false,
        }
    }

    /// IPv6 beside IPv4 (`--ipv6`; addresses in `info`: "SRV1_V6", "A_V6", ...).
    pub fn ipv6(mut self) -> LabOptions {
        self.ipv6 = true;
        self
    }

    /// IPv6 translated by every NAT kind (`--nat66`; implies [`LabOptions::ipv6`]).
    pub fn nat66(mut self) -> LabOptions {
        self.ipv6 = true;
        self.nat66 = true;
        self
    }

    /// What the upnp-* kinds' router serves (`--portmap LIST`).
    pub fn portmap(mut self, list: &str) -> LabOptions {
        self.portmap = Some(list.to_string());
        self
    }

    /// Hairpinning on NAT A (`--hairpin a`).
    pub fn hairpin_a(mut self) -> LabOptions {
        self.hairpin_a = true;
        self
    }

    /// Hairpinning on NAT B (`--hairpin b`).
    pub fn hairpin_b(mut self) -> LabOptions {
        self.hairpin_b = true;
        self
    }

    /// `rate` new UDP flows per second of other subscribers behind NAT A, so that a
    /// sequential NAT's counter moves between the host's own flows.
    pub fn background_flows_a(mut self, rate: u32) -> LabOptions {
        self.background_flows_a = rate;
        self
    }

    /// The same behind NAT B.
    pub fn background_flows_b(mut self, rate: u32) -> LabOptions {
        self.background_flows_b = rate;
        self
    }

    /// A delay element on each NAT's uplink: `ms` one way, each direction
    /// (the RTT from a host to the server grows by `2 * ms`).
    pub fn delay_ms(mut self, ms: u32) -> LabOptions {
        self.delay_ms = Some(ms);
        self
    }

    /// NAT B's uplink delays `ms` one way instead (with [`LabOptions::delay_ms`] for A's).
    pub fn delay_b_ms(mut self, ms: u32) -> LabOptions {
        self.delay_b_ms = Some(ms);
        self
    }

    /// Jitter (uniform, +-`ms`) of the delay set with [`LabOptions::delay_ms`].
    pub fn jitter_ms(mut self, ms: u32) -> LabOptions {
        self.jitter_ms = ms;
        self
    }

    /// Let the jitter reorder frames (without it a frame never leaves before
    /// the one before it in the same direction).
    pub fn reorder(mut self) -> LabOptions {
        self.reorder = true;
        self
    }

    /// See [`LabOptions::default_route`].
    pub fn default_route(mut self) -> LabOptions {
        self.default_route = true;
        self
    }

    /// `delay_ms(ms)` unless `ms` is 0, which leaves the lab without a delay element.
    pub fn delay_ms_if_any(self, ms: u32) -> LabOptions {
        if ms == 0 {
            self
        } else {
            self.delay_ms(ms)
        }
    }

    pub fn router_b(mut self) -> LabOptions {
        self.router_b = true;
        self
    }

    pub fn kind_b(mut self, kind_b: &str) -> LabOptions {
        self.kind_b = Some(kind_b.to_string());
        self
    }

    pub fn loss_pct(mut self, pct: u8) -> LabOptions {
        self.loss_pct = pct;
        self
    }

    pub fn udp_timeout_s(mut self, secs: u32) -> LabOptions {
        self.udp_timeout_s = Some(secs);
        self
    }
}

impl Default for LabOptions {
    fn default() -> LabOptions {
        LabOptions::new("port-restricted-cone")
    }
}

/// A running lab; its namespaces (and any process left in them) are removed
/// on drop.
#[derive(Debug)]
pub struct Lab {
    name: String,
    kind_a: String,
    kind_b: Option<String>,
    ip: PathBuf,
    /// `natlab.sh info` output: SRV1, SRV2, A, NAT_A, A_GW, A_NET, KIND_A, ...
    info: HashMap<String, String>,
}

/// Path of `tools/natlab.sh`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/natlab.sh")
}

/// Path of `tools/natlab-selftest.sh`.
pub fn selftest_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/natlab-selftest.sh")
}

/// Finds an executable in PATH or, as natlab.sh does, in /usr/sbin and /sbin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Why the lab cannot run on this machine, or `None` when it can.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("NAT lab needs root".to_string());
    }
    for tool in ["ip", "nft", "bash"] {
        if find_program(tool).is_none() {
            return Some(format!("NAT lab needs `{tool}` (not found)"));
        }
    }
    if !script().is_file() {
        return Some(format!("{} is missing", script().display()));
    }
    None
}

/// True when the lab can run.  Otherwise prints "skipped: WHAT: reason" to
/// stderr and returns false, or panics when `PUNCHRAW_REQUIRE_LAB=1`.
pub fn available(what: &str) -> bool {
    match unavailable_reason() {
        None => true,
        Some(reason) => skip(what, &reason),
    }
}

/// Why a lab with a delay element (`--delay`) cannot run here, beyond
/// [`unavailable_reason`]: natlab.sh runs the element with `python3` and
/// turns checksum offload off with `ethtool`.
pub fn delay_unavailable_reason() -> Option<String> {
    ["python3", "ethtool"]
        .into_iter()
        .find(|tool| find_program(tool).is_none())
        .map(|tool| format!("NAT lab with --delay needs `{tool}` (not found)"))
}

/// Prints "skipped: WHAT: REASON" and returns false, or panics when
/// `PUNCHRAW_REQUIRE_LAB=1`.
fn skip(what: &str, reason: &str) -> bool {
    if std::env::var("PUNCHRAW_REQUIRE_LAB").as_deref() == Ok("1") {
        panic!("{what}: {reason} (and PUNCHRAW_REQUIRE_LAB=1)");
    }
    eprintln!("skipped: {what}: {reason}");
    false
}

fn lock_scripts() -> std::sync::MutexGuard<'static, ()> {
    // A panic elsewhere while holding the lock does not make the lab unusable.
    SCRIPT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// "t" + pid % 100000 (5 digits) + per-process counter: at most 10 chars,
/// as natlab.sh requires (^[a-z][a-z0-9]{0,9}$).
fn next_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 10_000;
    format!("t{:05}{}", std::process::id() % 100_000, n)
}

fn run_script(args: &[&str]) -> std::io::Result<Output> {
    Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
}

impl Lab {
    /// A lab with NAT A of `kind_a` and, if given, NAT B of `kind_b`.
    pub fn up(kind_a: &str, kind_b: Option<&str>) -> Option<Lab> {
        let mut opts = LabOptions::new(kind_a);
        opts.kind_b = kind_b.map(str::to_string);
        Lab::up_with(opts)
    }

    /// A lab with all options; see [`LabOptions`].
    pub fn up_with(opts: LabOptions) -> Option<Lab> {
        let what = format!(
            "NAT lab {}{}",
            opts.kind_a,
            opts.kind_b
                .as_deref()
                .map(|b| format!(" + {b}"))
                .unwrap_or_default()
        );
        if !available(&what) {
            return None;
        }
        if opts.delay_ms.is_some() || opts.delay_b_ms.is_some() {
            if let Some(reason) = delay_unavailable_reason() {
                skip(&what, &reason);
                return None;
            }
        }
        let ip = find_program("ip").expect("checked by available()");

        let loss = opts.loss_pct.to_string();
        let timeout = opts.udp_timeout_s.map(|t| t.to_string());
        let delay = opts.delay_ms.map(|d| format!("{d}/{}", opts.jitter_ms));
        let delay_b = opts.delay_b_ms.map(|d| format!("{d}/{}", opts.jitter_ms));
        let hairpin = match (opts.hairpin_a, opts.hairpin_b) {
            (true, true) => Some("both"),
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            (false, false) => None,
        };
        let bg = [
            ("--background-flows-a", opts.background_flows_a),
            ("--background-flows-b", opts.background_flows_b),
        ]
        .map(|(flag, rate)| (flag, rate.to_string(), rate > 0));
        // A name can be taken by a lab another process left behind (same
        // pid modulo 100000): take the next one then.
        for _attempt in 0..20 {
            let name = next_name();
            let mut args = vec!["up", "--name", name.as_str(), "--loss", loss.as_str()];
            if let Some(t) = &timeout {
                args.extend(["--udp-timeout", t.as_str()]);
            }
            if opts.router_b {
                args.push("--router-b");
            }
            if opts.default_route {
                args.push("--default-route");
            }
            if let Some(d) = &delay {
                args.extend(["--delay", d.as_str()]);
                if opts.reorder {
                    args.push("--reorder");
                }
            }
            if let Some(d) = &delay_b {
                args.extend(["--delay-b", d.as_str()]);
            }
            if let Some(h) = hairpin {
                args.extend(["--hairpin", h]);
            }
            for (flag, rate, on) in &bg {
                if *on {
                    args.extend([*flag, rate.as_str()]);
                }
            }
            if let Some(p) = &opts.portmap {
                args.extend(["--portmap", p.as_str()]);
            }
            if opts.nat66 {
                args.push("--nat66");
            } else if opts.ipv6 {
                args.push("--ipv6");
            }
            args.push(&opts.kind_a);
            if let Some(b) = &opts.kind_b {
                args.push(b);
            }
            let out = {
                let _guard = lock_scripts();
                run_script(&args)
            }
            .unwrap_or_else(|e| panic!("running {}: {e}", script().display()));
            if out.status.code() == Some(EXIT_EXISTS) {
                continue;
            }
            if !out.status.success() {
                panic!(
                    "natlab.sh {} failed ({}):\n{}{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // From here on Drop tears the lab down, also if `info` panics.
            let mut lab = Lab {
                name,
                kind_a: opts.kind_a.clone(),
                kind_b: opts.kind_b.clone(),
                ip,
                info: HashMap::new(),
            };
            lab.info = lab.read_info();
            return Some(lab);
        }
        panic!("natlab.sh up: no free lab name after 20 attempts");
    }

    fn read_info(&self) -> HashMap<String, String> {
        let out = run_script(&["info", "--name", &self.name])
            .unwrap_or_else(|e| panic!("natlab.sh info: {e}"));
        assert!(
            out.status.success(),
            "natlab.sh info --name {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The lab's name (prefix of its namespaces).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind_a(&self) -> &str {
        &self.kind_a
    }

    pub fn kind_b(&self) -> Option<&str> {
        self.kind_b.as_deref()
    }

    /// Name of the node's network namespace.  Panics for side B nodes of a
    /// lab without side B, and for a CGN node of a side without one.
    pub fn ns(&self, node: Node) -> String {
        if matches!(node, Node::B | Node::NatB | Node::CgnB) && self.kind_b.is_none() {
            panic!("lab {} has no side B (node {node:?})", self.name);
        }
        let cgn = |kind: Option<&str>| kind.is_some_and(|k| k.starts_with("cgn-"));
        if (node == Node::CgnA && !cgn(Some(&self.kind_a)))
            || (node == Node::CgnB && !cgn(self.kind_b.as_deref()))
        {
            panic!("lab {} has no CGN on that side (node {node:?})", self.name);
        }
        let bg = |key: &str| self.info(key).is_some_and(|r| r != "0");
        if (node == Node::BgA && !bg("BG_FLOWS_A")) || (node == Node::BgB && !bg("BG_FLOWS_B")) {
            panic!(
                "lab {} has no background flows on that side (node {node:?})",
                self.name
            );
        }
        format!("{}-{}", self.name, node.suffix())
    }

    /// Every NAT of the lab (home NATs and CGNs) tracks TCP strictly: conntrack's
    /// `nf_conntrack_tcp_be_liberal` is 0 (the kernel's default, per network namespace), so
    /// a segment outside the window its SYN opened is INVALID and dropped. A TCP punch that
    /// connects here kept one sequence space from its first SYN on. Panics otherwise.
    pub fn assert_strict_tcp_tracking(&self) {
        let cgn = |kind: Option<&str>| kind.is_some_and(|k| k.starts_with("cgn-"));
        let mut nats = vec![Node::NatA];
        nats.extend(self.kind_b.is_some().then_some(Node::NatB));
        nats.extend(cgn(Some(&self.kind_a)).then_some(Node::CgnA));
        nats.extend(cgn(self.kind_b.as_deref()).then_some(Node::CgnB));
        for node in nats {
            let out = self
                .cmd(node, "cat")
                .arg("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
                .output()
                .unwrap_or_else(|e| panic!("read be_liberal in {node:?}: {e}"));
            let v = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                v.trim(),
                "0",
                "lab {}: {node:?} must track TCP strictly (nf_conntrack_tcp_be_liberal=0)",
                self.name
            );
        }
    }

    /// `ip netns exec NS program`: add args, spawn or run it as usual.  The
    /// program keeps the pid of this command (`ip netns exec` execs it).
    pub fn cmd(&self, node: Node, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(&self.ip);
        c.arg("netns").arg("exec").arg(self.ns(node)).arg(program);
        c
    }

    /// Loads `rules` (an `nft -f` script) in `node`; they go with the lab's namespace.
    pub fn nft(&self, node: Node, rules: &str) {
        let mut nft = self
            .cmd(node, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        std::io::Write::write_all(nft.stdin.as_mut().expect("nft stdin"), rules.as_bytes())
            .expect("write nft rules");
        drop(nft.stdin.take());
        assert!(nft.wait().expect("wait nft").success(), "nft failed");
    }

    /// Spawns `program args` in `node`, killed when the guard drops.
    pub fn spawn<I, S>(&self, node: Node, program: impl AsRef<OsStr>, args: I) -> ChildGuard
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.cmd(node, program);
        c.args(args);
        ChildGuard::spawn(&mut c).unwrap_or_else(|e| panic!("spawn in {node:?}: {e}"))
    }

    /// An address from `natlab.sh info`: "SRV1", "SRV2", "A", "B", "NAT_A",
    /// "NAT_B" (also "A_GW", "B_GW").  Panics if the lab has no such key.
    pub fn addr(&self, key: &str) -> Ipv4Addr {
        let v = self
            .info
            .get(key)
            .unwrap_or_else(|| panic!("lab {} has no address {key:?}", self.name));
        v.parse()
            .unwrap_or_else(|e| panic!("lab {}: {key}={v}: {e}", self.name))
    }

    /// An IPv6 address from `natlab.sh info` of a lab made with [`LabOptions::ipv6`]:
    /// "SRV1_V6", "SRV2_V6", "A_V6", "B_V6", "NAT_A_V6", ...
    pub fn addr6(&self, key: &str) -> Ipv6Addr {
        let v = self
            .info
            .get(key)
            .unwrap_or_else(|| panic!("lab {} has no address {key:?}", self.name));
        v.parse()
            .unwrap_or_else(|e| panic!("lab {}: {key}={v}: {e}", self.name))
    }

    /// Any `natlab.sh info` value (e.g. "A_NET", "KIND_A", "LOSS"; with a `cgn-*` kind
    /// also "CGN_A", "HOME_A" and "BLOCK_A").
    pub fn info(&self, key: &str) -> Option<&str> {
        self.info.get(key).map(String::as_str)
    }

    /// The CGN's port block under `key` ("BLOCK_A" or "BLOCK_B", `LO-HI` in `natlab.sh
    /// info`), for the `cgn-*` kinds.  Panics if that side has none.
    pub fn block(&self, key: &str) -> [u16; 2] {
        let v = self
            .info(key)
            .unwrap_or_else(|| panic!("lab {} has no {key:?}", self.name));
        let (lo, hi) = v
            .split_once('-')
            .unwrap_or_else(|| panic!("lab {}: {key}={v}", self.name));
        let port = |p: &str| {
            p.parse()
                .unwrap_or_else(|e| panic!("lab {}: {key}={v}: {e}", self.name))
        };
        [port(lo), port(hi)]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _guard = lock_scripts();
        match run_script(&["down", "--name", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: natlab.sh down --name {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: natlab.sh down --name {}: {e}", self.name),
        }
    }
}

/// Child process guard: on drop, kills the child (by its own pid, SIGKILL)
/// and waits for it.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        cmd.spawn().map(ChildGuard)
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Both fail harmlessly if the child has already been reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
