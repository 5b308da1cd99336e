//! `serve --metrics ADDR:PORT`: the server's counters in the Prometheus/OpenMetrics text
//! format on `GET /metrics` (issue #15), encoded by `prometheus-client` and served by
//! `tiny_http` on a thread of its own. Every scrape reads the counters the server keeps
//! anyway, so serving metrics adds no work to the packet path. Names start with `punchraw_`;
//! `punchraw_connect_outcomes_total` and its labels are a contract.

use super::{RelayStats, RendezvousService, ServeStats, ServerHandle, Shared, Stop};
use crate::core::rendezvous::RendezvousStats;
use crate::core::server::{EndpointId, Stats};
use crate::Error;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The labels of one series.
type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, Gauge>;

/// What one server (one address family) gives a scrape.
pub(super) struct Source {
    family: &'static str,
    endpoints: Vec<EndpointId>,
    stats: ServeStats,
    rendezvous: (RendezvousStats, Option<(usize, usize)>),
}

/// What the metrics thread keeps of a server to read its counters at each scrape.
pub(super) struct View {
    family: &'static str,
    endpoints: Vec<EndpointId>,
    shared: Arc<Shared>,
    rdv: Option<Arc<RendezvousService>>,
}

impl View {
    pub(super) fn of(h: &ServerHandle) -> View {
        let primary = h.endpoints().first().map(|e| e.1);
        View {
            family: if primary.is_some_and(|a| a.is_ipv6()) {
                "ipv6"
            } else {
                "ipv4"
            },
            endpoints: h.endpoints().iter().map(|e| e.0).collect(),
            shared: Arc::clone(&h.shared),
            rdv: h.rdv.clone(),
        }
    }

    fn source(&self) -> Source {
        Source {
            family: self.family,
            endpoints: self.endpoints.clone(),
            stats: self.shared.snapshot(),
            rendezvous: self.rdv.as_ref().map(|r| r.stats()).unwrap_or_default(),
        }
    }
}

fn endpoint_name(id: EndpointId) -> &'static str {
    match id.0 & 3 {
        0 => "primary",
        1 => "alt-port",
        2 => "alt-ip",
        _ => "alt-both",
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

fn add(f: &Counters, l: &[(&'static str, &str)], v: u64) {
    f.get_or_create(&labels(l)).inc_by(v);
}

fn set(f: &Gauges, l: &[(&'static str, &str)], v: u64) {
    f.get_or_create(&labels(l))
        .set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// The text of one scrape over every server of this process.
pub(super) fn render(sources: &[Source]) -> String {
    let c = || Counters::default();
    let (requests, errors, malformed, limited) = (c(), c(), c(), c());
    let (panics, send_errors) = (c(), c());
    let (created, introduced, timeouts, outcomes, ignored) = (c(), c(), c(), c(), c());
    let (relay_made, relay_freed, relay_bytes, relay_dropped) = (c(), c(), c(), c());
    let (sessions, relay_active) = (Gauges::default(), Gauges::default());
    for s in sources {
        let fam = s.family;
        for &id in &s.endpoints {
            let i = usize::from(id.0 & 3);
            for (transport, st) in [
                ("udp", &s.stats.udp_by_endpoint[i]),
                ("tcp", &s.stats.tcp_by_endpoint[i]),
            ] {
                let l = [
                    ("family", fam),
                    ("transport", transport),
                    ("endpoint", endpoint_name(id)),
                ];
                let Stats {
                    requests: r,
                    errors: e,
                    malformed: m,
                    not_request: n,
                    rate_limited: rl,
                    ..
                } = *st;
                add(&requests, &l, r);
                add(&errors, &l, e);
                // Not a STUN request either way: junk to a STUN server.
                add(&malformed, &l, m + n);
                add(&limited, &l, rl);
            }
        }
        add(&panics, &[("family", fam)], s.stats.thread_panics);
        add(&send_errors, &[("family", fam)], s.stats.udp_send_errors);
        let (r, held) = &s.rendezvous;
        add(&created, &[("family", fam)], r.sessions_created);
        add(&introduced, &[("family", fam)], r.introductions);
        add(&timeouts, &[("family", fam)], r.peer_timeouts);
        add(&ignored, &[("family", fam)], r.outcomes_ignored);
        if let Some((waiting, matched)) = held {
            set(
                &sessions,
                &[("family", fam), ("state", "waiting")],
                *waiting as u64,
            );
            set(
                &sessions,
                &[("family", fam), ("state", "introduced")],
                *matched as u64,
            );
        }
        for (k, n) in &r.outcomes {
            let l = [
                ("result", k.result),
                ("strategy", k.strategy),
                ("path", k.path),
                ("transport", k.transport),
                ("nat_a", k.nat_a),
                ("nat_b", k.nat_b),
            ];
            add(&outcomes, &l, *n);
        }
        if let Some(RelayStats {
            turn: t,
            active,
            forward_dropped,
            send_errors: relay_send_errors,
        }) = &s.stats.relay
        {
            let l = [("family", fam)];
            add(&relay_made, &l, t.allocations_made);
            set(&relay_active, &l, *active);
            for (how, n) in [
                ("client", t.allocations_freed),
                ("expired", t.allocations_expired),
                ("shutdown", t.allocations_closed),
            ] {
                add(&relay_freed, &[("family", fam), ("how", how)], n);
            }
            for (dir, n) in [
                ("to-peers", t.bytes_to_peers),
                ("to-clients", t.bytes_to_clients),
            ] {
                add(&relay_bytes, &[("family", fam), ("direction", dir)], n);
            }
            for (why, n) in [
                ("no-permission", t.dropped_no_permission),
                ("over-bytes", t.dropped_over_bytes),
                ("malformed", t.malformed),
                ("relay-unavailable", *forward_dropped),
                ("send-error", *relay_send_errors),
            ] {
                add(&relay_dropped, &[("family", fam), ("reason", why)], n);
            }
        }
    }
    let mut reg = Registry::default();
    let r = &mut reg;
    r.register(
        "punchraw_stun_requests",
        "STUN requests received, by endpoint and transport",
        requests,
    );
    r.register("punchraw_stun_errors", "STUN error responses sent", errors);
    r.register(
        "punchraw_stun_malformed",
        "Datagrams and frames that were not a STUN request",
        malformed,
    );
    r.register(
        "punchraw_stun_rate_limited",
        "Requests left unanswered by --per-source-limit",
        limited,
    );
    r.register(
        "punchraw_udp_send_errors",
        "UDP sends that failed",
        send_errors,
    );
    r.register(
        "punchraw_thread_panics",
        "Server threads that panicked (the server is degraded)",
        panics,
    );
    r.register(
        "punchraw_rendezvous_sessions",
        "Rendezvous sessions held now: waiting for the second peer, or introduced",
        sessions,
    );
    r.register(
        "punchraw_rendezvous_sessions_created",
        "Rendezvous sessions a first peer created",
        created,
    );
    r.register(
        "punchraw_rendezvous_introductions",
        "Rendezvous sessions whose two peers were introduced",
        introduced,
    );
    r.register(
        "punchraw_rendezvous_peer_timeouts",
        "Lone peers told the other never came",
        timeouts,
    );
    r.register("punchraw_connect_outcomes", "Connect outcomes the peers reported, one per session, by result, strategy, final path, transport and the pair of NAT classes (sorted)", outcomes);
    r.register("punchraw_connect_outcomes_ignored", "Outcome reports not counted: unauthenticated, from a stranger, for an unknown session, or the session's second", ignored);
    r.register(
        "punchraw_relay_allocations_made",
        "TURN allocations made",
        relay_made,
    );
    r.register(
        "punchraw_relay_allocations",
        "TURN allocations held now",
        relay_active,
    );
    r.register(
        "punchraw_relay_allocations_freed",
        "TURN allocations ended, by how",
        relay_freed,
    );
    r.register(
        "punchraw_relay_bytes",
        "Application bytes relayed, by direction",
        relay_bytes,
    );
    r.register(
        "punchraw_relay_dropped",
        "Relayed data dropped, by reason",
        relay_dropped,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// How long the metrics thread waits for a request before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Binds `addr` and serves the metrics of `views` until `stop`.
pub(super) fn serve(
    addr: SocketAddr,
    stop: Stop,
    views: Vec<View>,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let sources = move || views.iter().map(View::source).collect::<Vec<_>>();
    let server = tiny_http::Server::http(addr).map_err(|e| Error::Bind {
        addr,
        source: std::io::Error::other(e.to_string()),
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.requested() {
                let Ok(Some(req)) = server.recv_timeout(POLL) else {
                    continue;
                };
                let response = answer(req.method(), req.url(), &sources);
                let _ = req.respond(response);
            }
        })
        .map_err(|e| Error::io("cannot start the metrics thread", e))?;
    Ok((bound, thread))
}

fn answer(
    method: &tiny_http::Method,
    url: &str,
    sources: &dyn Fn() -> Vec<Source>,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or(url);
    if *method != tiny_http::Method::Get && *method != tiny_http::Method::Head {
        return tiny_http::Response::from_string("only GET /metrics\n").with_status_code(405);
    }
    if path != "/metrics" {
        return tiny_http::Response::from_string("punchraw serves its metrics at /metrics\n")
            .with_status_code(404);
    }
    let content_type = tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
    )
    .expect("a valid header");
    tiny_http::Response::from_string(render(&sources())).with_header(content_type)
}
