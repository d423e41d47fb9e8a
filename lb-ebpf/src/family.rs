//! Address families: what differs between IPv4 and IPv6 in the dataplane,
//! behind one trait. Parsing, service lookup, selection, conntrack, NAT,
//! forwarding and stats are written once, generic over [`Family`], and
//! monomorphised per family: `xdp_lb`, `tc_ingress` and `tc_egress` inline
//! the IPv4 instance and tail-call their IPv6 instance (`xdp_lb_v6`, ...),
//! a program of its own with its own 512 bytes of stack (IPv6 keys and
//! flows are 24 bytes longer each, and the IPv4 programs are at the
//! verifier's limit).
//!
//! A family is: its address type, its IP header's layout (IPv4 has a header
//! checksum, IPv6 none), its parser, its instances of the per-family maps,
//! and the few values that name an address (hairpin source, SNAT settings,
//! the FIB lookup's fields).
use aya_ebpf::{bindings::bpf_fib_lookup, programs::TcContext};
use aya_log_ebpf::macro_support::{Argument, IpFormatter};
use aya_ebpf::btf_maps::{Array, PerCpuArray};
use lb_common::{counter, Flow, FlowKey, NatConfig, HAIRPIN_ADDR_V4, HAIRPIN_ADDR_V6, IPPROTO_SCTP};
pub use lb_ebpf::ip::same;
use lb_ebpf::ip::Ip;

use crate::{
    maps::{self, Affinity, Backends, Conntrack, HopSlots, NextHops, Services, SourceRanges},
    parse::{self, Packet, ETH_LEN, IP_CHECK, IP_DST, IP_SRC},
    parse6::{self, IP6_DST, IP6_HOP_LIMIT, IP6_LEN, IP6_SRC},
    verdict::Verdict,
};

/// One address family of the dataplane (see the module doc).
pub trait Family: 'static {
    /// The address, network order (logged with `{:i}`); its IP header's
    /// layout and ICMP numbers as the answers build them (`lb_ebpf::ip`).
    type Addr: Ip + IpFormatter + Argument;
    /// Length of the fixed IP header (IPv4 without options).
    const IP_HDR: usize;
    /// Offsets of the addresses in the IP header.
    const IP_SRC: usize;
    const IP_DST: usize;
    /// Offset of the IP header checksum; IPv6 has none.
    const IP_CHECK: Option<usize>;
    /// Offset of the TTL (IPv4) or hop limit (IPv6).
    const TTL: usize;
    /// How much of a frame tc makes linear before parsing: Ethernet, the IP
    /// header with options or extension headers, the fixed TCP header.
    const HEADERS_MAX: u32;
    /// The source of hairpin flows (see `lb_common::HAIRPIN_ADDR_V4`).
    fn hairpin() -> Self::Addr;
    /// `AF_INET` / `AF_INET6`, for the FIB lookup.
    const AF: u8;
    /// Which transport protocols the instance's parser yields ([`l4`]).
    const L4: u8;
    /// Whether it yields SCTP packets, so its CRC code is built in.
    const SCTP: bool = Self::L4 != l4::NO_SCTP;
    /// Whether the rarer conntrack steps (restoring a flow's other half,
    /// confirming it) run as calls of their own, each with its own frame:
    /// IPv6's keys and flows are too large to share one frame with the rest.
    const SPLIT: bool;

    /// Whether UDP must carry a checksum (IPv6, RFC 8200 8.1).
    const UDP_CHECKSUM_REQUIRED: bool;
    /// The family's ethertype, wire order.
    const ETHERTYPE: [u8; 2];

    /// Parses a frame of this family (`parse::parse` has the rules).
    fn parse(data: usize, end: usize, frame_len: usize) -> Result<Packet<Self::Addr>, Verdict>;

    /// For a frame of this family (the caller checked its ethertype) with
    /// the fixed IP header alone (no IPv4 options, no IPv6 extension
    /// headers), not a fragment, whose lengths the parser accepts: its L4
    /// protocol and the bytes its IP packet leaves for L4. `None` for
    /// anything else (`replies::skip`).
    fn fixed(data: usize, end: usize, frame_len: usize) -> Option<(u8, usize)>;

    fn services() -> &'static Services<Self::Addr>;
    fn backends() -> &'static Backends<Self::Addr>;
    fn conntrack() -> &'static Conntrack<Self::Addr>;
    /// Both halves of every confirmed flow (`confirmed.rs`).
    fn confirmed() -> &'static Conntrack<Self::Addr>;
    fn affinity() -> &'static Affinity<Self::Addr>;
    fn source_ranges() -> &'static SourceRanges<Self::Addr>;
    /// A client address as the 4 bytes Maglev's flow hash takes (`hash::fold`).
    fn hash_word(a: &Self::Addr) -> [u8; 4];
    /// A per-CPU slot where a new flow's entries are built.
    fn scratch() -> &'static PerCpuArray<Flow<Self::Addr>, 1>;
    /// The family's cached next hops (`forward.rs`).
    fn next_hops() -> &'static NextHops<Self::Addr>;
    /// This CPU's direct-mapped copies of them (`forward.rs`).
    fn hop_slots() -> &'static HopSlots<Self::Addr>;

    /// The conntrack key of a 5-tuple.
    fn flow_key(src: Self::Addr, dst: Self::Addr, sport: [u8; 2], dport: [u8; 2], proto: u8) -> FlowKey<Self::Addr>;

    /// This node's SNAT settings of the family (`nat_config`, `nat_config_v6`).
    fn nat_config() -> &'static Array<NatConfig<Self::Addr>, 1>;

    /// Fills a FIB lookup's family and addresses.
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: &Self::Addr, dst: &Self::Addr);

    /// Writes the addresses `[src, dst]` of a socket buffer's IP header, and
    /// the header checksum `ipc` where the family has one, in one store;
    /// with `ports` (L4 source and destination port, for a header without
    /// options or extension headers, which they then follow) in that store too.
    fn tc_store_addrs(ctx: &TcContext, ipc: u16, addrs: &[Self::Addr; 2], ports: Option<&[u8; 4]>) -> Result<(), i64>;
}

/// The accessors of a family's instances of the per-family maps.
macro_rules! family_maps {
    ($a:ty, $services:ident, $backends:ident, $conntrack:ident, $confirmed:ident, $affinity:ident, $ranges:ident, $scratch:ident, $hops:ident, $slots:ident) => {
        #[inline(always)]
        fn services() -> &'static Services<$a> {
            &maps::$services
        }
        #[inline(always)]
        fn backends() -> &'static Backends<$a> {
            &maps::$backends
        }
        #[inline(always)]
        fn conntrack() -> &'static Conntrack<$a> {
            &maps::$conntrack
        }
        #[inline(always)]
        fn confirmed() -> &'static Conntrack<$a> {
            &maps::$confirmed
        }
        #[inline(always)]
        fn affinity() -> &'static Affinity<$a> {
            &maps::$affinity
        }
        #[inline(always)]
        fn source_ranges() -> &'static SourceRanges<$a> {
            &maps::$ranges
        }
        #[inline(always)]
        fn scratch() -> &'static PerCpuArray<Flow<$a>, 1> {
            &maps::$scratch
        }
        #[inline(always)]
        fn next_hops() -> &'static NextHops<$a> {
            &maps::$hops
        }
        #[inline(always)]
        fn hop_slots() -> &'static HopSlots<$a> {
            &maps::$slots
        }
    };
}

/// Which transport protocols an instance balances (`Family::L4`): what
/// its parser yields.
pub use crate::parse6::l4;

/// IPv4.
pub struct V4;
/// IPv6, over the protocols of `L4` ([`l4`]). IPv6 at XDP takes two
/// programs: with SCTP in it, `xdp_lb_v6`'s verifier walk passed 1M
/// instructions (417,549 without, on 6.18), so SCTP is tail-called to a
/// program of its own. The tc instances have room for all.
pub struct V6Of<const L4: u8>;
/// IPv6: tc and the socket programs.
pub type V6 = V6Of<{ l4::ALL }>;
/// IPv6 without SCTP: `xdp_lb_v6`.
pub type V6NoSctp = V6Of<{ l4::NO_SCTP }>;
/// IPv6 SCTP: `xdp_sctp_v6`.
pub type V6Sctp = V6Of<{ l4::SCTP_ONLY }>;

impl Family for V4 {
    type Addr = [u8; 4];
    const IP_HDR: usize = 20;
    const IP_SRC: usize = IP_SRC;
    const IP_DST: usize = IP_DST;
    const IP_CHECK: Option<usize> = Some(IP_CHECK);
    const TTL: usize = 8;
    const HEADERS_MAX: u32 = 14 + 60 + 20;
    const AF: u8 = 2;
    const L4: u8 = l4::ALL;
    const SPLIT: bool = false;
    const UDP_CHECKSUM_REQUIRED: bool = false;
    const ETHERTYPE: [u8; 2] = parse::ETH_P_IP;

    #[inline(always)]
    fn hairpin() -> [u8; 4] {
        HAIRPIN_ADDR_V4
    }
    #[inline(always)]
    fn parse(data: usize, end: usize, frame_len: usize) -> Result<Packet, Verdict> {
        parse::parse(data, end, frame_len)
    }
    #[inline(always)]
    fn fixed(data: usize, end: usize, frame_len: usize) -> Option<(u8, usize)> {
        parse::fixed(data, end, frame_len)
    }
    family_maps!([u8; 4], services_v4, backends_v4, conntrack_v4, conntrack_confirmed_v4, affinity_v4, source_ranges_v4, flow_scratch_v4, next_hop_v4, next_hop_slots_v4);
    #[inline(always)]
    fn hash_word(a: &[u8; 4]) -> [u8; 4] {
        *a
    }

    #[inline(always)]
    fn flow_key(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> FlowKey<[u8; 4]> {
        // Built as four words: a struct literal zeroes `_pad` with a call to
        // memset (~7 ns per key on the established path).
        let words = [
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: `FlowKeyV4` is 16 bytes of plain integers (`Pod`), laid out as these words.
        unsafe { core::mem::transmute::<[u32; 4], FlowKey<[u8; 4]>>(words) }
    }

    #[inline(always)]
    fn nat_config() -> &'static Array<NatConfig, 1> {
        &maps::nat_config
    }

    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: &[u8; 4], dst: &[u8; 4]) {
        fib.family = Self::AF;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*src);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*dst);
    }

    #[inline(always)]
    fn tc_store_addrs(ctx: &TcContext, ipc: u16, addrs: &[[u8; 4]; 2], ports: Option<&[u8; 4]>) -> Result<(), i64> {
        // Check, src and dst are contiguous (and the ports right after them).
        let mut block = [0u8; 14];
        block[..2].copy_from_slice(&ipc.to_be_bytes());
        block[2..6].copy_from_slice(&addrs[0]);
        block[6..10].copy_from_slice(&addrs[1]);
        match ports {
            Some(ports) => {
                block[10..].copy_from_slice(ports);
                ctx.store(ETH_LEN + IP_CHECK, &block, 0)
            }
            None => ctx.store(ETH_LEN + IP_CHECK, &[block[0], block[1], block[2], block[3], block[4], block[5], block[6], block[7], block[8], block[9]], 0),
        }
    }
}

impl<const L4: u8> Family for V6Of<L4> {
    type Addr = [u8; 16];
    const IP_HDR: usize = IP6_LEN;
    const IP_SRC: usize = IP6_SRC;
    const IP_DST: usize = IP6_DST;
    const IP_CHECK: Option<usize> = None;
    const TTL: usize = IP6_HOP_LIMIT;
    /// Extension headers beyond what this makes linear are malformed at tc.
    const HEADERS_MAX: u32 = 14 + 40 + 128 + 20;
    const AF: u8 = 10;
    const L4: u8 = L4;
    const SPLIT: bool = true;
    const UDP_CHECKSUM_REQUIRED: bool = true;
    const ETHERTYPE: [u8; 2] = parse::ETH_P_IPV6;

    #[inline(always)]
    fn fixed(data: usize, end: usize, frame_len: usize) -> Option<(u8, usize)> {
        parse6::fixed(data, end, frame_len)
    }

    #[inline(always)]
    fn hairpin() -> [u8; 16] {
        // Built from two words LLVM cannot fold: a 128-bit constant crashes
        // the BPF backend ("Post-RA pseudo instruction expansion").
        let [a, b] = core::hint::black_box([
            u64::from_ne_bytes([HAIRPIN_ADDR_V6[0], HAIRPIN_ADDR_V6[1], HAIRPIN_ADDR_V6[2], HAIRPIN_ADDR_V6[3], HAIRPIN_ADDR_V6[4], HAIRPIN_ADDR_V6[5], HAIRPIN_ADDR_V6[6], HAIRPIN_ADDR_V6[7]]),
            u64::from_ne_bytes([HAIRPIN_ADDR_V6[8], HAIRPIN_ADDR_V6[9], HAIRPIN_ADDR_V6[10], HAIRPIN_ADDR_V6[11], HAIRPIN_ADDR_V6[12], HAIRPIN_ADDR_V6[13], HAIRPIN_ADDR_V6[14], HAIRPIN_ADDR_V6[15]]),
        ]);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }
    #[inline(always)]
    fn parse(data: usize, end: usize, frame_len: usize) -> Result<Packet<[u8; 16]>, Verdict> {
        // Zeroed as six words: a struct literal is zeroed by a call to
        // memset, a byte loop of ~240 instructions (~10 ns on every IPv6
        // packet, `prog_cost`); `black_box` keeps LLVM from making the six
        // stores that memset again.
        let zero = core::hint::black_box(0u64);
        // SAFETY: `Packet<[u8; 16]>` is 48 bytes of plain integers (the
        // transmute checks the size); all-zero bytes are a valid value.
        let mut p = unsafe { core::mem::transmute::<[u64; 6], Packet<[u8; 16]>>([zero; 6]) };
        // The parser's verdicts are passes, except malformed and UDP
        // without checksum (drops).
        match parse6_call::<L4>(data, end, frame_len, &mut p) {
            0 => {
                // A constant LLVM sees: the other protocols' code goes.
                if L4 == l4::SCTP_ONLY {
                    p.proto = IPPROTO_SCTP;
                }
                Ok(p)
            }
            r if r == counter::DROP_MALFORMED || r == counter::DROP_UDP6_NO_CHECKSUM => Err(Verdict::Drop(r)),
            r => Err(Verdict::Pass(r)),
        }
    }
    family_maps!([u8; 16], services_v6, backends_v6, conntrack_v6, conntrack_confirmed_v6, affinity_v6, source_ranges_v6, flow_scratch_v6, next_hop_v6, next_hop_slots_v6);
    #[inline(always)]
    fn hash_word(a: &[u8; 16]) -> [u8; 4] {
        fold6(a).to_ne_bytes()
    }

    #[inline(always)]
    fn flow_key(src: [u8; 16], dst: [u8; 16], sport: [u8; 2], dport: [u8; 2], proto: u8) -> FlowKey<[u8; 16]> {
        // A literal: built as words (as IPv4's, avoiding the 3-byte memset
        // of `_pad`), the key took xdp_lb_v6's frames past the verifier's
        // 512-byte stack (592) and its walk from 457k to 817k instructions.
        FlowKey { src_addr: src, dst_addr: dst, src_port: sport, dst_port: dport, proto, _pad: [0; 3] }
    }

    #[inline(always)]
    fn nat_config() -> &'static Array<NatConfig<[u8; 16]>, 1> {
        &maps::nat_config_v6
    }

    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: &[u8; 16], dst: &[u8; 16]) {
        fib.family = Self::AF;
        // SAFETY: `[u8; 16]` and `[u32; 4]` have the same size; any bits are valid.
        unsafe {
            fib.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(*src);
            fib.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(*dst);
        }
    }

    #[inline(always)]
    fn tc_store_addrs(ctx: &TcContext, _: u16, addrs: &[[u8; 16]; 2], ports: Option<&[u8; 4]>) -> Result<(), i64> {
        ctx.store(ETH_LEN + IP6_SRC, addrs, 0)?;
        // A second store: a 36-byte block took tc_ingress_v6's call chain
        // past 6.1's 512-byte stack limit (544).
        match ports {
            Some(ports) => ctx.store(ETH_LEN + IP6_LEN, ports, 0),
            None => Ok(()),
        }
    }
}

/// The IPv6 parser with a frame of its own (see `Family::SPLIT`): its
/// walk's temporaries stay out of the hooks' frames.
/// The packet goes to `out`; returns 0, or the verdict's reason (see
/// `conntrack::create_call` on why not the `Result`).
#[inline(never)]
fn parse6_call<const L4: u8>(data: usize, end: usize, frame_len: usize, out: &mut Packet<[u8; 16]>) -> u32 {
    match parse6::parse::<L4>(data, end, frame_len) {
        Ok(p) => {
            *out = p;
            0
        }
        Err(v) => v.reason(),
    }
}

/// `hash::fold` of an IPv6 address, with a frame of its own: inlined, its 16
/// byte loads were spilled across the selection's frame.
#[inline(never)]
fn fold6(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes(lb_ebpf::hash::fold(a))
}
