//! A conntrack flood: `--max-flows 4096`, 20 TCP connections chatting
//! through a ClusterIP every 50 ms, and 409,600 new UDP flows (100× the
//! table) sent as fast as one sender goes. The established connections must
//! survive (see README "Conntrack under a flood" for the policy). Needs root.
use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use xdplb_tests::{
    agent::WEB_CLUSTER_IP,
    load::Setup,
    ops::{http_get, sample},
    servers::Conn,
    topology::CLIENT_ADDR,
    wait_for,
};

const TABLE: u32 = 4096;
const FLOOD: usize = 409_600;

/// Sends `n` UDP datagrams to `to`, each from another source port (a new
/// flow each, cycling through 50,000 ports): as fast as one thread goes.
fn flood(to: SocketAddr, n: usize, base: usize, span: usize) -> (usize, Duration) {
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..n {
        let port = (base + i % span) as u16;
        // A port in use by another socket of the host is skipped.
        if let Ok(s) = UdpSocket::bind((CLIENT_ADDR, port)) {
            if s.send_to(b"flood", to).is_ok() {
                sent += 1;
            }
        }
    }
    (sent, started.elapsed())
}

#[test]
fn a_flood_of_100x_the_conntrack_table_in_new_udp_flows_spares_established_connections() {
    let max = TABLE.to_string();
    let Setup { t, servers: _servers, mut agent } = Setup::start(&["--max-flows", &max]);
    let dp = agent.maps();

    let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let chatters: Vec<_> = (0..20)
        .map(|i| {
            let mut c = Conn::new(t.client.run(move || TcpStream::connect(vip)).expect("connect"));
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::spawn(move || {
                let first = c.ask().expect("first answer");
                while !stop.load(Ordering::Relaxed) {
                    match c.ask() {
                        Ok(id) if id == first => answers.lock().unwrap().0 += 1,
                        r => {
                            answers.lock().unwrap().1.push(format!("connection {i}: {r:?} (was {first})"));
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    assert!(wait_for(Duration::from_secs(10), || answers.lock().unwrap().0 >= 100), "the chatter got going");

    let before = answers.lock().unwrap().0;
    // Two senders: on this 2-CPU machine one reaches ~35k flows/s, two
    // ~40-60k/s; the single LRU table broke every connection only at the latter.
    let senders: usize = std::env::var("XDPLB_FLOOD_SENDERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let span = 50_000 / senders;
    let hs: Vec<_> = (0..senders).map(|j| t.client.spawn(move || flood(vip, FLOOD / senders, 10_000 + j * span, span))).collect();
    let (sent, took) = hs.into_iter().map(|h| h.join().unwrap()).fold((0, Duration::ZERO), |(a, b), (c, d)| (a + c, b.max(d)));
    let during = answers.lock().unwrap().0 - before;
    // The chatter keeps going after the flood, too.
    let after = answers.lock().unwrap().0;
    assert!(wait_for(Duration::from_secs(10), || answers.lock().unwrap().0 >= after + 100) || !answers.lock().unwrap().1.is_empty());
    // The fill and the evictions, as /metrics shows them (chatters still live).
    let metrics = SocketAddr::from(([127, 0, 0, 1], 9464));
    let (code, text) = http_get(&t.node, metrics, "/metrics").expect("scraping /metrics");
    assert_eq!(code, 200);
    let metric = |name: &str, label: &str| sample(&text, name, &[label]).unwrap_or_else(|| panic!("{name} {label} missing"));
    let confirmed_entries = metric("xdplb_map_entries", "map=\"conntrack_confirmed_v4\"");
    let ct_fill = metric("xdplb_map_fill_ratio", "map=\"conntrack_v4\"");
    let confirmed = metric("xdplb_dataplane_packets_total", "reason=\"conntrack_confirmed\"");
    let restored = metric("xdplb_dataplane_packets_total", "reason=\"conntrack_confirmed_restored\"");
    stop.store(true, Ordering::Relaxed);
    chatters.into_iter().for_each(|h| h.join().unwrap());
    let (total, failed) = answers.lock().unwrap().clone();

    let counters = dp.counters().unwrap();
    let fill = dp.flows().unwrap().len();
    println!(
        "conntrack_flood: table {TABLE}; flood {sent} new UDP flows in {:.1} s ({:.0}/s); \
         20 chatting TCP connections: {during} answers during the flood, {total} in all, {} failed; \
         conntrack entries after {fill}; metrics: conntrack_v4 fill {ct_fill:.2}, confirmed table {confirmed_entries} entries, \
         {confirmed} flows confirmed, {restored} halves restored from the confirmed table; counters {:?}",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64(),
        failed.len(),
        counters.iter().enumerate().filter(|(_, v)| **v > 0).collect::<Vec<_>>(),
    );
    assert!(sent >= FLOOD * 9 / 10, "the flood was sent: {sent}");
    assert!(failed.is_empty(), "established connections broke: {failed:?}");
    // The 20 chatting connections are confirmed (both halves each).
    assert!(confirmed >= 20.0 && confirmed_entries >= 40.0, "confirmed: {confirmed}, entries {confirmed_entries}");
    assert!(ct_fill > 0.9, "the flood filled conntrack_v4: {ct_fill}");
}
