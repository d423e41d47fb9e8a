//! XDP's next-hop cache (`lb-ebpf/src/forward.rs`, `lb_common::hop`): the
//! packets XDP forwards itself (SNAT flows both ways, DSR, the redirect
//! fast path) take their egress and MACs from `next_hop_v4` / `_v6` while
//! the entry's generation is `next_hop_gen[0]`, and ask the FIB otherwise;
//! each CPU reads its direct-mapped copy in `next_hop_slots_v4` / `_v6`
//! first, under the same checks.
//! Through BPF_PROG_TEST_RUN on the uplink of `uplink.rs` (real routes and
//! neighbours in a namespace); every packet's output is compared whole.
//! And the agent's side (`lb_agent::hopwatch`) on real netlink events of
//! that namespace: an overrun of its queue, neighbour state refreshes.
//! Needs root.
use std::time::Duration;

use aya::maps::{HashMap, PerCpuArray, PerCpuValues};
use lb_agent::hopwatch::{HopChange, HopWatch, RECEIVE_BUFFER};
use lb_common::{counter, hop_slot, maps, Addr, HopKey, HopSlot, NatConfig, NextHop, IPPROTO_TCP, NEXT_HOP_OFF};
use xdplb_tests::{
    lb::{Lb, TEST_SIZES},
    packet::{Frame, CLIENT_MAC, NODE_MAC, TCP_ACK, TCP_SYN},
    packet6::Frame6,
    services::{contents, program_v6, remote_v6, Svc, Svc6},
    uplink::{ends, forwarded, from_node_b, mac, Uplink, CLIENT, CLIENT6, NODE, NODE6, NODE_B_MAC, POD_B, POD_B6, ROUTER, SNAT_PORT},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// A MAC no neighbour entry has: only the cache can put it on a frame.
const PLANTED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// Another such MAC, planted in the per-CPU slots alone.
const SLOT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x98];
/// The router's MAC, for a route moved to it.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn lb_v4() -> Lb {
    let mut lb = Lb::load_sized(TEST_SIZES);
    let svc = Svc::new(1, IPPROTO_TCP, lb_common::algorithm::RANDOM).frontend(NODE, 30080).remote_backend(1, POD_B, 8080);
    lb.program(&contents(&[svc]));
    lb.maps.set_nat_config(&NatConfig { addr: NODE.octets(), port_min: SNAT_PORT, port_max: SNAT_PORT }).expect("writing nat_config");
    lb
}

fn hops<'a, A: lb_common::Addr>(lb: &'a mut Lb, name: &str) -> HashMap<&'a mut aya::maps::MapData, HopKey<A>, NextHop> {
    HashMap::try_from(lb.ebpf.map_mut(name).expect("next-hop map")).expect("next-hop map type")
}

/// The per-CPU slots of `dst` (one per possible CPU).
fn slots_of<A: Addr>(lb: &mut Lb, name: &str, dst: &A) -> Vec<HopSlot<A>> {
    let m: PerCpuArray<_, HopSlot<A>> = PerCpuArray::try_from(lb.ebpf.map_mut(name).expect("slot map")).expect("slot map type");
    m.get(&hop_slot(dst), 0).expect("reading a slot").iter().copied().collect()
}

/// Writes `slot` as every CPU's slot of its destination (a zeroed one
/// with `dst` clears it: its MTU of 0 fits no packet).
fn set_slots<A: Addr>(lb: &mut Lb, name: &str, slot: HopSlot<A>) {
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let mut m: PerCpuArray<_, HopSlot<A>> = PerCpuArray::try_from(lb.ebpf.map_mut(name).expect("slot map")).expect("slot map type");
    m.set(hop_slot(&slot.dst), PerCpuValues::try_from(vec![slot; cpus]).expect("one value per CPU"), 0).expect("writing a slot");
}

fn fib_lookups(lb: &Lb) -> u64 {
    lb.counter(counter::FIB_LOOKUP)
}

/// The flow's packets: SYN, a data packet, the backend's reply (as node B sends it).
fn flow() -> (Vec<u8>, Frame, Vec<u8>) {
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes();
    let ack = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).payload(b"data");
    let reply = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_ACK)).bytes();
    (syn, ack, reply)
}

/// `ack` as XDP sends it to the pod on node B, to `dmac`.
fn ack_out(ack: &Frame, dmac: [u8; 6]) -> Vec<u8> {
    forwarded(ends(ack.clone(), (NODE, SNAT_PORT), (POD_B, 8080)), dmac).bytes()
}

#[test]
fn established_snat_packets_both_ways_ask_the_fib_once_per_destination() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_v4();
    let (syn, ack, reply) = flow();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    assert_eq!(fib_lookups(&lb), 1, "the first packet to the pod asks the FIB");
    for _ in 0..5 {
        let (rc, out) = up.xdp(&lb, &ack.bytes());
        assert_eq!((rc, out), (XDP_TX, ack_out(&ack, NODE_B_MAC)));
    }
    let reply_out = forwarded(ends(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_ACK), (NODE, 30080), (CLIENT, 40000)), CLIENT_MAC).bytes();
    for _ in 0..5 {
        let (rc, out) = up.xdp(&lb, &reply);
        assert_eq!((rc, out), (XDP_TX, reply_out.clone()));
    }
    println!("SNAT flow, 1 SYN + 5 packets out + 5 replies: {} FIB lookups", fib_lookups(&lb));
    assert_eq!(fib_lookups(&lb), 2, "one lookup per destination (pod, client); the other nine packets used the cache");
    assert_eq!(lb.counter(counter::FORWARD_FALLBACK), 0);
    let cached = hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).get(&HopKey { ifindex: up.ifindex, dst: POD_B.octets() }, 0).expect("the pod's next hop is cached");
    assert_eq!((cached.ifindex, cached.smac, cached.dmac, cached.mtu, cached.generation), (up.ifindex, NODE_MAC, NODE_B_MAC, 1500, 0), "the FIB's answer, at the current generation (no change yet)");
    let copies: Vec<_> = slots_of(&mut lb, maps::NEXT_HOP_SLOTS_V4, &POD_B.octets()).into_iter().filter(|s| s.dst == POD_B.octets()).collect();
    assert_eq!(copies.len(), 1, "copied into the slot of the one CPU that ran the packets");
    assert_eq!((copies[0].ifindex, copies[0].hop), (up.ifindex, cached));
}

#[test]
fn a_cached_next_hop_is_used_until_the_generation_moves() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_v4();
    let (syn, ack, _) = flow();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    // A next hop planted in the cache at the current generation is what
    // the next packet gets: the FIB is not asked. (Its slot cleared: each
    // CPU reads its copy of the FIB's answer first.)
    let key = HopKey { ifindex: up.ifindex, dst: POD_B.octets() };
    let mut planted = hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).get(&key, 0).unwrap();
    planted.dmac = PLANTED_MAC;
    hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).insert(key, planted, 0).unwrap();
    set_slots(&mut lb, maps::NEXT_HOP_SLOTS_V4, HopSlot { dst: POD_B.octets(), ..HopSlot::default() });
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, PLANTED_MAC)));
    assert_eq!(fib_lookups(&lb), 1);
    // The slot is read before the hash cache: one planted there alone is
    // what the next packet gets.
    set_slots(&mut lb, maps::NEXT_HOP_SLOTS_V4, HopSlot { hop: NextHop { dmac: SLOT_MAC, ..planted }, ifindex: up.ifindex, dst: POD_B.octets() });
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, SLOT_MAC)));
    // ... only for its own ingress interface.
    set_slots(&mut lb, maps::NEXT_HOP_SLOTS_V4, HopSlot { hop: NextHop { dmac: SLOT_MAC, ..planted }, ifindex: up.ifindex + 1, dst: POD_B.octets() });
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, PLANTED_MAC)));
    assert_eq!(fib_lookups(&lb), 1);
    // A routing change (the agent bumps the generation): the FIB again.
    let generation = lb.maps.bump_next_hop_gen().unwrap();
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, NODE_B_MAC)));
    assert_eq!(fib_lookups(&lb), 2);
    let cached = hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).get(&key, 0).unwrap();
    assert_eq!((cached.dmac, cached.generation), (NODE_B_MAC, generation), "re-cached at the new generation");
    // A missing entry (evicted, its slot taken by another destination) asks the FIB too.
    hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).remove(&key).unwrap();
    set_slots(&mut lb, maps::NEXT_HOP_SLOTS_V4, HopSlot { hop: NextHop { dmac: SLOT_MAC, ..planted }, ifindex: up.ifindex, dst: [10, 244, 18, 10] });
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, NODE_B_MAC)));
    assert_eq!(fib_lookups(&lb), 3);
}

#[test]
fn a_neighbour_or_route_change_reaches_the_wire_after_the_bump() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_v4();
    let (syn, ack, _) = flow();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    // Node B's MAC changes (a new NIC, a failover).
    let new_mac = [0x02, 0, 0, 0, 0, 0x33];
    up.ip(&["neigh", "replace", "192.168.1.3", "lladdr", &mac(new_mac), "dev", "up0", "nud", "permanent"]);
    lb.maps.bump_next_hop_gen().unwrap();
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, new_mac)));
    // The pod CIDR's route moves to another gateway.
    up.ip(&["neigh", "replace", &ROUTER.to_string(), "lladdr", &mac(ROUTER_MAC), "dev", "up0", "nud", "permanent"]);
    up.ip(&["route", "replace", "10.244.2.0/24", "via", &ROUTER.to_string()]);
    lb.maps.bump_next_hop_gen().unwrap();
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, ROUTER_MAC)));
    // The route goes: the kernel gets the packet (rewritten), never an old MAC.
    up.ip(&["route", "del", "10.244.2.0/24"]);
    lb.maps.bump_next_hop_gen().unwrap();
    let (rc, out) = up.xdp(&lb, &ack.bytes());
    assert_eq!((rc, out), (XDP_PASS, ends(ack.clone(), (NODE, SNAT_PORT), (POD_B, 8080)).bytes()));
    assert_eq!(lb.counter(counter::FORWARD_FALLBACK), 1);
    assert_eq!(fib_lookups(&lb), 4, "one per generation");
}

#[test]
fn a_packet_longer_than_the_cached_mtu_asks_the_fib() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_v4();
    // Locked: forwarding ignores a route's MTU otherwise (ip_mtu_from_fib_result).
    up.ip(&["route", "replace", "10.244.2.0/24", "via", "192.168.1.3", "mtu", "lock", "200"]);
    let (syn, ack, _) = flow();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    let cached = hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).get(&HopKey { ifindex: up.ifindex, dst: POD_B.octets() }, 0).unwrap();
    assert_eq!(cached.mtu, 200, "the route's MTU");
    assert_eq!(up.xdp(&lb, &ack.bytes()).0, XDP_TX);
    assert_eq!(fib_lookups(&lb), 1);
    // 300 bytes of IP: the FIB says "fragmentation needed", the kernel forwards or answers.
    let big = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).payload(&[7; 260]);
    let (rc, out) = up.xdp(&lb, &big.bytes());
    assert_eq!((rc, out), (XDP_PASS, ends(big.clone(), (NODE, SNAT_PORT), (POD_B, 8080)).bytes()));
    assert_eq!(fib_lookups(&lb), 2);
    assert_eq!(lb.counter(counter::FORWARD_FALLBACK), 1);
}

#[test]
fn ipv6_takes_the_same_path() {
    let up = Uplink::new();
    up.enter();
    let mut lb = Lb::load();
    program_v6(&mut lb.ebpf, &[Svc6 { id: 1, proto: IPPROTO_TCP, algorithm: lb_common::algorithm::RANDOM, frontends: vec![(NODE6, 30080)], backends: vec![(11, POD_B6, 8080)] }]);
    remote_v6(&mut lb.ebpf, &[11]);
    lb.maps.set_nat_config(&NatConfig { addr: NODE6.octets(), port_min: SNAT_PORT, port_max: SNAT_PORT }).unwrap();
    let syn = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_SYN).bytes();
    let ack = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_ACK).payload(b"data");
    let out = |dmac| forwarded(ack.clone().with_src(NODE6, SNAT_PORT).with_dst(POD_B6, 8080), dmac).bytes();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    for _ in 0..3 {
        assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, out(NODE_B_MAC)));
    }
    assert_eq!(fib_lookups(&lb), 1);
    let key = HopKey { ifindex: up.ifindex, dst: POD_B6.octets() };
    let mut planted = hops::<[u8; 16]>(&mut lb, maps::NEXT_HOP_V6).get(&key, 0).expect("the pod's next hop is cached");
    assert_eq!((planted.dmac, planted.mtu), (NODE_B_MAC, 1500));
    planted.dmac = PLANTED_MAC;
    hops::<[u8; 16]>(&mut lb, maps::NEXT_HOP_V6).insert(key, planted, 0).unwrap();
    set_slots(&mut lb, maps::NEXT_HOP_SLOTS_V6, HopSlot { dst: POD_B6.octets(), ..HopSlot::default() });
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, out(PLANTED_MAC)));
    lb.maps.bump_next_hop_gen().unwrap();
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, out(NODE_B_MAC)));
    assert_eq!(fib_lookups(&lb), 2);
}

/// A routing subscription in the test's namespace (the thread entered the
/// uplink's), on a runtime of its own; every batch of events it reads is
/// written to the pinned `next_hop_gen` as the agent writes it
/// (`HopChange::apply`).
struct Watch {
    rt: tokio::runtime::Runtime,
    watch: HopWatch,
}

impl Watch {
    fn new(receive_buffer: usize, lb: &mut Lb) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let watch = {
            let _in = rt.enter();
            HopWatch::new(receive_buffer)
        };
        assert_eq!(watch.current(), HopChange::Subscribed);
        watch.current().apply(&mut lb.maps).expect("writing next_hop_gen");
        Self { rt, watch }
    }

    /// The next batch's meaning, written to the maps.
    fn next(&mut self, lb: &mut Lb) -> HopChange {
        let change = self.within(Duration::from_secs(30)).expect("no routing event within 30 s");
        change.apply(&mut lb.maps).expect("writing next_hop_gen");
        change
    }

    fn within(&mut self, wait: Duration) -> Option<HopChange> {
        let watch = &mut self.watch;
        self.rt.block_on(async { tokio::time::timeout(wait, watch.next()).await.ok() })
    }

    /// Reads (and applies) events until half a second passes without one:
    /// what the namespace's setup left queued.
    fn settle(&mut self, lb: &mut Lb) {
        for _ in 0..20 {
            match self.within(Duration::from_millis(500)) {
                Some(c) => {
                    c.apply(&mut lb.maps).expect("writing next_hop_gen");
                }
                None => return,
            }
        }
        panic!("routing events kept coming for 10 s");
    }
}

fn generation(lb: &Lb) -> u32 {
    lb.maps.next_hop_gen().expect("reading next_hop_gen")
}

/// The agent's side, with real netlink: a burst of route changes overruns
/// a small routing queue for real (ENOBUFS). The cache goes off at once
/// (every packet asks the FIB, nothing is cached), the subscription is
/// made again, the cache is back on at a new generation, and a later
/// neighbour change still reaches the wire.
#[test]
fn an_overrun_turns_the_cache_off_until_resubscribed_and_later_changes_still_reach_the_wire() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_v4();
    // 1 byte asks for the kernel's floor (SOCK_MIN_RCVBUF, ~4.6 KB): a
    // few notifications fill it.
    let mut w = Watch::new(1, &mut lb);
    w.settle(&mut lb);
    let on = generation(&lb);
    assert_eq!(on & NEXT_HOP_OFF, 0, "subscribed: the cache is on");
    let (syn, ack, _) = flow();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, NODE_B_MAC)));
    assert_eq!(fib_lookups(&lb), 1);

    // 300 routes added in one `ip -batch` while nothing reads the queue.
    let batch = std::env::temp_dir().join(format!("xdplb-routes-{}", std::process::id()));
    std::fs::write(&batch, (0..300).map(|i| format!("route add 10.250.{}.{}/32 dev up0\n", i / 250, i % 250)).collect::<String>()).unwrap();
    up.ip(&["-batch", batch.to_str().unwrap()]);
    std::fs::remove_file(&batch).unwrap();
    assert_eq!(w.next(&mut lb), HopChange::Lost, "the queue overran: ENOBUFS");
    let off = generation(&lb);
    assert_eq!(off, on | NEXT_HOP_OFF, "off at once, the count kept");
    for _ in 0..3 {
        assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, NODE_B_MAC)));
    }
    assert_eq!(fib_lookups(&lb), 1 + 3, "off: every packet asks the FIB");
    let key = HopKey { ifindex: up.ifindex, dst: POD_B.octets() };
    let kept = hops::<[u8; 4]>(&mut lb, maps::NEXT_HOP_V4).get(&key, 0).unwrap();
    assert_eq!(kept.generation, on, "off: nothing is cached");

    assert_eq!(w.next(&mut lb), HopChange::Subscribed, "subscribed again after the first retry");
    let back = generation(&lb);
    assert_eq!(back, on + 1, "on, at a generation no entry has");
    for _ in 0..3 {
        assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, NODE_B_MAC)));
    }
    assert_eq!(fib_lookups(&lb), 4 + 1, "on: one lookup, then the cache");

    // Node B's MAC changes: the new subscription hears it, the next packet carries it.
    let new_mac = [0x02, 0, 0, 0, 0, 0x44];
    up.ip(&["neigh", "replace", "192.168.1.3", "lladdr", &mac(new_mac), "dev", "up0", "nud", "permanent"]);
    assert_eq!(w.next(&mut lb), HopChange::Stale, "a new link-layer address");
    assert_eq!(generation(&lb), back + 1);
    assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, new_mac)));
    assert_eq!(fib_lookups(&lb), 6);
    println!(
        "overrun: generation {on} -> {off:#x} (off) -> {back} (resubscribed) -> {} (MAC change); FIB lookups {}",
        generation(&lb),
        fib_lookups(&lb)
    );
}

/// Neighbour events with real entries: a state refresh with the same
/// link-layer address (REACHABLE <-> STALE) keeps the cache (the
/// generation in the pinned map stays, the flow's packets ask no FIB); a
/// new address and a deletion make it stale.
#[test]
fn neighbour_state_refreshes_keep_the_cache_a_new_address_or_a_deletion_does_not() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_v4();
    let mut w = Watch::new(RECEIVE_BUFFER, &mut lb);
    w.settle(&mut lb);
    let (syn, ack, _) = flow();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    let g = generation(&lb);
    // `ip` with `cmd`, then the batch of events it made: its meaning, the
    // generation after it, and the FIB lookups of the flow so far.
    let mut step = |cmd: &str, want: HopChange, generation_now: u32| {
        up.ip(&cmd.split(' ').collect::<Vec<_>>());
        assert_eq!(w.next(&mut lb), want, "ip {cmd}");
        assert_eq!(generation(&lb), generation_now, "ip {cmd}");
        assert_eq!(up.xdp(&lb, &ack.bytes()), (XDP_TX, ack_out(&ack, NODE_B_MAC)), "ip {cmd}");
        fib_lookups(&lb)
    };
    let neigh = |lladdr: [u8; 6], nud: &str| format!("neigh replace 192.168.1.50 lladdr {} dev up0 nud {nud}", mac(lladdr));
    let (a, b) = ([0x02, 0, 0, 0, 0, 0x50], [0x02, 0, 0, 0, 0, 0x51]);
    let first = step(&neigh(a, "reachable"), HopChange::Stale, g + 1);
    assert_eq!(first, 2, "a neighbour not seen before: stale, the pod's next hop asked once more");
    let mut refreshes = 0;
    for nud in ["stale", "reachable", "stale", "reachable"] {
        assert_eq!(step(&neigh(a, nud), HopChange::Unchanged, g + 1), first, "nud {nud}, the same address: the cache is kept");
        refreshes += 1;
    }
    assert_eq!(step(&neigh(b, "reachable"), HopChange::Stale, g + 2), first + 1, "a new link-layer address: stale");
    assert_eq!(step("neigh del 192.168.1.50 dev up0", HopChange::Stale, g + 3), first + 2, "deleted: stale");
    println!("neighbour 192.168.1.50: {refreshes} state refreshes kept generation {}; a new lladdr and a deletion bumped it to {}", g + 1, g + 3);
}
