//! Whether the agent is ready (`/readyz`, `xdplb_ready`): programs attached,
//! the first full sync applied, and the Kubernetes source not stale. As a
//! collector it also exports the source's watch health, read at each scrape
//! because staleness is a matter of the clock, not of an event.
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::families::{family, one};
use crate::control::source::kube::{SourceHealth, WatchHealth};

#[derive(Debug, Default)]
pub struct Readiness {
    attached: AtomicBool,
    synced_once: AtomicBool,
    /// The kube source's watches, and how long one may go without a
    /// successful list or watch before the agent reports not ready.
    source_health: Mutex<Option<(Arc<SourceHealth>, Duration)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain values behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Readiness {
    /// Every program is attached to every uplink.
    pub fn set_attached(&self) {
        self.attached.store(true, Ordering::Relaxed);
    }

    /// A full sync was applied.
    pub fn set_synced(&self) {
        self.synced_once.store(true, Ordering::Relaxed);
    }

    /// Reports `health` (watch errors, relists, last success) and makes the
    /// agent not ready while a watch has gone `stale_after` without success.
    pub fn set_source_health(&self, health: Arc<SourceHealth>, stale_after: Duration) {
        *lock(&self.source_health) = Some((health, stale_after));
    }

    /// How long the source has gone without a successful list or watch, when
    /// that is longer than allowed, and the allowance.
    fn stale(&self) -> Option<(Duration, Duration)> {
        let guard = lock(&self.source_health);
        let (h, after) = guard.as_ref()?;
        let stale = h.stale_for();
        (stale > *after).then_some((stale, *after))
    }

    /// Why the agent is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.attached.load(Ordering::Relaxed) || !self.synced_once.load(Ordering::Relaxed) {
            return Some("programs not attached or first sync not applied".into());
        }
        let (stale, after) = self.stale()?;
        Some(if stale == Duration::MAX {
            format!("the Kubernetes source has had no successful list or watch (allowed: {} s, --source-stale-after); the dataplane keeps forwarding with the last state", after.as_secs())
        } else {
            format!("the Kubernetes source has had no successful list or watch for {} s (allowed: {} s, --source-stale-after); the dataplane keeps forwarding with the last state", stale.as_secs(), after.as_secs())
        })
    }

    /// Programs attached, the first full sync applied, and the source not
    /// stale (see [`Readiness::set_source_health`]).
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }
}

impl Collector for Readiness {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        one(
            &mut enc,
            "xdplb_ready",
            "1 when the programs are attached, the first full sync is applied and the source is not stale (/readyz 200).",
            ConstGauge::new(i64::from(self.ready())),
        )?;
        // Cloned out first: `stale` takes the lock again.
        let health = lock(&self.source_health).clone();
        let Some((h, _)) = health else { return Ok(()) };
        let per_resource = |f: &dyn Fn(&WatchHealth) -> u64| h.by_resource().map(|(resource, w)| ([("resource", resource)], f(w)));
        family(
            &mut enc,
            "xdplb_source_watch_errors_total",
            "Failed list/watch calls and error events of the Kubernetes source, per resource (each retried after a backoff).",
            per_resource(&|w| w.errors()).map(|(l, n)| (l, ConstCounter::new(n))),
        )?;
        family(
            &mut enc,
            "xdplb_source_relists_total",
            "Relists of the Kubernetes source after the first list, per resource (410 Gone, or a watch that could not resume).",
            per_resource(&|w| w.relists()).map(|(l, n)| (l, ConstCounter::new(n))),
        )?;
        family(
            &mut enc,
            "xdplb_source_connected",
            "1 while the resource's watch is up (its last call succeeded, none is waiting for an answer).",
            per_resource(&|w| u64::from(w.healthy())).map(|(l, n)| (l, ConstGauge::new(n))),
        )?;
        family(
            &mut enc,
            "xdplb_source_last_success_timestamp_seconds",
            "Unix time the resource's list/watch last succeeded (now while connected; 0 before the first).",
            h.by_resource().map(|(resource, w)| {
                let t = w.last_success().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
                ([("resource", resource)], ConstGauge::new(t.map_or(0.0, |d| d.as_secs_f64())))
            }),
        )?;
        one(
            &mut enc,
            "xdplb_source_stale",
            "1 when a watch has gone longer than --source-stale-after without success (the agent reports not ready; forwarding goes on).",
            ConstGauge::new(i64::from(self.stale().is_some())),
        )
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::ops::families::text;

    #[test]
    fn readiness_needs_attach_and_a_sync() {
        let r = Readiness::default();
        assert!(!r.ready());
        r.set_attached();
        assert!(!r.ready());
        r.set_synced();
        assert!(r.ready(), "the file source has no watch to go stale");
    }

    #[test]
    fn a_source_without_a_successful_watch_makes_the_agent_unready_and_shows_in_metrics() {
        let r = Arc::new(Readiness::default());
        r.set_attached();
        r.set_synced();
        r.set_source_health(Arc::new(SourceHealth::default()), Duration::from_secs(120));
        let why = r.not_ready_reason().expect("never listed: stale");
        assert!(why.contains("--source-stale-after") && why.contains("120 s"), "{why}");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(r));
        let text = text(&registry);
        for want in [
            "xdplb_ready 0\n",
            "xdplb_source_stale 1\n",
            "# TYPE xdplb_source_watch_errors_total counter\n",
            "xdplb_source_watch_errors_total{resource=\"services\"} 0\n",
            "xdplb_source_relists_total{resource=\"endpointslices\"} 0\n",
            "xdplb_source_connected{resource=\"nodes\"} 0\n",
            "xdplb_source_last_success_timestamp_seconds{resource=\"nodes\"} 0.0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
