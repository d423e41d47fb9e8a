//! IPv6 Neighbour Discovery (RFC 4861) for the LoadBalancer addresses this
//! node owns: Neighbour Solicitations are parsed and answered with a
//! Neighbour Advertisement naming the uplink's MAC, and an unsolicited one
//! announces an address taken over (the IPv6 gratuitous ARP). Frames are
//! built and checked (ICMPv6 pseudo-header checksum) with `etherparse`.
//!
//! The flags, and why:
//! - S (solicited) on answers to a solicitation from an address, unset on
//!   answers to Duplicate Address Detection probes (unspecified source,
//!   sent to all-nodes as §7.2.4 requires) and on unsolicited ones.
//! - O (override) always: one node owns the address, it is neither anycast
//!   nor proxied. A client whose entry still names the previous owner (STALE
//!   or PROBE after a failover) ignores an advertisement without O that
//!   carries another MAC (§7.2.5) and would keep the dead node's MAC until
//!   its entry fails. (MetalLB clears O on solicited answers.)
//! - A DAD probe for an owned address is answered, as the kernel does for
//!   its own addresses: a host that tries to configure the Service's
//!   address sees it is taken instead of silently stealing it. (MetalLB
//!   ignores solicitations without a source link-layer option, so DAD too.)
//!   It is not a conflict for this node: the address stays here, the probe
//!   is logged.
use std::{
    collections::BTreeSet,
    io,
    net::{Ipv6Addr, UdpSocket},
};

use etherparse::{
    icmpv6::{Icmpv6PayloadSlice, NdpOptionSlice, NeighborAdvertisementHeader},
    Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};

use super::link::{Insn, LinkSocket};

pub const ETH_P_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Ethernet (14) + IPv6 (40) + NA (24) + target link-layer option (8).
pub const ADVERTISEMENT_LEN: usize = 86;

/// The socket filter: only Neighbour Solicitations (ICMPv6 right after the
/// IPv6 header, type 135) are copied to the responder, not every IPv6
/// frame the node receives.
pub fn filter() -> [Insn; 8] {
    let insn = |code: u32, jt: u8, jf: u8, k: u32| Insn {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jeq, ret) = (
        libc::BPF_LD | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    [
        insn(ld | libc::BPF_H, 0, 0, 12), // EtherType
        insn(jeq, 0, 5, u32::from(ETH_P_IPV6)),
        insn(ld | libc::BPF_B, 0, 0, 20), // IPv6 next header
        insn(jeq, 0, 3, u32::from(ICMPV6)),
        insn(ld | libc::BPF_B, 0, 0, 54), // ICMPv6 type
        insn(jeq, 0, 1, u32::from(NEIGHBOR_SOLICITATION)),
        insn(ret, 0, 0, 0xffff), // the whole frame
        insn(ret, 0, 0, 0),      // none of it
    ]
}

/// A Neighbour Solicitation that passed RFC 4861 §7.1.1's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Solicitation {
    /// The Ethernet source.
    pub src_mac: [u8; 6],
    /// Unspecified (`::`) for a Duplicate Address Detection probe.
    pub src_ip: Ipv6Addr,
    pub target: Ipv6Addr,
    /// The source link-layer address option.
    pub src_lladdr: Option<[u8; 6]>,
}

impl Solicitation {
    pub fn is_dad(&self) -> bool {
        self.src_ip.is_unspecified()
    }
}

/// The solicitation in an Ethernet frame, if it is a valid one.
pub fn parse_solicitation(frame: &[u8]) -> Option<Solicitation> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let src_mac = p.link.as_ref()?.to_header()?.ethernet2()?.source;
    let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) = (&p.net, &p.transport)
    else {
        return None;
    };
    let h = ip.header();
    let (src_ip, dst_ip) = (h.source_addr(), h.destination_addr());
    let valid = h.hop_limit() == 255
        && icmp.code_u8() == 0
        && icmp.icmp_type() == Icmpv6Type::NeighborSolicitation
        && icmp.is_checksum_valid(src_ip.octets(), dst_ip.octets());
    if !valid {
        return None;
    }
    let Ok(Icmpv6PayloadSlice::NeighborSolicitation(ns)) = icmp.payload_slice() else {
        return None;
    };
    let target = ns.target_address();
    if target.is_multicast() {
        return None;
    }
    let mut src_lladdr = None;
    for o in ns.options_iterator() {
        // A malformed option (zero length, past the end) voids the message.
        if let NdpOptionSlice::SourceLinkLayerAddress(l) = o.ok()? {
            src_lladdr = l.link_layer_address().try_into().ok();
        }
    }
    // A DAD probe goes to the target's solicited-node group, without a
    // source link-layer address (there is no source to cache).
    if src_ip.is_unspecified() && (dst_ip != solicited_node(target) || src_lladdr.is_some()) {
        return None;
    }
    Some(Solicitation {
        src_mac,
        src_ip,
        target,
        src_lladdr,
    })
}

/// A Neighbour Advertisement from `mac` for `target` (also its IPv6
/// source, as the kernel does for its own addresses), with the target
/// link-layer option.
fn advertisement(
    mac: [u8; 6],
    dst_mac: [u8; 6],
    dst: Ipv6Addr,
    target: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    let flags = NeighborAdvertisementHeader {
        router: false,
        solicited,
        r#override: true,
    };
    let mut payload = [0u8; 24];
    payload[..16].copy_from_slice(&target.octets());
    payload[16] = 2; // target link-layer address
    payload[17] = 1; // in units of 8 bytes
    payload[18..].copy_from_slice(&mac);
    let mut out = Vec::with_capacity(ADVERTISEMENT_LEN);
    PacketBuilder::ethernet2(mac, dst_mac)
        .ipv6(target.octets(), dst.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(flags))
        .write(&mut out, &payload)
        .expect("writing to a Vec does not fail, and 24 bytes fit in any packet");
    out
}

/// The answer to `ns`: to the solicitor (its link-layer option, else the
/// frame's source MAC), or to all-nodes for a DAD probe.
pub fn answer(mac: [u8; 6], ns: &Solicitation) -> Vec<u8> {
    if ns.is_dad() {
        advertisement(mac, multicast_mac(ALL_NODES), ALL_NODES, ns.target, false)
    } else {
        let dst_mac = ns.src_lladdr.unwrap_or(ns.src_mac);
        advertisement(mac, dst_mac, ns.src_ip, ns.target, true)
    }
}

/// An unsolicited advertisement to all-nodes: every host with `addr` in
/// its neighbour cache moves it to `mac` (O set), in state STALE.
pub fn unsolicited(mac: [u8; 6], addr: Ipv6Addr) -> Vec<u8> {
    advertisement(mac, multicast_mac(ALL_NODES), ALL_NODES, addr, false)
}

/// The solicited-node multicast group of `addr`, ff02::1:ffXX:XXXX
/// (its low 24 bits), where solicitations for it are sent.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address of an IPv6 multicast group, 33:33 + its low 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node groups this node listens to, kept in step with the
/// IPv6 addresses it owns.
///
/// Each group is joined twice, on purpose: on the packet socket
/// (PACKET_MR_MULTICAST), which puts its MAC in the NIC's filter whatever
/// the interface's IPv6 settings; and at the IPv6 layer (MLD), so that a
/// switch with MLD snooping forwards the solicitations to this port.
/// Promiscuous or all-multicast mode would also receive them but copy every
/// frame of the segment to the kernel. Both memberships end with the
/// sockets, so a killed agent leaves none behind.
#[derive(Debug)]
pub struct Groups {
    mld: Option<UdpSocket>,
    joined: BTreeSet<Ipv6Addr>,
    warned: bool,
}

impl Groups {
    pub fn new() -> Self {
        Self {
            mld: UdpSocket::bind("[::]:0").ok(),
            joined: BTreeSet::new(),
            warned: false,
        }
    }

    /// Joins the groups of `owned` not joined yet, and leaves the others.
    pub fn set(&mut self, link: &LinkSocket, owned: impl IntoIterator<Item = Ipv6Addr>) {
        let want: BTreeSet<Ipv6Addr> = owned.into_iter().map(solicited_node).collect();
        for g in want.difference(&self.joined).copied().collect::<Vec<_>>() {
            if let Err(e) = link.join(multicast_mac(g)) {
                tracing::warn!(group = %g, error = %e, "joining a solicited-node group on the uplink failed: solicitations for it may not arrive");
            }
            let mld = match &self.mld {
                Some(s) => s.join_multicast_v6(&g, link.ifindex as u32),
                None => Err(io::Error::other("no IPv6 socket")),
            };
            if let Err(e) = mld {
                if !self.warned {
                    tracing::warn!(group = %g, error = %e, "no MLD report for a solicited-node group (IPv6 off on the uplink?): a switch with MLD snooping may not forward solicitations");
                    self.warned = true;
                }
            }
            self.joined.insert(g);
        }
        for g in self.joined.difference(&want).copied().collect::<Vec<_>>() {
            let _ = link.leave(multicast_mac(g));
            if let Some(s) = &self.mld {
                let _ = s.leave_multicast_v6(&g, link.ifindex as u32);
            }
            self.joined.remove(&g);
        }
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Frames the Linux kernel (6.18) sent between two namespaces on a
    /// veth pair, captured with `tcpdump -xx`: node A (02:00:00:00:00:01)
    /// holds fd00:50::201, client B (02:00:00:00:00:09) fd00:50::2.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect()
    }
    /// B asks who has fd00:50::201.
    pub(crate) const NS: &str =
        "3333 ff00 0201 0200 0000 0009 86dd 6000 0000 0020 3aff fd00 0050 0000 0000 0000
        0000 0000 0002 ff02 0000 0000 0000 0000 0001 ff00 0201 8700 78f0 0000 0000 fd00
        0050 0000 0000 0000 0000 0000 0201 0101 0200 0000 0009";
    /// A's answer: unicast, S and O, target link-layer option.
    pub(crate) const NA: &str =
        "0200 0000 0009 0200 0000 0001 86dd 6000 0000 0020 3aff fd00 0050 0000 0000 0000
        0000 0000 0201 fd00 0050 0000 0000 0000 0000 0000 0002 8800 17ac 6000 0000 fd00
        0050 0000 0000 0000 0000 0000 0201 0201 0200 0000 0001";
    /// B probes (DAD, with an RFC 7527 nonce option) for A's address.
    pub(crate) const DAD: &str =
        "3333 ff00 0201 0200 0000 0009 86dd 6000 0000 0020 3aff 0000 0000 0000 0000 0000
        0000 0000 0000 ff02 0000 0000 0000 0000 0001 ff00 0201 8700 fb1b 0000 0000 fd00
        0050 0000 0000 0000 0000 0000 0201 0e01 8904 11c9 d562";
    /// A defends it: to all-nodes, O only.
    pub(crate) const DAD_NA: &str =
        "3333 0000 0001 0200 0000 0001 86dd 6000 0000 0020 3aff fd00 0050 0000 0000 0000
        0000 0000 0201 ff02 0000 0000 0000 0000 0000 0000 0001 8800 55fb 2000 0000 fd00
        0050 0000 0000 0000 0000 0000 0201 0201 0200 0000 0001";
    /// A's unsolicited advertisement of its link-local address (ndisc_notify).
    const UNSOLICITED: &str =
        "3333 0000 0001 0200 0000 0001 86dd 6000 0000 0020 3aff fe80 0000 0000 0000 0000
        00ff fe00 0001 ff02 0000 0000 0000 0000 0000 0000 0001 8800 599b 2000 0000 fe80
        0000 0000 0000 0000 00ff fe00 0001 0201 0200 0000 0001";
    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 9];
    const LB: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x201);

    #[test]
    fn a_solicitation_is_answered_byte_for_byte_as_the_kernel_does() {
        let ns = parse_solicitation(&hex(NS)).unwrap();
        assert_eq!(
            ns,
            Solicitation {
                src_mac: B,
                src_ip: "fd00:50::2".parse().unwrap(),
                target: LB,
                src_lladdr: Some(B),
            }
        );
        let na = answer(A, &ns);
        assert_eq!(na.len(), ADVERTISEMENT_LEN);
        assert_eq!(na, hex(NA));
        // The answer names the target but is no solicitation.
        assert_eq!(parse_solicitation(&na), None);
    }

    #[test]
    fn a_dad_probe_is_answered_to_all_nodes_without_s() {
        let ns = parse_solicitation(&hex(DAD)).unwrap();
        assert!(ns.is_dad());
        assert_eq!((ns.target, ns.src_lladdr), (LB, None));
        assert_eq!(answer(A, &ns), hex(DAD_NA));
    }

    #[test]
    fn an_unsolicited_advertisement_matches_the_kernels() {
        let ll: Ipv6Addr = "fe80::ff:fe00:1".parse().unwrap();
        assert_eq!(unsolicited(A, ll), hex(UNSOLICITED));
        assert_eq!(
            unsolicited(A, LB),
            hex(DAD_NA),
            "the same message for the LB address"
        );
    }

    #[test]
    fn invalid_solicitations_are_refused() {
        let good = hex(NS);
        // Byte offsets: hop limit 21, ICMPv6 code 55, checksum 56..58, target 62..78.
        let mut hop = good.clone();
        hop[21] = 64;
        let mut sum = good.clone();
        sum[57] ^= 1;
        let mut code = good.clone();
        code[55] = 1;
        let mut mcast_target = good.clone();
        mcast_target[62] = 0xff;
        let mut zero_option = good.clone();
        zero_option[79] = 0; // option length 0
        for (what, f) in [
            ("hop limit 64", hop),
            ("bad checksum", sum),
            ("code 1", code),
            ("multicast target", mcast_target),
            ("zero-length option", zero_option),
            ("truncated", good[..70].to_vec()),
        ] {
            assert_eq!(parse_solicitation(&f), None, "{what}");
        }
        // A DAD probe must go to the target's solicited-node group.
        let mut dad = hex(DAD);
        dad[38..54].copy_from_slice(&ALL_NODES.octets());
        assert_eq!(parse_solicitation(&dad), None, "DAD probe to all-nodes");
    }

    #[test]
    fn groups_and_their_macs() {
        let g = solicited_node(LB);
        assert_eq!(g, "ff02::1:ff00:201".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(g), [0x33, 0x33, 0xff, 0x00, 0x02, 0x01]);
        assert_eq!(
            &hex(NS)[..6],
            &multicast_mac(g),
            "where the kernel sent its solicitation"
        );
    }

    /// The socket filter, run by the kernel on real frames (a test run of
    /// classic BPF is a socket's own receive path: a socketpair).
    #[test]
    fn the_filter_keeps_solicitations_only() {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: socketpair(2) fills `fds`, owned right below.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (tx, rx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let prog = filter();
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut Insn,
        };
        // SAFETY: a valid sock_fprog of the size given.
        let rc = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let arp = crate::lbip::arp::gratuitous(A, "10.0.0.1".parse().unwrap());
        for f in [hex(NA), arp.to_vec(), hex(DAD), hex(NS)] {
            // SAFETY: `f` is valid for reads of its length.
            let n = unsafe { libc::send(tx.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(n, f.len() as isize);
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            got.push(buf[..n as usize].to_vec());
        }
        assert_eq!(
            got,
            [hex(DAD), hex(NS)],
            "the advertisement and the ARP are filtered out"
        );
    }
}
