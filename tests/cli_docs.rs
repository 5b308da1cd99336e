//! The generated shell completions and man pages, as a user installs them (issue #15):
//! produced by the built binary, the bash script parses, every command has a page.

use std::process::Command;

fn punchraw(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_punchraw"))
        .args(args)
        .output()
        .expect("run punchraw");
    assert!(
        out.status.success(),
        "punchraw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn bash_completion_script_parses_and_completes_commands() {
    let script = punchraw(&["completions", "bash"]).stdout;
    let dir = std::env::temp_dir().join(format!("punchraw-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("punchraw.bash");
    std::fs::write(&path, &script).unwrap();
    // Source it and ask it what follows `punchraw co`, as bash's completion would.
    let probe = format!(
        "source {}; COMP_WORDS=(punchraw co); COMP_CWORD=1; COMP_LINE='punchraw co'; COMP_POINT=11; _punchraw punchraw co punchraw; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(words.lines().any(|w| w == "connect"), "{words}");
    assert!(words.lines().any(|w| w == "completions"), "{words}");
}

#[test]
fn man_pages_are_written_for_every_command() {
    let dir = std::env::temp_dir().join(format!("punchraw-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    punchraw(&["man", "--out-dir", dir.to_str().unwrap()]);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        names,
        [
            "punchraw-completions.1",
            "punchraw-connect.1",
            "punchraw-man.1",
            "punchraw-probe.1",
            "punchraw-serve.1",
            "punchraw.1"
        ]
    );
    let page = String::from_utf8(punchraw(&["man"]).stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH punchraw 1"),
        "{page}"
    );
}

/// contrib/punchraw-serve.service: its command line is one the current CLI accepts (a renamed
/// flag would otherwise break every installed unit silently), and it keeps the sandboxing.
#[test]
fn the_systemd_unit_runs_a_valid_serve_command_without_privileges() {
    use clap::Parser;
    let unit = include_str!("../contrib/punchraw-serve.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart= line");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert!(argv[0].ends_with("/punchraw"), "{exec}");
    if let Err(e) = punchraw::cli::args::Cli::try_parse_from(&argv) {
        panic!("the unit's ExecStart does not parse: {e}");
    }
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
}
