//! The NAT lab itself: every kind behaves as named (tools/natlab-selftest.sh),
//! and the Rust harness in tests/common/lab.rs brings labs up and down.

mod common;

use std::process::Command;

use common::lab::{self, Lab, LabOptions, Node};

#[test]
fn natlab_selftest() {
    if !lab::available("natlab selftest") {
        return;
    }
    let out = Command::new("bash")
        .arg(lab::selftest_script())
        .output()
        .expect("run tools/natlab-selftest.sh");
    // Captured by the test harness: shown on failure or with --nocapture.
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "natlab-selftest.sh failed: {}",
        out.status
    );
}

fn ns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn harness_brings_labs_up_and_down_in_parallel() {
    if !lab::available("lab harness") {
        return;
    }
    let threads: Vec<_> = [
        ("port-restricted-cone", Some("full-cone")),
        ("none", None),
        ("symmetric-random", None),
    ]
    .into_iter()
    .map(|(a, b)| {
        std::thread::spawn(move || {
            let lab = Lab::up(a, b).expect("lab available");
            assert!(lab.name().len() <= 10 && lab.name().starts_with('t'));
            assert_eq!(lab.addr("SRV1").to_string(), "203.0.113.1");
            assert_eq!(lab.addr("SRV2").to_string(), "203.0.113.2");
            assert_eq!(lab.addr("NAT_A").to_string(), "203.0.113.10");
            let host_a = if a == "none" {
                "198.51.100.2"
            } else {
                "10.0.1.2"
            };
            assert_eq!(lab.addr("A").to_string(), host_a);
            assert_eq!(lab.info("KIND_A"), Some(a));
            if b.is_some() {
                assert_eq!(lab.addr("B").to_string(), "10.0.2.2");
                assert_eq!(lab.addr("NAT_B").to_string(), "203.0.113.20");
            }
            let out = lab
                .cmd(Node::A, "ip")
                .args(["-4", "-o", "addr", "show", "dev", "eth0"])
                .output()
                .unwrap();
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).contains(host_a));
            // A process left running in the lab is killed by the guard...
            let mut child = lab.spawn(Node::Srv, "sleep", ["30"]);
            assert!(child.try_wait().unwrap().is_none());
            drop(child);
            // ...and one without guard by the lab's teardown.
            let mut orphan = lab.cmd(Node::NatA, "sleep").arg("30").spawn().unwrap();
            let nss: Vec<String> = [Node::Srv, Node::Wan, Node::NatA, Node::A]
                .iter()
                .map(|&n| lab.ns(n))
                .collect();
            assert!(nss.iter().all(|n| ns_exists(n)), "{nss:?}");
            drop(lab);
            assert!(!nss.iter().any(|n| ns_exists(n)), "left behind: {nss:?}");
            let status = orphan.wait().unwrap();
            assert!(
                !status.success(),
                "orphan should have been killed: {status}"
            );
        })
    })
    .collect();
    for t in threads {
        t.join().expect("lab thread");
    }

    // Options reach the NATs.
    let lab = Lab::up_with(LabOptions::new("full-cone").loss_pct(5).udp_timeout_s(7))
        .expect("lab available");
    assert_eq!(lab.info("LOSS"), Some("5"));
    assert_eq!(lab.info("UDP_TIMEOUT"), Some("7"));
    let out = lab
        .cmd(Node::NatA, "sysctl")
        .args(["-n", "net.netfilter.nf_conntrack_udp_timeout"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
}

#[test]
fn harness_brings_up_a_lab_with_a_delay_element() {
    if !lab::available("lab harness with --delay") {
        return;
    }
    let Some(lab) = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("full-cone")
            .delay_ms(15)
            .jitter_ms(5),
    ) else {
        return;
    };
    assert_eq!(lab.info("DELAY"), Some("15/5"));
    assert_eq!(lab.info("REORDER"), Some("0"));
    let nss: Vec<String> = ["dla", "dlb"]
        .iter()
        .map(|s| format!("{}-{s}", lab.name()))
        .collect();
    assert!(nss.iter().all(|n| ns_exists(n)), "{nss:?}");
    let pidfiles: Vec<_> = nss
        .iter()
        .map(|n| std::path::Path::new("/run/natlab").join(format!("{n}.pid")))
        .collect();
    assert!(pidfiles.iter().all(|p| p.exists()), "{pidfiles:?}");
    drop(lab);
    assert!(!nss.iter().any(|n| ns_exists(n)), "left behind: {nss:?}");
    assert!(
        !pidfiles.iter().any(|p| p.exists()),
        "left behind: {pidfiles:?}"
    );

    // Without --delay there is no element.
    let lab = Lab::up("port-restricted-cone", Some("full-cone")).expect("lab available");
    assert_eq!(lab.info("DELAY"), Some("none"));
    assert!(!ns_exists(&format!("{}-dla", lab.name())));
    drop(lab);

    // --delay-b: the sides' elements differ, and each says its own.
    let lab = Lab::up_with(
        LabOptions::new("port-restricted-cone")
            .kind_b("full-cone")
            .delay_ms(15)
            .delay_b_ms(40),
    )
    .expect("lab available");
    assert_eq!(lab.info("DELAY_A"), Some("15"));
    assert_eq!(lab.info("DELAY_B"), Some("40"));
    assert_eq!(lab.info("DELAY"), Some("mixed"));
    assert!(ns_exists(&format!("{}-dlb", lab.name())));
}

/// With `--default-route` a packet from host A to B's private address leaves through NAT A,
/// translated (a step of its sequential counter); without it NAT A drops it untranslated.
#[test]
fn default_route_translates_packets_to_the_peers_private_address() {
    if !lab::available("lab harness with --default-route") {
        return;
    }
    let kind = "symmetric-sequential";
    for routed in [false, true] {
        let opts = LabOptions::new(kind).kind_b(kind);
        let opts = if routed { opts.default_route() } else { opts };
        let Some(lab) = Lab::up_with(opts) else {
            return;
        };
        assert_eq!(
            lab.info("DEFAULT_ROUTE"),
            Some(if routed { "1" } else { "0" })
        );
        let to = format!("echo x > /dev/udp/{}/5000", lab.addr("B"));
        // bash reports the unreachable network of the unrouted case; that is expected.
        let _ = lab.cmd(Node::A, "bash").args(["-c", &to]).output().unwrap();
        let table = lab
            .cmd(Node::NatA, "cat")
            .arg("/proc/net/nf_conntrack")
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        let translated = table
            .lines()
            .any(|l| l.contains("dport=5000") && l.contains("dport=20000"));
        assert_eq!(translated, routed, "routed {routed}:\n{table}");
    }
}

/// A double NAT on both sides (with a router in front of CGN B): the CGNs hold the public
/// addresses, the home NATs' WANs are in 100.64.0.0/10, and every namespace goes away.
#[test]
fn harness_brings_up_double_nats() {
    if !lab::available("lab harness with cgn-* kinds") {
        return;
    }
    let Some(lab) = Lab::up_with(
        LabOptions::new("cgn-block-random")
            .kind_b("cgn-eim-translated")
            .router_b(),
    ) else {
        return;
    };
    assert_eq!(lab.addr("NAT_A").to_string(), "203.0.113.10");
    assert_eq!(lab.addr("NAT_B").to_string(), "203.0.113.20");
    assert_eq!(lab.addr("A").to_string(), "10.0.1.2");
    assert_eq!(lab.addr("CGN_A").to_string(), "100.64.1.1");
    assert_eq!(lab.addr("HOME_B").to_string(), "100.64.2.2");
    let [lo_a, hi_a] = lab.block("BLOCK_A");
    let [lo_b, hi_b] = lab.block("BLOCK_B");
    assert_eq!((hi_a - lo_a + 1, hi_b - lo_b + 1), (512, 512));
    assert!(hi_a < lo_b, "per-side blocks do not overlap");
    let addrs = |node: Node, dev: &str| {
        let out = lab
            .cmd(node, "ip")
            .args(["-4", "-o", "addr", "show", "dev", dev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(addrs(Node::CgnA, "wan0").contains("203.0.113.10/24"));
    assert!(addrs(Node::NatA, "wan0").contains("100.64.1.2/24"));
    assert!(addrs(Node::CgnB, "wan0").contains("203.0.113.20/24"));
    let nss: Vec<String> = [Node::CgnA, Node::NatA, Node::CgnB, Node::NatB]
        .iter()
        .map(|&n| lab.ns(n))
        .collect();
    assert!(nss.iter().all(|n| ns_exists(n)), "{nss:?}");
    drop(lab);
    assert!(!nss.iter().any(|n| ns_exists(n)), "left behind: {nss:?}");
}

/// Hairpinning and background flows through the harness: the options reach `natlab.sh`,
/// the other subscribers' generator runs in its own namespace, and dropping the lab stops it
/// (by its pid file) and removes the namespace, the pid file and its log.
#[test]
fn harness_brings_up_hairpinning_and_background_flows() {
    if !lab::available("lab harness with --hairpin and --background-flows") {
        return;
    }
    let Some(lab) = Lab::up_with(
        LabOptions::new("symmetric-sequential")
            .kind_b("port-restricted-cone")
            .background_flows_a(50)
            .hairpin_b(),
    ) else {
        return;
    };
    assert_eq!(lab.info("BG_FLOWS_A"), Some("50"));
    assert_eq!(lab.info("BG_FLOWS_B"), Some("0"));
    assert_eq!(lab.addr("BG_A").to_string(), "10.0.1.3");
    assert_eq!(lab.addr("SRV_BG").to_string(), "203.0.113.3");
    assert_eq!(lab.info("HAIRPIN_A"), Some("0"));
    assert_eq!(lab.info("HAIRPIN_B"), Some("1"));
    let ns = lab.ns(Node::BgA);
    assert!(ns_exists(&ns), "{ns}");
    assert!(!ns_exists(&format!("{}-bgb", lab.name())));
    let run = std::path::Path::new("/run/natlab");
    let pidfile = run.join(format!("{ns}.pid"));
    let log = run.join(format!("{ns}.log"));
    let pid = std::fs::read_to_string(&pidfile).expect("the generator's pid file");
    let proc_dir = std::path::Path::new("/proc").join(pid.trim());
    let cmdline = std::fs::read(proc_dir.join("cmdline")).expect("the generator runs");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("natlab-bgflows.py"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    // Only NAT B hairpins.
    let rules = |node: Node| {
        let out = lab.cmd(node, "nft").args(["list", "ruleset"]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    assert!(rules(Node::NatB).contains("map hp"));
    assert!(!rules(Node::NatA).contains("map hp"));
    drop(lab);
    assert!(!ns_exists(&ns), "left behind: {ns}");
    assert!(
        !pidfile.exists() && !log.exists(),
        "left behind: {pidfile:?}"
    );
    // The pid may be reused at once by an unrelated process: only ours must be gone.
    let still = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&still).contains("natlab-bgflows.py"),
        "the generator outlived the lab"
    );
}
