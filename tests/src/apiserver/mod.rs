//! A Kubernetes API server double, in process, over plain HTTP: enough of
//! the real one for kube-rs watchers and reflectors (and so the real agent
//! binary) to run against it unchanged.
//!
//! It serves LIST, WATCH and GET of Services, EndpointSlices
//! (discovery.k8s.io/v1), Nodes, Leases (coordination.k8s.io/v1), Events
//! and LoadBalancerPools (xdplb.io/v1alpha1), cluster-wide and namespaced;
//! POST of Leases and Events, PUT of Leases (409 on a stale
//! resourceVersion), and merge-PATCH of a Service's status; with one
//! global resourceVersion, retained history (a watch resumes where it left
//! off), periodic BOOKMARKs, `410 Gone` for a watch older than the history,
//! and `/version`, `/api`, `/apis`. A test drives it through methods, not
//! HTTP: create/update/delete objects, compact the history, cut every open
//! watch, take the server down for a while, and read back every request it
//! saw (so the RBAC test can check which calls were made).
//!
//! It runs on a thread of its own with a current-thread tokio runtime, so
//! tests stay synchronous; [`ApiServer::start_in`] binds inside a network
//! namespace, where an agent in that namespace can reach it on 127.0.0.1;
//! [`ApiServer::start_on`] binds a given address in a namespace (the test
//! cluster's bridge, reached by every node).
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::netns::Netns;

mod http;
pub mod objects;
mod state;
#[cfg(test)]
mod tests;

use state::State;
pub use state::{Request, Resource};

/// How often open watches get a BOOKMARK (the real server: about a minute).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// The running double; stopped (every connection cut) on drop.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Serves on 127.0.0.1 (a free port) in the calling thread's namespace.
    pub fn start() -> Self {
        Self::serve(
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the API server double"),
        )
    }

    /// Serves on 127.0.0.1 inside `ns`: the listening socket belongs to the
    /// namespace, whichever thread serves it.
    pub fn start_in(ns: &Netns) -> Self {
        Self::serve(ns.run(|| {
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the API server double")
        }))
    }

    /// Serves on `addr` (port 0: a free one) inside `ns`, e.g. an address
    /// on a bridge that several node namespaces reach (tests/src/cluster.rs).
    pub fn start_on(ns: &Netns, addr: std::net::Ipv4Addr) -> Self {
        Self::serve(ns.run(move || {
            std::net::TcpListener::bind((addr, 0)).expect("binding the API server double")
        }))
    }

    fn serve(listener: std::net::TcpListener) -> Self {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("apiserver-double".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the API server double");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        () = http::serve(listener, st.clone()) => {}
                        () = bookmarks(st) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every connection task.
            })
            .expect("starting the API server double");
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig whose current context points at the double (no auth).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n\
             current-context: double\nusers:\n- name: double\n  user: {{}}\n",
            self.addr
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) {
        std::fs::write(path, self.kubeconfig()).expect("writing the kubeconfig");
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        http::lock(&self.state)
    }

    /// Creates or replaces an object (its `apiVersion`/`kind` say which
    /// resource); returns the new resourceVersion.
    pub fn apply(&self, obj: Value) -> u64 {
        self.st().apply(obj)
    }

    /// The objects of `resource` (every namespace), in namespace/name order.
    pub fn list(&self, resource: Resource) -> Vec<Value> {
        self.st().list(resource, &state::Selector::default())
    }

    /// One object.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.st().get(resource, namespace, name)
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        self.st().delete(resource, namespace, name)
    }

    /// Forgets the event history: a watch resuming from any version before
    /// now gets `410 Gone` and must relist.
    pub fn compact(&self) {
        self.st().compact()
    }

    /// Cuts every open watch, as a network failure would; returns how many.
    pub fn drop_watches(&self) -> usize {
        self.st().drop_watches()
    }

    /// Takes the server down (every open watch cut, every request answered
    /// 503) or brings it back.
    pub fn set_available(&self, up: bool) {
        let mut st = self.st();
        st.available = up;
        if !up {
            st.drop_watches();
        }
    }

    /// Delays every answer by `d` (zero: answer at once).
    pub fn set_delay(&self, d: Duration) {
        self.st().delay = d;
    }

    /// Cuts every list and get answer off halfway (`on`), or stops doing so.
    pub fn set_truncate(&self, on: bool) {
        self.st().truncate = on;
    }

    /// Denies (403 Forbidden) or allows every request on `resource`, as an
    /// RBAC role without it would.
    pub fn set_forbidden(&self, resource: Resource, forbidden: bool) {
        let mut st = self.st();
        if forbidden {
            st.forbidden.insert(resource);
        } else {
            st.forbidden.remove(&resource);
        }
    }

    /// Watches currently connected.
    pub fn open_watches(&self) -> usize {
        self.st().open_watches()
    }

    /// Sends a BOOKMARK to every open watch that allows them now; returns
    /// how many were sent.
    pub fn bookmark(&self) -> usize {
        self.st().bookmark()
    }

    /// BOOKMARK events sent so far.
    pub fn bookmarks_sent(&self) -> u64 {
        self.st().bookmarks_sent
    }

    pub fn resource_version(&self) -> u64 {
        self.st().resource_version()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.st().requests.clone()
    }

    /// Requests with this verb on this resource plural.
    pub fn count(&self, verb: &str, resource: &str) -> usize {
        self.st()
            .requests
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    /// The distinct (API group, resource, verb) calls seen.
    pub fn calls(&self) -> BTreeSet<(String, String, String)> {
        self.st()
            .requests
            .iter()
            .map(|r| (r.group.clone(), r.resource.clone(), r.verb.clone()))
            .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends bookmarks every [`BOOKMARK_EVERY`], forever.
async fn bookmarks(state: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    loop {
        tick.tick().await;
        http::lock(&state).bookmark();
    }
}
