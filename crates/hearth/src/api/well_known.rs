//! `/.well-known/matrix/client` and `/.well-known/matrix/server`, with Conduit's semantics:
//! both are served when `allow_well_known` is on; the server document only when federation
//! is allowed. CORS (any origin) comes from the global layer, as web clients need. The same
//! documents are served without a database by `hearth well-known`
//! ([`crate::well_known_only`]).

use std::sync::Arc;

use axum::Router;
use ruma::api::{
    client::discovery::discover_homeserver::{self, HomeserverInfo},
    federation::discovery::discover_homeserver as discover_server,
};

use super::{Ruma, RumaRouter};
use crate::{
    error::{Error, Result},
    Services,
};

pub fn routes() -> Router<Arc<Services>> {
    Router::new().ruma(client).ruma(server).route("/.well-known/matrix/support", axum::routing::get(support))
}

/// `GET /.well-known/matrix/support`: whom to contact about this server
/// (`well_known.support_*`); 404 when none is configured.
pub async fn support(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
) -> Result<axum::Json<serde_json::Value>> {
    crate::well_known_only::support_document(&s.config)
        .map(axum::Json)
        .ok_or_else(|| Error::not_found("No support contact is configured"))
}

/// `GET /.well-known/matrix/client`
pub async fn client(
    s: Arc<Services>,
    _req: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    if !s.config.allow_well_known {
        return Err(Error::not_found("Well-known delegation is not served here"));
    }
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(s.config.client_base_url(s.listening_port()))))
}

/// `GET /.well-known/matrix/server`
pub async fn server(s: Arc<Services>, _req: Ruma<discover_server::Request>) -> Result<discover_server::Response> {
    if !s.config.allow_well_known || !s.config.allow_federation {
        return Err(Error::not_found("Well-known delegation is not served here"));
    }
    let server = s
        .config
        .federation_server()
        .parse()
        .map_err(|_| Error::internal("well_known.server is not a valid host:port"))?;
    Ok(discover_server::Response::new(server))
}
