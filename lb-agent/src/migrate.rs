//! Pinned maps from an earlier agent: checked against this build's layout,
//! and resized live when only their size differs.
use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{MapData, MapInfo, MapType},
    Ebpf,
};
use lb_common::{maps, *};

use crate::loader::{links_dir, MapSizes};

/// What this build expects of a map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn size<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// The layout of map `name` with `sizes` (a test checks this table against
/// the loaded object, so it cannot drift).
pub fn expected(name: &str, s: MapSizes) -> Spec {
    let spec = |map_type, key_size, value_size, max_entries| Spec { map_type, key_size, value_size, max_entries };
    match name {
        maps::SERVICES_V4 => spec(MapType::Hash, size::<ServiceKeyV4>(), size::<ServiceV4>(), s.services),
        maps::BACKENDS_V4 => spec(MapType::Hash, size::<BackendId>(), size::<BackendV4>(), s.backends),
        maps::SERVICE_SLOTS => spec(MapType::Hash, size::<SlotKey>(), size::<BackendId>(), s.slots),
        maps::CONNTRACK_V4 => spec(MapType::LruHash, size::<FlowKeyV4>(), size::<FlowV4>(), s.conntrack),
        // Indexed by service id (1..=services).
        maps::SERVICE_STATS => spec(MapType::PerCpuArray, 4, size::<ServiceStats>(), s.services + 1),
        maps::COUNTERS => spec(MapType::PerCpuArray, 4, 8, counter::COUNT),
        maps::RR_STATE => spec(MapType::Array, 4, 8, s.services + 1),
        maps::CONFIG => spec(MapType::Array, 4, size::<Config>(), 1),
        maps::AFFINITY_V4 => spec(MapType::LruHash, size::<AffinityKeyV4>(), size::<AffinityV4>(), s.affinity),
        // Indexed by backend id (1..=backends).
        maps::BACKEND_LOAD => spec(MapType::Array, 4, 8, s.backends + 1),
        // bpf_devmap_val: ifindex + program.
        maps::REDIRECT_IFACES => spec(MapType::DevMapHash, 4, 8, maps::default_size::REDIRECT_IFACES),
        maps::SOCK_NETNS => spec(MapType::Array, 4, 8, 1),
        // Key: the trie's u32 prefix length, then the data.
        maps::SOURCE_RANGES_V4 => spec(MapType::LpmTrie, 4 + size::<SourceRangeV4>(), 1, maps::default_size::SOURCE_RANGES),
        maps::SOCK_REVNAT_V4 => spec(MapType::LruHash, size::<SockRevKeyV4>(), size::<SockRevV4>(), maps::default_size::SOCK_REVNAT),
        other => unreachable!("map {other} missing from migrate::expected"),
    }
}

/// What is pinned at a map's path.
pub enum Pinned {
    Absent,
    Matches,
    /// Same layout, another size: migrate.
    Resize { from: u32 },
}

pub fn check_pinned(path: &Path, want: &Spec) -> Result<Pinned> {
    if !path.exists() {
        return Ok(Pinned::Absent);
    }
    let info = MapInfo::from_pin(path).with_context(|| format!("reading the pinned map {}", path.display()))?;
    let got = Spec {
        map_type: info.map_type()?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    if (got.map_type, got.key_size, got.value_size) != (want.map_type, want.key_size, want.value_size) {
        bail!(
            "the map pinned at {} has another layout ({:?}, key {} B, value {} B) than this agent's ({:?}, key {} B, value {} B): \\
             it was made by an incompatible version. Run that version's `lb-agent uninstall` (live flows are lost) before starting this one",
            path.display(), got.map_type, got.key_size, got.value_size, want.map_type, want.key_size, want.value_size
        );
    }
    Ok(if got.max_entries == want.max_entries { Pinned::Matches } else { Pinned::Resize { from: got.max_entries } })
}

/// Where a resized map is pinned until it replaces the old one (bpffs
/// refuses names with a dot).
pub fn next_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("_next");
    PathBuf::from(p)
}

/// Finishes resizing `names` (their new instances are pinned at
/// `next_path`): copy, switch the pinned links to the new programs, copy what
/// arrived meanwhile, move the pins.
pub fn resize(ebpf: &mut Ebpf, pin_dir: &Path, names: &[&str]) -> Result<()> {
    let pairs: Vec<(PathBuf, PathBuf)> = names.iter().map(|n| (pin_dir.join(n), next_path(&pin_dir.join(n)))).collect();
    for (old, new) in &pairs {
        let n = copy(old, new, false)?;
        tracing::info!(map = %old.display(), entries = n, "copied into the resized map");
    }
    crate::links::relink_all(ebpf, &links_dir(pin_dir))?;
    for (old, new) in &pairs {
        // Flows the old programs created before the switch.
        copy(old, new, true)?;
        std::fs::rename(new, old).with_context(|| format!("moving {} to {}", new.display(), old.display()))?;
    }
    Ok(())
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_NOEXIST: u64 = 1;

fn bpf(cmd: i64, attr: &ElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for the element commands.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const ElemAttr, core::mem::size_of::<ElemAttr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Copies every entry of the map pinned at `from` into the one at `to` (same
/// layout); with `only_new`, entries `to` already has are left alone. Keys
/// `to` cannot hold (a smaller array, a full hash) are skipped. Returns how
/// many were copied.
fn copy(from: &Path, to: &Path, only_new: bool) -> Result<usize> {
    let (src, dst) = (MapData::from_pin(from)?, MapData::from_pin(to)?);
    let info = MapInfo::from_pin(from)?;
    let per_cpu = matches!(info.map_type()?, MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash);
    let cpus = if per_cpu { aya::util::nr_cpus().map_err(|(_, e)| e)? } else { 1 };
    let vsize = if per_cpu { (info.value_size() as usize).div_ceil(8) * 8 * cpus } else { info.value_size() as usize };
    let (mut key, mut next, mut value) = (vec![0u8; info.key_size() as usize], vec![0u8; info.key_size() as usize], vec![0u8; vsize]);
    let (sfd, dfd) = (src.fd().as_fd().as_raw_fd() as u32, dst.fd().as_fd().as_raw_fd() as u32);
    let mut first = true;
    let mut copied = 0;
    loop {
        let attr = ElemAttr { map_fd: sfd, _pad: 0, key: if first { 0 } else { key.as_ptr() as u64 }, value: next.as_mut_ptr() as u64, flags: 0 };
        match bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e).context("iterating a pinned map"),
        }
        first = false;
        key.copy_from_slice(&next);
        let get = ElemAttr { map_fd: sfd, _pad: 0, key: key.as_ptr() as u64, value: value.as_mut_ptr() as u64, flags: 0 };
        if bpf(BPF_MAP_LOOKUP_ELEM, &get).is_err() {
            continue; // deleted (or evicted) while we iterate
        }
        let flags = if only_new && !matches!(info.map_type()?, MapType::Array | MapType::PerCpuArray) { BPF_NOEXIST } else { 0 };
        let put = ElemAttr { map_fd: dfd, _pad: 0, key: key.as_ptr() as u64, value: value.as_ptr() as u64, flags };
        if bpf(BPF_MAP_UPDATE_ELEM, &put).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}
