//! Service definitions for tests, turned into map contents. (The agent's own
//! `plan()` does this from Kubernetes objects; tests of the dataplane alone
//! state the maps directly.)
use std::net::Ipv4Addr;

use lb_agent::diff::MapContents;
use lb_common::{BackendV4, ServiceKeyV4, ServiceV4, SlotKey};

/// One service: every address:port it is reached on, and its backends.
#[derive(Clone, Debug)]
pub struct Svc {
    pub id: u32,
    pub frontends: Vec<(Ipv4Addr, u16)>,
    pub proto: u8,
    pub algorithm: u8,
    /// (backend id, address, port)
    pub backends: Vec<(u32, Ipv4Addr, u16)>,
    /// Slot contents when not one slot per backend (a Maglev table).
    pub table: Option<Vec<u32>>,
    pub affinity_timeout_s: u32,
    /// Ids of backends on another node (`backend_flags::REMOTE`).
    pub remote: Vec<u32>,
}

impl Svc {
    pub fn new(id: u32, proto: u8, algorithm: u8) -> Self {
        Self {
            id,
            frontends: Vec::new(),
            proto,
            algorithm,
            backends: Vec::new(),
            table: None,
            affinity_timeout_s: 0,
            remote: Vec::new(),
        }
    }
    pub fn frontend(mut self, addr: Ipv4Addr, port: u16) -> Self {
        self.frontends.push((addr, port));
        self
    }
    pub fn backend(mut self, id: u32, addr: Ipv4Addr, port: u16) -> Self {
        self.backends.push((id, addr, port));
        self
    }
    /// A backend on another node.
    pub fn remote_backend(mut self, id: u32, addr: Ipv4Addr, port: u16) -> Self {
        self.remote.push(id);
        self.backend(id, addr, port)
    }
    pub fn table(mut self, table: Vec<u32>) -> Self {
        self.table = Some(table);
        self
    }
    pub fn affinity(mut self, timeout_s: u32) -> Self {
        self.affinity_timeout_s = timeout_s;
        self
    }
}

/// The map contents for `svcs`.
pub fn contents(svcs: &[Svc]) -> MapContents {
    let mut c = MapContents::default();
    for s in svcs {
        let slots: Vec<u32> = s
            .table
            .clone()
            .unwrap_or_else(|| s.backends.iter().map(|b| b.0).collect());
        let value = ServiceV4 {
            id: s.id,
            count: slots.len() as u32,
            algorithm: s.algorithm,
            affinity_timeout_s: s.affinity_timeout_s,
            ..Default::default()
        };
        for (addr, port) in &s.frontends {
            c.services.insert(
                ServiceKeyV4 {
                    addr: addr.octets(),
                    port: port.to_be_bytes(),
                    proto: s.proto,
                    scope: 0,
                },
                value,
            );
        }
        for (id, addr, port) in &s.backends {
            c.backends.insert(
                *id,
                BackendV4 {
                    addr: addr.octets(),
                    port: port.to_be_bytes(),
                    weight: 1,
                    flags: if s.remote.contains(id) { lb_common::backend_flags::REMOTE } else { 0 },
                    ..Default::default()
                },
            );
        }
        for (i, id) in slots.iter().enumerate() {
            c.slots.insert(
                SlotKey {
                    service_id: s.id,
                    slot: i as u32 + 1,
                },
                *id,
            );
        }
    }
    c
}

/// An IPv6 service for tests of the dataplane alone: its frontends, backends
/// (one slot each) and algorithm, written straight into the IPv6 maps (and
/// the shared `service_slots`) of a loaded object, before the agent writes
/// them itself.
#[derive(Clone, Debug)]
pub struct Svc6 {
    pub id: u32,
    pub proto: u8,
    pub algorithm: u8,
    pub frontends: Vec<(std::net::Ipv6Addr, u16)>,
    /// (backend id, address, port)
    pub backends: Vec<(u32, std::net::Ipv6Addr, u16)>,
}

/// Writes `svcs` into the IPv6 maps of `ebpf` (see [`Svc6`]).
pub fn program_v6(ebpf: &mut aya::Ebpf, svcs: &[Svc6]) {
    use aya::maps::{Array, HashMap};
    use lb_common::{maps, BackendV6, Service, ServiceKeyV6};
    for s in svcs {
        let value = Service { id: s.id, count: s.backends.len() as u32, algorithm: s.algorithm, ..Default::default() };
        // The frontends' ports before the frontends, as the agent marks them (`lb_agent::serviceports`).
        // (An object without the map, an earlier build's in an A/B bench run, has no gate.)
        if let Some(map) = ebpf.map(maps::SERVICE_PORTS) {
            let sp = lb_agent::portbits::PortBits::of_map(map).unwrap();
            for (_, port) in &s.frontends {
                sp.mark(port.to_be_bytes());
            }
        }
        let mut services: HashMap<_, ServiceKeyV6, Service> = HashMap::try_from(ebpf.map_mut(maps::SERVICES_V6).expect("services_v6")).unwrap();
        for (addr, port) in &s.frontends {
            let key = ServiceKeyV6 { addr: addr.octets(), port: port.to_be_bytes(), proto: s.proto, scope: 0 };
            services.insert(key, value, 0).unwrap();
        }
        // Their ports first, as the agent marks them (`lb_agent::replyports`).
        let rp = lb_agent::replyports::ReplyPorts::of_map(ebpf.map(maps::REPLY_PORTS).expect("reply_ports")).unwrap();
        for (_, _, port) in &s.backends {
            rp.mark(port.to_be_bytes());
        }
        let mut backends: Array<_, BackendV6> = Array::try_from(ebpf.map_mut(maps::BACKENDS_V6).expect("backends_v6")).unwrap();
        for (id, addr, port) in &s.backends {
            let b = BackendV6 { addr: addr.octets(), port: port.to_be_bytes(), weight: 1, ..Default::default() };
            backends.set(*id, b, 0).unwrap();
        }
        let mut slots: HashMap<_, SlotKey, u32> = HashMap::try_from(ebpf.map_mut(maps::SERVICE_SLOTS).expect("service_slots")).unwrap();
        for (i, (id, _, _)) in s.backends.iter().enumerate() {
            slots.insert(SlotKey { service_id: s.id, slot: i as u32 + 1 }, *id, 0).unwrap();
        }
    }
}

/// Marks the IPv6 backends `ids` of `ebpf` as on another node.
pub fn remote_v6(ebpf: &mut aya::Ebpf, ids: &[u32]) {
    let map = ebpf.map_mut(lb_common::maps::BACKENDS_V6).expect("backends_v6");
    let mut backends: aya::maps::Array<_, lb_common::BackendV6> = aya::maps::Array::try_from(map).unwrap();
    for &id in ids {
        let mut b = backends.get(&id, 0).unwrap();
        b.flags = lb_common::backend_flags::REMOTE;
        backends.set(id, b, 0).unwrap();
    }
}

/// The IPv6 conntrack entries of `ebpf` (both halves of every flow).
pub fn flows_v6(ebpf: &mut aya::Ebpf) -> Vec<(lb_common::FlowKeyV6, lb_common::FlowV6)> {
    let map = ebpf.map_mut(lb_common::maps::CONNTRACK_V6).expect("conntrack_v6");
    let ct: aya::maps::HashMap<_, lb_common::FlowKeyV6, lb_common::FlowV6> = aya::maps::HashMap::try_from(map).unwrap();
    ct.iter().map(|e| e.unwrap()).collect()
}
