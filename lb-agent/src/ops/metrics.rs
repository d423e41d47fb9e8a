//! Prometheus metrics in the text exposition format (version 0.0.4), written
//! by hand: a dozen families do not justify a metrics framework.
//!
//! Two kinds of figures: what the agent itself counts (syncs, their
//! durations, source events), kept in a [`Metrics`] handle the run loop
//! bumps; and what the dataplane counts, read from the pinned maps at each
//! scrape, so a scrape always shows the kernel's current numbers and the
//! agent keeps no copy of them.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use aya::maps::MapInfo;
use lb_common::{counter, maps, FlowKeyV4, FlowKeyV6, FlowV4, FlowV6, SockRevKeyV4, SockRevKeyV6, SockRevV4, SockRevV6};

use super::{inspect, names::Names};
use crate::{control::source::kube::SourceHealth, dataplane::Dataplane};

/// Buckets of sync durations: a sync is a plan, a map read and a few writes,
/// normally well under 100 ms.
const SYNC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of network programming latency: kube-proxy's start at 0.25 s
/// (iptables restores are slow); ours add the sub-second range a map write
/// lives in, and keep kube-proxy's long tail up to 5 minutes.
const PROGRAMMING_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What the agent counts about itself. Shared between the run loop and the
/// HTTP server (`Arc<Metrics>`).
#[derive(Debug)]
pub struct Metrics {
    pin_dir: PathBuf,
    syncs: AtomicU64,
    sync_errors: AtomicU64,
    writes: AtomicU64,
    reconcile_repairs: AtomicU64,
    sync_duration: Mutex<Histogram>,
    programming: Mutex<Histogram>,
    source_up: AtomicBool,
    source_events: AtomicU64,
    /// Unix time in ms of the last event from the source.
    last_event_ms: AtomicU64,
    attached: AtomicBool,
    synced_once: AtomicBool,
    names: Mutex<Arc<Names>>,
    /// The kube source's watches, and how long one may go without a
    /// successful list or watch before the agent reports not ready.
    source_health: Mutex<Option<(Arc<SourceHealth>, Duration)>>,
    /// Services left out of the maps at the last sync (they do not fit).
    rejected: AtomicU64,
    /// Families rendered elsewhere (LoadBalancer addresses, `lbip`), appended as is.
    extra: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain numbers behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            syncs: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            reconcile_repairs: AtomicU64::new(0),
            sync_duration: Mutex::new(Histogram::new(SYNC_BUCKETS)),
            programming: Mutex::new(Histogram::new(PROGRAMMING_BUCKETS)),
            source_up: AtomicBool::new(false),
            source_events: AtomicU64::new(0),
            last_event_ms: AtomicU64::new(0),
            attached: AtomicBool::new(false),
            synced_once: AtomicBool::new(false),
            names: Mutex::new(Arc::new(Names::new())),
            source_health: Mutex::new(None),
            rejected: AtomicU64::new(0),
            extra: Mutex::new(String::new()),
        }
    }

    /// Sets the text appended to the exposition (complete families, with
    /// HELP and TYPE lines), e.g. the LoadBalancer address metrics.
    pub fn set_extra(&self, text: String) {
        *lock(&self.extra) = text;
    }

    /// `n` services are left out of the maps because they do not fit.
    pub fn set_rejected(&self, n: usize) {
        self.rejected.store(n as u64, Ordering::Relaxed);
    }

    /// Reports `health` (watch errors, relists, last success) and makes the
    /// agent not ready while a watch has gone `stale_after` without success.
    pub fn set_source_health(&self, health: Arc<SourceHealth>, stale_after: Duration) {
        *lock(&self.source_health) = Some((health, stale_after));
    }

    /// How long the source has gone without a successful list or watch, when
    /// that is longer than allowed.
    pub fn source_stale(&self) -> Option<Duration> {
        let guard = lock(&self.source_health);
        let (h, after) = guard.as_ref()?;
        let stale = h.stale_for();
        (stale > *after).then_some(stale)
    }

    /// Why the agent is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.attached.load(Ordering::Relaxed) || !self.synced_once.load(Ordering::Relaxed) {
            return Some("programs not attached or first sync not applied".into());
        }
        let stale = self.source_stale()?;
        let after = lock(&self.source_health).as_ref().map_or(Duration::ZERO, |(_, a)| *a);
        Some(if stale == Duration::MAX {
            format!("the Kubernetes source has had no successful list or watch (allowed: {} s, --source-stale-after); the dataplane keeps forwarding with the last state", after.as_secs())
        } else {
            format!("the Kubernetes source has had no successful list or watch for {} s (allowed: {} s, --source-stale-after); the dataplane keeps forwarding with the last state", stale.as_secs(), after.as_secs())
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The source delivered a (new) model.
    pub fn source_event(&self) {
        self.source_up.store(true, Ordering::Relaxed);
        self.source_events.fetch_add(1, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_event_ms.store(ms, Ordering::Relaxed);
    }

    pub fn source_down(&self) {
        self.source_up.store(false, Ordering::Relaxed);
    }

    /// Every program is attached to every uplink.
    pub fn set_attached(&self) {
        self.attached.store(true, Ordering::Relaxed);
    }

    /// A sync that wrote `writes` entries; `since_change` is the time from
    /// the source's change to the end of the write (None for syncs that are
    /// retries, with no new change behind them).
    pub fn sync_ok(&self, took: Duration, writes: usize, since_change: Option<Duration>) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        lock(&self.sync_duration).observe(took.as_secs_f64());
        if let Some(d) = since_change {
            lock(&self.programming).observe(d.as_secs_f64());
        }
        self.synced_once.store(true, Ordering::Relaxed);
    }

    /// The names of the service ids now in the maps (labels of per-service figures).
    pub fn set_names(&self, names: Arc<Names>) {
        *lock(&self.names) = names;
    }

    /// The periodic reconcile rewrote `writes` entries that differed from the last sync.
    pub fn reconcile_repairs(&self, writes: usize) {
        self.reconcile_repairs.fetch_add(writes as u64, Ordering::Relaxed);
    }

    pub fn sync_failed(&self, took: Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.sync_duration).observe(took.as_secs_f64());
    }

    /// Programs attached, the first full sync applied, and the source not
    /// stale (see [`Metrics::set_source_health`]).
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// The whole exposition: the agent's own figures, then the dataplane's
    /// (skipped, with `xdplb_maps_readable 0`, when the maps cannot be read).
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        w.family(
            "xdplb_build_info",
            "gauge",
            "Build of the running agent (value 1).",
        );
        w.sample(
            "xdplb_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("layout_version", &lb_common::LAYOUT_VERSION.to_string()),
            ],
            1.0,
        );
        w.gauge(
            "xdplb_ready",
            "1 when the programs are attached, the first full sync is applied and the source is not stale (/readyz 200).",
            self.ready() as u8 as f64,
        );
        w.counter(
            "xdplb_sync_total",
            "Syncs (plan, diff, apply) run, including failed ones.",
            self.syncs.load(Ordering::Relaxed),
        );
        w.counter(
            "xdplb_sync_errors_total",
            "Syncs that failed part-way (retried a second later).",
            self.sync_errors.load(Ordering::Relaxed),
        );
        w.counter(
            "xdplb_sync_writes_total",
            "Map entries written or removed by syncs.",
            self.writes.load(Ordering::Relaxed),
        );
        w.gauge(
            "xdplb_services_rejected",
            "Services (per port) left out of the maps at the last sync because a map is too small for them; the log names each and the flag to raise.",
            self.rejected.load(Ordering::Relaxed) as f64,
        );
        w.counter(
            "xdplb_reconcile_repairs_total",
            "Map entries the periodic reconcile rewrote because they differed from what the agent had written (changed outside the agent).",
            self.reconcile_repairs.load(Ordering::Relaxed),
        );
        w.histogram(
            "xdplb_sync_duration_seconds",
            "Duration of one sync.",
            &lock(&self.sync_duration),
        );
        w.histogram(
            "kubeproxy_network_programming_duration_seconds",
            "Time from the source delivering a change of Services or EndpointSlices to its map writes being done (kube-proxy's metric, for the same dashboards).",
            &lock(&self.programming),
        );
        w.gauge(
            "xdplb_source_up",
            "1 while the object source delivers models.",
            self.source_up.load(Ordering::Relaxed) as u8 as f64,
        );
        w.counter(
            "xdplb_source_events_total",
            "Models delivered by the source.",
            self.source_events.load(Ordering::Relaxed),
        );
        w.gauge(
            "xdplb_source_last_event_timestamp_seconds",
            "Unix time of the last model from the source.",
            self.last_event_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        // Cloned out first: `source_stale` takes the lock again.
        let health = lock(&self.source_health).clone();
        if let Some((h, _)) = health {
            source_health(&mut w, &h, self.source_stale().is_some());
        }

        let names = lock(&self.names).clone();
        match Dataplane::open(&self.pin_dir) {
            Ok(dp) => {
                w.gauge(
                    "xdplb_maps_readable",
                    "1 when the pinned maps could be read for this scrape.",
                    1.0,
                );
                dataplane(&mut w, &dp, &self.pin_dir, &names);
            }
            Err(e) => {
                tracing::warn!(
                    error = crate::chain::chain(&e),
                    "metrics: the pinned maps are not readable"
                );
                w.gauge(
                    "xdplb_maps_readable",
                    "1 when the pinned maps could be read for this scrape.",
                    0.0,
                );
            }
        }
        w.out.push_str(&lock(&self.extra));
        w.out
    }
}

/// The dataplane's figures, read from the pinned maps now.
fn dataplane(w: &mut Writer, dp: &Dataplane, pin_dir: &Path, names: &Names) {
    if let Ok(values) = dp.counters() {
        w.family("xdplb_dataplane_packets_total", "counter", "Packets by outcome (pass_*, drop_*, nat_*) and events on top of them, summed over CPUs; reason=\"packets\" is every packet.");
        for (label, v) in counter::LABELS.iter().zip(values).filter(|(l, _)| !l.is_empty()) {
            w.sample(
                "xdplb_dataplane_packets_total",
                &[("reason", label)],
                v as f64,
            );
        }
    }
    if let Ok(stats) = inspect::stats(dp, names) {
        type Field = fn(&inspect::ServiceStatsRow) -> u64;
        let per_service: [(&str, &str, Field); 4] = [
            (
                "xdplb_service_packets_total",
                "Packets forwarded to a backend, per service id.",
                |r| r.packets,
            ),
            (
                "xdplb_service_bytes_total",
                "Bytes forwarded to a backend, per service id.",
                |r| r.bytes,
            ),
            (
                "xdplb_service_new_flows_total",
                "Flows created (conntrack inserts), per service id.",
                |r| r.new_flows,
            ),
            (
                "xdplb_service_drops_total",
                "Packets dropped because the service had no usable backend.",
                |r| r.drops_no_backend,
            ),
        ];
        for (name, help, get) in per_service {
            w.family(name, "counter", help);
            for r in &stats.services {
                let id = r.id.to_string();
                let n = names.get(&r.id).cloned().unwrap_or_default();
                let mut labels = vec![
                    ("service_id", id.as_str()),
                    ("namespace", n.namespace.as_str()),
                    ("name", n.name.as_str()),
                    ("port", n.port.as_str()),
                ];
                if name == "xdplb_service_drops_total" {
                    labels.push(("reason", "no_backend"));
                }
                w.sample(name, &labels, get(r) as f64);
            }
        }
    }
    if let Ok(rows) = inspect::backends(dp) {
        w.family(
            "xdplb_backend_flows",
            "gauge",
            "Live flows per backend, as the dataplane counts them (backend_load).",
        );
        for r in rows {
            w.sample(
                "xdplb_backend_flows",
                &[
                    ("backend_id", &r.id.to_string()),
                    ("backend", &r.addr.to_string()),
                    ("state", r.state),
                ],
                r.flows as f64,
            );
        }
    }
    if let Ok(rows) = dp.snat_exhausted() {
        w.family(
            "xdplb_snat_port_exhausted_total",
            "counter",
            "New flows to a backend on another node refused because no SNAT port towards that backend was free (raise --snat-ports).",
        );
        for (id, n) in rows {
            let addr = super::inspect::backend_addr(dp, id).map(|a| a.to_string()).unwrap_or_default();
            w.sample("xdplb_snat_port_exhausted_total", &[("backend_id", &id.to_string()), ("backend", &addr)], n as f64);
        }
    }
    // Counted in batches: a scrape of a million flows is a few hundred
    // syscalls, not a million.
    let flows_v4 = Dataplane::count(&dp.v4.conntrack, maps::CONNTRACK_V4).unwrap_or(0);
    let flows_v6 = dp.v6.as_ref().map_or(0, |v6| Dataplane::count(&v6.conntrack, maps::CONNTRACK_V6).unwrap_or(0));
    let flows = flows_v4 + flows_v6;
    w.gauge(
        "xdplb_conntrack_entries",
        "Conntrack entries (two per flow: forward and reply).",
        flows as f64,
    );
    // Entries of each map whose fill matters; arrays are always full.
    let counted = [
        (maps::SERVICES_V4, Dataplane::count(&dp.v4.services, maps::SERVICES_V4).unwrap_or(0)),
        (maps::BACKENDS_V4, dp.v4.backends().map_or(0, |b| b.len())),
        (maps::SERVICES_V6, dp.v6.as_ref().map_or(0, |v6| Dataplane::count(&v6.services, maps::SERVICES_V6).unwrap_or(0))),
        (maps::BACKENDS_V6, dp.v6.as_ref().map_or(0, |v6| v6.backends().map_or(0, |b| b.len()))),
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
    w.family("xdplb_map_entries", "gauge", "Entries in a pinned map.");
    for (m, n) in counted {
        w.sample("xdplb_map_entries", &[("map", m)], n as f64);
    }
    w.family(
        "xdplb_map_max_entries",
        "gauge",
        "Capacity of a pinned map.",
    );
    let max: Vec<(&str, Option<u32>)> = counted
        .iter()
        .map(|(m, _)| {
            (
                *m,
                MapInfo::from_pin(pin_dir.join(m))
                    .ok()
                    // backends_v4/_v6 are indexed by id from 1: slot 0 holds nothing.
                    .map(|i| i.max_entries() - u32::from(*m == maps::BACKENDS_V4 || *m == maps::BACKENDS_V6)),
            )
        })
        .collect();
    for (m, cap) in &max {
        if let Some(cap) = cap {
            w.sample("xdplb_map_max_entries", &[("map", m)], *cap as f64);
        }
    }
    w.family("xdplb_map_fill_ratio", "gauge", "entries / max_entries of a pinned map (a full LRU map evicts flows; a full hash refuses writes).");
    for ((m, n), (_, cap)) in counted.iter().zip(&max) {
        if let Some(cap) = cap.filter(|c| *c > 0) {
            w.sample(
                "xdplb_map_fill_ratio",
                &[("map", m)],
                *n as f64 / cap as f64,
            );
        }
    }
}

/// Writes families and samples in the text format.
#[derive(Default)]
struct Writer {
    out: String,
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out += name;
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.out, " {}", number(v));
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], v);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], v as f64);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, b) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i];
            self.sample(
                &format!("{name}_bucket"),
                &[("le", &number(*b))],
                cumulative as f64,
            );
        }
        self.sample(
            &format!("{name}_bucket"),
            &[("le", "+Inf")],
            h.count() as f64,
        );
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count() as f64);
    }
}

/// The kube source's watches, per resource.
fn source_health(w: &mut Writer, h: &SourceHealth, stale: bool) {
    let per = |w: &mut Writer, name: &str, kind: &str, help: &str, f: &dyn Fn(&crate::control::source::kube::WatchHealth) -> f64| {
        w.family(name, kind, help);
        for (resource, wh) in h.by_resource() {
            w.sample(name, &[("resource", resource)], f(wh));
        }
    };
    per(w, "xdplb_source_watch_errors_total", "counter", "Failed list/watch calls and error events of the Kubernetes source, per resource (each retried after a backoff).", &|h| h.errors() as f64);
    per(w, "xdplb_source_relists_total", "counter", "Relists of the Kubernetes source after the first list, per resource (410 Gone, or a watch that could not resume).", &|h| h.relists() as f64);
    per(w, "xdplb_source_connected", "gauge", "1 while the resource's watch is up (its last call succeeded, none is waiting for an answer).", &|h| h.healthy() as u8 as f64);
    per(w, "xdplb_source_last_success_timestamp_seconds", "gauge", "Unix time the resource's list/watch last succeeded (now while connected; 0 before the first).", &|h| {
        h.last_success().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
    });
    w.gauge("xdplb_source_stale", "1 when a watch has gone longer than --source-stale-after without success (the agent reports not ready; forwarding goes on).", stale as u8 as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_in_inf() {
        let mut w = Writer::default();
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        w.histogram("x_seconds", "help", &h);
        for want in [
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.1\"} 1\n",
            "x_seconds_bucket{le=\"1\"} 3\n",
            "x_seconds_bucket{le=\"+Inf\"} 4\n",
            "x_seconds_sum 4.25\n",
            "x_seconds_count 4\n",
        ] {
            assert!(w.out.contains(want), "missing {want:?} in\n{}", w.out);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut w = Writer::default();
        w.sample("m", &[("a", "q\"b\\n\nx")], 1.0);
        assert_eq!(w.out, "m{a=\"q\\\"b\\\\n\\nx\"} 1\n");
    }

    #[test]
    fn readiness_needs_attach_and_a_sync() {
        let m = Metrics::new(Path::new("/nonexistent/xdplb"));
        assert!(!m.ready());
        m.set_attached();
        assert!(!m.ready());
        m.sync_ok(Duration::from_millis(3), 4, Some(Duration::from_millis(5)));
        assert!(m.ready());
        let text = m.render();
        for want in [
            "xdplb_ready 1\n",
            "xdplb_sync_total 1\n",
            "xdplb_sync_writes_total 4\n",
            "kubeproxy_network_programming_duration_seconds_count 1\n",
            "xdplb_maps_readable 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn a_source_without_a_successful_watch_makes_the_agent_unready_and_shows_in_metrics() {
        let m = Metrics::new(Path::new("/nonexistent/xdplb"));
        m.set_attached();
        m.sync_ok(Duration::from_millis(3), 1, None);
        assert!(m.ready(), "the file source has no watch to go stale");
        m.set_source_health(Arc::new(SourceHealth::default()), Duration::from_secs(120));
        let why = m.not_ready_reason().expect("never listed: stale");
        assert!(why.contains("--source-stale-after") && why.contains("120 s"), "{why}");
        let text = m.render();
        for want in [
            "xdplb_ready 0\n",
            "xdplb_source_stale 1\n",
            "xdplb_source_watch_errors_total{resource=\"services\"} 0\n",
            "xdplb_source_relists_total{resource=\"endpointslices\"} 0\n",
            "xdplb_source_connected{resource=\"nodes\"} 0\n",
            "xdplb_source_last_success_timestamp_seconds{resource=\"nodes\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}

