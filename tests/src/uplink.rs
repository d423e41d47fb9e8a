//! A node's uplink for running the forward path under BPF_PROG_TEST_RUN
//! (`snat.rs`, `dsr.rs`, `snat_v6.rs`): `up0` (NODE, NODE_MAC, MTU 1500)
//! in a namespace of its own, with a route to node B's pod CIDR and node B
//! and the client as permanent neighbours, over IPv4 and IPv6 alike, so the
//! programs' FIB lookups (and so the output MACs and verdicts) are
//! deterministic; the addresses those tests use; and their fixture-file
//! runner.
use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::{
    fixture::{self, run_frame_on},
    lb::Lb,
    netns::{self, Netns},
    packet::{Frame, CLIENT_MAC, NODE_MAC},
    topology::{addr_up, veth},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
pub const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// A pod on node B (10.244.2.0/24 is routed via node B).
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// A pod on this node.
pub const POD_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A router on the uplink's segment.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 254);
pub const SNAT_PORT: u16 = 61000;

/// The IPv6 addresses of the same hosts (fd00:1::/64 on the uplink; node
/// B's pods in fd00:244:2::/64).
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
pub const NODE_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3);
pub const POD_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x10);
pub const POD_LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x10);
pub const LB_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);

pub struct Uplink {
    node: Netns,
    _wire: Netns,
    pub ifindex: u32,
}

impl Uplink {
    pub fn new() -> Self {
        let (node, wire) = (Netns::new(), Netns::new());
        // A node forwards (and the FIB lookup of a forwarded packet requires it).
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        // No duplicate address detection: the link-local address is final
        // at once, not announced again a second later (an address event
        // the next-hop tests would count as a routing change).
        node.sysctl("net.ipv6.conf.default.accept_dad", "0");
        node.sysctl("net.ipv6.conf.all.accept_dad", "0");
        veth(&node, "up0", &wire, "eth0");
        node.ip(&["link", "set", "up0", "address", &mac(NODE_MAC)]);
        addr_up(&node, "up0", "192.168.1.1/24");
        wire.ip(&["link", "set", "eth0", "up"]);
        node.ip(&["-6", "addr", "add", &format!("{NODE6}/64"), "dev", "up0", "nodad"]);
        node.ip(&["route", "add", "10.244.2.0/24", "via", &NODE_B.to_string()]);
        node.ip(&["-6", "route", "add", "fd00:244:2::/64", "via", &NODE_B6.to_string()]);
        for (addr, m) in [(NODE_B.into(), NODE_B_MAC), (CLIENT.into(), CLIENT_MAC), (NODE_B6.into(), NODE_B_MAC), (CLIENT6.into(), CLIENT_MAC)] {
            let addr: std::net::IpAddr = addr;
            node.ip(&["neigh", "replace", &addr.to_string(), "lladdr", &mac(m), "dev", "up0", "nud", "permanent"]);
        }
        let ifindex = node.ifindex("up0");
        Self { node, _wire: wire, ifindex }
    }

    /// Moves the calling thread (the test's own) into the node's namespace,
    /// where the FIB lookups of the test runs happen.
    pub fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.node.name())).expect("namespace file");
        netns::enter(&f);
    }

    /// Runs `ip args...` in the node's namespace (a route or neighbour change).
    pub fn ip(&self, args: &[&str]) -> String {
        self.node.ip(args)
    }

    /// Runs `frame` through xdp_lb as if it arrived on this uplink.
    pub fn xdp(&self, lb: &Lb, frame: &[u8]) -> (u32, Vec<u8>) {
        run_frame_on(&lb.ebpf, "xdp_lb", frame, Some(self.ifindex)).expect("BPF_PROG_TEST_RUN")
    }

    /// Runs every case of the fixture `file` through `lb`, as arrived on
    /// this uplink; panics naming each that failed (`what`: "SNAT", "DSR").
    pub fn run_fixtures(&self, lb: &Lb, file: &str, what: &str) {
        fixture::check_all(what, &fixture::load(file), |c| fixture::run_on(&lb.ebpf, c, Some(self.ifindex)));
    }
}

impl Default for Uplink {
    fn default() -> Self {
        Self::new()
    }
}

/// A MAC address as `ip` writes it.
pub fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A frame of either family, as far as the uplink's helpers change it.
pub trait OnWire {
    /// (source MAC, destination MAC, TTL or hop limit)
    fn wire(&mut self) -> (&mut [u8; 6], &mut [u8; 6], &mut u8);
}

impl OnWire for Frame {
    fn wire(&mut self) -> (&mut [u8; 6], &mut [u8; 6], &mut u8) {
        (&mut self.src_mac, &mut self.dst_mac, &mut self.ttl)
    }
}

impl OnWire for crate::packet6::Frame6 {
    fn wire(&mut self) -> (&mut [u8; 6], &mut [u8; 6], &mut u8) {
        (&mut self.src_mac, &mut self.dst_mac, &mut self.hop_limit)
    }
}

/// `f` as XDP forwards it out of the uplink: TTL (hop limit) one less,
/// our MAC as source, `to` as destination.
pub fn forwarded<F: OnWire>(mut f: F, to: [u8; 6]) -> F {
    let (src, dst, ttl) = f.wire();
    (*src, *dst, *ttl) = (NODE_MAC, to, *ttl - 1);
    f
}

/// `f` as node B sends it to this node (its MACs).
pub fn from_node_b<F: OnWire>(mut f: F) -> F {
    let (src, dst, _) = f.wire();
    (*src, *dst) = (NODE_B_MAC, NODE_MAC);
    f
}

/// `f` with other addresses and ports.
pub fn ends(mut f: Frame, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
    (f.src, f.sport, f.dst, f.dport) = (src.0, src.1, dst.0, dst.1);
    f
}

