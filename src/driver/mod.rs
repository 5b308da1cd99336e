//! One thin loop per command: each feeds the [`crate::core`] machines from [`crate::os`]
//! and hands punched paths to [`crate::transport`].

pub mod connect;
pub mod portmap;
pub mod probe;
pub mod serve;
pub mod tcp_stun;
pub mod udp;

use std::sync::Arc;

/// The serialised (kebab-case) name of a unit enum value, as `--json` writes it, for the
/// human-readable lines that name the same values.
pub(crate) fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where a command's status lines go ("waiting for the peer ...", "capture: 12 packets
/// written ..."): the one place that prints them. The command line picks [`Status::stderr`]
/// or, with `--quiet`, [`Status::silent`]; a program embedding punchraw passes its own sink.
#[derive(Clone)]
pub struct Status {
    out: Option<Arc<Sink>>,
    /// Where [`Status::announce`] goes: also with `--quiet`.
    always: Option<Arc<Sink>>,
}

/// What receives the status lines.
type Sink = dyn Fn(&str) + Send + Sync;

impl Status {
    /// Lines on stderr as `punchraw: LINE`; with `-v` (tracing at info) they go to the log
    /// instead, so they interleave with it in order.
    pub fn stderr() -> Self {
        Status::to(stderr_line)
    }

    /// `--quiet`: nothing is said but what the user must see ([`Status::announce`]).
    pub fn quiet() -> Self {
        Status {
            out: None,
            always: Some(Arc::new(stderr_line)),
        }
    }

    /// Nothing is said.
    pub fn silent() -> Self {
        Status {
            out: None,
            always: None,
        }
    }

    /// Every line goes to `f`.
    pub fn to(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        let f: Arc<Sink> = Arc::new(f);
        Status {
            out: Some(f.clone()),
            always: Some(f),
        }
    }

    /// A line the user must see to go on (a pairing code to read out): said even when the
    /// status lines are not.
    pub fn announce(&self, line: impl AsRef<str>) {
        if let Some(out) = &self.always {
            out(line.as_ref());
        }
    }

    /// A status line for the user ("waiting for the peer ..."); dropped with `--quiet` and
    /// by [`Status::silent`].
    pub fn say(&self, line: impl AsRef<str>) {
        if let Some(out) = &self.out {
            out(line.as_ref());
        }
    }
}

fn stderr_line(line: &str) {
    if tracing::event_enabled!(tracing::Level::INFO) {
        tracing::info!("{line}");
    } else {
        eprintln!("punchraw: {line}");
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.out.is_some() {
            "Status"
        } else {
            "Status(silent)"
        })
    }
}
