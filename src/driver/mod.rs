//! One thin loop per command: each feeds the [`crate::core`] machines from [`crate::os`]
//! and hands punched paths to [`crate::transport`].

pub mod connect;
pub mod probe;
pub mod serve;
pub mod tcp_stun;
pub mod udp;

/// The serialised (kebab-case) name of a unit enum value, as `--json` writes it, for the
/// human-readable lines that name the same values.
pub(crate) fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
