//! Loading the embedded eBPF object, pinning its maps, attaching programs.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::maps::{self, default_size, programs};

/// The eBPF object built by build.rs from lb-ebpf.
pub static BYTECODE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));

/// Test-only programs of `cargo xtask bench` (lb-ebpf's `bench` binary).
#[cfg(feature = "bench")]
pub static BENCH_BYTECODE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.o"));

/// Default directory of the pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdplb";

/// Sizes of the maps that scale with the cluster.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: default_size::SERVICES,
            backends: default_size::BACKENDS,
            slots: default_size::SLOTS,
            conntrack: default_size::CONNTRACK,
        }
    }
}

/// Loads the programs; maps are pinned under `pin_dir` (reusing maps already
/// pinned there, so a restart keeps every flow).
pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Ebpf> {
    ensure_bpffs(pin_dir)?;
    std::fs::create_dir_all(pin_dir).with_context(|| {
        format!(
            "creating {} (is bpffs mounted at /sys/fs/bpf?)",
            pin_dir.display()
        )
    })?;
    let pins: Vec<(&str, PathBuf)> = maps::ALL.iter().map(|n| (*n, pin_dir.join(n))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .map_max_entries(maps::SERVICES_V4, sizes.services)
        .map_max_entries(maps::BACKENDS_V4, sizes.backends)
        .map_max_entries(maps::SERVICE_SLOTS, sizes.slots)
        .map_max_entries(maps::CONNTRACK_V4, sizes.conntrack)
        // Indexed by service id (1..=services).
        .map_max_entries(maps::SERVICE_STATS, sizes.services + 1)
        .map_max_entries(maps::RR_STATE, sizes.services + 1)
        // Indexed by backend id (1..=backends).
        .map_max_entries(maps::BACKEND_LOAD, sizes.backends + 1);
    let mut ebpf = loader.load(BYTECODE).context("loading the eBPF object")?;
    let xdp: &mut Xdp = program(&mut ebpf, programs::XDP_LB)?;
    xdp.load().context("verifier rejected xdp_lb")?;
    for name in [programs::TC_INGRESS, programs::TC_EGRESS] {
        let p: &mut SchedClassifier = program(&mut ebpf, name)?;
        p.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    Ok(ebpf)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Attaches to an uplink: XDP balances arriving service traffic, tc egress
/// rewrites replies leaving towards clients.
pub fn attach_uplink(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<()> {
    let xdp: &mut Xdp = program(ebpf, programs::XDP_LB)?;
    xdp.attach(iface, mode).with_context(|| {
        format!("attaching XDP to {iface} in {mode:?} mode (if the driver lacks native XDP, use generic mode)")
    })?;
    attach_tc(ebpf, iface, programs::TC_EGRESS, TcAttachType::Egress)
}

/// Attaches to the host side of a pod's veth: tc ingress balances what the
/// pod sends, tc egress rewrites replies going back to it.
pub fn attach_pod_iface(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    attach_tc(ebpf, iface, programs::TC_INGRESS, TcAttachType::Ingress)?;
    attach_tc(ebpf, iface, programs::TC_EGRESS, TcAttachType::Egress)
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str, name: &str, at: TcAttachType) -> Result<()> {
    // Needed only for the netlink attach of kernels before 6.6 (TCX needs none).
    let _ = tc::qdisc_add_clsact(iface);
    let p: &mut SchedClassifier = program(ebpf, name)?;
    p.attach(iface, at)
        .with_context(|| format!("attaching {name} to {iface} ({at:?})"))?;
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure the parent of `pin_dir` is a bpffs, mounting one at
/// /sys/fs/bpf when nothing is mounted there (as systemd does on most distros).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if parent != root {
        anyhow::bail!("{} is not on a bpffs: mount one (`mount -t bpf bpf {}`) or choose a --pin-path under /sys/fs/bpf", pin_dir.display(), parent.display());
    }
    std::fs::create_dir_all(root).ok();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("bpffs is not mounted at /sys/fs/bpf and mounting it failed ({e}): run `mount -t bpf bpf /sys/fs/bpf` as root");
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
