//! Server-server API: `GET /_matrix/federation/v1/version`.

use std::sync::Arc;

use ruma::api::federation::discovery::get_server_version;

use crate::{api::Ruma, error::Result, Services};

/// `GET /_matrix/federation/v1/version`
///
/// The implementation's name and version, unauthenticated (other servers' admin tools and
/// federation testers ask).
pub async fn get_server_version(
    _s: Arc<Services>,
    _req: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Hearth".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut res = get_server_version::v1::Response::new();
    res.server = Some(server);
    Ok(res)
}
