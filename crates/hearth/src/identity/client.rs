//! Requests to identity servers (the identity service API, v2): the address lookup, storing
//! a third-party invite, binding and unbinding an address, and asking whether one of the
//! server's public keys is still valid.
//!
//! With `allow_federation` off, Hearth talks to no identity server either (403): the
//! server is kept an island. Validation mails go through the operator's own mail server
//! and are not affected.
//!
//! Clients name the identity server (`id_server`, a server name such as `vector.im`), so
//! every request goes through the outbound client: the address policy is checked on the
//! address connected to (loopback and the LAN only when allowlisted), with a time-out and a
//! cap on the answer. The client's `id_access_token` is sent as a bearer token; unbinding,
//! which the user's own token may not cover, is signed as this server (`X-Matrix`), as the
//! spec allows.

use std::time::Duration;

use base64::Engine;
use ruma::{OwnedUserId, ServerName, UserId};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;

use crate::{
    error::{Error, Result},
    transport::client::{Fetched, OutboundClient, OutboundError},
};

/// How long an identity server has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from one.
const MAX_ANSWER: usize = 64 * 1024;
/// Most public keys of a stored invite kept in the room's event.
const MAX_PUBLIC_KEYS: usize = 8;

/// A checked identity server name: a server name (host, optional port) and nothing else,
/// so that it cannot smuggle a path or credentials into the URL.
pub fn server_name(id_server: &str) -> Result<&ServerName> {
    let id_server = id_server.strip_prefix("https://").unwrap_or(id_server);
    <&ServerName>::try_from(id_server)
        .map_err(|_| Error::invalid_param(format!("{id_server} is not an identity server name")))
}

/// Why an identity server the client named was not asked: one the outbound policy does
/// not let Hearth reach is 403 `M_SERVER_NOT_TRUSTED`, a name with no address 400 (the
/// client's mistake), anything else (time-outs, refused connections) 502.
fn unreachable(id_server: &ServerName, e: OutboundError) -> Error {
    match e {
        OutboundError::Refused(_) => Error::matrix(
            http::StatusCode::FORBIDDEN,
            "M_SERVER_NOT_TRUSTED",
            format!("This server may not contact the identity server {id_server}: {e}"),
        ),
        OutboundError::NoAddress(_) => {
            Error::invalid_param(format!("The identity server {id_server} does not exist: {e}"))
        }
        e => Error::unavailable(format!("Cannot reach the identity server {id_server}: {e}")),
    }
}

/// One public key of a stored invite, as the room's `m.room.third_party_invite` carries it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct PublicKey {
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_validity_url: Option<String>,
}

/// What the identity server answered to `store-invite`.
#[derive(Debug, Deserialize)]
pub struct StoredInvite {
    pub token: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
    /// The older single-key form.
    #[serde(default)]
    pub public_key: Option<String>,
}

impl StoredInvite {
    /// The content of the room's `m.room.third_party_invite` event for this invite.
    pub fn event_content(&self) -> Value {
        let keys: Vec<&PublicKey> = self.public_keys.iter().take(MAX_PUBLIC_KEYS).collect();
        let mut content = json!({"display_name": self.display_name, "public_keys": keys});
        let first = keys.first();
        if let Some(key) = self.public_key.as_deref().or(first.map(|k| k.public_key.as_str())) {
            content["public_key"] = json!(key);
        }
        if let Some(url) = first.and_then(|k| k.key_validity_url.as_deref()) {
            content["key_validity_url"] = json!(url);
        }
        content
    }
}

/// The identity servers Hearth talks to for its users.
#[derive(Clone)]
pub struct IdentityClient {
    http: OutboundClient,
    key: std::sync::Arc<crate::server_key::ServerKey>,
    /// Whether other servers may be asked at all (`allow_federation`): a server kept an
    /// island talks to no identity server either.
    enabled: bool,
}

impl IdentityClient {
    pub fn new(http: OutboundClient, key: std::sync::Arc<crate::server_key::ServerKey>, enabled: bool) -> Self {
        IdentityClient { http, key, enabled }
    }

    fn url(id_server: &ServerName, path: &str) -> String {
        format!("https://{id_server}/_matrix/identity/v2/{path}")
    }

    /// 403 when this server talks to no other server.
    fn allowed(&self) -> Result<()> {
        match self.enabled {
            true => Ok(()),
            false => Err(Error::forbidden(
                "This server talks to no other servers, identity servers included (allow_federation is off)",
            )),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, id_server: &ServerName, what: &str) -> Result<Value> {
        let answer = self.http.send(request, TIMEOUT, MAX_ANSWER).await.map_err(|e| unreachable(id_server, e))?;
        Self::json(answer, id_server, what)
    }

    fn json(answer: Fetched, id_server: &ServerName, what: &str) -> Result<Value> {
        if !answer.status.is_success() {
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let reason = body.get("error").and_then(Value::as_str).unwrap_or_default().to_owned();
            return Err(Error::unavailable(format!(
                "The identity server {id_server} refused {what} ({}): {reason}",
                answer.status
            )));
        }
        serde_json::from_slice(&answer.body)
            .map_err(|e| Error::unavailable(format!("The identity server {id_server} answered {what} wrongly: {e}")))
    }

    fn post(
        &self,
        id_server: &ServerName,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<reqwest::RequestBuilder> {
        let mut request = self
            .http
            .request(reqwest::Method::POST, &Self::url(id_server, path))
            .map_err(|e| unreachable(id_server, e))?
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(request)
    }

    /// The Matrix user an address is bound to, if any (`hash_details`, then `lookup` with
    /// the hashed address, or the plain one when the server hashes nothing).
    pub async fn lookup(
        &self,
        id_server: &ServerName,
        token: &str,
        medium: &str,
        address: &str,
    ) -> Result<Option<OwnedUserId>> {
        self.allowed()?;
        let request = self
            .http
            .request(reqwest::Method::GET, &Self::url(id_server, "hash_details"))
            .map_err(|e| unreachable(id_server, e))?
            .bearer_auth(token);
        let details = self.send(request, id_server, "the hash details").await?;
        let pepper = details.get("lookup_pepper").and_then(Value::as_str).unwrap_or_default();
        let algorithms: Vec<&str> = details
            .get("algorithms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let (algorithm, key) = if algorithms.contains(&"sha256") {
            let digest = sha2::Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
            ("sha256", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest))
        } else if algorithms.contains(&"none") {
            ("none", format!("{address} {medium}"))
        } else {
            return Err(Error::unavailable(format!("The identity server {id_server} offers no lookup Hearth knows")));
        };
        let body = json!({"algorithm": algorithm, "pepper": pepper, "addresses": [key]});
        let answer = self.send(self.post(id_server, "lookup", Some(token), &body)?, id_server, "the lookup").await?;
        Ok(answer
            .get("mappings")
            .and_then(|m| m.get(&key))
            .and_then(Value::as_str)
            .and_then(|u| OwnedUserId::try_from(u).ok()))
    }

    /// Stores an invite of an address no one has bound yet; the identity server tells the
    /// address's owner and calls the homeserver back once they bind it.
    pub async fn store_invite(&self, id_server: &ServerName, token: &str, body: &Value) -> Result<StoredInvite> {
        self.allowed()?;
        let answer =
            self.send(self.post(id_server, "store-invite", Some(token), body)?, id_server, "the invite").await?;
        serde_json::from_value(answer).map_err(|e| {
            Error::unavailable(format!("The identity server {id_server} answered the invite wrongly: {e}"))
        })
    }

    /// Binds the address of a validation session (`sid`, `client_secret`) to `user`.
    pub async fn bind(
        &self,
        id_server: &ServerName,
        token: &str,
        sid: &str,
        client_secret: &str,
        user: &UserId,
    ) -> Result<(String, String)> {
        self.allowed()?;
        let body = json!({"sid": sid, "client_secret": client_secret, "mxid": user});
        let answer = self.send(self.post(id_server, "3pid/bind", Some(token), &body)?, id_server, "the bind").await?;
        let field = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_owned);
        match (field("medium"), field("address")) {
            (Some(medium), Some(address)) => Ok((medium, address)),
            _ => Err(Error::unavailable(format!("The identity server {id_server} did not say what it bound"))),
        }
    }

    /// Unbinds an address from `user`, signed as this server. `Ok(false)` when the
    /// identity server had no such binding (404).
    pub async fn unbind(&self, id_server: &ServerName, user: &UserId, medium: &str, address: &str) -> Result<bool> {
        self.allowed()?;
        let body = json!({"mxid": user, "threepid": {"medium": medium, "address": address}});
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let path = "/_matrix/identity/v2/3pid/unbind";
        let authorization =
            crate::transport::server_client::x_matrix(&self.key, id_server, &http::Method::POST, path, &bytes)
                .map_err(|e| Error::internal(e.to_string()))?;
        let request =
            self.post(id_server, "3pid/unbind", None, &body)?.header(http::header::AUTHORIZATION, authorization);
        let answer = self.http.send(request, TIMEOUT, MAX_ANSWER).await.map_err(|e| unreachable(id_server, e))?;
        if answer.status == http::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Self::json(answer, id_server, "the unbind").map(|_| true)
    }

    /// Whether the identity server still vouches for `public_key` (its `key_validity_url`).
    /// Any failure to ask counts as "no".
    pub async fn key_is_valid(&self, key_validity_url: &str, public_key: &str) -> bool {
        if self.allowed().is_err() {
            return false;
        }
        let Ok(mut url) = url::Url::parse(key_validity_url) else {
            return false;
        };
        url.query_pairs_mut().append_pair("public_key", public_key);
        match self.http.get(url.as_str(), TIMEOUT, MAX_ANSWER).await {
            Ok(answer) if answer.status.is_success() => serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("valid").and_then(Value::as_bool))
                .unwrap_or(false),
            Ok(answer) => {
                tracing::info!(url = key_validity_url, status = %answer.status, "key validity check refused");
                false
            }
            Err(e) => {
                tracing::info!(url = key_validity_url, error = %e, "key validity check failed");
                false
            }
        }
    }
}
