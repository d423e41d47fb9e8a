//! Pinned maps left by another agent: their layout is checked before use.
//! Needs root.
use aya::maps::MapInfo;
use lb_agent::{loader, migrate};
use xdplb_tests::lb::{Lb, TEST_SIZES};

#[test]
fn the_expected_layouts_match_the_loaded_object() {
    let lb = Lb::load();
    for name in lb_common::maps::ALL {
        let info = MapInfo::from_pin(lb.pin_dir().join(name)).unwrap();
        let got = migrate::Spec {
            map_type: info.map_type().unwrap(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        assert_eq!(got, migrate::expected(name, TEST_SIZES), "map {name}");
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_with_the_fix() {
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xlbt-{}-layout", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A conntrack map as a hypothetical older agent made it: 8-byte values.
    let pin = dir.join("conntrack_v4");
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "lru_hash", "key", "16", "value", "8", "entries", "64", "name", "conntrack_v4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let err = loader::load(&dir, TEST_SIZES).expect_err("an incompatible pinned map must be refused");
    let _ = std::fs::remove_dir_all(&dir);
    let msg = format!("{err:#}");
    assert!(msg.contains("another layout") && msg.contains("value 8 B") && msg.contains("uninstall"), "{msg}");
}

/// Earlier versions kept `backends_v4` as a hash map keyed by backend id, and
/// numbered backends up to `u32::MAX - 1`. A new agent converts it into the
/// array it uses; a backend whose id the array cannot index gets a free id,
/// and the slots, affinity entries and flows that named it follow.
#[test]
fn a_backends_hash_of_an_earlier_version_becomes_the_array_with_its_flows() {
    use aya::maps::{HashMap, Map, MapData};
    use lb_agent::dataplane::Dataplane;
    use lb_common::{AffinityKeyV4, AffinityV4, BackendV4, FlowKeyV4, FlowV4, SlotKey};

    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xlbt-{}-convert", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Every map as this version makes it...
    drop(loader::load(&dir, TEST_SIZES).expect("first load"));
    // ...but backends_v4 as an earlier version made it.
    let pin = dir.join("backends_v4");
    std::fs::remove_file(&pin).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "hash", "key", "4", "value", "12", "entries", &TEST_SIZES.backends.to_string(), "name", "backends_v4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    fn hash<K: aya::Pod, V: aya::Pod>(path: &std::path::Path) -> HashMap<MapData, K, V> {
        HashMap::try_from(Map::from_map_data(MapData::from_pin(path).unwrap()).unwrap()).unwrap()
    }
    let backend = |last: u8| BackendV4 { addr: [10, 0, 2, last], port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() };
    let high = u32::MAX - 7;
    let mut old = hash::<u32, BackendV4>(&pin);
    old.insert(3, backend(11), 0).unwrap();
    old.insert(high, backend(12), 0).unwrap();
    let mut slots = hash::<SlotKey, u32>(&dir.join("service_slots"));
    slots.insert(SlotKey { service_id: 1, slot: 1 }, 3, 0).unwrap();
    slots.insert(SlotKey { service_id: 1, slot: 2 }, high, 0).unwrap();
    let client = [10, 0, 0, 2];
    hash::<AffinityKeyV4, AffinityV4>(&dir.join("affinity_v4")).insert(AffinityKeyV4 { service_id: 1, client }, AffinityV4 { backend_id: high, slot: 2, last_used_ns: 1 }, 0).unwrap();
    let flow = |sport: u16, backend_id: u32| {
        let key = FlowKeyV4 { src_addr: client, dst_addr: [10, 96, 0, 10], src_port: sport.to_be_bytes(), dst_port: 80u16.to_be_bytes(), proto: 6, _pad: [0; 3] };
        (key, FlowV4 { backend_id, service_id: 1, packets: 5, ..Default::default() })
    };
    let mut conntrack = hash::<FlowKeyV4, FlowV4>(&dir.join("conntrack_v4"));
    for (k, v) in [flow(40000, 3), flow(40001, high)] {
        conntrack.insert(k, v, 0).unwrap();
    }
    drop((old, slots, conntrack));

    let ebpf = loader::load(&dir, TEST_SIZES).expect("converting load");
    let info = MapInfo::from_pin(&pin).unwrap();
    assert_eq!((info.map_type().unwrap(), info.max_entries()), (aya::maps::MapType::Array, TEST_SIZES.backends + 1));
    assert!(!lb_agent::pins::next_path(&pin).exists(), "the new map took the pin");
    let dp = Dataplane::open(&dir).expect("the maps open with this version's types");
    let c = dp.contents().unwrap();
    assert_eq!(c.backends.len(), 2, "{:?}", c.backends);
    assert_eq!(c.backends.get(&3), Some(&backend(11)), "an id that fits keeps it");
    let (&renumbered, _) = c.backends.iter().find(|(_, b)| **b == backend(12)).expect("the backend with the high id is kept");
    assert!(renumbered != 3 && (1..=TEST_SIZES.backends).contains(&renumbered), "{renumbered}");
    assert_eq!(c.slots.get(&SlotKey { service_id: 1, slot: 1 }), Some(&3));
    assert_eq!(c.slots.get(&SlotKey { service_id: 1, slot: 2 }), Some(&renumbered));
    assert_eq!(dp.affinity(&AffinityKeyV4 { service_id: 1, client }).unwrap().map(|a| a.backend_id), Some(renumbered));
    let flows: std::collections::BTreeMap<u16, u32> =
        dp.flows().unwrap().into_iter().map(|(k, v)| (u16::from_be_bytes(k.src_port), v.backend_id)).collect();
    assert_eq!(flows, [(40000, 3), (40001, renumbered)].into(), "the flows name the new id");
    assert_eq!(dp.backend_load(renumbered).unwrap(), 1, "the renumbered backend's live flow is counted");
    // And again: the converted map matches, nothing moves.
    drop((ebpf, dp));
    drop(loader::load(&dir, TEST_SIZES).expect("loading over the converted maps"));
    let again = Dataplane::open(&dir).unwrap().contents().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(again, c);
}
