//! Which nodes are alive, for the announcer: every agent sends a small UDP
//! heartbeat to every other node's address every [`Timings::every`] and
//! counts a node alive while one arrived within [`Timings::dead_after`].
//!
//! Why heartbeats and not a Lease per node: a failover under 2 s needs
//! liveness renewed at least every ~0.5 s, which with Leases is two API
//! writes per second per node (etcd write amplification, API server
//! priority and fairness queues; 200 writes/s for 100 nodes) and stops with
//! the API server. A heartbeat is one 32-byte datagram per peer per period
//! on the node network (100 nodes at 5/s: 500 packets/s per node, ~16 kB/s),
//! costs the API nothing, and fails with the very network path the address
//! is announced on. Full mesh (not memberlist's gossip) keeps it simple and
//! is fine up to a few hundred nodes.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Heartbeat timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    pub every: Duration,
    pub dead_after: Duration,
}

impl Default for Timings {
    /// 5 heartbeats per dead interval: a node is dead after 1 s, four lost
    /// datagrams in a row are tolerated.
    fn default() -> Self {
        Self {
            every: Duration::from_millis(200),
            dead_after: Duration::from_millis(1000),
        }
    }
}

/// The default UDP port of the heartbeats.
pub const DEFAULT_PORT: u16 = 7947;
/// First bytes of every heartbeat (the version is in the tag).
const MAGIC: &str = "xdplb-hb1 ";

/// What the members know: the peers' addresses, and when each was last heard.
#[derive(Debug, Default)]
struct State {
    /// Node name → its address (every node but this one).
    peers: BTreeMap<String, IpAddr>,
    heard: BTreeMap<String, Instant>,
    /// Nodes whose heartbeats came from another address (warned once).
    odd_source: std::collections::BTreeSet<String>,
}

/// The heartbeat sender/receiver of one agent.
#[derive(Clone, Debug)]
pub struct Members {
    me: String,
    timings: Timings,
    port: u16,
    started: Instant,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Members {
    /// Binds the heartbeat port and starts the sender and receiver threads.
    pub fn start(me: &str, port: u16, timings: Timings) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(("0.0.0.0", port))?;
        let m = Self {
            me: me.into(),
            timings,
            port,
            started: Instant::now(),
            state: Arc::default(),
        };
        let (rx, tx) = (sock.try_clone()?, sock);
        let recv = m.clone();
        std::thread::Builder::new()
            .name("lbip-heartbeat-rx".into())
            .spawn(move || recv.receive(rx))?;
        let send = m.clone();
        std::thread::Builder::new()
            .name("lbip-heartbeat-tx".into())
            .spawn(move || send.send(tx))?;
        Ok(m)
    }

    /// Sets the other nodes and their addresses (from the Node objects).
    pub fn set_peers(&self, peers: BTreeMap<String, IpAddr>) {
        let mut st = lock(&self.state);
        st.heard.retain(|n, _| peers.contains_key(n));
        st.peers = peers.into_iter().filter(|(n, _)| *n != self.me).collect();
    }

    /// Whether this agent has listened long enough to know who is alive
    /// (before that, it would think itself alone and claim everything). It
    /// heartbeats only from then on.
    pub fn settled(&self) -> bool {
        self.started.elapsed() >= self.timings.dead_after + self.timings.every
    }

    /// The live nodes, this one included, by name.
    pub fn live(&self) -> Vec<String> {
        let st = lock(&self.state);
        let mut out: Vec<String> = st
            .heard
            .iter()
            .filter(|(n, t)| st.peers.contains_key(*n) && t.elapsed() < self.timings.dead_after)
            .map(|(n, _)| n.clone())
            .collect();
        out.push(self.me.clone());
        out.sort();
        out
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    fn send(&self, sock: UdpSocket) {
        let msg = format!("{MAGIC}{}", self.me);
        // Silent until settled: a starting agent becomes a candidate for
        // the others only once it can answer, so no address waits on it.
        while !self.settled() {
            std::thread::sleep(self.timings.every);
        }
        loop {
            let peers: Vec<IpAddr> = lock(&self.state).peers.values().copied().collect();
            for p in peers {
                // A peer unreachable now (its link down) is what we detect: ignore.
                let _ = sock.send_to(msg.as_bytes(), SocketAddr::new(p, self.port));
            }
            std::thread::sleep(self.timings.every);
        }
    }

    fn receive(&self, sock: UdpSocket) {
        let mut buf = [0u8; 300];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Some(name) = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|s| s.strip_prefix(MAGIC))
            else {
                continue;
            };
            let mut st = lock(&self.state);
            let Some(&addr) = st.peers.get(name) else {
                continue;
            };
            // From another of the node's addresses (a multi-homed node whose
            // route to us has another source): still that node, but said once,
            // since a stray sender could keep a dead node alive this way.
            if addr != from.ip() && !st.odd_source.contains(name) {
                tracing::warn!(node = name, expected = %addr, from = %from.ip(), "heartbeat from an address that is not the Node's first InternalIP; accepted");
                st.odd_source.insert(name.to_string());
            }
            st.heard.insert(name.to_string(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_live_while_its_heartbeats_arrive_and_dead_after() {
        // A free port for this test (bound by Members right after).
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Timings {
            every: Duration::from_millis(20),
            dead_after: Duration::from_millis(200),
        };
        let m = Members::start("node-a", port, t).unwrap();
        m.set_peers(
            [
                ("node-a".to_string(), "127.0.0.9".parse().unwrap()),
                ("node-b".to_string(), "127.0.0.1".parse().unwrap()),
            ]
            .into(),
        );
        assert_eq!(m.live(), ["node-a"], "itself only, before any heartbeat");
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let beat = |name: &str| {
            peer.send_to(format!("{MAGIC}{name}").as_bytes(), ("127.0.0.1", port))
                .unwrap()
        };
        beat("node-b");
        beat("node-c"); // not a Node: ignored
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            m.live() == ["node-a", "node-b"]
        });
        assert!(seen, "{:?}", m.live());
        std::thread::sleep(t.dead_after + Duration::from_millis(50));
        assert_eq!(
            m.live(),
            ["node-a"],
            "dead after {:?} without a heartbeat",
            t.dead_after
        );
        assert!(m.settled());
    }
}
