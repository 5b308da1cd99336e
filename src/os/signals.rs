//! Ctrl-C and SIGTERM set a flag that every loop polls, so shutdown runs the normal cleanup
//! paths instead of dying mid-way. The flag remembers which signal came, so the command can
//! exit with the shell's 128 + signal number once it has cleaned up.

use crate::error::Signal;
use crate::Error;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// 0 while running; afterwards the number of the signal that asked for the stop.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<AtomicUsize>);

impl Shutdown {
    /// Installs handlers for SIGINT and SIGTERM. Should both arrive, the later one is the one
    /// remembered (the handler can only store).
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            // A signal number is positive, so 0 stays free for "not requested".
            signal_hook::flag::register_usize(sig, Arc::clone(&flag), sig as usize)?;
        }
        Ok(Shutdown(flag))
    }

    /// A flag nobody but `trigger` sets; for tests and embedded use.
    pub fn manual() -> Self {
        Shutdown(Arc::new(AtomicUsize::new(0)))
    }

    /// Whether a stop was asked for (a signal came, or `trigger` was called).
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// Which signal asked for the stop; `None` while none has.
    pub fn signal(&self) -> Option<Signal> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n if n == SIGTERM as usize => Some(Signal::Term),
            // SIGINT, and `trigger`, which stands for Ctrl-C.
            _ => Some(Signal::Int),
        }
    }

    /// The error a loop returns when it stops because of the signal; SIGINT when asked
    /// before one came (a loop only asks after [`Shutdown::requested`]).
    pub fn interrupted(&self) -> Error {
        Error::Interrupted {
            signal: self.signal().unwrap_or(Signal::Int),
        }
    }

    /// Requests the stop as Ctrl-C would.
    pub fn trigger(&self) {
        self.trigger_with(Signal::Int)
    }

    /// Requests the stop as `signal` would.
    pub fn trigger_with(&self, signal: Signal) {
        let n = match signal {
            Signal::Int => SIGINT,
            Signal::Term => SIGTERM,
        };
        self.0.store(n as usize, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_signal_and_maps_it_to_the_exit_code() {
        let s = Shutdown::manual();
        assert!(!s.requested());
        assert_eq!(s.signal(), None);
        s.trigger();
        assert!(s.requested());
        assert_eq!(s.interrupted().exit_code(), 130);
        s.trigger_with(Signal::Term);
        assert_eq!(s.signal(), Some(Signal::Term));
        assert_eq!(s.interrupted().exit_code(), 143);
        assert_eq!(s.interrupted().to_string(), "interrupted (SIGTERM)");
    }
}
