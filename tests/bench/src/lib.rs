//! `cargo xtask bench`: xdplb measured against baselines in one run.
//!
//! - [`cost`]: per-packet program cost (BPF_PROG_TEST_RUN through a
//!   packet-restoring wrapper, minus the wrapper's own cost), against bare
//!   XDP floors;
//! - [`live`]: forwarding rate over 2-queue veth pairs ([`topo`]) for UDP and
//!   TCP SYN/ACK mixes ([`xdplb_bench_traffic`]), from our live-frames
//!   generator against a drop-only baseline and XDP_TX/redirect floors, and
//!   from an AF_PACKET sender ([`sender`], the skb path) against
//!   kube-proxy-style iptables NAT rules ([`iptables`]);
//! - [`report`]: the table and the JSON under `target/bench/`;
//! - [`chart`]: an SVG of rate against service count, xdplb vs iptables.
//!
//! Figures are only comparable within one run: the machine is shared.
pub mod agent;
pub mod chart;
pub mod conn;
pub mod cost;
pub mod dataplane;
pub mod extra;
pub mod figure;
pub mod inprog;
pub mod iptables;
pub mod live;
pub mod maglev;
pub mod measure;
pub mod progs;
pub mod report;
pub mod sender;
pub mod stats;
pub mod topo;
pub mod vm;

/// The sections a run measures (`--only prog_cost,live,...`; all by default).
#[derive(Clone, Debug, Default)]
pub struct Sections(Option<Vec<String>>);

/// Every section, in the order a run measures them.
pub const SECTIONS: &[&str] = &["prog_cost", "dsr_cost", "live", "skb", "maglev", "conn", "agent"];

impl Sections {
    /// Parses a comma-separated list; unknown names are an error.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if let Some(bad) = names.iter().find(|n| !SECTIONS.contains(&n.as_str())) {
            anyhow::bail!("unknown bench section {bad}; sections: {}", SECTIONS.join(", "));
        }
        Ok(Self(Some(names)))
    }

    pub fn wants(&self, section: &str) -> bool {
        self.0.as_ref().is_none_or(|names| names.iter().any(|n| n == section))
    }
}

/// Pins the calling thread to `cpu` (None: every CPU).
pub fn pin(cpu: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        // Not available_parallelism(): it shrinks with the current affinity.
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        for c in 0..n {
            if cpu.is_none_or(|x| x == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on a scoped thread inside `ns` (interface names and ifindexes
/// resolve in the calling thread's namespace), borrowing freely.
pub fn in_ns<T: Send>(ns: &xdplb_tests::netns::Netns, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(format!("/run/netns/{}", ns.name())).expect("opening the namespace file");
    std::thread::scope(|s| {
        s.spawn(move || {
            xdplb_tests::netns::enter(&file);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}
