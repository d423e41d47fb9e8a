//! The agent's side of `reply_ports` (`lb_common::maps::REPLY_PORTS`): tc
//! egress looks a packet up in conntrack only when a bit marks its source
//! port as one a reply of ours may have. Every backend's port is marked
//! before the backend is written (`Dataplane::apply`), so no flow to it, and
//! no reply, exists before its bit; at load, the ports of the backends the
//! pinned maps already hold are marked before any program is attached or
//! relinked ([`seed`]: an upgrade keeps the replies of live flows). Bits are
//! never cleared.
//!
//! The array is memory-mapped and bits are set with atomic ORs, as the
//! programs set theirs (DSR replies): neither side can lose the other's.
use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use std::path::Path;

use lb_common::{maps, reply_ports::slot, reply_ports::WORDS, BackendId, BackendV4, BackendV6};

/// The mapped bitmap.
pub struct ReplyPorts {
    words: NonNull<AtomicU64>,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it
// lives until `drop`.
unsafe impl Send for ReplyPorts {}
unsafe impl Sync for ReplyPorts {}

const LEN: usize = WORDS as usize * 8;

impl ReplyPorts {
    /// Maps the `reply_ports` array behind `fd` (created `BPF_F_MMAPABLE`).
    pub fn map(fd: BorrowedFd<'_>) -> std::io::Result<Self> {
        // SAFETY: a fresh shared mapping of the map's values; the kernel
        // checks the length and the map's flags.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let words = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { words })
    }

    /// Maps a loaded object's `reply_ports` (tests that write maps directly).
    pub fn of_map(map: &aya::maps::Map) -> std::io::Result<Self> {
        use aya::maps::IterableMap as _;
        let array: aya::maps::Array<&aya::maps::MapData, u64> = aya::maps::Array::try_from(map).map_err(std::io::Error::other)?;
        Self::map(array.map().fd().as_fd())
    }

    fn word(&self, i: u32) -> &AtomicU64 {
        assert!(i < WORDS);
        // SAFETY: `i` is inside the mapping of WORDS words, which lives as long as `self`.
        unsafe { &*self.words.as_ptr().add(i as usize) }
    }

    /// Marks `port` (network order) as a source port replies may have.
    pub fn mark(&self, port: [u8; 2]) {
        let (w, bit) = slot(port);
        let word = self.word(w);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Whether `port` (network order) is marked.
    pub fn is_marked(&self, port: [u8; 2]) -> bool {
        let (w, bit) = slot(port);
        self.word(w).load(Ordering::Relaxed) & bit != 0
    }

    /// How many ports are marked.
    pub fn count(&self) -> u32 {
        (0..WORDS).map(|i| self.word(i).load(Ordering::Relaxed).count_ones()).sum()
    }
}

/// Marks in `rp` the ports of the backends pinned under `pin_dir` by an
/// earlier agent: `backends_v4` and `backends_v6` as they are before a
/// resize or conversion moves them (an array, or an earlier version's hash,
/// both keyed by backend id), read in batches.
pub fn seed(rp: &ReplyPorts, pin_dir: &Path) -> std::io::Result<()> {
    fn ports<V: bytemuck::Pod>(rp: &ReplyPorts, path: &Path, port: impl Fn(&V) -> Option<[u8; 2]>) -> std::io::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let map = aya::maps::MapData::from_pin(path).map_err(std::io::Error::other)?;
        crate::bpfsys::for_each_batch(map.fd().as_fd(), |_: &BackendId, v: &V| {
            if let Some(p) = port(v) {
                rp.mark(p);
            }
        })
    }
    ports(rp, &pin_dir.join(maps::BACKENDS_V4), |b: &BackendV4| (!b.is_empty()).then_some(b.port))?;
    ports(rp, &pin_dir.join(maps::BACKENDS_V6), |b: &BackendV6| (!b.is_empty()).then_some(b.port))
}

impl Drop for ReplyPorts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.words.as_ptr().cast(), LEN) };
    }
}
