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
            // Only from the node's own address: a stray sender cannot keep a dead node alive.
            if st.peers.get(name) == Some(&from.ip()) {
                st.heard.insert(name.to_string(), Instant::now());
            }
        }
    }
}
