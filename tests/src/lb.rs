//! The load balancer under test, loaded through the agent's own loader, its
//! maps pinned in a private directory that is removed afterwards.
use std::path::{Path, PathBuf};

use aya::{programs::XdpMode, Ebpf};
use lb_agent::{dataplane::Dataplane, diff::MapContents, loader};

use crate::netns::Netns;

/// Loaded programs (attached while this lives) and their maps.
pub struct Lb {
    pub ebpf: Ebpf,
    pub maps: Dataplane,
    pin_dir: PathBuf,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Lb {
    /// Loads the programs without attaching them (for fixtures).
    pub fn load() -> Self {
        Self::load_sized(TEST_SIZES)
    }

    /// As [`Lb::load`], with map sizes of the caller's choice.
    pub fn load_sized(sizes: loader::MapSizes) -> Self {
        let pin_dir = new_pin_dir();
        let ebpf = loader::load(&pin_dir, sizes).unwrap_or_else(|e| panic!("loading the programs: {e:?}"));
        Self::with(ebpf, pin_dir)
    }

    /// Loads the programs and attaches them inside `node`: XDP (native mode)
    /// + tc egress on `uplink`, tc ingress + egress on each of `pod_ifaces`.
    pub fn attach(node: &Netns, uplink: &str, pod_ifaces: &[&str]) -> Self {
        let pin_dir = new_pin_dir();
        let (dir, uplink) = (pin_dir.clone(), uplink.to_string());
        let pods: Vec<String> = pod_ifaces.iter().map(|s| s.to_string()).collect();
        // Interface names resolve in the calling thread's namespace.
        let ebpf = node.run(move || {
            let mut ebpf = load_at(&dir);
            loader::attach_uplink(&mut ebpf, &uplink, XdpMode::Driver, None).unwrap_or_else(|e| panic!("{e:?}"));
            for p in &pods {
                loader::attach_pod_iface(&mut ebpf, p, None).unwrap_or_else(|e| panic!("{e:?}"));
            }
            ebpf
        });
        Self::with(ebpf, pin_dir)
    }

    fn with(ebpf: Ebpf, pin_dir: PathBuf) -> Self {
        let maps = Dataplane::open(&pin_dir).expect("opening the pinned maps");
        Self { ebpf, maps, pin_dir }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Makes the agent-owned maps of `want`'s family hold exactly `want`,
    /// through the agent's diff/apply.
    pub fn program<A: lb_agent::dataplane::MapFamily>(&mut self, want: &MapContents<A>) {
        let cur = self.maps.family_contents::<A>().expect("reading maps");
        let d = lb_agent::diff::diff(&cur, want);
        self.maps.apply(&d).expect("applying the diff");
    }

    /// Sum over CPUs of counter `idx` (`lb_common::counter`).
    pub fn counter(&self, idx: u32) -> u64 {
        self.maps.counters().expect("reading counters")[idx as usize]
    }
}

/// Small maps: tests never need the production sizes.
pub const TEST_SIZES: loader::MapSizes = loader::MapSizes {
    services: 1024,
    backends: 4096,
    slots: 16384,
    conntrack: 65536,
    affinity: 4096,
    conntrack_v6: 16384,
    affinity_v6: 1024,
    sockets: 1024,
    sockets_v6: 1024,
};

fn new_pin_dir() -> PathBuf {
    crate::require_root();
    remove_stale_pins();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!("/sys/fs/bpf/xlbt-{}-{n}", std::process::id()))
}

fn load_at(dir: &Path) -> Ebpf {
    loader::load(dir, TEST_SIZES).unwrap_or_else(|e| panic!("loading the programs: {e:?}"))
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Removes pin directories of test processes that are gone.
/// Also the agents' service-name files of those processes (/run/xdplb).
fn remove_stale_pins() {
    for root in ["/sys/fs/bpf", "/run/xdplb"] {
        let Ok(dir) = std::fs::read_dir(root) else { continue };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // xlbt-: tests; xlbb-: the benchmark.
            if crate::netns::owner_gone(&name, &["xlbt-", "xlbb-"]) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
