//! Pinned maps from an earlier agent: checked against this build's layout,
//! resized live when only their size differs, and converted live from the
//! layouts of earlier versions this one knows (`backends_v4` was a hash map
//! before it became an array indexed by backend id).
use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo, MapType},
    Ebpf,
};
use lb_common::{maps, *};

use crate::{
    bpfsys,
    pins::{links_dir, next_path, MapSizes},
};

/// A step of checking or migrating a pinned map that failed: which map and
/// what was done, or the layout that does not match (with the fix).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the map pinned at {} has another layout ({:?}, key {} B, value {} B) than this agent's ({:?}, key {} B, value {} B): \
         it was made by an incompatible version. Run that version's `lb-agent uninstall` (live flows are lost) before starting this one",
        .path.display(), .got.map_type, .got.key_size, .got.value_size, .want.map_type, .want.key_size, .want.value_size
    )]
    Layout { path: PathBuf, got: Spec, want: Spec },
    #[error("reading the pinned map {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{step} {}", .path.display())]
    Syscall {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds {count} backends, more than the {capacity} the new map can index: raise --max-backends", .path.display())]
    TooManyBackends { path: PathBuf, count: usize, capacity: u32 },
    #[error("writing backend {old} under its new id {new} in {} (if the map is full, raise --max-backends)", .path.display())]
    Renumber {
        old: u32,
        new: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("switching the pinned links to the programs of the resized maps")]
    Relink(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `MapInfo` of the map pinned at `path`.
fn info(path: &Path) -> Result<MapInfo> {
    MapInfo::from_pin(path).map_err(|source| Error::Open { path: path.to_path_buf(), source })
}

/// The map pinned at `path`.
fn open(path: &Path) -> Result<MapData> {
    MapData::from_pin(path).map_err(|source| Error::Open { path: path.to_path_buf(), source })
}

/// The type of the map pinned at `path`.
fn map_type(info: &MapInfo, path: &Path) -> Result<MapType> {
    info.map_type().map_err(|source| Error::Open { path: path.to_path_buf(), source })
}

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
        // Indexed by backend id (1..=backends); an empty slot is no backend.
        maps::BACKENDS_V4 => spec(MapType::Array, size::<BackendId>(), size::<BackendV4>(), s.backends + 1),
        maps::SERVICE_SLOTS => spec(MapType::Hash, size::<SlotKey>(), size::<BackendId>(), s.slots),
        maps::CONNTRACK_V4 => spec(MapType::LruHash, size::<FlowKeyV4>(), size::<FlowV4>(), s.conntrack),
        // Forward halves of confirmed flows only (a quarter of the table).
        maps::CONNTRACK_CONFIRMED_V4 => spec(MapType::LruHash, size::<FlowKeyV4>(), size::<FlowV4>(), (s.conntrack / 4).max(1)),
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
        maps::SOCK_REVNAT_V4 => spec(MapType::LruHash, size::<SockRevKeyV4>(), size::<SockRevV4>(), s.sockets),
        maps::NAT_CONFIG => spec(MapType::Array, 4, size::<NatConfigV4>(), 1),
        maps::NAT_CONFIG_V6 => spec(MapType::Array, 4, size::<NatConfigV6>(), 1),
        // Indexed by backend id (1..=backends).
        maps::SNAT_EXHAUSTED => spec(MapType::PerCpuArray, 4, 8, s.backends + 1),
        // One bit per port.
        maps::REPLY_PORTS | maps::SERVICE_PORTS => spec(MapType::Array, 4, 8, lb_common::reply_ports::WORDS),
        maps::NEXT_HOP_V4 => spec(MapType::LruHash, size::<HopKeyV4>(), size::<NextHop>(), maps::default_size::NEXT_HOPS),
        maps::NEXT_HOP_V6 => spec(MapType::LruHash, size::<HopKeyV6>(), size::<NextHop>(), maps::default_size::NEXT_HOPS),
        maps::NEXT_HOP_GEN => spec(MapType::Array, 4, 4, 1),
        // Direct-mapped by the destination's low bits (`lb_common::hop_slot`).
        maps::NEXT_HOP_SLOTS_V4 => spec(MapType::PerCpuArray, 4, size::<HopSlotV4>(), HOP_SLOTS),
        maps::NEXT_HOP_SLOTS_V6 => spec(MapType::PerCpuArray, 4, size::<HopSlotV6>(), HOP_SLOTS),
        // The IPv6 instances: the same roles and sizes (conntrack and
        // affinity sized on their own), keys and values over 16-byte addresses.
        maps::SERVICES_V6 => spec(MapType::Hash, size::<ServiceKeyV6>(), size::<Service>(), s.services),
        maps::BACKENDS_V6 => spec(MapType::Array, size::<BackendId>(), size::<BackendV6>(), s.backends + 1),
        maps::CONNTRACK_V6 => spec(MapType::LruHash, size::<FlowKeyV6>(), size::<FlowV6>(), s.conntrack_v6),
        maps::CONNTRACK_CONFIRMED_V6 => spec(MapType::LruHash, size::<FlowKeyV6>(), size::<FlowV6>(), (s.conntrack_v6 / 4).max(1)),
        maps::AFFINITY_V6 => spec(MapType::LruHash, size::<AffinityKeyV6>(), size::<AffinityV4>(), s.affinity_v6),
        maps::SOURCE_RANGES_V6 => spec(MapType::LpmTrie, 4 + size::<SourceRangeV6>(), 1, maps::default_size::SOURCE_RANGES),
        maps::SOCK_REVNAT_V6 => spec(MapType::LruHash, size::<SockRevKeyV6>(), size::<SockRevV6>(), s.sockets_v6),
        // Index 0: the hook's IPv6 instance, tail-called (program fds).
        maps::FAMILY_XDP | maps::FAMILY_TC_INGRESS | maps::FAMILY_TC_EGRESS | maps::DSR_XDP => spec(MapType::ProgramArray, 4, 4, 1),
        // Index 0: `xdp_sctp_v6`; 1: its rewrite stage.
        maps::SCTP_XDP => spec(MapType::ProgramArray, 4, 4, 2),
        other => unreachable!("map {other} missing from migrate::expected"),
    }
}

/// What is pinned at a map's path.
#[derive(Debug)]
pub enum Pinned {
    Absent,
    Matches,
    /// Same layout, another size: migrate.
    Resize { from: u32 },
    /// An earlier version's layout this one converts live (copied into a
    /// new map like a resize): `backends_v4` as a hash map keyed by id.
    Convert { from: MapType },
}

/// Whether a map pinned as `got` is an earlier layout that converts into
/// `want`: a hash of 4-byte keys into an array with the same values (the
/// keys become indexes; ones past the end are renumbered first, see
/// [`fit_backend_ids`]).
fn converts(got: &Spec, want: &Spec) -> bool {
    got.map_type == MapType::Hash
        && want.map_type == MapType::Array
        && (got.key_size, got.value_size) == (4, want.value_size)
        && want.key_size == 4
}

pub fn check_pinned(path: &Path, want: &Spec) -> Result<Pinned> {
    if !path.exists() {
        return Ok(Pinned::Absent);
    }
    let info = info(path)?;
    let got = Spec {
        map_type: map_type(&info, path)?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    if converts(&got, want) {
        return Ok(Pinned::Convert { from: got.map_type });
    }
    if (got.map_type, got.key_size, got.value_size) != (want.map_type, want.key_size, want.value_size) {
        return Err(Error::Layout { path: path.to_path_buf(), got, want: *want });
    }
    Ok(if got.max_entries == want.max_entries { Pinned::Matches } else { Pinned::Resize { from: got.max_entries } })
}

/// Finishes resizing `names` (their new instances are pinned at
/// `next_path`): copy, switch the pinned links to the new programs, copy what
/// arrived meanwhile, move the pins.
///
/// Converted maps (a `backends_v4` hash into the array) go the same way.
/// Before anything is copied, backends whose id the new `backends_v4` cannot
/// index are given free ids (see [`fit_backend_ids`]).
pub fn resize(ebpf: &mut Ebpf, pin_dir: &Path, names: &[&str]) -> Result<()> {
    let pairs: Vec<(PathBuf, PathBuf)> = names.iter().map(|n| (pin_dir.join(n), next_path(&pin_dir.join(n)))).collect();
    if names.contains(&maps::BACKENDS_V4) {
        let capacity = info(&next_path(&pin_dir.join(maps::BACKENDS_V4)))?.max_entries() - 1;
        let moved = fit_backend_ids(pin_dir, capacity)?;
        if moved > 0 {
            tracing::info!(backends = moved, capacity, "renumbered backends whose id is past the end of the new backends_v4");
        }
    }
    for (old, new) in &pairs {
        let n = copy(old, new, false)?;
        tracing::info!(map = %old.display(), entries = n, "copied into the resized map");
    }
    crate::links::relink_all(ebpf, &links_dir(pin_dir)).map_err(|e| Error::Relink(e.into()))?;
    for (old, new) in &pairs {
        // Flows the old programs created before the switch.
        copy(old, new, true)?;
        std::fs::rename(new, old).map_err(|source| Error::Syscall { step: "moving the resized map's pin over", path: old.clone(), source })?;
    }
    Ok(())
}

/// Copies every entry of the map pinned at `from` into the one at `to` (same
/// layout); with `only_new`, entries `to` already has are left alone. Keys
/// `to` cannot hold (a smaller array, a full hash) are skipped. Returns how
/// many were copied.
fn copy(from: &Path, to: &Path, only_new: bool) -> Result<usize> {
    let (src, dst) = (open(from)?, open(to)?);
    let info = info(from)?;
    let per_cpu = matches!(map_type(&info, from)?, MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash);
    let dst_type = map_type(&self::info(to)?, to)?;
    let cpus = match per_cpu {
        true => aya::util::nr_cpus().map_err(|(_, source)| Error::Syscall { step: "counting the possible CPUs for", path: from.to_path_buf(), source })?,
        false => 1,
    };
    let vsize = if per_cpu { (info.value_size() as usize).div_ceil(8) * 8 * cpus } else { info.value_size() as usize };
    let (mut key, mut next, mut value) = (vec![0u8; info.key_size() as usize], vec![0u8; info.key_size() as usize], vec![0u8; vsize]);
    let (sfd, dfd) = (src.fd().as_fd(), dst.fd().as_fd());
    let mut first = true;
    let mut copied = 0;
    let iterating = |source| Error::Syscall { step: "iterating", path: from.to_path_buf(), source };
    while bpfsys::next_key(sfd, (!first).then_some(&key[..]), &mut next).map_err(iterating)? {
        first = false;
        key.copy_from_slice(&next);
        if !bpfsys::lookup(sfd, &key, &mut value).unwrap_or(false) {
            continue; // deleted (or evicted) while we iterate
        }
        // Arrays refuse BPF_NOEXIST (every index exists): they are overwritten.
        let flags = if only_new && !matches!(dst_type, MapType::Array | MapType::PerCpuArray) { bpfsys::BPF_NOEXIST } else { 0 };
        if bpfsys::update(dfd, &key, &value, flags).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}

/// Calls `f` with the map's fd and each (key, value) of the (not per-CPU)
/// map pinned at `path`.
fn for_each(path: &Path, mut f: impl FnMut(BorrowedFd<'_>, &[u8], &[u8]) -> Result<()>) -> Result<()> {
    let map = open(path)?;
    let info = info(path)?;
    let fd = map.fd().as_fd();
    let (mut key, mut next) = (vec![0u8; info.key_size() as usize], vec![0u8; info.key_size() as usize]);
    let mut value = vec![0u8; info.value_size() as usize];
    let mut first = true;
    let iterating = |source| Error::Syscall { step: "iterating", path: path.to_path_buf(), source };
    while bpfsys::next_key(fd, (!first).then_some(&key[..]), &mut next).map_err(iterating)? {
        first = false;
        key.copy_from_slice(&next);
        if bpfsys::lookup(fd, &key, &mut value).unwrap_or(false) {
            f(fd, &key, &value)?;
        }
    }
    Ok(())
}

/// Rewrites the values of the map pinned at `path` that `remap` changes
/// (entries deleted meanwhile stay deleted); returns how many. A value the
/// programs change at the same moment may lose that change (a packet
/// count, say): the window is one entry's read and write.
fn rewrite<T: bytemuck::Pod>(path: &Path, mut remap: impl FnMut(&mut T) -> bool) -> Result<usize> {
    let mut n = 0;
    for_each(path, |fd, k, v| {
        let mut t: T = bytemuck::pod_read_unaligned(v);
        if remap(&mut t) {
            match bpfsys::update(fd, k, bytemuck::bytes_of(&t), bpfsys::BPF_EXIST) {
                Ok(()) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(Error::Syscall { step: "rewriting an entry of", path: path.to_path_buf(), source }),
            }
        }
        Ok(())
    })?;
    Ok(n)
}

/// Gives every backend of the pinned `backends_v4` whose id is past
/// `capacity` (what the new array can index) a free id within it, while the
/// running programs still use the pinned maps. Earlier agents numbered
/// backends up to `u32::MAX - 1`, and a smaller array drops the top ids.
///
/// The order keeps every packet served: the backend is first written under
/// its new id as well (the old map then holds it twice), then the slots,
/// affinity entries and flows that name the old id are rewritten to the new
/// one, and the flows once more a moment later (a new flow may have picked
/// the old id just before its slot changed). The old id is left in the old
/// map, which is dropped after the switch. Returns how many backends moved.
pub fn fit_backend_ids(pin_dir: &Path, capacity: u32) -> Result<usize> {
    let path = pin_dir.join(maps::BACKENDS_V4);
    let mut used = std::collections::BTreeSet::new();
    let mut past = Vec::new();
    for_each(&path, |_, k, v| {
        // Checked by `check_pinned`: backends_v4 keys are 4 bytes.
        let id = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]);
        let b: BackendV4 = bytemuck::pod_read_unaligned(v);
        if !b.is_empty() && (id == 0 || id > capacity) {
            past.push((id, b));
        } else if !b.is_empty() {
            used.insert(id);
        }
        Ok(())
    })?;
    if past.is_empty() {
        return Ok(0);
    }
    let mut free = (1..=capacity).filter(|id| !used.contains(id));
    let backends = open(&path)?;
    let fd = backends.fd().as_fd();
    let mut moves = std::collections::BTreeMap::new();
    for (old, value) in &past {
        let Some(new) = free.next() else {
            return Err(Error::TooManyBackends { path, count: used.len() + past.len(), capacity });
        };
        bpfsys::update(fd, &new.to_ne_bytes(), bytemuck::bytes_of(value), 0)
            .map_err(|source| Error::Renumber { old: *old, new, path: path.clone(), source })?;
        moves.insert(*old, new);
    }
    let slots = rewrite::<BackendId>(&pin_dir.join(maps::SERVICE_SLOTS), |id| match moves.get(id) {
        Some(new) => { *id = *new; true }
        None => false,
    })?;
    let affinity = rewrite::<AffinityV4>(&pin_dir.join(maps::AFFINITY_V4), |a| match moves.get(&a.backend_id) {
        Some(new) => { a.backend_id = *new; true }
        None => false,
    })?;
    let mut flows = 0;
    // Live flows per new id: the old id's were never counted (past the end
    // of backend_load), and a FIN now counts down on the new one.
    let mut load = std::collections::BTreeMap::<BackendId, u64>::new();
    for pass in 0..2 {
        if pass > 0 {
            // Programs run for microseconds: any that read an old slot value
            // has created its flow by now.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        flows += rewrite::<FlowV4>(&pin_dir.join(maps::CONNTRACK_V4), |f| match moves.get(&f.backend_id) {
            Some(new) => {
                f.backend_id = *new;
                if f.direction == direction::FORWARD && f.flags & flow_flags::CLOSING == 0 {
                    *load.entry(*new).or_default() += 1;
                }
                true
            }
            None => false,
        })?;
    }
    let load_map = open(&pin_dir.join(maps::BACKEND_LOAD))?;
    let load_fd = load_map.fd().as_fd();
    for (id, n) in &load {
        // An id past the end of the old backend_load (a larger new one) is
        // counted by the agent's recount instead.
        let _ = bpfsys::update(load_fd, &id.to_ne_bytes(), &n.to_ne_bytes(), 0);
    }
    tracing::info!(?moves, slots, affinity, flows, "backend ids renumbered");
    Ok(moves.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors a user can fix say how.
    #[test]
    fn errors_name_the_fix() {
        let want = expected(maps::CONNTRACK_V4, MapSizes::default());
        let got = Spec { value_size: 8, ..want };
        let m = Error::Layout { path: "/sys/fs/bpf/xdplb/conntrack_v4".into(), got, want }.to_string();
        assert!(m.contains("another layout") && m.contains("value 8 B") && m.contains("`lb-agent uninstall`"), "{m}");
        let m = Error::TooManyBackends { path: "/sys/fs/bpf/xdplb/backends_v4".into(), count: 70, capacity: 63 }.to_string();
        assert_eq!(m, "/sys/fs/bpf/xdplb/backends_v4 holds 70 backends, more than the 63 the new map can index: raise --max-backends");
    }

    /// A pinned map that is not there is absent; a path that is no map
    /// fails naming the path.
    #[test]
    fn check_pinned_reports_absent_and_unreadable_pins() {
        let want = expected(maps::SERVICES_V4, MapSizes::default());
        assert!(matches!(check_pinned(Path::new("/nonexistent/xdplb/services_v4"), &want), Ok(Pinned::Absent)));
        let e = check_pinned(Path::new("/proc/self/status"), &want).unwrap_err();
        assert!(matches!(e, Error::Open { .. }), "{e:?}");
        assert_eq!(e.to_string(), "reading the pinned map /proc/self/status");
    }
}
