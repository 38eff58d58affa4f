//! Third-party identifiers (e-mail addresses) end to end: registering with an address,
//! logging in and resetting a password with it, adding and removing addresses, binding
//! them at an identity server, and third-party invites (by address), on one server and
//! across two.
//!
//! What is real: Hearth over real HTTP on loopback; the identity server is reached over
//! real TLS (a leaf of a throw-away CA that Hearth trusts through `federation_ca_file`, or
//! a self-signed certificate Hearth trusts through `pinned_certificates`) under the
//! outbound address policy; validation mails go out through lettre over a real SMTP
//! conversation on TCP; signatures are real ed25519 (the identity server's on invites,
//! Hearth's `X-Matrix` on unbind, checked here with Hearth's public key); federation runs
//! between two real Hearths (see `federation.rs`).
//!
//! What is a stand-in, written in this file as the bridge is in `appservice.rs`: the
//! identity server (an axum app speaking the parts of the identity service API v2 Hearth
//! uses, with validation sessions the test fills directly, and a helper that plays "the
//! user bound the address" by calling Hearth's `/3pid/onbind`), and the mail server (a
//! sink that speaks just enough SMTP and keeps each mail's text, so that the test can
//! follow the link in it as the user would).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::HeaderMap,
    routing::{get, post},
    Json, Router,
};
use base64::Engine;
use hearth::{store::Backend, transport::server_client::ServerRequest};
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use ruma::{
    api::federation::authentication::XMatrix,
    canonical_json::CanonicalJsonObject,
    serde::{base64::Standard, Base64},
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet},
    ServerName,
};
use serde_json::{json, Value};
use sha2::Digest;
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::{
    both_engines,
    common::{assert_error, tls::TestCa, TestServer, TOKEN},
    federation::pair_with,
    federation_rooms::eventually,
};

const PASSWORD: &str = "a long password";
/// The user's access token at the identity server.
const IS_TOKEN: &str = "id-access-token-of-the-user";

// ---------------------------------------------------------------------------------------
// The identity server
// ---------------------------------------------------------------------------------------

/// An invite the identity server stored (`store-invite`): its token and what Hearth sent.
#[derive(Clone, Debug)]
struct StoredInvite {
    token: String,
    body: Value,
}

/// An unbind request as it arrived.
#[derive(Clone, Debug)]
struct Unbind {
    authorization: Option<String>,
    body: Vec<u8>,
}

struct IsState {
    /// Its server name, `127.0.0.1:PORT`.
    name: String,
    pepper: String,
    key: Ed25519KeyPair,
    /// The public key, unpadded standard base64, as identity servers publish it.
    public_key: String,
    /// What `pubkey/isvalid` answers for its key: false once revoked.
    key_valid: AtomicBool,
    validity_checks: AtomicUsize,
    /// Validation sessions it holds, validated: sid → (client secret, medium, address).
    sessions: Mutex<HashMap<String, (String, String, String)>>,
    /// (medium, address) → the Matrix user it is bound to.
    bindings: Mutex<HashMap<(String, String), String>>,
    invites: Mutex<Vec<StoredInvite>>,
    unbinds: Mutex<Vec<Unbind>>,
    next_token: AtomicUsize,
}

/// The identity server, serving HTTPS on loopback with the certificate it was started
/// with; its files (certificate, key, CA) live as long as it does.
#[derive(Clone)]
struct IdentityServer {
    state: Arc<IsState>,
    files: Arc<TempDir>,
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {IS_TOKEN}"))
}

fn refusal(status: StatusCode, errcode: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"errcode": errcode, "error": format!("the test identity server says {errcode}")})))
}

/// The lookup hash of an address (identity service API v2, `sha256`).
fn lookup_hash(medium: &str, address: &str, pepper: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

fn field(body: &Value, key: &str) -> String {
    body[key].as_str().unwrap_or_default().to_owned()
}

async fn hash_details(State(s): State<Arc<IsState>>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) {
        return refusal(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
    (StatusCode::OK, Json(json!({"algorithms": ["sha256"], "lookup_pepper": s.pepper})))
}

async fn lookup(
    State(s): State<Arc<IsState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) {
        return refusal(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
    if body["algorithm"] != "sha256" || body["pepper"] != s.pepper.as_str() {
        return refusal(StatusCode::BAD_REQUEST, "M_INVALID_PEPPER");
    }
    let asked: Vec<&str> = body["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut mappings = serde_json::Map::new();
    for ((medium, address), mxid) in s.bindings.lock().iter() {
        let hash = lookup_hash(medium, address, &s.pepper);
        if asked.contains(&hash.as_str()) {
            mappings.insert(hash, json!(mxid));
        }
    }
    (StatusCode::OK, Json(json!({"mappings": mappings})))
}

async fn store_invite(
    State(s): State<Arc<IsState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) {
        return refusal(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
    if s.bindings.lock().contains_key(&(field(&body, "medium"), field(&body, "address"))) {
        return refusal(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE");
    }
    let token = format!("invite-token-{}", s.next_token.fetch_add(1, Ordering::SeqCst));
    s.invites.lock().push(StoredInvite { token: token.clone(), body });
    let key_validity_url = format!("https://{}/_matrix/identity/v2/pubkey/isvalid", s.name);
    (
        StatusCode::OK,
        Json(json!({
            "token": token,
            "display_name": "Bob",
            "public_keys": [{"public_key": s.public_key, "key_validity_url": key_validity_url}],
        })),
    )
}

async fn bind(State(s): State<Arc<IsState>>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) {
        return refusal(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
    let (sid, client_secret, mxid) = (field(&body, "sid"), field(&body, "client_secret"), field(&body, "mxid"));
    let session = s.sessions.lock().get(&sid).cloned();
    let Some((_, medium, address)) = session.filter(|(secret, _, _)| *secret == client_secret) else {
        return refusal(StatusCode::NOT_FOUND, "M_NO_VALID_SESSION");
    };
    s.bindings.lock().insert((medium.clone(), address.clone()), mxid.clone());
    (
        StatusCode::OK,
        Json(json!({
            "medium": medium, "address": address, "mxid": mxid,
            "not_before": 0, "not_after": 4_102_444_800_000u64, "ts": 0, "signatures": {},
        })),
    )
}

async fn unbind(State(s): State<Arc<IsState>>, headers: HeaderMap, body: Bytes) -> (StatusCode, Json<Value>) {
    let authorization = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.unbinds.lock().push(Unbind { authorization: authorization.clone(), body: body.to_vec() });
    if !authorization.is_some_and(|a| a.starts_with("X-Matrix ")) && !authorised(&headers) {
        return refusal(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let key = (field(&body["threepid"], "medium"), field(&body["threepid"], "address"));
    let mut bindings = s.bindings.lock();
    match bindings.get(&key) {
        Some(mxid) if *mxid == field(&body, "mxid") => {
            bindings.remove(&key);
            (StatusCode::OK, Json(json!({})))
        }
        _ => refusal(StatusCode::NOT_FOUND, "M_NOT_FOUND"),
    }
}

async fn is_valid(State(s): State<Arc<IsState>>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    s.validity_checks.fetch_add(1, Ordering::SeqCst);
    let ours = q.get("public_key") == Some(&s.public_key);
    Json(json!({"valid": ours && s.key_valid.load(Ordering::SeqCst)}))
}

/// A fresh ed25519 key pair with key id `ed25519:0`.
fn ed25519_key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".into()).expect("key pair")
}

impl IdentityServer {
    /// Serving a leaf of a CA of its own for `localhost` and `127.0.0.1`; Hearth trusts
    /// that CA through [`IdentityServer::trusted_by`].
    async fn start() -> Self {
        let files = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("identity server CA");
        ca.write_pem(&files.path().join("ca.pem"));
        let leaf = ca.leaf("localhost", &["localhost", "127.0.0.1"]);
        Self::serve(files, &leaf.chain_pem, &leaf.key_pem).await
    }

    /// Serving a self-signed certificate (no CA): trusted only when pinned.
    async fn self_signed() -> Self {
        let files = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate names");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        Self::serve(files, &cert.pem(), &key.serialize_pem()).await
    }

    async fn serve(files: TempDir, cert_pem: &str, key_pem: &str) -> Self {
        let (certs, key_file) = (files.path().join("cert.pem"), files.path().join("key.pem"));
        std::fs::write(&certs, cert_pem).expect("write certificate");
        std::fs::write(&key_file, key_pem).expect("write key");
        let cert = Arc::new(hearth::tls::ServerCert::load(&certs, &key_file).expect("certificate"));
        let config = hearth::tls::server_config(cert).expect("TLS config");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let name = format!("127.0.0.1:{}", tcp.local_addr().expect("addr").port());
        let key = ed25519_key();
        let public_key = Base64::<Standard>::new(key.public_key().to_vec()).encode();
        let state = Arc::new(IsState {
            name,
            pepper: "matrixrocks".to_owned(),
            key,
            public_key,
            key_valid: AtomicBool::new(true),
            validity_checks: AtomicUsize::new(0),
            sessions: Mutex::default(),
            bindings: Mutex::default(),
            invites: Mutex::default(),
            unbinds: Mutex::default(),
            next_token: AtomicUsize::new(1),
        });
        let app = Router::new()
            .route("/_matrix/identity/v2/hash_details", get(hash_details))
            .route("/_matrix/identity/v2/lookup", post(lookup))
            .route("/_matrix/identity/v2/store-invite", post(store_invite))
            .route("/_matrix/identity/v2/3pid/bind", post(bind))
            .route("/_matrix/identity/v2/3pid/unbind", post(unbind))
            .route("/_matrix/identity/v2/pubkey/isvalid", get(is_valid))
            .with_state(state.clone());
        let listener = hearth::tls::TlsListener::new(tcp, config);
        tokio::spawn(async move { axum::serve(listener, app).await });
        IdentityServer { state, files: Arc::new(files) }
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    /// The certificate it serves (PEM), for `pinned_certificates`.
    fn cert_file(&self) -> PathBuf {
        self.files.path().join("cert.pem")
    }

    /// Lets a Hearth reach it: its CA trusted, loopback allowed.
    fn trusted_by(&self, c: &mut hearth::Config) {
        c.federation_ca_file = Some(self.files.path().join("ca.pem"));
        c.ip_range_allowlist = vec!["127.0.0.0/8".parse().expect("range")];
    }

    /// A validation session the user completed here.
    fn validated_session(&self, sid: &str, client_secret: &str, address: &str) {
        let session = (client_secret.to_owned(), "email".to_owned(), address.to_owned());
        self.state.sessions.lock().insert(sid.to_owned(), session);
    }

    fn bound_to(&self, address: &str) -> Option<String> {
        self.state.bindings.lock().get(&("email".to_owned(), address.to_owned())).cloned()
    }

    /// The user bound `address` here without any homeserver involved.
    fn bind_directly(&self, address: &str, mxid: &str) {
        self.state.bindings.lock().insert(("email".to_owned(), address.to_owned()), mxid.to_owned());
    }

    fn invites_for(&self, address: &str) -> Vec<StoredInvite> {
        self.state.invites.lock().iter().filter(|i| i.body["address"] == address).cloned().collect()
    }

    fn unbinds(&self) -> Vec<Unbind> {
        self.state.unbinds.lock().clone()
    }

    fn revoke_key(&self, revoked: bool) {
        self.state.key_valid.store(!revoked, Ordering::SeqCst);
    }

    fn validity_checks(&self) -> usize {
        self.state.validity_checks.load(Ordering::SeqCst)
    }

    /// `object` signed as this identity server with `key`.
    fn sign_with(&self, key: &Ed25519KeyPair, object: Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(object).expect("canonical JSON");
        ruma::signatures::sign_json(self.name(), key, &mut object).expect("sign");
        serde_json::to_value(object).expect("JSON")
    }

    /// The signed object of a third-party invite, as the identity server gives it to the
    /// invitee (and in `onbind`), signed with its own key.
    fn signed(&self, mxid: &str, sender: &str, token: &str) -> Value {
        self.sign_with(&self.state.key, json!({"mxid": mxid, "sender": sender, "token": token}))
    }

    /// Plays "the user bound the address": records the binding, then tells `hearth` (the
    /// user's homeserver) through `/3pid/onbind` with the invites stored for the address,
    /// signed with `key` (the identity server's own unless another is given).
    async fn on_bind(
        &self,
        hearth: &TestServer,
        address: &str,
        mxid: &str,
        key: Option<&Ed25519KeyPair>,
    ) -> (StatusCode, Value) {
        self.bind_directly(address, mxid);
        let key = key.unwrap_or(&self.state.key);
        let invites: Vec<Value> = self
            .invites_for(address)
            .into_iter()
            .map(|i| {
                let sender = field(&i.body, "sender");
                let signed = self.sign_with(key, json!({"mxid": mxid, "sender": sender, "token": i.token}));
                json!({
                    "medium": "email", "address": address, "mxid": mxid,
                    "room_id": i.body["room_id"], "sender": sender, "signed": signed,
                })
            })
            .collect();
        let body = json!({"medium": "email", "address": address, "mxid": mxid, "invites": invites});
        hearth.post("/_matrix/federation/v1/3pid/onbind", None, body).await
    }

    /// Asserts that `unbind` carried a valid `X-Matrix` signature of `server` for this
    /// identity server, and returns its body.
    fn assert_signed_by(&self, unbind: &Unbind, server: &TestServer) -> Value {
        let header = unbind.authorization.as_deref().expect("the unbind carries an Authorization header");
        let x_matrix = XMatrix::parse(header).unwrap_or_else(|e| panic!("not X-Matrix ({e}): {header}"));
        let key = &server.services().server_key;
        assert_eq!(x_matrix.origin, *key.server_name());
        let request = http::Request::builder()
            .method("POST")
            .uri("/_matrix/identity/v2/3pid/unbind")
            .body(unbind.body.clone())
            .expect("request");
        let keys = PublicKeyMap::from([(
            key.server_name().to_string(),
            PublicKeySet::from([(key.key_id(), key.public_key())]),
        )]);
        let destination = <&ServerName>::try_from(self.name()).expect("server name");
        x_matrix.verify_http_request(&request, destination, &keys).expect("the X-Matrix signature verifies");
        serde_json::from_slice(&unbind.body).expect("JSON body")
    }
}

// ---------------------------------------------------------------------------------------
// The mail sink
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Mail {
    /// The `RCPT TO` addresses.
    to: Vec<String>,
    /// The message as sent after `DATA`, dot-stuffing undone.
    raw: String,
}

impl Mail {
    fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = self.raw.split_once("\r\n\r\n")?;
        headers.split("\r\n").find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }

    /// The text of the body, its transfer encoding undone.
    fn text(&self) -> String {
        let (_, body) = self.raw.split_once("\r\n\r\n").expect("headers, then a body");
        match self.header("Content-Transfer-Encoding").map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("quoted-printable") => decode_quoted_printable(body),
            Some("base64") => {
                let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(compact).expect("base64 body");
                String::from_utf8(bytes).expect("UTF-8 body")
            }
            _ => body.to_owned(),
        }
    }

    /// The first link in the body.
    fn link(&self) -> String {
        let text = self.text();
        let start = text.find("http").unwrap_or_else(|| panic!("no link in the mail: {text}"));
        text[start..].split_whitespace().next().expect("link").to_owned()
    }
}

/// Quoted-printable (RFC 2045): soft line breaks dropped, `=XX` decoded.
fn decode_quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped =
            (bytes[i] == b'=').then(|| s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())).flatten();
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 text")
}

/// A mail server on loopback that takes every mail and keeps it (no TLS: Hearth is
/// configured with `smtp_tls = "none"`).
#[derive(Clone)]
struct MailSink {
    port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl MailSink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let kept = mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = smtp_session(stream, kept).await;
                });
            }
        });
        MailSink { port, mails }
    }

    /// Hearth sends its mails here.
    fn configure(&self, c: &mut hearth::Config) {
        c.smtp_host = Some("127.0.0.1".to_owned());
        c.smtp_port = self.port;
        c.smtp_tls = "none".to_owned();
        c.email_from = Some("Hearth <noreply@hearth.test>".to_owned());
    }

    fn count(&self) -> usize {
        self.mails.lock().len()
    }

    fn last(&self) -> Mail {
        self.mails.lock().last().cloned().expect("a mail was sent")
    }
}

/// One SMTP conversation: greeting, `EHLO`, `MAIL FROM`, `RCPT TO`, `DATA`, `QUIT`. The
/// mail is kept before its `250`, so it is there once the sender has its answer.
async fn smtp_session(stream: TcpStream, mails: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP test sink\r\n").await?;
    let mut to = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let command = text.to_ascii_uppercase();
        if command.starts_with("EHLO") {
            write.write_all(b"250-sink.test hello\r\n250 OK\r\n").await?;
        } else if command.starts_with("HELO") {
            write.write_all(b"250 sink.test\r\n").await?;
        } else if command.starts_with("MAIL FROM:") {
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if command.starts_with("RCPT TO:") {
            let address = text["RCPT TO:".len()..].trim();
            let address = address.split_whitespace().next().unwrap_or_default();
            to.push(address.trim_start_matches('<').trim_end_matches('>').to_owned());
            write.write_all(b"250 OK\r\n").await?;
        } else if command == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut raw = String::new();
            loop {
                line.clear();
                if read.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                let data = String::from_utf8_lossy(&line).into_owned();
                if data == ".\r\n" || data == ".\n" {
                    break;
                }
                raw.push_str(data.strip_prefix('.').unwrap_or(&data));
            }
            mails.lock().push(Mail { to: std::mem::take(&mut to), raw });
            write.write_all(b"250 OK queued\r\n").await?;
        } else if command == "RSET" || command == "NOOP" {
            write.write_all(b"250 OK\r\n").await?;
        } else if command == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `POST …/{what}/email/requestToken` (`what`: `register`, `account/3pid` or
/// `account/password`).
async fn request_token(
    server: &TestServer,
    what: &str,
    address: &str,
    client_secret: &str,
    send_attempt: u64,
) -> (StatusCode, Value) {
    let body = json!({"client_secret": client_secret, "email": address, "send_attempt": send_attempt});
    server.post(&format!("/_matrix/client/v3/{what}/email/requestToken"), None, body).await
}

/// The sid of a validation mail that was sent.
async fn request_sid(server: &TestServer, what: &str, address: &str, client_secret: &str) -> String {
    let (status, started) = request_token(server, what, address, client_secret, 1).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    started["sid"].as_str().expect("sid").to_owned()
}

/// Opens the link of a validation mail as the user's browser would: its path and query on
/// this server (the link names the server's public base URL).
async fn follow(server: &TestServer, link: &str) -> (StatusCode, String) {
    let path = &link[link.find("/_hearth/").unwrap_or_else(|| panic!("the link leads elsewhere: {link}"))..];
    let res = server.http.get(format!("{}{path}", server.base)).send().await.expect("GET the link");
    (res.status(), res.text().await.expect("page"))
}

async fn threepids(server: &TestServer, token: &str) -> Vec<String> {
    let (status, listed) = server.get("/_matrix/client/v3/account/3pid", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    listed["threepids"]
        .as_array()
        .expect("threepids")
        .iter()
        .inspect(|t| assert_eq!(t["medium"], "email", "{t}"))
        .map(|t| t["address"].as_str().expect("address").to_owned())
        .collect()
}

async fn login_by_email(server: &TestServer, address: &str, password: &str) -> (StatusCode, Value) {
    let identifier = json!({"type": "m.id.thirdparty", "medium": "email", "address": address});
    server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": identifier, "password": password}),
        )
        .await
}

/// Registers `username` with `address` (token stage, then the e-mail stage after the
/// validation link was followed); returns (user id, access token).
async fn register_with_email(server: &TestServer, sink: &MailSink, username: &str, address: &str) -> (String, String) {
    let body = |auth: Value| json!({"username": username, "password": PASSWORD, "auth": auth});
    let (status, challenge) =
        server.post("/_matrix/client/v3/register", None, json!({"username": username, "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session = challenge["session"].clone();
    let secret = format!("secret-of-{username}");
    let sid = request_sid(server, "register", address, &secret).await;
    let (status, page) = follow(server, &sink.last().link()).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let token_stage = json!({"type": "m.login.registration_token", "token": TOKEN, "session": session});
    let (status, next) = server.post("/_matrix/client/v3/register", None, body(token_stage)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{next}");
    let email_stage = json!({
        "type": "m.login.email.identity",
        "threepid_creds": {"sid": sid, "client_secret": secret},
        "session": session,
    });
    let (status, registered) = server.post("/_matrix/client/v3/register", None, body(email_stage)).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    (
        registered["user_id"].as_str().expect("user id").to_owned(),
        registered["access_token"].as_str().expect("token").to_owned(),
    )
}

fn stages(flow: &Value) -> Vec<&str> {
    flow["stages"].as_array().expect("stages").iter().map(|s| s.as_str().expect("stage")).collect()
}

// ---------------------------------------------------------------------------------------
// E-mail: registration, login, password reset, account addresses
// ---------------------------------------------------------------------------------------

both_engines!(registration_and_login_by_email, password_reset_by_email, adding_and_removing_an_account_address);

async fn registration_and_login_by_email(b: Backend) {
    let sink = MailSink::start().await;
    let server = TestServer::start_with(b, |c| sink.configure(c)).await;

    // With a mail server, one flow ends in the e-mail stage (after the token).
    let (status, challenge) =
        server.post("/_matrix/client/v3/register", None, json!({"username": "bob", "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let flows: Vec<Vec<&str>> = challenge["flows"].as_array().expect("flows").iter().map(stages).collect();
    assert!(
        flows.contains(&vec!["m.login.registration_token", "m.login.email.identity"]),
        "no e-mail flow: {challenge}"
    );
    let session = challenge["session"].clone();

    // The address is kept in lower case; the mail goes to it, with a link to this server.
    let secret = "bobs-client-secret";
    let (status, started) = request_token(&server, "register", "Bob@Example.org", secret, 1).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let sid = started["sid"].as_str().expect("sid").to_owned();
    assert_eq!(sink.count(), 1);
    let mail = sink.last();
    assert_eq!(mail.to, vec!["bob@example.org".to_owned()]);
    assert!(mail.header("Subject").is_some_and(|s| s.contains("hearth.test")), "{}", mail.raw);
    let link = mail.link();
    assert!(link.starts_with("https://hearth.test/_hearth/client/email/validate?"), "{link}");
    let query: HashMap<String, String> =
        url::Url::parse(&link).expect("link").query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    assert_eq!((query["sid"].as_str(), query["client_secret"].as_str()), (sid.as_str(), secret));

    // The same request again (same attempt) is the same session, and no second mail.
    let (status, again) = request_token(&server, "register", "bob@example.org", secret, 1).await;
    assert_eq!((status, &again["sid"]), (StatusCode::OK, &json!(sid)), "{again}");
    assert_eq!(sink.count(), 1, "a repeated request sends no second mail");

    let body = |auth: Value| json!({"username": "bob", "password": PASSWORD, "auth": auth});
    let token_stage = json!({"type": "m.login.registration_token", "token": TOKEN, "session": session});
    let (status, next) = server.post("/_matrix/client/v3/register", None, body(token_stage)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{next}");
    assert_eq!(next["completed"], json!(["m.login.registration_token"]));
    let email_stage = json!({
        "type": "m.login.email.identity",
        "threepid_creds": {"sid": sid, "client_secret": secret},
        "session": session,
    });
    // Before the link is followed the stage fails.
    let (status, early) = server.post("/_matrix/client/v3/register", None, body(email_stage.clone())).await;
    assert_eq!((status, &early["errcode"]), (StatusCode::UNAUTHORIZED, &json!("M_THREEPID_AUTH_FAILED")), "{early}");

    // A link with a wrong token validates nothing; the mail's own link does.
    let forged = link.replace(&format!("token={}", query["token"]), "token=wrong");
    assert_eq!(follow(&server, &forged).await.0, StatusCode::BAD_REQUEST);
    let (status, page) = follow(&server, &link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("<html") && page.contains("Address confirmed"), "{page}");

    let (status, registered) = server.post("/_matrix/client/v3/register", None, body(email_stage)).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    assert_eq!(registered["user_id"], "@bob:hearth.test");
    let bob_token = registered["access_token"].as_str().expect("token").to_owned();
    assert_eq!(threepids(&server, &bob_token).await, vec!["bob@example.org".to_owned()]);

    // Login with the address, in any case; the legacy top-level fields too.
    for address in ["bob@example.org", "BOB@EXAMPLE.ORG"] {
        let (status, logged_in) = login_by_email(&server, address, PASSWORD).await;
        assert_eq!((status, &logged_in["user_id"]), (StatusCode::OK, &json!("@bob:hearth.test")), "{logged_in}");
    }
    let legacy =
        json!({"type": "m.login.password", "medium": "email", "address": "bob@example.org", "password": PASSWORD});
    let (status, logged_in) = server.post("/_matrix/client/v3/login", None, legacy).await;
    assert_eq!((status, &logged_in["user_id"]), (StatusCode::OK, &json!("@bob:hearth.test")), "{logged_in}");
    assert_error(&login_by_email(&server, "bob@example.org", "not the password").await, 403, "M_FORBIDDEN");
    assert_error(&login_by_email(&server, "nobody@example.org", PASSWORD).await, 403, "M_FORBIDDEN");

    // The address is taken: another account can neither register with it nor add it.
    let sent = sink.count();
    assert_error(
        &request_token(&server, "register", "bob@example.org", "carols-secret", 1).await,
        400,
        "M_THREEPID_IN_USE",
    );
    assert_error(
        &request_token(&server, "account/3pid", "Bob@example.org", "carols-secret", 1).await,
        400,
        "M_THREEPID_IN_USE",
    );
    assert_eq!(sink.count(), sent, "no mail for a refused request");

    // Deactivation removes the address: no login with it, and it is free again.
    let (status, deactivated) = server
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            &bob_token,
            json!({}),
            "@bob:hearth.test",
            PASSWORD,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deactivated}");
    assert_error(&login_by_email(&server, "bob@example.org", PASSWORD).await, 403, "M_FORBIDDEN");
    let (status, started) = request_token(&server, "register", "bob@example.org", "carols-secret", 1).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(sink.count(), sent + 1);
}

async fn password_reset_by_email(b: Backend) {
    let sink = MailSink::start().await;
    let server = TestServer::start_with(b, |c| sink.configure(c)).await;
    let (bob, old_token) = register_with_email(&server, &sink, "bob", "bob@example.org").await;

    let sent = sink.count();
    assert_error(
        &request_token(&server, "account/password", "nobody@example.org", "reset-secret", 1).await,
        400,
        "M_THREEPID_NOT_FOUND",
    );
    assert_eq!(sink.count(), sent);
    let sid = request_sid(&server, "account/password", "bob@example.org", "reset-secret").await;
    assert_eq!(sink.count(), sent + 1);
    let mail = sink.last();
    assert_eq!(mail.to, vec!["bob@example.org".to_owned()]);
    assert!(mail.header("Subject").is_some_and(|s| s.contains("Reset your password")), "{}", mail.raw);

    // Without an access token: the e-mail stage is the flow.
    let new_password = "a new long password";
    let (status, challenge) =
        server.post("/_matrix/client/v3/account/password", None, json!({"new_password": new_password})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.email.identity"]}]), "{challenge}");
    let reset = json!({
        "new_password": new_password,
        "auth": {
            "type": "m.login.email.identity",
            "threepid_creds": {"sid": sid, "client_secret": "reset-secret"},
            "session": challenge["session"],
        },
    });
    let (status, early) = server.post("/_matrix/client/v3/account/password", None, reset.clone()).await;
    assert_eq!((status, &early["errcode"]), (StatusCode::UNAUTHORIZED, &json!("M_THREEPID_AUTH_FAILED")), "{early}");
    let (status, page) = follow(&server, &mail.link()).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, done) = server.post("/_matrix/client/v3/account/password", None, reset).await;
    assert_eq!(status, StatusCode::OK, "{done}");

    // The new password works, the old one not; the old session was signed out.
    assert_error(&login_by_email(&server, "bob@example.org", PASSWORD).await, 403, "M_FORBIDDEN");
    let (status, logged_in) = login_by_email(&server, "bob@example.org", new_password).await;
    assert_eq!((status, &logged_in["user_id"]), (StatusCode::OK, &json!(bob)), "{logged_in}");
    server.login("bob", new_password).await;
    assert_error(&server.get("/_matrix/client/v3/account/whoami", Some(&old_token)).await, 401, "M_UNKNOWN_TOKEN");
}

async fn adding_and_removing_an_account_address(b: Backend) {
    let sink = MailSink::start().await;
    let server = TestServer::start_with(b, |c| {
        sink.configure(c);
        c.well_known.client = Some("https://matrix.hearth.test/".to_owned());
    })
    .await;
    let (alice, token, _) = server.register("alice", PASSWORD).await;
    // With a mail server, clients are told addresses can be changed.
    let (status, caps) = server.get("/_matrix/client/v3/capabilities", Some(&token)).await;
    assert_eq!((status, &caps["capabilities"]["m.3pid_changes"]["enabled"]), (StatusCode::OK, &json!(true)), "{caps}");
    assert_eq!(threepids(&server, &token).await, Vec::<String>::new());

    // Asking for the mail needs no access token.
    let sid = request_sid(&server, "account/3pid", "alice@example.org", "alices-secret").await;
    let mail = sink.last();
    assert_eq!(mail.to, vec!["alice@example.org".to_owned()]);
    let link = mail.link();
    assert!(link.starts_with("https://matrix.hearth.test/_hearth/client/email/validate?"), "{link}");

    // Not validated yet: the address is not added.
    let add = json!({"sid": sid, "client_secret": "alices-secret"});
    let early = server
        .with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", &token, add.clone(), &alice, PASSWORD)
        .await;
    assert_eq!(
        (early.0, &early.1["errcode"]),
        (StatusCode::BAD_REQUEST, &json!("M_THREEPID_AUTH_FAILED")),
        "{}",
        early.1
    );
    assert!(early.0.is_client_error(), "{}", early.0);
    assert_eq!(threepids(&server, &token).await, Vec::<String>::new());
    // Nor with another client's secret, once validated.
    assert_eq!(follow(&server, &link).await.0, StatusCode::OK);
    let stolen = json!({"sid": sid, "client_secret": "not-alices-secret"});
    let refused = server
        .with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", &token, stolen, &alice, PASSWORD)
        .await;
    assert_eq!(
        (refused.0, &refused.1["errcode"]),
        (StatusCode::BAD_REQUEST, &json!("M_THREEPID_AUTH_FAILED")),
        "{}",
        refused.1
    );

    let (status, added) = server
        .with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", &token, add, &alice, PASSWORD)
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(threepids(&server, &token).await, vec!["alice@example.org".to_owned()]);
    let (status, logged_in) = login_by_email(&server, "alice@example.org", PASSWORD).await;
    assert_eq!((status, &logged_in["user_id"]), (StatusCode::OK, &json!(alice)), "{logged_in}");

    // Removed: not listed, no login with it, and free for another account.
    let (status, removed) = server
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&token),
            json!({"medium": "email", "address": "alice@example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["id_server_unbind_result"], "no-support", "it was bound nowhere");
    assert_eq!(threepids(&server, &token).await, Vec::<String>::new());
    assert_error(&login_by_email(&server, "alice@example.org", PASSWORD).await, 403, "M_FORBIDDEN");
    let (status, _) = request_token(&server, "register", "alice@example.org", "someone-elses-secret", 1).await;
    assert_eq!(status, StatusCode::OK);

    // The deprecated `POST /account/3pid` asks for no password (as on Synapse): an address
    // added through it serves for login, never for a password reset, or an access token
    // alone would be enough to take the account for good.
    let sid = request_sid(&server, "account/3pid", "alice.old@example.org", "alices-old-secret").await;
    assert_eq!(follow(&server, &sink.last().link()).await.0, StatusCode::OK);
    let creds = json!({"three_pid_creds": {"sid": sid, "client_secret": "alices-old-secret"}});
    let (status, added) = server.post("/_matrix/client/v3/account/3pid", Some(&token), creds).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(threepids(&server, &token).await, vec!["alice.old@example.org".to_owned()]);
    assert_eq!(login_by_email(&server, "alice.old@example.org", PASSWORD).await.0, StatusCode::OK);
    let reset = request_token(&server, "account/password", "alice.old@example.org", "thief", 1).await;
    assert_error(&reset, 400, "M_THREEPID_NOT_FOUND");
    // Removed and added again behind the password, it may.
    let remove = json!({"medium": "email", "address": "alice.old@example.org"});
    assert_eq!(server.post("/_matrix/client/v3/account/3pid/delete", Some(&token), remove).await.0, StatusCode::OK);
    let sid = request_sid(&server, "account/3pid", "alice.old@example.org", "alices-new-secret").await;
    assert_eq!(follow(&server, &sink.last().link()).await.0, StatusCode::OK);
    let add = json!({"sid": sid, "client_secret": "alices-new-secret"});
    let (status, added) = server
        .with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", &token, add, &alice, PASSWORD)
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    let (status, _) = request_token(&server, "account/password", "alice.old@example.org", "alice-again", 1).await;
    assert_eq!(status, StatusCode::OK);
}

/// Anyone may ask for a validation mail, so Hearth sends at most five an hour to one
/// address: a sixth is 429, and no mail leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_mails_to_one_address_are_limited() {
    let sink = MailSink::start().await;
    let server = TestServer::start_with(Backend::Rocksdb, |c| sink.configure(c)).await;
    for attempt in 1..=5 {
        let (status, started) = request_token(&server, "register", "victim@example.org", "secret", attempt).await;
        assert_eq!(status, StatusCode::OK, "{started}");
    }
    assert_eq!(sink.count(), 5);
    let sixth = request_token(&server, "register", "victim@example.org", "other-secret", 1).await;
    assert_error(&sixth, 429, "M_LIMIT_EXCEEDED");
    assert_eq!(sink.count(), 5);
    // Another address is not held up.
    let (status, _) = request_token(&server, "register", "someone@example.org", "secret", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sink.count(), 6);
}

/// A server kept an island (`allow_federation` off) asks no identity server: binding and
/// inviting by address are refused with 403, and the identity server never hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_island_asks_no_identity_server() {
    let is = IdentityServer::start().await;
    let server = TestServer::start_with(Backend::Rocksdb, |c| {
        is.trusted_by(c);
        c.allow_federation = false;
    })
    .await;
    let (_, token, _) = server.register("bob", PASSWORD).await;
    is.validated_session("sid-1", "secret-1", "bob@example.org");
    let bind =
        json!({"id_server": is.name(), "id_access_token": IS_TOKEN, "sid": "sid-1", "client_secret": "secret-1"});
    let refused = server.post("/_matrix/client/v3/account/3pid/bind", Some(&token), bind).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert_eq!(is.bound_to("bob@example.org"), None);
    let room = private_room(&server, &token).await;
    let invite =
        json!({"id_server": is.name(), "id_access_token": IS_TOKEN, "medium": "email", "address": "carol@example.org"});
    let refused = server.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&token), invite).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert!(is.invites_for("carol@example.org").is_empty());
}

/// Without a mail server nothing is validated by mail: the `requestToken` endpoints and
/// the password reset are refused, and registration offers no e-mail stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_mail_server_addresses_are_not_validated() {
    let server = TestServer::start(Backend::Rocksdb).await;
    let (_, token, _) = server.register("carol", PASSWORD).await;
    let (status, caps) = server.get("/_matrix/client/v3/capabilities", Some(&token)).await;
    assert_eq!((status, &caps["capabilities"]["m.3pid_changes"]["enabled"]), (StatusCode::OK, &json!(false)), "{caps}");
    for what in ["register", "account/3pid", "account/password"] {
        let refused = request_token(&server, what, "bob@example.org", "a-secret", 1).await;
        assert_error(&refused, 403, "M_THREEPID_DENIED");
        let sms =
            json!({"client_secret": "a-secret", "country": "GB", "phone_number": "07700900001", "send_attempt": 1});
        let refused = server.post(&format!("/_matrix/client/v3/{what}/msisdn/requestToken"), None, sms).await;
        assert_error(&refused, 403, "M_THREEPID_DENIED");
    }
    let (status, challenge) =
        server.post("/_matrix/client/v3/register", None, json!({"username": "bob", "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let flows: Vec<Vec<&str>> = challenge["flows"].as_array().expect("flows").iter().map(stages).collect();
    assert_eq!(flows, vec![vec!["m.login.registration_token", "m.login.dummy"]]);
    let reset =
        server.post("/_matrix/client/v3/account/password", None, json!({"new_password": "whatever it is"})).await;
    assert_error(&reset, 403, "M_THREEPID_DENIED");
}

// ---------------------------------------------------------------------------------------
// Identity servers: binding and unbinding
// ---------------------------------------------------------------------------------------

both_engines!(binding_and_unbinding_at_an_identity_server);

async fn binding_and_unbinding_at_an_identity_server(b: Backend) {
    let is = IdentityServer::start().await;
    let server = TestServer::start_with(b, |c| is.trusted_by(c)).await;
    let (bob, token, _) = server.register("bob", PASSWORD).await;
    is.validated_session("is-sid-1", "is-secret-1", "bob@example.org");
    let bind = |path: &'static str, sid: &str, secret: &str, id_access_token: &str| {
        let body =
            json!({"id_server": is.name(), "id_access_token": id_access_token, "sid": sid, "client_secret": secret});
        server.post(path, Some(&token), body)
    };
    const BIND: &str = "/_matrix/client/v3/account/3pid/bind";

    // The identity server refuses a wrong access token or session: an error, no binding.
    let (status, refused) = bind(BIND, "is-sid-1", "is-secret-1", "not-the-token").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{refused}");
    let (status, refused) = bind(BIND, "is-sid-1", "not-the-secret", IS_TOKEN).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{refused}");
    assert_eq!(is.bound_to("bob@example.org"), None);

    let (status, bound) = bind(BIND, "is-sid-1", "is-secret-1", IS_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{bound}");
    assert_eq!(is.bound_to("bob@example.org").as_deref(), Some(bob.as_str()));

    // Unbinding without naming the identity server: Hearth remembers where it bound it,
    // and signs the unbind as itself.
    let (status, unbound) = server
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&token),
            json!({"medium": "email", "address": "bob@example.org"}),
        )
        .await;
    assert_eq!((status, &unbound["id_server_unbind_result"]), (StatusCode::OK, &json!("success")), "{unbound}");
    assert_eq!(is.bound_to("bob@example.org"), None);
    let unbinds = is.unbinds();
    assert_eq!(unbinds.len(), 1);
    let body = is.assert_signed_by(&unbinds[0], &server);
    assert_eq!(body, json!({"mxid": bob, "threepid": {"medium": "email", "address": "bob@example.org"}}));
    // Nothing is bound any more: nothing to unbind, and the identity server is not asked.
    let (status, again) = server
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&token),
            json!({"medium": "email", "address": "bob@example.org"}),
        )
        .await;
    assert_eq!((status, &again["id_server_unbind_result"]), (StatusCode::OK, &json!("no-support")), "{again}");
    assert_eq!(is.unbinds().len(), 1);

    // The unstable path binds too.
    is.validated_session("is-sid-2", "is-secret-2", "bob.work@example.org");
    let (status, bound) = bind("/_matrix/client/unstable/account/3pid/bind", "is-sid-2", "is-secret-2", IS_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{bound}");
    assert_eq!(is.bound_to("bob.work@example.org").as_deref(), Some(bob.as_str()));

    // Deactivation unbinds what is bound.
    let (status, deactivated) = server
        .with_password_uia(Method::POST, "/_matrix/client/v3/account/deactivate", &token, json!({}), &bob, PASSWORD)
        .await;
    assert_eq!(status, StatusCode::OK, "{deactivated}");
    assert_eq!(deactivated["id_server_unbind_result"], "success", "{deactivated}");
    assert_eq!(is.bound_to("bob.work@example.org"), None);
    let unbinds = is.unbinds();
    assert_eq!(unbinds.len(), 2);
    let body = is.assert_signed_by(&unbinds[1], &server);
    assert_eq!(body["threepid"]["address"], "bob.work@example.org");
}

/// A self-signed identity server is reachable when its certificate is pinned, and not
/// otherwise (a refusal, not a server error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_identity_server_is_trusted_only_when_pinned() {
    let is = IdentityServer::self_signed().await;
    is.validated_session("sid-pinned", "secret-pinned", "bob@example.org");
    let body = json!({"id_server": is.name(), "id_access_token": IS_TOKEN, "sid": "sid-pinned", "client_secret": "secret-pinned"});
    let loopback = |c: &mut hearth::Config| c.ip_range_allowlist = vec!["127.0.0.0/8".parse().expect("range")];

    let unpinned = TestServer::start_with(Backend::Rocksdb, loopback).await;
    let (_, token, _) = unpinned.register("bob", PASSWORD).await;
    let (status, refused) = unpinned.post("/_matrix/client/v3/account/3pid/bind", Some(&token), body.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{refused}");
    assert_eq!(is.bound_to("bob@example.org"), None);

    let pinned = TestServer::start_with(Backend::Rocksdb, |c| {
        loopback(c);
        c.pinned_certificates = vec![is.cert_file()];
    })
    .await;
    let (bob, token, _) = pinned.register("bob", PASSWORD).await;
    let (status, bound) = pinned.post("/_matrix/client/v3/account/3pid/bind", Some(&token), body).await;
    assert_eq!(status, StatusCode::OK, "{bound}");
    assert_eq!(is.bound_to("bob@example.org").as_deref(), Some(bob.as_str()));
}

// ---------------------------------------------------------------------------------------
// Third-party invites
// ---------------------------------------------------------------------------------------

/// `user`'s member event in `room`, as `token`'s user sees the member list.
async fn member_event(server: &TestServer, token: &str, room: &str, user: &str) -> Option<Value> {
    let (status, members) = server.get(&format!("/_matrix/client/v3/rooms/{room}/members"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    members["chunk"].as_array().expect("chunk").iter().find(|e| e["state_key"] == user).cloned()
}

async fn membership(server: &TestServer, token: &str, room: &str, user: &str) -> Option<String> {
    member_event(server, token, room, user).await.and_then(|e| e["content"]["membership"].as_str().map(str::to_owned))
}

async fn third_party_invites(server: &TestServer, token: &str, room: &str) -> Vec<Value> {
    let (status, state) = server.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    state.as_array().expect("state").iter().filter(|e| e["type"] == "m.room.third_party_invite").cloned().collect()
}

async fn private_room(server: &TestServer, token: &str) -> String {
    let (status, created) =
        server.post("/_matrix/client/v3/createRoom", Some(token), json!({"preset": "private_chat"})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["room_id"].as_str().expect("room id").to_owned()
}

async fn invite_by_email(
    server: &TestServer,
    token: &str,
    room: &str,
    is: &IdentityServer,
    address: &str,
) -> (StatusCode, Value) {
    let body = json!({"id_server": is.name(), "id_access_token": IS_TOKEN, "medium": "email", "address": address});
    server.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(token), body).await
}

/// An address bound to a user is an ordinary invite; an unbound one is stored at the
/// identity server and becomes the invite once the owner binds it, when the signature
/// checks out with a key the identity server still vouches for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_by_address_are_redeemed_when_the_address_is_bound() {
    let is = IdentityServer::start().await;
    let server = TestServer::start_with(Backend::Rocksdb, |c| is.trusted_by(c)).await;
    let (alice, alice_token, _) = server.register("alice", PASSWORD).await;
    let (bob, bob_token, _) = server.register("bob", PASSWORD).await;

    // Bound already: an ordinary invite, nothing stored at the identity server.
    is.bind_directly("bob@example.org", &bob);
    let room = private_room(&server, &alice_token).await;
    let (status, invited) = invite_by_email(&server, &alice_token, &room, &is, "Bob@Example.org").await;
    assert_eq!(status, StatusCode::OK, "{invited}");
    let member = member_event(&server, &alice_token, &room, &bob).await.expect("bob's member event");
    assert_eq!(member["content"]["membership"], "invite", "{member}");
    assert_eq!(member["sender"], alice.as_str());
    assert!(member["content"].get("third_party_invite").is_none(), "{member}");
    assert!(is.invites_for("bob@example.org").is_empty());
    assert_eq!(third_party_invites(&server, &alice_token, &room).await, Vec::<Value>::new());

    // Not bound: stored there, and the room holds the invite under the identity server's
    // token, with its display name and keys.
    let room = private_room(&server, &alice_token).await;
    let (status, invited) = invite_by_email(&server, &alice_token, &room, &is, "Bob.Later@Example.org").await;
    assert_eq!(status, StatusCode::OK, "{invited}");
    let stored = is.invites_for("bob.later@example.org");
    assert_eq!(stored.len(), 1, "the address is sent in lower case");
    let stored = &stored[0];
    assert_eq!((&stored.body["room_id"], &stored.body["sender"]), (&json!(room), &json!(alice)), "{:?}", stored.body);
    assert_eq!(stored.body["medium"], "email");
    let invites = third_party_invites(&server, &alice_token, &room).await;
    assert_eq!(invites.len(), 1, "{invites:?}");
    assert_eq!(invites[0]["state_key"], stored.token.as_str());
    assert_eq!(invites[0]["sender"], alice.as_str());
    let content = &invites[0]["content"];
    assert_eq!(content["display_name"], "Bob");
    assert_eq!(content["public_keys"][0]["public_key"], is.state.public_key.as_str(), "{content}");
    assert_eq!(membership(&server, &alice_token, &room, &bob).await, None);

    // Signed with a key that is not the identity server's: refused, no invite.
    let stranger = ed25519_key();
    let (status, refused) = is.on_bind(&server, "bob.later@example.org", &bob, Some(&stranger)).await;
    assert!(status.is_client_error(), "{status}: {refused}");
    assert_eq!(membership(&server, &alice_token, &room, &bob).await, None);

    // The right key, but the identity server revoked it: refused, no invite.
    is.revoke_key(true);
    let checks = is.validity_checks();
    let (status, refused) = is.on_bind(&server, "bob.later@example.org", &bob, None).await;
    assert!(status.is_client_error(), "{status}: {refused}");
    assert!(is.validity_checks() > checks, "Hearth asked the key validity URL");
    assert_eq!(membership(&server, &alice_token, &room, &bob).await, None);

    // Valid: bob is invited by alice, with the third-party invite in the member event.
    is.revoke_key(false);
    let (status, redeemed) = is.on_bind(&server, "bob.later@example.org", &bob, None).await;
    assert_eq!(status, StatusCode::OK, "{redeemed}");
    let member = member_event(&server, &alice_token, &room, &bob).await.expect("bob's member event");
    assert_eq!(member["content"]["membership"], "invite", "{member}");
    assert_eq!(member["sender"], alice.as_str());
    let third_party = &member["content"]["third_party_invite"];
    assert_eq!(third_party["display_name"], "Bob", "{member}");
    assert_eq!(third_party["signed"]["token"], stored.token.as_str());
    assert_eq!(third_party["signed"]["mxid"], bob.as_str());
    let (status, joined) =
        server.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), Some(&bob_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(membership(&server, &alice_token, &room, &bob).await.as_deref(), Some("join"));
}

/// `/join` with `third_party_signed` redeems a third-party invite of an invite-only room;
/// `createRoom`'s `invite_3pid` invites by address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_a_signed_third_party_invite_and_invite_3pid() {
    let is = IdentityServer::start().await;
    let server = TestServer::start_with(Backend::Rocksdb, |c| is.trusted_by(c)).await;
    let (alice, alice_token, _) = server.register("alice", PASSWORD).await;
    let (bob, bob_token, _) = server.register("bob", PASSWORD).await;
    let room = private_room(&server, &alice_token).await;
    let (status, invited) = invite_by_email(&server, &alice_token, &room, &is, "bob@example.org").await;
    assert_eq!(status, StatusCode::OK, "{invited}");
    let token = is.invites_for("bob@example.org")[0].token.clone();
    let join = format!("/_matrix/client/v3/join/{}", encode(&room));

    // The room is invite-only: no way in without the invite.
    assert_error(&server.post(&join, Some(&bob_token), json!({})).await, 403, "M_FORBIDDEN");
    // Not with a signature of another key, nor with an object signed for someone else.
    let forged = is.sign_with(&ed25519_key(), json!({"mxid": bob, "sender": alice, "token": token}));
    let refused = server.post(&join, Some(&bob_token), json!({"third_party_signed": forged})).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let someone_elses = is.signed("@mallory:hearth.test", &alice, &token);
    let refused = server.post(&join, Some(&bob_token), json!({"third_party_signed": someone_elses})).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert_eq!(membership(&server, &alice_token, &room, &bob).await, None);

    let (status, joined) =
        server.post(&join, Some(&bob_token), json!({"third_party_signed": is.signed(&bob, &alice, &token)})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());
    assert_eq!(membership(&server, &alice_token, &room, &bob).await.as_deref(), Some("join"));

    // An invite alice revoked (its state emptied) cannot be redeemed.
    let (_, erin_token, _) = server.register("erin", PASSWORD).await;
    let erin = "@erin:hearth.test";
    let room = private_room(&server, &alice_token).await;
    let (status, invited) = invite_by_email(&server, &alice_token, &room, &is, "erin@example.org").await;
    assert_eq!(status, StatusCode::OK, "{invited}");
    let token = is.invites_for("erin@example.org")[0].token.clone();
    let (status, revoked) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.third_party_invite/{token}"),
            Some(&alice_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let join = format!("/_matrix/client/v3/join/{}", encode(&room));
    let refused =
        server.post(&join, Some(&erin_token), json!({"third_party_signed": is.signed(erin, &alice, &token)})).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let (status, refused) = is.on_bind(&server, "erin@example.org", erin, None).await;
    assert!(status.is_client_error(), "{status}: {refused}");
    assert_eq!(membership(&server, &alice_token, &room, erin).await, None);

    // createRoom: a bound address invites its user; an unbound one leaves a
    // third-party invite.
    let (carol, carol_token, _) = server.register("carol", PASSWORD).await;
    is.bind_directly("carol@example.org", &carol);
    let invite_3pid = |address: &str| json!({"id_server": is.name(), "id_access_token": IS_TOKEN, "medium": "email", "address": address});
    let (status, created) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice_token),
            json!({"preset": "private_chat", "invite_3pid": [invite_3pid("carol@example.org"), invite_3pid("dave@example.org")]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().expect("room id");
    let member = member_event(&server, &alice_token, room, &carol).await.expect("carol's member event");
    assert_eq!((&member["content"]["membership"], &member["sender"]), (&json!("invite"), &json!(alice)), "{member}");
    let (_, sync) = server.get("/_matrix/client/v3/sync?timeout=0", Some(&carol_token)).await;
    assert!(sync["rooms"]["invite"].get(room).is_some(), "{sync}");
    let invites = third_party_invites(&server, &alice_token, room).await;
    let dave = is.invites_for("dave@example.org");
    assert_eq!(dave.len(), 1);
    assert_eq!(invites.len(), 1, "{invites:?}");
    assert_eq!(invites[0]["state_key"], dave[0].token.as_str());
}

/// Across servers: alice@a.test invites an address; its owner, bob@b.test, binds it; the
/// identity server tells b.test, which asks a.test (`exchange_third_party_invite`) to make
/// the invite; bob sees it and joins. a.test reaches the identity server through its pinned
/// certificate while it still trusts b.test through the federation CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_invite_is_exchanged_across_servers() {
    let is = IdentityServer::start().await;
    let pinned = is.cert_file();
    let p = pair_with(|c| c.pinned_certificates = vec![pinned]).await;
    let (alice, alice_token, _) = p.a.register("alice", PASSWORD).await;
    let (bob, bob_token, _) = p.b.register("bob", PASSWORD).await;
    let room = private_room(&p.a, &alice_token).await;
    let (status, invited) = invite_by_email(&p.a, &alice_token, &room, &is, "bob@b.example").await;
    assert_eq!(status, StatusCode::OK, "{invited}");
    let stored = is.invites_for("bob@b.example");
    assert_eq!(stored.len(), 1);
    assert_eq!(third_party_invites(&p.a, &alice_token, &room).await.len(), 1);

    // a.test makes the invite only for the user the identity server signed for, with its
    // key: b.test (signed as itself) asking for another user, or with a forged signature,
    // is refused.
    let exchange = |state_key: &str, signed: Value| {
        json!({
            "room_id": room, "type": "m.room.member", "sender": alice, "state_key": state_key,
            "content": {"membership": "invite", "third_party_invite": {"display_name": "", "signed": signed}},
        })
    };
    let path = format!("/_matrix/federation/v1/exchange_third_party_invite/{}", encode(&room));
    let a_test = <&ServerName>::try_from("a.test").expect("server name");
    let token = stored[0].token.as_str();
    for (target, signed) in [
        ("@mallory:b.test", is.signed(&bob, &alice, token)),
        (bob.as_str(), is.sign_with(&ed25519_key(), json!({"mxid": bob, "sender": alice, "token": token}))),
    ] {
        let event = exchange(target, signed);
        let request = ServerRequest { method: Method::PUT, ..ServerRequest::post(&path, &event) };
        let answer = p.b.services().transport.servers.request(a_test, request).await.expect("a.test answers");
        let body = String::from_utf8_lossy(&answer.body);
        assert!(answer.status.is_client_error(), "{target}: {} {body}", answer.status);
        assert_eq!(membership(&p.a, &alice_token, &room, target).await, None);
    }

    // An identity server's onbind goes to the user's own server: a.test refuses one for a
    // user of b.test.
    let elsewhere = json!({"medium": "email", "address": "bob@b.example", "mxid": bob, "invites": []});
    let refused = p.a.post("/_matrix/federation/v1/3pid/onbind", None, elsewhere).await;
    assert_error(&refused, 400, "M_INVALID_PARAM");

    let (status, redeemed) = is.on_bind(&p.b, "bob@b.example", &bob, None).await;
    assert_eq!(status, StatusCode::OK, "{redeemed}");
    let invite = eventually("bob's invite on b.test", || async {
        let (_, sync) = p.b.get("/_matrix/client/v3/sync?timeout=0", Some(&bob_token)).await;
        sync["rooms"]["invite"].get(&room).cloned()
    })
    .await;
    let events = invite["invite_state"]["events"].as_array().expect("invite state");
    let own = events.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.as_str());
    let own = own.unwrap_or_else(|| panic!("no member event of bob in the invite: {invite}"));
    assert_eq!(own["sender"], alice.as_str(), "{own}");
    assert_eq!(own["content"]["membership"], "invite", "{own}");
    // a.test made the invite: alice's room has it, with the third-party invite.
    let member = member_event(&p.a, &alice_token, &room, &bob).await.expect("bob's member event on a.test");
    assert_eq!(member["content"]["third_party_invite"]["display_name"], "Bob", "{member}");
    assert_eq!(member["content"]["third_party_invite"]["signed"]["token"], stored[0].token.as_str());

    let (status, joined) =
        p.b.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), Some(&bob_token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    eventually("bob's join on a.test", || async {
        (membership(&p.a, &alice_token, &room, &bob).await.as_deref() == Some("join")).then_some(())
    })
    .await;
}
