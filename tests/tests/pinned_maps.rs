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
