//! The small HTTP server for the kubelet and Prometheus: `GET /healthz` (the process answers), `GET /readyz` (it has
//! listed claims and volumes as leader, or can read the Lease as a standby) and `GET /metrics`.
//!
//! Three fixed routes over HTTP/1.1 with `Connection: close` need no framework: each connection's request head is read
//! (at most 8 KiB, for at most 5 seconds), answered, and closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Debug, Default)]
pub struct Health {
    pub ready: AtomicBool,
}

/// Status line, content type and body for a request line such as `GET /readyz HTTP/1.1`.
pub fn respond(request_line: &str, health: &Health, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".to_owned());
    }
    match path {
        "/healthz" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => ("200 OK", TEXT, "ready\n".to_owned()),
        "/readyz" => ("503 Service Unavailable", TEXT, "not ready\n".to_owned()),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        _ => ("404 Not Found", TEXT, "not found\n".to_owned()),
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let (health, metrics) = (health.clone(), metrics.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &health, &metrics).await {
                        tracing::debug!(error = %e, "health connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a health connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, health: &Health, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head too slow"))??;
    let head = String::from_utf8_lossy(&buf);
    let request_line = head.lines().next().unwrap_or_default();
    let (status, content_type, body) = respond(request_line, health, metrics);
    let body = if request_line.starts_with("HEAD ") { String::new() } else { body };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_answer_as_the_kubelet_and_prometheus_expect() {
        let (health, metrics) = (Health::default(), Metrics::default());
        assert_eq!(respond("GET /healthz HTTP/1.1", &health, &metrics).0, "200 OK");
        assert_eq!(respond("GET /readyz HTTP/1.1", &health, &metrics).0, "503 Service Unavailable");
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(respond("GET /readyz?verbose HTTP/1.1", &health, &metrics).0, "200 OK");
        let (status, content_type, body) = respond("GET /metrics HTTP/1.1", &health, &metrics);
        assert_eq!((status, content_type), ("200 OK", "text/plain; version=0.0.4; charset=utf-8"));
        assert!(body.contains("nfs_provisioner_volumes_provisioned_total 0"));
        assert_eq!(respond("GET /nope HTTP/1.1", &health, &metrics).0, "404 Not Found");
        assert_eq!(respond("POST /healthz HTTP/1.1", &health, &metrics).0, "405 Method Not Allowed");
        assert_eq!(respond("", &health, &metrics).0, "405 Method Not Allowed");
    }

    #[tokio::test]
    async fn server_answers_over_tcp_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Arc::new(Health::default()), Arc::new(Metrics::default()), rx));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nok\n"), "{reply}");
        tx.send(true).unwrap();
        server.await.unwrap();
    }
}
