//! The HTTP/1 connection loop every listener of the agent shares (the
//! operator endpoints of [`crate::ops::http`], the health-check node ports
//! of [`crate::healthcheck`]), on hyper's server. One request per connection
//! (answered, then closed), as Prometheus, kubelet probes and cloud load
//! balancers expect nothing more; a client gets [`CONN_TIMEOUT`] for its
//! whole exchange.
use std::{convert::Infallible, future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
