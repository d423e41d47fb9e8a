//! API server faults with the double, under continuous load: cut watches,
//! 410 Gone, slow answers, truncated answers, and an outage (20 s here;
//! 5 minutes in `cargo xtask soak`, XDPLB_OUTAGE_SECS). Throughout, the
//! dataplane forwards with the last state it was given (no exchange fails,
//! no long-lived flow moves); after each fault the agent converges (a
//! change made during the fault reaches the maps) within one retry of the
//! watcher's backoff (at most 30 s). Needs root.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_agent::dataplane::Dataplane;
use xdplb_tests::{
    agent::{Agent, WEB_CLUSTER_IP},
    kubeweb::{holds, ready, setup},
    load::Load,
    ops::http_get,
    wait_for,
};

/// kube-runtime's default backoff tops out at 30 s between retries.
const ONE_RETRY: Duration = Duration::from_secs(45);

/// Waits (up to `within`) until the maps hold `ids`; how long that took.
fn converge(agent: &mut Agent, dp: &Dataplane, ids: &[usize], within: Duration) -> Duration {
    let t = Instant::now();
    let ok = wait_for(within, || {
        agent.assert_alive();
        holds(dp, ids)
    });
    assert!(ok, "the maps never held {ids:?} within {within:?}\n{}", agent.log());
    t.elapsed()
}

#[test]
fn an_api_server_outage_and_faults_leave_forwarding_intact_and_the_agent_converges_after_each() {
    let outage: u64 = std::env::var("XDPLB_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut ids = vec![0, 1, 2];
    let (t, _servers, api, mut agent, dp) = setup(8, ready(&ids), &["--source-stale-after", "5"]);
    converge(&mut agent, &dp, &ids, Duration::from_secs(30));
    let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let load = Load::start(&t.client, vip, vip, 20, 6);
    assert!(load.wait_more(200, Duration::from_secs(30)));
    let mut figures = Vec::new();

    // Cut watches, three times, each followed by a change.
    for _ in 0..3 {
        api.drop_watches();
    }
    ids.push(3);
    api.apply(ready(&ids));
    figures.push(("watches cut", converge(&mut agent, &dp, &ids, ONE_RETRY)));

    // 410 Gone: down, a change, history compacted, up: every watch relists.
    api.set_available(false);
    ids.push(4);
    api.apply(ready(&ids));
    api.compact();
    assert!(load.wait_more(100, Duration::from_secs(30)));
    api.set_available(true);
    figures.push(("410 Gone", converge(&mut agent, &dp, &ids, ONE_RETRY)));

    // Slow: every answer 3 s late, watches cut so the agent must call again.
    api.set_delay(Duration::from_secs(3));
    api.drop_watches();
    ids.push(5);
    api.apply(ready(&ids));
    let slow = converge(&mut agent, &dp, &ids, ONE_RETRY + Duration::from_secs(10));
    api.set_delay(Duration::ZERO);
    figures.push(("answers 3 s slow", slow));

    // Truncated: down (watches cut), a change, history compacted, then up
    // with every list cut off halfway: the agent cannot list, so the maps
    // keep the last state until the answers are whole again.
    api.set_available(false);
    ids.push(6);
    api.apply(ready(&ids));
    api.compact();
    api.set_truncate(true);
    let lists = api.count("list", "endpointslices");
    api.set_available(true);
    assert!(wait_for(Duration::from_secs(30), || api.count("list", "endpointslices") >= lists + 2), "the agent tried to list");
    assert!(load.wait_more(200, Duration::from_secs(30)));
    let truncated_lists = api.count("list", "endpointslices") - lists;
    let held_truncated = holds(&dp, &ids[..ids.len() - 1]);
    api.set_truncate(false);
    figures.push(("lists truncated", converge(&mut agent, &dp, &ids, ONE_RETRY)));

    // The outage: down for `outage` seconds, a change made meanwhile.
    let metrics = SocketAddr::from(([127, 0, 0, 1], 9464));
    api.set_available(false);
    ids.push(7);
    api.apply(ready(&ids));
    let down = Instant::now();
    let mut not_ready_after = None;
    while down.elapsed() < Duration::from_secs(outage) {
        if not_ready_after.is_none() && http_get(&t.node, metrics, "/readyz").is_ok_and(|(c, _)| c == 503) {
            not_ready_after = Some(down.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let held = holds(&dp, &ids[..ids.len() - 1]);
    api.set_available(true);
    figures.push(("outage", converge(&mut agent, &dp, &ids, ONE_RETRY)));
    let ready_again = wait_for(Duration::from_secs(30), || http_get(&t.node, metrics, "/readyz").is_ok_and(|(c, _)| c == 200));
    assert!(load.wait_more(200, Duration::from_secs(30)));
    let seen = load.stop();

    println!(
        "api_faults: converged after {}; {truncated_lists} truncated EndpointSlice lists (last state held {held_truncated}); \
         {outage} s outage: /readyz 503 after {not_ready_after:?}, last state held {held}, ready again {ready_again}; \
         load: {} answers, long failures {}, moved {}, new failures {}",
        figures.iter().map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64())).collect::<Vec<_>>().join(", "),
        seen.answered(),
        seen.long_failures.len(),
        seen.moved().len(),
        seen.new_failures.len(),
    );
    assert!(held, "the maps kept the last known state through the outage");
    assert!(held_truncated, "the maps kept the last known state while lists were truncated");
    assert!(not_ready_after.is_some() && ready_again, "/readyz followed the outage");
    assert!(seen.long_failures.is_empty(), "{:?}", seen.long_failures);
    assert!(seen.moved().is_empty(), "{:?}", seen.moved());
    assert!(seen.new_failures.is_empty(), "{:?}", seen.new_failures);
    assert!(agent.log().contains("relisting") || api.requests().iter().filter(|r| r.verb == "list").count() > 3, "relisted");
}
