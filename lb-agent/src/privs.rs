//! Once loaded, pinned and attached, `lb-agent run` keeps only the
//! capabilities it still uses: CAP_BPF (every bpf(2) call on the open map
//! fds, with `kernel.unprivileged_bpf_disabled` set) and CAP_NET_ADMIN
//! (attaching tc to pod interfaces that appear later). Effective and
//! permitted sets shrink to those two, inheritable and ambient empty, and
//! `no_new_privs` is set, so neither the agent nor anything it could exec
//! gets the others back. The bounding set shrinks too when the agent holds
//! CAP_SETPCAP (a root shell); under the DaemonSet or the systemd unit it
//! does not, and the bounding set is already the three they grant.
//!
//! Capabilities are per thread in Linux, and the tokio runtime's threads
//! exist already: every thread is signalled to drop its own, and
//! `/proc/self/task/*/status` is read back until all of them show the kept
//! set (a thread started meanwhile by a not-yet-dropped one is caught by the
//! next round).
use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

/// What the agent keeps after the first sync: (capability number, name).
pub const KEPT: &[(u32, &str)] = &[(CAP_NET_ADMIN, "cap_net_admin"), (CAP_BPF, "cap_bpf")];
const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    #[error("reading {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("installing the capability-drop signal handler: {0}")]
    Handler(std::io::Error),
    #[error("a thread could not drop its capabilities (capset/prctl refused; the agent needs CAP_SETPCAP at start)")]
    Refused,
    #[error("threads still hold other capabilities after {0} rounds: {1}")]
    Stuck(usize, String),
}

static MASK: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(0);
static REFUSED: AtomicBool = AtomicBool::new(false);
static BOUNDING: AtomicBool = AtomicBool::new(false);
const CAP_SETPCAP: u32 = 8;

/// The kept set as a bit mask (bit n = capability n).
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (c, _)| m | 1u64 << c)
}

/// Drops every capability outside [`KEPT`] from every thread of the process.
/// Returns whether the bounding set was shrunk too (only with CAP_SETPCAP).
pub fn drop_to_kept() -> Result<bool, PrivsError> {
    let last = read("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse::<u32>()
        .map_err(|e| PrivsError::Read { what: "/proc/sys/kernel/cap_last_cap".into(), source: std::io::Error::other(e) })?;
    let mask = kept_mask();
    MASK.store(mask, Ordering::SeqCst);
    LAST_CAP.store(last.min(63), Ordering::SeqCst);
    let [eff, ..] = status_sets(&read("/proc/thread-self/status")?);
    let bounding = eff.is_some_and(|e| e & (1 << CAP_SETPCAP) != 0);
    BOUNDING.store(bounding, Ordering::SeqCst);
    let sig = libc::SIGRTMIN();
    // SAFETY: a zeroed sigaction with a plain handler; the handler only makes
    // async-signal-safe raw syscalls and touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(PrivsError::Handler(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: getpid/gettid take no arguments.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    const ROUNDS: usize = 200;
    for _ in 0..ROUNDS {
        let behind = threads_not_at(mask, bounding)?;
        if behind.is_empty() {
            return Ok(bounding);
        }
        for tid in &behind {
            if *tid == me {
                apply();
            } else {
                // SAFETY: tgkill to a thread of this very process; ESRCH (it
                // ended meanwhile) is harmless.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, *tid, sig) };
            }
        }
        if REFUSED.load(Ordering::SeqCst) {
            return Err(PrivsError::Refused);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let behind = threads_not_at(mask, bounding)?;
    Err(PrivsError::Stuck(ROUNDS, format!("{behind:?}")))
}

/// Threads whose effective or permitted set (and bounding set, when
/// `bounding`) is not `mask`.
fn threads_not_at(mask: u64, bounding: bool) -> Result<Vec<libc::pid_t>, PrivsError> {
    let dir = std::fs::read_dir("/proc/self/task").map_err(|e| PrivsError::Read { what: "/proc/self/task".into(), source: e })?;
    let mut behind = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        // A thread that ended between the listing and the read is gone.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let [eff, prm, bnd] = status_sets(&status);
        if eff != Some(mask) || prm != Some(mask) || (bounding && bnd != Some(mask)) {
            behind.push(tid);
        }
    }
    Ok(behind)
}

/// CapEff, CapPrm and CapBnd of a `/proc/.../status` text.
pub fn status_sets(status: &str) -> [Option<u64>; 3] {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    [field("CapEff:"), field("CapPrm:"), field("CapBnd:")]
}

fn read(path: &str) -> Result<String, PrivsError> {
    std::fs::read_to_string(path).map_err(|e| PrivsError::Read { what: path.into(), source: e })
}

extern "C" fn on_signal(_: libc::c_int) {
    apply();
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Shrinks the calling thread's sets to [`MASK`]. Raw syscalls only: this
/// runs in a signal handler.
fn apply() {
    let mask = MASK.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst);
    let mut ok = true;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // capset below removes. A thread can be signalled twice (a slow thread
    // still shows its old sets when the next round reads them), so a
    // capability already out of its bounding set is skipped: dropping it
    // again would fail without CAP_SETPCAP.
    for cap in 0..=last {
        if BOUNDING.load(Ordering::SeqCst) && mask & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1;
            if held {
                // SAFETY: as above.
                ok &= unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } == 0;
            }
        }
    }
    // SAFETY: prctl with integer arguments only. Ambient may be unsupported
    // (EINVAL on old kernels): it is then empty anyway.
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
        let on: libc::c_ulong = 1;
        ok &= libc::prctl(libc::PR_SET_NO_NEW_PRIVS, on, 0, 0, 0) == 0;
    }
    let half = |m: u64| CapData { effective: m as u32, permitted: m as u32, inheritable: 0 };
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [half(mask), half(mask >> 32)];
    // SAFETY: capset(2) on the calling thread (pid 0) with a version-3
    // header and the two data structs version 3 requires, both live here.
    ok &= unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } == 0;
    if !ok {
        REFUSED.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_mask_is_net_admin_and_bpf() {
        assert_eq!(kept_mask(), (1 << 12) | (1 << 39));
        assert_eq!(kept_mask(), 0x0000_0080_0000_1000);
    }

    /// A thread signalled again after it has dropped (seen under load: the
    /// next round read its status before the handler ran) must not fail.
    #[test]
    fn dropping_twice_in_one_thread_is_not_refused() {
        // In a forked child: the drop is for the whole process, and the test
        // harness must keep its capabilities. The child has one thread.
        // SAFETY: the child only makes syscalls, reads /proc and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let first = drop_to_kept();
            apply();
            let code = match first {
                Ok(true) if !REFUSED.load(Ordering::SeqCst) => 0,
                Ok(false) => 2, // no CAP_SETPCAP: the case cannot arise
                _ => 1,
            };
            // SAFETY: ends the forked child without running the parent's atexit state.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        let code = libc::WEXITSTATUS(status);
        assert!(code == 0 || code == 2, "a second drop in one thread was refused (exit {code})");
    }

    #[test]
    fn status_sets_reads_the_three_hex_fields() {
        let s = "Name:\tlb-agent\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\nCapEff:\t0000008000001000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(status_sets(s), [Some(0x80_0000_1000), Some(0x80_0000_1000), Some(0x1ff_ffff_ffff)]);
        assert_eq!(status_sets("Name:\tx\n"), [None, None, None]);
    }
}
