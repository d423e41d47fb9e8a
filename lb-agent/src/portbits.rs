//! The agent's side of the port bitmaps (`lb_common::reply_ports`:
//! `reply_ports`, `service_ports`): one bit per port in an array the agent
//! memory-maps. Bits are set and cleared with atomic operations, as the
//! programs set theirs, so neither side can lose the other's.
use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_common::reply_ports::{slot, WORDS};

/// A mapped bitmap.
pub struct PortBits {
    words: NonNull<AtomicU64>,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it
// lives until `drop`.
unsafe impl Send for PortBits {}
unsafe impl Sync for PortBits {}

const LEN: usize = WORDS as usize * 8;

impl PortBits {
    /// Maps the bitmap behind `fd` (an array created `BPF_F_MMAPABLE`).
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

    /// Maps a loaded object's bitmap `map` (tests that write maps directly).
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

    /// Sets the bit of `port` (network order).
    pub fn mark(&self, port: [u8; 2]) {
        let (w, bit) = slot(port);
        let word = self.word(w);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Clears the bit of `port` (network order).
    pub fn unmark(&self, port: [u8; 2]) {
        let (w, bit) = slot(port);
        let word = self.word(w);
        if word.load(Ordering::Relaxed) & bit != 0 {
            word.fetch_and(!bit, Ordering::SeqCst);
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

impl Drop for PortBits {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.words.as_ptr().cast(), LEN) };
    }
}
