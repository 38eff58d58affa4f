//! A small logging HTTP proxy between the SDK clients and Hearth.
//!
//! Every exchange is written to `exchanges.log` (sliding-sync ones whole, others cut at
//! 16 KiB), and sliding-sync exchanges are kept in memory so that a failing scenario can
//! show precisely what the SDK asked and what Hearth answered. It also learns which user
//! an access token belongs to from the `/login` answers passing through it.
//!
//! It can drop a connection on purpose: [`Proxy::drop_next`] makes it forward a
//! sliding-sync request, read Hearth's whole answer, and then close the client's
//! connection without answering, as a lost mobile connection would. The SDK then retries
//! with the same `pos`.

use std::{
    collections::HashMap,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const SLIDING_SYNC_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

#[derive(Clone, Debug)]
pub struct Exchange {
    pub seq: u64,
    pub user: String,
    pub conn_id: Option<String>,
    /// The `pos` the request carried (query string).
    pub pos: Option<String>,
    pub path_and_query: String,
    pub status: u16,
    pub request_body: String,
    pub response_body: String,
    /// The `pos` Hearth answered with.
    pub response_pos: Option<String>,
    /// The proxy read this answer and then dropped the connection instead of passing it on.
    pub dropped: bool,
}

impl Exchange {
    pub fn render(&self, max_body: usize) -> String {
        format!(
            "#{} {} user={} conn_id={} -> {}{}\n  request:  {}\n  response: {}\n",
            self.seq,
            self.path_and_query,
            self.user,
            self.conn_id.as_deref().unwrap_or("-"),
            self.status,
            if self.dropped { " (DROPPED by the proxy: never delivered)" } else { "" },
            cut(&self.request_body, max_body),
            cut(&self.response_body, max_body),
        )
    }
}

pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        let end = crate::server::floor_char(s, max);
        format!("{}... [{} more bytes]", &s[..end], s.len() - end)
    }
}

/// Any request that went through the proxy (bodies only in exchanges.log).
#[derive(Clone, Debug)]
pub struct Call {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub user: String,
    pub status: u16,
}

struct DropRule {
    user: String,
    conn_id: String,
    contains: String,
}

struct State {
    upstream: String,
    http: reqwest::Client,
    seq: Mutex<u64>,
    sliding: Mutex<Vec<Exchange>>,
    calls: Mutex<Vec<Call>>,
    users: Mutex<HashMap<String, String>>,
    file: Mutex<std::fs::File>,
    drop_rule: Mutex<Option<DropRule>>,
}

#[derive(Clone)]
pub struct Proxy {
    pub url: String,
    state: Arc<State>,
}

/// Why the proxy closed a client's connection without answering.
#[derive(Debug)]
struct ProxyError(String);
impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ProxyError {}

impl Proxy {
    pub async fn start(upstream: &str, log_path: &Path) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            // No timeout: long polls are the point. No gzip: bodies are logged as they are.
            http: reqwest::Client::builder().no_proxy().build()?,
            seq: Mutex::new(0),
            sliding: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            users: Mutex::new(HashMap::new()),
            file: Mutex::new(std::fs::File::create(log_path)?),
            drop_rule: Mutex::new(None),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { handle(st, req).await }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Proxy { url, state })
    }

    /// The next sliding-sync answer to `user` on `conn_id` whose body contains `contains`
    /// is read from Hearth and then not delivered: the client's connection is closed.
    pub fn drop_next(&self, user: &str, conn_id: &str, contains: &str) {
        *self.state.drop_rule.lock().unwrap() =
            Some(DropRule { user: user.to_owned(), conn_id: conn_id.to_owned(), contains: contains.to_owned() });
    }

    pub fn drop_rule_pending(&self) -> bool {
        self.state.drop_rule.lock().unwrap().is_some()
    }

    pub fn clear_drop_rule(&self) {
        *self.state.drop_rule.lock().unwrap() = None;
    }

    pub fn sliding_exchanges(&self) -> Vec<Exchange> {
        self.state.sliding.lock().unwrap().clone()
    }

    /// Every request answered after `seq`.
    pub fn calls_after(&self, seq: u64) -> Vec<Call> {
        self.state.calls.lock().unwrap().iter().filter(|c| c.seq > seq).cloned().collect()
    }

    pub fn last_seq(&self) -> u64 {
        *self.state.seq.lock().unwrap()
    }

    /// The last `n` sliding-sync exchanges of `user` (all connections), oldest first.
    pub fn recent_for(&self, user: &str, n: usize) -> Vec<Exchange> {
        let all = self.state.sliding.lock().unwrap();
        let mine: Vec<_> = all.iter().filter(|e| e.user == user).cloned().collect();
        mine[mine.len().saturating_sub(n)..].to_vec()
    }
}

fn query_param(pq: &str, name: &str) -> Option<String> {
    let query = pq.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ProxyError> {
    let method = req.method().clone();
    let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let path = pq.split('?').next().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(ProxyError(format!("reading the request body: {e}"))),
    };

    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let user = match &token {
        Some(t) => st.users.lock().unwrap().get(t).cloned().unwrap_or_else(|| format!("token…{}", tail(t, 6))),
        None => "-".to_owned(),
    };

    let mut up = st.http.request(method.clone(), format!("{}{}", st.upstream, pq));
    for (name, value) in headers.iter() {
        match name.as_str() {
            "host" | "content-length" | "transfer-encoding" | "connection" | "accept-encoding" => {}
            _ => up = up.header(name, value),
        }
    }
    let upstream = up.body(body.clone()).send().await;
    let (status, resp_headers, resp_body) = match upstream {
        Ok(r) => {
            let status = r.status();
            let h = r.headers().clone();
            let b = r.bytes().await.unwrap_or_default();
            (status, h, b)
        }
        Err(e) => {
            let msg = format!("{{\"errcode\":\"M_UNKNOWN\",\"error\":\"test proxy: upstream failed: {e}\"}}");
            let mut f = st.file.lock().unwrap();
            let _ = writeln!(f, "!! {method} {pq} user={user}: upstream error {e}");
            let mut resp = Response::new(Full::new(Bytes::from(msg)));
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(resp);
        }
    };

    let seq = {
        let mut s = st.seq.lock().unwrap();
        *s += 1;
        *s
    };
    st.calls.lock().unwrap().push(Call {
        seq,
        method: method.to_string(),
        path: path.clone(),
        user: user.clone(),
        status: status.as_u16(),
    });
    let req_text = String::from_utf8_lossy(&body).into_owned();
    let resp_text = String::from_utf8_lossy(&resp_body).into_owned();

    if path.ends_with("/login") && status.is_success() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp_body) {
            if let (Some(t), Some(u)) = (v["access_token"].as_str(), v["user_id"].as_str()) {
                st.users.lock().unwrap().insert(t.to_owned(), u.to_owned());
            }
        }
    }

    let is_sliding = path == SLIDING_SYNC_PATH;
    let mut dropped = false;
    if is_sliding {
        let conn_id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("conn_id").and_then(|c| c.as_str()).map(str::to_owned));
        let response_pos = serde_json::from_slice::<serde_json::Value>(&resp_body)
            .ok()
            .and_then(|v| v.get("pos").and_then(|c| c.as_str()).map(str::to_owned));
        {
            let mut rule = st.drop_rule.lock().unwrap();
            if let Some(r) = rule.as_ref() {
                if r.user == user
                    && conn_id.as_deref() == Some(r.conn_id.as_str())
                    && status.is_success()
                    && resp_text.contains(&r.contains)
                {
                    dropped = true;
                    *rule = None;
                }
            }
        }
        let ex = Exchange {
            seq,
            user: user.clone(),
            conn_id,
            pos: query_param(&pq, "pos"),
            path_and_query: format!("{method} {pq}"),
            status: status.as_u16(),
            request_body: req_text.clone(),
            response_body: resp_text.clone(),
            response_pos,
            dropped,
        };
        let mut f = st.file.lock().unwrap();
        let _ = writeln!(f, "{}", ex.render(usize::MAX));
        drop(f);
        st.sliding.lock().unwrap().push(ex);
    } else {
        let mut f = st.file.lock().unwrap();
        let _ = writeln!(
            f,
            "#{seq} {method} {pq} user={user} -> {}\n  request:  {}\n  response: {}\n",
            status.as_u16(),
            cut(&req_text, 16 * 1024),
            cut(&resp_text, 16 * 1024)
        );
    }

    if dropped {
        return Err(ProxyError("connection dropped on purpose by the test proxy".into()));
    }

    let mut resp = Response::builder().status(status);
    for (name, value) in resp_headers.iter() {
        match name.as_str() {
            "content-length" | "transfer-encoding" | "connection" | "content-encoding" => {}
            _ => resp = resp.header(name, value),
        }
    }
    resp.body(Full::new(resp_body)).map_err(|e| ProxyError(format!("building the answer: {e}")))
}

fn tail(s: &str, n: usize) -> &str {
    let start = crate::server::floor_char(s, s.len().saturating_sub(n));
    &s[start..]
}
