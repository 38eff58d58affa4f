//! Guest access (client-server spec, "Guest access" module): the endpoints a guest account
//! may call. Everything else answers a guest 403 `M_GUEST_ACCESS_FORBIDDEN`.
//!
//! The list is the spec's (reading rooms and media, joining, leaving and sending, its own
//! profile, devices and keys), plus what Synapse also lets guests do and Element calls from
//! its first screen of a guest session: typing, receipts and read markers, filters, push
//! rules, account data, presence, capabilities, TURN servers, the room directory and
//! logging out. Endpoints that authenticate no one (`/versions`, `/login`, `/register`,
//! profiles) never reach this check.
//!
//! The check runs wherever a caller is authenticated: in the [`super::Ruma`] extractor and
//! in [`super::caller_of`] for the handlers outside ruma's types. It matches the route's
//! template (axum's `MatchedPath`), without the `/_matrix/client/{version}` prefix.

use http::{Method, StatusCode};

use crate::{
    error::{Error, Result},
    users::devices::Caller,
};

/// `(method, route after /_matrix/client/{version}/)`; `*` is one path parameter.
const GUEST_ENDPOINTS: &[(&str, &str)] = &[
    // Reading rooms and media (spec).
    ("GET", "rooms/*/state"),
    ("GET", "rooms/*/state/*"),
    ("GET", "rooms/*/state/*/"),
    ("GET", "rooms/*/state/*/*"),
    ("GET", "rooms/*/context/*"),
    ("GET", "rooms/*/event/*"),
    ("GET", "rooms/*/messages"),
    ("GET", "rooms/*/members"),
    ("GET", "rooms/*/initialSync"),
    ("GET", "sync"),
    ("GET", "events"),
    ("GET", "media/download/*/*"),
    ("GET", "media/download/*/*/*"),
    ("GET", "media/thumbnail/*/*"),
    // Taking part (spec).
    ("POST", "rooms/*/join"),
    ("POST", "join/*"),
    ("POST", "rooms/*/leave"),
    ("PUT", "rooms/*/send/*/*"),
    ("POST", "rooms/*/send/*"),
    ("PUT", "rooms/*/state/*"),
    ("PUT", "rooms/*/state/*/"),
    ("PUT", "rooms/*/state/*/*"),
    ("PUT", "sendToDevice/*/*"),
    // Its own account (spec).
    ("PUT", "profile/*/displayname"),
    ("GET", "devices"),
    ("GET", "devices/*"),
    ("PUT", "devices/*"),
    ("GET", "account/whoami"),
    // End-to-end encryption (spec).
    ("POST", "keys/upload"),
    ("POST", "keys/query"),
    ("POST", "keys/claim"),
    ("GET", "keys/changes"),
    // As Synapse allows, and Element uses.
    ("PUT", "profile/*/avatar_url"),
    ("PUT", "rooms/*/typing/*"),
    ("POST", "rooms/*/receipt/*/*"),
    ("POST", "rooms/*/read_markers"),
    ("POST", "user/*/filter"),
    ("GET", "user/*/filter/*"),
    ("GET", "pushrules/"),
    ("GET", "pushrules/global/"),
    ("GET", "pushrules/global/*/"),
    ("GET", "pushrules/global/*/*"),
    ("GET", "pushrules/global/*/*/*"),
    ("GET", "user/*/account_data/*"),
    ("PUT", "user/*/account_data/*"),
    ("GET", "user/*/rooms/*/account_data/*"),
    ("PUT", "user/*/rooms/*/account_data/*"),
    ("GET", "presence/*/status"),
    ("PUT", "presence/*/status"),
    ("GET", "capabilities"),
    ("GET", "voip/turnServer"),
    ("GET", "publicRooms"),
    ("POST", "logout"),
];

/// Reduces a route template to the form [`GUEST_ENDPOINTS`] lists: the client API's prefix
/// and version dropped, every `{parameter}` as `*`. `None` for routes outside the client
/// API.
fn route_key(template: &str) -> Option<String> {
    let rest = template.strip_prefix("/_matrix/client/")?;
    let (_version, rest) = rest.split_once('/')?;
    let parts: Vec<&str> =
        rest.split('/').map(|seg| if seg.starts_with('{') && seg.ends_with('}') { "*" } else { seg }).collect();
    Some(parts.join("/"))
}

/// Whether a guest may call `method` on the route `template`.
pub fn allowed(method: &Method, template: &str) -> bool {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    let Some(key) = route_key(template) else { return false };
    GUEST_ENDPOINTS.iter().any(|(m, route)| *m == method && *route == key)
}

/// 403 `M_GUEST_ACCESS_FORBIDDEN` when `caller` is a guest and the route is not one a
/// guest may call.
pub fn check(caller: &Caller, parts: &http::request::Parts, fallback_template: &str) -> Result<()> {
    if !caller.guest {
        return Ok(());
    }
    let template = parts.extensions.get::<axum::extract::MatchedPath>().map_or(fallback_template, |m| m.as_str());
    if allowed(&parts.method, template) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

/// The error a guest gets for an endpoint it may not call.
pub fn forbidden() -> Error {
    Error::matrix(StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed here")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_reduce_to_routes() {
        assert!(allowed(&Method::GET, "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"));
        assert!(allowed(&Method::HEAD, "/_matrix/client/r0/sync"));
        assert!(allowed(&Method::PUT, "/_matrix/client/v3/rooms/{roomId}/typing/{userId}"));
        assert!(allowed(&Method::GET, "/_matrix/client/v1/media/download/{server_name}/{media_id}"));
        assert!(!allowed(&Method::POST, "/_matrix/client/v3/createRoom"));
        assert!(!allowed(&Method::POST, "/_matrix/client/v3/rooms/{room_id}/invite"));
        assert!(!allowed(&Method::GET, "/_matrix/client/v3/initialSync"));
        assert!(!allowed(&Method::GET, "/_matrix/media/v3/download/{s}/{m}"));
        assert!(!allowed(&Method::GET, "/_matrix/key/v2/server"));
    }
}
