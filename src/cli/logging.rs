//! tracing to stderr; stdout is reserved for results (`--json` prints one object there).

use tracing_subscriber::EnvFilter;

/// Sends tracing to stderr at a level set by the count of `-v` (none: warnings, then info,
/// debug, trace), unless `RUST_LOG` sets the filter. A second call changes nothing.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
