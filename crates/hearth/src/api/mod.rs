//! The HTTP surface: how a request becomes a typed ruma request and a typed ruma response
//! becomes HTTP. Handlers live in `client/` (one file per spec chapter) and `well_known.rs`.
//!
//! [`Ruma<R>`] is the extractor every handler takes. In order it reads the body within
//! `max_request_size` (413 `M_TOO_LARGE`), checks it is JSON (400 `M_NOT_JSON`),
//! authenticates the caller as the endpoint's metadata demands (401 `M_MISSING_TOKEN` /
//! `M_UNKNOWN_TOKEN`), then lets ruma parse path, query and body (400 `M_BAD_JSON` or
//! `M_INVALID_PARAM`). A handler therefore only ever sees well-formed input.

pub mod admin;
pub mod client;
pub mod federation;
pub mod guest;
pub mod health;
pub mod key;
mod request_slot;
pub mod well_known;

use std::{future::Future, sync::Arc};

use axum::{
    body::Body,
    extract::{FromRequest, FromRequestParts, RawPathParams, Request, State},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use bytes::{Bytes, BytesMut};
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ruma::api::{
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
    },
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
    IncomingRequest, IncomingRequestExt, OutgoingResponseExt,
};

use crate::{
    error::{Error, Result},
    json_depth::{nested_deeper_than, SAFE_DEPTH},
    Services,
};

/// What an endpoint's ruma metadata says about who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// No token looked at.
    None,
    /// A valid access token is required.
    Required,
    /// A token may be given; if given it must be valid.
    Optional,
    /// Signed by a remote server (federation).
    Server,
}

/// Maps ruma's authentication scheme types to [`AuthKind`].
pub trait AuthPolicy {
    const KIND: AuthKind;
}

impl AuthPolicy for NoAuthentication {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthPolicy for NoAccessToken {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthPolicy for AccessToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthPolicy for AccessTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}
// An application service's token is looked up with the users' (see `authenticate`).
impl AuthPolicy for AppserviceToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthPolicy for AppserviceTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}
impl AuthPolicy for ruma::api::federation::authentication::ServerSignatures {
    const KIND: AuthKind = AuthKind::Server;
}

pub use self::request_slot::RequestSlot;
pub use crate::users::devices::Caller;

/// A parsed, authenticated request of ruma type `R`.
pub struct Ruma<R> {
    pub body: R,
    pub caller: Option<Caller>,
    /// The server that signed a federation request (`X-Matrix`), verified.
    pub origin: Option<ruma::OwnedServerName>,
    /// The JSON body as received (`{}` when empty), for the few endpoints that keep keys
    /// ruma's request types leave out (custom content in a join).
    pub json: Bytes,
    /// The client's address (see [`client_ip`]).
    pub client_ip: Option<std::net::IpAddr>,
}

impl<R> Ruma<R> {
    /// The caller of an endpoint whose metadata requires a token.
    pub fn caller(&self) -> Result<&Caller> {
        self.caller.as_ref().ok_or_else(Error::missing_token)
    }

    /// The verified origin of a federation request.
    pub fn origin(&self) -> Result<&ruma::ServerName> {
        self.origin.as_deref().ok_or_else(|| Error::unauthorized("Missing X-Matrix authentication"))
    }
}

/// Verifies a federation request's `X-Matrix` signature against the origin's keys, over
/// the request as received: its method, its URI exactly as sent (before any routing), and
/// its body as sent. `destination` must be this server (never compared with `Host`).
/// Every failure is `M_UNAUTHORIZED`: 401, except an `X-Matrix` header that does not parse
/// (a bad origin server name, say), which is 400 as on Synapse, and a body that cannot be
/// signed at all (400 `M_NOT_JSON` or `M_BAD_JSON`).
pub(crate) async fn verify_server_request(
    services: &Services,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<ruma::OwnedServerName> {
    use ruma::api::federation::authentication::XMatrix;
    let x = XMatrix::extract_from_http_headers(&parts.headers).map_err(|e| {
        let given = parts
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .any(|v| v.as_bytes().get(..9).is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"X-Matrix ")));
        if given {
            Error::matrix(StatusCode::BAD_REQUEST, "M_UNAUTHORIZED", format!("Malformed X-Matrix authentication: {e}"))
        } else {
            Error::unauthorized(format!("Missing X-Matrix authentication: {e}"))
        }
    })?;
    let own = &services.config.server_name;
    match &x.destination {
        Some(d) if d == own => {}
        Some(d) => return Err(Error::unauthorized(format!("This request is for {d}, not {own}"))),
        None => return Err(Error::unauthorized("X-Matrix authentication must name its destination")),
    }
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(&parts.uri, |o| &o.0)
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let request = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|e| Error::unauthorized(format!("Cannot read the request: {e}")))?;
    let key_id = x.key.to_string();
    let keys =
        services.transport.keys.keys_for(&x.origin, std::slice::from_ref(&key_id), crate::time::now_millis()).await?;
    if !keys.get(x.origin.as_str()).is_some_and(|set| set.contains_key(&key_id)) {
        return Err(Error::unauthorized(format!("No valid key {key_id} of {} is known", x.origin)));
    }
    x.verify_http_request(&request, own, &keys).map_err(|e| {
        // A body the signature cannot cover (not JSON, or JSON with no canonical form, such
        // as a float) is the sender's mistake, not a forgery: 400. Looked at only here, so
        // that a request that verifies is parsed once.
        let parsed = serde_json::from_slice::<serde_json::Value>(body);
        match parsed.map(ruma::CanonicalJsonValue::try_from) {
            _ if body.is_empty() => Error::unauthorized(format!("X-Matrix signature does not verify: {e}")),
            Err(_) => Error::not_json("Content not JSON."),
            Ok(Err(e)) => Error::bad_json(format!("The body has no canonical JSON form: {e}")),
            Ok(Ok(_)) => Error::unauthorized(format!("X-Matrix signature does not verify: {e}")),
        }
    })?;
    Ok(x.origin)
}

/// The caller of a request handled outside ruma's types (the token as [`access_token`]
/// finds it); 401 without one.
pub(crate) fn caller_of(services: &Services, parts: &http::request::Parts) -> Result<Caller> {
    let token = access_token(parts)?.ok_or_else(Error::missing_token)?;
    let caller = authenticate(services, parts, &token)?;
    guest::check(&caller, parts, "")?;
    note_seen(services, &caller, parts);
    Ok(caller)
}

/// The device an application service acts through when it names none.
const APPSERVICE_DEVICE: &str = "APPSERVICE";

/// Who a token is: an application service's `as_token` acts as its sender or, with
/// `?user_id=`, as a user it registered (`?device_id=` names that user's device); any
/// other token is a user's.
fn authenticate(services: &Services, parts: &http::request::Parts, token: &str) -> Result<Caller> {
    let Some(service) = services.appservices.by_token(token) else { return services.users.authenticate(token) };
    let query = query_pairs(parts.uri.query().unwrap_or(""));
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let user_id = services.appservices.masquerade(service, param("user_id"), &services.users)?;
    let device_id = match param("device_id").or_else(|| param("org.matrix.msc3202.device_id")) {
        Some(d) if services.users.device(&user_id, d.into())?.is_some() => d.into(),
        Some(_) => return Err(Error::forbidden("The application service's user has no such device")),
        None => APPSERVICE_DEVICE.into(),
    };
    Ok(Caller { user_id, device_id, guest: false, appservice: Some(service.id().into()) })
}

/// The client's address: the connection's peer, or, when the peer is a trusted proxy
/// (`trusted_proxies`), the last address in `X-Forwarded-For` that is not one.
pub(crate) fn client_ip(parts: &http::request::Parts, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?.0.ip().to_canonical();
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<std::net::IpAddr> =
        forwarded.flat_map(|v| v.split(',')).filter_map(|a| a.trim().parse().ok()).collect();
    // Right to left: each trusted hop vouches for the one before it.
    for hop in hops.into_iter().rev() {
        client = hop.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// Records the caller's device as seen now, from this address and user agent (see
/// `users::activity`). A failure to record is logged, never the request's failure.
fn note_seen(services: &Services, caller: &Caller, parts: &http::request::Parts) {
    if caller.appservice.is_some() {
        return;
    }
    let seen = crate::users::activity::Seen {
        ip: client_ip(parts, &services.config.trusted_proxies).map(|ip| ip.to_string()),
        user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    if let Err(e) = services.users.note_seen(&caller.user_id, &caller.device_id, seen) {
        tracing::warn!(user = %caller.user_id, error = %e, "could not record a device's activity");
    }
}

/// The access token from `Authorization: Bearer …` or the deprecated `access_token` query
/// parameter (still sent by some clients and bridges).
fn access_token(parts: &http::request::Parts) -> Result<Option<String>> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Error::unknown_token())?;
        let token = value.strip_prefix("Bearer ").ok_or_else(Error::unknown_token)?.trim();
        return Ok(Some(token.to_owned()));
    }
    let query = parts.uri.query().unwrap_or("");
    for (k, v) in query_pairs(query) {
        if k == "access_token" {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Minimal `application/x-www-form-urlencoded` pair parsing for the token lookup.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Reads the whole body, refusing more than `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Error::too_large(format!("Request body is larger than the limit of {limit} bytes")))
        }
        Err(e) => Err(Error::invalid_param(format!("Could not read the request body: {e}"))),
    }
}

fn map_parse_error(err: FromHttpRequestError) -> Error {
    match err {
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed for this endpoint")
        }
        FromHttpRequestError::Deserialization(e) => match e {
            DeserializationError::Json(e) => Error::bad_json(format!("Invalid request body: {e}")),
            DeserializationError::Query(e) => Error::invalid_param(format!("Invalid query parameters: {e}")),
            DeserializationError::Ident(e) => Error::invalid_param(format!("Invalid identifier: {e}")),
            other => Error::bad_json(format!("Invalid request: {other}")),
        },
        // FromHttpRequestError is non-exhaustive.
        #[allow(unreachable_patterns)]
        other => Error::bad_json(format!("Invalid request: {other}")),
    }
}

impl<R> FromRequest<Arc<Services>> for Ruma<R>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
{
    type Rejection = Error;

    async fn from_request(req: Request, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let path_params = RawPathParams::from_request_parts(&mut parts, services)
            .await
            .map_err(|e| Error::invalid_param(format!("Invalid path: {e}")))?;
        let mut path_args: Vec<&str> = path_params.iter().map(|(_, v)| v).collect();
        // `/state/{eventType}` and `/state/{eventType}/` mean an empty state key, as
        // Element and Synapse have it (see `RumaRouter::ruma`).
        let expected = R::PATH_BUILDER.all_paths().next().map_or(0, |p| p.matches('{').count());
        while path_args.len() < expected {
            path_args.push("");
        }

        let mut body = read_body(body, services.config.max_request_size as usize).await?;
        let origin = match <R::Authentication as AuthPolicy>::KIND {
            AuthKind::Server => Some(verify_server_request(services, &parts, &body).await?),
            _ => None,
        };
        if body.is_empty() && parts.method != Method::GET && parts.method != Method::HEAD {
            // Clients post `/logout` and friends with no body at all; that means `{}`.
            body = Bytes::from_static(b"{}");
        }
        // serde skips ignored strings without checking their UTF-8: check it here.
        if !body.is_empty()
            && (std::str::from_utf8(&body).is_err() || serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err())
        {
            return Err(Error::not_json("Request body is not valid JSON"));
        }
        if std::str::from_utf8(&body).is_ok_and(|b| nested_deeper_than(b, SAFE_DEPTH)) {
            return Err(Error::bad_json(format!("Request body is nested deeper than {SAFE_DEPTH} levels")));
        }
        body = drop_empty_auth(body);

        let caller = match <R::Authentication as AuthPolicy>::KIND {
            AuthKind::None | AuthKind::Server => None,
            kind => match access_token(&parts)? {
                Some(token) => {
                    let caller = authenticate(services, &parts, &token)?;
                    let template = R::PATH_BUILDER.all_paths().next().unwrap_or("");
                    guest::check(&caller, &parts, template)?;
                    note_seen(services, &caller, &parts);
                    Some(caller)
                }
                None if kind == AuthKind::Required => return Err(Error::missing_token()),
                None => None,
            },
        };

        let client_ip = client_ip(&parts, &services.config.trusted_proxies);
        let http_req = http::Request::from_parts(parts, body.as_ref());
        let parsed = R::try_from_http_request(http_req, &path_args).map_err(map_parse_error)?;
        Ok(Ruma { body: parsed, caller, origin, json: body, client_ip })
    }
}

/// Two `auth` objects clients send that Synapse accepts and ruma's types do not:
///
/// - matrix-nio opens UIA with an `auth` object that has neither `type` nor `session`,
///   e.g. `{"initial_device_display_name": …}`. The spec allows leaving out `type` only
///   with a `session`; such an object carries no authentication, so it is read as no
///   `auth` at all rather than refused as `M_BAD_JSON`.
/// - A password stage naming its user with the old top-level `user` (r0's form, still sent
///   by sytest and older scripts) instead of an `identifier`: read as an `m.id.user`
///   identifier.
fn drop_empty_auth(body: Bytes) -> Bytes {
    // Cheap pre-check: only bodies that mention `"auth"` are parsed again.
    if !body.windows(6).any(|w| w == b"\"auth\"") {
        return body;
    }
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(serde_json::Value::Object(auth)) = map.get_mut("auth") else { return body };
    if !auth.contains_key("type") && !auth.contains_key("session") {
        map.remove("auth");
    } else if auth.get("type").and_then(serde_json::Value::as_str) == Some("m.login.password")
        && !auth.contains_key("identifier")
    {
        let Some(user) = auth.remove("user") else { return body };
        auth.insert("identifier".into(), serde_json::json!({"type": "m.id.user", "user": user}));
    } else {
        return body;
    }
    serde_json::to_vec(&map).map(Bytes::from).unwrap_or(body)
}

/// A ruma response as an axum response.
pub struct RumaResponse<T>(pub T);

impl<T: ruma::api::OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res.map(|b| Body::from(b.freeze())),
            Err(e) => Error::internal(format!("cannot serialise response: {e}")).into_response(),
        }
    }
}

fn method_filter(method: &Method) -> MethodFilter {
    match *method {
        Method::GET => MethodFilter::GET,
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        Method::PATCH => MethodFilter::PATCH,
        Method::HEAD => MethodFilter::HEAD,
        _ => MethodFilter::OPTIONS,
    }
}

/// Extension to register a ruma endpoint on every path its metadata names.
pub trait RumaRouter {
    fn ruma<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthPolicy,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static;
}

impl RumaRouter for Router<Arc<Services>> {
    fn ruma<R, H, Fut>(mut self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthPolicy,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
    {
        let mut filter = method_filter(&R::METHOD);
        if R::METHOD == Method::GET {
            filter = filter.or(MethodFilter::HEAD);
        }
        let mut paths: Vec<String> = R::PATH_BUILDER.all_paths().map(str::to_owned).collect();
        for path in paths.clone() {
            if let Some(prefix) = path.strip_suffix("/{state_key}") {
                paths.push(prefix.to_owned());
                paths.push(format!("{prefix}/"));
            }
        }
        for path in paths {
            let handler = handler.clone();
            self = self.route(
                &path,
                on(filter, move |State(s): State<Arc<Services>>, req: Ruma<R>| async move {
                    handler(s, req).await.map(RumaResponse)
                }),
            );
        }
        self
    }
}
