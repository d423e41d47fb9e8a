//! Conntrack: pins every flow to its backend, and remembers how to rewrite
//! its replies. Both directions of a flow are entries of one LRU map.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use lb_common::{counter, direction, flow_flags, Addr, Backend, Config, Flow, FlowKey, NatConfig, Service};

use crate::{
    clock::{now, since, NS},
    family::Family,
    flowkey::{other_key, TOUCH_INTERVAL_NS},
    load,
    family::same,
    maps::{config, snat_exhausted},
    mode,
    parse::{Packet, TCP_FIN, TCP_RST, TCP_SYN},
    stats::count,
    verdict::Verdict,
};

/// Where a new flow's packet entered the node: it decides what may be done
/// to its client end.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An uplink (XDP): the client is outside the node, and its address may
    /// not route back through this node, so a flow to a backend on another
    /// node is SNATed to this node's address.
    External,
    /// A pod's interface (tc ingress): the client's address routes back
    /// through this node, so it is kept; a client chosen as its own backend
    /// becomes a hairpin flow (the hook can send the packet back).
    Pod,
}


/// Where a packet is rewritten to: the service or backend end (`addr`,
/// `port`) and the client end on the far side (`peer_addr`, `peer_port`;
/// equal to the packet's own unless the flow's client port was remapped, the
/// flow is a hairpin or it is SNATed).
#[derive(Clone, Copy)]
pub struct Rewrite<A = [u8; 4]> {
    pub addr: A,
    pub port: [u8; 2],
    pub peer_addr: A,
    pub peer_port: [u8; 2],
    /// How the flow reaches a backend on another node, if it does.
    pub kind: Kind,
}

/// What a flow's packets need besides the rewrite. One field, not two
/// flags: a second `bool` in `Rewrite` changed the layout of the results
/// carrying it, and LLVM then stored an unset register as their padding
/// on an error path, which the verifier refuses ("R1 !read_ok").
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing more.
    Plain,
    /// A SNAT flow: one end of the rewritten packet is this node's own
    /// address (or a service address of it), which the kernel's forwarding
    /// drops as martian, so the hook must forward the packet itself.
    Snat,
    /// A DSR flow: the packet leaves with the service address in an IPv4
    /// option or IPv6 extension header (forward half), or its reply's SYN-ACK gets its MSS lowered
    /// (reply half); see `dsr.rs`.
    Dsr,
}

impl<A> Rewrite<A> {
    #[inline(always)]
    pub fn snat(&self) -> bool {
        self.kind == Kind::Snat
    }

    #[inline(always)]
    pub fn dsr(&self) -> bool {
        self.kind == Kind::Dsr
    }
}

impl<A: Addr> Rewrite<A> {
    #[inline(always)]
    pub fn of(addr: A, port: [u8; 2], e: &Flow<A>) -> Self {
        Self {
            addr,
            port,
            peer_addr: e.peer_addr,
            peer_port: e.peer_port,
            kind: if e.flags & flow_flags::SNAT != 0 {
                Kind::Snat
            } else if e.flags & flow_flags::DSR != 0 {
                Kind::Dsr
            } else {
                Kind::Plain
            },
        }
    }
}

/// The rewrite of `p`'s DSR flow, forward half: what `xdp::run` found or
/// made for it just before it handed the packet to the DSR program.
#[inline(always)]
pub fn dsr_forward<F: Family>(p: &Packet<F::Addr>) -> Option<Rewrite<F::Addr>> {
    let e = F::conntrack().get_ptr(&key_of::<F>(p))?;
    // SAFETY: a live entry of this map, copied out at once.
    let e = unsafe { &*e };
    (e.direction == direction::FORWARD && e.flags & flow_flags::DSR != 0).then(|| Rewrite::of(e.nat_addr, e.nat_port, e))
}

/// The key of the packet's own direction.
#[inline(always)]
pub fn key_of<F: Family>(p: &Packet<F::Addr>) -> FlowKey<F::Addr> {
    F::flow_key(p.src, p.dst, p.sport, p.dport, p.proto)
}

/// Idle timeout of `entry`, from the agent's config (defaults until it is written).
#[inline(always)]
fn timeout_ns<A: Addr>(entry: &Flow<A>, proto: u8) -> u64 {
    let cfg = match config.get(0) {
        Some(c) if c.layout_version != 0 => *c,
        _ => Config::default(),
    };
    let s = if entry.flags & flow_flags::CLOSING != 0 {
        cfg.closing_timeout_s
    } else {
        cfg.idle_timeout_s(proto)
    };
    s as u64 * NS
}

/// Records a packet on `entry`: counters, last-seen time, TCP teardown.
///
/// Returns whether the flow's other half is due a look ([`keep_pair`]): on
/// every packet of a SNAT flow that is not confirmed yet, whose replies
/// cannot be found without it (passed to the stack, a SNAT reply finds no
/// socket and is answered with a reset); for others when the entry's time
/// is refreshed (at most once a second) and when the flow starts closing.
/// Every packet would cost ~35 ns on the established path (measured A/B,
/// `prog_cost`). A confirmed SNAT flow's halves are both in the confirmed
/// table (`confirmed::save` flags them only then), where a packet of
/// either direction that misses conntrack finds its half before it is
/// balanced anew or passed: the once-a-second look then suffices, as for
/// other flows (~14 ns less per packet, `prog_cost`).
#[inline(always)]
fn touch<A: Addr>(entry: &mut Flow<A>, p: &Packet<A>, now: u64) -> bool {
    // Plain adds: a flow is steered to one CPU by RSS, so these rarely race,
    // and an occasional lost increment is cheaper than an atomic per packet.
    entry.packets += 1;
    entry.bytes += p.ip_len as u64;
    let mut due = entry.flags & (flow_flags::SNAT | flow_flags::CONFIRMED) == flow_flags::SNAT;
    if since(now, entry.last_seen_ns) > TOUCH_INTERVAL_NS {
        entry.last_seen_ns = now;
        due = true;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && entry.flags & flow_flags::CLOSING == 0 {
        start_closing(entry);
        due = true;
    }
    due
}

/// Marks a half of a live flow closing. The flow's live count goes down
/// once, with its forward half, whichever end closed first.
#[inline(always)]
fn start_closing<A: Addr>(half: &mut Flow<A>) {
    half.flags |= flow_flags::CLOSING;
    if half.direction == direction::FORWARD {
        load::change(half.backend_id, false);
    }
}

/// The backend an existing forward flow is pinned to, if the flow is live and
/// its backend still exists (a terminating backend keeps its flows).
///
/// Returns `None` for a new flow: no entry, an idle-expired entry, a SYN on a
/// closed connection's tuple, or a backend that is gone (counted as
/// re-balanced: the stale-conntrack blackhole of kube-proxy does not exist here).
#[inline(always)]
pub fn established<F: Family>(key: &FlowKey<F::Addr>, p: &Packet<F::Addr>, now: u64) -> Option<Rewrite<F::Addr>> {
    // A confirmed flow a flood evicted is restored (see `confirmed`).
    // SAFETY: the entry stays valid for this program run; races only lose counts.
    let entry = unsafe { &mut *F::conntrack().get_ptr_mut(key).or_else(|| crate::confirmed::restore::<F>(key, p))? };
    if entry.direction != direction::FORWARD
        || since(now, entry.last_seen_ns) > timeout_ns(entry, p.proto)
        || (p.tcp_flags & TCP_SYN != 0 && entry.flags & flow_flags::CLOSING != 0)
    {
        return None;
    }
    // An empty slot (address 0.0.0.0) never matches: a flow's backend
    // address is never 0.0.0.0.
    let backend = match F::backends().get(entry.backend_id) {
        Some(b) if b.addr == entry.nat_addr && b.port == entry.nat_port => *b,
        _ => {
            count(counter::REBALANCED);
            return None;
        }
    };
    if touch(entry, p, now) {
        keep_pair::<F>(key, entry);
    }
    Some(Rewrite::of(backend.addr, backend.port, entry))
}

/// An address and port, network order.
type AddrPort<A> = (A, [u8; 2]);

/// The (nat, peer) ends the other half of `(key, e)` holds: FORWARD halves
/// rewrite the destination, REPLY halves the source, so the other half's
/// rewrite is this key's far end and its peer this key's near end.
#[inline(always)]
fn other_ends<A: Addr>(key: &FlowKey<A>, e: &Flow<A>) -> (AddrPort<A>, AddrPort<A>) {
    if e.direction == direction::FORWARD {
        ((key.dst_addr, key.dst_port), (key.src_addr, key.src_port))
    } else {
        ((key.src_addr, key.src_port), (key.dst_addr, key.dst_port))
    }
}

/// Keeps both halves of a live flow: looking the other half up marks it
/// recently used (so the LRU evicts a flow's halves together, not one), and
/// a half the LRU took anyway is restored from this one, which holds all
/// of it. A flow with one half would lose its replies (or, worse, have its
/// next packet balanced anew), as Cilium's users saw (cilium#29305, #34833).
/// A closing flow closes as a whole: its other half is marked closing too,
/// so both expire together and a SNAT port is free again after the closing
/// timeout (a half that is gone stays gone).
#[inline(always)]
fn keep_pair<F: Family>(key: &FlowKey<F::Addr>, e: &Flow<F::Addr>) {
    if F::SPLIT {
        keep_pair_call::<F>(key, e)
    } else {
        keep_pair_inline::<F>(key, e)
    }
}

/// [`keep_pair`] with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn keep_pair_call<F: Family>(key: &FlowKey<F::Addr>, e: &Flow<F::Addr>) {
    keep_pair_inline::<F>(key, e)
}

#[inline(always)]
fn keep_pair_inline<F: Family>(key: &FlowKey<F::Addr>, e: &Flow<F::Addr>) {
    // A DSR flow's other half lives on the other node (or nowhere).
    if e.flags & flow_flags::DSR != 0 {
        return;
    }
    let other = other_key::<F>(key, e);
    let closing = e.flags & flow_flags::CLOSING != 0;
    match F::conntrack().get_ptr_mut(&other) {
        Some(o) if closing => {
            let (nat, peer) = other_ends(key, e);
            // SAFETY: a live entry of this map; racing writers only lose a flag.
            unsafe {
                // Only our own other half (the key may have been taken over
                // by another flow, see `create`).
                if (*o).flags & flow_flags::CLOSING == 0 && ((*o).nat_addr, (*o).nat_port) == nat && ((*o).peer_addr, (*o).peer_port) == peer {
                    start_closing(&mut *o);
                    crate::confirmed::forget::<F>(key, &other);
                }
            }
        }
        Some(_) => {}
        None if !closing => {
            // Built in this CPU's slot (see `create`), not on the stack.
            let Some(slot) = F::scratch().get_ptr_mut(0) else { return };
            // SAFETY: this CPU's slot, used by this program run alone.
            let restored = unsafe { &mut *slot };
            let (nat, peer) = other_ends(key, e);
            *restored = *e;
            restored.nat_addr = nat.0;
            restored.nat_port = nat.1;
            restored.peer_addr = peer.0;
            restored.peer_port = peer.1;
            restored.direction = if e.direction == direction::FORWARD { direction::REPLY } else { direction::FORWARD };
            // A confirmed flow's restored half is confirmed too (its copy
            // is in the confirmed table: see `touch`).
            restored.flags = e.flags & (flow_flags::SNAT | flow_flags::CONFIRMED);
            restored.packets = 0;
            restored.bytes = 0;
            if F::conntrack().insert(&other, &*restored, BPF_NOEXIST as u64).is_ok() {
                count(counter::CT_HALF_RESTORED);
            }
        }
        None => {}
    }
}

/// Whether `key` (a reply key) belongs to a live flow other than the one
/// described by `want`: then a new flow must not take it over.
#[inline(always)]
fn clashes<F: Family>(key: &FlowKey<F::Addr>, want: &Flow<F::Addr>, now: u64) -> bool {
    // SAFETY: read-only look at a program-written entry.
    match unsafe { F::conntrack().get(key) } {
        Some(e) => {
            (e.nat_addr, e.nat_port, e.peer_addr, e.peer_port)
                != (want.nat_addr, want.nat_port, want.peer_addr, want.peer_port)
                && e.flags & flow_flags::CLOSING == 0
                && since(now, e.last_seen_ns) <= timeout_ns(e, key.proto)
        }
        None => false,
    }
}

/// Tries this many other client ports when a new flow's reply key clashes.
const REMAP_TRIES: u32 = 4;

/// Gives a clashing reply key another client port (up to [`REMAP_TRIES`]
/// tries); counts whether one was found.
#[inline(always)]
fn remap<F: Family>(reply_key: &mut FlowKey<F::Addr>, reply: &Flow<F::Addr>, now: u64) {
    let mut tries = 0;
    while tries < REMAP_TRIES {
        // An ephemeral port (32768..=61000), as a client stack would pick.
        // SAFETY: helper without preconditions.
        let port = 32768 + (unsafe { bpf_get_prandom_u32() } % 28232) as u16;
        reply_key.dst_port = port.to_be_bytes();
        if !clashes::<F>(reply_key, reply, now) {
            break;
        }
        tries += 1;
    }
    count(if tries < REMAP_TRIES {
        counter::CLIENT_PORT_REMAPPED
    } else {
        counter::CT_CLASH_UNRESOLVED
    });
}

/// Random SNAT ports tried for a new flow before it is refused: the range
/// is shared by every flow to the same backend (address, port, protocol),
/// so a try fails only when that port is live towards that backend.
const SNAT_TRIES: u32 = 16;
/// The tries of a `Family::SPLIT` family (IPv6): the verifier walks every
/// unrolled try for every state that reaches a new flow (IPv6's
/// least-connections scan leaves many), and sixteen took the IPv6 XDP
/// program past its limit of 1M instructions. (`bpf_loop` would need 5.17.)
/// Eight: a new flow is refused only when eight random ports are all live
/// towards its backend (at 80 % of the range in use, one flow in six).
const SNAT_TRIES_SPLIT: u32 = 8;

/// Inserts the reply entry of a new SNAT flow under a free port of the
/// range (its key's destination port); `false` if none of [`SNAT_TRIES`]
/// ([`SNAT_TRIES_SPLIT`] for IPv6) random ports was free. A port held by a dead flow (expired, closing)
/// is taken over.
#[inline(always)]
fn snat_insert<F: Family>(reply_key: &mut FlowKey<F::Addr>, reply: &Flow<F::Addr>, (port_min, port_max): (u16, u16), now: u64) -> bool {
    let span = (port_max.wrapping_sub(port_min)) as u32 + 1;
    for _ in 0..if F::SPLIT { SNAT_TRIES_SPLIT } else { SNAT_TRIES } {
        if snat_port::<F>(reply_key, reply, port_min, span, now) {
            return true;
        }
    }
    false
}

/// One try of [`snat_insert`]: a random port of the range, taken if free
/// or held by a dead flow.
#[inline(always)]
fn snat_port<F: Family>(reply_key: &mut FlowKey<F::Addr>, reply: &Flow<F::Addr>, port_min: u16, span: u32, now: u64) -> bool {
    // SAFETY: helper without preconditions.
    let port = port_min.wrapping_add((unsafe { bpf_get_prandom_u32() } % span) as u16);
    reply_key.dst_port = port.to_be_bytes();
    F::conntrack().insert(&*reply_key, reply, BPF_NOEXIST as u64).is_ok()
        || (!clashes::<F>(reply_key, reply, now) && F::conntrack().insert(&*reply_key, reply, 0).is_ok())
}

/// This node's SNAT settings (address, ports) when a new flow of `origin`
/// to `backend` must be SNATed: an external client's flow to a backend on
/// another node, with SNAT configured for the family. The map value
/// itself, not a copy of its fields: copied, the ports were stored only on
/// the path where SNAT is on, and a verifier that cannot relate the two
/// tests of the address (Linux 6.1) followed the other path to their load.
#[inline(always)]
fn snat_for<F: Family>(origin: Origin, backend: &Backend<F::Addr>) -> Option<&'static NatConfig<F::Addr>> {
    if origin != Origin::External || !backend.is_remote() {
        return None;
    }
    F::nat_config().get(0).filter(|n| snat_on::<F>(n))
}

/// Whether SNAT is on for the family (its address is set), `n` being the
/// map value. Read in words, which the value's alignment allows (the
/// kernel aligns map values to 8 bytes; `addr` leads): compared with
/// `ZERO`, IPv6's zero address was built by a call to memset for every
/// packet that asked (IPv6 non-service packets among them).
#[inline(always)]
fn snat_on<F: Family>(n: &NatConfig<F::Addr>) -> bool {
    let words = (n as *const NatConfig<F::Addr>).cast::<u32>();
    let mut i = 0;
    while i < F::Addr::LEN / 4 {
        // SAFETY: inside `addr`, the first field of an 8-byte aligned map value.
        if unsafe { words.add(i).read() } != 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// Creates both entries of a new flow of `p` to `backend`; returns the
/// rewrite for the packet. A failed insert is counted; the packet is still
/// forwarded. A SNAT flow without a free port is refused (`Err`): its
/// packet must not leave with a source that the reply could not find.
///
/// The reply entry is keyed by what the backend sends back (backend:port →
/// client:port). Two frontends of one backend (a ClusterIP and a NodePort,
/// say) reached from the same client port would share that key, and the
/// backend could not tell the flows apart either: the newer flow then gets
/// another client port (like netfilter's NAT clash resolution).
///
/// A DSR flow (an external flow to a backend on another node whose mode
/// says so, see `mode.rs`) keeps the client's address, and
/// only its forward half is created here; the backend's node makes the
/// reply half from the packets' DSR option ([`record_dsr_reply`]).
///
/// The client end the backend sees: the client itself; for a SNAT flow
/// (see [`Origin::External`]) this node's address and a port of the SNAT
/// range; for a hairpin (see [`Origin::Pod`]) the family's hairpin address.
#[inline(always)]
pub fn create<F: Family>(n: &NewFlow<F::Addr>, backend_id: u32, origin: Origin) -> Result<Rewrite<F::Addr>, Verdict> {
    if !F::SPLIT {
        return create_inline::<F>(n, backend_id, origin);
    }
    match create_call::<F>(n, backend_id, origin) {
        // The forward half it made is still in this CPU's slot.
        // SAFETY: this CPU's slot, used by this program run alone.
        0 => match F::scratch().get_ptr(0) {
            Some(e) => Ok(Rewrite::of(n.backend.addr, n.backend.port, unsafe { &*e })),
            None => Err(Verdict::Drop(counter::CT_INSERT_FAILED)),
        },
        reason => Err(Verdict::Drop(reason)),
    }
}

/// A new flow: its key, packet, service, backend and time (by reference:
/// a BPF call has 5 arguments).
#[derive(Clone, Copy)]
pub struct NewFlow<'a, A: Addr> {
    pub key: &'a FlowKey<A>,
    pub p: &'a Packet<A>,
    pub svc: &'a Service,
    pub backend: &'a Backend<A>,
    pub now: u64,
}

/// [`create`] with a frame of its own (see `Family::SPLIT`): returns 0 (the
/// forward half stays in `Family::scratch` for the caller's rewrite), or the
/// reason the flow is dropped. (A subprogram returning the `Result` would
/// put an enum in its BTF that the kernel refuses: a union member at a
/// non-zero offset.)
#[inline(never)]
fn create_call<F: Family>(n: &NewFlow<F::Addr>, backend_id: u32, origin: Origin) -> u32 {
    match create_inline::<F>(n, backend_id, origin) {
        Ok(_) => 0,
        Err(v) => v.reason(),
    }
}

#[inline(always)]
fn create_inline<F: Family>(n: &NewFlow<F::Addr>, backend_id: u32, origin: Origin) -> Result<Rewrite<F::Addr>, Verdict> {
    let NewFlow { key, p, svc, backend, now } = *n;
    let service_id = svc.id;
    let dsr = origin == Origin::External && backend.is_remote() && mode::dsr(svc.flags, p.proto);
    let snat = if dsr { None } else { snat_for::<F>(origin, backend) };
    let client_addr = match snat {
        Some(n) => n.addr,
        None if origin == Origin::Pod && backend.addr == p.src => F::hairpin(),
        None => p.src,
    };
    let flags = if dsr {
        flow_flags::DSR
    } else if snat.is_some() {
        flow_flags::SNAT
    } else {
        0
    };
    let mut reply_key = F::flow_key(backend.addr, client_addr, backend.port, p.sport, p.proto);
    // Both halves are built in a per-CPU slot, not on the stack (an IPv6
    // flow is 80 bytes; the hooks' frames have no room for one).
    let Some(slot) = F::scratch().get_ptr_mut(0) else {
        return Err(Verdict::Drop(counter::CT_INSERT_FAILED));
    };
    // SAFETY: this CPU's slot, used by this program run alone.
    let reply = unsafe { &mut *slot };
    reply.backend_id = backend_id;
    reply.service_id = service_id;
    reply.nat_addr = p.dst;
    reply.nat_port = p.dport;
    reply.peer_addr = p.src;
    reply.peer_port = p.sport;
    reply.direction = direction::REPLY;
    reply.flags = flags;
    reply._pad = [0; 2];
    reply.created_ns = now;
    reply.last_seen_ns = now;
    reply.packets = 0;
    reply.bytes = 0;
    // The reply entry first: once the forward entry exists, a reply may follow.
    if dsr {
        // Replies never come back through this node.
    } else if let Some(n) = snat {
        if !snat_insert::<F>(&mut reply_key, reply, (n.port_min, n.port_max), now) {
            if let Some(c) = snat_exhausted.get_ptr_mut(backend_id) {
                // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
                unsafe { *c += 1 };
            }
            return Err(Verdict::Drop(counter::DROP_SNAT_EXHAUSTED));
        }
        count(counter::SNAT_NEW);
    } else if F::conntrack().insert(&reply_key, &*reply, BPF_NOEXIST as u64).is_err() {
        // Usually the key is free: the insert that must not replace anything
        // is then the whole job (no lookup first); a key that is taken is
        // looked at.
        if clashes::<F>(&reply_key, reply, now) {
            remap::<F>(&mut reply_key, reply, now);
        }
        // A stale entry or our own flow's is replaced.
        if F::conntrack().insert(&reply_key, &*reply, 0).is_err() {
            count(counter::CT_INSERT_FAILED);
        }
    }
    // The forward half: the same slot, turned around.
    let entry = reply;
    entry.peer_port = reply_key.dst_port;
    entry.peer_addr = client_addr;
    entry.nat_addr = backend.addr;
    entry.nat_port = backend.port;
    entry.direction = direction::FORWARD;
    entry.flags = flags
        | if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            flow_flags::CLOSING
        } else {
            0
        };
    entry.packets = 1;
    entry.bytes = p.ip_len as u64;
    if F::conntrack().insert(key, &*entry, 0).is_err() {
        count(counter::CT_INSERT_FAILED);
    } else if entry.flags & flow_flags::CLOSING == 0 {
        load::change(backend_id, true);
    }
    Ok(Rewrite::of(backend.addr, backend.port, entry))
}

/// Whether `p` may be the reply of a SNAT flow: addressed to this node's
/// SNAT address at a port of its range. Only those are looked up in
/// conntrack at the uplink, so other traffic to the node pays no lookup.
#[inline(always)]
pub fn maybe_snat_reply<F: Family>(p: &Packet<F::Addr>) -> bool {
    snat_reply_to::<F>(&p.dst, p.dport)
}

/// [`maybe_snat_reply`] of a packet to `dst:dport`.
#[inline(always)]
pub fn snat_reply_to<F: Family>(dst: &F::Addr, dport: [u8; 2]) -> bool {
    match F::nat_config().get(0) {
        Some(n) => snat_on::<F>(n) && same(&n.addr, dst) && n.in_range(u16::from_be_bytes(dport)),
        None => false,
    }
}

/// The rewrite of a reply packet (backend → client) back to the service
/// address the client dialed, if `p` is the reply direction of a known flow.
#[inline(always)]
pub fn reply<F: Family>(p: &Packet<F::Addr>) -> Option<Rewrite<F::Addr>> {
    let key = key_of::<F>(p);
    // A confirmed flow's reply half a flood evicted is restored (see `confirmed`).
    // SAFETY: as in `established`.
    let entry = unsafe { &mut *F::conntrack().get_ptr_mut(&key).or_else(|| crate::confirmed::restore::<F>(&key, p))? };
    let now = now();
    // A stale entry must not capture a new connection that reuses the tuple
    // (e.g. a client talking to the backend directly from a port it once used
    // for the service): expired entries are not ours, and neither is a
    // SYN-ACK on a closed flow — had its SYN come through the service, it
    // would have replaced the entry. That entry is removed, so the rest of
    // the new connection passes untouched too.
    if entry.direction != direction::REPLY || since(now, entry.last_seen_ns) > timeout_ns(entry, p.proto) {
        return None;
    }
    if p.tcp_flags & TCP_SYN != 0 && entry.flags & flow_flags::CLOSING != 0 {
        let _ = F::conntrack().remove(&key);
        return None;
    }
    // A second reply confirms the flow; a confirmed one's copies are
    // refreshed when its time is (see `confirmed`). Decided before `touch`,
    // so nothing stays live across it (the stack is at its limit). A DSR
    // reply half has no forward half on this node: nothing to confirm (it
    // would be tried on every reply, ~23 ns each, `dsr_cost`).
    let f = entry.flags;
    if f & (flow_flags::SEEN_REPLY | flow_flags::DSR) == flow_flags::SEEN_REPLY
        && (f & flow_flags::CONFIRMED == 0 || since(now, entry.last_seen_ns) > TOUCH_INTERVAL_NS)
    {
        if F::SPLIT {
            on_reply_call::<F>(&key, entry);
        } else {
            crate::confirmed::on_reply::<F>(&key, entry);
        }
    }
    entry.flags |= flow_flags::SEEN_REPLY;
    if touch(entry, p, now) {
        keep_pair::<F>(&key, entry);
    }
    Some(Rewrite::of(entry.nat_addr, entry.nat_port, entry))
}

/// `confirmed::on_reply` with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn on_reply_call<F: Family>(key: &FlowKey<F::Addr>, entry: &mut Flow<F::Addr>) {
    crate::confirmed::on_reply::<F>(key, entry)
}

/// Records (or refreshes) the reply half of a DSR flow on the backend's
/// node, from a packet `p` (client → local backend) whose option named the
/// service `svc_addr:svc_port`: the backend's replies (backend → client) are
/// then rewritten to come from the service, at tc egress ([`reply`]).
///
/// Written only when missing, different (another service, a new connection
/// on a closed one's tuple) or due a time refresh, so the established path
/// costs one lookup. A FIN or RST from the client starts the closing timeout.
#[inline(always)]
pub fn record_dsr_reply<F: Family>(p: &Packet<F::Addr>, svc_addr: &F::Addr, svc_port: [u8; 2], now: u64) {
    if F::SPLIT {
        record_dsr_reply_call::<F>(p, svc_addr, svc_port, now)
    } else {
        record_dsr_reply_inline::<F>(p, svc_addr, svc_port, now)
    }
}

/// [`record_dsr_reply`] with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn record_dsr_reply_call<F: Family>(p: &Packet<F::Addr>, svc_addr: &F::Addr, svc_port: [u8; 2], now: u64) {
    record_dsr_reply_inline::<F>(p, svc_addr, svc_port, now)
}

#[inline(always)]
fn record_dsr_reply_inline<F: Family>(p: &Packet<F::Addr>, svc_addr: &F::Addr, svc_port: [u8; 2], now: u64) {
    let svc_addr = *svc_addr;
    let key = F::flow_key(p.dst, p.src, p.dport, p.sport, p.proto);
    let closing = p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(e) = F::conntrack().get_ptr_mut(&key) {
        // SAFETY: a live entry of this map; racing writers only lose a refresh.
        let e = unsafe { &mut *e };
        let same = e.direction == direction::REPLY
            && e.flags & flow_flags::DSR != 0
            && (e.nat_addr, e.nat_port) == (svc_addr, svc_port)
            && !(p.tcp_flags & TCP_SYN != 0 && e.flags & flow_flags::CLOSING != 0);
        if same {
            if since(now, e.last_seen_ns) > TOUCH_INTERVAL_NS {
                e.last_seen_ns = now;
            }
            if closing {
                e.flags |= flow_flags::CLOSING;
            }
            return;
        }
    }
    // Its replies leave from the backend's port, which this node's agent
    // may not have written yet (see `replies`).
    crate::replies::mark(p.dport);
    let reply = Flow {
        backend_id: 0,
        service_id: 0,
        nat_addr: svc_addr,
        nat_port: svc_port,
        peer_addr: p.src,
        peer_port: p.sport,
        direction: direction::REPLY,
        flags: flow_flags::DSR | if closing { flow_flags::CLOSING } else { 0 },
        _pad: [0; 2],
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    };
    if F::conntrack().insert(&key, &reply, 0).is_err() {
        count(counter::CT_INSERT_FAILED);
    }
}
