//! The allocator's rules, one test each, and a property test: random
//! create/delete/type-change sequences, with changes applied in part (a
//! leader that dies mid-way), never leave one address with two Services
//! that may not share it, and a full application reaches a fixed point.
use super::*;
use crate::lbip::pool::{parse_flag, Pools};

fn pools(flags: &[&str]) -> Pools {
    let (p, errors) = Pools::build(
        &flags
            .iter()
            .map(|f| parse_flag(f).unwrap())
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(errors.is_empty(), "{errors:?}");
    p
}

fn svc(name: &str, created: &str) -> SvcView {
    SvcView {
        id: ObjectRef::new("default", name),
        created: created.into(),
        load_balancer: true,
        families: vec![Family::V4],
        ports: [("TCP".to_string(), 80)].into(),
        ..Default::default()
    }
}

/// The last change for Service `name` (a release may come before it).
fn of<'a>(c: &'a [Change], name: &str) -> &'a Change {
    c.iter()
        .rev()
        .find(|c| c.service.name == name)
        .unwrap_or_else(|| panic!("no change for {name}: {c:?}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Applies `changes` to `services` as the API server would.
fn apply(services: &mut [SvcView], changes: &[Change]) {
    for c in changes {
        let s = services.iter_mut().find(|s| s.id == c.service).unwrap();
        s.ingress = c.ingress.clone();
        s.condition = c.served.then(|| match &c.problem {
            Some(p) => (false, p.reason.to_string()),
            None => (true, "Allocated".to_string()),
        });
    }
}

#[test]
fn services_get_the_lowest_free_addresses_and_keep_them() {
    let p = pools(&["a=10.0.0.0/29"]);
    let mut s = vec![svc("one", "1"), svc("two", "2")];
    let c = allocate(&s, &p, &Config::default());
    assert_eq!(
        c.iter().map(|c| c.ingress.clone()).collect::<Vec<_>>(),
        [vec![ip("10.0.0.1")], vec![ip("10.0.0.2")]]
    );
    apply(&mut s, &c);
    assert!(
        allocate(&s, &p, &Config::default()).is_empty(),
        "a fixed point"
    );
    // Deleting the first frees its address for the next newcomer.
    s.remove(0);
    s.push(svc("three", "3"));
    let c = allocate(&s, &p, &Config::default());
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].ingress, [ip("10.0.0.1")]);
}

#[test]
fn a_requested_address_is_honoured_and_a_taken_one_is_a_conflict() {
    let p = pools(&["a=10.0.0.0/29"]);
    let mut one = svc("one", "1");
    one.requested = vec![ip("10.0.0.5")];
    let mut two = svc("two", "2");
    two.requested = vec![ip("10.0.0.5")];
    let mut out = svc("out", "3");
    out.requested = vec![ip("192.0.2.1")];
    let c = allocate(&[one, two, out], &p, &Config::default());
    assert_eq!(of(&c, "one").ingress, [ip("10.0.0.5")]);
    assert!(of(&c, "one").problem.is_none());
    assert!(of(&c, "two").ingress.is_empty());
    assert_eq!(
        of(&c, "two").problem.as_ref().unwrap().reason,
        "AddressInUse"
    );
    assert!(
        of(&c, "two")
            .problem
            .as_ref()
            .unwrap()
            .message
            .starts_with("10.0.0.5 is held by Service default/one"),
        "{:?}",
        of(&c, "two").problem
    );
    assert_eq!(
        of(&c, "out").problem.as_ref().unwrap().reason,
        "AddressNotInPool"
    );
}

#[test]
fn dual_stack_gets_one_address_per_family() {
    let p = pools(&["a=10.0.0.0/30,fd00::/126"]);
    let mut s = svc("ds", "1");
    s.families = vec![Family::V6, Family::V4];
    s.require_all = true;
    let c = allocate(&[s.clone()], &p, &Config::default());
    assert_eq!(c[0].ingress, [ip("fd00::1"), ip("10.0.0.1")]);
    // Only IPv4 pools: RequireDualStack fails, PreferDualStack takes what there is.
    let v4 = pools(&["a=10.0.0.0/30"]);
    let c = allocate(&[s.clone()], &v4, &Config::default());
    assert_eq!(c[0].ingress, [ip("10.0.0.1")]);
    assert_eq!(c[0].problem.as_ref().unwrap().reason, "NoPool");
    s.families = vec![Family::V4, Family::V6];
    s.require_all = false;
    let c = allocate(&[s], &v4, &Config::default());
    assert_eq!(
        (c[0].ingress.clone(), c[0].problem.clone()),
        (vec![ip("10.0.0.1")], None)
    );
}

#[test]
fn other_classes_are_left_alone_and_the_default_is_configurable() {
    let p = pools(&["a=10.0.0.0/29"]);
    let mut theirs = svc("theirs", "1");
    theirs.class = Some("metallb.io/metallb".into());
    let mut ours = svc("ours", "2");
    ours.class = Some(DEFAULT_CLASS.into());
    let unset = svc("unset", "3");
    let s = [theirs, ours, unset];
    let names = |c: Vec<Change>| c.into_iter().map(|c| c.service.name).collect::<Vec<_>>();
    assert_eq!(
        names(allocate(&s, &p, &Config::default())),
        ["ours", "unset"]
    );
    let only_class = Config {
        default_class: false,
        ..Config::default()
    };
    assert_eq!(names(allocate(&s, &p, &only_class)), ["ours"]);
}

#[test]
fn sharing_needs_the_same_key_and_disjoint_ports() {
    let p = pools(&["a=10.0.0.0/29"]);
    let mut dns_tcp = svc("dns-tcp", "1");
    dns_tcp.share_key = Some("dns".into());
    dns_tcp.ports = [("TCP".to_string(), 53)].into();
    let mut dns_udp = svc("dns-udp", "2");
    dns_udp.share_key = Some("dns".into());
    dns_udp.ports = [("UDP".to_string(), 53)].into();
    let mut clash = svc("clash", "3");
    clash.share_key = Some("dns".into());
    clash.ports = [("UDP".to_string(), 53)].into();
    let c = allocate(&[dns_tcp, dns_udp, clash], &p, &Config::default());
    assert_eq!(c[0].ingress, [ip("10.0.0.1")]);
    assert_eq!(c[1].ingress, [ip("10.0.0.1")], "shared");
    assert_eq!(
        c[2].ingress,
        [ip("10.0.0.2")],
        "same ports: an address of its own"
    );
}

#[test]
fn an_exhausted_pool_is_reported() {
    let p = pools(&["a=10.0.0.1-10.0.0.2"]);
    let s = [svc("a", "1"), svc("b", "2"), svc("c", "3")];
    let c = allocate(&s, &p, &Config::default());
    assert_eq!(
        of(&c, "c").problem.as_ref().unwrap().reason,
        "PoolExhausted"
    );
    assert!(of(&c, "c")
        .problem
        .as_ref()
        .unwrap()
        .message
        .contains("pool(s) a"));
}

#[test]
fn selectors_manual_pools_and_the_pool_annotation() {
    let (p, e) = Pools::build(
        &[parse_flag("manual:manual=10.0.1.0/30").unwrap()],
        &[("edge".into(), serde_json::from_value(serde_json::json!({"addresses": ["10.0.2.0/30"], "serviceSelector": {"matchLabels": {"tier": "edge"}}})).unwrap())],
    );
    assert!(e.is_empty());
    let plain = svc("plain", "1");
    let mut edge = svc("edge", "2");
    edge.labels.insert("tier".into(), "edge".into());
    let mut pinned = svc("pinned", "3");
    pinned.pool = Some("manual".into());
    let c = allocate(&[plain, edge, pinned], &p, &Config::default());
    assert_eq!(c[0].problem.as_ref().unwrap().reason, "NoPool");
    assert_eq!(c[1].ingress, [ip("10.0.2.1")]);
    assert_eq!(c[2].ingress, [ip("10.0.1.1")]);
}

#[test]
fn a_type_change_releases_and_an_older_holder_wins_a_duplicate() {
    let p = pools(&["a=10.0.0.0/29"]);
    let mut gone = svc("gone", "1");
    gone.load_balancer = false;
    gone.ingress = vec![ip("10.0.0.1"), ip("192.0.2.9")];
    // Two Services claiming one address (e.g. written by hand): the older keeps it.
    let mut old = svc("old", "2");
    old.ingress = vec![ip("10.0.0.3")];
    let mut young = svc("young", "3");
    young.ingress = vec![ip("10.0.0.3")];
    let c = allocate(&[gone, old, young], &p, &Config::default());
    assert_eq!(
        (of(&c, "gone").ingress.clone(), of(&c, "gone").served),
        (vec![ip("192.0.2.9")], false)
    );
    assert_eq!(of(&c, "old").ingress, [ip("10.0.0.3")]);
    assert_eq!(of(&c, "young").ingress, [ip("10.0.0.1")]);
    // Releases first: `young` gives up 10.0.0.3 before it takes 10.0.0.1.
    let names: Vec<(&str, Vec<IpAddr>)> = c
        .iter()
        .map(|c| (c.service.name.as_str(), c.ingress.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("gone", vec![ip("192.0.2.9")]),
            ("old", vec![ip("10.0.0.3")]),
            ("young", vec![]),
            ("young", vec![ip("10.0.0.1")])
        ]
    );
}

/// No address is held by two Services unless they may share it.
fn assert_no_double(s: &[SvcView], step: usize, seed: u64) {
    let mut by_addr: BTreeMap<IpAddr, Vec<&SvcView>> = BTreeMap::new();
    for v in s {
        for a in &v.ingress {
            by_addr.entry(*a).or_default().push(v);
        }
    }
    for (a, holders) in by_addr {
        for (i, x) in holders.iter().enumerate() {
            for y in &holders[i + 1..] {
                let ok = x.share_key.is_some()
                    && x.share_key == y.share_key
                    && x.ports.is_disjoint(&y.ports);
                assert!(
                    ok,
                    "seed {seed} step {step}: {a} held by {} and {}",
                    x.id, y.id
                );
            }
        }
    }
}

#[test]
fn no_address_is_ever_held_twice_over_random_histories() {
    let p = pools(&["a=10.0.0.0/28,fd00::/124", "b:manual=10.0.1.0/30"]);
    let cfg = Config::default();
    for seed in 1..=300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut s: Vec<SvcView> = Vec::new();
        let mut created = 0u32;
        for step in 0..60 {
            match rng.u64(..10) {
                0..=3 => {
                    created += 1;
                    let mut v = svc(&format!("s{created}"), &format!("{created:05}"));
                    v.families = match rng.u64(..4) {
                        0 => vec![Family::V6],
                        1 => vec![Family::V4, Family::V6],
                        _ => vec![Family::V4],
                    };
                    v.require_all = rng.u64(..2) == 0;
                    if rng.u64(..4) == 0 {
                        let a = ["10.0.0.3", "10.0.0.7", "10.0.1.1", "fd00::2", "192.0.2.1"]
                            [rng.u64(..5) as usize];
                        v.requested = vec![ip(a)];
                    }
                    if rng.u64(..3) == 0 {
                        v.share_key = Some(["k1", "k2"][rng.u64(..2) as usize].into());
                    }
                    v.ports = [(
                        ["TCP", "UDP"][rng.u64(..2) as usize].to_string(),
                        80 + rng.u64(..3) as u16,
                    )]
                    .into();
                    if rng.u64(..8) == 0 {
                        v.class = Some("other".into());
                    }
                    if rng.u64(..8) == 0 {
                        v.pool = Some("b".into());
                    }
                    s.push(v);
                }
                4 if !s.is_empty() => {
                    let i = rng.u64(..s.len() as u64) as usize;
                    s.remove(i);
                }
                5 if !s.is_empty() => {
                    let i = rng.u64(..s.len() as u64) as usize;
                    s[i].load_balancer = !s[i].load_balancer;
                }
                _ => {
                    // A leader applies its changes, or dies after some of them
                    // (the next round starts from the statuses, nothing else).
                    let changes = allocate(&s, &p, &cfg);
                    let applied = if rng.u64(..3) == 0 {
                        rng.u64(..changes.len() as u64 + 1) as usize
                    } else {
                        changes.len()
                    };
                    apply(&mut s, &changes[..applied]);
                    assert_no_double(&s, step, seed);
                }
            }
        }
        let changes = allocate(&s, &p, &cfg);
        apply(&mut s, &changes);
        assert_no_double(&s, 999, seed);
        assert!(
            allocate(&s, &p, &cfg).is_empty(),
            "seed {seed}: not a fixed point after a full application"
        );
        for v in &s {
            for a in &v.ingress {
                assert!(
                    p.pool_of(*a).is_some() || !v.load_balancer,
                    "seed {seed}: {a} of {} outside every pool",
                    v.id
                );
            }
        }
    }
}
