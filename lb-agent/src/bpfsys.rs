//! The bpf(2) calls aya 0.14 does not offer: raw element access on a map of
//! any layout (for copying one map into another of the same layout), and
//! `BPF_MAP_LOOKUP_BATCH`, which reads a whole map in a few syscalls instead
//! of two per entry, and `BPF_MAP_UPDATE_BATCH`, which writes many entries
//! per syscall. Everything else goes through aya.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_MAP_LOOKUP_BATCH: i64 = 24;
const BPF_MAP_UPDATE_BATCH: i64 = 26;

/// `update` flags: only create (`BPF_NOEXIST`), only replace (`BPF_EXIST`).
pub const BPF_NOEXIST: u64 = 1;
pub const BPF_EXIST: u64 = 2;

/// `bpf_attr` of the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf_attr` of the BPF_MAP_*_BATCH commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One bpf(2) call with `attr` (a `bpf_attr` layout for `cmd`).
fn bpf<A>(cmd: i64, attr: &mut A) -> io::Result<()> {
    // SAFETY: every caller passes the bpf_attr layout of `cmd`, whose
    // pointers are to buffers of the sizes the map's key and value need.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, core::mem::size_of::<A>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn elem(fd: BorrowedFd<'_>, key: u64, value: u64, flags: u64) -> ElemAttr {
    ElemAttr { map_fd: fd.as_raw_fd() as u32, _pad: 0, key, value, flags }
}

/// Writes the key after `key` (the first key with `None`) into `next`;
/// `false` when there is none. `next` must be the map's key size.
pub fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem(fd, key.map_or(0, |k| k.as_ptr() as u64), next.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads `key`'s value into `value` (the map's value size; for per-CPU maps,
/// one 8-byte-aligned slot per possible CPU); `false` when there is no such
/// key (deleted or evicted meanwhile).
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem(fd, key.as_ptr() as u64, value.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `key` → `value` with `flags` (0, [`BPF_NOEXIST`], [`BPF_EXIST`]).
pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = elem(fd, key.as_ptr() as u64, value.as_ptr() as u64, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Entries read per batch syscall (grown when a hash bucket holds more).
const BATCH: usize = 4096;

/// Writes `keys[i]` → `values[i]` for every `i`, in order, with
/// `BPF_MAP_UPDATE_BATCH` (hash and array maps): one syscall per [`BATCH`]
/// entries instead of one per entry, the same per-entry semantics (flags 0).
/// On an error, the index of the entry that failed (those before it are
/// written) and the kernel's error.
pub fn update_batch<K, V>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<(), (usize, io::Error)>
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    for (ks, vs) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: ks.as_ptr() as u64,
            values: vs.as_ptr() as u64,
            count: ks.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // On an error the kernel says in `count` how many it wrote.
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| (done + attr.count as usize, e))?;
        done += ks.len();
    }
    Ok(())
}

/// Calls `f` with every (key, value) of a (not per-CPU) hash or array map
/// whose keys are `K` and values `V`, read with `BPF_MAP_LOOKUP_BATCH`: one
/// syscall per [`BATCH`] entries. An entry changed while this runs may be
/// seen before or after the change; one deleted may be missed.
pub fn for_each_batch<K, V>(fd: BorrowedFd<'_>, mut f: impl FnMut(&K, &V)) -> io::Result<()>
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    let mut chunk = BATCH;
    let (mut keys, mut values) = (vec![K::zeroed(); chunk], vec![V::zeroed(); chunk]);
    // The batch cursor: a bucket index (u32) for hashes, a key for arrays.
    let mut cursor = [0u64; 2];
    let mut first = true;
    loop {
        let mut next = [0u64; 2];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let last = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            // The last batch (possibly partial, possibly empty).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A hash bucket larger than the buffer: retry with a larger one.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                chunk *= 2;
                keys.resize(chunk, K::zeroed());
                values.resize(chunk, V::zeroed());
                continue;
            }
            Err(e) => return Err(e),
        };
        for (k, v) in keys.iter().zip(&values).take(attr.count as usize) {
            f(k, v);
        }
        if last {
            return Ok(());
        }
        cursor = next;
        first = false;
    }
}

/// The entries of a (not per-CPU) hash map whose keys are `K` and values
/// `V`, counted with [`for_each_batch`]: one syscall per [`BATCH`] entries,
/// not one per key as a key walk takes.
pub fn count<K, V>(fd: BorrowedFd<'_>) -> io::Result<usize>
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    let mut n = 0;
    for_each_batch::<K, V>(fd, |_, _| n += 1)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: i64 = 0;
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const LRU_HASH: u32 = 9;

    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }

    /// A real, unpinned map (closed with the fd); the tests run as root.
    fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> OwnedFd {
        let mut attr = CreateAttr { map_type, key_size, value_size, max_entries };
        // SAFETY: the leading fields of bpf_attr for BPF_MAP_CREATE; the rest
        // of the struct the kernel reads as zero.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &mut attr as *mut CreateAttr, core::mem::size_of::<CreateAttr>()) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn fill(fd: BorrowedFd<'_>, n: u32) {
        for k in 0..n {
            update(fd, &k.to_ne_bytes(), &(u64::from(k) * 10 + 7).to_ne_bytes(), 0).unwrap();
        }
    }

    #[test]
    fn batch_reads_every_entry_of_a_hash_across_batches() {
        // More entries than one batch, so the cursor is followed.
        let n = BATCH as u32 * 2 + 123;
        let map = create(HASH, 4, 8, n);
        fill(map.as_fd(), n);
        let mut seen = std::collections::BTreeMap::new();
        for_each_batch::<u32, u64>(map.as_fd(), |k, v| {
            assert!(seen.insert(*k, *v).is_none(), "key {k} read twice");
        })
        .unwrap();
        assert_eq!(seen.len(), n as usize);
        assert!(seen.iter().all(|(k, v)| *v == u64::from(*k) * 10 + 7));
    }

    #[test]
    fn batch_reads_an_lru_hash_and_an_empty_one() {
        let map = create(LRU_HASH, 4, 8, 1000);
        let mut count = 0;
        for_each_batch::<u32, u64>(map.as_fd(), |_, _| count += 1).unwrap();
        assert_eq!(count, 0);
        fill(map.as_fd(), 300);
        let mut sum = 0u64;
        for_each_batch::<u32, u64>(map.as_fd(), |_, v| {
            count += 1;
            sum += v;
        })
        .unwrap();
        assert_eq!(count, 300);
        assert_eq!(sum, (0..300u64).map(|k| k * 10 + 7).sum::<u64>());
    }

    #[test]
    fn count_counts_every_entry_across_batches() {
        let map = create(LRU_HASH, 4, 8, BATCH as u32 * 3);
        assert_eq!(count::<u32, u64>(map.as_fd()).unwrap(), 0);
        fill(map.as_fd(), BATCH as u32 + 17);
        assert_eq!(count::<u32, u64>(map.as_fd()).unwrap(), BATCH + 17);
    }

    #[test]
    fn batch_reads_every_slot_of_an_array() {
        let n = BATCH as u32 + 5;
        let map = create(ARRAY, 4, 8, n);
        update(map.as_fd(), &(n - 1).to_ne_bytes(), &99u64.to_ne_bytes(), 0).unwrap();
        let mut slots = Vec::new();
        for_each_batch::<u32, u64>(map.as_fd(), |k, v| slots.push((*k, *v))).unwrap();
        assert_eq!(slots.len(), n as usize);
        assert_eq!(slots.last(), Some(&(n - 1, 99)));
        assert!(slots[..n as usize - 1].iter().enumerate().all(|(i, s)| *s == (i as u32, 0)));
    }

    #[test]
    fn batch_writes_reach_every_entry_and_name_the_one_that_failed() {
        let n = BATCH as u32 + 10;
        let keys: Vec<u32> = (0..n).collect();
        let values: Vec<u64> = keys.iter().map(|k| u64::from(*k) * 3).collect();
        for kind in [HASH, ARRAY] {
            let map = create(kind, 4, 8, n);
            update_batch(map.as_fd(), &keys, &values).unwrap();
            let mut seen = std::collections::BTreeMap::new();
            for_each_batch::<u32, u64>(map.as_fd(), |k, v| {
                seen.insert(*k, *v);
            })
            .unwrap();
            assert_eq!(seen.len(), n as usize, "map type {kind}");
            assert!(seen.iter().all(|(k, v)| *v == u64::from(*k) * 3), "map type {kind}");
        }
        // A full hash: the entries before the one that did not fit are written.
        let map = create(HASH, 4, 8, 5);
        let (at, e) = update_batch(map.as_fd(), &keys[..8], &values[..8]).unwrap_err();
        assert_eq!((at, e.raw_os_error()), (5, Some(libc::E2BIG)));
        assert_eq!(count::<u32, u64>(map.as_fd()).unwrap(), 5);
        // An index past an array's end.
        let map = create(ARRAY, 4, 8, 3);
        let (at, e) = update_batch(map.as_fd(), &[0u32, 1, 7], &[1u64, 2, 3]).unwrap_err();
        assert_eq!((at, e.raw_os_error()), (2, Some(libc::E2BIG)));
    }

    #[test]
    fn element_calls_walk_read_and_write_with_their_flags() {
        let map = create(HASH, 4, 8, 16);
        fill(map.as_fd(), 3);
        let (mut key, mut keys) = ([0u8; 4], Vec::new());
        let mut at = None;
        while next_key(map.as_fd(), at.as_ref().map(|k: &[u8; 4]| &k[..]), &mut key).unwrap() {
            keys.push(u32::from_ne_bytes(key));
            at = Some(key);
        }
        keys.sort();
        assert_eq!(keys, [0, 1, 2]);
        let mut value = [0u8; 8];
        assert!(lookup(map.as_fd(), &2u32.to_ne_bytes(), &mut value).unwrap());
        assert_eq!(u64::from_ne_bytes(value), 27);
        assert!(!lookup(map.as_fd(), &9u32.to_ne_bytes(), &mut value).unwrap());
        let e = update(map.as_fd(), &2u32.to_ne_bytes(), &1u64.to_ne_bytes(), BPF_NOEXIST).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let e = update(map.as_fd(), &9u32.to_ne_bytes(), &1u64.to_ne_bytes(), BPF_EXIST).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        update(map.as_fd(), &2u32.to_ne_bytes(), &5u64.to_ne_bytes(), BPF_EXIST).unwrap();
        assert!(lookup(map.as_fd(), &2u32.to_ne_bytes(), &mut value).unwrap());
        assert_eq!(u64::from_ne_bytes(value), 5);
    }
}
