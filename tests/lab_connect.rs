//! `punchraw connect` between two hosts behind lab NATs: 1 MiB each way, checked by hash,
//! the second peer started a moment after the first. Needs root; skipped otherwise unless
//! PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{ChildGuard, Lab, LabOptions, Node};
use common::pair::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The one-way delay of the delay element on each NAT's uplink in the tests named "at 40
/// ms": A and B are 80 ms apart one way (160 ms RTT), each 40 ms + 40 ms from the server.
const DELAY_MS: u32 = 40;

/// Tries at [`DELAY_MS`] where the test without delay already does the statistics: enough
/// to show that the pair still works once the path has a real RTT.
const DELAYED_TRIES: u32 = 2;

/// A lab of `kind_a` x `kind_b`, with a delay element of `delay_ms` one way on each NAT's
/// uplink unless it is 0 (then the same lab as `Lab::up`).
fn lab_at(delay_ms: u32, kind_a: &str, kind_b: &str) -> Option<Lab> {
    Lab::up_with(
        LabOptions::new(kind_a)
            .kind_b(kind_b)
            .delay_ms_if_any(delay_ms),
    )
}

/// " at N ms" for messages, empty without delay.
fn at(delay_ms: u32) -> String {
    if delay_ms == 0 {
        String::new()
    } else {
        format!(" at {delay_ms} ms")
    }
}

/// `tries` attempts in one lab; every one must connect with `strategy` and move 1 MiB each
/// way intact.
fn all_connect(kind_a: &str, kind_b: &str, strategy: &str, tries: u32) {
    all_connect_at(0, kind_a, kind_b, strategy, tries)
}

/// [`all_connect`] with `delay_ms` one way on each NAT's uplink.
fn all_connect_at(delay_ms: u32, kind_a: &str, kind_b: &str, strategy: &str, tries: u32) {
    all_connect_in(lab_at(delay_ms, kind_a, kind_b), strategy, tries)
}

/// [`all_connect`] in a lab made already (`None`: skipped).
fn all_connect_in(lab: Option<Lab>, strategy: &str, tries: u32) {
    let Some(lab) = lab else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let what = lab_label(&lab);
    for t in 0..tries {
        let p = pair(&lab, t, "right", MIB, &[]);
        check_connected(&p, strategy, &format!("{what}, try {t}"));
    }
}

/// "KIND_A x KIND_B", with " at N ms" and " (default route)" as the lab has them.
fn lab_label(lab: &Lab) -> String {
    let delay = match lab.info("DELAY") {
        Some("mixed") => format!(
            " at {} ms (A), {} ms (B)",
            lab.info("DELAY_A").unwrap_or("?"),
            lab.info("DELAY_B").unwrap_or("?")
        ),
        Some(d) if d != "none" => format!(" at {d} ms"),
        _ => String::new(),
    };
    let route = if lab.info("DEFAULT_ROUTE") == Some("1") {
        " (default route)"
    } else {
        ""
    };
    format!(
        "{} x {}{delay}{route}",
        lab.kind_a(),
        lab.kind_b().unwrap_or("-")
    )
}

#[test]
fn cone_and_cone_connect_directly() {
    all_connect("port-restricted-cone", "port-restricted-cone", "direct", 10);
}

#[test]
fn full_cone_and_random_symmetric_connect_directly() {
    all_connect("full-cone", "symmetric-random", "direct", 10);
}

#[test]
fn full_cone_and_random_symmetric_connect_directly_at_40_ms() {
    all_connect_at(
        DELAY_MS,
        "full-cone",
        "symmetric-random",
        "direct",
        DELAYED_TRIES,
    );
}

#[test]
fn restricted_cone_and_random_symmetric_connect_directly() {
    all_connect("restricted-cone", "symmetric-random", "direct", 10);
}

#[test]
fn restricted_cone_and_random_symmetric_connect_directly_at_40_ms() {
    all_connect_at(
        DELAY_MS,
        "restricted-cone",
        "symmetric-random",
        "direct",
        DELAYED_TRIES,
    );
}

#[test]
fn sequential_symmetric_connects_by_prediction() {
    all_connect(
        "port-restricted-cone",
        "symmetric-sequential",
        "predict",
        10,
    );
}

#[test]
fn sequential_symmetric_connects_by_prediction_at_40_ms() {
    all_connect_at(
        DELAY_MS,
        "port-restricted-cone",
        "symmetric-sequential",
        "predict",
        DELAYED_TRIES,
    );
}

/// Issue #10: two sequential NATs over UDP. Neither lab NAT routes the other's private
/// address, so the probes of the private candidates move neither counter, which neither side
/// can know: the windows have to meet anyway.
#[test]
fn sequential_and_sequential_connect_by_prediction() {
    all_connect(
        "symmetric-sequential",
        "symmetric-sequential",
        "predict",
        10,
    );
}

/// A socket of a later try may get a local port that an earlier try used toward the same
/// server; the NAT still holds that flow's mapping and gives its old port instead of the
/// counter's next, so a stale port is sampled (the classification sees through one) or
/// registered (connect asks the server first and takes a fresh socket). Host A's ephemeral
/// ports are narrowed to 400 (`PUNCHRAW_TEST_PORTS` overrides) so that it happens in most
/// tries: about one try in 70 failed with the normal range before the fixes, one in ten
/// with this one (9/10 twice); leaving one stale sample out of five still lost 8/10 once
/// (two stale samples); connect's seven samples with two left out: 10/10 four times (9/10
/// with 200 ports), yet 7/10 and 8/10 in eight runs on a later machine (three stale of
/// seven: "random", and a sweep that cannot meet a counter); three left out behind a quiet
/// counter: 157 of 160 tries (each failure the ninth or tenth try; those logged had four
/// stale of seven).
#[test]
fn sequential_pair_connects_when_local_ports_are_reused() {
    let ports = std::env::var("PUNCHRAW_TEST_PORTS").unwrap_or_else(|_| "45000 45399".into());
    let Some(lab) = lab_at(0, "symmetric-sequential", "symmetric-sequential") else {
        return;
    };
    let st = lab
        .cmd(Node::A, "sysctl")
        .args(["-qw", &format!("net.ipv4.ip_local_port_range={ports}")])
        .status()
        .expect("sysctl");
    assert!(st.success());
    let _srv = common::punchraw_serve_5780(&lab);
    let (tries, mut ok, mut failures) = (10, 0, Vec::new());
    for t in 0..tries {
        // -v: the allocation samples, stale ones among them, are in a failure's lines.
        let p = pair(&lab, t, "right", MIB, &["-v"]);
        if p.a.code == Some(0) && p.b.code == Some(0) && p.data_ok {
            check_connected(&p, "predict", &format!("reused ports, try {t}"));
            ok += 1;
        } else {
            failures.push(format!("try {t}\nA: {}\nB: {}", p.a.stderr, p.b.stderr));
        }
    }
    eprintln!("sequential pair, A's local ports {ports}: {ok}/{tries} connected");
    // A tolerated failure is worth reading too (`--nocapture`).
    if ok >= 9 {
        for f in &failures {
            eprintln!("{f}");
        }
    }
    assert!(ok >= 9, "{ok}/{tries}:\n{}", failures.join("\n---\n"));
}

#[test]
fn sequential_and_sequential_connect_by_prediction_at_40_ms() {
    all_connect_at(
        DELAY_MS,
        "symmetric-sequential",
        "symmetric-sequential",
        "predict",
        10,
    );
}

/// Two sequential NATs with a default route (`--default-route`), as toward an ISP: each
/// probe of the peer's private candidate leaves through the NAT and takes a port of its
/// counter, which neither side can know either.
fn sequential_pair_with_routed_private_candidates(delay_ms: u32) -> Option<Lab> {
    Lab::up_with(
        LabOptions::new("symmetric-sequential")
            .kind_b("symmetric-sequential")
            .default_route()
            .delay_ms_if_any(delay_ms),
    )
}

#[test]
fn sequential_and_sequential_with_routed_private_candidates_connect_by_prediction() {
    all_connect_in(
        sequential_pair_with_routed_private_candidates(0),
        "predict",
        10,
    );
}

#[test]
fn sequential_and_sequential_with_routed_private_candidates_connect_by_prediction_at_40_ms() {
    all_connect_in(
        sequential_pair_with_routed_private_candidates(DELAY_MS),
        "predict",
        10,
    );
}

/// Two sequential NATs, and one flow of another program through A's NAT after A registered
/// and before the punch (A waits for B meanwhile): its counter is one port further than any
/// count of A's own flows says. Which side controls is drawn per run, so the extra flow
/// falls on either role. (Two extra flows would cancel the unrouted private probes, the one
/// case a diagonal window alone meets.)
#[test]
fn sequential_pair_connects_despite_other_flows_before_the_window() {
    sequential_pair_with_one_more_flow(
        lab_at(0, "symmetric-sequential", "symmetric-sequential"),
        5,
    );
}

#[test]
fn sequential_pair_connects_despite_other_flows_before_the_window_at_40_ms() {
    sequential_pair_with_one_more_flow(
        lab_at(DELAY_MS, "symmetric-sequential", "symmetric-sequential"),
        10,
    );
}

/// The same where the private candidates are routed too (one more unknown flow per private
/// probe on each side, besides the foreign one).
#[test]
fn sequential_pair_with_routed_private_candidates_connects_despite_other_flows() {
    sequential_pair_with_one_more_flow(sequential_pair_with_routed_private_candidates(0), 10);
}

/// The same over TCP: every SYN of a window opens a mapping of the sender's own counter too,
/// so one foreign flow after A's prediction used to keep every SYN from crossing (a window of
/// step one on both sides meets only when neither counter moved). In lockstep one pair of
/// SYNs is each other's reverse whichever side controls.
#[test]
fn tcp_sequential_pair_connects_despite_other_flows_before_the_window() {
    let Some(lab) = lab_at(0, "symmetric-sequential", "symmetric-sequential") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..4 {
        let p = pair_between(&lab, t, "right", MIB, &["--tcp"], &[], &|| {
            foreign_flow_after_registration(&lab)
        });
        let what = format!("TCP + 1 flow, try {t}");
        check_connected_over(&p, "tcp", "predict", &what);
        // The foreign flow came after A's prediction: it took the predicted port or a later one.
        let predicted: u32 =
            p.a.stderr
                .rsplit("our next TCP port predicted: ")
                .next()
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("{what}: A predicted no port:\n{}", p.a.stderr));
        let foreign = foreign_flow_port(&lab);
        assert!(
            foreign.is_some_and(|f| f >= predicted),
            "{what}: the foreign flow's port {foreign:?} is before A's predicted {predicted}"
        );
        assert!(
            p.a.stderr.contains("in lockstep") && p.b.stderr.contains("in lockstep"),
            "try {t}: not in lockstep:\n{}\n{}",
            p.a.stderr,
            p.b.stderr
        );
    }
}

/// While A waits for B: one flow of another program through A's NAT, after A's
/// classification and registration (its TCP prediction too, with `--tcp`).
fn foreign_flow_after_registration(lab: &Lab) {
    // After A's classification (whose delta measurement a foreign flow would spoil, which
    // is not the case here): its several sockets are closed and only the rendezvous
    // socket is left.
    let udp_sockets = || {
        let out = lab.cmd(Node::A, "ss").args(["-Huan"]).output().expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // The quick classification may be over between two looks (a few ms in the lab), so
    // what is waited for is one socket left twice in a row.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut ones = 0;
    while std::time::Instant::now() < until && ones < 2 {
        match udp_sockets() {
            1 => ones += 1,
            _ => ones = 0,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ones >= 2, "A's rendezvous socket was never seen alone");
    // And its registration, which follows at once.
    std::thread::sleep(Duration::from_millis(300));
    // The redirection opens a new UDP socket: a new flow, a new port of the counter.
    let st = lab
        .cmd(Node::A, "bash")
        .args(["-c", "echo x > /dev/udp/203.0.113.1/9"])
        .status()
        .expect("bash");
    assert!(st.success());
}

/// The latest port NAT A gave a [`foreign_flow_after_registration`].
fn foreign_flow_port(lab: &Lab) -> Option<u32> {
    let table = lab
        .cmd(Node::NatA, "cat")
        .arg("/proc/net/nf_conntrack")
        .output()
        .expect("conntrack table");
    String::from_utf8_lossy(&table.stdout)
        .lines()
        .filter(|l| l.contains("dport=9 "))
        .filter_map(|l| {
            l.rsplit("dport=")
                .next()?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max()
}

/// `tries` of [`sequential_pair_connects_despite_other_flows_before_the_window`] in `lab`
/// (two sequential NATs).
fn sequential_pair_with_one_more_flow(lab: Option<Lab>, tries: u32) {
    let Some(lab) = lab else {
        return;
    };
    let label = lab_label(&lab);
    let _srv = common::punchraw_serve_5780(&lab);
    let other_flows = || foreign_flow_after_registration(&lab);
    for t in 0..tries {
        let p = pair_between(&lab, t, "right", MIB, &[], &[], &other_flows);
        let what = format!("{label} + 1 flow, try {t}");
        check_connected(&p, "predict", &what);
        // The foreign flow did come after A's registration: NAT A gave it a later port than
        // the one B was told.
        let registered: u32 =
            p.b.stderr
                .split("peer 203.0.113.10:")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("{what}: B did not name A's port:\n{}", p.b.stderr));
        let foreign = foreign_flow_port(&lab);
        assert!(
            foreign.is_some_and(|f| f > registered),
            "{what}: the foreign flow's port {foreign:?} is not past A's registered {registered}"
        );
    }
}

#[test]
fn random_symmetric_connects_by_sweep() {
    sweep_connects_in_95_percent(&[]);
}

#[test]
fn random_symmetric_connects_by_sweep_at_40_ms() {
    sweep_connects_at(DELAY_MS, DELAYED_TRIES, &[]);
}

/// A port-restricted cone and a random-port symmetric NAT: 20 tries by sweep, at least 95%
/// connected with the data intact.
fn sweep_connects_in_95_percent(extra: &[&str]) {
    sweep_connects_at(0, 20, extra)
}

/// [`sweep_connects_in_95_percent`] with `delay_ms` one way on each NAT's uplink and `tries`
/// tries.
fn sweep_connects_at(delay_ms: u32, tries: u32, extra: &[&str]) {
    let Some(lab) = lab_at(delay_ms, "port-restricted-cone", "symmetric-random") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in 0..tries {
        let p = pair(&lab, t, "right", MIB, extra);
        assert_eq!(p.a.report["strategy"], "sweep", "{}", p.a.stderr);
        if p.a.code == Some(0) && p.b.code == Some(0) && p.data_ok {
            ok += 1;
        } else {
            failures.push(format!("A: {}\nB: {}", p.a.stderr, p.b.stderr));
        }
    }
    assert!(
        ok * 100 >= tries * 95,
        "{ok}/{tries} connected; failures:\n{}",
        failures.join("\n---\n")
    );
}

#[test]
fn random_symmetric_on_both_sides_fails_cleanly() {
    random_on_both_sides_fails_cleanly(0);
}

#[test]
fn random_symmetric_on_both_sides_fails_cleanly_at_40_ms() {
    random_on_both_sides_fails_cleanly(DELAY_MS);
}

fn random_on_both_sides_fails_cleanly(delay_ms: u32) {
    let Some(lab) = lab_at(delay_ms, "symmetric-random", "symmetric-random") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", 1024, &["--punch-budget", "3"]);
    for s in [&p.a, &p.b] {
        if s.code == Some(0) {
            continue; // connecting anyway is allowed
        }
        assert_eq!(s.code, Some(8), "{}", s.stderr);
        assert!(
            s.stderr
                .contains("both NATs are symmetric with random ports"),
            "{}",
            s.stderr
        );
        assert_eq!(s.report["connected"], false);
        assert!(
            s.report["error"]
                .as_str()
                .is_some_and(|e| e.contains("punching failed")),
            "{:#}",
            s.report
        );
    }
}

#[test]
fn cones_connect_through_10_percent_loss() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .loss_pct(10),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair(&lab, t, "right", MIB, &[]);
        // A classification answer lost 10% of the time each way may leave the mapping
        // unknown, and the strategy is then the prediction (which covers this pair too).
        check_connected(&p, "direct|predict", &format!("10% loss, try {t}"));
    }
}

#[test]
fn cones_connect_through_20_percent_loss() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .loss_pct(20),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair(&lab, t, "right", MIB, &[]);
        // A classification answer lost 20% of the time each way may leave the mapping
        // unknown, and the strategy is then the prediction (which covers this pair too).
        check_connected(&p, "direct|predict", &format!("20% loss, try {t}"));
    }
}

/// Two sequential NATs that predict each other, 40 ms from the server each and 5% loss on
/// each: a window flow's first packet lost before its NAT used to shift every later flow's
/// port (4 of 12 failed). The TCP punch has its own test below.
#[test]
fn sequential_pair_connects_through_5_percent_loss_at_40_ms() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-sequential")
            .kind_b("symmetric-sequential")
            .delay_ms(40)
            .loss_pct(5),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..5 {
        let p = pair(&lab, t, "right", MIB, &[]);
        // A lost classification answer may leave a NAT's allocation unknown: a sweep then.
        check_connected(&p, "predict|sweep", &format!("5% loss, try {t}"));
    }
}

/// The same pair over TCP. An attempt's first SYN lost before the NAT shifted the later
/// attempts' ports as the UDP flows' did, and about one try in three failed; the raw engine
/// now sends each first SYN twice behind a sequential NAT (10 of 10 in the lab afterwards).
/// Three of four tries must connect directly: the loss may still take both copies, or a
/// classification answer, and then the try is relayed or fails, which this test is not about.
#[test]
fn tcp_sequential_pair_connects_through_5_percent_loss_at_40_ms() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-sequential")
            .kind_b("symmetric-sequential")
            .delay_ms(40)
            .loss_pct(5),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let mut direct = Vec::new();
    for t in 0..4 {
        let p = pair(&lab, t, "right", MIB, &["--tcp"]);
        let ok = [&p.a, &p.b].iter().all(|s| {
            s.code == Some(0) && s.report["transport"] == "tcp" && s.report["path"] == "direct"
        }) && p.data_ok;
        if !ok {
            eprintln!(
                "TCP try {t} did not connect directly:\nA: {}\nB: {}",
                p.a.stderr, p.b.stderr
            );
        }
        direct.push(ok);
    }
    let n = direct.iter().filter(|&&ok| ok).count();
    assert!(
        n >= 3,
        "only {n} of 4 TCP tries connected directly: {direct:?}"
    );
}

/// Two port-restricted cones with a delay element of 40 ms each way on each NAT's uplink:
/// A and B are 80 ms apart one way (160 ms RTT), each 40 ms + 40 ms from the server.
fn cones_with_40_ms_delay() -> Option<Lab> {
    Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .delay_ms(40),
    )
}

#[test]
fn cones_connect_through_40_ms_delay() {
    let Some(lab) = cones_with_40_ms_delay() else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair(&lab, t, "right", MIB, &[]);
        check_connected(&p, "direct", &format!("40 ms delay, try {t}"));
    }
}

#[test]
fn tcp_cones_connect_through_40_ms_delay() {
    let Some(lab) = cones_with_40_ms_delay() else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair(&lab, t, "right", MIB, &["--tcp"]);
        check_connected_over(&p, "tcp", "direct", &format!("TCP, 40 ms delay, try {t}"));
    }
}

#[test]
fn wrong_secret_fails_with_authentication_error() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "wrong", 1024, &["--punch-budget", "2"]);
    for s in [&p.a, &p.b] {
        assert_eq!(s.code, Some(7), "{}", s.stderr);
        assert!(
            s.stderr.contains("peer authentication failed"),
            "{}",
            s.stderr
        );
    }
}

#[test]
fn lone_peer_is_told_the_other_never_came() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &["--alternate", "203.0.113.2", "--wait-timeout", "3"]);
    let out = lab
        .cmd(Node::A, BIN)
        .args([
            "connect",
            "--server",
            "203.0.113.1",
            "--session",
            "alone",
            "--secret",
            "s",
            "-q",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run connect");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("never came"));
}

/// No nft table of punchraw's is left in either host's namespace.
fn all_connect_tcp(kind_a: &str, kind_b: &str, strategy: &str, tries: u32) {
    all_connect_tcp_at(0, kind_a, kind_b, strategy, tries)
}

/// [`all_connect_tcp`] with `delay_ms` one way on each NAT's uplink.
fn all_connect_tcp_at(delay_ms: u32, kind_a: &str, kind_b: &str, strategy: &str, tries: u32) {
    let Some(lab) = lab_at(delay_ms, kind_a, kind_b) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..tries {
        let p = pair(&lab, t, "right", MIB, &["--tcp"]);
        check_connected_over(
            &p,
            "tcp",
            strategy,
            &format!("TCP {kind_a} x {kind_b}{}, try {t}", at(delay_ms)),
        );
    }
}

/// `--syn-engine ENGINE` (#11). `raw`, the default: crafted SYNs from one port with one
/// sequence number, the connection continued by a TCP_REPAIR socket; `kernel`: a kernel
/// socket per attempt. Both through NATs that track TCP strictly (checked by `pair`).
fn all_connect_tcp_engine(
    engine: &str,
    delay_ms: u32,
    kind_a: &str,
    kind_b: &str,
    strategy: &str,
    tries: u32,
) {
    let Some(lab) = lab_at(delay_ms, kind_a, kind_b) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..tries {
        let p = pair(&lab, t, "right", MIB, &["--tcp", "--syn-engine", engine]);
        let what = format!("{engine} TCP {kind_a} x {kind_b}{}, try {t}", at(delay_ms));
        check_connected_over(&p, "tcp", strategy, &what);
        for (n, s, kind) in [("A", &p.a, kind_a), ("B", &p.b, kind_b)] {
            // A NAT that kept our port lets the TCP prediction run beside the UDP
            // classification; a counter shared by both must see them one after the other.
            let beside = s.stderr.contains("measured beside the UDP classification");
            assert_eq!(
                beside,
                kind.contains("cone"),
                "{what}: {n} ({kind}) predicted TCP at the wrong time:\n{}",
                s.stderr
            );
            // The router request for the reserved port, unused then, is kept to the end:
            // stopping it waited out SSDP's 2 s on the way to the punch.
            assert!(
                !beside || !s.stderr.contains("stopped while asking the router"),
                "{what}: {n} stopped the unused router request on its way to the punch:\n{}",
                s.stderr
            );
            let raw = s.stderr.contains("raw SYN engine") && s.stderr.contains("crafted handshake");
            assert_eq!(
                raw,
                engine == "raw",
                "{what}: {n} used the other engine:\n{}",
                s.stderr
            );
        }
    }
}

#[test]
fn tcp_raw_cone_and_cone_connect_directly() {
    all_connect_tcp_engine(
        "raw",
        0,
        "port-restricted-cone",
        "port-restricted-cone",
        "direct",
        3,
    );
}

#[test]
fn tcp_raw_cone_and_sequential_connect_by_prediction() {
    all_connect_tcp_engine(
        "raw",
        0,
        "port-restricted-cone",
        "symmetric-sequential",
        "predict",
        3,
    );
}

#[test]
fn tcp_raw_cone_and_cone_connect_directly_at_40_ms() {
    all_connect_tcp_engine(
        "raw",
        DELAY_MS,
        "port-restricted-cone",
        "port-restricted-cone",
        "direct",
        DELAYED_TRIES,
    );
}

/// Peers at different distances from the server -- A 5 ms one way from it, B 120 ms, so
/// 250 ms apart. The raw engine repeats SYNs after the round trip between the peers, which
/// both server RTTs give (`rendezvous::peer_rtt`); taken as twice its own server RTT, the
/// near peer repeated every ~25 ms and the far one waited ~490 ms, and the far one's hop
/// measurement ran ~120 ms past the agreed start, where the near peer's first SYN was
/// already on its way to the far NAT.
#[test]
fn tcp_raw_peers_at_different_distances_pace_syns_by_the_path_between_them() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("port-restricted-cone")
            .delay_ms(5)
            .delay_b_ms(120),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let between = 2 * (5 + 120);
    for t in 0..2 {
        let p = pair(&lab, t, "right", MIB, &["--tcp", "--syn-engine", "raw"]);
        let what = format!("raw TCP, A 5 ms and B 120 ms from the server, try {t}");
        check_connected_over(&p, "tcp", "direct", &what);
        for (n, s) in [("A", &p.a), ("B", &p.b)] {
            let pace: u64 = s
                .stderr
                .split("repeated after ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("{what}: {n} did not say its pace:\n{}", s.stderr));
            assert!(
                (between..between + 100).contains(&pace),
                "{what}: {n} repeats SYNs after {pace} ms, the peers being {between} ms apart:\n{}",
                s.stderr
            );
            let sent = s.report["syns_sent"].as_u64().unwrap_or(u64::MAX);
            eprintln!("{what}: {n} sent {sent} SYNs");
        }
    }
}

#[test]
fn tcp_raw_cone_and_random_connect_by_sweep() {
    // The cone side probes with crafted SYNs, the random side sprays with kernel sockets.
    sweep_connects_at(0, 5, &["--tcp", "--syn-engine", "raw"]);
}

/// A raw-engine TCP pair (1 KiB each way, B 300 ms after A) with A's capture, which
/// [`Captured::tshark`] reads; `None` (the test skipped) without tshark.
struct Captured {
    pair: Pair,
    cap: std::path::PathBuf,
    _dir: Dir,
}

impl Captured {
    /// tshark's output for `args` over the capture; it must run cleanly.
    fn tshark(&self, args: &[&str]) -> String {
        let o = Command::new("tshark")
            .arg("-r")
            .arg(&self.cap)
            .args(args)
            .output()
            .expect("run tshark");
        assert!(o.status.success(), "tshark {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn raw_pair_captured(lab: &Lab, tag: &str) -> Option<Captured> {
    if common::lab::find_program("tshark").is_none() {
        eprintln!("skipped: tshark not installed");
        return None;
    }
    let _srv = common::punchraw_serve_5780(lab);
    let dir = Dir::new(&format!("{}-{tag}", lab.name()));
    let cap = dir.0.join("a.pcap");
    let cap_arg = cap.to_str().expect("a UTF-8 temp path");
    let pair = pair_sides(
        lab,
        0,
        "right",
        1024,
        [
            &["--tcp", "--syn-engine", "raw"],
            &["--capture", cap_arg],
            &[],
        ],
        &|| std::thread::sleep(Duration::from_millis(300)),
    );
    Some(Captured {
        pair,
        cap,
        _dir: dir,
    })
}

/// #11: the raw engine's sweep as `--capture` shows it: every crafted SYN toward the peer
/// leaves from the one punch port with the one sequence number of the socket that finishes
/// the handshake, to many ports of the peer, and tshark finds nothing to warn about.
#[test]
fn tcp_raw_sweep_capture_shows_one_port_and_one_sequence() {
    let Some(lab) = lab_at(0, "port-restricted-cone", "symmetric-random") else {
        return;
    };
    let Some(c) = raw_pair_captured(&lab, "capture") else {
        return;
    };
    let (p, tshark) = (&c.pair, |args: &[&str]| c.tshark(args));
    assert_eq!(p.a.report["strategy"], "sweep", "{}", p.a.stderr);
    // The server's addresses carry the probe's own connections, not the sweep.
    let syns = tshark(&[
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
        "-Y",
        "tcp.flags.syn==1 && tcp.flags.ack==0 && ip.src==10.0.1.2 \
         && ip.dst!=203.0.113.1 && ip.dst!=203.0.113.2",
        "-T",
        "fields",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.seq",
        "-e",
        "tcp.dstport",
    ]);
    let rows: Vec<Vec<&str>> = syns.lines().map(|l| l.split('\t').collect()).collect();
    let distinct = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert!(
        distinct(2) >= 10,
        "the sweep reached only {} ports:\n{syns}\n{}",
        distinct(2),
        p.a.stderr
    );
    assert_eq!(distinct(0), 1, "SYNs from more than one port:\n{syns}");
    assert_eq!(
        distinct(1),
        1,
        "SYNs with more than one sequence number:\n{syns}"
    );
    // No descriptor per candidate: the raw socket, the held port and one repaired socket per
    // handshake, and a handshake needs the peer's SYN or SYN-ACK from that port. A hit
    // answered while the first connection authenticates adds one (more of them on a busy
    // machine, where TLS takes longer); a socket per SYN sent would add one per port swept.
    // The report counts the SYNs the watcher saw up to the connection, which may be a few
    // less than the capture holds at the end; the sweep's size was checked above.
    let answered = tshark(&[
        "-Y",
        "tcp.flags.syn==1 && ip.dst==10.0.1.2 && ip.src!=203.0.113.1 && ip.src!=203.0.113.2",
        "-T",
        "fields",
        "-e",
        "tcp.srcport",
    ]);
    let answered = answered
        .lines()
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let (sockets, sent) = (
        p.a.report["punch_sockets"].as_u64().unwrap_or(u64::MAX),
        p.a.report["syns_sent"].as_u64().unwrap_or(0),
    );
    assert!(
        sockets <= 2 + answered && sent >= 10 && answered < distinct(2) as u64,
        "{sockets} sockets and {sent} SYNs reported for {} SYNs to {} ports captured, \
         SYN or SYN-ACK from {answered} of the peer's ports",
        rows.len(),
        distinct(2)
    );
    // Where a SYN-ACK of the peer's finished a handshake, the socket that continues it was
    // made before the handshake's third segment left: its window probe (a pure ACK one
    // sequence number before) comes first. Sent the other way round, the peer's first data
    // could arrive before the socket existed and be lost to our RST, and TLS waited out a
    // retransmission timeout.
    let isn: u64 = rows
        .first()
        .and_then(|r| r.get(1))
        .and_then(|s| s.parse().ok())
        .expect("the SYNs' sequence number");
    let synacks = tshark(&[
        "-Y",
        "tcp.flags.syn==1 && tcp.flags.ack==1 && ip.dst==10.0.1.2 \
         && ip.src!=203.0.113.1 && ip.src!=203.0.113.2",
        "-T",
        "fields",
        "-e",
        "tcp.srcport",
    ]);
    let acks = tshark(&[
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
        "-Y",
        "tcp.flags==0x010 && tcp.len==0 && ip.src==10.0.1.2 \
         && ip.dst!=203.0.113.1 && ip.dst!=203.0.113.2",
        "-T",
        "fields",
        "-e",
        "tcp.dstport",
        "-e",
        "tcp.seq",
    ]);
    for port in synacks.lines().collect::<std::collections::BTreeSet<_>>() {
        let seqs: Vec<u64> = acks
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(p, _)| *p == port)
            .filter_map(|(_, s)| s.parse().ok())
            .collect();
        if let Some(third) = seqs.iter().position(|&s| s == isn + 1) {
            assert!(
                seqs[..third].contains(&isn),
                "the third segment to port {port} left before its socket's window probe: \
                 pure ACKs' sequence numbers {seqs:?} (ISN {isn})"
            );
        }
    }
    // Nothing malformed or out of sequence in what we crafted. A repeat that crossed the
    // peer's ACK on a busy machine (a spurious retransmission, answered with a D-SACK) is
    // timing, not a fault of the packets.
    let warnings = tshark(&["-q", "-z", "expert,warn"]);
    let timing = |l: &str| {
        let l = l.to_ascii_lowercase();
        l.contains("d-sack") || l.contains("retransmission")
    };
    let faults: Vec<&str> = warnings
        .lines()
        .filter(|l| l.contains("  ") && l.trim().starts_with(char::is_numeric) && !timing(l))
        .collect();
    assert!(
        faults.is_empty(),
        "tshark warns about the capture:\n{warnings}"
    );
}

/// A host whose link is narrower than Ethernet's (MTU 1400: a tunnel, a container network):
/// the crafted SYNs announce the MSS the kernel's own would, the link's MTU less 40. With
/// Ethernet's 1460 the peer sent full-size segments that A's link dropped without a word
/// (no ICMP: the router before it forwarded them), and a 1 MiB stream toward A stalled for
/// good. The exchange here is short so that such a stall cannot hang the test; the MSS is
/// what it checks.
#[test]
fn tcp_raw_syns_announce_the_mss_of_a_narrow_link() {
    let Some(lab) = lab_at(0, "port-restricted-cone", "port-restricted-cone") else {
        return;
    };
    let mtu = lab
        .cmd(Node::A, "ip")
        .args(["link", "set", "dev", "eth0", "mtu", "1400"])
        .status()
        .expect("run ip");
    assert!(mtu.success(), "cannot set A's MTU");
    let Some(c) = raw_pair_captured(&lab, "mtu") else {
        return;
    };
    let p = &c.pair;
    check_connected_over(p, "tcp", "direct", "MTU 1400 at A");
    let mss = c.tshark(&[
        "-Y",
        "tcp.flags.syn==1 && ip.src==10.0.1.2 && ip.dst!=203.0.113.1 && ip.dst!=203.0.113.2",
        "-T",
        "fields",
        "-e",
        "tcp.options.mss_val",
    ]);
    assert!(
        !mss.trim().is_empty() && mss.lines().all(|l| l.trim() == "1360"),
        "MSS of A's SYNs and SYN-ACKs to the peer (1360 expected):\n{mss}\n{}",
        p.a.stderr
    );
}

/// #11: the TLS client (B, which joined second) sends its hello in its SYNs to the predicted
/// port, and the peer (A) takes it: A's SYN-ACK acknowledges B's SYN and its data, so A's
/// answer to the hello leaves with it. B also sends the hello right behind its SYN-ACK to
/// A's SYN (A may not have taken it), not a round trip later when A's SYN-ACK shows ours
/// arrived: in B's capture at 40 ms one way, that data leaves before any segment of A's
/// that acknowledges B's SYN.
#[test]
fn tcp_raw_tls_client_speaks_in_its_syn_and_with_its_answer_to_the_peers_syn() {
    if common::lab::find_program("tshark").is_none() {
        eprintln!("skipped: tshark not installed");
        return;
    }
    let Some(lab) = lab_at(40, "port-restricted-cone", "port-restricted-cone") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = Dir::new(&format!("{}-early", lab.name()));
    let cap = dir.0.join("b.pcap");
    let cap_arg = cap.to_str().expect("a UTF-8 temp path");
    let p = pair_sides(
        &lab,
        0,
        "right",
        1024,
        [
            &["--tcp", "--syn-engine", "raw"],
            &[],
            &["--capture", cap_arg],
        ],
        &|| std::thread::sleep(Duration::from_millis(300)),
    );
    check_connected_over(&p, "tcp", "direct", "raw TCP at 40 ms");
    let frame = |filter: &str| -> Option<u64> {
        let o = Command::new("tshark")
            .arg("-r")
            .arg(&cap)
            .args(["-Y", filter, "-T", "fields", "-e", "frame.number"])
            .output()
            .expect("run tshark");
        assert!(o.status.success(), "tshark {filter}: {o:?}");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
    };
    let fields = |filter: &str, f: &[&str]| -> Vec<u64> {
        let mut c = Command::new("tshark");
        c.arg("-r").arg(&cap).args(["-Y", filter, "-T", "fields"]);
        for f in f {
            c.args(["-e", f]);
        }
        let o = c.output().expect("run tshark");
        assert!(o.status.success(), "tshark {filter}: {o:?}");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .map(|l| {
                l.split('\t')
                    .filter_map(|v| v.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        p.b.stderr.contains("carry our TLS ClientHello"),
        "B did not put its hello in its SYNs:\n{}",
        p.b.stderr
    );
    // The peer is A's NAT; the server's two addresses carry other connections.
    let syn = fields(
        "ip.src==10.0.2.2 && ip.dst==203.0.113.10 && tcp.flags.syn==1 && tcp.flags.ack==0",
        &["tcp.seq_raw", "tcp.len"],
    );
    let synack = fields(
        "ip.src==203.0.113.10 && ip.dst==10.0.2.2 && tcp.flags.syn==1 && tcp.flags.ack==1",
        &["tcp.ack_raw"],
    );
    let [isn, len] = syn[..] else {
        panic!("no SYN of B's to the peer in its capture: {syn:?}");
    };
    assert!(len > 0, "B's SYN carried no data:\n{}", p.b.stderr);
    assert_eq!(
        synack.first().copied(),
        Some((isn + 1 + len) % (1 << 32)),
        "A's SYN-ACK does not acknowledge B's SYN and its {len} bytes"
    );
    let data = frame("ip.src==10.0.2.2 && ip.dst==203.0.113.10 && tcp.len>0 && tcp.flags.syn==0")
        .expect("B's first data to the peer in its capture");
    let confirmation = frame("ip.src==203.0.113.10 && ip.dst==10.0.2.2 && tcp.flags.ack==1")
        .expect("the peer's SYN-ACK or ACK in B's capture");
    assert!(
        data < confirmation,
        "B's first data (frame {data}) waited for the peer's confirmation (frame {confirmation}):\n{}",
        p.b.stderr
    );
}

/// A peer on kernel sockets ignores the hello in B's SYN (Linux drops the data of a SYN in a
/// simultaneous open): its SYN-ACK acknowledges the SYN alone, and B's socket sends the hello
/// again as ordinary data. At 40 ms one way, where the SYNs cross.
#[test]
fn tcp_raw_hello_in_the_syn_is_sent_again_to_a_peer_that_ignores_it() {
    let Some(lab) = lab_at(40, "port-restricted-cone", "port-restricted-cone") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair_sides(
        &lab,
        0,
        "right",
        MIB,
        [
            &["--tcp"],
            &["--syn-engine", "kernel"],
            &["--syn-engine", "raw"],
        ],
        &|| std::thread::sleep(Duration::from_millis(300)),
    );
    check_connected_over(&p, "tcp", "direct", "kernel A, raw B at 40 ms");
    assert!(p.data_ok, "data differs");
    assert!(
        p.b.stderr.contains("carry our TLS ClientHello"),
        "B did not put its hello in its SYNs:\n{}",
        p.b.stderr
    );
}

/// The first data segment each way (the TLS ClientHello and the server's flight) lost once
/// in a NAT: a TCP_REPAIR socket has no RTT sample, so its own first retransmission waits
/// the kernel's initial 1 s, where a kernel-engine socket repeats after about three round
/// trips. The raw engine sends a copy of that first segment itself at three round trips
/// (at least 200 ms) while no ACK covers it, and says so.
#[test]
fn tcp_raw_repeats_a_lost_first_data_segment_at_the_round_trip() {
    let Some(lab) = lab_at(0, "port-restricted-cone", "port-restricted-cone") else {
        return;
    };
    // Only the first matching segment draws 0 from the counter: dropped once per NAT.
    for (nat, peer) in [(Node::NatA, "203.0.113.20"), (Node::NatB, "203.0.113.10")] {
        let rule = format!(
            "insert rule ip natlab forward ip daddr {peer} tcp flags & (syn | rst) == 0 \
             ip length > 120 numgen inc mod 1000000 0 counter drop"
        );
        let o = lab.cmd(nat, "nft").arg(&rule).output().expect("run nft");
        assert!(o.status.success(), "{rule}: {o:?}");
    }
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", MIB, &["--tcp", "--syn-engine", "raw"]);
    check_connected_over(&p, "tcp", "direct", "first data lost once each way");
    assert!(
        p.a.stderr.contains("sent it again") || p.b.stderr.contains("sent it again"),
        "no copy of the lost first data:\nA:\n{}\nB:\n{}",
        p.a.stderr,
        p.b.stderr
    );
}

/// The peer's SYN-ACK lost once each way, from a peer that spoke right behind it (the TLS
/// server answering the hello our SYN carried, or the client): only its data gets through,
/// acknowledging our SYN, and the engine finishes the handshake from it. Lost between our NAT
/// and us (as on a lossy LAN or radio link), our NAT's tracking is in SYN_RECV and drops the
/// peer's repeated SYNs, while the peer's NAT, which saw its data, drops repeated SYN-ACKs;
/// lost before our NAT, our NAT is still in SYN_SENT and drops our ACKs until we answer the
/// peer's repeated SYN. Before, the first case failed ("no SYN got through" on one side, a TLS
/// timeout on the other; 1 bench run in 10 at 5% loss per NAT), and finishing from the data
/// without answering that SYN left the second one hanging.
#[test]
fn tcp_raw_finishes_the_handshake_from_data_when_the_peers_syn_ack_was_lost() {
    // Behind the NATs' tracking (the forward hook runs after it): the first SYN-ACK from the
    // peer toward our host, or the first one our host sends toward the peer.
    for (case, iface, dir) in [
        ("behind our NAT", "lan0", "saddr"),
        ("before it", "wan0", "daddr"),
    ] {
        let Some(lab) = lab_at(0, "port-restricted-cone", "port-restricted-cone") else {
            return;
        };
        for (nat, peer) in [(Node::NatA, "203.0.113.20"), (Node::NatB, "203.0.113.10")] {
            let rule = format!(
                "insert rule ip natlab forward oifname \"{iface}\" ip {dir} {peer} \
                 tcp flags & (syn | ack) == syn | ack numgen inc mod 1000000 0 counter drop"
            );
            let o = lab.cmd(nat, "nft").arg(&rule).output().expect("run nft");
            assert!(o.status.success(), "{rule}: {o:?}");
        }
        let _srv = common::punchraw_serve_5780(&lab);
        let p = pair(
            &lab,
            0,
            "right",
            MIB,
            &["--tcp", "--syn-engine", "raw", "-v"],
        );
        check_connected_over(&p, "tcp", "direct", &format!("first SYN-ACK lost {case}"));
        assert!(p.data_ok, "{case}: data differs");
    }
}

/// The path dies under a busy TLS stream (both NATs drop everything between the peers from
/// then on, as when an uplink goes or a NAT forgets the binding): both sides end with exit 9
/// once their data has gone unacknowledged for the QUIC stream's idle timeout (30 s,
/// TCP_USER_TIMEOUT), not after the kernel's ~15 minutes of retransmissions (tcp_retries2),
/// which is what a side with data in flight waited before.
#[test]
fn tcp_stream_ends_when_the_path_dies() {
    let Some(lab) = lab_at(0, "port-restricted-cone", "port-restricted-cone") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let (_dir, sides) = common::relay::endless_pair(&lab, "tcpdies", &["--tcp"]);
    cut_between_peers(&lab, "");
    let cut = Instant::now();
    for (name, mut c) in sides {
        let (code, stderr) = c.0.wait_with_output_ref();
        let took = cut.elapsed();
        let stderr = String::from_utf8_lossy(&stderr);
        assert_eq!(code, Some(9), "{name}: {stderr}");
        // 30 s and the retransmission in flight then (backed off to a few seconds at most).
        assert!(
            took < Duration::from_secs(90),
            "{name} took {took:?}: {stderr}"
        );
    }
}

/// Each NAT drops what it would forward between the two peers' public addresses and matches
/// `what` (an nft match such as "meta l4proto tcp"; empty: everything).
fn cut_between_peers(lab: &Lab, what: &str) {
    for (nat, peer) in [(Node::NatA, "203.0.113.20"), (Node::NatB, "203.0.113.10")] {
        for dir in ["saddr", "daddr"] {
            let rule = format!("insert rule ip natlab forward ip {dir} {peer} {what} drop");
            let o = lab.cmd(nat, "nft").arg(&rule).output().expect("run nft");
            assert!(o.status.success(), "{rule}: {o:?}");
        }
    }
}

/// Two peers behind one NAT that does not hairpin (many do not; RFC 4787 REQ-9): host A and
/// another host on its LAN, or both on host A (someone trying the tool out). UDP found the
/// peer at its LAN candidate all along; the TCP punch aimed only at the peer's public
/// endpoint, our own NAT's address, and failed behind every kind of NAT (exit 8). It now
/// also punches to the peer's LAN address when the peer registered from our public address,
/// and the LAN path carries the stream.
#[test]
fn peers_behind_one_nat_connect_over_their_lan() {
    let other = [Node::A, Node::BgA];
    let cases: [(&str, &[&str], [Node; 2]); 6] = [
        (
            "port-restricted-cone",
            &["--tcp", "--syn-engine", "raw"],
            other,
        ),
        (
            "port-restricted-cone",
            &["--tcp", "--syn-engine", "kernel"],
            other,
        ),
        ("symmetric-sequential", &["--tcp"], other),
        ("symmetric-random", &["--tcp"], other),
        ("symmetric-random", &[], other),
        ("symmetric-random", &["--tcp"], [Node::A, Node::A]),
    ];
    let mut lab: Option<(&str, Lab)> = None;
    for (t, (kind, extra, nodes)) in (0..).zip(cases) {
        if lab.as_ref().is_none_or(|(k, _)| *k != kind) {
            // The other host on A's LAN exists with background flows (one a second here).
            drop(lab.take());
            let Some(l) = Lab::up_with(LabOptions::new(kind).background_flows_a(1)) else {
                return;
            };
            lab = Some((kind, l));
        }
        let (_, l) = lab.as_ref().expect("a lab");
        let _srv = common::punchraw_serve_5780(l);
        let p = pair_on(l, nodes, t, "right", MIB, [extra, &[], &[]], &|| {
            std::thread::sleep(Duration::from_millis(300))
        });
        let what = format!("{kind} {extra:?} {nodes:?}");
        let transport = if extra.contains(&"--tcp") {
            "tcp"
        } else {
            "udp"
        };
        check_connected_over(&p, transport, "direct|predict|sweep", &what);
        for (n, s) in [("A", &p.a), ("B", &p.b)] {
            let peer = s.report["peer"].as_str().unwrap_or("");
            assert!(
                peer.starts_with("10.0.1."),
                "{what}: {n} went to {peer}, not over the LAN:\n{}",
                s.stderr
            );
        }
    }
}

/// The kernel engine stays tested now that the raw one is the default.
#[test]
fn tcp_kernel_engine_connects_every_kind_of_pair() {
    let cases = [
        ("port-restricted-cone", "port-restricted-cone", "direct"),
        ("port-restricted-cone", "symmetric-sequential", "predict"),
        ("symmetric-sequential", "symmetric-sequential", "predict"),
    ];
    for (a, b, strategy) in cases {
        all_connect_tcp_engine("kernel", 0, a, b, strategy, 2);
    }
    all_connect_tcp_engine(
        "kernel",
        DELAY_MS,
        "port-restricted-cone",
        "port-restricted-cone",
        "direct",
        2,
    );
    sweep_connects_at(0, 3, &["--tcp", "--syn-engine", "kernel"]);
    // The sweep at a counter: the counter side's few probes as kernel sockets, kept open.
    mostly_connect(
        "cgn-block-random",
        "symmetric-sequential",
        &["--tcp", "--syn-engine", "kernel"],
        "tcp",
        "sweep",
        3,
        2,
    );
}

/// The kernel engine with the NATs that answer early SYNs (RST, ICMP) and with low-TTL
/// priming, one try each (the raw engine's tests above take three). Two random NATs are
/// the same for both engines: both sides spray from fresh ports, which is the kernel's.
#[test]
fn tcp_kernel_engine_through_hostile_nats_and_priming() {
    tcp_through_rst_nats("kernel", 0, 1);
    tcp_through_icmp_nats("kernel", 0, 1);
    tcp_low_ttl_priming("kernel", 0, 1, false);
}

#[test]
fn tcp_cone_and_cone_connect_directly() {
    all_connect_tcp("port-restricted-cone", "port-restricted-cone", "direct", 5);
}

#[test]
fn tcp_cone_and_sequential_connect_by_prediction() {
    all_connect_tcp("port-restricted-cone", "symmetric-sequential", "predict", 5);
}

#[test]
fn tcp_cone_and_sequential_connect_by_prediction_at_40_ms() {
    all_connect_tcp_at(
        DELAY_MS,
        "port-restricted-cone",
        "symmetric-sequential",
        "predict",
        DELAYED_TRIES,
    );
}

#[test]
fn tcp_sequential_and_sequential_connect_by_prediction() {
    all_connect_tcp("symmetric-sequential", "symmetric-sequential", "predict", 5);
}

#[test]
fn tcp_sequential_and_sequential_connect_by_prediction_at_40_ms() {
    all_connect_tcp_at(
        DELAY_MS,
        "symmetric-sequential",
        "symmetric-sequential",
        "predict",
        DELAYED_TRIES,
    );
}

#[test]
fn tcp_cone_and_random_connect_by_sweep() {
    sweep_connects_in_95_percent(&["--tcp"]);
}

#[test]
fn tcp_cone_and_random_connect_by_sweep_at_40_ms() {
    sweep_connects_at(DELAY_MS, DELAYED_TRIES, &["--tcp"]);
}

#[test]
fn tcp_random_and_random_fails_cleanly() {
    tcp_random_on_both_sides_fails_cleanly(0);
}

#[test]
fn tcp_random_and_random_fails_cleanly_at_40_ms() {
    tcp_random_on_both_sides_fails_cleanly(DELAY_MS);
}

fn tcp_random_on_both_sides_fails_cleanly(delay_ms: u32) {
    let Some(lab) = lab_at(delay_ms, "symmetric-random", "symmetric-random") else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "right", 1024, &["--tcp", "--punch-budget", "3"]);
    for s in [&p.a, &p.b] {
        if s.code == Some(0) {
            continue; // connecting anyway is allowed
        }
        assert_eq!(s.code, Some(8), "{}", s.stderr);
        assert!(s.stderr.contains("neither NAT"), "{}", s.stderr);
        assert_eq!(s.report["connected"], false);
        assert_eq!(s.report["transport"], "tcp");
    }
}

/// B starts punching this long after the agreed moment, so that A's first SYN (and its
/// retransmission one second later: in the lab the very first ICMP error of a fresh NAT
/// namespace is not sent) reaches B's hostile NAT before B's own SYN has opened it.
const LATE: &str = "1600";

/// A NAT that answers unsolicited SYNs with ICMP port-unreachable keeps its own mapping; only
/// our socket would give up, and the punch drops the error on the host, so the attempt is
/// still there when the peer's SYN arrives: these pairs connect, and A says what it saw.
#[test]
fn tcp_through_nats_that_answer_with_icmp() {
    tcp_through_icmp_nats("raw", 0, 3);
}

#[test]
fn tcp_through_nats_that_answer_with_icmp_at_40_ms() {
    tcp_through_icmp_nats("raw", DELAY_MS, DELAYED_TRIES);
}

fn tcp_through_icmp_nats(engine: &str, delay_ms: u32, tries: u32) {
    let kind = "port-restricted-icmp";
    let Some(lab) = lab_at(delay_ms, kind, kind) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..tries {
        let p = pair_with(
            &lab,
            t,
            "right",
            MIB,
            &["--tcp", "--punch-budget", "8", "--syn-engine", engine],
            &["--start-delay-ms", LATE],
        );
        check_connected_over(
            &p,
            "tcp",
            "direct",
            &format!("{kind}{} try {t}", at(delay_ms)),
        );
        assert!(
            p.a.stderr.contains("ICMP destination unreachable"),
            "A did not report the ICMP error:\n{}",
            p.a.stderr
        );
    }
}

/// A NAT that answers unsolicited SYNs with RST ends the mapping our SYN opened in our own
/// NAT (the RST passes it), so the SYNs must cross in flight. The tool retries, says what it
/// saw, and ends cleanly either way.
#[test]
fn tcp_through_nats_that_answer_with_rst() {
    tcp_through_rst_nats("raw", 0, 3);
}

#[test]
fn tcp_through_nats_that_answer_with_rst_at_40_ms() {
    tcp_through_rst_nats("raw", DELAY_MS, DELAYED_TRIES);
}

fn tcp_through_rst_nats(engine: &str, delay_ms: u32, tries: u32) {
    let kind = "port-restricted-rst";
    let Some(lab) = lab_at(delay_ms, kind, kind) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..tries {
        let p = pair_with(
            &lab,
            t,
            "right",
            MIB,
            &["--tcp", "--punch-budget", "5", "--syn-engine", engine],
            &["--start-delay-ms", LATE],
        );
        assert!(
            p.a.stderr.contains("RST from 203.0.113.20"),
            "A did not report the RST:\n{}",
            p.a.stderr
        );
        for (n, s) in [("A", &p.a), ("B", &p.b)] {
            // Both sides' lines: a TLS failure on one end is often explained on the other.
            assert!(
                matches!(s.code, Some(0) | Some(8)),
                "{kind} try {t}: {n} ended with {:?}:\nA:\n{}\nB:\n{}",
                s.code,
                p.a.stderr,
                p.b.stderr
            );
            assert_eq!(s.report["transport"], "tcp", "{n}: {:#}", s.report);
            if s.code == Some(8) {
                assert!(
                    s.stderr.contains("answered our SYNs with"),
                    "{n}: {}",
                    s.stderr
                );
                assert_eq!(s.report["connected"], false);
            }
        }
        if p.a.code == Some(0) && p.b.code == Some(0) {
            assert!(p.data_ok, "{kind} try {t}: data differs");
        }
    }
}

/// With a router between the NATs, as on the Internet, `--prime-ttl auto` finds a TTL that
/// opens our NAT but dies at that router, so neither RST-answering NAT ever sees an early SYN:
/// the pair that fails above connects, every time.
#[test]
fn tcp_low_ttl_priming_gets_through_nats_that_answer_with_rst() {
    tcp_low_ttl_priming("raw", 0, 3, false);
}

/// NAT A never answers a TTL that runs out at it (as a NAT that rate-limits its ICMP does
/// once the limit is spent): the first public router past it still gives A its TTL, where
/// A used to give up priming and the two RST-answering NATs reset each other's SYNs for the
/// whole punch.
#[test]
fn tcp_low_ttl_priming_passes_a_nat_of_ours_that_keeps_time_exceeded_to_itself() {
    tcp_low_ttl_priming("raw", 0, 2, true);
}

/// A punch that ends before the peer's first SYN (its NAT refuses ours with RST all along)
/// says in its failure which ports our SYNs went to and which port each answer came from.
#[test]
fn tcp_failure_names_the_ports_syns_went_to_and_answers_came_from() {
    let kind = "port-restricted-rst";
    let Some(lab) = Lab::up(kind, Some(kind)) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair_sides(
        &lab,
        0,
        "right",
        1024,
        [
            &["--tcp"],
            &["--punch-budget", "1"],
            &["--start-delay-ms", "2500"],
        ],
        &|| std::thread::sleep(Duration::from_millis(300)),
    );
    assert_eq!(p.a.code, Some(8), "{}", p.a.stderr);
    for want in [
        "our SYNs went to 1 port(s) of the peer: ".to_string(),
        "RST (from port ".to_string(),
    ] {
        assert!(
            p.a.stderr.contains(&want),
            "no {want:?} in:\n{}",
            p.a.stderr
        );
    }
}

#[test]
fn tcp_low_ttl_priming_gets_through_nats_that_answer_with_rst_at_40_ms() {
    tcp_low_ttl_priming("raw", DELAY_MS, DELAYED_TRIES, false);
}

fn tcp_low_ttl_priming(engine: &str, delay_ms: u32, tries: u32, silent_nat_a: bool) {
    let kind = "port-restricted-rst";
    let Some(lab) = Lab::up_with(
        LabOptions::new(kind)
            .kind_b(kind)
            .router_b()
            .delay_ms_if_any(delay_ms),
    ) else {
        return;
    };
    if silent_nat_a {
        let rules = "table ip quiet {\n chain out {\n  type filter hook output priority filter;\n  oifname \"lan0\" icmp type time-exceeded drop\n }\n}\n";
        lab.nft(Node::NatA, rules);
    }
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..tries {
        let p = pair(
            &lab,
            t,
            "right",
            MIB,
            &["--tcp", "--punch-budget", "8", "--syn-engine", engine],
        );
        check_connected_over(
            &p,
            "tcp",
            "direct",
            &format!("primed {kind}{} ({engine}) try {t}", at(delay_ms)),
        );
        for (n, s) in [("A", &p.a), ("B", &p.b)] {
            assert!(
                s.stderr.contains("low-TTL priming: first SYNs with TTL 2"),
                "{n} did not prime:\n{}",
                s.stderr
            );
        }
        if silent_nat_a {
            assert!(
                p.a.stderr.contains("where hop 1 stayed silent"),
                "A's priming line does not name the silent hop:\n{}",
                p.a.stderr
            );
        }
    }
}

/// A peer that waits for the other redoes its TCP prediction every 20 s: here host A's
/// sequential NAT hands out 60 ports to other flows while A waits, which would put A's next
/// port far outside B's window had A's offer not been refreshed.
#[test]
fn tcp_prediction_is_refreshed_while_waiting() {
    let Some(lab) = Lab::up("symmetric-sequential", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = Dir::new(&format!("{}-refresh", lab.name()));
    for n in ["a", "b"] {
        let seed = u64::from(n.as_bytes()[0]);
        std::fs::write(dir.0.join(format!("{n}.in")), data(seed, 4096)).expect("write");
    }
    let extra = ["--tcp", "--timeout", "60"];
    let mut a = ChildGuard(
        connect_cmd(&lab, Node::A, &dir.0, "a", "refresh", "right", &extra)
            .spawn()
            .expect("start A"),
    );
    std::thread::sleep(Duration::from_secs(2));
    // Each redirection opens a new UDP socket: a new flow, a new port of the NAT's counter.
    let st = lab
        .cmd(Node::A, "bash")
        .args([
            "-c",
            "for i in $(seq 60); do echo x > /dev/udp/203.0.113.1/9; done",
        ])
        .status()
        .expect("bash");
    assert!(st.success());
    std::thread::sleep(Duration::from_secs(21));
    let b = connect_cmd(&lab, Node::B, &dir.0, "b", "refresh", "right", &extra)
        .output()
        .expect("run B");
    let (code_a, err_a) = a.0.wait_with_output_ref();
    let err_a = String::from_utf8_lossy(&err_a);
    let err_b = String::from_utf8_lossy(&b.stderr);
    assert_eq!(code_a, Some(0), "A:\n{err_a}\nB:\n{err_b}");
    assert_eq!(b.status.code(), Some(0), "A:\n{err_a}\nB:\n{err_b}");
    assert_eq!(
        std::fs::read(dir.0.join("a.in")).unwrap(),
        std::fs::read(dir.0.join("b.out")).unwrap()
    );
}

/// `connect --tcp` as a normal user from a binary with file capabilities (`setcap
/// cap_net_admin,cap_net_raw+ep`, as the privilege error suggests): the punch works, and the
/// `nft` it runs gets CAP_NET_ADMIN from it, so the rules go away afterwards too.
#[test]
fn tcp_works_as_a_normal_user_with_file_capabilities() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    for tool in ["setcap", "setpriv"] {
        assert!(
            common::lab::find_program(tool).is_some(),
            "`{tool}` is needed (apt-get install libcap2-bin util-linux)"
        );
    }
    let _srv = common::punchraw_serve_5780(&lab);
    // A directory of ours that the unprivileged user can enter and write to, with a copy of
    // the binary carrying the capabilities (the build's copy stays untouched).
    let dir = Dir::new(&format!("{}-caps", lab.name()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.0.join("punchraw");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let st = Command::new(common::lab::find_program("setcap").unwrap())
        .arg("cap_net_admin,cap_net_raw+ep")
        .arg(&bin)
        .status()
        .expect("setcap");
    assert!(st.success(), "setcap failed");
    for n in ["a", "b"] {
        let f = dir.0.join(format!("{n}.in"));
        std::fs::write(&f, data(n.as_bytes()[0].into(), 64 * 1024)).expect("write");
    }
    let run = |node: Node, n: &str| {
        let mut c = lab.cmd(node, "setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args([
            "connect",
            "--tcp",
            "--server",
            "203.0.113.1",
            "--session",
            "caps",
            "--secret",
            "s",
            "--timeout",
            "30",
        ])
        .arg("--report")
        .arg(dir.0.join(format!("{n}.json")))
        .stdin(std::fs::File::open(dir.0.join(format!("{n}.in"))).expect("input"))
        .stdout(std::fs::File::create(dir.0.join(format!("{n}.out"))).expect("output"))
        .stderr(Stdio::piped());
        c
    };
    let mut a = ChildGuard(run(Node::A, "a").spawn().expect("start A"));
    std::thread::sleep(Duration::from_millis(300));
    let b = run(Node::B, "b").output().expect("run B");
    let (code_a, err_a) = a.0.wait_with_output_ref();
    let err_a = String::from_utf8_lossy(&err_a);
    let err_b = String::from_utf8_lossy(&b.stderr);
    if err_a.contains("missing privileges: CAP_NET_ADMIN") {
        // File capabilities are ignored on a nosuid mount: nothing to test here.
        let nosuid = Command::new("findmnt")
            .args(["-n", "-o", "OPTIONS", "-T"])
            .arg(&dir.0)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("nosuid"))
            .unwrap_or(false);
        assert!(nosuid, "file capabilities not honoured:\n{err_a}");
        eprintln!("skipped: {} is on a nosuid mount", dir.0.display());
        return;
    }
    assert_eq!(code_a, Some(0), "A:\n{err_a}\nB:\n{err_b}");
    assert_eq!(b.status.code(), Some(0), "A:\n{err_a}\nB:\n{err_b}");
    assert_eq!(
        sha(&dir.0.join("a.in")),
        sha(&dir.0.join("b.out")),
        "data A -> B"
    );
    assert_eq!(
        sha(&dir.0.join("b.in")),
        sha(&dir.0.join("a.out")),
        "data B -> A"
    );
    assert_no_punch_rules(&lab);
}

#[test]
fn tcp_wrong_secret_fails_with_authentication_error() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let p = pair(&lab, 0, "wrong", 1024, &["--tcp", "--punch-budget", "2"]);
    for s in [&p.a, &p.b] {
        assert_eq!(s.code, Some(7), "{}", s.stderr);
        assert!(
            s.stderr.contains("peer authentication failed"),
            "{}",
            s.stderr
        );
    }
}

#[test]
fn tcp_sigint_in_the_middle_of_a_punch_leaves_nothing() {
    // A raw-engine sweep: the cone side probes random ports of the peer with crafted SYNs,
    // slowly, toward a random NAT that opened one mapping only, so it is still sweeping.
    tcp_signal_in_the_middle_of_a_punch_leaves_nothing(
        "INT",
        130,
        ["port-restricted-cone", "symmetric-random"],
        [&["--rate", "50"], &["--sweep-sockets", "1"]],
    );
}

#[test]
fn tcp_sigterm_in_the_middle_of_a_punch_leaves_nothing() {
    // Both sides spray kernel sockets from fresh ports.
    tcp_signal_in_the_middle_of_a_punch_leaves_nothing(
        "TERM",
        143,
        ["symmetric-random", "symmetric-random"],
        [&[], &[]],
    );
}

/// Both peers get SIG`sig` in the middle of a TCP punch: each exits `want` (128 + the
/// signal's number) and removes its nft table first.
fn tcp_signal_in_the_middle_of_a_punch_leaves_nothing(
    sig: &str,
    want: i32,
    [kind_a, kind_b]: [&str; 2],
    own: [&[&str]; 2],
) {
    let Some(lab) = Lab::up(kind_a, Some(kind_b)) else {
        return;
    };
    // No TCP gets from one peer to the other, so the punch is still running when the signal
    // comes: a sweep may otherwise hit in its first second (seen once, 20 attempts in).
    cut_between_peers(&lab, "meta l4proto tcp");
    let _srv = common::punchraw_serve_5780(&lab);
    let dir = Dir::new(&format!("{}-{sig}", lab.name()));
    for n in ["a", "b"] {
        std::fs::write(dir.0.join(format!("{n}.in")), b"x").expect("write");
    }
    let mut kids: Vec<ChildGuard> = [(Node::A, "a"), (Node::B, "b")]
        .into_iter()
        .zip(own)
        .map(|((node, n), own)| {
            let mut extra = vec!["--tcp", "--punch-budget", "60", "--timeout", "90"];
            extra.extend_from_slice(own);
            ChildGuard(
                connect_cmd(&lab, node, &dir.0, n, sig, "right", &extra)
                    .spawn()
                    .expect("start connect"),
            )
        })
        .collect();
    // The rules exist while the punch runs (so their absence afterwards means removal): both
    // sides are punching once both have them. How long the rendezvous takes depends on the
    // machine's load, so this waits for them rather than for a fixed time.
    let punching = |node: Node| {
        let tables = lab
            .cmd(node, "nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&tables.stdout).contains("punchraw_")
    };
    let until = Instant::now() + Duration::from_secs(30);
    while !(punching(Node::A) && punching(Node::B)) {
        assert!(Instant::now() < until, "no punch rules within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Into the sweep, not just its first SYN.
    std::thread::sleep(Duration::from_secs(1));
    for k in &kids {
        // `ip netns exec` execs the program, so this is punchraw's own pid.
        let pid = k.0.id();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }
    for (i, k) in kids.iter_mut().enumerate() {
        let (code, err) = k.0.wait_with_output_ref();
        let err = String::from_utf8_lossy(&err);
        assert!(
            err.contains("punching TCP"),
            "not in the punch when interrupted:\n{err}"
        );
        // The prober of a cone x random pair sweeps with the raw engine.
        if i == 0 && kind_a != kind_b {
            assert!(err.contains("raw SYN engine"), "{err}");
        }
        assert_eq!(code, Some(want), "{err}");
        assert!(
            err.contains(&format!("punchraw: interrupted (SIG{sig})")),
            "{err}"
        );
    }
    assert_no_punch_rules(&lab);
    // And the lab's namespaces go with the lab.
    let name = lab.name().to_string();
    drop(kids);
    drop(lab);
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&format!("{name}-"))),
        "namespaces left:\n{left}"
    );
}

/// `tries` attempts in a lab of `kind_a` x `kind_b` with `extra` options; each must use
/// `strategy`, and at least `min_ok` must connect over `transport` and move 1 MiB each way
/// intact.
fn mostly_connect(
    kind_a: &str,
    kind_b: &str,
    extra: &[&str],
    transport: &str,
    strategy: &str,
    tries: u32,
    min_ok: u32,
) {
    mostly_connect_at(0, kind_a, kind_b, extra, transport, strategy, tries, min_ok)
}

/// [`mostly_connect`] with `delay_ms` one way on each NAT's uplink.
#[allow(clippy::too_many_arguments)]
fn mostly_connect_at(
    delay_ms: u32,
    kind_a: &str,
    kind_b: &str,
    extra: &[&str],
    transport: &str,
    strategy: &str,
    tries: u32,
    min_ok: u32,
) {
    let Some(lab) = lab_at(delay_ms, kind_a, kind_b) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in 0..tries {
        let p = pair(&lab, t, "right", MIB, extra);
        let what = format!("{kind_a} x {kind_b}{} {extra:?}, try {t}", at(delay_ms));
        assert_eq!(
            p.a.report["strategy"], strategy,
            "{what}: A {:#}\n{}",
            p.a.report, p.a.stderr
        );
        if p.a.code == Some(0) && p.b.code == Some(0) && p.data_ok {
            check_connected_over(&p, transport, strategy, &what);
            ok += 1;
        } else {
            failures.push(format!("{what}\nA: {}\nB: {}", p.a.stderr, p.b.stderr));
        }
    }
    eprintln!(
        "{kind_a} x {kind_b}{} {extra:?}: {ok}/{tries} connected",
        at(delay_ms)
    );
    assert!(
        ok >= min_ok,
        "{ok}/{tries} connected (want {min_ok}); failures:\n{}",
        failures.join("\n---\n")
    );
}

/// Issue #10: a cone and a carrier-grade NAT with random ports inside a 512-port block
/// (behind it a home NAT, 100.64.0.0/10 between them). The cone's prober draws its ports
/// from the block the CGN side reported, so the sweep finds the mapping far sooner than over
/// the whole port range.
#[test]
fn cone_and_cgn_block_random_connect_by_sweep() {
    mostly_connect(
        "port-restricted-cone",
        "cgn-block-random",
        &[],
        "udp",
        "sweep",
        5,
        4,
    );
}

/// A carrier-grade NAT's random block facing a symmetric NAT with a port counter: the
/// counter side's probes each leave from its counter's next port, so the random side's
/// mappings aim at those ports, and the counter side keeps probing a few ports of the block
/// so that its counter stays among them. Failed every time before (the mappings aimed at the
/// endpoint the counter side registered, which its probes never come from).
#[test]
fn cgn_block_random_and_sequential_symmetric_connect_by_sweep() {
    mostly_connect(
        "cgn-block-random",
        "symmetric-sequential",
        &[],
        "udp",
        "sweep",
        5,
        4,
    );
}

/// The same over TCP: the random side's connections from fresh ports aim at the counter's
/// next ports in turn, the counter side's raw engine keeps half a window of probes of the
/// block open from its one port. Failed every time before (the random side aimed a window
/// from one port, the counter side, with no port of ours to predict, made no attempt).
#[test]
fn tcp_cgn_block_random_and_sequential_symmetric_connect_by_sweep() {
    mostly_connect(
        "cgn-block-random",
        "symmetric-sequential",
        &["--tcp"],
        "tcp",
        "sweep",
        5,
        4,
    );
}

/// The same over TCP.
#[test]
fn tcp_cone_and_cgn_block_random_connect_by_sweep() {
    mostly_connect(
        "port-restricted-cone",
        "cgn-block-random",
        &["--tcp"],
        "tcp",
        "sweep",
        5,
        4,
    );
}

/// A CGN with endpoint-independent mapping whose ports are translated (not the host's) and
/// a random symmetric NAT: the CGN side is reachable at its mapped port, as a cone is.
#[test]
fn cgn_eim_translated_and_random_symmetric_connect_by_sweep() {
    mostly_connect(
        "cgn-eim-translated",
        "symmetric-random",
        &[],
        "udp",
        "sweep",
        5,
        4,
    );
}

/// The same over TCP.
#[test]
fn tcp_cgn_eim_translated_and_random_symmetric_connect_by_sweep() {
    mostly_connect(
        "cgn-eim-translated",
        "symmetric-random",
        &["--tcp"],
        "tcp",
        "sweep",
        5,
        4,
    );
}

/// Issue #10: two carrier-grade NATs that each draw a random port from a 512-port block per
/// new flow. Neither side can be found, so both sweep the other's block from a few sockets
/// (a two-sided birthday sweep); Linux's NAT gives one port to several destinations, so
/// each side makes four times its block in mappings and the sweeps meet in at least 90%
/// of tries.
#[test]
fn cgn_block_random_pair_connects_by_two_sided_sweep() {
    mostly_connect(
        "cgn-block-random",
        "cgn-block-random",
        &[],
        "udp",
        "sweep",
        10,
        9,
    );
}

/// The same over TCP: both sides connect from fresh ports (kernel sockets) to random ports
/// of the other's block until two attempts are each other's reverse. Before, neither side
/// made an attempt (no port of either could be predicted).
#[test]
fn tcp_cgn_block_random_pair_connects_by_two_sided_sweep() {
    mostly_connect(
        "cgn-block-random",
        "cgn-block-random",
        &["--tcp"],
        "tcp",
        "sweep",
        5,
        4,
    );
}

/// The same at 40 ms one way on each uplink.
#[test]
fn cgn_block_random_pair_connects_by_two_sided_sweep_at_40_ms() {
    mostly_connect_at(
        DELAY_MS,
        "cgn-block-random",
        "cgn-block-random",
        &[],
        "udp",
        "sweep",
        DELAYED_TRIES,
        DELAYED_TRIES,
    );
}

#[test]
fn cone_and_cgn_block_random_connect_by_sweep_at_40_ms() {
    mostly_connect_at(
        DELAY_MS,
        "port-restricted-cone",
        "cgn-block-random",
        &[],
        "udp",
        "sweep",
        DELAYED_TRIES,
        DELAYED_TRIES,
    );
}

#[test]
fn tcp_cone_and_cgn_block_random_connect_by_sweep_at_40_ms() {
    mostly_connect_at(
        DELAY_MS,
        "port-restricted-cone",
        "cgn-block-random",
        &["--tcp"],
        "tcp",
        "sweep",
        DELAYED_TRIES,
        DELAYED_TRIES,
    );
}

#[test]
fn cgn_eim_translated_and_random_symmetric_connect_by_sweep_at_40_ms() {
    mostly_connect_at(
        DELAY_MS,
        "cgn-eim-translated",
        "symmetric-random",
        &[],
        "udp",
        "sweep",
        DELAYED_TRIES,
        DELAYED_TRIES,
    );
}

#[test]
fn tcp_cgn_eim_translated_and_random_symmetric_connect_by_sweep_at_40_ms() {
    mostly_connect_at(
        DELAY_MS,
        "cgn-eim-translated",
        "symmetric-random",
        &["--tcp"],
        "tcp",
        "sweep",
        DELAYED_TRIES,
        DELAYED_TRIES,
    );
}

/// Issue #10: other subscribers behind both sequential NATs open new flows (`natlab.sh
/// --background-flows`), so each counter moves between a peer's registration and its window
/// by flows neither side can count. At a few flows a second the lockstep's tolerance (a
/// quarter of `--window` per NAT) covers them, over UDP at 40 ms one way as well.
#[test]
fn sequential_pair_connects_with_other_subscribers_flows() {
    for delay_ms in [0, DELAY_MS] {
        let lab = Lab::up_with(
            LabOptions::new("symmetric-sequential")
                .kind_b("symmetric-sequential")
                .background_flows_a(5)
                .background_flows_b(5)
                .delay_ms_if_any(delay_ms),
        );
        all_connect_in(lab, "predict", 5);
    }
}

/// A first peer kept waiting 2 s for the second behind a sequential NAT whose other
/// subscribers open 30 flows a second: its counter is ~60 flows past its registration when
/// the window opens, beyond what any window tolerates, so the first window cannot meet.
/// Both peers give it up and register again from fresh sockets, a server round trip apart
/// at most, and the second window meets (each try failed before the retries: "no predicted
/// port pair met").
#[test]
fn sequential_pair_registers_again_when_the_first_window_misses() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-sequential")
            .kind_b("symmetric-sequential")
            .background_flows_a(30),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..2 {
        // No router to ask: its wait would keep A from registering until B came.
        let p = pair_between(
            &lab,
            t,
            "right",
            MIB,
            &["--port-mapping", "off"],
            &[],
            &|| std::thread::sleep(Duration::from_secs(2)),
        );
        let what = format!("try {t}");
        check_connected(&p, "predict", &what);
        for (n, s) in [("A", &p.a), ("B", &p.b)] {
            assert!(
                s.report["punch_attempts"].as_u64() >= Some(2),
                "{what}: {n} connected in the first window: {:#}\n{}",
                s.report,
                s.stderr
            );
        }
        assert!(p.a.stderr.contains("registering again"), "{}", p.a.stderr);
    }
}

/// #10: a sequential NAT whose other subscribers open 300 new flows a second moves its
/// counter further between the probe and the punch than a prediction absorbs. Its probe
/// times the counter and calls it random within where it moves; the cone's sweep searches
/// that range and the pair connects, UDP, at 0 and 40 ms.
#[test]
fn cone_connects_to_a_busy_sequential_nat_by_a_sweep_of_its_range() {
    for delay_ms in [0, DELAY_MS] {
        let lab = Lab::up_with(
            LabOptions::new("port-restricted-cone")
                .kind_b("symmetric-sequential")
                .background_flows_b(300)
                .delay_ms_if_any(delay_ms),
        );
        all_connect_in(lab, "sweep", 3);
    }
}

/// A path like the Internet's rather than the lab's: 40 ms one way with +-10 ms of jitter
/// that reorders frames, and 2% random loss on each NAT. Every punching strategy, UDP and
/// TCP, still connects (1 MiB each way by hash) in most tries; what is measured on the path
/// -- RTT samples, observed ports -- has to carry it, not the lab's exact timing.
#[test]
fn pairs_connect_over_a_jittery_lossy_path() {
    let cases: [(&str, &str, &[&str], &str, &str); 4] = [
        (
            "port-restricted-cone",
            "port-restricted-cone",
            &[],
            "udp",
            "direct|predict",
        ),
        (
            "port-restricted-cone",
            "symmetric-sequential",
            &[],
            "udp",
            "predict",
        ),
        (
            "port-restricted-cone",
            "symmetric-random",
            &[],
            "udp",
            "sweep",
        ),
        (
            "port-restricted-cone",
            "symmetric-sequential",
            &["--tcp"],
            "tcp",
            "predict",
        ),
    ];
    for (kind_a, kind_b, extra, transport, strategy) in cases {
        let Some(lab) = Lab::up_with(
            LabOptions::new(kind_a)
                .kind_b(kind_b)
                .delay_ms(DELAY_MS)
                .jitter_ms(10)
                .reorder()
                .loss_pct(2),
        ) else {
            return;
        };
        let _srv = common::punchraw_serve_5780(&lab);
        let mut failures = Vec::new();
        for t in 0..3 {
            let p = pair(&lab, t, "right", MIB, extra);
            let what = format!("{kind_a} x {kind_b} {extra:?} jittery+lossy, try {t}");
            let ok = p.a.code == Some(0) && p.b.code == Some(0);
            if ok {
                check_connected_over(&p, transport, strategy, &what);
            } else {
                failures.push(format!(
                    "{what}: exit {:?}/{:?}\nA: {}\nB: {}",
                    p.a.code, p.b.code, p.a.stderr, p.b.stderr
                ));
            }
        }
        eprintln!(
            "{kind_a} x {kind_b} {extra:?}: {} of 3 failed",
            failures.len()
        );
        assert!(failures.len() <= 1, "{}", failures.join("\n\n"));
    }
}

/// The busy sequential NAT's peer comes 5 s later (#10): by then the counter has moved about
/// 1,500 ports past what the probe saw; the waiting side's registers move the search range
/// along, so the late peer's sweep still finds it.
#[test]
fn a_late_peer_finds_a_busy_counter_where_it_has_moved() {
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-sequential")
            .kind_b("port-restricted-cone")
            .background_flows_a(300),
    ) else {
        return;
    };
    let _srv = common::punchraw_serve_5780(&lab);
    for t in 0..3 {
        let p = pair_between(&lab, t, "right", MIB, &[], &[], &|| {
            std::thread::sleep(Duration::from_secs(5))
        });
        check_connected(&p, "sweep", &format!("busy A, B 5 s late, try {t}"));
    }
}
