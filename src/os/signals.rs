//! Ctrl-C and SIGTERM set a flag that every loop polls, so shutdown runs the normal cleanup
//! paths instead of dying mid-way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs handlers for SIGINT and SIGTERM.
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(Shutdown(flag))
    }

    /// A flag nobody but `trigger` sets; for tests and embedded use.
    pub fn manual() -> Self {
        Shutdown(Arc::new(AtomicBool::new(false)))
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}
