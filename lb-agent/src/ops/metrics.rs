//! The agent's Prometheus metrics, kept in a prometheus-client registry and
//! served in the text format (0.0.4).
//!
//! Two kinds of figures: what the agent itself counts (syncs, their
//! durations, source events), registered metrics the run loop bumps through
//! a [`Metrics`] handle; and what is read at each scrape, through
//! collectors: readiness and the source's watches ([`Readiness`]), the
//! dataplane's counters and map fill ([`DataplaneCollector`]), and those
//! other parts of the agent register (LoadBalancer addresses).
use std::{
    path::Path,
    sync::{atomic::AtomicU64, Arc, RwLock},
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

use super::{
    families::{register, text},
    names::Names,
    readiness::Readiness,
    scrape::DataplaneCollector,
};
use crate::control::source::kube::SourceHealth;

/// Buckets of sync durations: a sync is a plan, a map read and a few writes,
/// normally well under 100 ms.
const SYNC_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of network programming latency: kube-proxy's start at 0.25 s
/// (iptables restores are slow); ours add the sub-second range a map write
/// lives in, and keep kube-proxy's long tail up to 5 minutes.
const PROGRAMMING_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Shared between the run loop and the HTTP server (`Arc<Metrics>`).
#[derive(Debug)]
pub struct Metrics {
    /// Written only to register collectors; read by every scrape.
    registry: RwLock<Registry>,
    readiness: Arc<Readiness>,
    dataplane: Arc<DataplaneCollector>,
    syncs: Counter,
    sync_errors: Counter,
    writes: Counter,
    reconcile_repairs: Counter,
    sync_duration: Histogram,
    programming: Histogram,
    /// Services left out of the maps at the last sync (they do not fit).
    rejected: Gauge,
    source_up: Gauge,
    source_events: Counter,
    last_event: Gauge<f64, AtomicU64>,
    /// 1 while routing changes are followed (the next-hop cache on).
    next_hop_cache: Gauge,
    routing_lost: Counter,
    next_hop_bumps: Counter,
}

impl Metrics {
    pub fn new(pin_dir: &Path) -> Self {
        let mut m = Self {
            registry: RwLock::new(Registry::default()),
            readiness: Arc::new(Readiness::default()),
            dataplane: Arc::new(DataplaneCollector::new(pin_dir)),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            writes: Counter::default(),
            reconcile_repairs: Counter::default(),
            sync_duration: Histogram::new(SYNC_BUCKETS),
            programming: Histogram::new(PROGRAMMING_BUCKETS),
            rejected: Gauge::default(),
            source_up: Gauge::default(),
            source_events: Counter::default(),
            last_event: Gauge::default(),
            next_hop_cache: Gauge::default(),
            routing_lost: Counter::default(),
            next_hop_bumps: Counter::default(),
        };
        // Fields borrowed apart: the registry mutably, the handles to clone.
        let r = m.registry.get_mut().unwrap_or_else(|e| e.into_inner());
        register(
            r,
            "xdplb_build_info",
            "Build of the running agent (value 1).",
            Info::new([("version", env!("CARGO_PKG_VERSION").to_string()), ("layout_version", lb_common::LAYOUT_VERSION.to_string())]),
        );
        register(r, "xdplb_sync_total", "Syncs (plan, diff, apply) run, including failed ones.", m.syncs.clone());
        register(r, "xdplb_sync_errors_total", "Syncs that failed part-way (retried a second later).", m.sync_errors.clone());
        register(r, "xdplb_sync_writes_total", "Map entries written or removed by syncs.", m.writes.clone());
        register(
            r,
            "xdplb_services_rejected",
            "Services (per port) left out of the maps at the last sync because a map is too small for them; the log names each and the flag to raise.",
            m.rejected.clone(),
        );
        register(
            r,
            "xdplb_reconcile_repairs_total",
            "Map entries the periodic reconcile rewrote because they differed from what the agent had written (changed outside the agent).",
            m.reconcile_repairs.clone(),
        );
        register(r, "xdplb_sync_duration_seconds", "Duration of one sync.", m.sync_duration.clone());
        register(
            r,
            "kubeproxy_network_programming_duration_seconds",
            "Time from the source delivering a change of Services or EndpointSlices to its map writes being done (kube-proxy's metric, for the same dashboards).",
            m.programming.clone(),
        );
        register(r, "xdplb_source_up", "1 while the object source delivers models.", m.source_up.clone());
        register(r, "xdplb_source_events_total", "Models delivered by the source.", m.source_events.clone());
        register(r, "xdplb_source_last_event_timestamp_seconds", "Unix time of the last model from the source.", m.last_event.clone());
        register(
            r,
            "xdplb_next_hop_cache_enabled",
            "1 while the agent follows routing changes and XDP's next-hop cache is on; 0 while its netlink subscription is lost (or not made yet): XDP then asks the FIB for every packet it forwards.",
            m.next_hop_cache.clone(),
        );
        register(
            r,
            "xdplb_routing_events_lost_total",
            "Times the netlink routing subscription was lost (a read error; an overrun, ENOBUFS, loses events) or could not be made at start: the next-hop cache went off until subscribed again.",
            m.routing_lost.clone(),
        );
        register(
            r,
            "xdplb_next_hop_invalidations_total",
            "Times the agent made every cached next hop stale after a route, link, address, rule, nexthop or neighbour change (a neighbour's only when its link-layer address or usability changed), or after resubscribing.",
            m.next_hop_bumps.clone(),
        );
        r.register_collector(Box::new(m.readiness.clone()));
        r.register_collector(Box::new(m.dataplane.clone()));
        m
    }

    /// Adds `collector`'s families to every scrape, after the agent's own.
    pub fn register(&self, collector: impl Collector) {
        self.registry.write().unwrap_or_else(|e| e.into_inner()).register_collector(Box::new(collector));
    }

    /// `n` services are left out of the maps because they do not fit.
    pub fn set_rejected(&self, n: usize) {
        self.rejected.set(n as i64);
    }

    /// Reports `health` (watch errors, relists, last success) and makes the
    /// agent not ready while a watch has gone `stale_after` without success.
    pub fn set_source_health(&self, health: Arc<SourceHealth>, stale_after: Duration) {
        self.readiness.set_source_health(health, stale_after);
    }

    /// Why the agent is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.readiness.not_ready_reason()
    }

    pub fn pin_dir(&self) -> &Path {
        self.dataplane.pin_dir()
    }

    /// The source delivered a (new) model.
    pub fn source_event(&self) {
        self.source_up.set(1);
        self.source_events.inc();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.last_event.set(now.as_millis() as f64 / 1000.0);
    }

    pub fn source_down(&self) {
        self.source_up.set(0);
    }

    /// Every program is attached to every uplink.
    pub fn set_attached(&self) {
        self.readiness.set_attached();
    }

    /// A sync that wrote `writes` entries; `since_change` is the time from
    /// the source's change to the end of the write (None for syncs that are
    /// retries, with no new change behind them).
    pub fn sync_ok(&self, took: Duration, writes: usize, since_change: Option<Duration>) {
        self.syncs.inc();
        self.writes.inc_by(writes as u64);
        self.sync_duration.observe(took.as_secs_f64());
        if let Some(d) = since_change {
            self.programming.observe(d.as_secs_f64());
        }
        self.readiness.set_synced();
    }

    /// The names of the service ids now in the maps (labels of per-service figures).
    pub fn set_names(&self, names: Arc<Names>) {
        self.dataplane.set_names(names);
    }

    /// What the routing subscription reported (`hopwatch`).
    pub fn next_hop_change(&self, change: crate::hopwatch::HopChange) {
        use crate::hopwatch::HopChange;
        match change {
            HopChange::Stale => {
                self.next_hop_bumps.inc();
            }
            HopChange::Subscribed => {
                self.next_hop_bumps.inc();
                self.next_hop_cache.set(1);
            }
            HopChange::Lost => {
                self.routing_lost.inc();
                self.next_hop_cache.set(0);
            }
            HopChange::Unchanged => {}
        }
    }

    /// The periodic reconcile rewrote `writes` entries that differed from the last sync.
    pub fn reconcile_repairs(&self, writes: usize) {
        self.reconcile_repairs.inc_by(writes as u64);
    }

    pub fn sync_failed(&self, took: Duration) {
        self.syncs.inc();
        self.sync_errors.inc();
        self.sync_duration.observe(took.as_secs_f64());
    }

    /// Programs attached, the first full sync applied, and the source not stale.
    pub fn ready(&self) -> bool {
        self.readiness.ready()
    }

    /// The whole exposition: the agent's own figures, then readiness, the
    /// dataplane's (only `xdplb_maps_readable 0` when the maps cannot be
    /// read) and those of registered collectors.
    pub fn render(&self) -> String {
        text(&self.registry.read().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_shows_syncs_readiness_and_unreadable_maps() {
        let m = Metrics::new(Path::new("/nonexistent/xdplb"));
        m.set_attached();
        m.sync_ok(Duration::from_millis(3), 4, Some(Duration::from_millis(5)));
        m.sync_failed(Duration::from_millis(2));
        m.source_event();
        assert!(m.ready());
        let text = m.render();
        for want in [
            "# TYPE xdplb_build_info gauge\n",
            &format!("xdplb_build_info{{version=\"{}\",layout_version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"), lb_common::LAYOUT_VERSION),
            "xdplb_ready 1\n",
            "# HELP xdplb_sync_total Syncs (plan, diff, apply) run, including failed ones.\n",
            "# TYPE xdplb_sync_total counter\n",
            "xdplb_sync_total 2\n",
            "xdplb_sync_errors_total 1\n",
            "xdplb_sync_writes_total 4\n",
            "xdplb_services_rejected 0\n",
            "xdplb_sync_duration_seconds_bucket{le=\"0.0025\"} 1\n",
            "xdplb_sync_duration_seconds_bucket{le=\"0.005\"} 2\n",
            "xdplb_sync_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "xdplb_sync_duration_seconds_count 2\n",
            "kubeproxy_network_programming_duration_seconds_count 1\n",
            "xdplb_source_up 1\n",
            "xdplb_source_events_total 1\n",
            "xdplb_maps_readable 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("_total_total"), "{text}");
    }

    #[test]
    fn the_next_hop_cache_state_follows_the_routing_subscription() {
        use crate::hopwatch::HopChange;
        let m = Metrics::new(Path::new("/nonexistent/xdplb"));
        let figures = |m: &Metrics| {
            let text = m.render();
            let get = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok());
            (get("xdplb_next_hop_cache_enabled"), get("xdplb_routing_events_lost_total"), get("xdplb_next_hop_invalidations_total"))
        };
        assert_eq!(figures(&m), (Some(0), Some(0), Some(0)), "off until subscribed");
        for (change, want) in [
            (HopChange::Subscribed, (1, 0, 1)),
            (HopChange::Stale, (1, 0, 2)),
            (HopChange::Unchanged, (1, 0, 2)),
            (HopChange::Lost, (0, 1, 2)),
            (HopChange::Subscribed, (1, 1, 3)),
        ] {
            m.next_hop_change(change);
            assert_eq!(figures(&m), (Some(want.0), Some(want.1), Some(want.2)), "after {change:?}");
        }
    }

    #[test]
    fn registered_collectors_follow_the_agents_own_families() {
        #[derive(Debug)]
        struct Extra;
        impl Collector for Extra {
            fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
                crate::ops::families::one(&mut enc, "x_extra", "Extra.", prometheus_client::metrics::gauge::ConstGauge::new(7))
            }
        }
        let m = Metrics::new(Path::new("/nonexistent/xdplb"));
        m.register(Extra);
        let text = m.render();
        let (own, extra) = (text.find("xdplb_maps_readable 0\n"), text.find("x_extra 7\n"));
        assert!(own.is_some() && extra > own, "{text}");
    }
}
