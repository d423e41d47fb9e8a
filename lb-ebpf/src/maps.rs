//! Every map of the dataplane, one purpose line each. Names come from
#![allow(
    non_upper_case_globals,
    reason = "the statics are named as the pinned maps bpftool shows"
)]
//! `lb_common::maps`; the sizes here are defaults the agent overrides.
//! The per-family maps come in pairs (`_v4`, `_v6`) of one generic type
//! each (the aliases below); `family.rs` hands a family its instances.
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::{btf_map, map},
    maps::ProgramArray,
};
use lb_common::{
    counter, maps::default_size as size, AffinityKey, AffinityV4, Backend, BackendId, Config, FlowKey, Flow,
    HopKey, HopSlot, NatConfig, NextHop, Service, ServiceKey, ServiceStats, SlotKey, SockRev, SockRevKey, SourceRange,
};

/// (VIP, port, protocol) → service, per family.
pub type Services<A> = HashMap<ServiceKey<A>, Service, { size::SERVICES as usize }>;
/// Backend id → backend, per family.
pub type Backends<A> = Array<Backend<A>, { size::BACKENDS as usize + 1 }>;
/// 5-tuple → flow, per family.
pub type Conntrack<A> = LruHashMap<FlowKey<A>, Flow<A>, { size::CONNTRACK as usize }>;
/// (service, client) → affinity, per family.
pub type Affinity<A> = LruHashMap<AffinityKey<A>, AffinityV4, { size::AFFINITY as usize }>;
/// (service, client prefix) → allowed, per family.
pub type SourceRanges<A> = LpmTrie<SourceRange<A>, u8, { size::SOURCE_RANGES as usize }>;
/// (ingress interface, destination) → next hop, per family.
pub type NextHops<A> = LruHashMap<HopKey<A>, NextHop, { size::NEXT_HOPS as usize }>;
/// Per CPU, destination's low bits → the next hop last used, per family.
pub type HopSlots<A> = PerCpuArray<HopSlot<A>, { lb_common::HOP_SLOTS as usize }>;
/// (socket, backend) → service address, per family.
pub type SockRevNat<A> = LruHashMap<SockRevKey<A>, SockRev<A>, { size::SOCK_REVNAT as usize }>;

/// (VIP, port, protocol) → service. Written by the agent.
#[btf_map]
pub static services_v4: Services<[u8; 4]> = HashMap::new();
#[btf_map]
pub static services_v6: Services<[u8; 16]> = HashMap::new();

/// Backend id → address, port, state: an array indexed by id (the lookup on
/// every established packet is then an index, not a hash), where an empty
/// slot (address 0.0.0.0) is no backend. Written by the agent.
#[btf_map]
pub static backends_v4: Backends<[u8; 4]> = Array::new();
#[btf_map]
pub static backends_v6: Backends<[u8; 16]> = Array::new();

/// (service id, slot) → backend id: what new flows choose from. Written by
/// the agent. Not preallocated: its default holds 10,000 Maglev tables,
/// and preallocated that would pin ~80 bytes per entry (335 MB) on every
/// node; this way an unused entry costs its 16-byte bucket share.
#[btf_map]
pub static service_slots: HashMap<SlotKey, BackendId, { size::SLOTS as usize }, { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize }> = HashMap::new();

/// 5-tuple → flow, both directions. Written by the programs; LRU so a full
/// table evicts the least recently used flow instead of refusing new ones.
#[btf_map]
pub static conntrack_v4: Conntrack<[u8; 4]> = LruHashMap::new();
#[btf_map]
pub static conntrack_v6: Conntrack<[u8; 16]> = LruHashMap::new();

/// Both halves of every confirmed flow, keyed as in conntrack (see
/// `confirmed.rs`). A quarter of its size: the agent sets both from
/// `--max-flows` / `--max-flows-v6` (one type with conntrack's here, so a
/// family hands out either through one accessor type).
#[btf_map]
pub static conntrack_confirmed_v4: Conntrack<[u8; 4]> = LruHashMap::new();
#[btf_map]
pub static conntrack_confirmed_v6: Conntrack<[u8; 16]> = LruHashMap::new();

/// Per-CPU slot where a new flow's conntrack entries are built (`Family::scratch`).
#[btf_map]
pub static flow_scratch_v4: PerCpuArray<Flow<[u8; 4]>, 1> = PerCpuArray::new();
#[btf_map]
pub static flow_scratch_v6: PerCpuArray<Flow<[u8; 16]>, 1> = PerCpuArray::new();

/// Per-CPU counters per service id.
#[btf_map]
pub static service_stats: PerCpuArray<ServiceStats, { size::SERVICES as usize + 1 }> =
    PerCpuArray::new();

/// Per-CPU packet outcome counters, indexed by `lb_common::counter`.
#[btf_map]
pub static counters: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

/// Round-robin position per service id (shared, bumped atomically).
#[btf_map]
pub static rr_state: Array<u64, { size::SERVICES as usize + 1 }> = Array::new();

/// Node-wide settings at index 0, written by the agent.
#[btf_map]
pub static config: Array<Config, 1> = Array::new();

/// ClientIP session affinity: (service, client) → backend. LRU: a full table
/// forgets the least recently used client, whose next flow is balanced anew.
#[btf_map]
pub static affinity_v4: Affinity<[u8; 4]> = LruHashMap::new();
#[btf_map]
pub static affinity_v6: Affinity<[u8; 16]> = LruHashMap::new();

/// Live flows per backend id (least-connections, per-backend metrics).
#[btf_map]
pub static backend_load: Array<u64, { size::BACKENDS as usize + 1 }> = Array::new();

/// Egress interfaces XDP may redirect to (see `forward.rs`). Written by the agent.
#[btf_map]
pub static redirect_ifaces: DevMapHash<{ size::REDIRECT_IFACES as usize }> = DevMapHash::new();

/// Per-CPU [pending event, last log time] for rate-limited log lines (events.rs).
#[btf_map]
pub static log_state: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

/// Netns cookie of the node's sockets, balanced at connect (0: off). Written by the agent.
#[btf_map]
pub static sock_netns: Array<u64, 1> = Array::new();

/// (socket, backend) → the service address it asked for; LRU, as sockets
/// close without telling us. IPv4-mapped destinations of IPv6 sockets are
/// IPv4's (`sock.rs`).
#[btf_map]
pub static sock_revnat_v4: SockRevNat<[u8; 4]> = LruHashMap::new();
#[btf_map]
pub static sock_revnat_v6: SockRevNat<[u8; 16]> = LruHashMap::new();

/// (service, client prefix) allowed to open flows to frontends flagged
/// `SOURCE_RANGES` (loadBalancerSourceRanges). Written by the agent.
#[btf_map]
pub static source_ranges_v4: SourceRanges<[u8; 4]> = LpmTrie::new();
#[btf_map]
pub static source_ranges_v6: SourceRanges<[u8; 16]> = LpmTrie::new();

/// This node's SNAT address and port range at index 0 (see `lb_common::nat`).
/// Written by the agent.
#[btf_map]
pub static nat_config: Array<NatConfig, 1> = Array::new();

/// The IPv6 SNAT address and port range (`lb_common::maps::NAT_CONFIG_V6`).
#[btf_map]
pub static nat_config_v6: Array<NatConfig<[u8; 16]>, 1> = Array::new();

/// Next hops of forwarded packets, by (ingress interface, destination):
/// written by the programs after a FIB lookup, used while their
/// generation is `next_hop_gen[0]` (see `forward.rs`, `lb_common::hop`).
#[btf_map]
pub static next_hop_v4: NextHops<[u8; 4]> = LruHashMap::new();
#[btf_map]
pub static next_hop_v6: NextHops<[u8; 16]> = LruHashMap::new();

/// Per CPU, the next hop last used for a destination, direct-mapped by its
/// low bits: read before `next_hop_v4` (an index, not a hash), checked as
/// its entries are (see `forward.rs`, `lb_common::hop`).
#[btf_map]
pub static next_hop_slots_v4: HopSlots<[u8; 4]> = PerCpuArray::new();
#[btf_map]
pub static next_hop_slots_v6: HopSlots<[u8; 16]> = PerCpuArray::new();

/// The generation of routes and neighbours at index 0; the agent bumps it
/// on every change it hears of from netlink, and sets `NEXT_HOP_OFF` in it
/// while it hears nothing.
#[btf_map]
pub static next_hop_gen: Array<u32, 1> = Array::new();

/// Per-CPU, backend id → new flows refused for want of a free SNAT port.
#[btf_map]
pub static snat_exhausted: PerCpuArray<u64, { size::BACKENDS as usize + 1 }> = PerCpuArray::new();

/// One bit per port: the source ports a reply of ours may have
/// (`lb_common::maps::REPLY_PORTS`, `replies.rs`). Memory-mapped, so the
/// agent sets bits atomically too.
#[btf_map]
pub static reply_ports: PortBits = Array::new();

/// One bit per port: the destination ports of service frontends
/// (`lb_common::maps::SERVICE_PORTS`, `gate.rs`). Memory-mapped: the agent
/// sets and clears its bits.
#[btf_map]
pub static service_ports: PortBits = Array::new();

/// A bitmap of the 65,536 ports (`lb_common::reply_ports`, `portbits.rs`).
pub type PortBits = Array<u64, { lb_common::reply_ports::WORDS as usize }, { lb_common::reply_ports::MAP_FLAGS as usize }>;

/// The IPv6 instance of each hook, tail-called for IPv6 frames (index 0).
/// Filled by the agent. Legacy map definitions: the kernel refuses BTF key
/// and value types on program arrays.
#[map]
pub static family_xdp: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static family_tc_ingress: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static family_tc_egress: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// `xdp_dsr_v6`, tail-called by `xdp_lb_v6` for DSR packets (index 0).
#[map]
pub static dsr_xdp: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// `xdp_sctp_v6`, tail-called by `xdp_lb_v6` for SCTP (index 0), and its
/// rewrite stage `xdp_sctp_v6_nat` (index 1).
#[map]
pub static sctp_xdp: ProgramArray = ProgramArray::with_max_entries(2, 0);
