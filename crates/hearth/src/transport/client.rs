//! The one HTTP client for requests to URLs other parties choose (federation, `.well-known`,
//! notaries; later media and push), with the outbound policy built in:
//!
//! - **Addresses**: names resolve through [`PolicyResolver`], which hands the connection only
//!   the addresses [`AddressPolicy`] admits, so the check is on the address actually
//!   connected to, not on a name that may resolve differently a second later. IP literals
//!   never reach a resolver, so they are checked before the request and on every redirect.
//!   No proxy is used: a proxy would connect on our behalf to an address we never see.
//! - **TLS**: rustls, verifying against the system's roots (which honour `SSL_CERT_FILE`)
//!   plus the PEM certificates of `federation_ca_file`. There is no switch that turns
//!   verification off.
//! - **Time**: a connect time-out and a whole-request time-out on every request.
//! - **Size**: a body is read in chunks and refused once it passes the caller's cap, so a
//!   peer cannot make Hearth hold more than that.
//! - **Redirects**: at most [`MAX_REDIRECTS`], each target checked as above.

use std::{
    error::Error as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

use bytes::{Bytes, BytesMut};
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    redirect, Url,
};

use super::{
    dns::{Dns, DnsError},
    policy::{AddressPolicy, Refused},
};

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("refused by the outbound address policy: {0}")]
    Refused(Refused),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("timed out")]
    TimedOut,
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Other(String),
}

/// A response read whole (within its cap).
#[derive(Debug)]
pub struct Fetched {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The URL answered, after redirects.
    pub url: Url,
}

/// The outbound HTTP client; cheap to clone.
#[derive(Clone)]
pub struct OutboundClient {
    http: reqwest::Client,
    settings: Arc<Settings>,
}

/// What every client is built from.
struct Settings {
    policy: Arc<AddressPolicy>,
    extra_ca: Vec<reqwest::Certificate>,
    /// The same extra CA certificates, and the pinned ones ([`super::pinned`]), for the
    /// TLS configuration made here when any certificate is pinned.
    extra_ca_der: Vec<rustls::pki_types::CertificateDer<'static>>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    dns: Arc<Dns>,
}

impl Settings {
    /// A reqwest client with the policy, roots and limits; with `pin`, one host's
    /// connections go to the given addresses.
    fn build(&self, pin: Option<(&str, &[SocketAddr])>) -> Result<reqwest::Client, OutboundError> {
        let policy = self.policy.clone();
        let redirects = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match literal_host(attempt.url()).map(|ip| policy.check(ip)) {
                Some(Err(refused)) => attempt.error(refused),
                _ => attempt.follow(),
            }
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver { policy: self.policy.clone(), dns: self.dns.clone() }))
            .redirect(redirects)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")))
            .https_only(false);
        if self.pinned.is_empty() {
            builder = builder.tls_built_in_root_certs(true);
            for cert in &self.extra_ca {
                builder = builder.add_root_certificate(cert.clone());
            }
        } else {
            let tls =
                super::pinned::client_config(&self.extra_ca_der, self.pinned.clone()).map_err(OutboundError::Other)?;
            builder = builder.use_preconfigured_tls(tls);
        }
        if let Some((host, addrs)) = pin {
            builder = builder.resolve_to_addrs(host, addrs);
        }
        builder.build().map_err(|e| OutboundError::Other(format!("cannot build the HTTP client: {e}")))
    }
}

impl OutboundClient {
    /// The client for `config`: its address ranges, extra CA certificates and DNS servers.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, OutboundError> {
        let dns = Arc::new(Dns::new(&config.dns_servers).map_err(|e| OutboundError::Other(e.to_string()))?);
        Self::from_config_with(config, dns)
    }

    /// As [`OutboundClient::from_config`], resolving with `dns`.
    pub fn from_config_with(config: &crate::config::Config, dns: Arc<Dns>) -> Result<Self, OutboundError> {
        let policy = AddressPolicy::new(config.ip_range_denylist.clone(), config.ip_range_allowlist.clone());
        let extra_ca = match &config.federation_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                OutboundError::Other(format!("cannot read federation_ca_file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let client = Self::new(policy, extra_ca.as_deref(), dns)?;
        let mut pinned = Vec::new();
        for path in &config.pinned_certificates {
            let pem = std::fs::read(path)
                .map_err(|e| OutboundError::Other(format!("cannot read pinned certificate {}: {e}", path.display())))?;
            let certs = super::pinned::read_pem_certs(&pem)
                .map_err(|e| OutboundError::Other(format!("pinned certificate {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(OutboundError::Other(format!("{} holds no PEM certificate", path.display())));
            }
            pinned.extend(certs);
        }
        client.with_pinned(pinned)
    }

    /// This client, also trusting `pinned` certificates as they are ([`super::pinned`]).
    pub fn with_pinned(self, pinned: Vec<rustls::pki_types::CertificateDer<'static>>) -> Result<Self, OutboundError> {
        if pinned.is_empty() {
            return Ok(self);
        }
        let settings = Settings {
            policy: self.settings.policy.clone(),
            extra_ca: self.settings.extra_ca.clone(),
            extra_ca_der: self.settings.extra_ca_der.clone(),
            pinned,
            dns: self.settings.dns.clone(),
        };
        let http = settings.build(None)?;
        Ok(OutboundClient { http, settings: Arc::new(settings) })
    }

    /// A client with `policy`, trusting the system's roots and the PEM certificates in
    /// `extra_ca_pem`, resolving names with `dns`.
    pub fn new(policy: AddressPolicy, extra_ca_pem: Option<&[u8]>, dns: Arc<Dns>) -> Result<Self, OutboundError> {
        let (extra_ca, extra_ca_der) = match extra_ca_pem {
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| OutboundError::Other(format!("federation_ca_file: {e}")))?;
                if certs.is_empty() {
                    return Err(OutboundError::Other("federation_ca_file holds no PEM certificate".into()));
                }
                let der = super::pinned::read_pem_certs(pem)
                    .map_err(|e| OutboundError::Other(format!("federation_ca_file: {e}")))?;
                (certs, der)
            }
            None => (Vec::new(), Vec::new()),
        };
        let settings = Settings { policy: Arc::new(policy), extra_ca, extra_ca_der, pinned: Vec::new(), dns };
        let http = settings.build(None)?;
        Ok(OutboundClient { http, settings: Arc::new(settings) })
    }

    /// A client like this one whose requests to `host` go to `addrs`: an SRV record named
    /// another host for it, and TLS must still check `host`. The addresses are checked
    /// against the policy here, since no resolver sees them.
    pub fn pinned(&self, host: &str, addrs: &[SocketAddr]) -> Result<Self, OutboundError> {
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .filter(|a| match self.settings.policy.check(a.ip()) {
                Ok(()) => true,
                Err(r) => {
                    refused.get_or_insert(r);
                    false
                }
            })
            .copied()
            .collect();
        if allowed.is_empty() {
            return Err(refused.map_or_else(|| OutboundError::NoAddress(host.to_owned()), OutboundError::Refused));
        }
        let http = self.settings.build(Some((host, &allowed)))?;
        Ok(OutboundClient { http, settings: self.settings.clone() })
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.settings.policy
    }

    /// `GET url`, reading at most `max_body` bytes of the answer within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration, max_body: usize) -> Result<Fetched, OutboundError> {
        self.send(self.http.get(self.checked(url)?), timeout, max_body).await
    }

    /// Sends a request built on [`OutboundClient::request`], with the same limits as `get`.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Fetched, OutboundError> {
        let work = async {
            let mut response = request.send().await.map_err(classify)?;
            let status = response.status();
            let headers = response.headers().clone();
            let url = response.url().clone();
            if response.content_length().is_some_and(|len| len > max_body as u64) {
                return Err(OutboundError::TooLarge(max_body));
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > max_body {
                    return Err(OutboundError::TooLarge(max_body));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Fetched { status, headers, body: body.freeze(), url })
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| OutboundError::TimedOut)?
    }

    /// Sends a request built on [`OutboundClient::request`] and returns the response as
    /// soon as its headers arrived (within `timeout`), its body still to be read: for
    /// bodies streamed to disk. The caller bounds the body's size and reading time.
    pub async fn send_streamed(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, OutboundError> {
        tokio::time::timeout(timeout, request.send()).await.map_err(|_| OutboundError::TimedOut)?.map_err(classify)
    }

    /// A request builder for `method url`, the URL checked as [`OutboundClient::get`]
    /// checks it. Send it with [`OutboundClient::send`].
    pub fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, OutboundError> {
        Ok(self.http.request(method, self.checked(url)?))
    }

    /// Parses `url` and checks its host when it is an IP literal (names are checked when
    /// they resolve).
    fn checked(&self, url: &str) -> Result<Url, OutboundError> {
        let url = Url::parse(url).map_err(|e| OutboundError::Other(format!("invalid URL {url}: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(OutboundError::Other(format!("unsupported URL scheme {}", url.scheme())));
        }
        if let Some(ip) = literal_host(&url) {
            self.settings.policy.check(ip).map_err(OutboundError::Refused)?;
        }
        Ok(url)
    }
}

/// The host of `url` when it is an IP address.
fn literal_host(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Turns reqwest's error into ours, finding a policy refusal or a time-out in its causes.
fn classify(e: reqwest::Error) -> OutboundError {
    if e.is_timeout() {
        return OutboundError::TimedOut;
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<Refused>() {
            return OutboundError::Refused(refused.clone());
        }
        if let Some(ResolveError::NoAddress(name)) = c.downcast_ref::<ResolveError>() {
            return OutboundError::NoAddress(name.clone());
        }
        if let Some(ResolveError::Dns(e)) = c.downcast_ref::<ResolveError>() {
            return OutboundError::Other(format!("DNS: {e}"));
        }
        cause = c.source();
    }
    OutboundError::Other(e.to_string())
}

#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("{0}")]
    Dns(String),
}

/// Resolves names (hosts file, then DNS) and keeps only the addresses the policy admits;
/// when it admits none, the refusal of the first is the error.
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
    dns: Arc<Dns>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let dns = self.dns.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = match dns.addresses(&host).await {
                Ok(found) => found,
                Err(DnsError::NotFound) => return Err(Box::new(ResolveError::NoAddress(host)) as BoxError),
                Err(DnsError::Failed(e)) => return Err(Box::new(ResolveError::Dns(e)) as BoxError),
            };
            let mut refused = None;
            let allowed: Vec<_> = found
                .into_iter()
                .filter(|ip| match policy.check(*ip) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as BoxError),
                // Port 0: reqwest puts the URL's port in.
                _ => Ok(Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs),
            }
        })
    }
}
