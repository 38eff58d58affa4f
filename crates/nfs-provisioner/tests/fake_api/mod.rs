//! A small fake Kubernetes API server on loopback for the end-to-end tests: it speaks the real API's JSON for the
//! objects the provisioner touches (PersistentVolumeClaims, PersistentVolumes, StorageClasses, `events.k8s.io`
//! Events, `coordination.k8s.io` Leases): get, list, watch (newline-delimited watch events, replayed from the
//! resourceVersion asked for), create (`409 AlreadyExists`), replace (`409 Conflict` on a stale resourceVersion) and
//! delete. The test itself plays the PV controller by changing objects through [`FakeApi`]. Every request is
//! recorded as the RBAC rule it needs ([`FakeApi::rbac_requests`]), so a test can hold the manifests' RBAC to what the
//! binary really calls.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// (resource, namespace or "", name)
type Key = (String, String, String);

#[derive(Default)]
pub struct State {
    version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches that start from an older resourceVersion: (version, resource, watch event line).
    log: Vec<(u64, String, String)>,
    watchers: Vec<(String, mpsc::UnboundedSender<Bytes>)>,
    next_uid: u64,
    /// Every request received, as the RBAC rule that allows it: (API group, resource, verb).
    requests: BTreeSet<(String, String, String)>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "persistentvolumeclaims" => ("v1", "PersistentVolumeClaim"),
        "persistentvolumes" => ("v1", "PersistentVolume"),
        "storageclasses" => ("storage.k8s.io/v1", "StorageClass"),
        "events" => ("events.k8s.io/v1", "Event"),
        "leases" => ("coordination.k8s.io/v1", "Lease"),
        _ => ("v1", "Unknown"),
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": message, "reason": reason, "code": code}),
    )
}

impl State {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Stores `obj` under `key` with a new resourceVersion and tells the watchers.
    fn put(&mut self, key: Key, mut obj: Value, event: &str) -> Value {
        let v = self.bump();
        obj["metadata"]["resourceVersion"] = json!(v.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.notify(&key.0, event, &obj, v);
        obj
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let obj = self.objects.remove(key)?;
        let v = self.bump();
        self.notify(&key.0, "DELETED", &obj, v);
        Some(obj)
    }

    fn notify(&mut self, resource: &str, event: &str, obj: &Value, v: u64) {
        let line = format!("{}\n", json!({"type": event, "object": obj}));
        self.log.push((v, resource.to_owned(), line.clone()));
        self.watchers.retain(|(r, tx)| r != resource || tx.send(Bytes::from(line.clone())).is_ok());
    }

    fn new_object(&mut self, resource: &str, namespace: &str, mut obj: Value) -> Value {
        let (api_version, kind) = kind_of(resource);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        if !namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        if obj["metadata"]["uid"].as_str().is_none() {
            self.next_uid += 1;
            obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.next_uid));
        }
        obj["metadata"]["creationTimestamp"] = json!("2026-12-06T22:00:00Z");
        obj
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = FakeApi { addr: listener.local_addr().unwrap(), state: Arc::default() };
        let serving = api.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        api
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  \
             user:\n    token: test\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\n    \
             namespace: nfs-storage\ncurrent-context: fake\n",
            self.addr
        )
    }

    // ---- the test's side: acting as users and as the PV controller ----

    pub fn create(&self, resource: &str, namespace: &str, obj: Value) -> Value {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let mut state = self.state();
        let obj = state.new_object(resource, namespace, obj);
        state.put((resource.to_owned(), namespace.to_owned(), name), obj, "ADDED")
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state().objects.get(&(resource.to_owned(), namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Changes an object in place (a new resourceVersion, a MODIFIED event).
    pub fn update(&self, resource: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let mut state = self.state();
        let Some(mut obj) = state.objects.get(&key).cloned() else { panic!("no {resource} {namespace}/{name}") };
        change(&mut obj);
        state.put(key, obj, "MODIFIED");
    }

    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        self.state().remove(&(resource.to_owned(), namespace.to_owned(), name.to_owned()));
    }

    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.state().objects.iter().filter(|(k, _)| k.0 == resource).map(|(_, v)| v.clone()).collect()
    }

    /// Every request received so far, as the RBAC rules they need: (API group, resource, verb).
    pub fn rbac_requests(&self) -> BTreeSet<(String, String, String)> {
        self.state().requests.clone()
    }

    // ---- the API server's side ----

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some((namespace, resource, name)) = parse_path(&path) else {
            return respond(status(404, "NotFound", &format!("no route {path}")));
        };
        let watching = query.get("watch").map(String::as_str) == Some("true");
        let verb = rbac_verb(&method, name.is_some(), watching);
        self.state().requests.insert((api_group(&path).to_owned(), resource.clone(), verb.to_owned()));
        if method == "GET" && name.is_none() && watching {
            let since = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            return self.watch(&resource, since);
        }
        respond(self.serve(&method, &namespace, &resource, name.as_deref(), body))
    }

    fn serve(&self, method: &str, namespace: &str, resource: &str, name: Option<&str>, body: Value) -> (u16, Value) {
        let mut state = self.state();
        let key = |n: &str| (resource.to_owned(), namespace.to_owned(), n.to_owned());
        match (method, name) {
            ("GET", None) => {
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| k.0 == resource && (namespace.is_empty() || k.1 == namespace))
                    .map(|(_, v)| v.clone())
                    .collect();
                let (api_version, kind) = kind_of(resource);
                (
                    200,
                    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                             "metadata": {"resourceVersion": state.version.to_string()}, "items": items}),
                )
            }
            ("GET", Some(n)) => match state.objects.get(&key(n)) {
                Some(obj) => (200, obj.clone()),
                None => status(404, "NotFound", &format!("{resource} \"{n}\" not found")),
            },
            ("POST", None) => {
                let n = body["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                if state.objects.contains_key(&key(&n)) {
                    return status(409, "AlreadyExists", &format!("{resource} \"{n}\" already exists"));
                }
                let obj = state.new_object(resource, namespace, body);
                (201, state.put(key(&n), obj, "ADDED"))
            }
            ("PUT", Some(n)) => {
                let Some(current) = state.objects.get(&key(n)) else {
                    return status(404, "NotFound", &format!("{resource} \"{n}\" not found"));
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    let msg =
                        format!("Operation cannot be fulfilled on {resource} \"{n}\": the object has been modified");
                    return status(409, "Conflict", &msg);
                }
                let mut obj = body;
                obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
                (200, state.put(key(n), obj, "MODIFIED"))
            }
            ("DELETE", Some(n)) => match state.remove(&key(n)) {
                Some(obj) => (200, obj),
                None => status(404, "NotFound", &format!("{resource} \"{n}\" not found")),
            },
            _ => status(405, "MethodNotAllowed", "not supported by the fake API server"),
        }
    }

    fn watch(&self, resource: &str, since: u64) -> Response<BoxBody<Bytes, Infallible>> {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let mut state = self.state();
        for (v, r, line) in &state.log {
            if *v > since && r == resource {
                let _ = tx.send(Bytes::from(line.clone()));
            }
        }
        state.watchers.push((resource.to_owned(), tx));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_else(|_| Response::new(BodyExt::boxed(Full::new(Bytes::new()))))
    }
}

fn respond((code, body): (u16, Value)) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap_or_else(|_| Response::new(BodyExt::boxed(Full::new(Bytes::new()))))
}

/// The RBAC verb the API server's authorizer checks for a request.
fn rbac_verb(method: &str, named: bool, watching: bool) -> &'static str {
    match (method, named, watching) {
        ("GET" | "HEAD", _, true) => "watch",
        ("GET" | "HEAD", false, false) => "list",
        ("GET" | "HEAD", true, false) => "get",
        ("POST", ..) => "create",
        ("PUT", ..) => "update",
        ("PATCH", ..) => "patch",
        ("DELETE", false, _) => "deletecollection",
        ("DELETE", true, _) => "delete",
        _ => "unknown",
    }
}

/// The API group of a request path: `""` for the core group under `/api/v1`.
fn api_group(path: &str) -> &str {
    match path.trim_start_matches('/').split('/').collect::<Vec<_>>().as_slice() {
        ["apis", group, ..] => group,
        _ => "",
    }
}

/// `/api/v1[/namespaces/{ns}]/{resource}[/{name}]` or `/apis/{group}/{version}[/namespaces/{ns}]/{resource}[/{name}]`.
fn parse_path(path: &str) -> Option<(String, String, Option<String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        rest => (String::new(), rest),
    };
    match rest {
        [resource] => Some((namespace, resource.to_string(), None)),
        [resource, name] => Some((namespace, resource.to_string(), Some(name.to_string()))),
        _ => None,
    }
}
