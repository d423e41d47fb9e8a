//! SNAT across nodes in the cluster harness (tests/src/cluster.rs): what a
//! flow survives and what the node does when it runs out of SNAT ports.
//! Real agents on every node, real TCP between the outside client and pods
//! on other nodes. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_common::counter;
use xdplb_tests::{
    cluster::{node_addr, tcp_requests, Cluster, ServiceDef, Source},
    servers::Conn,
};

const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;

/// Three nodes; `web` has pods on nodes 2 and 3 only, so every flow through
/// node 1's NodePort is SNATed.
fn cluster() -> Cluster {
    let mut c = Cluster::new(3, 2, Source::Kube);
    let remote: Vec<(usize, usize)> = c.all_pods().into_iter().filter(|&(n, _)| n != 1).collect();
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT), &remote);
    c.wait_backends(1, node_addr(1), NODE_PORT, 6, &remote);
    c
}

fn connect(c: &Cluster, n: usize) -> Vec<Conn> {
    let to = SocketAddr::from((node_addr(1), NODE_PORT));
    c.client.run(move || {
        (0..n).map(|_| Conn::new(TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connecting through the NodePort"))).collect()
    })
}

/// Asks every connection `rounds` times; returns (answers, failures), and
/// checks each answer came from the pod the connection was first given.
fn chat(conns: &mut [Conn], first: &mut Vec<String>, rounds: usize) -> (usize, usize) {
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
                Err(_) => failed += 1,
            }
        }
    }
    (ok, failed)
}

#[test]
fn snat_flows_survive_a_sigkill_of_the_agent_on_the_balancing_and_the_backend_node() {
    let mut c = cluster();
    // Sockets are made in the client's namespace; reading them works anywhere.
    let mut conns = connect(&c, 10);
    let mut first = Vec::new();
    let before = chat(&mut conns, &mut first, 3);
    assert!(first.iter().all(|who| !who.starts_with("node-1/")), "only remote pods serve: {first:?}");
    c.node_mut(1).kill_agent();
    let during = chat(&mut conns, &mut first, 3);
    c.node_mut(2).kill_agent();
    let both_down = chat(&mut conns, &mut first, 3);
    c.node_mut(1).start_agent();
    c.node_mut(1).wait_synced();
    c.node_mut(2).start_agent();
    c.node_mut(2).wait_synced();
    let after = chat(&mut conns, &mut first, 3);
    let fresh = tcp_requests(&c.client, SocketAddr::from((node_addr(1), NODE_PORT)), 50);
    println!(
        "10 SNAT connections: before {before:?}, node-1 agent killed {during:?}, node-2 agent killed too {both_down:?}, both restarted {after:?} (answers, failures); 50 new connections after: {} ok, {} failed",
        fresh.ok(),
        fresh.failed()
    );
    for (what, (ok, failed)) in [("before", before), ("during", during), ("both down", both_down), ("after", after)] {
        assert_eq!((ok, failed), (30, 0), "{what}\n{}", c.logs());
    }
    assert_eq!((fresh.ok(), fresh.failed()), (50, 0), "{}", c.logs());
}

#[test]
fn an_exhausted_snat_range_refuses_new_flows_counts_them_and_spares_the_live_ones() {
    let mut c = cluster();
    // One pod only (node 2, pod 0), and two SNAT ports on node 1: two flows fit.
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT), &[(2, 0)]);
    c.wait_backends(1, node_addr(1), NODE_PORT, 6, &[(2, 0)]);
    c.node_mut(1).restart_agent_with(&["--snat-ports", "62000-62001"]);
    let mut conns = connect(&c, 2);
    let mut first = Vec::new();
    assert_eq!(chat(&mut conns, &mut first, 2), (4, 0));
    // A third connection finds no port: its SYNs are dropped (it times out).
    let to = SocketAddr::from((node_addr(1), NODE_PORT));
    let third = c.client.run(move || TcpStream::connect_timeout(&to, Duration::from_millis(1500)).map(|_| ()));
    assert!(third.is_err(), "a third flow got through a two-port range");
    let dp = c.node_mut(1).maps();
    let refused = dp.counters().unwrap()[counter::DROP_SNAT_EXHAUSTED as usize];
    let per_backend = dp.snat_exhausted().unwrap();
    println!("two-port SNAT range: 2 live connections, third refused; drop_snat_exhausted={refused}, per backend {per_backend:?}");
    assert!(refused >= 1, "the refusal was counted");
    assert_eq!(per_backend.len(), 1, "against the one backend");
    assert_eq!(per_backend[0].1, refused);
    // The live connections never noticed.
    assert_eq!(chat(&mut conns, &mut first, 2), (4, 0));
    assert!(
        xdplb_tests::wait_for(Duration::from_secs(15), || c.node(1).log().contains("no free SNAT port")),
        "the agent logs the exhaustion:\n{}",
        c.node(1).log()
    );
}
