//! DNS for outbound requests: addresses (A/AAAA, and the hosts file) and the SRV records
//! server discovery reads, through one hickory resolver. It asks the system's name servers
//! (`/etc/resolv.conf`), or those of `dns_servers` when set — an operator's own resolver,
//! or the tests' DNS server on loopback.

use std::{net::IpAddr, net::SocketAddr, time::Duration};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
    TokioResolver,
};

/// How long one DNS question may take (each attempt; two attempts).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One SRV record's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// What a lookup can end in.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name exists nowhere, or has no record of that type: an answer, not a failure.
    #[error("no such record")]
    NotFound,
    /// The question could not be answered (time-out, server failure): try again later.
    #[error("DNS lookup failed: {0}")]
    Failed(String),
}

pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// The system's resolver, or one asking only `servers`.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DnsError::Failed(format!("cannot read the system's DNS configuration: {e}")))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.timeout = LOOKUP_TIMEOUT;
        options.attempts = 2;
        let resolver = builder.build().map_err(|e| DnsError::Failed(format!("cannot build the DNS resolver: {e}")))?;
        Ok(Dns { resolver })
    }

    /// The addresses of `host` (hosts file first, then A and AAAA).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let found = self.resolver.lookup_ip(fqdn(host)).await.map_err(classify)?;
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(DnsError::NotFound);
        }
        Ok(addrs)
    }

    /// The SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`), best first: lowest
    /// priority, then highest weight (a fixed order rather than the RFC's weighted draw, so
    /// that one destination is reached the same way each time).
    pub async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, DnsError> {
        let found = self.resolver.srv_lookup(fqdn(name)).await.map_err(classify)?;
        let mut targets: Vec<SrvTarget> = found
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(SrvTarget {
                    host: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                }),
                _ => None,
            })
            // A target of "." means "no service here" (RFC 2782).
            .filter(|t| !t.host.is_empty())
            .collect();
        if targets.is_empty() {
            return Err(DnsError::NotFound);
        }
        targets.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        Ok(targets)
    }
}

/// `host` as a fully qualified name, so that no search domain is tried first.
fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    }
}

fn classify(e: hickory_resolver::net::NetError) -> DnsError {
    if e.is_no_records_found() || e.is_nx_domain() {
        DnsError::NotFound
    } else {
        DnsError::Failed(e.to_string())
    }
}
