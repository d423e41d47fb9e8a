//! The agent's HTTP endpoints on hyper's HTTP/1 server: `/metrics`,
//! `/healthz` and `/readyz` here, and the connection loop the health-check
//! node ports ([`super::healthcheck`]) share. One request per connection
//! (answered, then closed), as Prometheus and kubelet probes expect nothing
//! more; a client gets [`CONN_TIMEOUT`] for its whole exchange.
use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// Where `lb-agent run` serves metrics and probes unless told otherwise
/// (`--metrics-addr`); the DaemonSet's probes and scrape annotation use its port.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// The paths kubelet probes: alive (the process answers) and ready (attached
/// and synced at least once).
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

/// A slow or silent client gets this long, not a task forever.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(5);

/// A whole response, its body in memory.
pub type Reply = Response<Full<Bytes>>;

/// A response of `status` with `content_type` and `body`.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Binds `addr` now (so a taken port fails start-up with a clear error) and
/// serves `/metrics`, `/healthz` and `/readyz` in the background.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), crate::error::RunError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| crate::error::RunError::MetricsAddr { addr, source })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(accept_loop(listener, "metrics", move |req| endpoints(req, metrics.clone())));
    Ok(())
}

/// Accepts connections on `listener` until the task is dropped, answering
/// each one's request with `handle`. `what` names the listener in warnings.
pub async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = handle(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        // As the hand-written server wrote them; some
                        // probes' parsers are picky.
                        .title_case_headers(true)
                        .serve_connection(TokioIo::new(stream), service);
                    // A client that hangs up or times out is no error of ours.
                    let _ = tokio::time::timeout(CONN_TIMEOUT, conn).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
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
    use std::io::{Read as _, Write as _};

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
