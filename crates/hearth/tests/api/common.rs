//! Test harness: a real Hearth served over real HTTP on loopback, in this process, on a
//! fresh data directory; and a small JSON client for it. [`tls`] makes throw-away CAs and
//! certificates for servers started with TLS.

pub mod tls;

use std::sync::Arc;

use hearth::{server::Running, store::Backend, Config, Services};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const TOKEN: &str = "let-me-in";
pub const SERVER_NAME: &str = "hearth.test";

/// Runs a test body once per storage engine: `mod name { rocksdb, sqlite }`.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rocksdb() {
                super::$name(hearth::store::Backend::Rocksdb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(hearth::store::Backend::Sqlite).await
            }
        }
    )+};
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    running: Option<Running>,
    config: Config,
    pub dir: TempDir,
}

/// The configuration tests start from: open registration behind [`TOKEN`].
pub fn test_config(backend: Backend, dir: &TempDir) -> Config {
    Config {
        server_name: SERVER_NAME.try_into().unwrap(),
        database_path: dir.path().join("data"),
        database_backend: backend,
        // Tests check crash safety explicitly where it matters; fsync slows the rest down.
        database_fsync: false,
        port: 0,
        allow_registration: true,
        registration_token: Some(TOKEN.into()),
        max_request_size: 64 * 1024,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::try_start_with(backend, tweak).await.unwrap()
    }

    /// As [`TestServer::start_with`], with a failure to start (a port taken meanwhile)
    /// returned rather than a panic.
    pub async fn try_start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self, Box<dyn std::error::Error>> {
        // `HEARTH_TEST_LOG=<filter>` shows the servers' logs (all servers of the process,
        // interleaved) when a test needs reading rather than just its verdict.
        if let Ok(filter) = std::env::var("HEARTH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(backend, &dir);
        tweak(&mut config);
        let running = Running::start(Services::open(config.clone())?).await?;
        Ok(TestServer {
            base: base_url(&config, &running),
            http: reqwest::Client::new(),
            running: Some(running),
            config,
            dir,
        })
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.running.as_ref().unwrap().services
    }

    /// The configuration the next [`TestServer::restart`] starts with.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Graceful stop, for good: only its configuration is left to read.
    pub async fn stop(&mut self) {
        self.running.take().unwrap().stop().await.unwrap();
    }

    /// Graceful stop, then a new server on the same data directory.
    pub async fn restart(&mut self) {
        self.running.take().unwrap().stop().await.unwrap();
        let mut config = self.config.clone();
        config.port = 0;
        // Connection tasks of the old server may still be dropping their handle on the
        // store (and with it the directory lock) for a moment after the server stopped.
        let mut services = Services::open(config.clone());
        for _ in 0..100 {
            match &services {
                Err(e) if e.to_string().contains("already in use") => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    services = Services::open(config.clone());
                }
                _ => break,
            }
        }
        let running = Running::start(services.unwrap()).await.unwrap();
        self.base = base_url(&self.config, &running);
        self.running = Some(running);
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let json =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, path, token, Some(body)).await
    }

    /// POSTs `/register` with `body`, completing each UIA stage the server asks for
    /// (registration token, dummy) the way a client walks the first flow offered.
    pub async fn register_walking_uia(&self, body: Value) -> (StatusCode, Value) {
        let mut body = body;
        for _ in 0..4 {
            let (status, res) = self.post("/_matrix/client/v3/register", None, body.clone()).await;
            if status != StatusCode::UNAUTHORIZED {
                return (status, res);
            }
            let completed = res["completed"].as_array().cloned().unwrap_or_default();
            let next = res["flows"][0]["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| !completed.contains(s))
                .unwrap_or_else(|| panic!("no stage left but still 401: {res}"))
                .clone();
            body["auth"] = match next.as_str().unwrap() {
                "m.login.registration_token" => {
                    json!({"type": next, "token": TOKEN, "session": res["session"]})
                }
                _ => json!({"type": next, "session": res["session"]}),
            };
        }
        panic!("registration did not finish");
    }

    /// Registers through the server's UIA flow; returns (user_id, access_token, device_id).
    pub async fn register(&self, username: &str, password: &str) -> (String, String, String) {
        let (status, res) = self.register_walking_uia(json!({"username": username, "password": password})).await;
        assert_eq!(status, StatusCode::OK, "{res}");
        (
            res["user_id"].as_str().unwrap().to_owned(),
            res["access_token"].as_str().unwrap().to_owned(),
            res["device_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Password login; returns (access_token, device_id).
    pub async fn login(&self, user: &str, password: &str) -> (String, String) {
        let (status, res) = self
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{res}");
        (res["access_token"].as_str().unwrap().to_owned(), res["device_id"].as_str().unwrap().to_owned())
    }

    /// Completes a password UIA stage for `method path` as `user`.
    pub async fn with_password_uia(
        &self,
        method: Method,
        path: &str,
        token: &str,
        mut body: Value,
        user: &str,
        password: &str,
    ) -> (StatusCode, Value) {
        let (status, challenge) = self.request(method.clone(), path, Some(token), Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
        assert_eq!(challenge["flows"][0]["stages"][0], "m.login.password");
        body["auth"] = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "session": challenge["session"],
        });
        self.request(method, path, Some(token), Some(body)).await
    }
}

/// `https://` when the server speaks TLS (its test certificates name 127.0.0.1).
fn base_url(config: &Config, running: &Running) -> String {
    let scheme = if config.tls_files().is_some() { "https" } else { "http" };
    format!("{scheme}://{}", running.addr)
}

/// Asserts a Matrix error response.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: u16, errcode: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["errcode"], errcode, "{}", got.1);
    assert!(got.1["error"].is_string(), "error message missing: {}", got.1);
}
