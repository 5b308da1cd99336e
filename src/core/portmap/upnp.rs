//! What to ask a UPnP IGD for next (WANIPConnection v1 `AddPortMapping`, v2
//! `AddAnyPortMapping`), given how the router refused the last request. The SOAP and SSDP
//! run in the driver; the choices that depend on the router's answers are made here, where
//! a test reaches every quirk without a router:
//!
//! - A router that refuses external port 0 (RouterOS, tailscale#13785; UPnP error 716
//!   WildCardNotPermittedInExtPort): ask for the internal port instead.
//! - A router that grants only permanent leases (error 725 OnlyPermanentLeasesSupported,
//!   tailscale#20781): ask again with lease 0; the caller must then delete it on every exit,
//!   since the router never will.
//! - A port taken (718 ConflictInMappingEntry) or, below 1024, refused (606, 729 and others
//!   some routers use for "privileged" ports): ask for a random port of 1024-65535.
//! - An external port that differs from the internal one: the first request asks for the
//!   internal port (`AddPortMapping`, which every IGD has); when that one is taken, a v2
//!   router's `AddAnyPortMapping` picks another, and the caller uses the port granted, not
//!   the one asked for.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Refusals after which nothing else is tried.
const MAX_TRIES: usize = 6;

/// One request to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpnpAsk {
    /// `AddAnyPortMapping` (v2: the router may grant another port) rather than
    /// `AddPortMapping` (v1: this port or an error).
    pub any: bool,
    /// 0 asks for any port (a wildcard); see the module note on RouterOS.
    pub external_port: u16,
    /// 0 is a permanent lease.
    pub lease_s: u32,
}

/// How the router refused, from its UPnP error code (UPnP-gw-WANIPConnection-v2 section
/// 2.5.16 lists them) or the client's own check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpnpRefusal {
    /// 716, or a wildcard the client library refused to send.
    ExternalPortZero,
    /// 725.
    OnlyPermanentLeases,
    /// 718: another client has it.
    PortInUse,
    /// 724: external and internal must be equal (and that one is taken or refused).
    SamePortRequired,
    /// 606 (or 729 ConflictWithOtherMechanisms).
    NotAuthorized,
    /// 728: the table is full.
    NoPortsAvailable,
    /// 401 Invalid Action: the router has no such action (no v2).
    NoSuchAction,
    /// Any other UPnP error or failure, in words (code and description when there are any).
    Other(String),
}

impl UpnpRefusal {
    /// The refusal for a UPnP error `code` and its description `text` from the SOAP fault; `text`
    /// is kept only for codes not listed here.
    pub fn from_code(code: u16, text: &str) -> Self {
        match code {
            716 => Self::ExternalPortZero,
            725 => Self::OnlyPermanentLeases,
            718 => Self::PortInUse,
            724 => Self::SamePortRequired,
            606 | 729 => Self::NotAuthorized,
            728 => Self::NoPortsAvailable,
            401 => Self::NoSuchAction,
            _ => Self::Other(format!("UPnP error {code} {text}")),
        }
    }

    /// The words a user reads in a reason, with the UPnP error code.
    pub fn describe(&self) -> String {
        match self {
            Self::ExternalPortZero => "the router refuses external port 0 (error 716)".into(),
            Self::OnlyPermanentLeases => "the router grants only permanent leases (725)".into(),
            Self::PortInUse => "the port is mapped for another host (718)".into(),
            Self::SamePortRequired => {
                "the router maps only to the same port number, and that one is refused (724)".into()
            }
            Self::NotAuthorized => "the router refuses the mapping (not authorized, 606)".into(),
            Self::NoPortsAvailable => "the router has no free port (728)".into(),
            Self::NoSuchAction => "the router lacks the action (401)".into(),
            Self::Other(s) => s.clone(),
        }
    }
}

/// The requests for one mapping, in order, each chosen from the refusals before it.
pub struct UpnpPlan {
    internal_port: u16,
    lease_s: u32,
    has_add_any: bool,
    any: bool,
    permanent: bool,
    same_port_only: bool,
    tries: usize,
    rng: StdRng,
    last: Option<UpnpAsk>,
}

impl UpnpPlan {
    /// `has_add_any`: the router's service description lists `AddAnyPortMapping` (v2).
    pub fn new(internal_port: u16, lease_s: u32, has_add_any: bool, seed: u64) -> Self {
        UpnpPlan {
            internal_port,
            lease_s: lease_s.max(1),
            has_add_any,
            any: false,
            permanent: false,
            same_port_only: false,
            tries: 0,
            rng: StdRng::seed_from_u64(seed),
            last: None,
        }
    }

    /// Whether the lease granted is permanent (after a 725): the caller must delete it.
    pub fn permanent(&self) -> bool {
        self.permanent
    }

    fn ask(&mut self, external_port: u16) -> Option<UpnpAsk> {
        if self.tries >= MAX_TRIES {
            return None;
        }
        self.tries += 1;
        let a = UpnpAsk {
            any: self.any,
            external_port,
            lease_s: if self.permanent { 0 } else { self.lease_s },
        };
        self.last = Some(a);
        Some(a)
    }

    /// The first request: the internal port as the external one (peers that guess the
    /// port from our local one then guess right).
    pub fn first(&mut self) -> Option<UpnpAsk> {
        self.ask(self.internal_port)
    }

    fn random_port(&mut self) -> u16 {
        self.rng.random_range(1024..=65535)
    }

    /// The next request after `refusal`, or `None`: give up (the reason is `refusal`).
    pub fn next(&mut self, refusal: &UpnpRefusal) -> Option<UpnpAsk> {
        let last = self.last?;
        match refusal {
            UpnpRefusal::ExternalPortZero => self.ask(self.internal_port),
            UpnpRefusal::OnlyPermanentLeases if !self.permanent => {
                self.permanent = true;
                self.ask(last.external_port)
            }
            UpnpRefusal::NoSuchAction if self.any => {
                self.any = false;
                self.ask(last.external_port)
            }
            UpnpRefusal::SamePortRequired => {
                self.same_port_only = true;
                None
            }
            UpnpRefusal::PortInUse if self.has_add_any && !self.any => {
                self.any = true;
                self.ask(last.external_port)
            }
            UpnpRefusal::PortInUse if !self.same_port_only => {
                self.any = false;
                let p = self.random_port();
                self.ask(p)
            }
            UpnpRefusal::NotAuthorized | UpnpRefusal::Other(_)
                if last.external_port != 0 && last.external_port < 1024 =>
            {
                let p = self.random_port();
                self.ask(p)
            }
            _ => None,
        }
    }
}
