//! RFC 5780 section 4.4 filtering: tests II and III, each from two fresh sockets.
//!
//! A local port that an earlier run used toward the server's alternate endpoint within the
//! NAT's timeout (two minutes for Linux's UDP conntrack) still holds that flow's permission,
//! and a port-preserving NAT gives a fresh socket on that port the same public port: the
//! answer to CHANGE-REQUEST then gets through a port-restricted NAT, which reads as open
//! filtering and makes a punch wait for packets the NAT drops (seen in the lab: a
//! port-restricted cone, in about one connect of a few hundred run back to back). Two fresh
//! sockets rarely both hit such a port, so a test counts as answered only when both of its
//! sockets were ([`Classifier::filter_outcome`]). The second socket asks only once the first
//! was answered ([`Classifier::confirm_filter_answer`]): an open NAT's answer comes with the
//! allocation burst's, one RTT later, so it costs no time, and a filtering NAT -- a port
//! counter among them -- sees no flow more than before (a narrowed local port range made
//! stale allocation samples more frequent with every extra flow toward the server).

use super::report::Behavior;
use super::{Classifier, Kind, Outcome, SOCK_B, SOCK_C};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// CHANGE-REQUEST of test II: answer from the other IP and port.
const CHANGE_BOTH: Option<(bool, bool)> = Some((true, true));
/// CHANGE-REQUEST of test III: answer from the other port.
const CHANGE_PORT: Option<(bool, bool)> = Some((false, true));

/// Whether an answer to a filtering test came from the endpoint its CHANGE-REQUEST asked
/// for. Only such an answer counts: a server that ignores CHANGE-REQUEST would otherwise make
/// every NAT look like a full cone.
fn from_changed(test: Kind, server: SocketAddr, from: SocketAddr) -> bool {
    let port_changed = from.port() != server.port();
    match test {
        Kind::FilterIpPort | Kind::FilterIpPortTwin => from.ip() != server.ip() && port_changed,
        Kind::FilterPort | Kind::FilterPortTwin => from.ip() == server.ip() && port_changed,
        _ => false,
    }
}

/// The other socket of the same filtering test ([`Kind::FilterIpPortTwin`]).
fn twin_of(kind: Kind) -> Option<Kind> {
    match kind {
        Kind::FilterIpPort => Some(Kind::FilterIpPortTwin),
        Kind::FilterIpPortTwin => Some(Kind::FilterIpPort),
        Kind::FilterPort => Some(Kind::FilterPortTwin),
        Kind::FilterPortTwin => Some(Kind::FilterPort),
        _ => None,
    }
}

impl Classifier {
    /// Starts both filtering tests, each from its first socket.
    pub(super) fn add_filter_tests(&mut self, now: Instant) {
        let server = self.cfg.server;
        self.add(now, Kind::FilterIpPort, SOCK_B, server, CHANGE_BOTH, None);
        self.add(now, Kind::FilterPort, SOCK_C, server, CHANGE_PORT, None);
    }

    /// A filtering test answered from the changed endpoint: the same request from its
    /// second socket, whose answer must come too for the test to count as answered.
    pub(super) fn confirm_filter_answer(&mut self, now: Instant, kind: Kind, from: SocketAddr) {
        let server = self.cfg.server;
        let [twin_b, twin_c] = self.twin_sockets();
        let (twin, socket, change) = match kind {
            Kind::FilterIpPort => (Kind::FilterIpPortTwin, twin_b, CHANGE_BOTH),
            Kind::FilterPort => (Kind::FilterPortTwin, twin_c, CHANGE_PORT),
            _ => return,
        };
        if from_changed(kind, server, from) {
            self.add(now, twin, socket, server, change, None);
        }
    }

    /// The sockets of [`Kind::FilterIpPortTwin`] and [`Kind::FilterPortTwin`]: just before
    /// the recheck's, the last.
    pub(super) fn twin_sockets(&self) -> [usize; 2] {
        let end = self.recheck_socket();
        [end - 2, end - 1]
    }

    /// Quick mode ([`super::ClassifierConfig::quick`]): a silent filtering test is settled two RTTs
    /// (at least one plus 50 ms) after its first copy once nothing else is pending, and
    /// wakes the caller then.
    pub(super) fn settle_quick(&mut self, now: Instant) {
        let Some(rtt) = self.srtt.filter(|_| self.cfg.quick) else {
            return;
        };
        let others_settled = self
            .txns
            .iter()
            .all(|t| twin_of(t.kind).is_some() || t.outcome != Outcome::Pending);
        for t in &mut self.txns {
            // A twin asks only once its first socket was answered, and silence there decides
            // the verdict against an answer (a stale permission let the first one's in, or
            // every copy but the first one's was lost): it gets all its copies.
            if !matches!(t.kind, Kind::FilterIpPort | Kind::FilterPort)
                || t.outcome != Outcome::Pending
            {
                continue;
            }
            let Some(&(_, first)) = t.ids.first() else {
                continue;
            };
            // Two RTTs, and never less than one RTT plus 50 ms: on a LAN-short path the
            // answer's lateness is the hosts' scheduling, not the path (as in `answer_wait`).
            let due = first + (rtt * 2).max(rtt + Duration::from_millis(50));
            if others_settled && now >= due {
                t.outcome = Outcome::TimedOut;
            } else if due > now {
                t.next = t.next.min(due);
            }
        }
    }

    /// A filtering test's outcome from both of its sockets ([`Kind::FilterIpPortTwin`]): an
    /// answer only when both were answered, silence when either was silent.
    pub(super) fn filter_outcome(&self, test: Kind) -> Option<&Outcome> {
        let one = self.outcome(test);
        let other = twin_of(test).and_then(|t| self.outcome(t));
        match (one, other) {
            (Some(Outcome::Rejected(_)), _) => one,
            (_, Some(Outcome::Rejected(_) | Outcome::TimedOut)) => other,
            _ => one,
        }
    }

    pub(super) fn filtering(
        &self,
        other: Option<SocketAddr>,
        reasons: &mut BTreeMap<&'static str, String>,
    ) -> Behavior {
        let server = self.cfg.server;
        let b = self.filter_outcome(Kind::FilterIpPort);
        let c = self.filter_outcome(Kind::FilterPort);
        match (b, c) {
            (Some(Outcome::Answered { from, .. }), _)
                if from_changed(Kind::FilterIpPort, server, *from) =>
            {
                Behavior::EndpointIndependent
            }
            (Some(Outcome::TimedOut), Some(Outcome::Answered { from, .. }))
                if from_changed(Kind::FilterPort, server, *from) =>
            {
                Behavior::AddressDependent
            }
            (Some(Outcome::TimedOut), Some(Outcome::TimedOut)) if other.is_some() => {
                Behavior::AddressAndPortDependent
            }
            (Some(Outcome::Rejected(code)), _) | (_, Some(Outcome::Rejected(code))) => {
                reasons.insert(
                    "filtering",
                    format!("the server refused CHANGE-REQUEST (error {code}): it has no RFC 5780 alternate address"),
                );
                Behavior::Unknown
            }
            (Some(Outcome::TimedOut), Some(Outcome::TimedOut)) => {
                reasons.insert(
                    "filtering",
                    "the server has no RFC 5780 alternate address and did not answer CHANGE-REQUEST".into(),
                );
                Behavior::Unknown
            }
            _ => {
                reasons.insert(
                    "filtering",
                    "the server answered CHANGE-REQUEST from an unchanged address".into(),
                );
                Behavior::Unknown
            }
        }
    }
}
