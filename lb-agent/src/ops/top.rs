//! The figures of `lb-agent top`: two readings of the per-CPU stats maps
//! (`service_stats`, `counters`) and the rates between them, busiest
//! services first, as JSON rows or a table for a terminal.
//!
//! A reading touches only `services_v4` (which ids are live), one
//! `service_stats` lookup per id and the `counters` array, so refreshing it
//! every second stays cheap next to the dataplane.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::{Instant, SystemTime},
};


use lb_common::{counter, ServiceStats};
use serde::Serialize;

use super::names::Names;
use crate::{
    dataplane::{Dataplane, Result},
    table::{left, right, Table},
};

/// One reading of the stats maps.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    unix_ms: u64,
    /// Per live service id, summed over CPUs.
    services: BTreeMap<u32, ServiceStats>,
    /// Every `lb_common::counter`, summed over CPUs, by index.
    counters: Vec<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Sample {
    /// Reads the maps now.
    pub fn read(dp: &Dataplane) -> Result<Self> {
        let mut ids: BTreeSet<u32> = dp.v4.services.iter().map(|r| r.map(|(_, v)| v.id)).collect::<Result<_, _>>()?;
        if let Some(v6) = &dp.v6 {
            ids.extend(v6.services.iter().map(|r| r.map(|(_, v)| v.id)).collect::<Result<BTreeSet<u32>, _>>()?);
        }
        // Id 0 is no service: the address entries that refuse unserved ports.
        let ids = ids.into_iter().filter(|id| *id != 0);
        let services = ids.map(|id| Ok((id, dp.service_stats(id)?))).collect::<Result<_>>()?;
        Ok(Self { at: Instant::now(), unix_ms: unix_ms(), services, counters: dp.counters()? })
    }
}

/// What the busiest services are ranked by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    Packets,
    NewFlows,
    Drops,
}

/// The rates of one service between two readings.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceRate {
    pub id: u32,
    /// namespace/name:port when the agent's names file is there.
    pub name: Option<String>,
    /// Packets forwarded to a backend per second.
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
    pub new_flows_per_s: f64,
    /// Packets dropped for want of a backend per second.
    pub drops_per_s: f64,
}

/// One drop reason (`lb_common::counter` label `drop_*`) per second.
#[derive(Clone, Debug, Serialize)]
pub struct DropRate {
    pub reason: &'static str,
    pub per_s: f64,
}

/// The whole node between two readings.
#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    /// Every packet the programs saw.
    pub packets_per_s: f64,
    /// Forwarded to a backend (DNAT), all services.
    pub forwarded_per_s: f64,
    pub new_flows_per_s: f64,
    /// Every drop reason together.
    pub drops_per_s: f64,
}

/// `lb-agent top --once --json`: one sample.
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    /// Wall-clock bounds of the two readings (Unix ms).
    pub window_start_unix_ms: u64,
    pub window_end_unix_ms: u64,
    pub interval_s: f64,
    pub total: Totals,
    /// Busiest first (by the sort asked for); services with no traffic too.
    pub services: Vec<ServiceRate>,
    /// Reasons with drops in the window, most first.
    pub drops: Vec<DropRate>,
}

/// The rates between `prev` and `cur`. A counter that went down (maps
/// recreated) counts from zero.
pub fn rates(prev: &Sample, cur: &Sample, names: &Names, sort: SortBy) -> Rates {
    let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let per_s = |now: u64, before: u64| if now >= before { (now - before) as f64 / secs } else { now as f64 / secs };
    let mut services: Vec<ServiceRate> = cur
        .services
        .iter()
        .map(|(id, now)| {
            let before = prev.services.get(id).copied().unwrap_or_default();
            ServiceRate {
                id: *id,
                name: names.get(id).map(|n| n.to_string()),
                packets_per_s: per_s(now.packets, before.packets),
                bytes_per_s: per_s(now.bytes, before.bytes),
                new_flows_per_s: per_s(now.new_flows, before.new_flows),
                drops_per_s: per_s(now.drops_no_backend, before.drops_no_backend),
            }
        })
        .collect();
    sort_services(&mut services, sort);
    let counter_rate = |i: usize| per_s(cur.counters.get(i).copied().unwrap_or(0), prev.counters.get(i).copied().unwrap_or(0));
    let mut drops: Vec<DropRate> = counter::LABELS
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("drop_"))
        .map(|(i, l)| DropRate { reason: l, per_s: counter_rate(i) })
        .filter(|d| d.per_s > 0.0)
        .collect();
    drops.sort_by(|a, b| b.per_s.total_cmp(&a.per_s));
    Rates {
        window_start_unix_ms: prev.unix_ms,
        window_end_unix_ms: cur.unix_ms,
        interval_s: secs,
        total: Totals {
            packets_per_s: counter_rate(counter::PACKETS as usize),
            forwarded_per_s: services.iter().fold(0.0, |a, s| a + s.packets_per_s),
            new_flows_per_s: services.iter().fold(0.0, |a, s| a + s.new_flows_per_s),
            // fold from 0.0: an empty f64 sum is -0.0, shown as "-0".
            drops_per_s: drops.iter().fold(0.0, |a, d| a + d.per_s),
        },
        services,
        drops,
    }
}

/// Busiest first by `by`; ties by id.
pub fn sort_services(services: &mut [ServiceRate], by: SortBy) {
    let key = |r: &ServiceRate| match by {
        SortBy::Packets => r.packets_per_s,
        SortBy::NewFlows => r.new_flows_per_s,
        SortBy::Drops => r.drops_per_s,
    };
    services.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.id.cmp(&b.id)));
}

/// A rate for people: 1234.5 → "1.2k".
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// The terminal view: totals, the `limit` busiest services, drop reasons.
pub fn table(r: &Rates, limit: usize) -> String {
    let mut s = String::new();
    let t = &r.total;
    let _ = writeln!(
        s,
        "packets/s {}  forwarded/s {}  new flows/s {}  drops/s {}   (over {:.1} s)",
        human(t.packets_per_s),
        human(t.forwarded_per_s),
        human(t.new_flows_per_s),
        human(t.drops_per_s),
        r.interval_s
    );
    let _ = writeln!(s);
    let mut services = Table::new(&[left("ID", 6), left("SERVICE", 36), right("PKTS/S", 10), right("BYTES/S", 10), right("FLOWS/S", 10), right("DROPS/S", 10)]);
    for x in r.services.iter().take(limit) {
        services.row([
            x.id.to_string(),
            x.name.clone().unwrap_or_else(|| "-".into()),
            human(x.packets_per_s),
            human(x.bytes_per_s),
            human(x.new_flows_per_s),
            human(x.drops_per_s),
        ]);
    }
    if r.services.len() > limit {
        services.text(format!("… {} more services", r.services.len() - limit));
    }
    s += &services.to_string();
    if !r.drops.is_empty() {
        let _ = writeln!(s);
        let mut drops = Table::new(&[left("DROP REASON", 36), right("PER S", 10)]);
        for d in &r.drops {
            drops.row([d.reason.to_string(), human(d.per_s)]);
        }
        s += &drops.to_string();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ops::names::ServiceName;

    fn sample(at: Instant, services: &[(u32, u64, u64)], drops_malformed: u64) -> Sample {
        let mut counters = vec![0; counter::COUNT as usize];
        counters[counter::DROP_MALFORMED as usize] = drops_malformed;
        counters[counter::PACKETS as usize] = services.iter().map(|s| s.1).sum::<u64>() + drops_malformed;
        Sample {
            at,
            unix_ms: 0,
            services: services
                .iter()
                .map(|&(id, packets, new_flows)| (id, ServiceStats { packets, bytes: packets * 100, new_flows, drops_no_backend: 0 }))
                .collect(),
            counters,
        }
    }

    #[test]
    fn rates_are_deltas_over_the_interval_busiest_first() {
        let t0 = Instant::now();
        let a = sample(t0, &[(1, 100, 10), (2, 1000, 5)], 0);
        let b = sample(t0 + Duration::from_secs(2), &[(1, 700, 30), (2, 1200, 5), (3, 50, 50)], 40);
        let names: Names = [(1, ServiceName { namespace: "shop".into(), name: "web".into(), port: "http".into() })].into();
        let r = rates(&a, &b, &names, SortBy::Packets);
        let ids: Vec<u32> = r.services.iter().map(|s| s.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(r.services[0].name.as_deref(), Some("shop/web:http"));
        assert_eq!(r.services[0].packets_per_s, 300.0);
        assert_eq!(r.services[0].bytes_per_s, 30000.0);
        assert_eq!(r.services[0].new_flows_per_s, 10.0);
        // A service new since the last reading counts from zero.
        assert_eq!(r.services[2].packets_per_s, 25.0);
        assert_eq!(r.total.forwarded_per_s, 300.0 + 100.0 + 25.0);
        assert_eq!(r.drops.len(), 1);
        assert!(rates(&a, &a, &names, SortBy::Packets).total.drops_per_s.is_sign_positive());
        assert_eq!((r.drops[0].reason, r.drops[0].per_s), ("drop_malformed", 20.0));
        let by_flows = rates(&a, &b, &names, SortBy::NewFlows);
        assert_eq!(by_flows.services[0].id, 3);
        let text = table(&r, 2);
        assert!(text.contains("shop/web:http") && text.contains("… 1 more services"), "{text}");
    }

    #[test]
    fn a_counter_that_went_down_counts_from_zero() {
        let t0 = Instant::now();
        let a = sample(t0, &[(1, 5000, 0)], 0);
        let b = sample(t0 + Duration::from_secs(1), &[(1, 40, 0)], 0);
        assert_eq!(rates(&a, &b, &Names::new(), SortBy::Packets).services[0].packets_per_s, 40.0);
    }

    #[test]
    fn big_rates_are_shortened() {
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(3_200_000.0), "3.2M");
    }
}
