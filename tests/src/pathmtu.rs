//! A client behind a router whose link to it carries only 1,400 bytes, on
//! a cluster's switch: a full-size download from a pod through a node must
//! find the smaller path MTU (the router's "fragmentation needed" has to
//! reach the pod through the node's translation).
use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{
    cluster::Cluster,
    netns::Netns,
    topology::{addr_up, veth},
};

/// The router (192.168.50.3 on the switch, 192.168.60.1 towards the
/// client) and the far client (192.168.60.2) behind its 1,400-byte link.
pub struct FarClient {
    _router: Netns,
    pub far: Netns,
}

impl FarClient {
    /// Wires the router to `c`'s switch and routes 192.168.60.0/24 through
    /// it on nodes 1..=`nodes`.
    pub fn new(c: &Cluster, nodes: usize) -> Self {
        let (router, far) = (Netns::new(), Netns::new());
        veth(&router, "eth0", &c.switch, "r0");
        c.switch.ip(&["link", "set", "r0", "master", "br0", "up"]);
        addr_up(&router, "eth0", "192.168.50.3/24");
        router.sysctl("net.ipv4.ip_forward", "1");
        veth(&router, "eth1", &far, "eth0");
        router.ip(&["link", "set", "eth1", "mtu", "1400"]);
        addr_up(&router, "eth1", "192.168.60.1/24");
        addr_up(&far, "eth0", "192.168.60.2/24");
        far.ip(&["route", "add", "default", "via", "192.168.60.1"]);
        // Frames from a wire carry complete checksums, as XDP expects.
        for (ns, dev) in [(&far, "eth0"), (&router, "eth0"), (&router, "eth1"), (&c.switch, "r0")] {
            ns.cmd("ethtool").args(["-K", dev, "tx", "off"]).output().ok();
        }
        for i in 1..=nodes {
            c.node(i).ns.ip(&["route", "add", "192.168.60.0/24", "via", "192.168.50.3"]);
        }
        Self { _router: router, far }
    }

    /// Downloads `size` bytes of the pods' `/bulk/` pattern from `to` (see [`download`]).
    pub fn download(&self, to: SocketAddr, size: usize) -> std::io::Result<(String, usize, bool)> {
        download(&self.far, to, size)
    }
}

/// Uploads a line of `size` bytes to `to` from `ns`; the pod's server
/// answers with its name once the line is in.
pub fn upload(ns: &Netns, to: SocketAddr, size: usize) -> std::io::Result<String> {
    ns.run(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut line = vec![b'u'; size];
        line.push(b'\n');
        s.write_all(&line)?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer)?;
        Ok(answer.trim_end().to_string())
    })
}

/// Downloads `size` bytes of a server's `/bulk/` pattern from `to`, from
/// `ns`: (the server that answered, the bytes received, whether they are
/// intact).
pub fn download(ns: &Netns, to: SocketAddr, size: usize) -> std::io::Result<(String, usize, bool)> {
    ns.run(move || {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(format!("GET /bulk/{size} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        let at = all.windows(4).position(|w| w == b"\r\n\r\n").map_or(all.len(), |p| p + 4);
        let body = &all[at..];
        let nl = body.iter().position(|&b| b == b'\n').unwrap_or(0);
        let data = &body[nl + 1..];
        let intact = data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
        Ok((String::from_utf8_lossy(&body[..nl]).into_owned(), data.len(), intact))
    })
}
