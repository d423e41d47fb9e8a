//! `--source kube`: Services, EndpointSlices and Nodes from the API server.
//!
//! One kube-runtime `watcher(...).default_backoff().reflect(store)` per
//! resource, so reconnects, backoff and the relist after `410 Gone` are the
//! runtime's, not ours. A reflector store swaps in a relisted set only when
//! the list is complete (`InitDone`), so a snapshot is never half a list.
//! Every store change pokes one [`Notify`]; a builder task waits until
//! nothing has changed for [`DEBOUNCE`] (at most [`MAX_DELAY`] after the
//! first change), converts the three snapshots with [`Model::from_objects`]
//! (the file source's validation) and sends the model if it differs from the
//! last. Nothing is sent before all three resources were listed once: the
//! caller gets the receiver only then, so an agent never programs a partial
//! view nor deletes live services on start.
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
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use crate::control::model::Model;

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
];

/// [`KUBE_API_CALLS`] as (API group, resource, verb) triples, for comparing
/// with RBAC rules or with the calls an API server saw.
pub fn kube_api_call_set() -> std::collections::BTreeSet<(String, String, String)> {
    KUBE_API_CALLS
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect()
}

/// How long the stores must stay unchanged before a model is built.
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
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
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
    Client::try_from(config).map_err(KubeError::Client)
}

/// The state of one resource's watch, for metrics and health checks.
#[derive(Debug, Default)]
pub struct WatchHealth {
    connected: AtomicBool,
    synced: AtomicBool,
    last_event_ms: AtomicU64,
    lists: AtomicU64,
    errors: AtomicU64,
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

    fn event(&self) {
        self.connected.store(true, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_event_ms.store(ms, Ordering::Relaxed);
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
    /// Models sent, the first complete one included.
    pub fn models(&self) -> u64 {
        self.models.load(Ordering::Relaxed)
    }
    fn watches(&self) -> [&WatchHealth; 3] {
        [&self.services, &self.endpoint_slices, &self.nodes]
    }
}

/// The reflector stores the models are built from.
#[derive(Clone)]
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

impl Stores {
    fn model(&self) -> Model {
        let (services, slices, nodes) = (
            self.services.state(),
            self.slices.state(),
            self.nodes.state(),
        );
        Model::from_objects(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
            nodes.iter().map(|n| n.as_ref()),
        )
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
    let changed = Arc::new(Notify::new());
    let node_cfg = if node_name.is_empty() {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(&format!("metadata.name={node_name}"))
    };
    let stores = Stores {
        services: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &health,
            |h| &h.services,
            &changed,
        ),
        slices: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            &health,
            |h| &h.endpoint_slices,
            &changed,
        ),
        nodes: reflect(Api::all(client), node_cfg, &health, |h| &h.nodes, &changed),
    };
    tracing::info!("waiting for the first complete list of Services, EndpointSlices and Nodes");
    let ready = |what| move |_| KubeError::Stopped(what);
    stores
        .services
        .wait_until_ready()
        .await
        .map_err(ready("Service"))?;
    stores
        .slices
        .wait_until_ready()
        .await
        .map_err(ready("EndpointSlice"))?;
    stores
        .nodes
        .wait_until_ready()
        .await
        .map_err(ready("Node"))?;

    let first = stores.model();
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
    health.models.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(follow(stores, changed, tx, health));
    Ok(rx)
}

/// [`client`] then [`watch`]: what `lb-agent run --source kube` does.
pub async fn start(
    kubeconfig: Option<&Path>,
    node_name: &str,
    health: Arc<SourceHealth>,
) -> Result<watch::Receiver<Arc<Model>>, KubeError> {
    watch(client(kubeconfig).await?, node_name, health).await
}

/// Runs one resource's watcher into a new store, recording its health and
/// poking `changed` whenever the store's contents may have changed.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    health: &Arc<SourceHealth>,
    pick: fn(&SourceHealth) -> &WatchHealth,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&());
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg).default_backoff().reflect(writer);
    let (health, changed) = (health.clone(), changed.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(step) = stream.next().await {
            let h = pick(&health);
            match step {
                Ok(event) => {
                    h.event();
                    match event {
                        watcher::Event::Init => {
                            if h.lists.fetch_add(1, Ordering::Relaxed) > 0 {
                                tracing::info!(%kind, "relisting");
                            }
                        }
                        // Buffered by the store until InitDone: no change yet.
                        watcher::Event::InitApply(_) => {}
                        watcher::Event::InitDone => {
                            h.synced.store(true, Ordering::Relaxed);
                            tracing::debug!(%kind, "list complete");
                            changed.notify_one();
                        }
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                            changed.notify_one()
                        }
                    }
                }
                Err(e) => {
                    h.connected.store(false, Ordering::Relaxed);
                    h.errors.fetch_add(1, Ordering::Relaxed);
                    // The stream retries by itself after a backoff.
                    match status(&e) {
                        Some(s) if s.is_forbidden() => tracing::error!(
                            %kind, error = %e,
                            "forbidden: the agent's service account needs get, list and watch on services, endpointslices.discovery.k8s.io and nodes (a ClusterRole bound to it); retrying"
                        ),
                        // An expired resource version: routine, ends in a relist.
                        Some(s) if s.code == 410 => {
                            tracing::info!(%kind, "resource version expired (410 Gone)")
                        }
                        _ => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
                    }
                }
            }
        }
        // `watcher` streams never end; if one did, the model would freeze.
        tracing::error!(%kind, "watch stream ended; this resource is no longer followed");
    });
    store
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

/// Builds and sends a model after every debounced burst of changes, until
/// the receiver is gone.
async fn follow(
    stores: Stores,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Model>>,
    health: Arc<SourceHealth>,
) {
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = tx.closed() => return,
        }
        let start = Instant::now();
        while start.elapsed() < MAX_DELAY
            && tokio::time::timeout(DEBOUNCE, changed.notified())
                .await
                .is_ok()
        {}
        let model = stores.model();
        // A relist or a status-only update often changes nothing we use:
        // no model, no sync.
        let sent = tx.send_if_modified(|current| {
            if **current == model {
                return false;
            }
            *current = Arc::new(model);
            true
        });
        if sent {
            health.models.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                waited_ms = start.elapsed().as_millis() as u64,
                "objects changed"
            );
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
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        let services: Vec<Service> = docs[..2]
            .iter()
            .map(|d| serde_yaml::from_value(d.clone()).expect("service"))
            .collect();
        let slices: Vec<EndpointSlice> =
            vec![serde_yaml::from_value(docs[2].clone()).expect("slice")];
        let nodes: Vec<Node> = vec![serde_yaml::from_value(docs[3].clone()).expect("node")];
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
}
