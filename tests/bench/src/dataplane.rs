//! The load balancer under benchmark: loaded through the agent's loader with
//! map sizes fitted to the service count, pinned under
//! `/sys/fs/bpf/xlbt-<pid>-bench-<n>` (removed on drop; the harness also
//! removes directories of dead processes), and provisioned through the
//! agent's own diff/apply.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    programs::{Program, SchedClassifier, Xdp},
    Ebpf,
};
use lb_agent::{dataplane::Dataplane, loader};
use lb_common::{algorithm, IPPROTO_TCP};

use xdplb_tests::services::{contents, Svc};

/// Service port every benchmark service listens on.
pub const SVC_PORT: u16 = 80;
/// Port of every backend.
pub const BACKEND_PORT: u16 = 8080;

/// VIP of service `id` (1-based): 10.96.0.0 + id.
pub fn vip(id: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + id)
}

/// Address of backend `id` (1-based): 10.128.0.0 + id, so routing
/// 10.128.0.0/12 reaches every backend and nothing else.
pub fn backend(id: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + id)
}

pub struct BenchLb {
    pub ebpf: Ebpf,
    pub maps: Dataplane,
    pin_dir: PathBuf,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl BenchLb {
    /// Loads xdp_lb/tc programs with `services` services of `per_service`
    /// backends each (service ids 1..=services, VIP [`vip`], backends
    /// [`backend`]), all `proto`, random selection; conntrack of `conntrack` entries.
    pub fn new(services: u32, per_service: u32, proto: u8, conntrack: u32) -> Result<Self> {
        Self::with_backends(services, per_service, proto, conntrack, false)
    }

    /// As [`BenchLb::new`]; `remote`: every backend is on another node
    /// (`backend_flags::REMOTE`), so external flows are SNATed once
    /// `nat_config` is set.
    pub fn with_backends(services: u32, per_service: u32, proto: u8, conntrack: u32, remote: bool) -> Result<Self> {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xlbt-{}-bench-{n}", std::process::id()));
        let total = services * per_service;
        let sizes = loader::MapSizes {
            services: services + 16,
            // Room for the IPv6 twin of a service (cost.rs).
            backends: total + per_service + 16,
            slots: total + per_service + 16,
            conntrack,
            ..loader::MapSizes::default()
        };
        // `XDPLB_BENCH_OBJECT`: another build's lb-ebpf object (A/B runs
        // with one bench binary; see docs/benchmarks.md).
        let ebpf = match std::env::var_os("XDPLB_BENCH_OBJECT") {
            Some(path) => {
                let object = std::fs::read(&path).with_context(|| format!("reading XDPLB_BENCH_OBJECT={}", path.to_string_lossy()))?;
                loader::load_object(&object, &pin_dir, sizes)
            }
            None => loader::load(&pin_dir, sizes),
        };
        let ebpf = match ebpf {
            Ok(e) => e,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&pin_dir);
                return Err(anyhow::Error::new(e).context("loading xdplb for the bench"));
            }
        };
        let maps = Dataplane::open(&pin_dir)?;
        let mut lb = Self { ebpf, maps, pin_dir };
        let svcs: Vec<Svc> = (1..=services)
            .map(|id| {
                let mut s = Svc::new(id, proto, algorithm::RANDOM).frontend(vip(id), SVC_PORT);
                for b in 0..per_service {
                    let bid = (id - 1) * per_service + b + 1;
                    s = if remote { s.remote_backend(bid, backend(bid), BACKEND_PORT) } else { s.backend(bid, backend(bid), BACKEND_PORT) };
                }
                s
            })
            .collect();
        let want = contents(&svcs);
        let d = lb_agent::diff::diff(&lb.maps.contents()?, &want);
        lb.maps.apply(&d).context("provisioning services")?;
        Ok(lb)
    }

    /// TCP services, the common case of the per-packet figures.
    pub fn tcp(services: u32, per_service: u32, conntrack: u32) -> Result<Self> {
        Self::new(services, per_service, IPPROTO_TCP, conntrack)
    }

    pub fn xdp(&self) -> &Xdp {
        match self.ebpf.program(lb_common::maps::programs::XDP_LB) {
            Some(Program::Xdp(p)) => p,
            _ => panic!("xdp_lb missing"),
        }
    }

    pub fn xdp_mut(&mut self) -> &mut Xdp {
        match self.ebpf.program_mut(lb_common::maps::programs::XDP_LB) {
            Some(Program::Xdp(p)) => p,
            _ => panic!("xdp_lb missing"),
        }
    }

    pub fn tc_egress(&self) -> &SchedClassifier {
        match self.ebpf.program(lb_common::maps::programs::TC_EGRESS) {
            Some(Program::SchedClassifier(p)) => p,
            _ => panic!("tc_egress missing"),
        }
    }

    /// Lets XDP forward to `ifindex` itself (FIB lookup + redirect), as
    /// `lb-agent run --redirect-iface` does. Run inside the node's namespace:
    /// the kernel resolves devmap ifindexes in the writer's.
    pub fn enable_redirect(&mut self, ifindex: u32) -> Result<()> {
        self.maps.set_redirect_ifaces(&[ifindex])?;
        let cfg = lb_common::Config { flags: lb_common::config_flags::XDP_REDIRECT, ..Default::default() };
        Ok(self.maps.set_config(&cfg)?)
    }

    /// Sum over CPUs of every `lb_common::counter`.
    pub fn counters(&self) -> Result<Vec<u64>> {
        Ok(self.maps.counters()?)
    }
}

impl Drop for BenchLb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
