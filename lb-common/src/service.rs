//! Service lookup: how a packet's destination becomes a service.
use bytemuck::{Pod, Zeroable};

use crate::{Addr, Addr4, Addr6};

/// Key of `services_v4` / `services_v6`: one entry per way a service is
/// reached (ClusterIP, each node address for a NodePort, each LoadBalancer
/// ingress IP, each ExternalIP), per port and protocol. 4-byte aligned
/// (no padding) so the BPF backend copies it in words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Zeroable)]
pub struct ServiceKey<A> {
    /// Destination address, network order.
    pub addr: A,
    /// Destination port, network order.
    pub port: [u8; 2],
    /// IP protocol number ([`IPPROTO_TCP`], [`IPPROTO_UDP`] or [`IPPROTO_SCTP`]).
    pub proto: u8,
    /// Which sources the entry is for: [`scope::ANY`], or [`scope::IN_CLUSTER`]
    /// for the alternative entry of a frontend flagged
    /// [`service_flags::IN_CLUSTER_ALT`].
    pub scope: u8,
}
pub type ServiceKeyV4 = ServiceKey<Addr4>;
pub type ServiceKeyV6 = ServiceKey<Addr6>;

impl<A: Addr> ServiceKey<A> {
    /// The address entry of a ClusterIP: port 0 and protocol 0, which no
    /// frontend has. Its value has id 0 (no service), no slots and the flag
    /// [`service_flags::UNSERVED_REFUSED`]; it is looked up only when no
    /// frontend matched.
    pub const fn address(addr: A) -> Self {
        Self { addr, port: [0; 2], proto: 0, scope: scope::ANY }
    }

    /// Whether this is an [`address`](Self::address) entry, not a frontend.
    pub const fn is_address(&self) -> bool {
        self.proto == 0
    }
}

/// Values of `ServiceKeyV4::scope`.
pub mod scope {
    /// The entry every source looks up first.
    pub const ANY: u8 = 0;
    /// The entry pods and node processes use instead, for a frontend whose
    /// entry for everyone else carries `IN_CLUSTER_ALT`.
    pub const IN_CLUSTER: u8 = 1;
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// SCTP: ports where TCP and UDP have them, a CRC32c over the whole packet
/// instead of the Internet checksum (see `lb_ebpf::sctp`).
pub const IPPROTO_SCTP: u8 = 132;

/// Backend selection algorithm of a service (`ServiceV4::algorithm`).
pub mod algorithm {
    /// Uniformly random slot per new flow (kube-proxy iptables mode).
    pub const RANDOM: u8 = 0;
    /// Next slot per new flow, one rotation shared by all CPUs (kube-proxy userspace mode).
    pub const ROUND_ROBIN: u8 = 1;
    /// Maglev consistent hashing: the slots hold the service's Maglev table
    /// (built by the agent), indexed by a hash of the flow.
    pub const MAGLEV: u8 = 2;
    /// Least connections: of two random slots, the backend with fewer live
    /// flows (power of two choices over `backend_load`).
    pub const LEAST_CONN: u8 = 3;
}

/// Service flags (`ServiceV4::flags`).
pub mod service_flags {
    /// The backends are serving-but-terminating ones used as a last resort.
    pub const FALLBACK_TERMINATING: u8 = 1 << 0;
    /// New flows only from clients in the service's `source_ranges_v4`
    /// (`loadBalancerSourceRanges`); set on LoadBalancer-ingress frontends.
    pub const SOURCE_RANGES: u8 = 1 << 1;
    /// Traffic policy `Local` with no usable endpoint on this node but some
    /// elsewhere: a new flow is dropped silently (the client times out),
    /// not answered with a reset, as kube-proxy does. Set with `count` 0.
    pub const LOCAL_ELSEWHERE: u8 = 1 << 2;
    /// An external frontend (NodePort, LoadBalancer IP, ExternalIP) of an
    /// `externalTrafficPolicy: Local` Service: traffic from inside the
    /// cluster (a pod, the node) goes to the same key with scope
    /// [`super::scope::IN_CLUSTER`], which balances over every usable
    /// endpoint, as kube-proxy's short-circuit does. External traffic keeps
    /// this entry's local endpoints.
    pub const IN_CLUSTER_ALT: u8 = 1 << 3;
    /// The address entry of a ClusterIP ([`ServiceKeyV4::address`]): a packet
    /// from a pod or the node to a port or protocol the address does not
    /// serve is refused (TCP reset, ICMP port unreachable), as kube-proxy's
    /// nftables mode does, instead of leaking to the node's routing.
    pub const UNSERVED_REFUSED: u8 = 1 << 4;
    /// The service sets its own mode for external flows to backends on
    /// other nodes (annotation `xdplb.io/lb-mode`), overriding the node's:
    /// DSR for the protocols flagged below, SNAT for the others.
    pub const LB_MODE: u8 = 1 << 5;
    /// With [`LB_MODE`]: TCP flows use DSR.
    pub const DSR_TCP: u8 = 1 << 6;
    /// With [`LB_MODE`]: UDP flows use DSR.
    pub const DSR_UDP: u8 = 1 << 7;
}

/// Value of `services_v4` and `services_v6` (family-free: ids, slots and
/// flags are one space across both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// Service id (1-based; 0 means none). Index into `service_stats` and
    /// `rr_state`, first half of the `service_slots` key.
    pub id: u32,
    /// Number of slots (1..=count) that new flows choose from; 0 = no backend.
    pub count: u32,
    /// One of [`algorithm`].
    pub algorithm: u8,
    /// Bit set of [`service_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// ClientIP session affinity timeout in seconds; 0 = no affinity.
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<Service>() == 16);
/// The name [`Service`] had while only IPv4 was balanced.
pub type ServiceV4 = Service;

/// Key of `service_slots`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SlotKey {
    pub service_id: u32,
    /// 1..=`ServiceV4::count`.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);

/// Key of `affinity_v4` / `affinity_v6`: ClientIP session affinity, per
/// service and client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Zeroable)]
pub struct AffinityKey<A> {
    pub service_id: u32,
    /// Client address, network order.
    pub client: A,
}
pub type AffinityKeyV4 = AffinityKey<Addr4>;
pub type AffinityKeyV6 = AffinityKey<Addr6>;

/// Value of `affinity_v4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AffinityV4 {
    /// The backend the client keeps...
    pub backend_id: u32,
    /// ...and the slot it was found in: the entry holds only while that slot
    /// still names that backend (a backend that left the service ends it).
    pub slot: u32,
    /// `bpf_ktime_get_coarse_ns()` of the client's last new flow.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityV4>() == 16);

/// Data of a `source_ranges_v4` key, after the LPM trie's prefix length: a
/// service id and a client prefix. Both big-endian so the trie matches them
/// bit by bit: an entry's prefix length is 32 (the whole id) plus the
/// range's; a lookup uses 64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Zeroable)]
pub struct SourceRange<A> {
    pub service_id: [u8; 4],
    pub addr: A,
}
pub type SourceRangeV4 = SourceRange<Addr4>;
pub type SourceRangeV6 = SourceRange<Addr6>;

impl<A: Addr> SourceRange<A> {
    /// The prefix length of a range of `bits` bits.
    pub const fn prefix_len(bits: u8) -> u32 {
        32 + bits as u32
    }

    /// A service CIDR (`--service-cidr`, ServiceCIDR objects): kept under
    /// service id 0, which no service has. A packet from a pod or the node
    /// to an address inside it that has no frontend and no address entry is
    /// dropped, as kube-proxy's nftables mode does.
    pub const fn service_cidr(addr: A) -> Self {
        Self { service_id: [0; 4], addr }
    }
}

crate::user_pod!(Service, SlotKey, AffinityV4);
crate::family::pod_per_family! {
    ServiceKey: 8, 20 { addr: 0, 0, port: 4, 16, proto: 6, 18, scope: 7, 19 };
    AffinityKey: 8, 20 { service_id: 0, 0, client: 4, 4 };
    SourceRange: 8, 20 { service_id: 0, 0, addr: 4, 4 };
}

/// Name of an IP protocol number, for humans.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "TCP",
        IPPROTO_UDP => "UDP",
        IPPROTO_SCTP => "SCTP",
        _ => "?",
    }
}

impl<A: Addr> core::fmt::Display for ServiceKey<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let port = u16::from_be_bytes(self.port);
        let proto = proto_name(self.proto);
        match self.addr.to_ip() {
            core::net::IpAddr::V4(a) => write!(f, "{a}:{port}/{proto}")?,
            core::net::IpAddr::V6(a) => write!(f, "[{a}]:{port}/{proto}")?,
        }
        if self.scope == scope::IN_CLUSTER {
            f.write_str(" (from pods and the node)")?;
        }
        Ok(())
    }
}
