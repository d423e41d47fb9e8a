//! The dataplane outlives the agent: established connections keep flowing
//! while the agent is killed with SIGKILL and started again, and while a new
//! agent with a larger conntrack table takes over. Needs root.
use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::maps::MapInfo;
use xdplb_tests::{
    agent::{objects_dir, programmed, Agent, WEB_CLUSTER_IP},
    servers::{tally, Conn, Server},
    topology::Topology,
    wait_for,
};

/// What the chatting connections saw: per connection, the backends that
/// answered; and every error.
#[derive(Default)]
struct Seen {
    answers: Vec<Vec<String>>,
    errors: Vec<String>,
}

/// `n` long-lived connections to the ClusterIP, each asking in a loop on its
/// own thread until `stop`.
fn chat(t: &Topology, n: usize, stop: Arc<AtomicBool>) -> (Arc<Mutex<Seen>>, Vec<std::thread::JoinHandle<()>>) {
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let seen = Arc::new(Mutex::new(Seen { answers: vec![Vec::new(); n], ..Default::default() }));
    let threads = (0..n)
        .map(|i| {
            let mut conn = Conn::new(t.client.run(move || TcpStream::connect(to)).expect("connect"));
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match conn.ask() {
                        Ok(id) => seen.lock().unwrap().answers[i].push(id),
                        Err(e) => {
                            seen.lock().unwrap().errors.push(format!("connection {i}: {e}"));
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    (seen, threads)
}

fn asked(seen: &Mutex<Seen>) -> usize {
    seen.lock().unwrap().answers.iter().map(Vec::len).sum()
}

/// Every connection answered throughout, always by the same backend.
fn assert_undisturbed(seen: &Mutex<Seen>, min_each: usize) {
    let seen = seen.lock().unwrap();
    assert!(seen.errors.is_empty(), "connections failed: {:?}", seen.errors);
    for (i, a) in seen.answers.iter().enumerate() {
        assert!(a.len() >= min_each, "connection {i} got only {} answers", a.len());
        assert!(a.iter().all(|id| *id == a[0]), "connection {i} moved between backends");
    }
}

fn setup() -> (Topology, Vec<Server>) {
    let t = Topology::new(3);
    let servers = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    (t, servers)
}

fn wait_programmed(agent: &mut Agent) {
    let dp = agent.maps();
    let ok = wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 3));
    assert!(ok, "the service never reached the maps\n{}", agent.log());
}

/// The agent balancing 3 backends, and 10 long-lived connections chatting
/// through the ClusterIP (at least 100 answers already): the topology,
/// servers, agent, the chatter's stop flag, what it saw, its threads.
#[allow(clippy::type_complexity, reason = "a test fixture's parts, destructured at once")]
fn chatting() -> (Topology, Vec<Server>, Agent, Arc<AtomicBool>, Arc<Mutex<Seen>>, Vec<std::thread::JoinHandle<()>>) {
    let (t, servers) = setup();
    let mut agent = Agent::start(&t.node, &objects_dir(&[0, 1, 2]));
    wait_programmed(&mut agent);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, threads) = chat(&t, 10, stop.clone());
    assert!(wait_for(Duration::from_secs(5), || asked(&seen) >= 100));
    (t, servers, agent, stop, seen, threads)
}

#[test]
fn connections_survive_a_sigkill_and_restart_of_the_agent() {
    let (t, _servers, mut agent, stop, seen, threads) = chatting();

    agent.kill9();
    // No agent: the pinned programs and maps keep balancing, new flows too.
    let links: Vec<String> = std::fs::read_dir(agent.pin_dir.join("links")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(links.contains(&"up0@xdp_lb".to_string()) && links.contains(&"up0@tc_egress".to_string()), "pinned links: {links:?}");
    let during = tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), 30);
    assert_eq!(during.values().sum::<usize>(), 30, "new connections while no agent runs: {during:?}");
    let before = asked(&seen);
    assert!(wait_for(Duration::from_secs(5), || asked(&seen) >= before + 100), "traffic kept flowing without the agent");

    agent.start_again(&t.node, &[]);
    wait_programmed(&mut agent);
    assert!(wait_for(Duration::from_secs(10), || agent.sync_writes().len() >= 2), "the new agent synced\n{}", agent.log());
    assert_eq!(agent.sync_writes().last(), Some(&0), "the new agent adopted the maps without a write\n{}", agent.log());
    let before = asked(&seen);
    assert!(wait_for(Duration::from_secs(5), || asked(&seen) >= before + 100));
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|h| h.join().unwrap());
    assert_undisturbed(&seen, 30);
}

#[test]
fn an_agent_with_a_larger_conntrack_map_takes_over_without_resetting_connections() {
    let (t, _servers) = setup();
    let mut agent = Agent::start_with(&t.node, &objects_dir(&[0, 1, 2]), &["--max-flows", "65536"]);
    wait_programmed(&mut agent);
    let ct = agent.pin_dir.join("conntrack_v4");
    assert_eq!(MapInfo::from_pin(&ct).unwrap().max_entries(), 65536);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, threads) = chat(&t, 10, stop.clone());
    assert!(wait_for(Duration::from_secs(5), || asked(&seen) >= 100));

    // The "upgrade": a new agent whose conntrack table is twice as large.
    agent.kill9();
    agent.start_again(&t.node, &["--max-flows", "131072"]);
    wait_programmed(&mut agent);
    assert!(
        wait_for(Duration::from_secs(10), || MapInfo::from_pin(&ct).is_ok_and(|i| i.max_entries() == 131072)),
        "the pinned conntrack map was resized\n{}",
        agent.log()
    );
    assert!(agent.log().contains("resizing pinned map"), "the log says so\n{}", agent.log());
    let flows = agent.maps().flows().unwrap().len();
    assert!(flows >= 20, "the established flows moved into the new map: {flows}");
    let before = asked(&seen);
    assert!(wait_for(Duration::from_secs(5), || asked(&seen) >= before + 100), "traffic flows on the new map");
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|h| h.join().unwrap());
    assert_undisturbed(&seen, 30);
}

#[test]
fn an_agent_converts_the_backends_hash_of_an_earlier_version_without_resetting_connections() {
    use aya::maps::{HashMap, Map, MapData};
    let (t, _servers, mut agent, stop, seen, threads) = chatting();

    // What an earlier version leaves pinned: backends_v4 as a hash map keyed
    // by backend id (the attached programs keep the array they were loaded with).
    agent.kill9();
    let before = Agent::maps_of(&agent).contents().unwrap();
    let pin = agent.pin_dir.join("backends_v4");
    let entries = MapInfo::from_pin(&pin).unwrap().max_entries() - 1;
    std::fs::remove_file(&pin).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "hash", "key", "4", "value", "12", "entries", &entries.to_string(), "name", "backends_v4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let mut old: HashMap<MapData, u32, lb_common::BackendV4> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&pin).unwrap()).unwrap()).unwrap();
    for (id, b) in &before.backends {
        old.insert(id, b, 0).unwrap();
    }
    drop(old);

    agent.start_again(&t.node, &[]);
    wait_programmed(&mut agent);
    let info = MapInfo::from_pin(&pin).unwrap();
    assert_eq!((info.map_type().unwrap(), info.max_entries()), (aya::maps::MapType::Array, entries + 1));
    assert!(agent.log().contains("converting pinned map"), "the log says so\n{}", agent.log());
    assert!(wait_for(Duration::from_secs(10), || agent.sync_writes().len() >= 2), "the new agent synced\n{}", agent.log());
    assert_eq!(agent.sync_writes().last(), Some(&0), "the converted map held every backend\n{}", agent.log());
    assert_eq!(agent.maps().contents().unwrap(), before);
    let n = asked(&seen);
    assert!(wait_for(Duration::from_secs(5), || asked(&seen) >= n + 100), "traffic flows on the new map");
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|h| h.join().unwrap());
    assert_undisturbed(&seen, 30);
}
