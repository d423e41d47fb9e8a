//! The Kubernetes side of LoadBalancer addresses: follows the
//! `LoadBalancerPool` objects and every Node (for the heartbeat peers), and,
//! while this agent holds the allocator lease, allocates: Services from a
//! fresh watch (started on winning the lease, so a new leader never acts on
//! a stale cache) → [`alloc::allocate`] → status patches in the order given
//! (releases first, stopping at the first failure) → Events.
//!
//! Every status patch carries the resourceVersion read, so a Service changed
//! since is refused (409) and recomputed next round. The statuses written
//! are overlaid on the cache until its watch shows them, so a round that
//! follows quickly does not re-allocate from a stale view.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kube::{
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    runtime::{reflector, watcher, WatchStreamExt as _},
    Api, Client, ResourceExt as _,
};
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::{
    alloc::{self, Change, SvcView},
    leader::{Elector, Timings},
    pool::{self, Pool, PoolSpec, Pools},
    Status,
};
use crate::control::model::ObjectRef;

/// The custom resource, for kube's dynamic API.
pub fn pool_resource() -> ApiResource {
    ApiResource {
        group: pool::GROUP.into(),
        version: pool::VERSION.into(),
        api_version: format!("{}/{}", pool::GROUP, pool::VERSION),
        kind: pool::KIND.into(),
        plural: pool::PLURAL.into(),
    }
}

/// Follows a resource into a store, poking `changed` on every change; logs
/// errors (the watcher retries by itself) at most once per kind of error.
/// The task runs until aborted through the handle returned.
fn follow<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut last_error = String::new();
        while let Some(step) = stream.next().await {
            match step {
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => {
                    last_error.clear();
                    changed.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    let text = e.to_string();
                    if text != last_error {
                        tracing::warn!(what, error = %text, "watch failed; retrying (for pools: is the LoadBalancerPool CRD installed? deploy/crds)");
                        last_error = text;
                    }
                }
            }
        }
    })
}

/// Follows the pools: `config` and the `LoadBalancerPool` objects, merged
/// and validated, into `tx` (each invalid pool logged once and left out).
/// `ready` turns true once the objects have been listed (or the CRD is
/// found absent): until then `tx` holds the configured pools only, and an
/// allocator acting on them would release every address of the others.
pub fn follow_pools(
    client: Client,
    config: Vec<Pool>,
    tx: watch::Sender<Arc<Pools>>,
    ready: watch::Sender<bool>,
) {
    let ar = pool_resource();
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let store = writer.as_reader();
    let changed = Arc::new(Notify::new());
    let api = Api::<DynamicObject>::all_with(client, &ar);
    tokio::spawn(async move {
        // One probe: without the CRD, the configured pools are all there is.
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!("the LoadBalancerPool CRD is not installed (deploy/kustomize/base/crd.yaml): only --lb-pool pools are used; restart the agents after installing it");
                ready.send_replace(true);
                return;
            }
            _ => {}
        }
        // Runs for the agent's life: the handle is not needed.
        drop(follow(api, writer, changed.clone(), "LoadBalancerPool"));
        if store.wait_until_ready().await.is_err() {
            return;
        }
        let mut reported = BTreeSet::new();
        loop {
            let mut objects = Vec::new();
            let mut errors = Vec::new();
            let mut state = store.state();
            // Oldest first: a new pool overlapping an existing one is refused, not the existing one.
            state.sort_by_key(|o| {
                (
                    o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    o.name_any(),
                )
            });
            for o in state {
                let name = o.name_any();
                match serde_json::from_value::<PoolSpec>(
                    o.data.get("spec").cloned().unwrap_or_default(),
                ) {
                    Ok(spec) => objects.push((name, spec)),
                    Err(e) => errors.push(format!("LoadBalancerPool {name:?}: invalid spec: {e}")),
                }
            }
            let (pools, errs) = Pools::build(&config, &objects);
            errors.extend(errs.into_iter().map(|e| e.to_string()));
            let now: BTreeSet<String> = errors.into_iter().collect();
            for e in now.difference(&reported) {
                tracing::error!(error = %e, "address pool refused; the other pools are used");
            }
            reported = now;
            tx.send_if_modified(|old| {
                let changed = **old != pools;
                if changed {
                    tracing::info!(pools = ?pools.pools.keys().collect::<Vec<_>>(), "address pools");
                    *old = Arc::new(pools);
                }
                changed
            });
            ready.send_replace(true);
            changed.notified().await;
        }
    });
}

/// Follows every Node's first InternalIP (else ExternalIP) into `tx`.
pub fn follow_nodes(client: Client, tx: watch::Sender<BTreeMap<String, IpAddr>>) {
    let (store, writer) = reflector::store::<Node>();
    let changed = Arc::new(Notify::new());
    drop(follow(
        Api::<Node>::all(client),
        writer,
        changed.clone(),
        "Node",
    ));
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            let peers: BTreeMap<String, IpAddr> = store
                .state()
                .iter()
                .filter_map(|n| Some((n.name_any(), node_address(n)?)))
                .collect();
            tx.send_if_modified(|old| std::mem::replace(old, peers.clone()) != peers);
        }
    });
}

fn node_address(n: &Node) -> Option<IpAddr> {
    let addrs = n.status.as_ref()?.addresses.as_ref()?;
    ["InternalIP", "ExternalIP"].iter().find_map(|t| {
        addrs
            .iter()
            .filter(|a| a.type_ == *t)
            .find_map(|a| a.address.parse().ok())
    })
}

/// The name of the allocator's Lease.
pub const LEASE_NAME: &str = "xdplb-lb-allocator";

/// Where the allocator's lease lives, and who this agent is.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub timings: Timings,
}

/// Runs the election forever; allocates while leader.
pub async fn allocate(
    client: Client,
    election: Election,
    cfg: alloc::Config,
    mut pools: watch::Receiver<Arc<Pools>>,
    mut pools_ready: watch::Receiver<bool>,
    status: Arc<Status>,
) {
    // Never allocate from a partial view of the pools.
    if pools_ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut elector = Elector::new(
        client.clone(),
        &election.namespace,
        &election.name,
        &election.identity,
        election.timings,
    );
    let retry = elector.timings().retry;
    let changed = Arc::new(Notify::new());
    // The Services' store and its watch, while leader.
    let mut services: Option<(reflector::Store<Service>, tokio::task::JoinHandle<()>)> = None;
    let mut overlay: BTreeMap<ObjectRef, (String, Service)> = BTreeMap::new();
    let mut last_step: Option<Instant> = None;
    let mut was_leader = false;
    loop {
        if last_step.is_none_or(|t| t.elapsed() >= retry) {
            last_step = Some(Instant::now());
            if let Err(e) = elector.step().await {
                tracing::warn!(error = %e, "allocator lease: API call failed; retrying");
            }
        }
        let leader = elector.is_leader();
        status.set_leader(leader, elector.holder());
        if leader != was_leader {
            tracing::info!(
                leader,
                holder = elector.holder(),
                "allocator lease {}",
                if leader {
                    "won: this agent allocates LoadBalancer addresses"
                } else {
                    "not held"
                }
            );
            was_leader = leader;
        }
        match (leader, &services) {
            (true, None) => {
                // A fresh list: what the previous leader wrote is in it.
                let (store, writer) = reflector::store::<Service>();
                let task = follow(
                    Api::<Service>::all(client.clone()),
                    writer,
                    changed.clone(),
                    "Service (allocator)",
                );
                let ready =
                    tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready()).await;
                if matches!(ready, Ok(Ok(()))) {
                    services = Some((store, task));
                    overlay.clear();
                } else {
                    task.abort();
                }
            }
            // A lost lease: stop acting, and stop watching (a next win relists).
            (false, Some(_)) => {
                if let Some((_, task)) = services.take() {
                    task.abort();
                }
            }
            _ => {}
        }
        if let (true, Some((store, _))) = (leader, &services) {
            let pools = pools.borrow_and_update().clone();
            round(
                &client,
                store,
                &pools,
                &cfg,
                &mut overlay,
                &election.identity,
            )
            .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = changed.notified() => {}
            _ = pools.changed() => {}
        }
    }
}

/// One allocation round from the cache (with our own writes overlaid).
async fn round(
    client: &Client,
    store: &reflector::Store<Service>,
    pools: &Pools,
    cfg: &alloc::Config,
    overlay: &mut BTreeMap<ObjectRef, (String, Service)>,
    me: &str,
) {
    let mut current: BTreeMap<ObjectRef, Service> = BTreeMap::new();
    for s in store.state() {
        let id = ObjectRef::new(
            s.metadata.namespace.as_deref().unwrap_or_default(),
            &s.name_any(),
        );
        let rv = s.metadata.resource_version.clone().unwrap_or_default();
        let svc = match overlay.get(&id) {
            Some((before, written)) if *before == rv => written.clone(),
            _ => {
                overlay.remove(&id);
                Service::clone(&s)
            }
        };
        current.insert(id, svc);
    }
    overlay.retain(|id, _| current.contains_key(id));
    let views: Vec<SvcView> = current.values().map(SvcView::of).collect();
    let changes = alloc::allocate(&views, pools, cfg);
    let last: BTreeMap<&ObjectRef, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.service, i))
        .collect();
    for (i, c) in changes.iter().enumerate() {
        let Some(svc) = current.get(&c.service).cloned() else {
            continue;
        };
        let before = svc.metadata.resource_version.clone().unwrap_or_default();
        let api: Api<Service> = Api::namespaced(client.clone(), &c.service.namespace);
        match api
            .patch_status(
                &c.service.name,
                &PatchParams::default(),
                &Patch::Merge(patch(&svc, c)),
            )
            .await
        {
            Ok(written) => {
                tracing::info!(service = %c.service, ingress = ?c.ingress, problem = ?c.problem.as_ref().map(|p| p.reason), "LoadBalancer status written");
                overlay.insert(c.service.clone(), (before, written.clone()));
                current.insert(c.service.clone(), written);
                if last.get(&c.service) == Some(&i) {
                    event(client, &svc, c, me).await;
                }
            }
            Err(e) => {
                // Later changes may rely on this one's release: stop here.
                tracing::warn!(service = %c.service, error = %e, "writing a LoadBalancer status failed; the round stops and is recomputed");
                return;
            }
        }
    }
}

/// The merge patch of `c` on `svc`: the ingress list, our condition among
/// the others, and the resourceVersion read as a precondition.
fn patch(svc: &Service, c: &Change) -> serde_json::Value {
    let ingress: Vec<_> = c
        .ingress
        .iter()
        .map(|a| json!({"ip": a.to_string(), "ipMode": "VIP"}))
        .collect();
    let old = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions: Vec<serde_json::Value> = old
        .iter()
        .filter(|x| x.type_ != alloc::CONDITION)
        .map(|x| serde_json::to_value(x).unwrap_or_default())
        .collect();
    if c.served {
        let (state, reason, message) = match &c.problem {
            Some(p) => ("False", p.reason, p.message.clone()),
            None => (
                "True",
                "Allocated",
                format!(
                    "addresses {}",
                    c.ingress
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        };
        let prev = old.iter().find(|x| x.type_ == alloc::CONDITION);
        let since = match prev {
            Some(p) if p.status == state => {
                serde_json::to_value(&p.last_transition_time).unwrap_or_default()
            }
            _ => json!(k8s_openapi::jiff::Timestamp::now().to_string()),
        };
        conditions.push(json!({"type": alloc::CONDITION, "status": state, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": svc.metadata.generation.unwrap_or(0)}));
    }
    json!({
        "metadata": {"resourceVersion": svc.metadata.resource_version},
        "status": {"loadBalancer": {"ingress": ingress}, "conditions": conditions},
    })
}

/// An Event on the Service for a change: Warning with the problem, Normal
/// for an allocation or release.
async fn event(client: &Client, svc: &Service, c: &Change, me: &str) {
    let (kind, reason, message) = match (&c.problem, c.served) {
        (Some(p), _) => ("Warning", p.reason.to_string(), p.message.clone()),
        (None, true) => (
            "Normal",
            "AddressAllocated".to_string(),
            format!(
                "LoadBalancer addresses: {}",
                c.ingress
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (None, false) => (
            "Normal",
            "AddressReleased".to_string(),
            "not a LoadBalancer Service any more: its pool addresses are released".to_string(),
        ),
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", c.service.name), "namespace": c.service.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Service", "name": c.service.name, "namespace": c.service.namespace,
                           "uid": svc.metadata.uid, "resourceVersion": svc.metadata.resource_version},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "xdplb-allocator", "host": me},
        "reportingComponent": "xdplb.io/allocator", "reportingInstance": me,
    });
    let Ok(ev) = serde_json::from_value::<Event>(ev) else {
        return;
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &c.service.namespace);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(service = %c.service, error = %e, "creating an Event failed");
    }
}
