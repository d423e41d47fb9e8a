//! Socket-level balancing of the node's own connections (`--socket-lb`):
//! the cgroup the socket programs attach to, and the network namespace
//! whose sockets they balance (the agent's own: the node's, as the
//! DaemonSet runs with hostNetwork). Pods' sockets stay with tc.
use std::path::{Path, PathBuf};

use aya::Ebpf;

use crate::{dataplane::Dataplane, links, pins::links_dir};

/// Why socket balancing could not be turned on (or off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("socket: {0}")]
    Socket(std::io::Error),
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE needs kernel >= 5.14): {0}")]
    NetnsCookie(std::io::Error),
    #[error("reading /proc/self/mounts")]
    Mounts(#[source] std::io::Error),
    #[error("no cgroup2 file system is mounted (mount cgroup2 to balance them)")]
    NoCgroup2,
    #[error("{} is not a cgroup2 directory", .0.display())]
    NotCgroup2(PathBuf),
    #[error(transparent)]
    Attach(#[from] links::Error),
    #[error(transparent)]
    Maps(#[from] crate::dataplane::Error),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// What `--socket-lb` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLb {
    Off,
    /// The cgroup2 mount of this host.
    Auto,
    Cgroup(PathBuf),
}

impl std::str::FromStr for SocketLb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => Self::Off,
            "auto" => Self::Auto,
            path if path.starts_with('/') => Self::Cgroup(PathBuf::from(path)),
            other => return Err(format!("{other}: expected auto, off or an absolute cgroup2 directory")),
        })
    }
}

/// The first cgroup2 mount point in `mounts` (the text of /proc/self/mounts).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE,
/// kernel >= 5.14), the value `bpf_get_netns_cookie` gives the programs.
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain syscalls; results checked; `cookie` outlives getsockopt.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::Socket(std::io::Error::last_os_error()));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(Error::NetnsCookie(err));
        }
        Ok(cookie)
    }
}

/// Turns socket balancing on (attach to the cgroup, mark this namespace as
/// the node's) or off (unmark it; remove pinned socket links, which detaches
/// them). Returns the cgroup attached to. With `auto`, a host that cannot
/// do it (no cgroup2 mount, a kernel without SO_NETNS_COOKIE or cgroup
/// sock_addr links) gets a warning saying why and runs without it; an
/// explicit cgroup that cannot be used is an error.
pub fn apply(ebpf: &mut Ebpf, dp: &mut Dataplane, want: &SocketLb, pin_dir: &Path) -> Result<Option<PathBuf>> {
    let enabled = match want {
        SocketLb::Off => None,
        SocketLb::Cgroup(p) => Some(enable(ebpf, dp, p, pin_dir).map(|()| p.clone())),
        SocketLb::Auto => Some(auto_cgroup().and_then(|p| enable(ebpf, dp, &p, pin_dir).map(|()| p))),
    };
    match enabled {
        Some(Ok(cgroup)) => return Ok(Some(cgroup)),
        Some(Err(e)) if *want != SocketLb::Auto => return Err(e),
        Some(Err(e)) => tracing::warn!(error = crate::chain::chain(&e), "--socket-lb auto: the node's own connections to services cannot be balanced on this host; continuing without"),
        None => {}
    }
    dp.set_sock_netns(0)?;
    links::remove_cgroup_links(&links_dir(pin_dir));
    Ok(None)
}

/// The host's cgroup2 mount, for `auto`.
pub fn auto_cgroup() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(Error::Mounts)?;
    cgroup2_mount(&mounts).ok_or(Error::NoCgroup2)
}

/// Whether `dir` is a directory of a cgroup2 file system.
pub fn is_cgroup2(dir: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

fn enable(ebpf: &mut Ebpf, dp: &mut Dataplane, cgroup: &Path, pin_dir: &Path) -> Result<()> {
    // The cookie first: a kernel without it gets no links attached.
    let cookie = netns_cookie()?;
    links::attach_cgroup(ebpf, cgroup, Some(&links_dir(pin_dir)))?;
    Ok(dp.set_sock_netns(cookie)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn parses_the_flag() {
        assert_eq!("off".parse::<SocketLb>(), Ok(SocketLb::Off));
        assert_eq!("auto".parse::<SocketLb>(), Ok(SocketLb::Auto));
        assert_eq!("/sys/fs/cgroup/x".parse::<SocketLb>(), Ok(SocketLb::Cgroup("/sys/fs/cgroup/x".into())));
        assert!("cgroup".parse::<SocketLb>().is_err());
    }

    #[test]
    fn tells_a_cgroup2_directory() {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        if let Some(root) = cgroup2_mount(&mounts) {
            assert!(is_cgroup2(&root), "{}", root.display());
        }
        assert!(!is_cgroup2(Path::new("/proc")));
        assert!(!is_cgroup2(Path::new("/nonexistent")));
    }

    #[test]
    fn reads_a_netns_cookie() {
        assert_ne!(netns_cookie().unwrap(), 0);
    }
}
