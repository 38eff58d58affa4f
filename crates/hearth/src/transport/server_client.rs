//! The client for other homeservers' APIs: a request to a server *name* is sent where
//! discovery says ([`super::resolve`]), with the `Host` header discovery gives, through the
//! outbound client and its policy ([`super::client`]), signed with `X-Matrix` (origin,
//! destination, key id, signature over method, URI, origin, destination and body) unless it
//! is one of the few unauthenticated endpoints (key documents, `version`).
//!
//! When an SRV record named the target, the request goes to the target's addresses while
//! TLS still checks the server's (delegated) name: a client pinned to those addresses is
//! kept per destination.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{header, Method};
use parking_lot::Mutex;
use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    OwnedServerName, ServerName,
};

use super::{
    client::{Fetched, OutboundClient, OutboundError},
    dns::Dns,
    resolve::{Destination, ServerResolver},
};
use crate::server_key::ServerKey;

/// (host TLS checks, port, SRV target).
type PinKey = (String, u16, String);

/// How long an SRV target's addresses are used before they are looked up again.
const PINNED_FOR: Duration = Duration::from_secs(10 * 60);

/// Whether a request carries `X-Matrix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Signed,
    Unsigned,
}

/// One request to another server: what, how signed, and its limits.
#[derive(Debug, Clone)]
pub struct ServerRequest<'a> {
    pub method: Method,
    /// The path and query, exactly as signed and sent.
    pub path_and_query: &'a str,
    pub body: Option<&'a serde_json::Value>,
    pub signing: Signing,
    pub timeout: Duration,
    /// Largest answer read.
    pub max_body: usize,
}

impl<'a> ServerRequest<'a> {
    /// A signed `GET`, with a 30 s time-out and a 1 MiB cap.
    pub fn get(path_and_query: &'a str) -> Self {
        ServerRequest {
            method: Method::GET,
            path_and_query,
            body: None,
            signing: Signing::Signed,
            timeout: Duration::from_secs(30),
            max_body: 1024 * 1024,
        }
    }

    /// A signed `POST` of `body`, with the same limits.
    pub fn post(path_and_query: &'a str, body: &'a serde_json::Value) -> Self {
        ServerRequest { method: Method::POST, body: Some(body), ..Self::get(path_and_query) }
    }

    pub fn unsigned(self) -> Self {
        ServerRequest { signing: Signing::Unsigned, ..self }
    }

    pub fn limits(self, timeout: Duration, max_body: usize) -> Self {
        ServerRequest { timeout, max_body, ..self }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerRequestError {
    #[error("cannot resolve {server}: {error}")]
    Resolve { server: OwnedServerName, error: String },
    #[error("{server}: {error}")]
    Outbound { server: OwnedServerName, error: OutboundError },
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

pub struct ServerClient {
    outbound: OutboundClient,
    resolver: Arc<ServerResolver>,
    dns: Arc<Dns>,
    key: Arc<ServerKey>,
    /// Clients pinned to an SRV target's addresses, by (host, port, target), with when the
    /// addresses were looked up: they are looked up again after [`PINNED_FOR`].
    pinned: Mutex<HashMap<PinKey, (OutboundClient, Instant)>>,
}

impl ServerClient {
    pub fn new(outbound: OutboundClient, resolver: Arc<ServerResolver>, dns: Arc<Dns>, key: Arc<ServerKey>) -> Self {
        ServerClient { outbound, resolver, dns, key, pinned: Mutex::default() }
    }

    pub fn resolver(&self) -> &ServerResolver {
        &self.resolver
    }

    /// The outbound client (its address policy), for URLs another server hands out.
    pub fn outbound(&self) -> &OutboundClient {
        &self.outbound
    }

    /// Sends `req` to `server`. Any HTTP status is returned as it is.
    pub async fn request(&self, server: &ServerName, req: ServerRequest<'_>) -> Result<Fetched, ServerRequestError> {
        let (timeout, max_body) = (req.timeout, req.max_body);
        let (client, request) = self.prepare(server, req).await?;
        let fail = |error| ServerRequestError::Outbound { server: server.to_owned(), error };
        client.send(request, timeout, max_body).await.map_err(fail)
    }

    /// As [`ServerClient::request`], returning once the answer's headers arrived (within
    /// the request's time-out); its body, to be streamed, is the caller's to bound.
    pub async fn request_streamed(
        &self,
        server: &ServerName,
        req: ServerRequest<'_>,
    ) -> Result<reqwest::Response, ServerRequestError> {
        let timeout = req.timeout;
        let (client, request) = self.prepare(server, req).await?;
        let fail = |error| ServerRequestError::Outbound { server: server.to_owned(), error };
        client.send_streamed(request, timeout).await.map_err(fail)
    }

    /// The client for `server`'s destination and the request, addressed and signed.
    async fn prepare(
        &self,
        server: &ServerName,
        req: ServerRequest<'_>,
    ) -> Result<(OutboundClient, reqwest::RequestBuilder), ServerRequestError> {
        let ServerRequest { method, path_and_query, body, signing, .. } = req;
        let fail = |error| ServerRequestError::Outbound { server: server.to_owned(), error };
        let destination = self
            .resolver
            .resolve(server)
            .await
            .map_err(|e| ServerRequestError::Resolve { server: server.to_owned(), error: e.to_string() })?;
        let client = self.client_for(&destination).await.map_err(fail)?;
        let url = format!("{}{path_and_query}", destination.base_url());
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ServerRequestError::Sign(e.to_string()))?,
            None => Vec::new(),
        };
        let mut request = client.request(method.clone(), &url).map_err(fail)?;
        request = request.header(header::HOST, destination.host_header.as_str());
        if signing == Signing::Signed {
            request =
                request.header(header::AUTHORIZATION, x_matrix(&self.key, server, &method, path_and_query, &bytes)?);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json").body(bytes);
        }
        Ok((client, request))
    }

    /// The shared client, or one pinned to the SRV target's addresses.
    async fn client_for(&self, destination: &Destination) -> Result<OutboundClient, OutboundError> {
        let Some(target) = &destination.srv_target else { return Ok(self.outbound.clone()) };
        let key = (destination.host.clone(), destination.port, target.clone());
        if let Some((client, since)) = self.pinned.lock().get(&key) {
            if since.elapsed() < PINNED_FOR {
                return Ok(client.clone());
            }
        }
        let ips = self.dns.addresses(target).await.map_err(|_| OutboundError::NoAddress(target.clone()))?;
        let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, destination.port)).collect();
        let client = self.outbound.pinned(&destination.host, &addrs)?;
        let mut pinned = self.pinned.lock();
        // Forget every stale entry now and then, so destinations that went away do not pile up.
        pinned.retain(|_, (_, since)| since.elapsed() < PINNED_FOR);
        pinned.insert(key, (client.clone(), Instant::now()));
        Ok(client)
    }
}

/// The `Authorization: X-Matrix …` value for a request to `destination` signed with `key`
/// (also used for the identity servers' unbind, which accepts a homeserver's signature).
pub fn x_matrix(
    key: &ServerKey,
    destination: &ServerName,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
) -> Result<String, ServerRequestError> {
    let request = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .body(body)
        .map_err(|e| ServerRequestError::Sign(e.to_string()))?;
    let input = XMatrixSigningInput::new(key.server_name().clone(), destination.to_owned(), key.ed25519());
    let signed = XMatrix::sign_http_request(&request, input).map_err(|e| ServerRequestError::Sign(e.to_string()))?;
    Ok(signed.to_string())
}
