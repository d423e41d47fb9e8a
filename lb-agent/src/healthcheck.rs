//! The `healthCheckNodePort`s of `externalTrafficPolicy: Local`
//! LoadBalancer services, served as kube-proxy serves them: on that TCP port
//! of every node address, any HTTP request is answered with 200 when this
//! node has a ready endpoint of the service and 503 otherwise, and a JSON
//! body such as
//! `{"service":{"namespace":"shop","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}`.
//! Cloud load balancers and MetalLB use it to send traffic only to nodes
//! that have local endpoints.
//!
//! After each sync the agent hands [`HealthServer::update`] the wanted ports
//! (`plan::health_checks`): a new port gets a listener, a port no longer
//! wanted loses its own, and the others only get their figures replaced (the
//! listener stays). A port that cannot be bound (in use) is a warning naming
//! the port and the service; it is tried again at the next sync and every
//! [`HealthServer::retry`], and never holds up a sync.
//!
//! A Service semantic the agent serves to load balancers outside (as
//! `socklb`, `snat` and `lbip` are), not an operator view: so it sits beside
//! them, not in `ops`. What each port answers comes from the plan
//! (`plan::health_checks`); the connection loop is [`crate::httpconn`]'s.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use hyper::{header, StatusCode};
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    control::{model::ObjectRef, plan::HealthCheck},
    httpconn::{accept_loop, reply},
};

/// Where health-check node ports are served unless told otherwise
/// (`--health-check-address`): every address, as kube-proxy does.
pub const DEFAULT_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The listeners of the health-check node ports.
pub struct HealthServer {
    addr: IpAddr,
    /// Whether the agent's last sync applied (kube-proxy's
    /// `serviceProxyHealthy`): false answers 503 whatever the count.
    healthy: Arc<AtomicBool>,
    serving: BTreeMap<u16, Listener>,
    /// Wanted but not bound (the port is in use): tried again later.
    pending: BTreeMap<u16, HealthCheck>,
    /// Ports whose bind failure was logged as a warning already (later
    /// failures of the same port go to debug, until it binds).
    warned: BTreeSet<u16>,
}

/// One bound port: its task owns the socket, so dropping this closes it.
struct Listener {
    state: Arc<Mutex<HealthCheck>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthServer {
    /// Serves nothing until the first [`HealthServer::update`]. Listeners
    /// are spawned on the current tokio runtime.
    pub fn new(addr: IpAddr) -> Self {
        Self {
            addr,
            healthy: Arc::new(AtomicBool::new(true)),
            serving: BTreeMap::new(),
            pending: BTreeMap::new(),
            warned: BTreeSet::new(),
        }
    }

    /// Follows the wanted ports: starts, stops, or updates in place.
    pub fn update(&mut self, wanted: BTreeMap<u16, HealthCheck>) {
        self.serving.retain(|port, l| {
            let keep = wanted.contains_key(port);
            if !keep {
                let service = l.state.lock().map(|s| s.service.to_string()).unwrap_or_default();
                tracing::info!(port, %service, "healthCheckNodePort no longer wanted; closed");
            }
            keep
        });
        self.warned.retain(|p| wanted.contains_key(p));
        self.pending.clear();
        for (port, hc) in wanted {
            match self.serving.get(&port) {
                Some(l) => {
                    if let Ok(mut s) = l.state.lock() {
                        *s = hc;
                    }
                }
                None => self.start(port, hc),
            }
        }
    }

    /// Binds the ports a previous attempt could not.
    pub fn retry(&mut self) {
        for (port, hc) in std::mem::take(&mut self.pending) {
            self.start(port, hc);
        }
    }

    /// Sets `serviceProxyHealthy` (whether the dataplane holds the last sync).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The ports listened on now.
    pub fn serving(&self) -> Vec<u16> {
        self.serving.keys().copied().collect()
    }

    /// The ports wanted but not bound.
    pub fn pending(&self) -> Vec<u16> {
        self.pending.keys().copied().collect()
    }

    fn start(&mut self, port: u16, hc: HealthCheck) {
        let addr = SocketAddr::new(self.addr, port);
        match bind(addr) {
            Ok(listener) => {
                tracing::info!(%addr, service = %hc.service, local_endpoints = hc.local_endpoints, "serving healthCheckNodePort");
                self.warned.remove(&port);
                let state = Arc::new(Mutex::new(hc));
                let task = tokio::spawn(serve(listener, state.clone(), self.healthy.clone()));
                self.serving.insert(port, Listener { state, task });
            }
            Err(e) => {
                if self.warned.insert(port) {
                    tracing::warn!(%addr, port, service = %hc.service, error = %e, "cannot serve healthCheckNodePort (port in use?); retrying every second");
                } else {
                    tracing::debug!(%addr, port, service = %hc.service, error = %e, "healthCheckNodePort still cannot be bound");
                }
                self.pending.insert(port, hc);
            }
        }
    }
}

/// Binds at once (no await: a sync never waits on it).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// Answers every request on `listener` from the service's current figures.
async fn serve(listener: TcpListener, state: Arc<Mutex<HealthCheck>>, healthy: Arc<AtomicBool>) {
    accept_loop(listener, "healthCheckNodePort", move |_req| {
        let hc = state.lock().map(|s| s.clone()).unwrap_or_else(|e| e.into_inner().clone());
        let (status, body) = answer(&hc, healthy.load(Ordering::Relaxed));
        let mut r = reply(status, "application/json", body);
        r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
        // A HEAD request gets the head only: hyper leaves the body out.
        std::future::ready(r)
    })
    .await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: &'a ObjectRef,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

/// The status line and JSON body for `hc`, as kube-proxy answers.
fn answer(hc: &HealthCheck, healthy: bool) -> (StatusCode, String) {
    let status = if hc.local_endpoints > 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Body { service: &hc.service, local_endpoints: hc.local_endpoints, service_proxy_healthy: healthy };
    (status, serde_json::to_string(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        time::Duration,
    };

    use super::*;

    fn hc(name: &str, n: usize) -> HealthCheck {
        HealthCheck { service: ObjectRef::new("shop", name), local_endpoints: n }
    }

    /// A port free on loopback right now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// One request on a fresh connection: the whole response.
    async fn get(port: u16, method: &str) -> std::io::Result<String> {
        let req = format!("{method} /anything?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(req.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .await
        .unwrap()
    }

    #[test]
    fn the_body_is_kube_proxys() {
        let (status, body) = answer(&hc("web", 2), true);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#);
        assert_eq!(answer(&hc("web", 0), true).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(&hc("web", 2), false).0, StatusCode::SERVICE_UNAVAILABLE, "an unhealthy proxy fails every check");
    }

    #[tokio::test]
    async fn ports_start_update_in_place_and_stop() {
        let port = free_port();
        let mut hs = HealthServer::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
        hs.update([(port, hc("web", 2))].into());
        let r = get(port, "GET").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: application/json\r\n") && r.contains("X-Content-Type-Options: nosniff\r\n"), "{r}");
        assert!(r.ends_with(r#""localEndpoints":2,"serviceProxyHealthy":true}"#), "{r}");

        // Same port, new figures: the same listener answers them.
        let task_id = hs.serving[&port].task.id();
        hs.update([(port, hc("web", 0))].into());
        assert_eq!(hs.serving[&port].task.id(), task_id, "the listener was not restarted");
        let r = get(port, "GET").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.contains(r#""localEndpoints":0"#), "{r}");
        let r = get(port, "HEAD").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503 ") && r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");

        hs.update([(port, hc("web", 1))].into());
        hs.set_healthy(false);
        let r = get(port, "GET").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503 ") && r.contains(r#""serviceProxyHealthy":false"#), "{r}");

        hs.update(BTreeMap::new());
        assert!(hs.serving().is_empty());
        let mut closed = false;
        for _ in 0..100 {
            if get(port, "GET").await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the port still answers after its service left");
    }

    #[tokio::test]
    async fn a_port_in_use_waits_and_binds_once_free() {
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = blocker.local_addr().unwrap().port();
        let mut hs = HealthServer::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
        hs.update([(port, hc("web", 1))].into());
        assert_eq!((hs.serving(), hs.pending()), (vec![], vec![port]));
        hs.retry();
        assert_eq!(hs.pending(), [port], "still in use");
        drop(blocker);
        hs.retry();
        assert_eq!((hs.serving(), hs.pending()), (vec![port], vec![]));
        let r = get(port, "GET").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }
}
