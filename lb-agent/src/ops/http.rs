//! The agent's operator endpoints: `/metrics`, `/healthz` and `/readyz`,
//! served through the connection loop of [`crate::httpconn`].
use std::{net::SocketAddr, sync::Arc};

use hyper::{body::Incoming, Method, Request, StatusCode};
use tokio::net::TcpListener;

use super::metrics::Metrics;
use crate::httpconn::{accept_loop, reply, Reply};

/// Where `lb-agent run` serves metrics and probes unless told otherwise
/// (`--metrics-addr`); the DaemonSet's probes and scrape annotation use its port.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// The paths kubelet probes: alive (the process answers) and ready (attached
/// and synced at least once).
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

/// Binds `addr` now (so a taken port fails start-up with a clear error) and
/// serves `/metrics`, `/healthz` and `/readyz` in the background.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), crate::error::RunError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| crate::error::RunError::MetricsAddr { addr, source })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(accept_loop(listener, "metrics", move |req| endpoints(req, metrics.clone())));
    Ok(())
}

/// `/metrics`, `/healthz` and `/readyz`; GET only.
async fn endpoints(req: Request<Incoming>, m: Arc<Metrics>) -> Reply {
    const TEXT: &str = "text/plain";
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            // Reading the maps is blocking syscalls.
            let text = tokio::task::spawn_blocking(move || m.render()).await.unwrap_or_default();
            reply(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text)
        }
        HEALTHZ_PATH => reply(StatusCode::OK, TEXT, "ok\n"),
        READYZ_PATH => match m.not_ready_reason() {
            None => reply(StatusCode::OK, TEXT, "ready\n"),
            Some(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, TEXT, "try /metrics, /healthz or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        time::Duration,
    };

    use super::*;

    /// One raw request on a fresh connection: the whole response, read to
    /// the server's close.
    async fn raw(addr: SocketAddr, request: &'static str) -> String {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).expect("the server closes after one answer");
            out
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn probes_answer_once_and_close() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let m = Arc::new(Metrics::new(std::path::Path::new("/nonexistent/xdplb")));
        tokio::spawn(accept_loop(l, "test", move |req| endpoints(req, m.clone())));

        let r = raw(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Content-Type: text/plain\r\n") && r.ends_with("\r\n\r\nok\n"), "{r}");
        // Not attached yet: not ready, with the reason.
        let r = raw(addr, "GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && r.contains("\r\n\r\nnot ready: "), "{r}");
        let r = raw(addr, "GET /nope HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n") && r.ends_with("try /metrics, /healthz or /readyz\n"), "{r}");
        let r = raw(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        let r = raw(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
        let body = r.split_once("\r\n\r\n").unwrap().1;
        let length: usize = r.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("a length").trim().parse().unwrap();
        assert_eq!(length, body.len(), "{r}");
    }
}
