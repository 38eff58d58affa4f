//! The API server's side of a mocked conversation (kube's `tower_test` service): scripted answers, and the requests
//! the code under test sent, for the tests to check.

#![allow(dead_code)]

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct MockApi {
    handle: Handle,
}

/// A client whose every request arrives at the returned mock.
pub fn mock_client() -> (Client, MockApi) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), MockApi { handle })
}

impl MockApi {
    /// Takes the next request, checks its method and path, answers `status` with `body`, returns the request body
    /// (JSON, or `Null` when empty).
    pub async fn answer(&mut self, method: &str, path: &str, status: u16, body: Value) -> Value {
        // A guard against a hang when the code under test sends nothing; not a timing assertion.
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), self.handle.next_request()).await;
        let (request, send) = next
            .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"))
            .unwrap_or_else(|| panic!("expected {method} {path}, but the client was dropped"));
        assert_eq!((request.method().as_str(), request.uri().path()), (method, path), "request {}", request.uri());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap()));
        send.send_response(response.unwrap());
        sent
    }

    pub async fn not_found(&mut self, method: &str, path: &str) -> Value {
        self.answer(method, path, 404, status(404, "NotFound")).await
    }

    /// After the code under test finished and dropped its client, nothing more was sent.
    pub async fn no_more_requests(mut self) {
        assert!(self.handle.next_request().await.is_none(), "an unexpected request was sent");
    }
}

/// A `Status` failure body as the API server sends it.
pub fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (test)"), "reason": reason, "code": code})
}
