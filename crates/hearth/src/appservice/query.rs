//! Questions Hearth asks application services (the application service API's
//! `/_matrix/app/v1/…`): whether a user or alias of their namespaces exists (they create it
//! before answering), their third-party protocols and lookups, and a ping.
//!
//! Every request carries the service's `hs_token` as a bearer token, has a time-out and
//! reads at most [`MAX_ANSWER`] bytes. A service that is down makes its answer "no", never
//! the request's failure (except a ping, whose point is to say so).

use std::time::Duration;

use ruma::{RoomAliasId, UserId};
use serde_json::{Map, Value};

use super::{AppService, AppServices};
use crate::transport::client::Fetched;

/// How long a service has to answer a question.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a service.
pub const MAX_ANSWER: usize = 1024 * 1024;
/// Most entries kept from one service's third-party lookup.
const MAX_LOOKUP_RESULTS: usize = 100;
/// How long a service's description of a protocol is used before it is asked again
/// (clients ask each time the room directory opens; the description seldom changes).
const PROTOCOL_TTL: Duration = Duration::from_secs(10 * 60);

/// (service id, protocol) → when the service described it, and how.
pub(super) type ProtocolCache =
    parking_lot::Mutex<std::collections::HashMap<(String, String), (std::time::Instant, Map<String, Value>)>>;

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

impl AppServices {
    /// Sends one request to `service` (`path` under its URL, with any query), with its
    /// `hs_token`; an error says why in words.
    pub(crate) async fn call(
        &self,
        service: &AppService,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let http = self.http.as_ref().ok_or("no HTTP client for application services")?;
        let base = service.url().ok_or("the registration has no url")?;
        let mut request = http
            .request(method, &format!("{base}{path}"))
            .map_err(|e| e.to_string())?
            .bearer_auth(&service.registration.hs_token);
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
            request = request.header(http::header::CONTENT_TYPE, "application/json").body(bytes);
        }
        http.send(request, timeout, MAX_ANSWER).await.map_err(|e| e.to_string())
    }

    /// Asks the services whose namespaces hold `user` whether it exists; `true` once one
    /// says yes (it has registered the user by then).
    pub async fn query_user(&self, user: &UserId) -> bool {
        let path = format!("/_matrix/app/v1/users/{}", encode(user.as_str()));
        self.ask_exists(|a| a.is_user_in_namespace(user), &path).await
    }

    /// Asks the services whose namespaces hold `alias` whether it exists; `true` once one
    /// says yes (it has created the alias by then).
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        let path = format!("/_matrix/app/v1/rooms/{}", encode(alias.as_str()));
        self.ask_exists(|a| a.is_alias_in_namespace(alias.as_str()), &path).await
    }

    /// `GET path` of each service with a URL that `holds` the thing, until one says 2xx.
    async fn ask_exists(&self, holds: impl Fn(&AppService) -> bool, path: &str) -> bool {
        for service in self.list.iter().filter(|a| a.url().is_some() && holds(a)) {
            match self.call(service, reqwest::Method::GET, path, None, QUERY_TIMEOUT).await {
                Ok(answer) if answer.status.is_success() => return true,
                Ok(_) => {}
                Err(e) => tracing::info!(appservice = service.id(), path, error = %e, "query failed"),
            }
        }
        false
    }

    /// The protocols the services bridge to, each described as its services say, their
    /// instances together (an instance with a `network_id` gets the `instance_id` that
    /// `/publicRooms` takes: `<service id>|<network id>`).
    pub async fn protocols(&self) -> Map<String, Value> {
        let mut names: Vec<&str> =
            self.list.iter().flat_map(|a| a.registration.protocols.iter().flatten().map(String::as_str)).collect();
        names.sort_unstable();
        names.dedup();
        let mut out = Map::new();
        for name in names {
            if let Some(p) = self.protocol(name).await {
                out.insert(name.to_owned(), p);
            }
        }
        out
    }

    /// One protocol, as [`AppServices::protocols`] describes it; `None` when no service
    /// bridges to it or none answered.
    pub async fn protocol(&self, name: &str) -> Option<Value> {
        let mut merged: Option<Map<String, Value>> = None;
        let mut instances = Vec::new();
        for service in self.list.iter().filter(|a| a.registration.protocols.iter().flatten().any(|p| p == name)) {
            let key = (service.id().to_owned(), name.to_owned());
            let cached = self.protocol_cache.lock().get(&key).filter(|(at, _)| at.elapsed() < PROTOCOL_TTL).cloned();
            let fresh = cached.is_none();
            let info = match cached {
                Some((_, info)) => Some(info),
                None => self.describe(service, name).await,
            };
            let Some(mut info) = info else { continue };
            if fresh {
                self.protocol_cache.lock().insert(key, (std::time::Instant::now(), info.clone()));
            }
            if let Some(Value::Array(list)) = info.remove("instances") {
                for mut instance in list.into_iter().take(MAX_LOOKUP_RESULTS) {
                    let Some(obj) = instance.as_object_mut() else { continue };
                    if let Some(network) = obj.get("network_id").and_then(Value::as_str) {
                        let id = format!("{}|{network}", service.id());
                        obj.insert("instance_id".into(), Value::String(id));
                    }
                    instances.push(instance);
                }
            }
            merged.get_or_insert(info);
        }
        let mut merged = merged?;
        merged.insert("instances".into(), Value::Array(instances));
        Some(Value::Object(merged))
    }

    /// `service`'s own description of protocol `name`, if it gives one.
    async fn describe(&self, service: &AppService, name: &str) -> Option<Map<String, Value>> {
        let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", encode(name));
        match self.call(service, reqwest::Method::GET, &path, None, QUERY_TIMEOUT).await {
            Ok(a) if a.status.is_success() => match serde_json::from_slice::<Value>(&a.body) {
                Ok(Value::Object(info)) => Some(info),
                _ => None,
            },
            Ok(a) => {
                tracing::info!(appservice = service.id(), protocol = name, status = %a.status, "protocol query refused");
                None
            }
            Err(e) => {
                tracing::info!(appservice = service.id(), protocol = name, error = %e, "protocol query failed");
                None
            }
        }
    }

    /// A third-party lookup (`kind` is `user` or `location`): by protocol and fields, or
    /// (no protocol) by Matrix id or alias; the answers of every service asked, together.
    /// `None` when `protocol` is one no service bridges to.
    pub async fn lookup(&self, kind: &str, protocol: Option<&str>, query: &str) -> Option<Vec<Value>> {
        let services: Vec<_> = match protocol {
            Some(p) => self.list.iter().filter(|a| a.registration.protocols.iter().flatten().any(|x| x == p)).collect(),
            None => {
                self.list.iter().filter(|a| a.registration.protocols.as_ref().is_some_and(|p| !p.is_empty())).collect()
            }
        };
        if protocol.is_some() && services.is_empty() {
            return None;
        }
        let mut path = format!("/_matrix/app/v1/thirdparty/{kind}");
        if let Some(p) = protocol {
            path.push('/');
            path.push_str(&encode(p));
        }
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        let mut out = Vec::new();
        for service in services {
            match self.call(service, reqwest::Method::GET, &path, None, QUERY_TIMEOUT).await {
                Ok(a) if a.status.is_success() => {
                    if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&a.body) {
                        out.extend(list.into_iter().filter(Value::is_object).take(MAX_LOOKUP_RESULTS));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::info!(appservice = service.id(), error = %e, "third-party lookup failed"),
            }
        }
        Some(out)
    }

    /// `POST /_matrix/app/v1/ping` to `service`: `Ok` with the time it took, or why not.
    pub async fn ping(&self, service: &AppService, transaction_id: Option<&str>) -> Result<Duration, PingError> {
        if service.url().is_none() {
            return Err(PingError::NoUrl);
        }
        let mut body = Map::new();
        if let Some(txn) = transaction_id {
            body.insert("transaction_id".into(), Value::String(txn.to_owned()));
        }
        let started = std::time::Instant::now();
        let body = Value::Object(body);
        match self.call(service, reqwest::Method::POST, "/_matrix/app/v1/ping", Some(&body), QUERY_TIMEOUT).await {
            Ok(a) if a.status.is_success() => Ok(started.elapsed()),
            Ok(a) => Err(PingError::Status(a.status.as_u16(), String::from_utf8_lossy(&a.body).into_owned())),
            Err(e) if e.contains("timed out") => Err(PingError::TimedOut),
            Err(e) => Err(PingError::Unreachable(e)),
        }
    }
}

/// Why a ping failed.
#[derive(Debug)]
pub enum PingError {
    NoUrl,
    TimedOut,
    Unreachable(String),
    /// The service answered with this status and body.
    Status(u16, String),
}
