//! Long-lived TCP connections through a cluster's service: made from the
//! outside client, asked in rounds (each must keep answering from the pod
//! it was first given), and carried through SIGKILLs of the agents.
use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{cluster::Cluster, servers::Conn};

/// `n` connections from the cluster's client to `to`.
pub fn connect(c: &Cluster, to: SocketAddr, n: usize) -> Vec<Conn> {
    // Sockets are made in the client's namespace; reading them works anywhere.
    c.client.run(move || (0..n).map(|_| Conn::new(TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connecting"))).collect())
}

/// Asks every connection `rounds` times; returns (answers, failures), and
/// checks each answer came from the pod the connection was first given.
pub fn chat(conns: &mut [Conn], first: &mut Vec<String>, rounds: usize) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..rounds {
        for (i, conn) in conns.iter_mut().enumerate() {
            match conn.ask() {
                Ok(who) => {
                    if first.len() <= i {
                        first.push(who.clone());
                    }
                    assert_eq!(who, first[i], "connection {i} moved to another backend");
                    ok += 1;
                }
                Err(e) => {
                    eprintln!("connection {i} ({:?}): {e}", conn.peer());
                    failed += 1
                }
            }
        }
    }
    (ok, failed)
}

/// (answers, failures) of three rounds in each phase of [`through_sigkills`].
#[derive(Debug)]
pub struct Phases {
    pub before: (usize, usize),
    /// The balancing node's agent killed.
    pub during: (usize, usize),
    /// The backend nodes' agents killed too.
    pub all_down: (usize, usize),
    /// Every killed agent restarted and synced.
    pub after: (usize, usize),
}

/// Chats over `conns` (made through node 1, served by pods on
/// `backend_nodes`) while node 1's agent is SIGKILLed, then those of
/// `backend_nodes` too, then all of them are restarted.
pub fn through_sigkills(c: &mut Cluster, conns: &mut [Conn], first: &mut Vec<String>, backend_nodes: &[usize]) -> Phases {
    let before = chat(conns, first, 3);
    assert!(first.iter().all(|who| !who.starts_with("node-1/")), "only remote pods serve: {first:?}");
    c.node_mut(1).kill_agent();
    let during = chat(conns, first, 3);
    for &i in backend_nodes {
        c.node_mut(i).kill_agent();
    }
    let all_down = chat(conns, first, 3);
    for &i in [1].iter().chain(backend_nodes) {
        c.node_mut(i).start_agent();
        c.node_mut(i).wait_synced();
    }
    let after = chat(conns, first, 3);
    Phases { before, during, all_down, after }
}
