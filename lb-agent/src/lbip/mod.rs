//! LoadBalancer addresses on bare metal (issue #13): pools of addresses
//! (`pool`), their allocation to Services (`alloc`, pure), the one agent
//! that allocates (`leader`, a coordination.k8s.io Lease; `controller`, the
//! Kubernetes side), which nodes are alive (`members`, UDP heartbeats), and
//! which node answers for each address (`announce`) with ARP (`arp`) or
//! Neighbour Discovery (`ndp`) through packet sockets (`link`), and what it
//! exports to Prometheus (`metrics`).
//!
//! [`start`] wires them into `lb-agent run`: pools from `--lb-pool` and the
//! `LoadBalancerPool` objects; with `--source kube` the election and the
//! allocator; with an announce interface, the heartbeats and the ARP and
//! NDP responders. Addresses are balanced by the dataplane like any other
//! `status.loadBalancer.ingress` (from the model); this module only hands
//! them out and makes one node answer for each.
pub mod alloc;
pub mod announce;
pub mod arp;
pub mod controller;
pub mod leader;
pub mod link;
pub mod members;
pub mod metrics;
pub mod ndp;
pub mod pool;
pub mod print;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{control::model::Model, ops::metrics::Metrics};
use pool::{Pool, Pools};

/// What `lb-agent run` asks of this module.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_name: String,
    /// From `--lb-pool`.
    pub pools: Vec<Pool>,
    pub alloc: alloc::Config,
    /// The election (None: this agent never allocates).
    pub election: Option<controller::Election>,
    /// The interface ARP and NDP are answered on (None: no announcement).
    pub announce_iface: Option<String>,
    pub heartbeat_port: u16,
    pub heartbeat: members::Timings,
}

/// What the module reports: for the metrics, the CLI and logs.
#[derive(Debug, Default)]
pub struct Status {
    leader: AtomicBool,
    holder: Mutex<String>,
    failovers: AtomicU64,
    arp_replies: Arc<AtomicU64>,
    ndp_replies: Arc<AtomicU64>,
    view: Mutex<View>,
}

/// A snapshot, as written to the status file (`lb-agent lb-addresses`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub node: String,
    pub leader: bool,
    pub lease_holder: String,
    pub pools: Vec<PoolRow>,
    pub addresses: Vec<AddressRow>,
    pub failovers: u64,
    pub arp_replies: u64,
    /// Neighbour Advertisements sent in answer to solicitations.
    #[serde(default)]
    pub ndp_replies: u64,
    pub live_nodes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRow {
    pub pool: String,
    pub family: String,
    pub allocated: u64,
    pub free: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRow {
    pub address: String,
    pub pool: String,
    pub services: Vec<String>,
    pub owner: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Status {
    fn set_leader(&self, leader: bool, holder: &str) {
        self.leader.store(leader, Ordering::Relaxed);
        *lock(&self.holder) = holder.to_string();
    }

    pub fn view(&self) -> View {
        let mut v = lock(&self.view).clone();
        v.leader = self.leader.load(Ordering::Relaxed);
        v.lease_holder = lock(&self.holder).clone();
        v.failovers = self.failovers.load(Ordering::Relaxed);
        v.arp_replies = self.arp_replies.load(Ordering::Relaxed);
        v.ndp_replies = self.ndp_replies.load(Ordering::Relaxed);
        v
    }
}

/// Where the status of the agent with maps at `pin_dir` is written.
pub fn status_path(pin_dir: &Path) -> PathBuf {
    let names = crate::ops::names::path(pin_dir);
    names.with_file_name(names.file_name().map_or_else(
        || "xdplb.lb.json".into(),
        |n| n.to_string_lossy().replace(".services.json", ".lb.json"),
    ))
}

/// Pool usage from the model's LoadBalancer IPs.
fn pool_rows(model: &Model, pools: &Pools) -> Vec<PoolRow> {
    let views: Vec<alloc::SvcView> = model
        .services
        .iter()
        .map(|(id, s)| alloc::SvcView {
            id: id.clone(),
            load_balancer: true,
            ingress: s.lb_ingress.clone(),
            ..Default::default()
        })
        .collect();
    alloc::usage(&views, pools)
        .into_iter()
        .map(|((pool, fam), (used, free))| PoolRow {
            pool,
            family: fam.as_str().into(),
            allocated: used.min(u64::MAX as u128) as u64,
            free: free.min(u64::MAX as u128) as u64,
        })
        .collect()
}

/// Why the LoadBalancer addresses could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--lb-pool: {0}")]
    Pool(pool::PoolError),
    #[error("opening packet sockets on {iface} (needs CAP_NET_RAW) for LoadBalancer addresses")]
    Sockets {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("duplicating a packet socket")]
    Dup(#[source] std::io::Error),
    #[error("starting the {proto} responder")]
    Responder {
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the heartbeat port {port} (--lb-heartbeat-port)")]
    Heartbeat {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Starts what `settings` asks for. Must run before the agent drops its
/// capabilities (the ARP socket needs CAP_NET_RAW to open). Returns None
/// when there is nothing to do (no pools and no API).
pub fn start(
    settings: Settings,
    client: Option<kube::Client>,
    models: watch::Receiver<Arc<Model>>,
    metrics: Arc<Metrics>,
    pin_dir: &Path,
) -> Result<Option<Arc<Status>>, StartError> {
    if settings.pools.is_empty() && client.is_none() {
        return Ok(None);
    }
    let (config_pools, errors) = Pools::build(&settings.pools, &[]);
    if let Some(e) = errors.into_iter().next() {
        return Err(StartError::Pool(e));
    }
    let status = Arc::new(Status::default());
    metrics.register(status.clone());
    let (pools_tx, pools_rx) = watch::channel(Arc::new(config_pools));
    let (peers_tx, peers_rx) = watch::channel(BTreeMap::new());
    if let Some(client) = &client {
        let (ready_tx, ready_rx) = watch::channel(false);
        controller::follow_pools(client.clone(), settings.pools.clone(), pools_tx, ready_tx);
        controller::follow_nodes(client.clone(), peers_tx);
        if let Some(election) = settings.election.clone() {
            tokio::spawn(controller::allocate(
                client.clone(),
                election,
                settings.alloc.clone(),
                pools_rx.clone(),
                ready_rx,
                status.clone(),
            ));
        }
    } else {
        // The file source lists every Node: the peers come from the model.
        let mut models = models.clone();
        tokio::spawn(async move {
            loop {
                let peers: BTreeMap<String, IpAddr> = models
                    .borrow_and_update()
                    .nodes
                    .iter()
                    .filter_map(|(n, node)| Some((n.clone(), *node.addresses.first()?)))
                    .collect();
                peers_tx.send_if_modified(|old| std::mem::replace(old, peers.clone()) != peers);
                if models.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let (link, members) = match &settings.announce_iface {
        Some(iface) => {
            let link = announce::Link::open(iface).map_err(|source| StartError::Sockets { iface: iface.clone(), source })?;
            let owned = announce::Owned::default();
            for (proto, sock, replies) in [
                (announce::Proto::Arp, &link.arp, &status.arp_replies),
                (announce::Proto::Ndp, &link.ndp, &status.ndp_replies),
            ] {
                let sock = sock.try_clone().map_err(StartError::Dup)?;
                let (owned, replies) = (owned.clone(), replies.clone());
                std::thread::Builder::new()
                    .name(format!("lbip-{}", proto.name().to_lowercase()))
                    .spawn(move || announce::respond(sock, proto, owned, replies))
                    .map_err(|source| StartError::Responder { proto: proto.name(), source })?;
            }
            let members = members::Members::start(
                &settings.node_name,
                settings.heartbeat_port,
                settings.heartbeat,
            )
            .map_err(|source| StartError::Heartbeat { port: settings.heartbeat_port, source })?;
            tracing::info!(%iface, heartbeat_port = settings.heartbeat_port, every_ms = settings.heartbeat.every.as_millis() as u64, dead_after_ms = settings.heartbeat.dead_after.as_millis() as u64, "LoadBalancer addresses are announced by ARP (IPv4) and NDP (IPv6) from this node when it owns them");
            (Some((link, owned)), Some(members))
        }
        None => (None, None),
    };
    tokio::spawn(announce_loop(
        settings.node_name.clone(),
        link,
        members,
        models,
        pools_rx,
        peers_rx,
        status.clone(),
        status_path(pin_dir),
    ));
    Ok(Some(status))
}

/// Every 100 ms: owners from the model, pools and live nodes; takeovers
/// announced; the status (read by the metrics) and the status file refreshed.
#[allow(
    clippy::too_many_arguments,
    reason = "the loop's inputs, each from a different source"
)]
async fn announce_loop(
    me: String,
    link: Option<(announce::Link, announce::Owned)>,
    members: Option<members::Members>,
    models: watch::Receiver<Arc<Model>>,
    pools: watch::Receiver<Arc<Pools>>,
    mut peers: watch::Receiver<BTreeMap<String, IpAddr>>,
    status: Arc<Status>,
    path: PathBuf,
) {
    let mut announcer = link.map(|(l, owned)| announce::Announcer::new(&me, Some(l), owned));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut regarp: Vec<(IpAddr, Instant)> = Vec::new();
    let mut written = None;
    loop {
        tick.tick().await;
        if peers.has_changed().unwrap_or(false) {
            if let Some(m) = &members {
                m.set_peers(peers.borrow_and_update().clone());
            }
        }
        let model = models.borrow().clone();
        let pools = pools.borrow().clone();
        let live = match &members {
            Some(m) => m.live(),
            None => vec![me.clone()],
        };
        let owners = announce::owners(&model, &pools, &live);
        if let (Some(a), Some(m)) = (&mut announcer, &members) {
            // Until it has heard its peers, a node would think itself alone.
            if m.settled() {
                let step = a.update(&owners);
                for (addr, previous) in &step.taken {
                    if previous.is_some() {
                        status.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(address = %addr, previous = previous.as_deref().unwrap_or("none"), live = ?live, "took over LoadBalancer address: answering ARP/NDP, announced (gratuitous ARP or unsolicited NA)");
                    regarp.push((*addr, Instant::now()));
                }
                for addr in &step.released {
                    tracing::info!(address = %addr, "LoadBalancer address handed to another node");
                }
                // A second announcement, in case the first was lost.
                regarp.retain(|(addr, at)| {
                    let due = at.elapsed() >= Duration::from_millis(500);
                    if due
                        && a.owned()
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(addr)
                    {
                        a.announce(*addr);
                    }
                    !due
                });
            }
        }
        let view = View {
            node: me.clone(),
            pools: pool_rows(&model, &pools),
            addresses: owners
                .values()
                .map(|a| AddressRow {
                    address: a.address.to_string(),
                    pool: a.pool.clone(),
                    services: a.services.clone(),
                    owner: a.owner.clone(),
                })
                .collect(),
            live_nodes: live,
            ..Default::default()
        };
        *lock(&status.view) = view;
        let full = status.view();
        if written.as_ref() != Some(&full) {
            if let Ok(json) = serde_json::to_vec_pretty(&full) {
                let tmp = path.with_extension("tmp");
                let ok = std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).is_ok()
                    && std::fs::write(&tmp, json).is_ok()
                    && std::fs::rename(&tmp, &path).is_ok();
                if ok {
                    written = Some(full);
                }
            }
        }
    }
}

/// Reads the status an agent wrote (for the CLI).
pub fn read_status(pin_dir: &Path) -> std::io::Result<View> {
    let text = std::fs::read(status_path(pin_dir))?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}
