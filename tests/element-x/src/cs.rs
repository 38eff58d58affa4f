//! The plain client-server API, straight to Hearth (not through the proxy): registering
//! users and the other side of each scenario (creating rooms, inviting, sending, typing,
//! receipts), done by a "setup" device of each user that never syncs.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub const PASSWORD: &str = "element-x-test-password";

#[derive(Clone, Debug)]
pub struct User {
    pub localpart: String,
    pub user_id: String,
    /// The access token of the registration's own device (the "setup" device).
    pub token: String,
}

pub struct Cs {
    http: reqwest::Client,
    pub base: String,
    registration_token: String,
    txn: AtomicU64,
    /// Appended to every localpart (a server that outlives one run needs fresh names).
    pub suffix: String,
}

/// Percent-encodes a path segment (room ids, event ids, user ids).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Cs {
    pub fn new(base: &str, registration_token: &str) -> Result<Self> {
        Ok(Cs {
            http: reqwest::Client::builder().no_proxy().build()?,
            base: base.trim_end_matches('/').to_owned(),
            registration_token: registration_token.to_owned(),
            txn: AtomicU64::new(0),
            suffix: String::new(),
        })
    }

    /// Registers `localpart` through User-Interactive Authentication, completing the stages
    /// Hearth asks for (the registration token; a dummy stage if asked).
    pub async fn register(&self, localpart: &str) -> Result<User> {
        let localpart = &format!("{localpart}{}", self.suffix);
        let url = format!("{}/_matrix/client/v3/register", self.base);
        let mut body = json!({
            "username": localpart,
            "password": PASSWORD,
            "initial_device_display_name": "element-x test: setup device",
        });
        for _ in 0..4 {
            let resp = self.http.post(&url).json(&body).send().await?;
            let status = resp.status();
            let v: Value = resp.json().await.context("register: answer is not JSON")?;
            if status.is_success() {
                return Ok(User {
                    localpart: localpart.to_owned(),
                    user_id: v["user_id"].as_str().context("register: no user_id")?.to_owned(),
                    token: v["access_token"].as_str().context("register: no access_token")?.to_owned(),
                });
            }
            if status.as_u16() != 401 {
                bail!("register {localpart}: HTTP {status}: {v}");
            }
            let session = v["session"].as_str().map(str::to_owned);
            let completed: Vec<&str> =
                v["completed"].as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default();
            let flow = v["flows"]
                .as_array()
                .and_then(|f| f.first())
                .and_then(|f| f["stages"].as_array())
                .context("register: 401 without flows")?;
            let next = flow
                .iter()
                .filter_map(|s| s.as_str())
                .find(|s| !completed.contains(s))
                .context("register: every stage completed yet 401")?;
            let auth = match next {
                "m.login.registration_token" => json!({"type": next, "token": self.registration_token}),
                "m.login.dummy" => json!({"type": next}),
                other => bail!("register: unsupported stage {other}"),
            };
            let mut auth = auth;
            if let Some(s) = session {
                auth["session"] = json!(s);
            }
            body["auth"] = auth;
        }
        bail!("register {localpart}: too many UIA rounds")
    }

    pub async fn call(&self, user: &User, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/_matrix/client/v3{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&user.token);
        if let Some(b) = &body {
            req = req.json(b);
        } else if method != reqwest::Method::GET {
            req = req.json(&json!({}));
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path} as {}: HTTP {status}: {text}", user.user_id);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn create_room(&self, user: &User, body: Value) -> Result<String> {
        let v = self.call(user, reqwest::Method::POST, "/createRoom", Some(body)).await?;
        Ok(v["room_id"].as_str().context("createRoom: no room_id")?.to_owned())
    }

    pub async fn join(&self, user: &User, room: &str) -> Result<()> {
        self.call(user, reqwest::Method::POST, &format!("/join/{}", enc(room)), None).await?;
        Ok(())
    }

    pub async fn send_text(&self, user: &User, room: &str, text: &str) -> Result<String> {
        let txn = self.txn.fetch_add(1, Ordering::SeqCst);
        let v = self
            .call(
                user,
                reqwest::Method::PUT,
                &format!("/rooms/{}/send/m.room.message/ex{}-{txn}", enc(room), std::process::id()),
                Some(json!({"msgtype": "m.text", "body": text})),
            )
            .await?;
        Ok(v["event_id"].as_str().context("send: no event_id")?.to_owned())
    }

    pub async fn typing(&self, user: &User, room: &str, typing: bool) -> Result<()> {
        self.call(
            user,
            reqwest::Method::PUT,
            &format!("/rooms/{}/typing/{}", enc(room), enc(&user.user_id)),
            Some(json!({"typing": typing, "timeout": 30000})),
        )
        .await?;
        Ok(())
    }

    pub async fn read_receipt(&self, user: &User, room: &str, event_id: &str) -> Result<()> {
        self.call(
            user,
            reqwest::Method::POST,
            &format!("/rooms/{}/receipt/m.read/{}", enc(room), enc(event_id)),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// The device keys Hearth holds for `target`, as /keys/query answers them.
    pub async fn device_keys(&self, user: &User, target: &str) -> Result<Value> {
        let v =
            self.call(user, reqwest::Method::POST, "/keys/query", Some(json!({"device_keys": {target: []}}))).await?;
        Ok(v["device_keys"][target].clone())
    }
}
