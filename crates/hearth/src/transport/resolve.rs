//! Server discovery: where the federation API of a server name answers, in the order the
//! spec's "Resolving server names" gives:
//!
//! 1. An IP literal: that address, at the given port or 8448. `Host`: the server name.
//! 2. A host name with an explicit port: that host and port. `Host`: the server name.
//! 3. `GET https://<host>/.well-known/matrix/server` names a delegated server:
//!    3.1 an IP literal, at its port or 8448; 3.2 a host with a port;
//!    3.3 else the SRV record `_matrix-fed._tcp.<delegated>`, 3.4 then the deprecated
//!    `_matrix._tcp.<delegated>`; 3.5 else the delegated host at 8448. `Host` (and the
//!    name TLS checks) is the delegated name, never an SRV target.
//! 4. and 5. Without delegation: the SRV records `_matrix-fed._tcp.<host>`, then
//!    `_matrix._tcp.<host>`.
//! 6. Else the host at port 8448.
//!
//! `.well-known` answers are cached as the spec recommends: for their `Cache-Control`
//! max-age, 24 hours without one, 48 hours at most. A failure (no file, a bad one, no
//! answer) is cached too, for 5 minutes doubling with each failure in a row up to an
//! hour, and a transient failure (no answer, a 5xx) keeps a delegation already known rather
//! than forgetting it. SRV and address records are cached by the DNS resolver for their
//! TTL.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{OwnedServerName, ServerName};
use serde::Deserialize;

use super::{
    client::{OutboundClient, OutboundError},
    dns::{Dns, DnsError},
};

/// The port federation listens on when nothing else says.
pub const DEFAULT_PORT: u16 = 8448;
/// Largest `.well-known/matrix/server` answer read.
pub const MAX_WELL_KNOWN_BYTES: usize = 50 * 1024;
/// How long fetching `.well-known` may take.
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 60 * 60);
const FAILURE_FIRST_TTL: Duration = Duration::from_secs(5 * 60);
const FAILURE_MAX_TTL: Duration = Duration::from_secs(60 * 60);

/// Where to send a server's federation requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host of the URL, which TLS checks the certificate against: an IP literal, the
    /// server's host name, or the delegated one.
    pub host: String,
    pub port: u16,
    /// The `Host` header.
    pub host_header: String,
    /// When an SRV record named it: the host whose addresses are connected to instead of
    /// `host`'s (TLS still checks `host`).
    pub srv_target: Option<String>,
}

impl Destination {
    /// `https://host:port`, with an IPv6 literal in brackets.
    pub fn base_url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("https://[{v6}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Dns(String),
}

/// What `.well-known/matrix/server` said, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WellKnown {
    Delegated(OwnedServerName),
    /// No delegation: no file, an invalid one, or no answer.
    None,
}

#[derive(Debug, Clone)]
struct Cached {
    value: WellKnown,
    expires: Instant,
    /// Failures in a row (for the back-off).
    failures: u32,
}

/// One cached `.well-known` answer, for the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedWellKnown {
    pub host: String,
    pub value: WellKnown,
    pub expires_in: Duration,
}

pub struct ServerResolver {
    client: OutboundClient,
    dns: Arc<Dns>,
    well_known: Mutex<HashMap<String, Cached>>,
}

impl ServerResolver {
    pub fn new(client: OutboundClient, dns: Arc<Dns>) -> Self {
        ServerResolver { client, dns, well_known: Mutex::default() }
    }

    /// Where `name`'s federation API answers.
    pub async fn resolve(&self, name: &ServerName) -> Result<Destination, ResolveError> {
        let (host, port) = split(name);
        if host.parse::<IpAddr>().is_ok() {
            return Ok(direct(&host, port.unwrap_or(DEFAULT_PORT), name.as_str()));
        }
        if let Some(port) = port {
            return Ok(direct(&host, port, name.as_str()));
        }
        if let WellKnown::Delegated(delegated) = self.well_known(&host).await {
            let (d_host, d_port) = split(&delegated);
            if d_host.parse::<IpAddr>().is_ok() {
                return Ok(direct(&d_host, d_port.unwrap_or(DEFAULT_PORT), delegated.as_str()));
            }
            if let Some(p) = d_port {
                return Ok(direct(&d_host, p, delegated.as_str()));
            }
            if let Some(found) = self.srv(&d_host).await? {
                return Ok(found);
            }
            return Ok(direct(&d_host, DEFAULT_PORT, &d_host));
        }
        if let Some(found) = self.srv(&host).await? {
            return Ok(found);
        }
        Ok(direct(&host, DEFAULT_PORT, &host))
    }

    /// The SRV destination for `host` (`_matrix-fed._tcp`, then `_matrix._tcp`), if any.
    async fn srv(&self, host: &str) -> Result<Option<Destination>, ResolveError> {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            match self.dns.srv(&format!("{service}.{host}")).await {
                Ok(targets) => {
                    // Sorted best first; the first is used (see `Dns::srv`).
                    let best = &targets[0];
                    return Ok(Some(Destination {
                        host: host.to_owned(),
                        port: best.port,
                        host_header: host.to_owned(),
                        srv_target: Some(best.host.clone()),
                    }));
                }
                Err(DnsError::NotFound) => continue,
                Err(DnsError::Failed(e)) => return Err(ResolveError::Dns(format!("{service}.{host}: {e}"))),
            }
        }
        Ok(None)
    }

    /// `host`'s delegation, from the cache or fetched.
    pub async fn well_known(&self, host: &str) -> WellKnown {
        let previous = self.well_known.lock().get(host).cloned();
        if let Some(c) = &previous {
            if Instant::now() < c.expires {
                return c.value.clone();
            }
        }
        let fetched = self.fetch_well_known(host).await;
        let now = Instant::now();
        let entry = match fetched {
            Fetch::Delegated(value, ttl) => {
                Cached { value: WellKnown::Delegated(value), expires: now + ttl, failures: 0 }
            }
            other => {
                let failures = previous.as_ref().map_or(0, |c| c.failures).saturating_add(1);
                let ttl = failure_ttl(failures);
                // A transient failure keeps a delegation already known.
                let value = match (&other, previous) {
                    (Fetch::Transient, Some(Cached { value: v @ WellKnown::Delegated(_), .. })) => v,
                    _ => WellKnown::None,
                };
                Cached { value, expires: now + ttl, failures }
            }
        };
        let value = entry.value.clone();
        self.well_known.lock().insert(host.to_owned(), entry);
        value
    }

    async fn fetch_well_known(&self, host: &str) -> Fetch {
        let url = format!("https://{host}/.well-known/matrix/server");
        let fetched = match self.client.get(&url, WELL_KNOWN_TIMEOUT, MAX_WELL_KNOWN_BYTES).await {
            Ok(f) => f,
            Err(OutboundError::TooLarge(_)) => return Fetch::Invalid,
            Err(e) => {
                tracing::debug!(%host, error = %e, "no answer from .well-known/matrix/server");
                return Fetch::Transient;
            }
        };
        if fetched.status.is_server_error() {
            return Fetch::Transient;
        }
        if !fetched.status.is_success() {
            return Fetch::Invalid;
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "m.server")]
            server: String,
        }
        let Ok(body) = serde_json::from_slice::<Body>(&fetched.body) else { return Fetch::Invalid };
        let Ok(delegated) = OwnedServerName::try_from(body.server) else { return Fetch::Invalid };
        Fetch::Delegated(delegated, max_age(&fetched.headers))
    }

    /// The cached `.well-known` answers (for the admin API).
    pub fn cached(&self) -> Vec<CachedWellKnown> {
        let now = Instant::now();
        let mut all: Vec<_> = self
            .well_known
            .lock()
            .iter()
            .map(|(host, c)| CachedWellKnown {
                host: host.clone(),
                value: c.value.clone(),
                expires_in: c.expires.saturating_duration_since(now),
            })
            .collect();
        all.sort_by(|a, b| a.host.cmp(&b.host));
        all
    }

    /// Forgets every cached `.well-known` answer.
    pub fn flush(&self) {
        self.well_known.lock().clear();
    }
}

enum Fetch {
    Delegated(OwnedServerName, Duration),
    /// A definite answer without a delegation: 4xx, bad JSON, no `m.server`, too large.
    Invalid,
    /// No answer, or a server error: may be better later.
    Transient,
}

fn direct(host: &str, port: u16, host_header: &str) -> Destination {
    Destination { host: host.to_owned(), port, host_header: host_header.to_owned(), srv_target: None }
}

/// A server name's host (without IPv6 brackets) and port.
fn split(name: &ServerName) -> (String, Option<u16>) {
    let host = name.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host.to_owned(), name.port())
}

/// The `Cache-Control: max-age` of an answer, within the spec's bounds.
fn max_age(headers: &http::HeaderMap) -> Duration {
    let age = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=").and_then(|s| s.trim().parse::<u64>().ok()));
    age.map_or(WELL_KNOWN_DEFAULT_TTL, Duration::from_secs).min(WELL_KNOWN_MAX_TTL)
}

/// How long the `failures`th failure in a row is cached: 5 minutes, doubling, an hour at most.
fn failure_ttl(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (FAILURE_FIRST_TTL * 2u32.pow(doublings)).min(FAILURE_MAX_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_honoured_within_bounds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), WELL_KNOWN_DEFAULT_TTL);
        h.insert(http::header::CACHE_CONTROL, "public, max-age=3600".parse().expect("header"));
        assert_eq!(max_age(&h), Duration::from_secs(3600));
        h.insert(http::header::CACHE_CONTROL, "max-age=9999999".parse().expect("header"));
        assert_eq!(max_age(&h), WELL_KNOWN_MAX_TTL);
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().expect("header"));
        assert_eq!(max_age(&h), WELL_KNOWN_DEFAULT_TTL);
    }

    #[test]
    fn failures_back_off_up_to_an_hour() {
        assert_eq!(failure_ttl(1), Duration::from_secs(300));
        assert_eq!(failure_ttl(2), Duration::from_secs(600));
        assert_eq!(failure_ttl(4), Duration::from_secs(2400));
        assert_eq!(failure_ttl(5), FAILURE_MAX_TTL);
        assert_eq!(failure_ttl(u32::MAX), FAILURE_MAX_TTL);
    }

    #[test]
    fn ipv6_literals_keep_their_brackets_in_urls_only() {
        let name = OwnedServerName::try_from("[::1]:8448").expect("name");
        assert_eq!(split(&name), ("::1".to_owned(), Some(8448)));
        assert_eq!(direct("::1", 8448, "[::1]:8448").base_url(), "https://[::1]:8448");
        assert_eq!(direct("example.org", 443, "example.org").base_url(), "https://example.org:443");
    }
}
