//! Maglev, least-connections and ClientIP affinity in the dataplane, through
//! BPF_PROG_TEST_RUN: which backend each new flow's rewritten packet names.
//! Needs root.
use std::net::Ipv4Addr;

use lb_common::{algorithm, AffinityKeyV4, IPPROTO_TCP};
use lb_ebpf::hash::flow_hash;
use xdplb_tests::{
    fixture::run_frame,
    lb::Lb,
    packet::{Frame, TCP_ACK, TCP_FIN, TCP_SYN},
    services::{contents, Svc},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i)
}

/// Service 1 on VIP:80 with backends 1..=n (backend id i+1 = backend(i)).
fn svc(algo: u8, n: u8) -> Svc {
    (0..n).fold(Svc::new(1, IPPROTO_TCP, algo).frontend(VIP, 80), |s, i| {
        s.backend(i as u32 + 1, backend(i), 8080)
    })
}

/// The backend id (1-based) a packet was sent to.
fn sent_to(lb: &Lb, f: &Frame) -> u32 {
    let (rc, out) = run_frame(&lb.ebpf, "xdp_lb", &f.bytes()).unwrap();
    assert_eq!(rc, 2, "XDP_PASS");
    out[14 + 19] as u32 - 10
}

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xc0a8_0000 + i) // 192.168.x.y
}

#[test]
fn maglev_picks_the_table_entry_of_the_flow_hash() {
    let mut lb = Lb::load();
    // A small prime table whose entries repeat backends unevenly, as a
    // weighted Maglev table would; the dataplane only indexes it.
    let table: Vec<u32> = (0..251u32)
        .map(|i| [1, 2, 2, 3, 3, 3][(i % 6) as usize])
        .collect();
    lb.program(&contents(&[svc(algorithm::MAGLEV, 3).table(table.clone())]));
    for i in 0..300u32 {
        let (src, sport) = (client(i * 7919 % 65000), (1024 + i * 31) as u16);
        let want = table
            [(flow_hash(src.octets(), sport.to_be_bytes(), 80u16.to_be_bytes(), 6) % 251) as usize];
        assert_eq!(
            sent_to(&lb, &Frame::tcp(src, sport, VIP, 80, TCP_SYN)),
            want,
            "flow {src}:{sport}"
        );
    }
}

#[test]
fn maglev_choice_is_the_same_on_another_node_and_after_a_reload() {
    let table: Vec<u32> = (0..251u32).map(|i| i % 3 + 1).collect();
    let flows: Vec<Frame> = (0..100u32)
        .map(|i| Frame::tcp(client(i), 2000 + i as u16, VIP, 80, TCP_SYN))
        .collect();
    let choices = |lb: &mut Lb| -> Vec<u32> {
        lb.program(&contents(&[svc(algorithm::MAGLEV, 3).table(table.clone())]));
        flows.iter().map(|f| sent_to(lb, f)).collect()
    };
    // Two independent instances (two "nodes"), nothing shared but the table.
    let (a, b) = (choices(&mut Lb::load()), choices(&mut Lb::load()));
    assert_eq!(a, b);
    assert_eq!(
        a.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "all backends used"
    );
}

#[test]
fn least_conn_sends_new_flows_to_the_least_loaded_backend() {
    let mut lb = Lb::load();
    lb.program(&contents(&[svc(algorithm::LEAST_CONN, 3)]));
    // 50 new flows: each goes where the fewest flows are.
    for i in 0..50u16 {
        sent_to(&lb, &Frame::tcp(client(1), 3000 + i, VIP, 80, TCP_SYN));
    }
    let load = |lb: &Lb| -> Vec<u64> {
        (1..=3)
            .map(|id| lb.maps.backend_load(id).unwrap())
            .collect()
    };
    let l = load(&lb);
    assert_eq!(l.iter().sum::<u64>(), 50, "every new flow counted: {l:?}");
    let max_gap = l.iter().max().unwrap() - l.iter().min().unwrap();
    assert!(max_gap <= 1, "least-conn keeps live flows level: {l:?}");
    // 20 flows end: their FINs lower the counts, and new flows fill the gaps first.
    for i in 0..20u16 {
        sent_to(
            &lb,
            &Frame::tcp(client(1), 3000 + i, VIP, 80, TCP_ACK | TCP_FIN),
        );
    }
    assert_eq!(
        load(&lb).iter().sum::<u64>(),
        30,
        "FIN lowers the live count once per flow"
    );
    sent_to(
        &lb,
        &Frame::tcp(client(1), 3000, VIP, 80, TCP_ACK | TCP_FIN),
    );
    assert_eq!(
        load(&lb).iter().sum::<u64>(),
        30,
        "a second FIN does not count again"
    );
    for i in 0..20u16 {
        sent_to(&lb, &Frame::tcp(client(2), 4000 + i, VIP, 80, TCP_SYN));
    }
    let l = load(&lb);
    assert!(
        l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
        "refilled evenly: {l:?}"
    );
}

#[test]
fn least_conn_avoids_a_backend_holding_long_lived_flows() {
    let mut lb = Lb::load();
    lb.program(&contents(&[svc(algorithm::LEAST_CONN, 3)]));
    // As the agent would after counting conntrack: backend 1 is busy.
    lb.maps.set_backend_load(1, 1000).unwrap();
    let picks: Vec<u32> = (0..60u16)
        .map(|i| sent_to(&lb, &Frame::tcp(client(3), 5000 + i, VIP, 80, TCP_SYN)))
        .collect();
    assert!(
        !picks.contains(&1),
        "no new flow for the busy backend: {picks:?}"
    );
    assert_eq!(
        picks.iter().filter(|&&b| b == 2).count(),
        30,
        "the others share evenly"
    );
}

#[test]
fn affinity_keeps_a_client_on_its_backend_until_timeout_or_removal() {
    let mut lb = Lb::load();
    // Round-robin underneath, so "balanced anew" is predictable.
    lb.program(&contents(&[svc(algorithm::ROUND_ROBIN, 3).affinity(1)]));
    let me = client(42);
    let first = sent_to(&lb, &Frame::tcp(me, 6000, VIP, 80, TCP_SYN));
    for i in 1..20u16 {
        assert_eq!(
            sent_to(&lb, &Frame::tcp(me, 6000 + i, VIP, 80, TCP_SYN)),
            first,
            "new connection {i} stays"
        );
    }
    let other = sent_to(&lb, &Frame::tcp(client(43), 7000, VIP, 80, TCP_SYN));
    assert_ne!(other, first, "another client is balanced on its own");
    let key = AffinityKeyV4 {
        service_id: 1,
        client: me.octets(),
    };
    assert_eq!(
        lb.maps.affinity(&key).unwrap().map(|a| a.backend_id),
        Some(first)
    );
    // The backend leaves the service: the client moves.
    let rest: Vec<u8> = (0..3u8).filter(|&i| i as u32 + 1 != first).collect();
    let remaining = rest.iter().fold(
        Svc::new(1, IPPROTO_TCP, algorithm::ROUND_ROBIN)
            .frontend(VIP, 80)
            .affinity(1),
        |s, &i| s.backend(i as u32 + 1, backend(i), 8080),
    );
    lb.program(&contents(&[remaining]));
    let moved = sent_to(&lb, &Frame::tcp(me, 6100, VIP, 80, TCP_SYN));
    assert_ne!(moved, first);
    assert_eq!(
        sent_to(&lb, &Frame::tcp(me, 6101, VIP, 80, TCP_SYN)),
        moved,
        "and sticks to its new backend"
    );
    // Idle past the 1 s timeout (time must pass): balanced anew.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_ne!(
        sent_to(&lb, &Frame::tcp(me, 6102, VIP, 80, TCP_SYN)),
        moved,
        "expired affinity"
    );
}

#[test]
fn flows_that_idle_out_leave_the_live_count_at_the_recount() {
    let mut lb = Lb::load();
    lb.program(&contents(&[svc(algorithm::LEAST_CONN, 2)]));
    lb.maps.set_config(&lb_common::Config { tcp_timeout_s: 1, ..Default::default() }).unwrap();
    for i in 0..6u16 {
        sent_to(&lb, &Frame::tcp(client(9), 8000 + i, VIP, 80, TCP_SYN));
    }
    let total = |lb: &Lb| (1..=2).map(|id| lb.maps.backend_load(id).unwrap()).sum::<u64>();
    assert_eq!(total(&lb), 6);
    assert_eq!(lb.maps.recount_backend_load().unwrap(), 0, "nothing to correct while the flows live");
    // Idle past the 1 s timeout (time must pass): no FIN ever came.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(total(&lb), 6, "the dataplane cannot see an idle flow end");
    assert_eq!(lb.maps.recount_backend_load().unwrap(), 2);
    assert_eq!(total(&lb), 0, "the agent's recount forgets them");
}

#[test]
fn power_of_two_choices_beats_random_for_large_services() {
    // 20 backends: above the exact-scan limit, so two random choices.
    let mut lb = Lb::load();
    lb.program(&contents(&[svc(algorithm::LEAST_CONN, 20)]));
    lb.maps.set_backend_load(1, 1000).unwrap();
    let to_busy = (0..400u16).filter(|i| sent_to(&lb, &Frame::tcp(client(5), 9000 + i, VIP, 80, TCP_SYN)) == 1).count();
    // Random would send 1/20 (20 of 400) to the busy backend; two choices
    // pick it only when both land on it (1/400).
    assert!(to_busy <= 5, "{to_busy} of 400 new flows went to the busy backend");
    let loads: Vec<u64> = (2..=20).map(|id| lb.maps.backend_load(id).unwrap()).collect();
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    // 380 flows over 19: random would spread them as Poisson(20), a range
    // of ~15; two choices keep it within a few (7 was seen once in CI, so
    // the bound leaves room for chance without admitting random).
    assert!(max - min <= 10, "the others stay level: {loads:?}");
}
