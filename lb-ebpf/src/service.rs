//! The forward path shared by every hook: service lookup, conntrack, backend
//! selection. Returns where the packet's destination goes; the hook rewrites.
use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{counter, scope, service_flags, Addr, Service, ServiceKey, SourceRange};

use crate::{
    clock,
    conntrack::{self, NewFlow, Origin, Rewrite},
    family::Family,
    parse::Packet,
    select, stats,
    verdict::Verdict,
};

/// `Ok(None)`: not a service packet. `Ok(Some(rw))`: rewrite the destination
/// to `rw`. `Err`: drop (the reason is counted by the caller). `origin`:
/// where the packet entered (see [`Origin`]).
#[inline(always)]
pub fn balance<F: Family>(p: &Packet<F::Addr>, origin: Origin) -> Result<Option<Rewrite<F::Addr>>, Verdict> {
    let Some(svc) = lookup::<F>(p.dst, p.dport, p.proto, origin == Origin::Pod) else {
        return Ok(None);
    };
    let now = clock::now();
    let key = conntrack::key_of::<F>(p);
    if let Some(rw) = conntrack::established::<F>(&key, p, now) {
        stats::service(svc.id, |s| {
            s.packets += 1;
            s.bytes += p.ip_len as u64;
        });
        return Ok(Some(rw));
    }
    let no_backend = || {
        stats::service(svc.id, |s| s.drops_no_backend += 1);
        Err(Verdict::Drop(counter::DROP_NO_BACKEND))
    };
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !source_allowed::<F>(svc.id, p.src) {
        return Err(Verdict::Drop(counter::DROP_SOURCE_RANGE));
    }
    if svc.count == 0 {
        return no_backend();
    }
    let Some((_, backend_id)) = select::pick::<F>(&svc, p, now) else {
        return no_backend();
    };
    let Some(&backend) = F::backends().get(backend_id).filter(|b| !b.is_empty()) else {
        return no_backend();
    };
    let rw = conntrack::create::<F>(&NewFlow { key: &key, p, svc: &svc, backend: &backend, now }, backend_id, origin)?;
    stats::service(svc.id, |s| {
        s.packets += 1;
        s.bytes += p.ip_len as u64;
        s.new_flows += 1;
    });
    Ok(Some(rw))
}

/// The service reached at `addr:port/proto`. `in_cluster`: the source is a
/// pod or the node, which an `externalTrafficPolicy: Local` frontend sends
/// to every usable endpoint (its `IN_CLUSTER_ALT` entry), as kube-proxy does.
#[inline(always)]
pub fn lookup<F: Family>(addr: F::Addr, port: [u8; 2], proto: u8, in_cluster: bool) -> Option<Service> {
    let mut key = ServiceKey { addr, port, proto, scope: scope::ANY };
    // SAFETY: read-only copy of an agent-written value.
    let svc = *unsafe { F::services().get(&key) }?;
    if in_cluster && svc.flags & service_flags::IN_CLUSTER_ALT != 0 {
        key.scope = scope::IN_CLUSTER;
        // SAFETY: as above.
        if let Some(alt) = unsafe { F::services().get(&key) } {
            return Some(*alt);
        }
    }
    Some(svc)
}

/// Whether `client` is inside one of the service's source ranges. Checked
/// for new flows only: an established flow outlives a range's removal, as
/// with kube-proxy's conntrack.
#[inline(always)]
fn source_allowed<F: Family>(service_id: u32, client: F::Addr) -> bool {
    let key = Key::new(SourceRange::<F::Addr>::prefix_len(F::Addr::LEN as u8 * 8), SourceRange { service_id: service_id.to_be_bytes(), addr: client });
    F::source_ranges().get(&key).is_some()
}
