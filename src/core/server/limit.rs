//! `--per-source-limit`: a per-source response budget, sans-IO (the caller passes `now`).
//!
//! A generic cell rate algorithm (GCRA, the token bucket written as one timestamp) per
//! source, in a fixed table of buckets indexed by a keyed hash of the source: an IPv4 address,
//! or the /64 prefix of an IPv6 address (one subscriber's network, so a spoofer cannot spread
//! a flood over a victim's 2^64 addresses). The table never grows, so a flood from many
//! (spoofed) sources cannot grow memory; sources that share a bucket share one budget, which
//! only ever lowers what each of them receives. The hash is SipHash keyed from a seed the caller
//! draws at random (sans-IO: no randomness of our own), so an attacker who cannot learn the
//! seed cannot aim collisions at a chosen victim's bucket, and a test's seed reproduces a run.
//!
//! Guarantee, for a budget of `rate` responses per second: in any interval of `t` seconds a
//! source is answered at most `rate * t + rate` times (a sustained `rate` per second and one
//! burst of at most `rate`), whatever and however much is sent in its name.
//!
//! Buckets are atomics, so one limiter can be shared by every socket thread of a server
//! (`Arc<SourceLimiter>`): the budget is per source, not per source and thread.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use siphasher::sip::SipHasher13;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Buckets in the table: 8 bytes each, 512 KiB in all, allocated once when the limit is on.
pub const BUCKETS: usize = 1 << 16;

/// Per-source response budget for `--per-source-limit`: a GCRA (token bucket) per bucket of
/// a fixed table indexed by a keyed hash of the source IPv4 address or IPv6 /64, so a flood
/// from many spoofed sources cannot grow memory. In any `t` seconds a source is allowed at
/// most `rate * t + rate` responses. Sans-IO (the caller passes `now`) and lock-free, so one
/// limiter can be shared by every socket thread of a server.
pub struct SourceLimiter {
    /// Per bucket the GCRA "theoretical arrival time", nanoseconds since `epoch`.
    tat: Box<[AtomicU64]>,
    epoch: Instant,
    /// Nanoseconds per response at the sustained rate, rounded up so the rate is never
    /// exceeded.
    interval: u64,
    /// How far `tat` may run ahead of now: the burst beyond the first response.
    tolerance: u64,
    key: [u64; 2],
    rate: u32,
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter")
            .field("rate", &self.rate)
            .field("buckets", &self.tat.len())
            .finish()
    }
}

impl SourceLimiter {
    /// `rate` responses per second per source (at least 1), with a burst of `rate`. `now` is
    /// the clock's zero; earlier instants count as `now`. `seed` keys the bucket hash: draw it
    /// at random in a server, or collisions with a victim's bucket can be aimed.
    pub fn new(rate: u32, now: Instant, seed: u64) -> Self {
        Self::with_buckets(rate, now, BUCKETS, seed)
    }

    /// As [`new`](Self::new) with a table of `buckets` entries (tests use small tables to
    /// exercise sharing).
    pub fn with_buckets(rate: u32, now: Instant, buckets: usize, seed: u64) -> Self {
        let rate = rate.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let interval = 1_000_000_000u64.div_ceil(u64::from(rate));
        SourceLimiter {
            tat: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            epoch: now,
            interval,
            tolerance: interval * (u64::from(rate) - 1),
            key: [rng.next_u64(), rng.next_u64()],
            rate,
        }
    }

    /// The sustained budget in responses per second per source, after clamping to at least 1.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    fn bucket(&self, ip: IpAddr) -> &AtomicU64 {
        let mut h = SipHasher13::new_with_keys(self.key[0], self.key[1]);
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.octets().hash(&mut h),
            IpAddr::V6(v6) => v6.octets()[..8].hash(&mut h),
        }
        &self.tat[(h.finish() % self.tat.len() as u64) as usize]
    }

    /// Takes one response from `ip`'s budget at `now`; false if the budget is spent.
    pub fn allow(&self, now: Instant, ip: IpAddr) -> bool {
        // Nanoseconds since the epoch fit u64 for 584 years.
        let t = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let cell = self.bucket(ip);
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            // A fresh bucket (tat 0) holds the whole burst: `rate` responses at once.
            if tat > t + self.tolerance {
                return false;
            }
            let next = tat.max(t) + self.interval;
            match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}
