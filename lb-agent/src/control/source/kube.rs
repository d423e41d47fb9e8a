//! `--source kube`: Services, EndpointSlices and Nodes from the API server.
//!
//! One kube-runtime `watcher(...).default_backoff()` per resource, so
//! reconnects, backoff, list pagination and the relist after `410 Gone`
//! are the runtime's, not ours. Every event's object goes to one follower
//! task, which validates only that object into the model (the file
//! source's validation, see [`Model::apply`]) and drops it: the agent keeps
//! the model's few fields per object, not the API objects (reflector
//! stores held every object whole, beside the model: RSS 196 MiB at 10,000
//! Services and 100,000 endpoints, 150 without them). A (re)list is collected apart and swapped in for its
//! resource only when complete (`InitDone`), so a model is never half a
//! list. The model is sent if it changed: a change after a quiet spell goes
//! out at once; changes that follow within [`DEBOUNCE`] of a send wait
//! until nothing has changed for [`DEBOUNCE`] (at most [`MAX_DELAY`]), so
//! a burst costs a few syncs, not one per object. Nothing is sent before
//! all three resources were listed once: the caller gets the receiver only
//! then, so an agent never programs a partial view nor deletes live
//! services on start.
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::control::model::{Model, Object};

/// Every API call the kube source may make, as RBAC spells it: (API group,
/// resource, verbs). The RBAC manifest is tested against this list, and the
/// end-to-end test checks that the calls the API server saw are within it.
/// The watchers issue `list` and `watch`; `get` completes the read-only
/// triple a role conventionally grants (and `kubectl auth can-i` checks).
pub const KUBE_API_CALLS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["get", "list", "watch"]),
    (
        "discovery.k8s.io",
        "endpointslices",
        &["get", "list", "watch"],
    ),
    ("", "nodes", &["get", "list", "watch"]),
    // LoadBalancer addresses (`lbip`, with --lb-addresses): the allocator
    // writes Services' status and Events; every agent follows the pools.
    ("", "services/status", &["patch"]),
    ("", "events", &["create"]),
    ("xdplb.io", "loadbalancerpools", &["get", "list", "watch"]),
];

/// The allocator's Lease calls, granted by a Role in the agent's namespace
/// only (not cluster-wide): (API group, resource, verbs).
pub const LEASE_API_CALLS: &[(&str, &str, &[&str])] = &[("coordination.k8s.io", "leases", &["get", "create", "update"])];

/// [`KUBE_API_CALLS`] as (API group, resource, verb) triples, for comparing
/// with RBAC rules or with the calls an API server saw.
pub fn kube_api_call_set() -> std::collections::BTreeSet<(String, String, String)> {
    KUBE_API_CALLS
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect()
}

/// How long the stores must stay unchanged before a model is sent, when
/// the previous one went out less than this long ago.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A model is built at most this long after the first change of a burst,
/// so a never-quiet cluster still gets its changes programmed.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why the kube source could not start. The underlying error is the
/// `source()`, so `anyhow` prints it once, under "Caused by".
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading the kubeconfig {path}")]
    ReadKubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration found (not in a pod, no KUBECONFIG, no ~/.kube/config); pass --kubeconfig <file>")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("the {0} watcher stopped before its first complete list")]
    Stopped(&'static str),
}

/// A client from `kubeconfig` if given, else inferred the usual way
/// (KUBECONFIG or ~/.kube/config, then the in-cluster service account).
/// Every successful answer to a list or watch marks its resource healthy in
/// `health`: a watch resumed after an outage sends no event until something
/// changes, but its answer shows the API server is back.
pub async fn client(kubeconfig: Option<&Path>, health: Arc<SourceHealth>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let read_err = |source| KubeError::ReadKubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(read_err)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(read_err)?
        }
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    tracing::info!(server = %config.cluster_url, "connecting to the Kubernetes API");
    let builder = kube::client::ClientBuilder::try_from(config).map_err(KubeError::Client)?;
    Ok(builder.with_layer(&tower::layer::layer_fn(move |inner| Observe { inner, health: health.clone() })).build())
}

/// The client's middleware that records successful answers in [`SourceHealth`].
#[derive(Clone)]
struct Observe<S> {
    inner: S,
    health: Arc<SourceHealth>,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for Observe<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let health = self.health.clone();
        let path = req.uri().path().to_string();
        if let Some(h) = health.for_path(&path) {
            h.request_started();
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            if let Ok(resp) = &r {
                if resp.status().is_success() {
                    if let Some(h) = health.for_path(&path) {
                        h.ok();
                    }
                }
            }
            r
        })
    }
}

/// The state of one resource's watch, for metrics and health checks.
#[derive(Debug, Default)]
pub struct WatchHealth {
    connected: AtomicBool,
    synced: AtomicBool,
    last_event_ms: AtomicU64,
    /// Unix ms the watch was last known good: a successful list or watch
    /// response, an event, or the moment it broke (it was fine until then).
    last_ok_ms: AtomicU64,
    /// Unix ms since which a list or watch request has been waiting for a
    /// successful answer (0: none waiting). kube-client retries 503s for
    /// minutes before the watcher sees an error; this shows it at once.
    waiting_since_ms: AtomicU64,
    lists: AtomicU64,
    errors: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl WatchHealth {
    /// Whether the last step of the watch succeeded (false from an error
    /// until the next event). kube-client retries 429/503/504 answers itself
    /// (with backoff) before the watcher sees an error, so an API server
    /// answering 503 still shows as connected meanwhile; `last_event` ages.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Whether a complete list has been seen since start.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
    /// When the last event (object, list start or end) arrived.
    pub fn last_event(&self) -> Option<SystemTime> {
        match self.last_event_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
    /// Lists after the first one: each a 410 Gone, or a watch that could not
    /// resume.
    pub fn relists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed).saturating_sub(1)
    }
    /// Failed API calls and error events (each followed by a backoff).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// When the watch was last known good: now while connected, else the
    /// last success (None before the first).
    pub fn last_success(&self) -> Option<SystemTime> {
        if self.healthy() {
            return Some(SystemTime::now());
        }
        // Waiting: the previous call or stream was fine until the new request.
        let ms = match self.waiting_since_ms.load(Ordering::Relaxed) {
            0 => self.last_ok_ms.load(Ordering::Relaxed),
            waiting => waiting,
        };
        (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Connected and no request waiting for an answer.
    pub fn healthy(&self) -> bool {
        self.connected() && self.waiting_since_ms.load(Ordering::Relaxed) == 0
    }

    /// How long the watch has gone without success (zero while healthy).
    pub fn stale_for(&self) -> Duration {
        if self.healthy() {
            return Duration::ZERO;
        }
        self.last_success()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or(Duration::MAX)
    }

    /// A list or watch request went out (the earliest unanswered one counts).
    fn request_started(&self) {
        let _ = self.waiting_since_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn event(&self) {
        self.ok();
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A successful API answer (list, watch start) or event: connected.
    fn ok(&self) {
        self.connected.store(true, Ordering::Relaxed);
        self.last_ok_ms.store(now_ms(), Ordering::Relaxed);
        self.waiting_since_ms.store(0, Ordering::Relaxed);
    }

    fn failed(&self) {
        if self.connected.swap(false, Ordering::Relaxed) {
            self.last_ok_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The health of the kube source: one [`WatchHealth`] per resource, and how
/// many models it has sent. Shared behind an `Arc` with whoever reports it.
#[derive(Debug, Default)]
pub struct SourceHealth {
    pub services: WatchHealth,
    pub endpoint_slices: WatchHealth,
    pub nodes: WatchHealth,
    models: AtomicU64,
}

impl SourceHealth {
    /// Every watch connected.
    pub fn connected(&self) -> bool {
        self.watches().iter().all(|w| w.connected())
    }
    /// Every resource listed completely at least once.
    pub fn synced(&self) -> bool {
        self.watches().iter().all(|w| w.synced())
    }
    /// Relists across the three resources.
    pub fn relists(&self) -> u64 {
        self.watches().iter().map(|w| w.relists()).sum()
    }
    /// The longest time any resource has gone without a successful list or
    /// watch (zero while all are connected).
    pub fn stale_for(&self) -> Duration {
        self.watches().iter().map(|w| w.stale_for()).max().unwrap_or_default()
    }
    /// Each resource's name (as the API spells it) and health.
    pub fn by_resource(&self) -> [(&'static str, &WatchHealth); 3] {
        [("services", &self.services), ("endpointslices", &self.endpoint_slices), ("nodes", &self.nodes)]
    }
    /// The health of the resource an API path is about
    /// (`/api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, ...).
    fn for_path(&self, path: &str) -> Option<&WatchHealth> {
        let last = path.rsplit('/').next()?;
        self.by_resource().into_iter().find(|(r, _)| *r == last).map(|(_, h)| h)
    }
    /// Models sent, the first complete one included.
    pub fn models(&self) -> u64 {
        self.models.load(Ordering::Relaxed)
    }
    fn watches(&self) -> [&WatchHealth; 3] {
        [&self.services, &self.endpoint_slices, &self.nodes]
    }
}

/// What a watcher reports to the follower.
enum Change {
    Apply(Typed),
    Delete(Typed),
    /// A (re)list of this resource begins (the first, or one after `410 Gone`).
    ListStart(Kind),
    /// An object of the list under way.
    Listed(Typed),
    /// The list is complete: it replaces this resource's objects.
    ListDone(Kind),
    /// The watcher's stream ended (it never should).
    Ended(Kind),
}

/// The resources followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    Slice,
    Node,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
    fn health(self, h: &SourceHealth) -> &WatchHealth {
        match self {
            Kind::Service => &h.services,
            Kind::Slice => &h.endpoint_slices,
            Kind::Node => &h.nodes,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Slice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// One object of a followed resource.
enum Typed {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Node(Box<Node>),
}

impl Typed {
    fn object(&self) -> Object<'_> {
        match self {
            Typed::Service(s) => Object::Service(s),
            Typed::Slice(s) => Object::Slice(s),
            Typed::Node(n) => Object::Node(n),
        }
    }
}

/// The model and the lists under way: what the follower keeps.
#[derive(Default)]
struct State {
    /// Per resource ([`Kind::index`]): the objects of a list under way,
    /// validated into a model of their own.
    listing: [Option<Model>; 3],
    /// Per resource: listed completely at least once.
    listed: [bool; 3],
}

impl State {
    /// Applies `change` to `model` (a list's objects only when it is
    /// complete); returns whether the model changed. An ended stream is
    /// [`KubeError::Stopped`] before its first list, and logged after.
    fn apply(&mut self, model: &mut Model, change: Change) -> Result<bool, KubeError> {
        Ok(match change {
            Change::Apply(t) => model.apply(t.object()),
            Change::Delete(t) => model.remove(t.object()),
            Change::ListStart(kind) => {
                self.listing[kind.index()] = Some(Model::default());
                false
            }
            Change::Listed(t) => {
                let kind = match &t {
                    Typed::Service(_) => Kind::Service,
                    Typed::Slice(_) => Kind::Slice,
                    Typed::Node(_) => Kind::Node,
                };
                if let Some(part) = &mut self.listing[kind.index()] {
                    part.apply(t.object());
                }
                false
            }
            Change::ListDone(kind) => {
                self.listed[kind.index()] = true;
                let Some(part) = self.listing[kind.index()].take() else { return Ok(false) };
                // The list replaces what the watch had: objects deleted
                // while it was down go too.
                fn swap<T: PartialEq>(now: &mut T, listed: T) -> bool {
                    let changed = *now != listed;
                    *now = listed;
                    changed
                }
                match kind {
                    Kind::Service => swap(&mut model.services, part.services),
                    Kind::Slice => swap(&mut model.slices, part.slices),
                    Kind::Node => swap(&mut model.nodes, part.nodes),
                }
            }
            Change::Ended(kind) => {
                if !self.listed[kind.index()] {
                    return Err(KubeError::Stopped(kind.name()));
                }
                // `watcher` streams never end; if one did, the model would freeze.
                tracing::error!(kind = kind.name(), "watch stream ended; this resource is no longer followed");
                false
            }
        })
    }

    fn all_listed(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }
}

/// Starts watching and returns once Services, EndpointSlices and Nodes have
/// each been listed completely; the receiver holds that first model and then
/// sees a new one after every (debounced) change. `node_name` restricts the
/// Nodes watch to this node (field selector), which is all the plan reads;
/// empty watches every Node.
pub async fn watch(
    client: Client,
    node_name: &str,
    health: Arc<SourceHealth>,
) -> Result<watch::Receiver<Arc<Model>>, KubeError> {
    let (changed, mut changes) = mpsc::unbounded_channel();
    let node_cfg = if node_name.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(&format!("metadata.name={node_name}"))
    };
    follow_resource::<Service>(Api::all(client.clone()), watcher::Config::default(), &health, Kind::Service, |s| Typed::Service(Box::new(s)), &changed);
    follow_resource::<EndpointSlice>(Api::all(client.clone()), watcher::Config::default(), &health, Kind::Slice, |s| Typed::Slice(Box::new(s)), &changed);
    follow_resource::<Node>(Api::all(client), node_cfg, &health, Kind::Node, |n| Typed::Node(Box::new(n)), &changed);
    drop(changed);
    tracing::info!("waiting for the first complete list of Services, EndpointSlices and Nodes");
    let (mut state, mut first) = (State::default(), Model::default());
    while !state.all_listed() {
        // The watchers' tasks hold the senders for ever.
        let change = changes.recv().await.ok_or(KubeError::Stopped("every"))?;
        state.apply(&mut first, change)?;
    }
    tracing::info!(
        services = first.services.len(),
        endpoint_slices = first.slices.len(),
        nodes = first.nodes.len(),
        "listed the cluster"
    );
    if !node_name.is_empty() && !first.nodes.contains_key(node_name) {
        tracing::warn!(
            node = node_name,
            "no Node of this name: NodePorts get only --node-address addresses"
        );
    }
    // The model's objects were made between the list pages' API objects,
    // all freed now: copied on a thread of its own (so into a malloc arena
    // of its own), they sit together and the pages' memory can be given
    // back (the agent trims after its first sync).
    let first = std::thread::scope(|s| match std::thread::Builder::new().name("model-copy".into()).spawn_scoped(s, || first.compacted()) {
        Ok(t) => t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Err(_) => first.clone(),
    });
    health.models.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(follow(state, changes, tx, health));
    Ok(rx)
}

/// [`client`] then [`watch`]: what `lb-agent run --source kube` does.
pub async fn start(
    kubeconfig: Option<&Path>,
    node_name: &str,
    health: Arc<SourceHealth>,
) -> Result<watch::Receiver<Arc<Model>>, KubeError> {
    watch(client(kubeconfig, health.clone()).await?, node_name, health).await
}

/// Runs one resource's watcher, recording its health and sending each
/// object (`wrap`ped) and list boundary to `changed`.
fn follow_resource<K>(
    api: Api<K>,
    cfg: watcher::Config,
    health: &Arc<SourceHealth>,
    kind: Kind,
    wrap: fn(K) -> Typed,
    changed: &mpsc::UnboundedSender<Change>,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, cfg).default_backoff();
    let (health, changed) = (health.clone(), changed.clone());
    let kind_name = kind.name();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(step) = stream.next().await {
            let h = kind.health(&health);
            let change = match step {
                Ok(event) => {
                    h.event();
                    match event {
                        watcher::Event::Init => {
                            if h.lists.fetch_add(1, Ordering::Relaxed) > 0 {
                                tracing::info!(kind = kind_name, "relisting");
                            }
                            Change::ListStart(kind)
                        }
                        watcher::Event::InitApply(obj) => Change::Listed(wrap(obj)),
                        watcher::Event::InitDone => {
                            h.synced.store(true, Ordering::Relaxed);
                            tracing::debug!(kind = kind_name, "list complete");
                            Change::ListDone(kind)
                        }
                        watcher::Event::Apply(obj) => Change::Apply(wrap(obj)),
                        watcher::Event::Delete(obj) => Change::Delete(wrap(obj)),
                    }
                }
                Err(e) => {
                    h.failed();
                    // The stream retries by itself after a backoff.
                    match status(&e) {
                        Some(s) if s.is_forbidden() => tracing::error!(
                            kind = kind_name, error = %e,
                            "forbidden: the agent's service account needs get, list and watch on services, endpointslices.discovery.k8s.io and nodes (a ClusterRole bound to it); retrying"
                        ),
                        // An expired resource version: routine, ends in a relist.
                        Some(s) if s.code == 410 => {
                            tracing::info!(kind = kind_name, "resource version expired (410 Gone)")
                        }
                        _ => tracing::warn!(kind = kind_name, error = %e, "watch failed; retrying"),
                    }
                    continue;
                }
            };
            if changed.send(change).is_err() {
                return;
            }
        }
        let _ = changed.send(Change::Ended(kind));
    });
}

/// The API server's `Status` behind a watcher error, if it answered one.
fn status(e: &watcher::Error) -> Option<&kube::core::Status> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s),
        watcher::Error::WatchError(s) => Some(s),
        _ => None,
    }
}

/// Applies the watchers' changes to the model and sends it, until the
/// receiver is gone: at once after a quiet spell, debounced in a burst.
async fn follow(
    mut state: State,
    mut changes: mpsc::UnboundedReceiver<Change>,
    tx: watch::Sender<Arc<Model>>,
    health: Arc<SourceHealth>,
) {
    let mut last_sent: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            c = changes.recv() => match c {
                Some(c) => c,
                None => return,
            },
            () = tx.closed() => return,
        };
        let start = Instant::now();
        let mut batch = vec![first];
        while let Ok(c) = changes.try_recv() {
            batch.push(c);
        }
        if last_sent.is_some_and(|t| t.elapsed() < DEBOUNCE) {
            while start.elapsed() < MAX_DELAY {
                match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    Ok(Some(c)) => batch.push(c),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
        }
        let n = batch.len();
        // A list's objects or a status-only update often change nothing we
        // use: no model, no sync.
        let sent = tx.send_if_modified(|current| {
            // In place when the consumer holds no older model (the usual
            // case): a change costs its own objects only.
            let model = Arc::make_mut(current);
            let changed = batch.into_iter().fold(false, |changed, c| state.apply(model, c).unwrap_or(false) | changed);
            if changed {
                // Counted before the receiver is woken: whoever sees the
                // model sees the count too.
                health.models.fetch_add(1, Ordering::Relaxed);
            }
            changed
        });
        if sent {
            last_sent = Some(Instant::now());
            tracing::debug!(changes = n, waited_us = start.elapsed().as_micros() as u64, "objects changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same objects through YAML (file source) and typed (kube source)
    /// give the same model, invalid objects skipped alike.
    #[test]
    fn typed_objects_build_the_same_model_as_yaml() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop, name: web}\n\
                    spec: {type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32000, \
                    clusterIP: 10.96.0.10, ports: [{name: http, port: 80, nodePort: 30080, targetPort: 8080}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {namespace: shop, name: evil}\n\
                    spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n---\n\
                    apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                    metadata: {namespace: shop, name: web-1, labels: {kubernetes.io/service-name: web}}\n\
                    addressType: IPv4\nports: [{name: http, port: 8080}]\n\
                    endpoints: [{addresses: [10.0.2.11], conditions: {ready: true}, nodeName: node-a}]\n---\n\
                    apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
                    status: {addresses: [{type: InternalIP, address: 192.168.1.1}]}\n";
        let mut from_yaml = Model::default();
        from_yaml.add_yaml(yaml, "test");
        let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        let services: Vec<Service> = docs[..2]
            .iter()
            .map(|d| serde_norway::from_value(d.clone()).expect("service"))
            .collect();
        let slices: Vec<EndpointSlice> =
            vec![serde_norway::from_value(docs[2].clone()).expect("slice")];
        let nodes: Vec<Node> = vec![serde_norway::from_value(docs[3].clone()).expect("node")];
        let typed = Model::from_objects(&services, &slices, &nodes);
        assert_eq!(typed, from_yaml);
        assert_eq!(typed.services.len(), 1, "the invalid Service is skipped");
        assert_eq!(typed.slices.len(), 1);
        let web = &typed.services[&crate::control::model::ObjectRef::new("shop", "web")];
        assert_eq!(web.health_check_node_port, Some(32000), "the kube source carries the health-check port too");
        assert_eq!(
            typed.nodes["node-a"].addresses,
            [std::net::Ipv4Addr::new(192, 168, 1, 1)]
        );
    }

    #[test]
    fn health_reports_relists_after_the_first_list() {
        let h = SourceHealth::default();
        assert!(!h.synced() && !h.connected() && h.services.last_event().is_none());
        for w in h.watches() {
            w.event();
            w.lists.fetch_add(1, Ordering::Relaxed);
            w.synced.store(true, Ordering::Relaxed);
        }
        h.nodes.lists.fetch_add(1, Ordering::Relaxed);
        assert!(h.synced() && h.connected());
        assert_eq!(h.relists(), 1);
        assert!(h.nodes.last_event().is_some());
    }

    #[test]
    fn a_watch_is_stale_from_its_last_success_and_fresh_again_on_an_answer() {
        let h = SourceHealth::default();
        assert_eq!(h.stale_for(), Duration::MAX, "never succeeded");
        for w in h.watches() {
            w.ok();
        }
        assert_eq!(h.stale_for(), Duration::ZERO);
        // The watch breaks: stale from that moment, not from its last event.
        h.nodes.failed();
        h.nodes.failed();
        assert_eq!(h.nodes.errors(), 2);
        std::thread::sleep(Duration::from_millis(50));
        let stale = h.stale_for();
        assert!(stale >= Duration::from_millis(50) && stale < Duration::from_secs(5), "{stale:?}");
        assert!(h.nodes.last_success().is_some() && !h.nodes.connected());
        // Any successful answer about nodes (a resumed watch) ends it.
        h.for_path("/api/v1/nodes").unwrap().ok();
        assert_eq!(h.stale_for(), Duration::ZERO);
        // A request left unanswered (kube-client retrying 503s) is stale
        // from when it went out, though the watcher saw no error yet.
        h.services.request_started();
        std::thread::sleep(Duration::from_millis(20));
        h.services.request_started();
        assert!(h.services.connected() && !h.services.healthy());
        assert!(h.stale_for() >= Duration::from_millis(20), "from the first unanswered request");
        h.services.ok();
        assert_eq!(h.stale_for(), Duration::ZERO);
        assert!(std::ptr::eq(h.for_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap(), &h.endpoint_slices));
        assert!(h.for_path("/api/v1/pods").is_none());
    }
}
