//! The layer rules of ARCHITECTURE.md, checked on the source text: which layer may name
//! which, where `unsafe` and `anyhow` may appear, and what the sans-IO core must never do.
//! A rule broken here is a design decision to revisit, not a test to loosen.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Test files (`tests.rs`, anything under a `tests/` folder of a module) may use what the
/// code under test may not, e.g. a real clock as the base of a virtual one.
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
}

/// Code lines of `path` (comment lines dropped: docs may name other layers), with numbers.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

struct Rule {
    /// Files this rule applies to: paths under `src/` that start with one of these.
    under: &'static [&'static str],
    /// Files exempt from it.
    except: &'static [&'static str],
    skip_tests: bool,
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        under: &["core/"],
        except: &[],
        // Tests may use threads (the rate limiter is shared across threads) and sockets.
        skip_tests: true,
        forbidden: &[
            "crate::os",
            "crate::transport",
            "crate::driver",
            "crate::cli",
            "unsafe",
            "libc::",
            "nix::",
            "tokio",
            "std::thread",
            "UdpSocket",
            "TcpStream",
            "TcpListener",
            "anyhow",
        ],
        why: "the core is sans-IO: it depends on nothing above it and touches no OS",
    },
    Rule {
        under: &["core/"],
        except: &[],
        skip_tests: true,
        forbidden: &[
            "Instant::now",
            "SystemTime::now",
            "rand::rng()",
            "rand::random",
            "thread_rng",
        ],
        why:
            "the core takes `now` from its caller and draws randomness only from seeded generators",
    },
    Rule {
        under: &["error.rs"],
        except: &[],
        skip_tests: false,
        forbidden: &[
            "crate::os",
            "crate::transport",
            "crate::driver",
            "crate::cli",
        ],
        why: "the library's error type sits below every layer that returns it",
    },
    Rule {
        under: &["os/"],
        except: &[],
        skip_tests: false,
        forbidden: &["crate::transport", "crate::driver", "crate::cli", "anyhow"],
        why: "os offers primitives to the layers above and names none of them",
    },
    Rule {
        under: &["transport/"],
        except: &[],
        skip_tests: false,
        forbidden: &["crate::driver", "crate::cli", "anyhow", "unsafe", "nix::"],
        why: "a transport runs over a punched path and knows nothing of the commands",
    },
    Rule {
        under: &["driver/"],
        // driver::Status, the one place a status line is printed.
        except: &["driver/mod.rs"],
        skip_tests: false,
        forbidden: &["crate::cli", "unsafe", "nix::", "anyhow", "println!", "eprintln!"],
        why: "drivers are thin loops below the command line: they return crate::Error and say things through driver::Status; unsafe belongs to os",
    },
];

#[test]
fn layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut broken = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        for rule in RULES {
            if !rule.under.iter().any(|u| rel.starts_with(u))
                || rule.except.iter().any(|e| rel.starts_with(e))
                || (rule.skip_tests && is_test_file(Path::new(&rel)))
            {
                continue;
            }
            for (n, line) in code_lines(path) {
                for f in rule.forbidden {
                    // `#[allow(unsafe_code)]`-style attributes name the word without using it.
                    if line.contains(f) && !line.contains("unsafe_code") {
                        broken.push(format!("src/{rel}:{n}: `{f}` ({})", rule.why));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn unsafe_is_allowed_in_os_alone() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "lib.rs denies unsafe"
    );
    assert!(
        lib.contains("#![deny(clippy::undocumented_unsafe_blocks)]"),
        "every unsafe block documents its SAFETY"
    );
    let allows: Vec<&str> = lib
        .lines()
        .filter(|l| l.contains("allow(unsafe_code)"))
        .collect();
    assert_eq!(allows, ["#[allow(unsafe_code)]"], "one allow, on `os`");
    let after = lib
        .split("#[allow(unsafe_code)]")
        .nth(1)
        .expect("the allow")
        .trim_start();
    assert!(
        after.starts_with("pub mod os;"),
        "the allow is on os: {after}"
    );
}

#[test]
fn no_source_file_is_too_long() {
    // Past this a file holds more than one idea; tests are exempt.
    const MAX_LINES: usize = 800;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for path in files.iter().filter(|p| !is_test_file(p)) {
        let text = fs::read_to_string(path).expect("source");
        // Inline `mod tests` blocks at the end count as tests.
        let code = text
            .split("#[cfg(test)]\nmod tests {")
            .next()
            .unwrap_or(&text);
        let n = code.lines().count();
        if n > MAX_LINES {
            long.push(format!("{}: {n} lines", path.display()));
        }
    }
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}
