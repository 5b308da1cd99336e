//! Everything that touches the operating system: sockets, capture files, signals, logging.
//! The sans-IO state machines elsewhere in the crate are driven from here.

pub mod capture;
pub mod connect;
pub mod logging;
pub mod mmsg;
pub mod nft;
pub mod packet;
pub mod pin;
pub mod pipe;
pub mod privileges;
pub mod probe;
pub mod probe_tcp;
pub mod quic;
pub mod registry;
pub mod serve;
pub mod signals;
pub mod tcp_punch;
pub mod tcp_stun;
pub mod tls;
pub mod ttl;
pub mod udp;

/// The serialised (kebab-case) name of a unit enum value, as `--json` writes it, for the
/// human-readable lines that name the same values.
pub(crate) fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
