//! A minimal HTTP/1.x server for `/metrics`, `/healthz` and `/readyz`: one
//! request per connection, GET only, answered and closed. Enough for
//! Prometheus and kubelet probes, without an HTTP framework in the agent.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::metrics::Metrics;

/// Where `lb-agent run` serves metrics and probes unless told otherwise
/// (`--metrics-addr`); the DaemonSet's probes and scrape annotation use its port.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// The paths kubelet probes: alive (the process answers) and ready (attached
/// and synced at least once).
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

/// Binds `addr` now (so a taken port fails start-up with a clear error) and
/// serves in the background.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics address {addr} (in use? choose another with --metrics-addr)")
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let m = metrics.clone();
                    tokio::spawn(async move {
                        // A slow or silent client gets 5 s, not a task forever.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), handle(stream, m)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Largest request head accepted; probes and scrapes send a few hundred bytes.
const MAX_HEAD: usize = 8192;

/// Reads a request head (up to [`MAX_HEAD`] bytes): its method and its
/// path without the query.
pub(crate) async fn read_request(s: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    Ok((method.to_string(), path.to_string()))
}

/// Writes a whole response (`extra_headers`: complete `Name: value\r\n`
/// lines) and closes the connection; `send_body: false` for a HEAD request.
pub(crate) async fn respond(s: &mut TcpStream, status: &str, ctype: &str, extra_headers: &str, body: &str, send_body: bool) -> std::io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if send_body { body } else { "" }
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

async fn handle(mut s: TcpStream, m: Arc<Metrics>) -> std::io::Result<()> {
    let (method, path) = read_request(&mut s).await?;
    let (status, ctype, body) = match (method.as_str(), path.as_str()) {
        ("GET", "/metrics") => {
            // Reading the maps is blocking syscalls (conntrack can be large).
            let text = tokio::task::spawn_blocking(move || m.render())
                .await
                .unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
        }
        ("GET", HEALTHZ_PATH) => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", READYZ_PATH) => match m.not_ready_reason() {
            None => ("200 OK", "text/plain", "ready\n".to_string()),
            Some(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    respond(&mut s, status, ctype, "", &body, true).await
}
