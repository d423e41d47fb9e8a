//! `lb-agent explain`: what the dataplane does with one packet, decided from
//! the live pinned maps. Each step follows the programs' forward path
//! (`lb-ebpf` service.rs, select.rs, reset.rs, sock.rs) in order, with the
//! same flow hash (`lb_ebpf::hash::flow_hash`), so a divergence between
//! `explain` and real packets is a bug (the tests compare them on the same
//! maps).
//!
//! The packet is the next one of the 5-tuple: a packet of a live flow when
//! conntrack has one (TCP: not closing), else the first packet of a new
//! connection (a SYN for TCP). Without a source port, nothing that depends on
//! it (conntrack, Maglev) can be looked up.
//!
//! Both families go through the same generic decision code, over the
//! family's maps ([`Snapshot`] of `A`); [`explain_pinned`] picks the family
//! of the destination.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use lb_common::{
    algorithm, backend_state, direction, flow_flags, scope, service_flags, Addr, Addr4, Addr6, AffinityKey, AffinityV4, Backend,
    BackendId, Config, Flow, FlowKey, NatConfig, ServiceKey, ServiceV4, SlotKey, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::Serialize;

use crate::{
    control::model::{algorithm_name, cidr},
    table::{left, Table},
    dataplane::{monotonic_ns, Dataplane, MapFamily},
    diff::MapContents,
    family::{Family, IpFamily},
};

const NS: u64 = 1_000_000_000;

/// Where the packet comes from, which decides the hook that sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A pod on this node: tc ingress on its interface.
    Pod,
    /// Outside the node: XDP on the uplink.
    External,
    /// A process of the node itself: the socket balancer at connect().
    Node,
}

impl Origin {
    fn hook(self) -> &'static str {
        match self {
            Origin::Pod => "tc ingress on the pod's interface",
            Origin::External => "XDP on the uplink",
            Origin::Node => "socket balancer at connect()/sendmsg() (cgroup; only with --socket-lb)",
        }
    }
}

/// The packet to explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub origin: Origin,
    /// Of the destination's family.
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: u8,
}

/// What `explain` reads from the maps of family `A` for one query.
#[derive(Clone, Debug, Default)]
pub struct Snapshot<A: Addr = Addr4> {
    pub contents: MapContents<A>,
    pub config: Config,
    /// The conntrack entry of the query's own direction, if any.
    pub flow: Option<Flow<A>>,
    pub affinity: Option<AffinityV4>,
    /// This node's SNAT address and port range of the family (address 0: off).
    pub nat: NatConfig<A>,
    /// `bpf_ktime_get_coarse_ns()`'s clock (CLOCK_MONOTONIC) now.
    pub now_ns: u64,
    /// Whether `service_ports` marks the query's destination port (`None`:
    /// not pinned, nothing is skipped).
    pub port_marked: Option<bool>,
}

impl<A: MapFamily> Snapshot<A> {
    /// Reads what `q` needs from the pinned maps of family `A` (empty when
    /// they are not pinned).
    pub fn read(dp: &Dataplane, q: &Query) -> crate::dataplane::Result<Self> {
        let contents = dp.family_contents::<A>()?;
        let config = dp.config.get(&0, 0).ok().filter(|c| c.layout_version != 0).unwrap_or_default();
        let maps = A::maps(dp);
        let flow = match (q.sport, maps, flow_key::<A>(q, q.sport.unwrap_or(0))) {
            (Some(_), Some(m), Some(k)) => m.conntrack.get(&k, 0).ok(),
            _ => None,
        };
        let svc = lookup_service(q, &contents);
        let affinity = match (svc, maps, client_addr::<A>(q)) {
            (Some(s), Some(m), Some(client)) if s.affinity_timeout_s != 0 => m.affinity(&AffinityKey { service_id: s.id, client })?,
            _ => None,
        };
        let nat = dp.nat_config::<A>().unwrap_or_default();
        let port_marked = dp.service_ports.as_ref().map(|b| b.is_marked(q.dport.to_be_bytes()));
        Ok(Self { contents, config, flow, affinity, nat, now_ns: monotonic_ns(), port_marked })
    }
}

/// The final action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// The destination is rewritten to a backend.
    Dnat,
    /// Refused: a TCP reset (XDP/tc) or ECONNREFUSED (socket balancer).
    Reject,
    /// Dropped silently: the client times out.
    Drop,
    /// Not a service packet: the stack gets it untouched.
    Pass,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub action: Action,
    /// The backend, when the choice is known.
    pub backend: Option<SocketAddr>,
    /// The source the backend sees when it is rewritten (SNAT): this node's
    /// address and a port (range for a new flow).
    pub snat: Option<String>,
    pub reason: String,
}

/// One backend new flows may go to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub id: BackendId,
    pub addr: SocketAddr,
    pub state: &'static str,
    /// On another node (`backend_flags::REMOTE`).
    pub remote: bool,
    pub weight: u16,
    /// How many of the service's slots name it (its Maglev share).
    pub slots: u32,
}

/// The frontend the packet matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub service_id: u32,
    pub algorithm: &'static str,
    pub slots: u32,
    pub affinity_timeout_s: u32,
    /// Readable service flags.
    pub flags: Vec<&'static str>,
}

/// A conntrack entry of the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Established {
    pub backend_id: BackendId,
    pub backend: SocketAddr,
    pub idle_s: u64,
    pub closing: bool,
    /// The source the backend sees, when the flow is SNATed.
    pub snat: Option<SocketAddr>,
    /// Whether the dataplane still follows it for this packet.
    pub used: bool,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub origin: Origin,
    pub packet: String,
    pub hook: &'static str,
    pub frontend: Option<Frontend>,
    /// The Service behind the id (from the agent's names file), if known.
    pub service: Option<String>,
    /// Why no frontend matched, or notes on policy and scope.
    pub notes: Vec<String>,
    /// `loadBalancerSourceRanges`: the range that admits the client, or
    /// `denied`; `None` when the frontend is not guarded.
    pub source_range: Option<String>,
    pub conntrack: Option<Established>,
    pub candidates: Vec<Candidate>,
    /// How the backend of a new flow is chosen, and what it would be.
    pub selection: Option<String>,
    pub verdict: Verdict,
}

fn service_key<A: Family>(q: &Query) -> Option<ServiceKey<A>> {
    Some(ServiceKey { addr: A::from_ip(q.dst)?, port: q.dport.to_be_bytes(), proto: q.proto, scope: scope::ANY })
}

/// The entry the dataplane uses for `q` (lb-ebpf `service::lookup`): pods
/// and the node take an `IN_CLUSTER_ALT` frontend's in-cluster entry.
fn lookup_service<A: Family>(q: &Query, c: &MapContents<A>) -> Option<ServiceV4> {
    let key = service_key::<A>(q)?;
    let svc = *c.services.get(&key)?;
    if q.origin != Origin::External && svc.flags & service_flags::IN_CLUSTER_ALT != 0 {
        let alt = ServiceKey { scope: scope::IN_CLUSTER, ..key };
        if let Some(a) = c.services.get(&alt) {
            return Some(*a);
        }
    }
    Some(svc)
}

fn flow_key<A: Family>(q: &Query, sport: u16) -> Option<FlowKey<A>> {
    Some(FlowKey {
        src_addr: A::from_ip(q.src)?,
        dst_addr: A::from_ip(q.dst)?,
        src_port: sport.to_be_bytes(),
        dst_port: q.dport.to_be_bytes(),
        proto: q.proto,
        _pad: [0; 3],
    })
}

/// The client address selection keys on: a socket has none yet, so the
/// socket balancer uses the zero address (sock.rs).
fn client_addr<A: Family>(q: &Query) -> Option<A> {
    if q.origin == Origin::Node {
        Some(A::ZERO)
    } else {
        A::from_ip(q.src)
    }
}


pub fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        n => format!("proto {n}"),
    }
}

fn flag_names(flags: u8) -> Vec<&'static str> {
    [
        (service_flags::FALLBACK_TERMINATING, "fallback-terminating"),
        (service_flags::SOURCE_RANGES, "source-ranges"),
        (service_flags::LOCAL_ELSEWHERE, "local-elsewhere"),
        (service_flags::IN_CLUSTER_ALT, "in-cluster-alt"),
        (service_flags::LB_MODE, "own-lb-mode"),
        (service_flags::DSR_TCP, "dsr-tcp"),
        (service_flags::DSR_UDP, "dsr-udp"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

fn backend_addr<A: Addr>(b: &Backend<A>) -> SocketAddr {
    sock(b.addr, b.port)
}

fn sock<A: Addr>(addr: A, port: [u8; 2]) -> SocketAddr {
    SocketAddr::new(addr.to_ip(), u16::from_be_bytes(port))
}

/// How the socket balancer refuses (lb-ebpf sock.rs).
const SOCK_REFUSED: &str = "connect() refused (ECONNREFUSED; EPERM on kernels before 5.18)";

/// Where and how a node socket's SCTP association to a service address
/// is refused (lb-ebpf node_sctp.rs).
const NODE_SCTP_HOOK: &str = "tc egress of the uplink (no socket program runs for SCTP)";
const NODE_SCTP_REFUSED: &str = "the node's INIT answered with an ABORT: connect() refused (ECONNREFUSED); SCTP is not balanced for node sockets";

/// Why a packet could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the source {src} and the destination {dst} are of different families")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error(transparent)]
    Maps(#[from] crate::dataplane::Error),
}

/// Reads the pinned maps of the destination's family and explains `q`.
pub fn explain_pinned(dp: &Dataplane, q: &Query, names: &crate::ops::names::Names) -> Result<Explanation, Error> {
    // A node socket's IPv4-mapped destination is balanced over IPv4 (lb-ebpf sock.rs).
    if let (Origin::Node, IpAddr::V6(dst)) = (q.origin, q.dst) {
        if let Some(v4) = dst.to_ipv4_mapped() {
            let src = match q.src.to_canonical() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            let q4 = Query { src: src.into(), dst: v4.into(), ..*q };
            let mut e = explain(&q4, &Snapshot::<Addr4>::read(dp, &q4)?, names);
            e.notes.insert(0, format!("{dst} is IPv4-mapped: a dual-stack socket is balanced over IPv4 as {v4}, its backend written back as ::ffff:<backend>"));
            return Ok(e);
        }
    }
    if IpFamily::of(q.src) != IpFamily::of(q.dst) {
        return Err(Error::MixedFamilies { src: q.src, dst: q.dst });
    }
    Ok(match IpFamily::of(q.dst) {
        IpFamily::IPv4 => explain(q, &Snapshot::<Addr4>::read(dp, q)?, names),
        IpFamily::IPv6 => explain(q, &Snapshot::<Addr6>::read(dp, q)?, names),
    })
}

/// Decides what the dataplane does with `q`, from `s` (the maps of `q`'s family).
pub fn explain<A: Family>(q: &Query, s: &Snapshot<A>, names: &crate::ops::names::Names) -> Explanation {
    let dst = crate::family::socket(q.dst, q.dport);
    let packet = match q.sport {
        Some(p) => format!("{} -> {dst}/{}", crate::family::socket(q.src, p), proto_name(q.proto)),
        None => format!("{} -> {dst}/{}", q.src, proto_name(q.proto)),
    };
    let mut e = Explanation {
        origin: q.origin,
        packet,
        hook: q.origin.hook(),
        frontend: None,
        service: None,
        notes: Vec::new(),
        source_range: None,
        conntrack: None,
        candidates: Vec::new(),
        selection: None,
        verdict: Verdict { action: Action::Pass, backend: None, snat: None, reason: String::new() },
    };
    // No socket program runs for SCTP (lb-ebpf node_sctp.rs): a node's INIT
    // to any service address is refused at tc egress, served or not.
    if q.origin == Origin::Node && q.proto == IPPROTO_SCTP && (lookup_service(q, &s.contents).is_some() || unserved(q, &s.contents).is_some()) {
        e.hook = NODE_SCTP_HOOK;
        e.verdict = Verdict { action: Action::Reject, backend: None, snat: None, reason: NODE_SCTP_REFUSED.into() };
        return e;
    }
    if gated(q, s) {
        e.notes.push(format!(
            "port {} is no frontend's (service_ports): XDP passes a packet to it without IP options or extension headers at its first look, before any lookup",
            q.dport
        ));
        if lookup_service(q, &s.contents).is_some() {
            e.notes.push("yet a frontend has it: the bitmap is stale (the agent marks a port before it writes a frontend); a restart of the agent marks it again".into());
        }
        e.verdict.reason = "not a service port".into();
        return e;
    }
    let Some(svc) = lookup_service(q, &s.contents) else {
        if let Some(v) = unserved(q, &s.contents) {
            e.verdict = v;
            return e;
        }
        e.notes.push(no_frontend_reason(q, &s.contents));
        e.verdict.reason = "not a service frontend".into();
        return e;
    };
    e.service = names.get(&svc.id).map(|n| n.to_string());
    e.frontend = Some(Frontend {
        service_id: svc.id,
        algorithm: algorithm_name(svc.algorithm),
        slots: svc.count,
        affinity_timeout_s: svc.affinity_timeout_s,
        flags: flag_names(svc.flags),
    });
    e.candidates = candidates(&svc, &s.contents);
    if svc.flags & service_flags::FALLBACK_TERMINATING != 0 {
        e.notes.push("no ready endpoint: new flows go to serving-but-terminating ones".into());
    }
    if q.origin == Origin::Node {
        return socket(q, &svc, s, e);
    }

    // service.rs: an established flow first.
    if let (Some(f), Some(_)) = (s.flow, q.sport) {
        let est = established(q, &f, s);
        let used = est.used;
        e.conntrack = Some(est);
        if used {
            let b = s.contents.backends[&f.backend_id];
            let snat = e.conntrack.as_ref().and_then(|c| c.snat).map(|a| a.to_string());
            e.verdict = Verdict { action: Action::Dnat, backend: Some(backend_addr(&b)), snat, reason: "established flow".into() };
            return e;
        }
    }
    // Source ranges guard new flows.
    if svc.flags & service_flags::SOURCE_RANGES != 0 {
        match source_range(svc.id, q.src, &s.contents) {
            Some(r) => e.source_range = Some(r),
            None => {
                e.source_range = Some("denied".into());
                e.verdict = Verdict {
                    action: Action::Drop,
                    backend: None,
                    snat: None,
                    reason: "client outside loadBalancerSourceRanges".into(),
                };
                return e;
            }
        }
    }
    match pick(q, &svc, s) {
        Pick::Chosen { backend_id, how } => match s.contents.backends.get(&backend_id) {
            Some(b) => {
                e.selection = Some(how);
                let hairpin = q.origin == Origin::Pod && b.addr.to_ip() == q.src;
                if hairpin {
                    e.notes.push("the client is its own backend: its source becomes 169.254.42.1 (hairpin)".into());
                }
                // conntrack::snat_for: an external client's flow to a backend on
                // another node leaves with this node's address as source.
                // Unless it goes with DSR (mode.rs): the client is kept.
                let remote = q.origin == Origin::External && b.is_remote();
                let dsr = remote && lb_common::dsr::uses_dsr(svc.flags, s.config.flags, q.proto);
                let snat = (remote && !dsr && s.nat.addr != A::ZERO).then(|| {
                    format!("{}-{}", crate::family::socket(lb_common::Addr::to_ip(s.nat.addr), s.nat.port_min), s.nat.port_max)
                });
                let reason = if dsr && A::FAMILY == IpFamily::IPv4 {
                    "new flow to a backend on another node: DSR (the client address kept, the service in an IPv4 option; the backend's node answers the client)"
                } else if dsr {
                    "new flow to a backend on another node: DSR (the client address kept, the service in an IPv6 destination options header; the backend's node answers the client)"
                } else if snat.is_some() {
                    "new flow to a backend on another node: SNAT so the reply returns here (refused if no port is free)"
                } else {
                    "new flow"
                };
                e.verdict = Verdict { action: Action::Dnat, backend: Some(backend_addr(b)), snat, reason: reason.into() };
            }
            None => no_backend(q, &svc, &mut e, "the chosen slot's backend is gone (agent mid-update)"),
        },
        Pick::OneOf(how) => {
            e.selection = Some(how);
            let reason = format!("new flow to one of {} backends", e.candidates.len());
            e.verdict = Verdict { action: Action::Dnat, backend: None, snat: None, reason };
        }
        Pick::Nothing(why) => no_backend(q, &svc, &mut e, why),
    }
    e
}

/// The dataplane's answer to a new flow without a backend (xdp.rs/tc.rs
/// with refuse.rs): a TCP SYN gets a reset, and from a pod a UDP datagram
/// or an SCTP packet an ICMP port unreachable, unless the frontend's Local policy has
/// endpoints elsewhere; anything else is dropped.
fn no_backend(q: &Query, svc: &ServiceV4, e: &mut Explanation, why: &str) {
    let elsewhere = svc.flags & service_flags::LOCAL_ELSEWHERE != 0;
    if elsewhere {
        e.notes.push("traffic policy Local: no usable endpoint on this node, some on other nodes".into());
    }
    e.verdict = if q.proto == IPPROTO_TCP && !elsewhere {
        Verdict { action: Action::Reject, backend: None, snat: None, reason: format!("{why}: TCP reset") }
    } else if (q.proto == IPPROTO_UDP || q.proto == IPPROTO_SCTP) && !elsewhere && q.origin == Origin::Pod {
        Verdict { action: Action::Reject, backend: None, snat: None, reason: format!("{why}: ICMP port unreachable") }
    } else if elsewhere {
        let reason = format!("{why}: dropped (kube-proxy drops Local traffic with endpoints only elsewhere)");
        Verdict { action: Action::Drop, backend: None, snat: None, reason }
    } else {
        Verdict { action: Action::Drop, backend: None, snat: None, reason: format!("{why}: dropped") }
    };
}

/// sock.rs: the socket balancer rewrites connect()'s destination or refuses
/// it; it sees no conntrack, no source ranges, and no source port.
fn socket<A: Family>(q: &Query, svc: &ServiceV4, s: &Snapshot<A>, mut e: Explanation) -> Explanation {
    e.notes.push("host sockets: balanced once at connect(); conntrack and source ranges do not apply".into());
    match pick(q, svc, s) {
        Pick::Chosen { backend_id, how } if s.contents.backends.contains_key(&backend_id) => {
            e.selection = Some(how);
            let b = s.contents.backends[&backend_id];
            e.verdict = Verdict { action: Action::Dnat, backend: Some(backend_addr(&b)), snat: None, reason: "connect() rewritten".into() };
        }
        Pick::OneOf(how) => {
            e.selection = Some(how);
            let reason = format!("connect() rewritten to one of {} backends", e.candidates.len());
            e.verdict = Verdict { action: Action::Dnat, backend: None, snat: None, reason };
        }
        _ => {
            let reason = format!("no backend: {SOCK_REFUSED}");
            e.verdict = Verdict { action: Action::Reject, backend: None, snat: None, reason };
        }
    }
    e
}

/// The backends in the service's slots 1..=count, with their share.
fn candidates<A: Addr>(svc: &ServiceV4, c: &MapContents<A>) -> Vec<Candidate> {
    let mut share: BTreeMap<BackendId, u32> = BTreeMap::new();
    for slot in 1..=svc.count {
        if let Some(id) = c.slots.get(&SlotKey { service_id: svc.id, slot }) {
            *share.entry(*id).or_default() += 1;
        }
    }
    share
        .into_iter()
        .filter_map(|(id, slots)| {
            let b = c.backends.get(&id)?;
            let state = if b.state == backend_state::TERMINATING { "terminating" } else { "active" };
            Some(Candidate { id, addr: backend_addr(b), state, remote: b.is_remote(), weight: b.weight, slots })
        })
        .collect()
}

/// conntrack::established: the entry holds while it is a live forward entry
/// whose backend is unchanged (a new TCP connection does not reuse a
/// closing one).
fn established<A: Addr>(q: &Query, f: &Flow<A>, s: &Snapshot<A>) -> Established {
    let idle = s.now_ns.saturating_sub(f.last_seen_ns);
    let closing = f.flags & flow_flags::CLOSING != 0;
    let timeout = if closing {
        s.config.closing_timeout_s
    } else {
        s.config.idle_timeout_s(q.proto)
    } as u64
        * NS;
    let backend = sock(f.nat_addr, f.nat_port);
    let same = s.contents.backends.get(&f.backend_id).is_some_and(|b| b.addr == f.nat_addr && b.port == f.nat_port);
    let (used, note) = if f.direction != direction::FORWARD {
        (false, "a reply-direction entry".to_string())
    } else if idle > timeout {
        (false, "expired: a new flow".into())
    } else if q.proto != IPPROTO_UDP && closing {
        (false, "closing: a new SYN (SCTP: INIT) starts a new flow".into())
    } else if !same {
        (false, "its backend is gone: re-balanced as a new flow".into())
    } else {
        (true, "live: packets follow it".into())
    };
    let snat = (f.flags & flow_flags::SNAT != 0).then(|| sock(f.peer_addr, f.peer_port));
    Established { backend_id: f.backend_id, backend, idle_s: idle / NS, closing, snat, used, note }
}

/// The ranges of `service_id` (0: the service CIDRs) that contain `ip`,
/// as (prefix length, network).
fn ranges_holding<A: Addr>(service_id: u32, ip: IpAddr, c: &MapContents<A>) -> impl Iterator<Item = (u8, IpAddr)> + '_ {
    c.source_ranges
        .keys()
        .filter(move |(_, r)| r.service_id == service_id.to_be_bytes())
        .filter_map(move |(len, r)| {
            let bits = u8::try_from(len.checked_sub(32)?).ok()?;
            cidr::contains((r.addr.to_ip(), bits), ip).then_some((bits, r.addr.to_ip()))
        })
}

/// The range of `service_id` that contains `src` (longest first), if any.
fn source_range<A: Addr>(service_id: u32, src: IpAddr, c: &MapContents<A>) -> Option<String> {
    ranges_holding(service_id, src, c).max_by_key(|(bits, _)| *bits).map(|(bits, net)| format!("{net}/{bits}"))
}

enum Pick {
    Chosen { backend_id: BackendId, how: String },
    OneOf(String),
    Nothing(&'static str),
}

/// select::pick_for: affinity first, then the algorithm.
fn pick<A: Family>(q: &Query, svc: &ServiceV4, s: &Snapshot<A>) -> Pick {
    if svc.count == 0 {
        return Pick::Nothing("no backend");
    }
    let slot_backend = |slot| s.contents.slots.get(&SlotKey { service_id: svc.id, slot }).copied();
    if svc.affinity_timeout_s != 0 {
        if let Some(a) = s.affinity {
            let idle = s.now_ns.saturating_sub(a.last_used_ns);
            let live = idle <= svc.affinity_timeout_s as u64 * NS;
            if live && a.slot <= svc.count && slot_backend(a.slot) == Some(a.backend_id) {
                let how = format!("ClientIP affinity entry (slot {}, idle {} s of {} s)", a.slot, idle / NS, svc.affinity_timeout_s);
                return Pick::Chosen { backend_id: a.backend_id, how };
            }
        }
    }
    let name = algorithm_name(svc.algorithm);
    // Every slot naming one backend: whatever the algorithm, that one.
    let first = slot_backend(1);
    if first.is_some() && (2..=svc.count).all(|slot| slot_backend(slot) == first) {
        if let Some(backend_id) = first {
            return Pick::Chosen { backend_id, how: format!("{name}: a single backend") };
        }
    }
    match (svc.algorithm, q.sport) {
        (algorithm::MAGLEV, Some(sport)) if q.origin != Origin::Node => {
            let Some(src) = A::from_ip(q.src) else { return Pick::Nothing("a source of the other family") };
            // An IPv6 client is folded to 4 bytes first, as in select.rs.
            let word = lb_ebpf::hash::fold(src.octets());
            let h = lb_ebpf::hash::flow_hash(word, sport.to_be_bytes(), q.dport.to_be_bytes(), q.proto);
            let slot = h % svc.count + 1;
            match slot_backend(slot) {
                Some(backend_id) => Pick::Chosen { backend_id, how: format!("maglev: flow hash {h:#010x} -> slot {slot} of {}", svc.count) },
                None => Pick::Nothing("empty Maglev slot"),
            }
        }
        (algorithm::MAGLEV, _) => Pick::OneOf("maglev: depends on the source port (give SRC:PORT)".into()),
        (algorithm::ROUND_ROBIN, _) => Pick::OneOf("round-robin: the next slot in turn".into()),
        _ => Pick::OneOf(format!("{name}: chosen per flow")),
    }
}

/// lb-ebpf `unserved.rs`, for pods and node sockets only: a ClusterIP's
/// unserved port is refused, an unallocated service-CIDR address dropped
/// (the socket balancer refuses both).
fn unserved<A: Family>(q: &Query, c: &MapContents<A>) -> Option<Verdict> {
    if q.origin == Origin::External {
        return None;
    }
    let refused = c.services.get(&ServiceKey::address(A::from_ip(q.dst)?)).is_some_and(|v| v.flags & service_flags::UNSERVED_REFUSED != 0);
    let in_cidr = || ranges_holding(0, q.dst, c).next().is_some();
    let (action, reason) = if refused {
        let how = match (q.origin, q.proto) {
            (Origin::Node, _) => SOCK_REFUSED,
            (_, IPPROTO_TCP) => "TCP reset",
            (_, IPPROTO_UDP | IPPROTO_SCTP) => "ICMP port unreachable",
            _ => "dropped",
        };
        let action = if how == "dropped" { Action::Drop } else { Action::Reject };
        (action, format!("{} is a ClusterIP that does not serve {}/{}: {how}", q.dst, q.dport, proto_name(q.proto)))
    } else if in_cidr() {
        if q.origin == Origin::Node {
            (Action::Reject, format!("{} is inside the service CIDR but no Service has it: {SOCK_REFUSED}", q.dst))
        } else {
            (Action::Drop, format!("{} is inside the service CIDR but no Service has it: dropped", q.dst))
        }
    } else {
        return None;
    };
    Some(Verdict { action, backend: None, snat: None, reason })
}

/// lb-ebpf `gate.rs`: whether XDP passes `q` before any lookup, its
/// destination port being no frontend's and the packet no SNAT reply.
fn gated<A: Family>(q: &Query, s: &Snapshot<A>) -> bool {
    let snat_reply = s.nat.addr != A::ZERO && s.nat.addr.to_ip() == q.dst && s.nat.in_range(q.dport);
    q.origin == Origin::External && s.port_marked == Some(false) && matches!(q.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) && !snat_reply
}

/// Why no frontend matched: another port or protocol of a service address,
/// or an address the maps do not know.
fn no_frontend_reason<A: Addr>(q: &Query, c: &MapContents<A>) -> String {
    let others: Vec<String> = c
        .services
        .keys()
        .filter(|k| k.addr.to_ip() == q.dst && !k.is_address())
        .map(|k| format!("{}/{}", u16::from_be_bytes(k.port), proto_name(k.proto)))
        .collect();
    if others.is_empty() {
        format!("{} is no service address here: the packet goes to the stack", q.dst)
    } else {
        format!(
            "{} is a service address, but not on {}/{} (it serves {}): the packet goes to the stack",
            q.dst,
            q.dport,
            proto_name(q.proto),
            others.join(", ")
        )
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "packet     {} (from {:?})", self.packet, self.origin)?;
        writeln!(f, "hook       {}", self.hook)?;
        match &self.frontend {
            Some(fe) => {
                let name = self.service.as_deref().unwrap_or("(name unknown)");
                write!(f, "frontend   service id {} {name}: {}, {} slots", fe.service_id, fe.algorithm, fe.slots)?;
                if fe.affinity_timeout_s > 0 {
                    write!(f, ", ClientIP affinity {}s", fe.affinity_timeout_s)?;
                }
                if !fe.flags.is_empty() {
                    write!(f, ", flags {}", fe.flags.join(","))?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, "frontend   none")?,
        }
        for n in &self.notes {
            writeln!(f, "note       {n}")?;
        }
        if let Some(r) = &self.source_range {
            writeln!(f, "source     loadBalancerSourceRanges: {r}")?;
        }
        if let Some(c) = &self.conntrack {
            let snat = c.snat.map(|a| format!(", SNAT source {a}")).unwrap_or_default();
            writeln!(f, "conntrack  backend {} (id {}){snat}, idle {} s: {}", c.backend, c.backend_id, c.idle_s, c.note)?;
        }
        let mut candidates = Table::new(&[left("", 10), left("", 21), left("", 8), left("", 11), left("", 6), left("", 10), left("", 0)]);
        for c in &self.candidates {
            let place = if c.remote { "remote" } else { "local" };
            candidates.row([
                "backend".into(),
                c.addr.to_string(),
                format!("id {}", c.id),
                c.state.to_string(),
                place.into(),
                format!("weight {}", c.weight),
                format!("slots {}", c.slots),
            ]);
        }
        write!(f, "{candidates}")?;
        if let Some(s) = &self.selection {
            writeln!(f, "selection  {s}")?;
        }
        let v = &self.verdict;
        match (&v.action, v.backend) {
            (Action::Dnat, Some(b)) => match &v.snat {
                Some(src) => writeln!(f, "verdict    DNAT to {b}, SNAT to {src} ({})", v.reason),
                None => writeln!(f, "verdict    DNAT to {b} ({})", v.reason),
            },
            (a, _) => writeln!(f, "verdict    {} ({})", format!("{a:?}").to_uppercase(), v.reason),
        }
    }
}

/// Parses `ADDR[:PORT]` (source): `10.0.0.1`, `10.0.0.1:4000`, `fd00::1`,
/// `[fd00::1]:4000`.
pub fn parse_source(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    let bare = s.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(a) => Ok((a, None)),
        Err(_) => Err(format!("bad source {s:?} (expected IP[:PORT], an IPv6 address with a port in brackets: [fd00::1]:4000)")),
    }
}

/// Parses `ADDR:PORT[/tcp|udp|sctp]` (destination; TCP by default; IPv6 in
/// brackets: `[fd00::1]:80/udp`).
pub fn parse_destination(s: &str) -> Result<(IpAddr, u16, u8), String> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) => match p.to_ascii_lowercase().as_str() {
            "tcp" => (r, IPPROTO_TCP),
            "udp" => (r, lb_common::IPPROTO_UDP),
            "sctp" => (r, IPPROTO_SCTP),
            other => return Err(format!("unknown protocol {other:?} (tcp, udp or sctp)")),
        },
        None => (s, IPPROTO_TCP),
    };
    let (a, p) = rest.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected ADDR:PORT[/PROTO]"))?;
    let bare = a.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
    let addr: IpAddr = match bare {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).map_err(|_| format!("bad destination address {a:?}"))?,
        None => a.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| format!("bad destination address {a:?} (an IPv6 address goes in brackets: [fd00::1]:80)"))?,
    };
    let port: u16 = p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("bad destination port {p:?}"))?;
    Ok((addr, port, proto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{BackendV4, BackendV6, FlowV4, ServiceKeyV4, ServiceKeyV6, SourceRangeV4, SourceRangeV6};

    fn snapshot() -> Snapshot {
        let mut c = MapContents::default();
        let key = |a: [u8; 4], p: u16| ServiceKeyV4 { addr: a, port: p.to_be_bytes(), proto: 6, scope: 0 };
        let svc = |id, count, algorithm, flags| ServiceV4 { id, count, algorithm, flags, _pad: [0; 2], affinity_timeout_s: 0 };
        c.services.insert(key([10, 96, 0, 10], 80), svc(1, 2, algorithm::MAGLEV, 0));
        c.services.insert(key([10, 96, 0, 11], 80), svc(2, 0, algorithm::RANDOM, 0));
        c.services.insert(key([10, 96, 0, 12], 80), svc(3, 0, algorithm::RANDOM, service_flags::LOCAL_ELSEWHERE));
        c.services.insert(key([203, 0, 113, 1], 80), svc(4, 1, algorithm::RANDOM, service_flags::SOURCE_RANGES));
        for (id, last) in [(1u32, 11u8), (2, 12)] {
            c.backends.insert(id, BackendV4 { addr: [10, 0, 2, last], port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() });
            c.slots.insert(SlotKey { service_id: 1, slot: id }, id);
        }
        c.slots.insert(SlotKey { service_id: 4, slot: 1 }, 2);
        c.source_ranges.insert((32 + 24, SourceRangeV4 { service_id: 4u32.to_be_bytes(), addr: [192, 168, 1, 0] }), 1);
        Snapshot { contents: c, now_ns: 1_000 * NS, ..Default::default() }
    }

    fn q(src: &str, dst: &str) -> Query {
        let (src, sport) = parse_source(src).unwrap();
        let (dst, dport, proto) = parse_destination(dst).unwrap();
        Query { origin: Origin::External, src, sport, dst, dport, proto }
    }

    fn verdict(query: Query) -> (Action, Option<String>) {
        let e = explain(&query, &snapshot(), &Default::default());
        (e.verdict.action, e.verdict.backend.map(|b| b.to_string()))
    }

    #[test]
    fn verdicts_follow_the_forward_path() {
        // Maglev with a source port: the hash decides, as in select.rs.
        let h = lb_ebpf::hash::flow_hash([192, 168, 1, 2], 41000u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
        let want = format!("10.0.2.{}:8080", 10 + h % 2 + 1);
        assert_eq!(verdict(q("192.168.1.2:41000", "10.96.0.10:80")), (Action::Dnat, Some(want)));
        assert_eq!(verdict(q("192.168.1.2", "10.96.0.10:80")), (Action::Dnat, None), "no port, no hash");
        assert_eq!(verdict(q("192.168.1.2:1", "10.96.0.11:80")), (Action::Reject, None));
        assert_eq!(verdict(q("192.168.1.2:1", "10.96.0.11:80/udp")).0, Action::Pass, "no UDP frontend");
        assert_eq!(verdict(q("192.168.1.2:1", "10.96.0.12:80")), (Action::Drop, None), "Local, endpoints elsewhere");
        assert_eq!(verdict(q("192.168.1.2:1", "203.0.113.1:80")), (Action::Dnat, Some("10.0.2.12:8080".into())));
        assert_eq!(verdict(q("192.168.9.2:1", "203.0.113.1:80")), (Action::Drop, None), "outside the ranges");
        let e = explain(&q("192.168.1.2:1", "10.96.0.10:81"), &snapshot(), &Default::default());
        assert_eq!(e.notes, ["10.96.0.10 is a service address, but not on 81/TCP (it serves 80/TCP): the packet goes to the stack"]);
    }

    #[test]
    fn a_port_no_frontend_has_is_passed_at_xdp_before_any_lookup() {
        let mut s = snapshot();
        s.port_marked = Some(false);
        let e = explain(&q("192.168.1.2:1", "10.96.0.10:81"), &s, &Default::default());
        assert_eq!((e.verdict.action, e.verdict.reason.as_str(), e.frontend.is_none()), (Action::Pass, "not a service port", true));
        assert!(e.notes[0].starts_with("port 81 is no frontend's (service_ports)"), "{:?}", e.notes);
        // A SNAT reply (this node's address, a port of the range) is looked up.
        s.nat = NatConfig { addr: [192, 168, 1, 1], port_min: 61000, port_max: 65535 };
        let e = explain(&q("10.0.2.11:8080", "192.168.1.1:61001"), &s, &Default::default());
        assert_eq!(e.verdict.reason, "not a service frontend");
        // From a pod or the node, nothing is gated; nor is a marked port.
        let pod = explain(&Query { origin: Origin::Pod, ..q("10.244.0.5:1", "10.96.0.10:80") }, &s, &Default::default());
        assert_eq!(pod.verdict.action, Action::Dnat);
        s.port_marked = Some(true);
        assert_eq!(explain(&q("192.168.1.2:1", "10.96.0.10:80"), &s, &Default::default()).verdict.action, Action::Dnat);
        // A frontend on an unmarked port: what the dataplane does (pass), said so.
        s.port_marked = Some(false);
        let e = explain(&q("192.168.1.2:1", "10.96.0.10:80"), &s, &Default::default());
        assert_eq!((e.verdict.action, e.notes.len()), (Action::Pass, 2), "{:?}", e.notes);
    }

    #[test]
    fn a_node_sctp_association_to_a_service_address_is_refused_by_the_abort() {
        let mut s = snapshot();
        let key = ServiceKeyV4 { addr: [10, 96, 0, 30], port: 3868u16.to_be_bytes(), proto: IPPROTO_SCTP, scope: 0 };
        s.contents.services.insert(key, ServiceV4 { id: 5, count: 2, algorithm: algorithm::RANDOM, flags: 0, _pad: [0; 2], affinity_timeout_s: 0 });
        let node = |dst: &str| explain(&Query { origin: Origin::Node, ..q("192.168.1.1:40000", dst) }, &s, &Default::default());
        let e = node("10.96.0.30:3868/sctp");
        assert_eq!((e.verdict.action, e.verdict.backend, e.hook), (Action::Reject, None, NODE_SCTP_HOOK));
        assert_eq!(e.verdict.reason, NODE_SCTP_REFUSED);
        assert_eq!(node("10.0.2.11:3869/sctp").verdict.action, Action::Pass, "not a service address: left alone");
        assert_eq!(node("10.96.0.10:80").verdict.action, Action::Dnat, "TCP is balanced at connect()");
    }

    #[test]
    fn a_live_flow_wins_and_a_closing_one_does_not() {
        let mut s = snapshot();
        let flow = FlowV4 { backend_id: 2, service_id: 1, nat_addr: [10, 0, 2, 12], nat_port: 8080u16.to_be_bytes(), last_seen_ns: 999 * NS, ..Default::default() };
        s.flow = Some(flow);
        let query = q("192.168.1.2:41000", "10.96.0.10:80");
        let e = explain(&query, &s, &Default::default());
        assert_eq!((e.verdict.action, e.verdict.backend), (Action::Dnat, Some("10.0.2.12:8080".parse().unwrap())));
        assert_eq!(e.verdict.reason, "established flow");
        s.flow = Some(FlowV4 { flags: flow_flags::CLOSING, ..flow });
        let e = explain(&query, &s, &Default::default());
        assert_eq!(e.verdict.reason, "new flow");
        assert!(!e.conntrack.unwrap().used);
    }

    #[test]
    fn a_remote_backend_is_snated_or_reached_with_dsr_as_the_modes_say() {
        let mut s = snapshot();
        for b in s.contents.backends.values_mut() {
            b.flags = lb_common::backend_flags::REMOTE;
        }
        s.nat = NatConfig { addr: [192, 168, 1, 1], port_min: 61000, port_max: 65535 };
        let query = q("192.168.1.2:41000", "10.96.0.10:80");
        let e = explain(&query, &s, &Default::default());
        assert_eq!(e.verdict.snat.as_deref(), Some("192.168.1.1:61000-65535"));
        s.config.flags = lb_common::config_flags::DSR_TCP;
        let e = explain(&query, &s, &Default::default());
        assert_eq!(e.verdict.snat, None);
        assert!(e.verdict.reason.contains("DSR"), "{}", e.verdict.reason);
        // A service that chose snat for itself overrides the node's dsr.
        for v in s.contents.services.values_mut() {
            v.flags |= service_flags::LB_MODE;
        }
        assert!(explain(&query, &s, &Default::default()).verdict.snat.is_some());
    }

    /// The same decisions over the IPv6 maps.
    #[test]
    fn ipv6_packets_are_explained_from_the_ipv6_maps() {
        let mut c = MapContents::<Addr6>::default();
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let key = |addr, port: u16| ServiceKeyV6 { addr, port: port.to_be_bytes(), proto: 6, scope: 0 };
        let svc = |id, count, flags| ServiceV4 { id, count, algorithm: algorithm::RANDOM, flags, _pad: [0; 2], affinity_timeout_s: 0 };
        c.services.insert(key(a("fd00:96::10"), 80), svc(5, 1, 0));
        c.services.insert(key(a("2001:db8:f::1"), 80), svc(6, 1, service_flags::SOURCE_RANGES));
        c.services.insert(ServiceKeyV6::address(a("fd00:96::10")), svc(0, 0, service_flags::UNSERVED_REFUSED));
        c.backends.insert(7, BackendV6 { addr: a("fd00:244::7"), port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() });
        for id in [5, 6] {
            c.slots.insert(SlotKey { service_id: id, slot: 1 }, 7);
        }
        c.source_ranges.insert((32 + 48, SourceRangeV6 { service_id: 6u32.to_be_bytes(), addr: a("2001:db8:c::") }), 1);
        c.source_ranges.insert((32 + 108, SourceRangeV6::service_cidr(a("fd00:96::"))), 1);
        let s = Snapshot { contents: c, now_ns: 1_000 * NS, ..Default::default() };
        let run = |origin, src: &str, dst: &str| {
            let query = Query { origin, ..q(src, dst) };
            let e = explain(&query, &s, &Default::default());
            (e.verdict.action, e.verdict.backend.map(|b| b.to_string()), e.packet)
        };
        let backend = Some("[fd00:244::7]:8080".to_string());
        assert_eq!(run(Origin::Pod, "[fd00:244::1]:40000", "[fd00:96::10]:80"), (Action::Dnat, backend.clone(), "[fd00:244::1]:40000 -> [fd00:96::10]:80/TCP".into()));
        assert_eq!(run(Origin::External, "[2001:db8:c:1::9]:1", "[2001:db8:f::1]:80").0, Action::Dnat, "inside 2001:db8:c::/48");
        assert_eq!(run(Origin::External, "[2001:db8:d::9]:1", "[2001:db8:f::1]:80").0, Action::Drop, "outside the ranges");
        assert_eq!(run(Origin::Pod, "[fd00:244::1]:1", "[fd00:96::10]:81").0, Action::Reject, "an unserved port of the ClusterIP");
        assert_eq!(run(Origin::Pod, "[fd00:244::1]:1", "[fd00:96::99]:80").0, Action::Drop, "inside the service CIDR, no Service");
        assert_eq!(run(Origin::External, "[fd00:244::1]:1", "[fd00:96::99]:80").0, Action::Pass, "from outside: the stack decides");
        // Maglev over IPv6: the folded client address, as select.rs hashes it.
        let mut s = s.clone();
        let v = s.contents.services.get_mut(&key(a("fd00:96::10"), 80)).unwrap();
        (v.algorithm, v.count) = (algorithm::MAGLEV, 2);
        s.contents.backends.insert(8, BackendV6 { addr: a("fd00:244::8"), port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() });
        s.contents.slots.insert(SlotKey { service_id: 5, slot: 2 }, 8);
        let e = explain(&Query { origin: Origin::Pod, ..q("[fd00:244::1]:40000", "[fd00:96::10]:80") }, &s, &Default::default());
        let h = lb_ebpf::hash::flow_hash(lb_ebpf::hash::fold(&a("fd00:244::1")), 40000u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
        assert_eq!(e.selection, Some(format!("maglev: flow hash {h:#010x} -> slot {} of 2", h % 2 + 1)));
        let want = if h.is_multiple_of(2) { "[fd00:244::7]:8080" } else { "[fd00:244::8]:8080" };
        assert_eq!(e.verdict.backend.map(|b| b.to_string()).as_deref(), Some(want));
        // A backend on another node: SNATed to the node's IPv6 address, or
        // with DSR (the service in a destination options header) for the
        // protocols the mode says.
        let mut s = s.clone();
        for b in s.contents.backends.values_mut() {
            b.flags = lb_common::backend_flags::REMOTE;
        }
        s.nat = NatConfig { addr: a("fd00:50::11"), port_min: 61000, port_max: 65535 };
        let query = q("[2001:db8:c:1::9]:41000", "[fd00:96::10]:80");
        assert_eq!(explain(&query, &s, &Default::default()).verdict.snat.as_deref(), Some("[fd00:50::11]:61000-65535"));
        s.config.flags = lb_common::config_flags::DSR_TCP;
        let e = explain(&query, &s, &Default::default());
        assert_eq!(e.verdict.snat, None, "hybrid: IPv6 TCP takes DSR");
        assert!(e.verdict.reason.contains("DSR") && e.verdict.reason.contains("IPv6 destination options"), "{}", e.verdict.reason);
    }

    /// IPv6 SCTP: balanced from pods (tc) and from outside (XDP), refused
    /// for the node (the IPv6 ABORT), as lb-ebpf does.
    #[test]
    fn ipv6_sctp_is_balanced_from_pods_and_outside_and_refused_for_the_node() {
        let mut c = MapContents::<Addr6>::default();
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let key = ServiceKeyV6 { addr: a("fd00:96::30"), port: 3868u16.to_be_bytes(), proto: IPPROTO_SCTP, scope: 0 };
        c.services.insert(key, ServiceV4 { id: 5, count: 1, algorithm: algorithm::RANDOM, flags: 0, _pad: [0; 2], affinity_timeout_s: 0 });
        c.backends.insert(7, BackendV6 { addr: a("fd00:244::7"), port: 3869u16.to_be_bytes(), weight: 1, ..Default::default() });
        c.slots.insert(SlotKey { service_id: 5, slot: 1 }, 7);
        let s = Snapshot { contents: c, now_ns: 1_000 * NS, ..Default::default() };
        let run = |origin, src: &str| explain(&Query { origin, ..q(src, "[fd00:96::30]:3868/sctp") }, &s, &Default::default());
        let pod = run(Origin::Pod, "[fd00:244::1]:6000");
        assert_eq!((pod.verdict.action, pod.verdict.backend.map(|b| b.to_string())), (Action::Dnat, Some("[fd00:244::7]:3869".into())));
        let node = run(Origin::Node, "[2001:db8:1::1]:40000");
        assert_eq!((node.verdict.action, node.hook, node.verdict.reason.as_str()), (Action::Reject, NODE_SCTP_HOOK, NODE_SCTP_REFUSED));
        // From outside: balanced at XDP (xdp_lb_v6 hands SCTP to xdp_sctp_v6).
        let outside = run(Origin::External, "[2001:db8:1::2]:5000");
        assert_eq!((outside.verdict.action, outside.verdict.backend.map(|b| b.to_string())), (Action::Dnat, Some("[fd00:244::7]:3869".into())));
    }

    #[test]
    fn arguments_parse_or_say_why_not() {
        assert_eq!(parse_destination("[fd00::1]:80/tcp"), Ok(("fd00::1".parse().unwrap(), 80, 6)));
        assert_eq!(parse_source("[fd00::2]:4000"), Ok(("fd00::2".parse().unwrap(), Some(4000))));
        assert_eq!(parse_source("fd00::2"), Ok(("fd00::2".parse().unwrap(), None)));
        assert!(parse_destination("fd00::1:80").unwrap_err().contains("brackets"));
        assert_eq!(parse_destination("10.96.0.10:53/UDP"), Ok((Ipv4Addr::new(10, 96, 0, 10).into(), 53, 17)));
        assert!(parse_destination("10.96.0.10").unwrap_err().contains("ADDR:PORT"));
        assert_eq!(parse_destination("10.96.0.10:3868/sctp"), Ok((Ipv4Addr::new(10, 96, 0, 10).into(), 3868, 132)));
        assert!(parse_destination("10.96.0.10:80/dccp").unwrap_err().contains("unknown protocol"));
        assert!(parse_source("nope").is_err());
    }
}
