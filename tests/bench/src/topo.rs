//! The forwarding topology of the `live` and `skb` sections:
//!
//! ```text
//! gen ns eth0 ──veth── up0 node ns (ip_forward) bk0 ──veth── sink ns eth0 (bench_drop counts)
//!  192.168.1.2          192.168.1.1    172.31.0.1             172.31.0.2
//! ```
//! The node routes only the backends (10.128.0.0/12) to the sink, so a frame
//! reaches it only if it was NATed (or was sent to a backend directly).
//! Every veth has 2 queues, one per sender thread.
use std::net::Ipv4Addr;

use xdplb_bench_traffic::{TrafficConfig, TRAFFIC_FRAME_LEN};
use xdplb_tests::{
    netns::Netns,
    packet::{Frame, L4},
    topology::{addr_up, veth},
};

pub struct Topo {
    pub gen: Netns,
    pub node: Netns,
    pub sink: Netns,
    pub gen_ifindex: u32,
    pub bk0_ifindex: u32,
    up0_mac: [u8; 6],
    gen_mac: [u8; 6],
}

fn read(ns: &Netns, iface: &str, what: &str) -> String {
    let out = ns.cmd("cat").arg(format!("/sys/class/net/{iface}/{what}")).output().expect("cat");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let v: Vec<u8> = read(ns, iface, "address").split(':').map(|h| u8::from_str_radix(h, 16).expect("mac")).collect();
    v.try_into().expect("6 bytes")
}

fn ifindex(ns: &Netns, iface: &str) -> u32 {
    read(ns, iface, "ifindex").parse().expect("ifindex")
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Topo {
    pub fn new() -> Self {
        let (gen, node, sink) = (Netns::new(), Netns::new(), Netns::new());
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv4.conf.all.rp_filter", "0");
        veth(&node, "up0", &gen, "eth0");
        addr_up(&node, "up0", "192.168.1.1/24");
        addr_up(&gen, "eth0", "192.168.1.2/24");
        veth(&node, "bk0", &sink, "eth0");
        addr_up(&node, "bk0", "172.31.0.1/24");
        addr_up(&sink, "eth0", "172.31.0.2/24");
        // No ARP on the measured path.
        node.ip(&["neigh", "replace", "172.31.0.2", "lladdr", &fmt_mac(&mac(&sink, "eth0")), "dev", "bk0", "nud", "permanent"]);
        node.ip(&["route", "add", "10.128.0.0/12", "via", "172.31.0.2", "dev", "bk0"]);
        let t = Topo {
            gen_ifindex: ifindex(&gen, "eth0"),
            bk0_ifindex: ifindex(&node, "bk0"),
            up0_mac: mac(&node, "up0"),
            gen_mac: mac(&gen, "eth0"),
            gen,
            node,
            sink,
        };
        // Generator sources, so replies the node might send (ICMP) need no ARP.
        for src in ["192.168.1.10", "192.168.1.11"] {
            t.node.ip(&["neigh", "replace", src, "lladdr", &fmt_mac(&t.gen_mac), "dev", "up0", "nud", "permanent"]);
        }
        t
    }

    /// The senders' template to `dst:80`, 64 bytes: UDP with checksum 0
    /// (the kernel accepts it, the senders need not update it) or a TCP ACK
    /// with a valid checksum (conntrack checks it).
    pub fn frame(&self, proto: u8, dst: Ipv4Addr) -> [u8; TRAFFIC_FRAME_LEN] {
        let src = Ipv4Addr::new(192, 168, 1, 10);
        let f = if proto == lb_common::IPPROTO_TCP {
            Frame::tcp(src, 10_000, dst, 80, xdplb_tests::packet::TCP_ACK).payload(&[0; 10])
        } else {
            let mut f = Frame::udp(src, 10_000, dst, 80).payload(&[0; 22]);
            f.l4 = L4::Udp { zero_checksum: true };
            f
        };
        let mut b: [u8; TRAFFIC_FRAME_LEN] = f.bytes().try_into().expect("64-byte template");
        b[0..6].copy_from_slice(&self.up0_mac);
        b[6..12].copy_from_slice(&self.gen_mac);
        b
    }

    /// What the senders send: `flows` established flows per thread over
    /// `dsts` destinations from `dst`, every `new_every`th frame a new flow.
    pub fn traffic(&self, proto: u8, dst: Ipv4Addr, flows: u32, dsts: u32, new_every: u32) -> TrafficConfig {
        TrafficConfig { flows, dsts, dst_base: dst.octets(), new_every, frame: self.frame(proto, dst) }
    }

    /// Interface and IP counters, for `XDPLB_BENCH_DEBUG=1`.
    pub fn dump(&self) {
        for (ns, i) in [(&self.node, "up0"), (&self.node, "bk0"), (&self.gen, "eth0")] {
            let out = ns.cmd("ethtool").args(["-S", i]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            eprintln!("{i}: {}", out.lines().filter(|l| !l.ends_with(": 0")).collect::<Vec<_>>().join(" "));
        }
        let out = self.node.cmd("cat").arg("/proc/net/snmp").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        eprintln!("node: {}", out.lines().filter(|l| l.starts_with("Ip:")).collect::<Vec<_>>().join("\n"));
    }
}

impl Default for Topo {
    fn default() -> Self {
        Self::new()
    }
}
