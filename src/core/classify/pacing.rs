//! When each request of the classifier is sent again, and how long its silence is waited out.

use super::{Kind, Txn, MAX_BASE_GAP};
use std::time::Duration;

/// Time from a send of `t` to its next send, or (after its last) to giving up on it.
pub(super) fn after_send(t: &Txn, srtt: Option<Duration>, rtt_wait: Duration) -> Duration {
    match srtt {
        // The first request has no RTT to go by: RFC 8489 section 6.2.1's doubling RTO,
        // which also paces retries toward a server that may be down.
        Some(rtt) if t.kind != Kind::Base => {
            if t.sent < t.max_sends {
                copy_gap(rtt)
            } else {
                answer_wait(rtt)
            }
        }
        _ if t.kind == Kind::Base => {
            if t.sent < t.max_sends {
                (t.rto0 * (1u32 << (t.sent - 1).min(8))).min(MAX_BASE_GAP.max(t.rto0))
            } else {
                MAX_BASE_GAP.max(t.rto0).max(rtt_wait)
            }
        }
        _ => {
            if t.sent < t.max_sends {
                t.rto0 * (1u32 << (t.sent - 1))
            } else {
                t.rto0.max(rtt_wait)
            }
        }
    }
}

/// Between copies of a request: half an RTT, so a loss burst shorter than that does not
/// take every copy; at least 10 ms for the same reason on a LAN, at most 250 ms.
pub(super) fn copy_gap(rtt: Duration) -> Duration {
    (rtt / 2).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// After the last copy, how long an answer may take: two RTTs (an RTT of queueing on top of
/// the measured one), and at least one RTT plus 50 ms for a server or path that is slower
/// on this request than on the first.
pub(super) fn answer_wait(rtt: Duration) -> Duration {
    (rtt * 2).max(rtt + Duration::from_millis(50))
}
