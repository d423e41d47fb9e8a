//! Giving back resident memory the agent no longer reads.
//!
//! The eBPF object is compiled into the binary (4 MiB with its BTF and
//! debug info); loading reads all of it, so all of it stays resident
//! (file-backed pages, counted in RSS) though nothing reads it again.
//! [`release`] drops such pages from this process: a later read (another
//! load) faults them back in from the page cache, so nothing is lost.

/// Drops the whole pages inside `bytes` (read-only data of the binary)
/// from this process's resident set; returns how many bytes that covers.
pub fn release(bytes: &'static [u8]) -> usize {
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end <= start {
        return 0;
    }
    // SAFETY: the range lies inside a static of the binary's read-only,
    // file-backed mapping: MADV_DONTNEED only unmaps its pages, which are
    // read back from the file on the next access, unchanged.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if rc == 0 {
        end - start
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    static DATA: [u8; 3 * 4096 + 100] = [7; 3 * 4096 + 100];

    #[test]
    fn released_pages_read_back_the_same() {
        let bytes: &'static [u8] = &DATA;
        let sum = |b: &[u8]| b.iter().map(|&x| u64::from(x)).sum::<u64>();
        let before = sum(std::hint::black_box(bytes));
        let released = super::release(bytes);
        assert!(released >= 2 * 4096 && released <= bytes.len(), "{released}");
        assert_eq!(sum(std::hint::black_box(bytes)), before);
    }
}
