//! Map names, shared so the agent never spells a name twice. Each name is also
//! the file name under the pin directory (`/sys/fs/bpf/xdplb/<name>`).

/// (VIP, port, protocol) → [`crate::ServiceV4`].
pub const SERVICES_V4: &str = "services_v4";
/// Array indexed by [`crate::BackendId`] → [`crate::BackendV4`]; an empty
/// slot ([`crate::BackendV4::is_empty`]) holds no backend.
pub const BACKENDS_V4: &str = "backends_v4";
/// [`crate::SlotKey`] (service id, slot 1..=count) → [`crate::BackendId`].
pub const SERVICE_SLOTS: &str = "service_slots";
/// LRU [`crate::FlowKeyV4`] → [`crate::FlowV4`], both directions of every flow.
pub const CONNTRACK_V4: &str = "conntrack_v4";
/// Per-CPU [`crate::ServiceStats`] indexed by service id.
pub const SERVICE_STATS: &str = "service_stats";
/// Per-CPU `u64` counters indexed by [`crate::Counter`].
pub const COUNTERS: &str = "counters";
/// Round-robin position (`u64`, shared) indexed by service id.
pub const RR_STATE: &str = "rr_state";
/// [`crate::Config`] at index 0.
pub const CONFIG: &str = "config";
/// LRU [`crate::AffinityKeyV4`] → [`crate::AffinityV4`]: ClientIP session affinity.
pub const AFFINITY_V4: &str = "affinity_v4";
/// Devmap (hash, ifindex → ifindex) of egress interfaces XDP may redirect
/// balanced packets to (they accept XDP frames: a NIC, a veth whose peer runs
/// XDP); any other egress falls back to the kernel's forwarding.
pub const REDIRECT_IFACES: &str = "redirect_ifaces";
/// Live flows (`u64`) per backend id: raised on flow creation, lowered on
/// FIN/RST, recounted from conntrack by the agent (idle expiry, eviction).
pub const BACKEND_LOAD: &str = "backend_load";
/// LPM trie (prefix length, [`crate::SourceRangeV4`]) → `u8` (1): the client
/// prefixes allowed to open flows to a service whose frontend carries
/// `service_flags::SOURCE_RANGES` (`loadBalancerSourceRanges`).
pub const SOURCE_RANGES_V4: &str = "source_ranges_v4";
/// Array of one `u64`: the network namespace cookie whose sockets are
/// balanced at connect()/sendmsg() (the node's own; 0 turns it off).
pub const SOCK_NETNS: &str = "sock_netns";
/// LRU [`crate::SockRevKeyV4`] → [`crate::SockRevV4`]: the service address a
/// balanced socket asked for, by socket and backend (IPv4 sockets, and the
/// IPv4-mapped destinations of dual-stack IPv6 sockets).
pub const SOCK_REVNAT_V4: &str = "sock_revnat_v4";
/// [`crate::NatConfigV4`] at index 0: this node's SNAT address and port range.
pub const NAT_CONFIG: &str = "nat_config";
/// [`crate::NatConfigV6`] at index 0: the same for IPv6 flows (same ports).
pub const NAT_CONFIG_V6: &str = "nat_config_v6";
/// Per-CPU `u64` per backend id: new flows refused for want of a free SNAT
/// port towards that backend.
pub const SNAT_EXHAUSTED: &str = "snat_exhausted";
/// Array of [`crate::reply_ports::WORDS`] `u64`s, one bit per port
/// ([`crate::reply_ports::slot`]): the source ports a reply of ours can
/// have (backends' ports). tc egress looks a packet up in conntrack only
/// when its source port's bit is set. Bits are only ever set (by the agent
/// before it writes a backend, by the programs when they record a DSR
/// reply); memory-mapped, so both sides set them atomically.
pub const REPLY_PORTS: &str = "reply_ports";
/// The same bitmap's layout for destination ports: every port a service
/// frontend has (ClusterIP, NodePort, LoadBalancer, ExternalIP; any
/// protocol, either family). XDP looks a packet up (service, conntrack)
/// only when its destination port's bit is set or it may be a SNAT reply.
/// The agent sets a port's bit before it writes a frontend on it and
/// clears it after the last frontend on it is removed.
pub const SERVICE_PORTS: &str = "service_ports";
/// LRU [`crate::HopKeyV4`] → [`crate::NextHop`]: the next hop of forwarded
/// packets by (ingress interface, destination), so established flows skip
/// the FIB lookup (see [`crate::hop`]).
pub const NEXT_HOP_V4: &str = "next_hop_v4";
/// The same for IPv6 destinations ([`crate::HopKeyV6`]).
pub const NEXT_HOP_V6: &str = "next_hop_v6";
/// Per-CPU array of [`crate::HOP_SLOTS`] [`crate::HopSlotV4`]: per CPU,
/// the next hop last used for a destination, direct-mapped by its low bits
/// ([`crate::hop_slot`]), checked as the hash cache's entries are and read
/// before it (an index instead of a hash lookup).
pub const NEXT_HOP_SLOTS_V4: &str = "next_hop_slots_v4";
/// The same for IPv6 destinations ([`crate::HopSlotV6`]).
pub const NEXT_HOP_SLOTS_V6: &str = "next_hop_slots_v6";
/// Array of one `u32`: the generation of the routes and neighbours; the
/// agent bumps it on every change, which makes every cached next hop stale.
pub const NEXT_HOP_GEN: &str = "next_hop_gen";

/// LRU [`crate::FlowKeyV4`] → [`crate::FlowV4`]: the forward half of every
/// confirmed flow (its backend answered twice), from which a half evicted
/// from [`CONNTRACK_V4`] by a flood of new flows is restored. A quarter of
/// `--max-flows` entries.
pub const CONNTRACK_CONFIRMED_V4: &str = "conntrack_confirmed_v4";

/// IPv6 instances of the per-family maps above: same roles, keys and values
/// over [`crate::Addr6`]. Service ids and backend ids are one space across
/// both families (a dual-stack Service has one id per family; a backend id
/// indexes `backends_v4` or `backends_v6` by its service's family), so
/// `service_slots`, `service_stats`, `rr_state`, `backend_load` and
/// `snat_exhausted` are shared.
pub const SERVICES_V6: &str = "services_v6";
pub const BACKENDS_V6: &str = "backends_v6";
pub const CONNTRACK_V6: &str = "conntrack_v6";
pub const AFFINITY_V6: &str = "affinity_v6";
pub const SOURCE_RANGES_V6: &str = "source_ranges_v6";
pub const SOCK_REVNAT_V6: &str = "sock_revnat_v6";
pub const CONNTRACK_CONFIRMED_V6: &str = "conntrack_confirmed_v6";

/// Program arrays (index 0: the IPv6 instance of the hook) that `xdp_lb`,
/// `tc_ingress` and `tc_egress` tail-call for IPv6 frames: each family's
/// monomorphised instance is a program of its own, with its own 512 bytes
/// of stack. Filled by the agent at load; pinned, as their entries would
/// be cleared once no process nor pin held them.
pub const FAMILY_XDP: &str = "family_xdp";
pub const FAMILY_TC_INGRESS: &str = "family_tc_ingress";
pub const FAMILY_TC_EGRESS: &str = "family_tc_egress";
/// Program array (index 0: `xdp_dsr_v6`) that `xdp_lb_v6` tail-calls for
/// DSR packets, sent and received: the IPv6 XDP program has no room left
/// under the verifier's limit. Filled and pinned as the arrays above.
pub const DSR_XDP: &str = "dsr_xdp";
/// Program array that `xdp_lb_v6` tail-calls for SCTP (index 0:
/// `xdp_sctp_v6`), which tail-calls its rewrite stage (index 1:
/// `xdp_sctp_v6_nat`): with SCTP in it, the IPv6 XDP program is past the
/// verifier's limit, and so is one program for IPv6 SCTP alone. Filled and
/// pinned as the arrays above.
pub const SCTP_XDP: &str = "sctp_xdp";

/// Every map the programs own, in the order the agent pins and checks them.
pub const ALL: &[&str] = &[
    SERVICES_V4,
    BACKENDS_V4,
    SERVICE_SLOTS,
    CONNTRACK_V4,
    SERVICE_STATS,
    COUNTERS,
    RR_STATE,
    CONFIG,
    AFFINITY_V4,
    BACKEND_LOAD,
    REDIRECT_IFACES,
    SOCK_NETNS,
    SOCK_REVNAT_V4,
    SOURCE_RANGES_V4,
    NAT_CONFIG,
    SNAT_EXHAUSTED,
    REPLY_PORTS,
    SERVICE_PORTS,
    NEXT_HOP_V4,
    NEXT_HOP_V6,
    NEXT_HOP_GEN,
    NEXT_HOP_SLOTS_V4,
    NEXT_HOP_SLOTS_V6,
    CONNTRACK_CONFIRMED_V4,
    SERVICES_V6,
    BACKENDS_V6,
    CONNTRACK_V6,
    AFFINITY_V6,
    SOURCE_RANGES_V6,
    CONNTRACK_CONFIRMED_V6,
    SOCK_REVNAT_V6,
    NAT_CONFIG_V6,
    FAMILY_XDP,
    FAMILY_TC_INGRESS,
    FAMILY_TC_EGRESS,
    DSR_XDP,
    SCTP_XDP,
];

/// Default sizes; the agent can override each at load time.
pub mod default_size {
    pub const SERVICES: u32 = 65_536;
    pub const BACKENDS: u32 = 262_144;
    /// 10,000 Maglev services of 10 backends (251 slots each by default)
    /// fit; the map is not preallocated, so unused entries cost little.
    pub const SLOTS: u32 = 4_194_304;
    pub const CONNTRACK: u32 = 1_048_576;
    /// IPv6 conntrack: a quarter of IPv4's. LRU maps preallocate every
    /// entry, and a v6 pair is 120 bytes of key and value (v4: 72), so the
    /// IPv4 default would pin ~170 MB more on every node for a family most
    /// clusters use little; `--max-flows-v6` raises it.
    pub const CONNTRACK_V6: u32 = 262_144;
    pub const AFFINITY: u32 = 262_144;
    /// IPv6 affinity, a quarter of IPv4's for the same reason (`--max-affinity-v6`).
    pub const AFFINITY_V6: u32 = 65_536;
    pub const REDIRECT_IFACES: u32 = 64;
    /// Balanced node sockets (one entry per socket and backend; `--max-sockets`).
    pub const SOCK_REVNAT: u32 = 65_536;
    /// IPv6 ones, a quarter of IPv4's as for conntrack (`--max-sockets-v6`).
    /// Sockets of dual-stack applications to IPv4-mapped addresses are IPv4's.
    pub const SOCK_REVNAT_V6: u32 = 16_384;
    pub const SOURCE_RANGES: u32 = 16_384;
    /// Cached next hops per family: one per destination XDP forwards to
    /// (remote backends, and the clients of SNAT replies); a full cache
    /// evicts the least recently used, whose next packet asks the FIB.
    pub const NEXT_HOPS: u32 = 65_536;
}

/// Program names (the function names in lb-ebpf).
pub mod programs {
    /// XDP on an uplink: service lookup + DNAT of new and established flows.
    pub const XDP_LB: &str = "xdp_lb";
    /// tc ingress on host-side pod interfaces: DNAT of east-west service traffic.
    pub const TC_INGRESS: &str = "tc_ingress";
    /// tc egress on every attached interface: reverse NAT of replies.
    pub const TC_EGRESS: &str = "tc_egress";
    /// cgroup connect4: a node socket connecting to a service gets a backend.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    /// cgroup sendmsg4: the same for unconnected UDP sends.
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup recvmsg4: replies from the backend read as from the service.
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup getpeername4: a balanced socket's peer reads as the service.
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// The same four for IPv6 sockets (`AF_INET6`), IPv4-mapped addresses
    /// of dual-stack sockets included: the same code over the IPv6 maps, or
    /// the IPv4 ones for a mapped address.
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    pub const SOCK_GETPEERNAME6: &str = "sock_getpeername6";
    /// The IPv6 instances of the three hooks, tail-called by them for IPv6
    /// frames (see [`super::FAMILY_XDP`]); loaded, never attached.
    pub const XDP_LB_V6: &str = "xdp_lb_v6";
    pub const TC_INGRESS_V6: &str = "tc_ingress_v6";
    pub const TC_EGRESS_V6: &str = "tc_egress_v6";
    /// IPv6 DSR (sending and receiving), tail-called by `xdp_lb_v6` (see
    /// [`super::DSR_XDP`]); loaded, never attached.
    pub const XDP_DSR_V6: &str = "xdp_dsr_v6";
    /// IPv6 SCTP at XDP, tail-called by `xdp_lb_v6` (see
    /// [`super::SCTP_XDP`]); loaded, never attached.
    pub const XDP_SCTP_V6: &str = "xdp_sctp_v6";
    pub const XDP_SCTP_V6_NAT: &str = "xdp_sctp_v6_nat";
    /// The XDP programs that are tail-called, each with its program array
    /// and index there.
    pub const XDP_TAIL: &[(&str, &str, u32)] = &[
        (XDP_LB_V6, super::FAMILY_XDP, 0),
        (XDP_DSR_V6, super::DSR_XDP, 0),
        (XDP_SCTP_V6, super::SCTP_XDP, 0),
        (XDP_SCTP_V6_NAT, super::SCTP_XDP, 1),
    ];
    /// The tc IPv6 instances, each with the program array its hook
    /// tail-calls.
    pub const TC_V6: &[(&str, &str)] = &[(TC_INGRESS_V6, super::FAMILY_TC_INGRESS), (TC_EGRESS_V6, super::FAMILY_TC_EGRESS)];
    /// Every socket program, in the order the agent attaches them.
    pub const SOCK: &[&str] = &[
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
        SOCK_CONNECT6,
        SOCK_SENDMSG6,
        SOCK_RECVMSG6,
        SOCK_GETPEERNAME6,
    ];
}
