//! Read-only views of the pinned maps for `lb-agent services | backends |
//! conntrack | stats`: rows that serialize to JSON, and tables for people.
//! They open the maps by pin path, so they work whether or not an agent runs.
use std::{collections::BTreeMap, net::SocketAddr};


use lb_common::{
    backend_state, counter, direction, flow_flags, proto_name, service_flags, Addr, Addr4, Addr6, Backend, BackendId, Config,
    Flow, FlowKey, SlotKey,
};
use serde::Serialize;

use super::names::Names;
use crate::{
    dataplane::{monotonic_ns, Dataplane, Result},
    diff::MapContents,
    table::{left, right, Table},
};

pub use crate::control::model::algorithm_name;

pub fn state_name(s: u8) -> &'static str {
    match s {
        backend_state::ACTIVE => "active",
        backend_state::TERMINATING => "terminating",
        _ => "unknown",
    }
}

/// `addr:port` of either family (`[fd00::1]:80` for IPv6).
fn sock_any<A: Addr>(addr: A, port: [u8; 2]) -> SocketAddr {
    SocketAddr::new(addr.to_ip(), u16::from_be_bytes(port))
}

/// The address of backend `id`, whichever family's array holds it.
pub fn backend_addr(dp: &Dataplane, id: BackendId) -> Option<std::net::IpAddr> {
    let v4 = dp.v4.backends.get(&id, 0).ok().filter(|b| !b.is_empty()).map(|b| b.addr.to_ip());
    v4.or_else(|| dp.v6.as_ref()?.backends.get(&id, 0).ok().filter(|b| !b.is_empty()).map(|b| b.addr.to_ip()))
}

/// One service id: its frontends and the backends its slots name.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceRow {
    pub id: u32,
    /// namespace/name:port when the agent's names file is there.
    pub name: Option<String>,
    /// `addr:port/PROTO`, sorted.
    pub frontends: Vec<String>,
    pub algorithm: &'static str,
    /// ClientIP affinity timeout, seconds; 0 = none.
    pub affinity_timeout_s: u32,
    /// No ready endpoint: the slots hold terminating ones.
    pub fallback_terminating: bool,
    /// `loadBalancerSourceRanges` admitted to its guarded frontends (CIDRs).
    pub source_ranges: Vec<String>,
    pub slots: u32,
    pub backends: Vec<ServiceBackend>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceBackend {
    pub id: u32,
    /// `addr:port`; None when the slot names a backend id that is not in
    /// `backends_v4` (the dataplane drops such flows as no-backend).
    pub addr: Option<SocketAddr>,
    pub state: &'static str,
    /// How many of the service's slots name it (1 per backend, except in
    /// Maglev tables).
    pub slots: u32,
}

/// Every service id of both families, by id.
pub fn services(dp: &Dataplane, names: &Names) -> Result<Vec<ServiceRow>> {
    let mut by_id: BTreeMap<u32, ServiceRow> = BTreeMap::new();
    service_rows(&dp.family_contents::<Addr4>()?, names, &mut by_id);
    service_rows(&dp.family_contents::<Addr6>()?, names, &mut by_id);
    Ok(by_id.into_values().collect())
}

fn service_rows<A: Addr>(c: &MapContents<A>, names: &Names, by_id: &mut BTreeMap<u32, ServiceRow>) {
    let mut mine = Vec::new();
    for (k, v) in c.services.iter().filter(|(k, _)| !k.is_address()) {
        let row = by_id.entry(v.id).or_insert_with(|| ServiceRow {
            id: v.id,
            name: names.get(&v.id).map(|n| n.to_string()),
            frontends: Vec::new(),
            algorithm: algorithm_name(v.algorithm),
            affinity_timeout_s: v.affinity_timeout_s,
            fallback_terminating: v.flags & service_flags::FALLBACK_TERMINATING != 0,
            source_ranges: c
                .source_ranges
                .keys()
                .filter(|(_, r)| u32::from_be_bytes(r.service_id) == v.id)
                .map(|(len, r)| format!("{}/{}", r.addr.to_ip(), len - 32))
                .collect(),
            slots: v.count,
            backends: Vec::new(),
        });
        row.frontends.push(k.to_string());
        mine.push(v.id);
    }
    for row in by_id.values_mut().filter(|r| mine.contains(&r.id)) {
        let mut count: BTreeMap<u32, u32> = BTreeMap::new();
        for slot in 1..=row.slots {
            if let Some(id) = c.slots.get(&SlotKey {
                service_id: row.id,
                slot,
            }) {
                *count.entry(*id).or_default() += 1;
            }
        }
        row.backends = count
            .into_iter()
            .map(|(id, slots)| {
                let b = c.backends.get(&id);
                ServiceBackend {
                    id,
                    addr: b.map(|b| sock_any(b.addr, b.port)),
                    state: b.map_or("missing", |b| state_name(b.state)),
                    slots,
                }
            })
            .collect();
    }
}

pub fn services_table(rows: &[ServiceRow]) -> String {
    let mut t = Table::new(&[left("ID", 6), left("SERVICE", 32), left("ALGORITHM", 12), left("AFFINITY", 9), left("FRONTENDS", 0)])
        .with_sub("       ", &[left("", 7), left("", 6), left("", 22), left("", 0)]);
    for r in rows {
        let aff = if r.affinity_timeout_s > 0 { format!("{}s", r.affinity_timeout_s) } else { "-".into() };
        t.row([r.id.to_string(), r.name.clone().unwrap_or_else(|| "-".into()), r.algorithm.into(), aff, r.frontends.join(", ")]);
        if r.backends.is_empty() {
            t.text("       (no backend: new connections are dropped)");
        }
        for b in &r.backends {
            let addr = b.addr.map_or("?".into(), |a| a.to_string());
            let slots = if b.slots == 1 { String::new() } else { format!("  {} slots", b.slots) };
            t.sub_row(["backend".into(), b.id.to_string(), addr, format!("{}{slots}", b.state)]);
        }
        if r.fallback_terminating {
            t.text("       (no ready endpoint: using terminating ones)");
        }
        if !r.source_ranges.is_empty() {
            t.text(format!("       LoadBalancer IPs admit only {}", r.source_ranges.join(", ")));
        }
    }
    t.to_string()
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub addr: SocketAddr,
    pub state: &'static str,
    pub weight: u16,
    /// Live flows, as `backend_load` counts them.
    pub flows: u64,
}

/// Every backend of both families, by id.
pub fn backends(dp: &Dataplane) -> Result<Vec<BackendRow>> {
    let mut rows = backend_rows(dp, &dp.v4.backends()?);
    if let Some(v6) = &dp.v6 {
        rows.extend(backend_rows(dp, &v6.backends()?));
    }
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

fn backend_rows<A: Addr>(dp: &Dataplane, backends: &std::collections::BTreeMap<BackendId, Backend<A>>) -> Vec<BackendRow> {
    backends
        .iter()
        .map(|(id, b)| {
            // An id beyond the load array (a smaller map) has no count: 0.
            let flows = dp.backend_load(*id).unwrap_or(0);
            BackendRow {
                id: *id,
                addr: sock_any(b.addr, b.port),
                state: state_name(b.state),
                weight: b.weight,
                flows,
            }
        })
        .collect()
}

pub fn backends_table(rows: &[BackendRow]) -> String {
    let mut t = Table::new(&[left("ID", 8), left("ADDRESS", 22), left("STATE", 12), right("WEIGHT", 6), right("FLOWS", 8)]);
    for r in rows {
        t.row([r.id.to_string(), r.addr.to_string(), r.state.into(), r.weight.to_string(), r.flows.to_string()]);
    }
    t.to_string()
}

/// One conntrack entry (a flow has two: forward and reply).
#[derive(Clone, Debug, Serialize)]
pub struct FlowRow {
    pub direction: &'static str,
    pub proto: &'static str,
    /// The packet this entry matches: source → destination.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// What the rewritten side becomes (forward: the backend; reply: the service).
    pub nat: SocketAddr,
    pub service_id: u32,
    pub backend_id: u32,
    pub age_s: f64,
    pub idle_s: f64,
    pub packets: u64,
    pub bytes: u64,
    pub flags: Vec<&'static str>,
}


/// A row for one entry. `cfg` gives the timeouts: an entry idle for longer
/// than its timeout is marked `expired` (the dataplane ignores it and the
/// LRU map drops it when it needs room; nothing deletes it before).
pub fn flow_row<A: Addr>(k: &FlowKey<A>, v: &Flow<A>, now_ns: u64, cfg: &Config) -> FlowRow {
    let mut flags = Vec::new();
    if v.flags & flow_flags::CLOSING != 0 {
        flags.push("closing");
    }
    if v.flags & flow_flags::SEEN_REPLY != 0 {
        flags.push("seen-reply");
    }
    if v.flags & flow_flags::SNAT != 0 {
        flags.push("snat");
    }
    if v.flags & flow_flags::DSR != 0 {
        flags.push("dsr");
    }
    let secs = |t: u64| now_ns.saturating_sub(t) as f64 / 1e9;
    let timeout = if v.flags & flow_flags::CLOSING != 0 {
        cfg.closing_timeout_s
    } else {
        cfg.idle_timeout_s(k.proto)
    };
    if secs(v.last_seen_ns) > timeout as f64 {
        flags.push("expired");
    }
    FlowRow {
        direction: if v.direction == direction::REPLY {
            "reply"
        } else {
            "forward"
        },
        proto: proto_name(k.proto),
        src: sock_any(k.src_addr, k.src_port),
        dst: sock_any(k.dst_addr, k.dst_port),
        nat: sock_any(v.nat_addr, v.nat_port),
        service_id: v.service_id,
        backend_id: v.backend_id,
        age_s: (secs(v.created_ns) * 10.0).round() / 10.0,
        idle_s: (secs(v.last_seen_ns) * 10.0).round() / 10.0,
        packets: v.packets,
        bytes: v.bytes,
        flags,
    }
}

/// Which entries `lb-agent conntrack` shows.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub service: Option<u32>,
    /// The client: the source of forward entries, the destination of replies.
    pub client: Option<std::net::IpAddr>,
}

pub fn conntrack(dp: &Dataplane, f: &FlowFilter) -> Result<Vec<FlowRow>> {
    let now = monotonic_ns();
    // The agent writes the config on start; maps never run by an agent have
    // zeros there, so fall back to the defaults.
    let cfg = dp
        .config
        .get(&0, 0)
        .ok()
        .filter(|c| c.layout_version != 0)
        .unwrap_or_default();
    let mut rows = flow_rows(&dp.v4.flows()?, f, now, &cfg);
    if let Some(v6) = &dp.v6 {
        rows.extend(flow_rows(&v6.flows()?, f, now, &cfg));
    }
    // A flow's two entries side by side: by service, then client, forward first.
    let client = |r: &FlowRow| if r.direction == "reply" { r.dst } else { r.src };
    rows.sort_by_key(|r| (r.service_id, client(r), r.direction, r.src, r.dst));
    Ok(rows)
}

/// The rows of one family's entries that `f` selects.
fn flow_rows<A: Addr>(flows: &[(FlowKey<A>, Flow<A>)], f: &FlowFilter, now: u64, cfg: &Config) -> Vec<FlowRow> {
    flows
        .iter()
        .filter(|(_, v)| f.service.is_none_or(|s| v.service_id == s))
        .filter(|(k, v)| {
            f.client.is_none_or(|c| {
                let client = if v.direction == direction::REPLY { k.dst_addr } else { k.src_addr };
                client.to_ip() == c
            })
        })
        .map(|(k, v)| flow_row(k, v, now, cfg))
        .collect()
}

pub fn conntrack_table(rows: &[FlowRow]) -> String {
    let mut t = Table::new(&[
        left("DIR", 8),
        left("PROTO", 5),
        left("SOURCE", 22),
        left("DESTINATION", 22),
        left("NAT", 22),
        right("SVC", 5),
        right("BACKEND", 7),
        right("AGE", 8),
        right("IDLE", 8),
        right("PACKETS", 8),
        right("BYTES", 10),
        left("FLAGS", 0),
    ]);
    for r in rows {
        let flags = if r.flags.is_empty() { "-".to_string() } else { r.flags.join(",") };
        t.row([
            r.direction.to_string(),
            r.proto.into(),
            r.src.to_string(),
            r.dst.to_string(),
            r.nat.to_string(),
            r.service_id.to_string(),
            r.backend_id.to_string(),
            format!("{:.1}s", r.age_s),
            format!("{:.1}s", r.idle_s),
            r.packets.to_string(),
            r.bytes.to_string(),
            flags,
        ]);
    }
    t.text(format!("{} entries ({} flows)", rows.len(), rows.iter().filter(|r| r.direction == "forward").count()));
    t.to_string()
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Every `lb_common::counter`, by its label, summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    pub services: Vec<ServiceStatsRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatsRow {
    pub id: u32,
    pub name: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops_no_backend: u64,
}

pub fn stats(dp: &Dataplane, names: &Names) -> Result<Stats> {
    let values = dp.counters()?;
    let counters = counter::LABELS.iter().copied().zip(values).filter(|(l, _)| !l.is_empty()).collect();
    let services = dp
        .service_ids()
        .into_iter()
        .map(|id| {
            let st = dp.service_stats(id)?;
            Ok(ServiceStatsRow {
                id,
                name: names.get(&id).map(|n| n.to_string()),
                packets: st.packets,
                bytes: st.bytes,
                new_flows: st.new_flows,
                drops_no_backend: st.drops_no_backend,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Stats { counters, services })
}

pub fn stats_table(st: &Stats) -> String {
    let mut counters = Table::new(&[left("COUNTER", 32), right("VALUE", 14)]);
    for label in counter::LABELS.iter().filter(|l| !l.is_empty()) {
        counters.row([label.to_string(), st.counters.get(label).copied().unwrap_or(0).to_string()]);
    }
    let mut services = Table::new(&[
        left("ID", 6),
        left("SERVICE", 32),
        right("PACKETS", 12),
        right("BYTES", 14),
        right("NEW FLOWS", 10),
        right("NO BACKEND", 12),
    ]);
    for r in &st.services {
        services.row([
            r.id.to_string(),
            r.name.clone().unwrap_or_else(|| "-".into()),
            r.packets.to_string(),
            r.bytes.to_string(),
            r.new_flows.to_string(),
            r.drops_no_backend.to_string(),
        ]);
    }
    format!("{counters}\n{services}")
}

#[cfg(test)]
mod tests {
    use lb_common::{FlowKeyV4, FlowV4};

    use super::*;

    #[test]
    fn a_flow_row_reads_wire_order_fields_and_marks_expiry() {
        let k = FlowKeyV4 {
            src_addr: [192, 168, 1, 2],
            dst_addr: [10, 96, 0, 10],
            src_port: 40000u16.to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            proto: 6,
            _pad: [0; 3],
        };
        let s = 1_000_000_000u64;
        let v = FlowV4 {
            backend_id: 3,
            service_id: 7,
            nat_addr: [10, 0, 2, 11],
            nat_port: 8080u16.to_be_bytes(),
            flags: flow_flags::CLOSING,
            created_ns: 100 * s,
            last_seen_ns: 120 * s,
            packets: 6,
            bytes: 420,
            ..Default::default()
        };
        let cfg = Config::default();
        let r = flow_row(&k, &v, 125 * s, &cfg);
        assert_eq!(
            (r.src.to_string(), r.dst.to_string(), r.nat.to_string()),
            (
                "192.168.1.2:40000".into(),
                "10.96.0.10:80".into(),
                "10.0.2.11:8080".into()
            )
        );
        assert_eq!(
            (r.direction, r.proto, r.age_s, r.idle_s),
            ("forward", "TCP", 25.0, 5.0)
        );
        assert_eq!(r.flags, ["closing"]);
        // Idle past the closing timeout (10 s).
        assert_eq!(
            flow_row(&k, &v, 131 * s, &cfg).flags,
            ["closing", "expired"]
        );
        let open = FlowV4 { flags: 0, ..v };
        assert!(
            flow_row(&k, &open, 131 * s, &cfg).flags.is_empty(),
            "TCP's timeout is hours"
        );
        let snat = FlowV4 { flags: flow_flags::SNAT | flow_flags::SEEN_REPLY, ..v };
        assert_eq!(flow_row(&k, &snat, 131 * s, &cfg).flags, ["seen-reply", "snat"]);
        let dsr = FlowV4 { flags: flow_flags::DSR, ..v };
        assert_eq!(flow_row(&k, &dsr, 131 * s, &cfg).flags, ["dsr"]);
    }

    #[test]
    fn tables_have_one_line_per_backend() {
        let rows = vec![ServiceRow {
            id: 5,
            name: Some("shop/web:http".into()),
            frontends: vec!["10.96.0.10:80/TCP".into()],
            algorithm: "maglev",
            affinity_timeout_s: 0,
            fallback_terminating: true,
            source_ranges: vec!["10.0.0.0/8".into()],
            slots: 3,
            backends: vec![ServiceBackend {
                id: 2,
                addr: None,
                state: "missing",
                slots: 3,
            }],
        }];
        let t = services_table(&rows);
        assert!(
            t.contains("backend 2      ?                      missing  3 slots"),
            "{t}"
        );
        assert!(t.contains("using terminating ones"), "{t}");
        assert!(t.contains("LoadBalancer IPs admit only 10.0.0.0/8"), "{t}");
    }
}
