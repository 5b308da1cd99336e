//! `punchraw connect` checks that need no network: the up-front privilege check of `--tcp`,
//! flag validation and help. The privilege test drops capabilities with util-linux's
//! `setpriv`, so as root it needs that; otherwise it runs as the unprivileged user it is.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_punchraw");

fn run(prefix: &[&str], args: &[&str]) -> (Option<i32>, String) {
    let mut c = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let out = c.args(args).output().expect("run punchraw");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The server address is never contacted: the check comes before any packet.
const TCP: [&str; 8] = [
    "connect",
    "--tcp",
    "--server",
    "127.0.0.1:9",
    "--session",
    "s",
    "--secret",
    "x",
];

#[test]
fn tcp_without_capabilities_names_exactly_what_is_missing() {
    let root = nix::unistd::geteuid().is_root();
    let prefix: &[&str] = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("PUNCHRAW_REQUIRE_LAB").is_none(),
                "setpriv (util-linux) is required as root"
            );
            eprintln!("skipped: no setpriv to drop capabilities");
            return;
        }
        &[
            "setpriv",
            "--bounding-set",
            "-net_raw",
            "--inh-caps",
            "-net_raw",
        ]
    } else {
        &[]
    };
    let (code, err) = run(prefix, &TCP);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("missing privileges: "), "{err}");
    assert!(
        err.contains("CAP_NET_RAW (for the AF_PACKET socket"),
        "{err}"
    );
    assert!(err.contains("run with sudo"), "{err}");
    if root {
        // Only the one that was dropped is named.
        assert!(!err.contains("CAP_NET_ADMIN"), "{err}");
    }
}

#[test]
fn prime_ttl_is_validated_and_help_explains_tcp() {
    let (code, err) = run(&[], &[&TCP[..], &["--prime-ttl", "0"]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not auto, off or a TTL of 1 to 255"), "{err}");
    let out = Command::new(BIN)
        .args(["connect", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--tcp",
        "--prime-ttl",
        "CAP_NET_ADMIN",
        "--window",
        "--sweep-sockets",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    // The testing knob stays out of the help.
    assert!(!help.contains("start-delay"), "{help}");
}
