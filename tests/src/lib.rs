//! xdplb's test harness: uniquely named network namespaces that always go
//! away, real servers and clients inside them, the programs loaded through
//! the agent's own code, and packet fixtures run through `BPF_PROG_TEST_RUN`.
//!
//! Everything here needs root (CAP_SYS_ADMIN for namespaces, CAP_BPF and
//! CAP_NET_ADMIN for the programs); [`require_root`] says so plainly.
pub mod cgroup;
pub mod chatter;
pub mod cluster;
pub mod agent;
pub mod apiserver;
pub mod fixture;
pub mod kubeweb;
pub mod lb;
pub mod lbaddr;
pub mod load;
pub mod netns;
pub mod observe;
pub mod ops;
pub mod packet;
pub mod packet6;
pub mod segment;
pub mod pathmtu;
pub mod prometheus;
pub mod servers;
pub mod sctp;
pub mod services;
pub mod tc;
pub mod topology;
pub mod traffic;
pub mod uplink;
pub mod vm;

/// Panics with a clear message unless the process runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces, CAP_BPF, CAP_NET_ADMIN): run `cargo xtask test` as root");
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
