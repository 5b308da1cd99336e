//! `punchraw probe`'s TCP half: the executor of the TCP probe's plan
//! ([`crate::core::classify::tcp::plan`], which decides what to do, in which order, and what
//! the answers mean). Here are only the sockets, the AF_PACKET watcher that sees the server's
//! unsolicited SYNs, the capture and the clock. Nothing here fails the probe: what cannot be
//! measured ends up as a reason in the report.
//!
//! Order, all on one thread and back to back (a lab NAT answers each in well under a
//! millisecond, and a sequential NAT's shared counter must see our allocation connections
//! one after another), as the plan hands the steps out:
//!
//! 1. the AF_PACKET watcher, when CAP_NET_RAW allows it, so it already queues what comes;
//! 2. tests I-III of RFC 5780 section 4.3 over TCP from one local port L, which stays bound
//!    (SO_REUSEADDR/SO_REUSEPORT) for the whole mapping phase so nobody else gets it;
//! 3. the allocation connections, each from a fresh port;
//! 4. the two CONNECT-BACK connections, each from a fresh port and held open while the SYN
//!    is awaited (a NAT may drop a closed connection's mapping, RFC 5382 section 5), for
//!    about four round trips plus 300 ms.
//!
//! The SYN that arrives is answered by this host's kernel with a RST (nothing listens on the
//! port); that is fine, the capture saw it first.

use crate::core::classify::tcp::plan::{
    BindingAnswer, ConnectBackAnswer, ConnectBackError, Source, Step, TcpProbe, Test, WatchError,
};
use crate::core::classify::tcp::TcpReport;
use crate::core::stun::Attribute;
use crate::driver::tcp_stun::{self, shared_port_socket, TcpStunError};
use crate::os::capture::Capture;
use crate::os::packet::{Packet, Watcher};
use crate::os::privileges::{self, CAP_NET_RAW};
use crate::os::signals::Shutdown;
use crate::Error;
use socket2::Socket;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest single wait for the watcher, so that Ctrl-C is noticed while SYNs are awaited.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Runs the TCP tests against `server` from `local_ip`. `hint` is the alternate endpoint the
/// UDP tests learned (so the watcher can be opened before the first connection).
pub fn classify_tcp(
    server: SocketAddr,
    local_ip: IpAddr,
    hint: Option<SocketAddr>,
    capture: Option<&mut Capture>,
    shutdown: &Shutdown,
) -> Result<TcpReport, Error> {
    let mut plan = TcpProbe::new(server, hint);
    let mut io = Executor {
        any: SocketAddr::new(local_ip, 0),
        shared: None,
        watcher: None,
        backs: Vec::new(),
        capture,
    };
    loop {
        match plan.next_step() {
            Step::Done => break,
            Step::Watch { hosts } => plan.handle_watch(io.watch(&hosts)),
            Step::Reserve => plan.handle_reserved(io.reserve()?),
            Step::Binding {
                test,
                from,
                to,
                timeout,
            } => {
                let r = io.binding(from, to, timeout);
                if let (Test::Primary, Ok(b)) = (test, &r) {
                    tracing::info!(mapped = %b.mapped, rtt_ms = b.rtt.as_secs_f64() * 1000.0, "server answered over TCP");
                }
                plan.handle_binding(r);
            }
            Step::Release => io.shared = None,
            Step::Drain => io.drain(|_| {})?,
            Step::ConnectBack {
                to,
                change_ip,
                change_port,
                timeout,
                ..
            } => io.connect_back(&mut plan, to, change_ip, change_port, timeout),
            Step::AwaitSyns { until } => io.await_syns(&mut plan, until)?,
        }
        if shutdown.requested() {
            return Err(shutdown.interrupted());
        }
    }
    Ok(plan.report())
}

/// The sockets and the watcher the plan's steps act on.
struct Executor<'c> {
    /// `local_ip`, port 0: where fresh connections come from.
    any: SocketAddr,
    /// L and its address, while the plan holds it.
    shared: Option<(Socket, SocketAddr)>,
    watcher: Option<Watcher>,
    /// The CONNECT-BACK connections, kept open until the probe ends (a NAT may drop a closed
    /// connection's mapping, RFC 5382 section 5).
    backs: Vec<TcpStream>,
    capture: Option<&'c mut Capture>,
}

impl Executor<'_> {
    /// Opens a watcher for `hosts` in place of the current one.
    fn watch(&mut self, hosts: &[IpAddr]) -> Result<(), WatchError> {
        let opened = if privileges::has(CAP_NET_RAW) {
            Watcher::open(hosts).map_err(|e| WatchError::Open(e.to_string()))
        } else {
            Err(WatchError::NoCapability)
        };
        let r = opened.as_ref().map(|_| ()).map_err(Clone::clone);
        self.watcher = opened.ok();
        r
    }

    /// Binds L; it stays bound (not listening) until the plan releases it, so the OS gives its
    /// port to nobody else between the mapping tests.
    fn reserve(&mut self) -> Result<SocketAddr, Error> {
        let hold =
            shared_port_socket(self.any).map_err(|e| Error::io("cannot open a TCP socket", e))?;
        let local = hold
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| Error::io("getsockname", io::Error::other("not an inet socket")))?;
        self.shared = Some((hold, local));
        Ok(local)
    }

    fn binding(
        &self,
        from: Source,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<BindingAnswer, String> {
        let local = match (from, &self.shared) {
            (Source::Shared, Some((_, l))) => *l,
            (Source::Shared, None) => return Err("the shared local port is not bound".into()),
            (Source::Fresh, _) => self.any,
        };
        tcp_stun::binding(local, to, &[], timeout)
            .map(|b| BindingAnswer {
                local: b.local,
                mapped: b.mapped,
                other: b.other,
                rtt: b.rtt,
            })
            .map_err(|e| e.to_string())
    }

    /// One CONNECT-BACK request from a fresh port; its connection stays open.
    fn connect_back(
        &mut self,
        plan: &mut TcpProbe,
        to: SocketAddr,
        change_ip: bool,
        change_port: bool,
        timeout: Duration,
    ) {
        let ask = Attribute::ConnectBack {
            change_ip,
            change_port,
        };
        match tcp_stun::exchange(self.any, to, &[ask], timeout) {
            Ok((b, stream)) => {
                self.backs.push(stream);
                let answer = ConnectBackAnswer {
                    local: b.local,
                    response: &b.response,
                };
                plan.handle_connect_back(Instant::now(), Ok(answer));
            }
            Err(e) => {
                let e = match e {
                    TcpStunError::ErrorResponse { code, .. } => ConnectBackError::Refused { code },
                    e if e.silent() => ConnectBackError::Silent(e.to_string()),
                    e => ConnectBackError::Failed(e.to_string()),
                };
                plan.handle_connect_back(Instant::now(), Err(e));
            }
        }
    }

    /// One round of the wait for the unsolicited SYNs: waits for the watcher (at most until
    /// `until`), hands over what it saw, then the time.
    fn await_syns(&mut self, plan: &mut TcpProbe, until: Instant) -> Result<(), Error> {
        let slice = until
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        match &self.watcher {
            Some(w) => {
                let _ = w.wait(slice);
            }
            // Nothing can be seen without a watcher (the plan does not ask for the wait then):
            // only time passes.
            None => std::thread::sleep(slice),
        }
        self.drain(|p| {
            if let Some(seen) = &p.seen {
                for (origin, local) in plan.handle_seen(p.outgoing, seen) {
                    tracing::info!(%origin, %local, "unsolicited SYN arrived");
                }
            }
        })?;
        plan.handle_timeout(Instant::now());
        Ok(())
    }

    /// Reads every packet the watcher (if there is one) has queued: into the capture, and to
    /// `each`.
    fn drain(&mut self, mut each: impl FnMut(&Packet)) -> Result<(), Error> {
        let Some(w) = &self.watcher else {
            return Ok(());
        };
        loop {
            match w.recv() {
                Ok(Some(p)) => {
                    if let Some(c) = self.capture.as_deref_mut() {
                        c.ip(&p.data, p.at)?;
                    }
                    each(&p);
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "AF_PACKET receive failed");
                    return Ok(());
                }
            }
        }
    }
}
