//! The test-only programs of lb-ebpf's `bench` binary, loaded from the
//! agent's embedded `BENCH_BYTECODE`, and their maps. The map value layouts
//! mirror `lb-ebpf/src/bin/bench.rs`.
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{xdp::XdpLinkId, Program, ProgramFd, SchedClassifier, Xdp, XdpMode},
    Ebpf,
};
use xdplb_bench_traffic::TrafficConfig;

/// Length of the IPv4 benchmark frames (and of the generator's).
pub const FRAME_LEN: usize = 64;
/// Longest frame a wrapper's template holds (IPv6 TCP frames are 74 bytes).
pub const TEMPLATE_MAX: usize = 128;

/// Mirror of `Template` in bench.rs: the frame the wrappers restore.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    pub frame: [u8; TEMPLATE_MAX],
    /// Bytes of `frame` in use.
    pub len: u32,
    /// Non-zero: a distinct source address and port every iteration.
    pub vary: u32,
}
const _: () = assert!(std::mem::size_of::<Template>() == TEMPLATE_MAX + 8);
// SAFETY: repr(C), no padding (128 + 4 + 4), every bit pattern valid.
unsafe impl aya::Pod for Template {}

/// The loaded bench object with its maps taken out (so programs and maps can
/// be borrowed independently).
pub struct BenchProgs {
    pub ebpf: Ebpf,
    template: Array<MapData, Template>,
    xdp_jump: ProgramArray<MapData>,
    tc_jump: ProgramArray<MapData>,
    drops: PerCpuArray<MapData, u64>,
    gen_cfg: Array<MapData, TrafficConfig>,
    redirect_to: Array<MapData, u32>,
    links: Vec<(&'static str, XdpLinkId)>,
}

const XDP: &[&str] = &["bench_pass", "bench_tx", "bench_drop", "bench_redirect", "bench_wrap_xdp", "bench_gen"];
const TC: &[&str] = &["bench_tc_ok", "bench_wrap_tc"];

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let m = ebpf.take_map(name).with_context(|| format!("map {name} missing from bench.o"))?;
    T::try_from(m).with_context(|| format!("map {name}: unexpected type"))
}

impl BenchProgs {
    /// Loads and verifies every bench program.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(lb_agent::loader::BENCH_BYTECODE).context("loading bench.o")?;
        for name in XDP {
            let p: &mut Xdp = ebpf.program_mut(name).with_context(|| format!("no {name}"))?.try_into()?;
            p.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        for name in TC {
            let p: &mut SchedClassifier = ebpf.program_mut(name).with_context(|| format!("no {name}"))?.try_into()?;
            p.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(Self {
            template: take(&mut ebpf, "bench_template")?,
            xdp_jump: take(&mut ebpf, "bench_xdp_jump")?,
            tc_jump: take(&mut ebpf, "bench_tc_jump")?,
            drops: take(&mut ebpf, "bench_drops")?,
            gen_cfg: take(&mut ebpf, "bench_gen_cfg")?,
            redirect_to: take(&mut ebpf, "bench_redirect_to")?,
            links: Vec::new(),
            ebpf,
        })
    }

    pub fn xdp(&self, name: &str) -> &Xdp {
        match self.ebpf.program(name) {
            Some(Program::Xdp(p)) => p,
            _ => panic!("bench.o has no XDP program {name}"),
        }
    }

    pub fn xdp_mut(&mut self, name: &str) -> &mut Xdp {
        match self.ebpf.program_mut(name) {
            Some(Program::Xdp(p)) => p,
            _ => panic!("bench.o has no XDP program {name}"),
        }
    }

    /// Attaches XDP program `name` to `iface` (native mode) in the calling
    /// thread's namespace, until [`BenchProgs::detach_all`].
    pub fn attach(&mut self, name: &'static str, iface: &str) -> Result<()> {
        let id = self.xdp_mut(name).attach(iface, XdpMode::Driver)?;
        self.links.push((name, id));
        Ok(())
    }

    pub fn detach_all(&mut self) {
        for (name, id) in std::mem::take(&mut self.links) {
            let _ = self.xdp_mut(name).detach(id);
        }
    }

    pub fn tc(&self, name: &str) -> &SchedClassifier {
        match self.ebpf.program(name) {
            Some(Program::SchedClassifier(p)) => p,
            _ => panic!("bench.o has no tc program {name}"),
        }
    }

    pub fn set_template(&mut self, frame: &[u8], vary: bool) -> Result<()> {
        if frame.is_empty() || frame.len() > TEMPLATE_MAX {
            bail!("bench frames are 1 to {TEMPLATE_MAX} bytes, got {}", frame.len());
        }
        let mut t = Template { frame: [0; TEMPLATE_MAX], len: frame.len() as u32, vary: vary as u32 };
        t.frame[..frame.len()].copy_from_slice(frame);
        self.template.set(0, t, 0)?;
        Ok(())
    }

    /// Makes `bench_wrap_xdp` tail-call `prog`.
    pub fn jump_xdp(&mut self, prog: &ProgramFd) -> Result<()> {
        self.xdp_jump.set(0, prog, 0).context("setting the XDP tail call (program types must match)")?;
        Ok(())
    }

    /// Makes `bench_wrap_tc` tail-call `prog`.
    pub fn jump_tc(&mut self, prog: &ProgramFd) -> Result<()> {
        self.tc_jump.set(0, prog, 0).context("setting the tc tail call")?;
        Ok(())
    }

    /// Frames `bench_drop` has dropped, summed over CPUs.
    pub fn drops(&self) -> Result<u64> {
        Ok(self.drops.get(&0, 0)?.iter().sum())
    }

    pub fn reset_drops(&mut self) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        self.drops.set(0, PerCpuValues::try_from(vec![0u64; n])?, 0)?;
        Ok(())
    }

    /// What `bench_gen` sends.
    pub fn set_traffic(&mut self, cfg: TrafficConfig) -> Result<()> {
        self.gen_cfg.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn set_redirect(&mut self, ifindex: u32) -> Result<()> {
        self.redirect_to.set(0, ifindex, 0)?;
        Ok(())
    }
}
