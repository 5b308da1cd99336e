//! `serve --metrics` in the NAT lab (issue #15): the endpoint is scraped while the server
//! runs, and its counters match what happened -- sessions created and introduced, one
//! outcome per pair with the pair's NAT classes, a failure with its reason.
//! Needs root; skipped otherwise unless PUNCHRAW_REQUIRE_LAB=1.

mod common;

use common::lab::{Lab, Node};
use common::pair::{pair, MIB};

const METRICS: &str = "203.0.113.1:9464";

/// One scrape, over plain HTTP from inside the server's namespace (bash's /dev/tcp: no
/// HTTP client needed on the machine).
fn scrape(lab: &Lab) -> String {
    let (host, port) = METRICS.split_once(':').unwrap();
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = lab
        .cmd(Node::Srv, "bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or_default();
    assert!(status.contains(" 200 "), "scrape failed: {text}");
    text
}

/// The sum of the series of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts that the series of `name` with `labels` add up to `want`, showing the scrape if not.
fn expect(text: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    assert_eq!(
        value(text, name, labels),
        want,
        "{name} {labels:?} in:\n{text}"
    );
}

/// Outcomes are sent as soon as the path is settled; give the datagrams a moment.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(300));
}

#[test]
fn metrics_count_a_cone_pair_once_with_its_nat_classes() {
    let Some(lab) = Lab::up("port-restricted-cone", Some("port-restricted-cone")) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &["--alternate", "203.0.113.2", "--metrics", METRICS]);
    let before = scrape(&lab);
    expect(&before, "punchraw_connect_outcomes_total", &[], 0.0);
    let p = pair(&lab, 0, "right", MIB, &[]);
    assert!(
        p.a.code == Some(0) && p.b.code == Some(0) && p.data_ok,
        "A: {}\nB: {}",
        p.a.stderr,
        p.b.stderr
    );
    settle();
    let text = scrape(&lab);
    expect(
        &text,
        "punchraw_rendezvous_sessions_created_total",
        &[],
        1.0,
    );
    expect(&text, "punchraw_rendezvous_introductions_total", &[], 1.0);
    // Both peers report; the server counts the session once.
    expect(&text, "punchraw_connect_outcomes_total", &[], 1.0);
    let want = [
        ("result", "success"),
        ("path", "direct"),
        ("transport", "udp"),
        ("nat_a", "port-restricted-cone"),
        ("nat_b", "port-restricted-cone"),
    ];
    expect(&text, "punchraw_connect_outcomes_total", &want, 1.0);
    // Each side sends its report twice (against loss): the three after the first are not
    // counted.
    expect(&text, "punchraw_connect_outcomes_ignored_total", &[], 3.0);
    // The classifications and the registrations were STUN and rendezvous traffic it saw.
    assert!(
        value(
            &text,
            "punchraw_stun_requests_total",
            &[("endpoint", "primary")]
        ) > 0.0
    );
    assert!(
        value(
            &text,
            "punchraw_stun_requests_total",
            &[("endpoint", "alt-both")]
        ) >= 0.0
    );
}

#[test]
fn metrics_count_a_failed_punch_with_its_reason_and_no_report_outcome_is_heard() {
    let Some(lab) = Lab::up("symmetric-random", Some("symmetric-random")) else {
        return;
    };
    let _srv = common::punchraw_serve(&lab, &["--alternate", "203.0.113.2", "--metrics", METRICS]);
    let fail = ["--relay", "off", "--punch-budget", "2"];
    let p = pair(&lab, 0, "right", MIB, &fail);
    assert_eq!(
        (p.a.code, p.b.code),
        (Some(8), Some(8)),
        "A: {}\nB: {}",
        p.a.stderr,
        p.b.stderr
    );
    settle();
    let text = scrape(&lab);
    let want = [
        ("result", "punch-failed"),
        ("strategy", "sweep"),
        ("path", "none"),
        ("nat_a", "symmetric-random"),
        ("nat_b", "symmetric-random"),
    ];
    expect(&text, "punchraw_connect_outcomes_total", &want, 1.0);
    expect(&text, "punchraw_connect_outcomes_total", &[], 1.0);
    // With --no-report-outcome on both sides the server hears nothing of the next pair.
    let quiet: Vec<&str> = fail
        .iter()
        .copied()
        .chain(["--no-report-outcome"])
        .collect();
    let p = pair(&lab, 1, "right", MIB, &quiet);
    assert_eq!((p.a.code, p.b.code), (Some(8), Some(8)));
    settle();
    let text = scrape(&lab);
    expect(&text, "punchraw_rendezvous_introductions_total", &[], 2.0);
    expect(&text, "punchraw_connect_outcomes_total", &[], 1.0);
}
