//! The test topology of DESIGN.md, made of namespaces and veth pairs:
//!
//! ```text
//! client ns (eth0 192.168.1.2) ── up0 (192.168.1.1) node ns, ip_forward=1
//!                                   br0 10.0.2.1/24 ── backend i (eth0 10.0.2.11+i)
//!                                   pod0 10.0.3.1 ── pod ns (eth0 10.0.3.2)
//! ```
//! Every test gets its own namespaces, so addresses repeat freely across tests.
//! [`Topology::add_ipv6`] gives every link an IPv6 network beside its IPv4 one
//! (`fd00:1::/64` uplink, `fd00:2::/64` backends, `fd00:3::/64` pod).
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

pub const UPLINK: &str = "up0";
pub const POD_IFACE: &str = "pod0";
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
pub const POD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);

pub const NODE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const POD_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 2);

/// IPv6 address of backend `i` (0-based).
pub fn backend_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x11 + i as u16)
}

/// Address of backend `i` (0-based).
pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i as u8)
}

pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub pod: Netns,
    pub backends: Vec<Netns>,
}

/// Creates a veth pair `a`@`ns_a` ↔ `b`@`ns_b`, with two queues each (so live
/// frames and RSS can spread over both CPUs).
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) {
    crate::netns::run(std::process::Command::new("ip").args([
        "link", "add", a, "netns", ns_a.name(), "numtxqueues", "2", "numrxqueues", "2", "type", "veth",
        "peer", "name", b, "netns", ns_b.name(), "numtxqueues", "2", "numrxqueues", "2",
    ]));
}

/// Gives `iface` in `ns` an address and brings it up.
pub fn addr_up(ns: &Netns, iface: &str, cidr: &str) {
    ns.ip(&["addr", "add", cidr, "dev", iface]);
    ns.ip(&["link", "set", iface, "up"]);
}

impl Topology {
    /// Client, node, one pod and `n` backends, wired and routed.
    pub fn new(n: usize) -> Self {
        crate::require_root();
        let (client, node, pod) = (Netns::new(), Netns::new(), Netns::new());
        node.sysctl("net.ipv4.ip_forward", "1");

        veth(&node, UPLINK, &client, "eth0");
        // Replies leave the node with checksums completed in software, so
        // the client verifies every checksum the reverse NAT produced
        // (backends send partial checksums; tc must update them correctly).
        node.cmd("ethtool").args(["-K", UPLINK, "tx", "off"]).output().ok();
        addr_up(&node, UPLINK, "192.168.1.1/24");
        addr_up(&client, "eth0", "192.168.1.2/24");
        client.ip(&["route", "add", "default", "via", "192.168.1.1"]);
        // The client stands in for a host across a wire: frames from a wire
        // carry complete checksums (no offload partials), as XDP expects.
        client.cmd("ethtool").args(["-K", "eth0", "tx", "off"]).output().ok();

        node.ip(&["link", "add", "br0", "type", "bridge"]);
        addr_up(&node, "br0", "10.0.2.1/24");
        node.cmd("ethtool").args(["-K", "br0", "tx", "off"]).output().ok();
        let mut backends = Vec::new();
        for i in 0..n {
            let b = Netns::new();
            let host = format!("b{i}");
            veth(&node, &host, &b, "eth0");
            node.ip(&["link", "set", &host, "master", "br0", "up"]);
            // Checksums of forwarded packets are completed in software here,
            // so a wrong checksum seed (e.g. a partial checksum updated as a
            // full one) breaks the connection instead of going unnoticed.
            node.cmd("ethtool").args(["-K", &host, "tx", "off"]).output().ok();
            addr_up(&b, "eth0", &format!("{}/24", backend_addr(i)));
            b.ip(&["route", "add", "default", "via", "10.0.2.1"]);
            backends.push(b);
        }

        veth(&node, POD_IFACE, &pod, "eth0");
        addr_up(&node, POD_IFACE, "10.0.3.1/24");
        addr_up(&pod, "eth0", "10.0.3.2/24");
        pod.ip(&["route", "add", "default", "via", "10.0.3.1"]);
        Self { client, node, pod, backends }
    }

    /// Adds the IPv6 networks (no duplicate address detection, so the
    /// addresses are usable at once) and IPv6 forwarding on the node.
    pub fn add_ipv6(&self) {
        self.node.sysctl("net.ipv6.conf.all.forwarding", "1");
        let addr6 = |ns: &Netns, iface: &str, cidr: String| ns.ip(&["-6", "addr", "add", &cidr, "dev", iface, "nodad"]);
        addr6(&self.node, UPLINK, format!("{NODE_ADDR6}/64"));
        addr6(&self.client, "eth0", format!("{CLIENT_ADDR6}/64"));
        self.client.ip(&["-6", "route", "add", "default", "via", &NODE_ADDR6.to_string()]);
        addr6(&self.node, "br0", "fd00:2::1/64".into());
        for (i, b) in self.backends.iter().enumerate() {
            addr6(b, "eth0", format!("{}/64", backend_addr6(i)));
            b.ip(&["-6", "route", "add", "default", "via", "fd00:2::1"]);
        }
        addr6(&self.node, POD_IFACE, "fd00:3::1/64".into());
        addr6(&self.pod, "eth0", format!("{POD_ADDR6}/64"));
        self.pod.ip(&["-6", "route", "add", "default", "via", "fd00:3::1"]);
    }
}
