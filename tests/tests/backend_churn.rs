//! Endpoints that change under traffic, with the agent following the API
//! server double: backends added and removed every 100 ms (10 s here; a
//! minute in `cargo xtask soak`, XDPLB_CHURN_SECS), a rolling update, and
//! the Kubernetes e2e UDP conntrack cases. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use lb_agent::dataplane::Dataplane;
use lb_common::direction;
use xdplb_tests::{
    agent::{programmed_at, Agent, WEB_CLUSTER_IP},
    apiserver::objects::Cond,
    kubeweb::{holds, ready, setup, slice},
    load::Load,
    servers::udp_ask,
    topology::{backend_addr, Topology},
    wait_for,
};

/// Waits until both frontends of `web` have exactly `ids` in their slots.
fn wait_slots(agent: &mut Agent, dp: &Dataplane, ids: &[usize]) {
    let ok = wait_for(Duration::from_secs(20), || {
        agent.assert_alive();
        holds(dp, ids)
    });
    let want: Vec<Ipv4Addr> = ids.iter().map(|&i| backend_addr(i)).collect();
    assert!(ok, "the maps never held {want:?}: {:?}\n{}", programmed_at(dp, WEB_CLUSTER_IP, 80, 6), agent.log());
}

fn identity(i: usize) -> String {
    format!("backend-{i}")
}

/// Conntrack entries (either half) that lead to or come from `addrs`.
fn entries_of(dp: &Dataplane, addrs: &[Ipv4Addr]) -> usize {
    let flows = dp.flows().unwrap();
    flows
        .iter()
        .filter(|(k, e)| {
            let end = if e.direction == direction::FORWARD { e.nat_addr } else { k.src_addr };
            addrs.contains(&Ipv4Addr::from(end))
        })
        .count()
}

const SURVIVORS: [usize; 3] = [0, 1, 2];
const CHURNERS: [usize; 3] = [3, 4, 5];
const CHURN_EVERY: Duration = Duration::from_millis(100);

#[test]
fn backends_churning_every_100ms_reset_no_survivor_and_get_no_packet_once_removed() {
    let secs: u64 = std::env::var("XDPLB_CHURN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let all: Vec<usize> = SURVIVORS.iter().chain(&CHURNERS).copied().collect();
    let (t, _servers, api, mut agent, dp) = setup(6, ready(&all), &[]);
    wait_slots(&mut agent, &dp, &all);
    let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let load = Load::start(&t.client, vip, vip, 30, 12);
    assert!(load.wait_more(300, Duration::from_secs(30)), "the load got going");

    // Per churner: whether it is in the slice, and since when its removal
    // is applied (seen in the maps).
    let mut present = [true; 3];
    let mut removed_at: [Option<Instant>; 3] = [None; 3];
    // (churner, removal applied, re-added to the slice): no request sent
    // inside may be answered by it.
    let mut windows: Vec<(usize, Instant, Instant)> = Vec::new();
    let mut apply_ms = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut events = 0;
    while Instant::now() < end {
        let tick = Instant::now();
        let k = events % 3;
        present[k] = !present[k];
        if present[k] {
            windows.push((CHURNERS[k], removed_at[k].take().unwrap(), Instant::now()));
        }
        let ids: Vec<usize> = SURVIVORS.iter().copied().chain((0..3).filter(|&j| present[j]).map(|j| CHURNERS[j])).collect();
        api.apply(ready(&ids));
        wait_slots(&mut agent, &dp, &ids);
        if !present[k] {
            removed_at[k] = Some(Instant::now());
        }
        apply_ms.push(tick.elapsed().as_secs_f64() * 1000.0);
        events += 1;
        std::thread::sleep(CHURN_EVERY.saturating_sub(tick.elapsed()));
    }
    // Every churner removed for good.
    api.apply(ready(&SURVIVORS));
    wait_slots(&mut agent, &dp, &SURVIVORS);
    let forever = Instant::now() + Duration::from_secs(3600);
    for (k, r) in removed_at.iter().enumerate() {
        windows.push((CHURNERS[k], r.unwrap_or_else(Instant::now), forever));
    }
    assert!(load.wait_more(300, Duration::from_secs(30)), "traffic flows after the churn");
    let seen = load.stop();

    // Entries of removed backends are deleted with the sync that removes them.
    let churner_addrs: Vec<Ipv4Addr> = CHURNERS.iter().map(|&i| backend_addr(i)).collect();
    let cleaned = wait_for(Duration::from_secs(10), || entries_of(&dp, &churner_addrs) == 0);
    let left = entries_of(&dp, &churner_addrs);

    let survivor_ids: Vec<String> = SURVIVORS.iter().map(|&i| identity(i)).collect();
    let on_survivor = |a: &Vec<String>| a.first().is_some_and(|id| survivor_ids.contains(id));
    let tcp_survivor_failed: Vec<usize> = seen.long_tcp_failed.iter().copied().filter(|&i| seen.long_tcp[i].first().is_none_or(|id| survivor_ids.contains(id))).collect();
    let tcp_churner_failed = seen.long_tcp_failed.len() - tcp_survivor_failed.len();
    let udp_survivor_moved = seen.long_udp.iter().filter(|a| on_survivor(a) && a.iter().any(|id| *id != a[0])).count();
    let late: Vec<(String, Duration)> = seen
        .answers
        .iter()
        .filter_map(|(sent, id)| {
            windows
                .iter()
                .find(|(k, from, to)| *id == identity(*k) && sent > from && sent < to)
                .map(|(_, from, _)| (id.clone(), sent.duration_since(*from)))
        })
        .collect();
    apply_ms.sort_by(f64::total_cmp);
    println!(
        "backend_churn: {events} changes in {secs} s (apply seen in the maps: median {:.0} ms, max {:.0} ms); \
         long TCP on survivors failed {} of {}, on churners failed {tcp_churner_failed} (their backend was removed); \
         long UDP on survivors moved {udp_survivor_moved}; answers {} ({} new TCP, {} new UDP; new failed {}); \
         answers from a backend after its removal was applied {}; conntrack entries of removed backends left {left}",
        apply_ms[apply_ms.len() / 2],
        apply_ms[apply_ms.len() - 1],
        tcp_survivor_failed.len(),
        seen.long_tcp.iter().filter(|a| on_survivor(a)).count(),
        seen.answers.len(),
        seen.new_tcp_ok,
        seen.new_udp_ok,
        seen.new_failures.len(),
        late.len(),
    );
    assert!(events >= 20, "the churn ran");
    assert!(tcp_survivor_failed.is_empty(), "connections to surviving backends failed: {:?}", seen.long_failures);
    assert_eq!(udp_survivor_moved, 0, "UDP flows of surviving backends moved");
    assert!(late.is_empty(), "answered by a backend after its removal was applied: {late:?}");
    assert!(cleaned, "{left} conntrack entries of removed backends left\n{}", agent.log());
    assert!(agent.log().contains("removed the conntrack entries of removed backends"), "{}", agent.log());
}

#[test]
fn a_rolling_update_fails_no_request_of_a_client_that_does_not_retry() {
    let old = [0, 1, 2];
    let (t, _servers, api, mut agent, dp) = setup(6, ready(&old), &[]);
    wait_slots(&mut agent, &dp, &old);
    let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
    // New TCP connections and UDP flows every 10 ms, one attempt each.
    let load = Load::start(&t.client, vip, vip, 0, 0);
    assert!(load.wait_more(100, Duration::from_secs(30)));

    // As a Deployment's rolling update (maxSurge 1, maxUnavailable 0): a new
    // pod becomes ready, then an old one terminates (serving, not ready)
    // for its grace period, then is removed.
    let mut eps: Vec<(usize, Cond)> = old.iter().map(|&i| (i, Cond::Ready)).collect();
    let readies = |eps: &Vec<(usize, Cond)>| eps.iter().filter(|(_, c)| *c == Cond::Ready).map(|(i, _)| *i).collect::<Vec<_>>();
    for (o, n) in old.iter().zip([3, 4, 5]) {
        eps.push((n, Cond::Ready));
        api.apply(slice(&eps));
        wait_slots(&mut agent, &dp, &readies(&eps));
        eps.iter_mut().filter(|(i, _)| i == o).for_each(|e| e.1 = Cond::Terminating);
        api.apply(slice(&eps));
        wait_slots(&mut agent, &dp, &readies(&eps));
        std::thread::sleep(Duration::from_millis(500));
        eps.retain(|(i, _)| i != o);
        api.apply(slice(&eps));
        wait_slots(&mut agent, &dp, &readies(&eps));
        assert!(load.wait_more(50, Duration::from_secs(30)));
    }
    let done = Instant::now();
    assert!(load.wait_more(100, Duration::from_secs(30)));
    let seen = load.stop();
    let after: Vec<&String> = seen.answers.iter().filter(|(sent, _)| *sent > done).map(|(_, id)| id).collect();
    println!(
        "rolling_update: 3 pods replaced; {} requests answered ({} TCP, {} UDP), {} failed; {} after the update, all by new pods: {}",
        seen.answers.len(),
        seen.new_tcp_ok,
        seen.new_udp_ok,
        seen.new_failures.len(),
        after.len(),
        after.iter().all(|id| ["backend-3", "backend-4", "backend-5"].contains(&id.as_str())),
    );
    assert!(seen.new_failures.is_empty(), "failed requests: {:?}", seen.new_failures);
    assert!(after.iter().all(|id| ["backend-3", "backend-4", "backend-5"].contains(&id.as_str())), "{after:?}");
}

/// When an answer came, and from which backend.
type Answers = Arc<Mutex<Vec<(Instant, String)>>>;

/// One UDP socket (one flow) sending every 50 ms; what answered, and when.
fn udp_client(t: &Topology, stop: Arc<AtomicBool>) -> (Answers, std::thread::JoinHandle<()>) {
    let sock = t.client.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let h = std::thread::spawn(move || {
        let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
        while !stop.load(Ordering::Relaxed) {
            if let Ok((id, _)) = udp_ask(&sock, vip, b"who", Duration::from_millis(200)) {
                g.lock().unwrap().push((Instant::now(), id));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (got, h)
}

/// Waits until the UDP client was answered by `id` after `since`; returns how long that took.
fn answered_by(got: &Mutex<Vec<(Instant, String)>>, id: &str, since: Instant) -> Option<Duration> {
    let ok = wait_for(Duration::from_secs(10), || got.lock().unwrap().iter().any(|(at, who)| *at > since && who == id));
    ok.then(|| got.lock().unwrap().iter().find(|(at, who)| *at > since && who == id).unwrap().0 - since)
}

#[test]
fn a_udp_flow_reaches_the_new_pod_when_its_server_cycles_and_when_an_unready_endpoint_becomes_ready() {
    let (t, mut servers, api, mut agent, dp) = setup(3, ready(&[0]), &[]);
    wait_slots(&mut agent, &dp, &[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let (got, h) = udp_client(&t, stop.clone());
    let first = answered_by(&got, "backend-0", Instant::now() - Duration::from_secs(1));
    assert!(first.is_some(), "the flow was answered by backend-0");

    // The server pod is deleted and comes back with another address; the
    // client keeps sending from the same port all along.
    servers[0] = None;
    api.apply(slice(&[]));
    wait_slots(&mut agent, &dp, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let cycled = Instant::now();
    api.apply(ready(&[1]));
    wait_slots(&mut agent, &dp, &[1]);
    let after_cycle = answered_by(&got, "backend-1", cycled);

    // A new pod whose endpoint is not ready yet: the flow is not answered;
    // once ready, it is.
    api.apply(slice(&[(2, Cond::Unready)]));
    wait_slots(&mut agent, &dp, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let readied = Instant::now();
    api.apply(ready(&[2]));
    wait_slots(&mut agent, &dp, &[2]);
    let after_ready = answered_by(&got, "backend-2", readied);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    println!("udp_e2e: same flow answered by the new pod {after_cycle:?} after it became an endpoint, by the readied endpoint {after_ready:?} after it became ready");
    assert!(after_cycle.is_some(), "the flow never reached the new pod\n{}", agent.log());
    assert!(after_ready.is_some(), "the flow never reached the readied endpoint\n{}", agent.log());
}
