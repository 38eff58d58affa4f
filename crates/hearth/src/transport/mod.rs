//! Transport: how Hearth reaches other servers, below federation, media and push, with no
//! room logic: the outbound address policy ([`policy`]); the one HTTP client that applies
//! it, with TLS verification, time-outs and size caps, to every request to a URL someone
//! else chose ([`client`]); DNS ([`dns`]); and server discovery, from a server name to
//! where its federation API answers ([`resolve`]); the client for other servers' APIs,
//! signing with `X-Matrix` ([`server_client`]); and other servers' signing keys, fetched,
//! verified, cached and served again as a notary ([`keys`]).
//!
//! Dependencies: `transport` reads `config`, `server_key` and `store`; `federation/`, media and push will call into
//! it; it calls none of them.

pub mod client;
pub mod dns;
pub mod keys;
pub mod pinned;
pub mod policy;
pub mod resolve;
pub mod server_client;

use std::sync::Arc;

use crate::{config::Config, server_key::ServerKey, store::Store};

/// Everything that reaches other servers, built once from the configuration.
pub struct Transport {
    pub outbound: client::OutboundClient,
    pub servers: Arc<server_client::ServerClient>,
    pub keys: Arc<keys::ServerKeys>,
}

impl Transport {
    /// Builds the transport for `config`; a configuration that cannot work (an unreadable
    /// `federation_ca_file`, no usable DNS configuration) is an error naming it.
    pub fn new(config: &Config, store: Arc<Store>, own: Arc<ServerKey>) -> Result<Self, String> {
        let dns = Arc::new(dns::Dns::new(&config.dns_servers).map_err(|e| e.to_string())?);
        let outbound = client::OutboundClient::from_config_with(config, dns.clone()).map_err(|e| e.to_string())?;
        let resolver = Arc::new(resolve::ServerResolver::new(outbound.clone(), dns.clone()));
        let servers = Arc::new(server_client::ServerClient::new(outbound.clone(), resolver, dns, own.clone()));
        let keys = Arc::new(keys::ServerKeys::new(store, servers.clone(), own, config.trusted_servers.clone()));
        Ok(Transport { outbound, servers, keys })
    }
}
