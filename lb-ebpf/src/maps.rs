//! Every map of the dataplane, one purpose line each. Names come from
#![allow(
    non_upper_case_globals,
    reason = "the statics are named as the pinned maps bpftool shows"
)]
//! `lb_common::maps`; the sizes here are defaults the agent overrides.
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    counter, maps::default_size as size, AffinityKeyV4, AffinityV4, BackendId, BackendV4, Config,
    FlowKeyV4, FlowV4, NatConfig, ServiceKeyV4, ServiceStats, ServiceV4, SlotKey, SockRevKeyV4, SockRevV4,
    SourceRangeV4,
};

/// (VIP, port, protocol) → service. Written by the agent.
#[btf_map]
pub static services_v4: HashMap<ServiceKeyV4, ServiceV4, { size::SERVICES as usize }> =
    HashMap::new();

/// Backend id → address, port, state: an array indexed by id (the lookup on
/// every established packet is then an index, not a hash), where an empty
/// slot (address 0.0.0.0) is no backend. Written by the agent.
#[btf_map]
pub static backends_v4: Array<BackendV4, { size::BACKENDS as usize + 1 }> = Array::new();

/// (service id, slot) → backend id: what new flows choose from. Written by the agent.
#[btf_map]
pub static service_slots: HashMap<SlotKey, BackendId, { size::SLOTS as usize }> = HashMap::new();

/// 5-tuple → flow, both directions. Written by the programs; LRU so a full
/// table evicts the least recently used flow instead of refusing new ones.
#[btf_map]
pub static conntrack_v4: LruHashMap<FlowKeyV4, FlowV4, { size::CONNTRACK as usize }> =
    LruHashMap::new();

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
pub static affinity_v4: LruHashMap<AffinityKeyV4, AffinityV4, { size::AFFINITY as usize }> =
    LruHashMap::new();

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
/// close without telling us.
#[btf_map]
pub static sock_revnat_v4: LruHashMap<SockRevKeyV4, SockRevV4, { size::SOCK_REVNAT as usize }> =
    LruHashMap::new();

/// (service, client prefix) allowed to open flows to frontends flagged
/// `SOURCE_RANGES` (loadBalancerSourceRanges). Written by the agent.
#[btf_map]
pub static source_ranges_v4: LpmTrie<SourceRangeV4, u8, { size::SOURCE_RANGES as usize }> = LpmTrie::new();

/// This node's SNAT address and port range at index 0 (see `lb_common::nat`).
/// Written by the agent.
#[btf_map]
pub static nat_config: Array<NatConfig, 1> = Array::new();

/// Per-CPU, backend id → new flows refused for want of a free SNAT port.
#[btf_map]
pub static snat_exhausted: PerCpuArray<u64, { size::BACKENDS as usize + 1 }> = PerCpuArray::new();
