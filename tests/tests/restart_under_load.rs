//! Five SIGKILL restarts of the agent in a row under continuous load: 50
//! long-lived TCP connections and 10 long-lived UDP flows asking every 20 ms,
//! a new TCP connection and a new UDP flow every 10 ms. Nothing established
//! is reset or moved, no new connection fails (inside or outside the restart
//! windows), and the maps are the same afterwards. Needs root.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use xdplb_tests::{
    agent::{Agent, WEB_CLUSTER_IP},
    load::{inside, Load, Setup},
    wait_for,
};

const RESTARTS: usize = 5;

#[test]
fn five_sigkill_restarts_under_load_reset_nothing_and_change_no_map() {
    let Setup { t, servers: _servers, mut agent } = Setup::start(&[]);
    let before = agent.maps().contents().unwrap();

    let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let load = Load::start(&t.client, vip, vip, 50, 10);
    assert!(load.wait_more(500, Duration::from_secs(30)), "the load got going");

    let mut windows = Vec::new();
    let mut outage_ms = Vec::new();
    for round in 0..RESTARTS {
        let synced = agent.sync_writes().len();
        let start = Instant::now();
        agent.kill9();
        // A moment with no agent at all: the pinned dataplane alone serves.
        std::thread::sleep(Duration::from_millis(300));
        agent.start_again(&t.node, &[]);
        agent.maps(); // running again: the deadline below is the sync's, not the verifier's
        let ok = wait_for(Duration::from_secs(60), || {
            agent.assert_alive();
            agent.sync_writes().len() > synced
        });
        assert!(ok, "restart {round}: the new agent never synced\n{}", agent.log());
        windows.push((start, Instant::now()));
        outage_ms.push(start.elapsed().as_millis());
        assert_eq!(agent.sync_writes().last(), Some(&0), "restart {round}: adopted without a write\n{}", agent.log());
        assert!(load.wait_more(300, Duration::from_secs(30)), "restart {round}: traffic flows after it");
    }
    let seen = load.stop();
    let after = Agent::maps_of(&agent).contents().unwrap();

    let (new_in, new_out): (Vec<_>, Vec<_>) = seen.new_failures.iter().partition(|f| inside(f.at, &windows));
    let tcp_answers: usize = seen.long_tcp.iter().map(Vec::len).sum();
    let udp_answers: usize = seen.long_udp.iter().map(Vec::len).sum();
    println!(
        "restart_under_load: {RESTARTS} SIGKILL restarts (kill to synced: {outage_ms:?} ms); \
         50 long TCP: {tcp_answers} answers; 10 long UDP: {udp_answers} answers; \
         long failures {}; moved {}; new TCP {} ok, new UDP {} ok; \
         new failures inside restart windows {}, outside {}",
        seen.long_failures.len(),
        seen.moved().len(),
        seen.new_tcp_ok,
        seen.new_udp_ok,
        new_in.len(),
        new_out.len(),
    );
    assert!(seen.long_failures.is_empty(), "established connections or flows failed: {:?}", seen.long_failures);
    assert!(seen.moved().is_empty(), "moved between backends: {:?}", seen.moved());
    assert!(seen.long_tcp.iter().chain(&seen.long_udp).all(|a| a.len() >= 20), "every long-lived flow kept answering");
    assert!(new_out.is_empty(), "new connections failed outside the restart windows: {new_out:?}");
    // The pinned dataplane serves new flows while no agent runs, too.
    assert!(new_in.is_empty(), "new connections failed inside the restart windows: {new_in:?}");
    assert!(seen.new_tcp_ok >= 200 && seen.new_udp_ok >= 200, "new connections were made throughout");
    assert_eq!(after, before, "the maps are unchanged after {RESTARTS} restarts");
}
