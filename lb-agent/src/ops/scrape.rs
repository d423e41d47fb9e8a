//! The dataplane's figures, read from the pinned maps at each scrape (a
//! prometheus-client collector): a scrape always shows the kernel's current
//! numbers and the agent keeps no copy of them.
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::maps::MapInfo;
use lb_common::{counter, maps, FlowKeyV4, FlowKeyV6, FlowV4, FlowV6, SockRevKeyV4, SockRevKeyV6, SockRevV4, SockRevV6};
use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    families::{family, one},
    inspect,
    names::Names,
};
use crate::dataplane::Dataplane;

/// Reads the maps pinned in `pin_dir`; labels per-service figures with the
/// names of the ids last synced.
#[derive(Debug)]
pub struct DataplaneCollector {
    pin_dir: PathBuf,
    names: Mutex<Arc<Names>>,
}

impl DataplaneCollector {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            names: Mutex::new(Arc::new(Names::new())),
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The names of the service ids now in the maps.
    pub fn set_names(&self, names: Arc<Names>) {
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }
}

const READABLE_HELP: &str = "1 when the pinned maps could be read for this scrape.";

impl Collector for DataplaneCollector {
    /// `xdplb_maps_readable`, then (when it is 1) every dataplane family.
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        match Dataplane::open(&self.pin_dir) {
            Ok(dp) => {
                one(&mut enc, "xdplb_maps_readable", READABLE_HELP, ConstGauge::new(1))?;
                let names = self.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
                dataplane(&mut enc, &dp, &self.pin_dir, &names)
            }
            Err(e) => {
                tracing::warn!(error = crate::chain::chain(&e), "metrics: the pinned maps are not readable");
                one(&mut enc, "xdplb_maps_readable", READABLE_HELP, ConstGauge::new(0))
            }
        }
    }
}

/// How many of `rows` (both families' backends) are IPv4's or IPv6's.
fn backends_of(rows: &Option<Vec<inspect::BackendRow>>, ipv4: bool) -> usize {
    rows.as_ref().map_or(0, |rows| rows.iter().filter(|r| r.addr.is_ipv4() == ipv4).count())
}

/// The families read from `dp` now; one whose map read fails is left out.
fn dataplane(enc: &mut DescriptorEncoder, dp: &Dataplane, pin_dir: &Path, names: &Names) -> fmt::Result {
    if let Ok(values) = dp.counters() {
        family(
            enc,
            "xdplb_dataplane_packets_total",
            "Packets by outcome (pass_*, drop_*, nat_*) and events on top of them, summed over CPUs; reason=\"packets\" is every packet.",
            counter::LABELS.iter().zip(values).filter(|(l, _)| !l.is_empty()).map(|(l, v)| ([("reason", *l)], ConstCounter::new(v))),
        )?;
    }
    if let Ok(stats) = inspect::stats(dp, names) {
        type Field = fn(&inspect::ServiceStatsRow) -> u64;
        let per_service: [(&str, &str, Field); 4] = [
            ("xdplb_service_packets_total", "Packets forwarded to a backend, per service id.", |r| r.packets),
            ("xdplb_service_bytes_total", "Bytes forwarded to a backend, per service id.", |r| r.bytes),
            ("xdplb_service_new_flows_total", "Flows created (conntrack inserts), per service id.", |r| r.new_flows),
            ("xdplb_service_drops_total", "Packets dropped because the service had no usable backend.", |r| r.drops_no_backend),
        ];
        for (name, help, get) in per_service {
            let samples = stats.services.iter().map(|r| {
                let n = names.get(&r.id).cloned().unwrap_or_default();
                let mut labels = vec![("service_id", r.id.to_string()), ("namespace", n.namespace), ("name", n.name), ("port", n.port)];
                if name == "xdplb_service_drops_total" {
                    labels.push(("reason", "no_backend".into()));
                }
                (labels, ConstCounter::new(get(r)))
            });
            family(enc, name, help, samples)?;
        }
    }
    // Read once: the rows also give the backend maps' fill below.
    let backends = inspect::backends(dp).ok();
    if let Some(rows) = &backends {
        family(
            enc,
            "xdplb_backend_flows",
            "Live flows per backend, as the dataplane counts them (backend_load).",
            rows.iter().map(|r| ([("backend_id", r.id.to_string()), ("backend", r.addr.to_string()), ("state", r.state.to_string())], ConstGauge::new(r.flows))),
        )?;
    }
    if let Ok(rows) = dp.snat_exhausted() {
        family(
            enc,
            "xdplb_snat_port_exhausted_total",
            "New flows to a backend on another node refused because no SNAT port towards that backend was free (raise --snat-ports).",
            rows.into_iter().map(|(id, n)| {
                let addr = inspect::backend_addr(dp, id).map(|a| a.to_string()).unwrap_or_default();
                ([("backend_id", id.to_string()), ("backend", addr)], ConstCounter::new(n))
            }),
        )?;
    }
    // Counted in batches: a scrape of a million flows is a few hundred
    // syscalls, not a million.
    let flows_v4 = Dataplane::count(&dp.v4.conntrack, maps::CONNTRACK_V4).unwrap_or(0);
    let flows_v6 = dp.v6.as_ref().map_or(0, |v6| Dataplane::count(&v6.conntrack, maps::CONNTRACK_V6).unwrap_or(0));
    one(
        enc,
        "xdplb_conntrack_entries",
        "Conntrack entries (two per flow: forward and reply).",
        ConstGauge::new((flows_v4 + flows_v6) as u64),
    )?;
    // Entries of each map whose fill matters; arrays are always full.
    let counted = [
        (maps::SERVICES_V4, Dataplane::count(&dp.v4.services, maps::SERVICES_V4).unwrap_or(0)),
        (maps::BACKENDS_V4, backends_of(&backends, true)),
        (maps::SERVICES_V6, dp.v6.as_ref().map_or(0, |v6| Dataplane::count(&v6.services, maps::SERVICES_V6).unwrap_or(0))),
        (maps::BACKENDS_V6, backends_of(&backends, false)),
        (maps::SERVICE_SLOTS, Dataplane::count(&dp.slots, maps::SERVICE_SLOTS).unwrap_or(0)),
        (maps::CONNTRACK_V4, flows_v4),
        (maps::CONNTRACK_V6, flows_v6),
        (maps::CONNTRACK_CONFIRMED_V4, entries_at::<FlowKeyV4, FlowV4>(&pin_dir.join(maps::CONNTRACK_CONFIRMED_V4))),
        (maps::CONNTRACK_CONFIRMED_V6, entries_at::<FlowKeyV6, FlowV6>(&pin_dir.join(maps::CONNTRACK_CONFIRMED_V6))),
        (maps::AFFINITY_V4, Dataplane::count(&dp.v4.affinity, maps::AFFINITY_V4).unwrap_or(0)),
        (maps::AFFINITY_V6, dp.v6.as_ref().map_or(0, |v6| Dataplane::count(&v6.affinity, maps::AFFINITY_V6).unwrap_or(0))),
        (maps::SOCK_REVNAT_V4, entries_at::<SockRevKeyV4, SockRevV4>(&pin_dir.join(maps::SOCK_REVNAT_V4))),
        (maps::SOCK_REVNAT_V6, entries_at::<SockRevKeyV6, SockRevV6>(&pin_dir.join(maps::SOCK_REVNAT_V6))),
    ];
    // Capacities; None where the map cannot be opened.
    let max = counted.map(|(m, _)| {
        MapInfo::from_pin(pin_dir.join(m))
            .ok()
            // backends_v4/_v6 are indexed by id from 1: slot 0 holds nothing.
            .map(|i| i.max_entries() - u32::from(m == maps::BACKENDS_V4 || m == maps::BACKENDS_V6))
    });
    family(
        enc,
        "xdplb_map_entries",
        "Entries in a pinned map.",
        counted.iter().map(|(m, n)| ([("map", *m)], ConstGauge::new(*n as u64))),
    )?;
    family(
        enc,
        "xdplb_map_max_entries",
        "Capacity of a pinned map.",
        counted.iter().zip(max).filter_map(|((m, _), cap)| Some(([("map", *m)], ConstGauge::new(cap?)))),
    )?;
    family(
        enc,
        "xdplb_map_fill_ratio",
        "entries / max_entries of a pinned map (a full LRU map evicts flows; a full hash refuses writes).",
        counted
            .iter()
            .zip(max)
            .filter_map(|((m, n), cap)| Some(([("map", *m)], ConstGauge::new(*n as f64 / f64::from(cap.filter(|c| *c > 0)?))))),
    )
}

/// Entries of the pinned hash (or LRU hash) map at `path` with keys `K`
/// and values `V`, counted in batches (0 if it cannot be opened, e.g.
/// pinned by an older agent without it). `sock_revnat_v4`/`_v6` (the socket
/// balancer's reverse NAT) and `conntrack_confirmed_v4`/`_v6` are opened here:
/// only the metrics read them.
fn entries_at<K: bytemuck::Pod, V: bytemuck::Pod>(path: &Path) -> usize {
    use std::os::fd::AsFd as _;
    let Ok(data) = aya::maps::MapData::from_pin(path) else { return 0 };
    crate::bpfsys::count::<K, V>(data.fd().as_fd()).unwrap_or(0)
}
