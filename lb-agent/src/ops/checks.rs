//! Start-up checks: what the kernel and the process must offer before the
//! agent loads anything, each failure with the fix. `lb-agent run` stops at
//! the first failure; `lb-agent doctor` runs them all and prints a report.
//!
//! The checks read only what the kernel exposes (uname, /proc, statfs) and,
//! for native XDP, attach a two-instruction program for a moment through a
//! bpf_link that goes away with its fd: nothing is left behind.
use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::util::KernelVersion;
use serde::Serialize;

/// Oldest kernel we support: BTF-defined maps, bpf_link for XDP (5.9),
/// `bpf_ktime_get_boot_ns`, and the verifier of the 5.15 LTS.
pub const MIN_KERNEL: (u8, u8) = (5, 15);

/// The outcome of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found (on success) or what is wrong and how to fix it.
    pub detail: String,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What to check: the same inputs `run` has.
pub struct Inputs<'a> {
    pub pin_dir: &'a Path,
    pub ifaces: &'a [String],
    /// Probe native (driver) XDP on each interface; false when the user
    /// asked for generic mode.
    pub native_xdp: bool,
    /// Map sizes `run` will use: a pinned map of another size is resized,
    /// one of another layout is refused.
    pub sizes: crate::pins::MapSizes,
    /// `--tc-attach`: the tc path `run` is told to use, if forced.
    pub tc_forced: Option<crate::links::TcPath>,
    /// `--socket-lb`.
    pub socket_lb: &'a crate::socklb::SocketLb,
}

/// Every check, in the order a fix is most useful.
pub fn all(inp: &Inputs) -> Vec<Check> {
    let mut out = vec![
        kernel_version(KernelVersion::current().map_err(|e| e.to_string())),
        btf(Path::new("/sys/kernel/btf/vmlinux")),
    ];
    let status = read_status();
    let caps = privileges(&status);
    let privileged = caps.ok;
    out.push(caps);
    out.push(bpffs(inp.pin_dir, has_cap(&status, CAP_SYS_ADMIN)));
    if privileged {
        out.push(pinned_maps(inp.pin_dir, inp.sizes));
        out.push(tc_attach(inp.tc_forced));
    }
    out.push(socket_lb(inp.socket_lb));
    for iface in inp.ifaces {
        let exists = interface(iface);
        let ok = exists.ok;
        out.push(exists);
        // Probing needs the interface and CAP_NET_ADMIN/CAP_BPF; without
        // them the earlier lines already say what is wrong.
        if ok && inp.native_xdp && privileged {
            out.push(native_xdp(iface));
        }
    }
    out
}

/// The checks as ✓/✗ lines.
pub fn report(checks: &[Check]) -> String {
    let mut t = crate::table::Table::new(&[crate::table::left("", 1), crate::table::left("", 22), crate::table::left("", 0)]);
    for c in checks {
        t.row([if c.ok { "✓" } else { "✗" }, c.name.as_str(), c.detail.as_str()]);
    }
    let mut s = t.to_string();
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        s += "all checks passed\n";
    } else {
        s += &format!("{failed} check(s) failed\n");
    }
    s
}

/// `run`'s gate: the first failed check as an error.
pub fn require(inp: &Inputs) -> Result<(), crate::error::RunError> {
    for c in all(inp) {
        if !c.ok {
            return Err(crate::error::RunError::Check { check: c.name, detail: c.detail });
        }
        tracing::debug!(check = %c.name, detail = %c.detail, "start-up check passed");
    }
    Ok(())
}

/// The running kernel (aya reads it as the loader does, Ubuntu's and
/// Debian's version strings included) against [`MIN_KERNEL`].
pub fn kernel_version(current: Result<KernelVersion, String>) -> Check {
    const NAME: &str = "kernel version";
    let min = KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0);
    match current {
        Ok(v) if v >= min => Check::pass(NAME, format!("{v} (≥ {}.{})", MIN_KERNEL.0, MIN_KERNEL.1)),
        Ok(v) => Check::fail(NAME, format!("{v} is older than {}.{}: upgrade the node's kernel (xdplb needs BTF maps, XDP bpf_links and the 5.15 verifier)", MIN_KERNEL.0, MIN_KERNEL.1)),
        Err(e) => Check::fail(NAME, format!("cannot read the kernel version: {e}")),
    }
}

pub fn btf(vmlinux: &Path) -> Check {
    if vmlinux.exists() {
        Check::pass("kernel BTF", format!("{} present", vmlinux.display()))
    } else {
        Check::fail("kernel BTF", format!("{} is missing: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions' kernels since 2021 are)", vmlinux.display()))
    }
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

fn read_status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

/// The CapEff mask of a /proc/<pid>/status text.
pub fn cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn has_cap(status: &str, cap: u32) -> bool {
    cap_eff(status).is_some_and(|m| m & (1 << cap) != 0)
}

/// CAP_BPF (maps and programs), CAP_NET_ADMIN (attaching to interfaces),
/// CAP_SYS_ADMIN (mounting bpffs, pinning, reading other programs' ids).
pub fn privileges(status: &str) -> Check {
    const NAME: &str = "privileges";
    let Some(mask) = cap_eff(status) else {
        return Check::fail(NAME, "cannot read CapEff from /proc/self/status");
    };
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| mask & (1 << c) == 0)
    .map(|(_, n)| n)
    .collect();
    if missing.is_empty() {
        Check::pass(NAME, "CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN effective")
    } else {
        Check::fail(NAME, format!("missing {}: run as root, or grant them (Kubernetes: securityContext.capabilities.add [BPF, NET_ADMIN, SYS_ADMIN]; systemd: AmbientCapabilities=)", missing.join(", ")))
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// The pin directory's parent must be a bpffs; `run` mounts one at
/// /sys/fs/bpf itself (`loader::ensure_bpffs`) when it may.
pub fn bpffs(pin_dir: &Path, may_mount: bool) -> Check {
    const NAME: &str = "bpffs";
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Check::pass(NAME, format!("{} is a bpffs", parent.display()));
    }
    if parent == Path::new("/sys/fs/bpf") {
        return if may_mount {
            Check::pass(
                NAME,
                "/sys/fs/bpf is not mounted; `lb-agent run` will mount it (it has CAP_SYS_ADMIN)",
            )
        } else {
            Check::fail(NAME, "/sys/fs/bpf is not mounted and this process may not mount it: run `mount -t bpf bpf /sys/fs/bpf` as root (or mount it into the container)")
        };
    }
    Check::fail(NAME, format!("{} is not a bpffs: choose a --pin-path under /sys/fs/bpf, or mount one there (`mount -t bpf bpf {}`)", parent.display(), parent.display()))
}

/// Maps an earlier agent pinned must have this build's layout (the loader
/// refuses them otherwise; this says so before anything is loaded).
pub fn pinned_maps(pin_dir: &Path, sizes: crate::pins::MapSizes) -> Check {
    const NAME: &str = "pinned maps";
    let (mut found, mut resize, mut convert) = (0, Vec::new(), Vec::new());
    for name in lb_common::maps::ALL {
        let want = crate::migrate::expected(name, sizes);
        match crate::migrate::check_pinned(&pin_dir.join(name), &want) {
            Ok(crate::migrate::Pinned::Absent) => {}
            Ok(crate::migrate::Pinned::Matches) => found += 1,
            Ok(crate::migrate::Pinned::Resize { from }) => {
                found += 1;
                resize.push(format!("{name} {from} → {}", want.max_entries));
            }
            Ok(crate::migrate::Pinned::Convert { from }) => {
                found += 1;
                convert.push(format!("{name} ({from:?} → {:?} of {})", want.map_type, want.max_entries));
            }
            Err(e) => return Check::fail(NAME, crate::chain::chain(&e)),
        }
    }
    let mut live = Vec::new();
    if !resize.is_empty() {
        live.push(format!("resizes {}", resize.join(", ")));
    }
    if !convert.is_empty() {
        live.push(format!("converts {} from an earlier version", convert.join(", ")));
    }
    match (found, live.is_empty()) {
        (0, _) => Check::pass(
            NAME,
            format!("none under {} yet: `run` creates them", pin_dir.display()),
        ),
        (n, true) => Check::pass(
            NAME,
            format!(
                "{n} maps under {} match this build; `run` adopts them (flows are kept)",
                pin_dir.display()
            ),
        ),
        (n, false) => Check::pass(
            NAME,
            format!(
                "{n} maps under {} match this build; `run` {} live (flows are kept)",
                pin_dir.display(),
                live.join(" and ")
            ),
        ),
    }
}

fn ifindex(iface: &str) -> u32 {
    let Ok(c) = CString::new(iface) else { return 0 };
    // SAFETY: a valid NUL-terminated name.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

pub fn interface(iface: &str) -> Check {
    let name = format!("interface {iface}");
    match ifindex(iface) {
        0 => Check::fail(name, format!("{iface} does not exist in this network namespace: check --iface against `ip -br link`")),
        i => Check::pass(name, format!("exists (ifindex {i})")),
    }
}

// The bpf(2) commands and constants used by the native XDP probe.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Attaches `r0 = XDP_PASS; exit` in driver mode for a moment: the link is
/// detached when its fd closes at the end of this function.
pub fn native_xdp(iface: &str) -> Check {
    let name = format!("native XDP on {iface}");
    // mov64 r0, 2 (XDP_PASS); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let prog = match bpf(BPF_PROG_LOAD, &load) {
        Ok(fd) => fd,
        Err(e) => {
            return Check::fail(
                name,
                format!("loading a probe XDP program failed ({e}): see the privileges check"),
            )
        }
    };
    use std::os::fd::AsRawFd as _;
    let link = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex(iface),
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..Default::default()
    };
    match bpf(BPF_LINK_CREATE, &link) {
        Ok(_link) => Check::pass(name, "supported by the driver"),
        // An XDP program is attached already (a running or stopped agent's
        // pinned link, most likely): the driver evidently supports XDP in
        // the mode it was attached with, which is all we could learn.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) => {
            Check::pass(name, "not probed: an XDP program is attached already (a running or pinned agent's?)")
        }
        Err(e) => Check::fail(name, format!("native XDP is not supported on {iface} ({e}); pass --xdp-mode generic (slower, works on any interface)")),
    }
}

/// Which way tc programs attach here: `forced` by `--tc-attach`, or
/// probed (see `links::probe_tc_path`). TCX forced on a kernel without it
/// fails: `run` could not attach.
pub fn tc_attach(forced: Option<crate::links::TcPath>) -> Check {
    use crate::links::{probe_tc_path, TcPath, TC_HANDLE, TC_PRIORITY};
    const NAME: &str = "tc attach";
    let (probed, why) = probe_tc_path();
    let why = match forced {
        Some(TcPath::Tcx) if probed == TcPath::Netlink => {
            return Check::fail(NAME, format!("--tc-attach tcx, but {why}: pass --tc-attach auto (or netlink)"))
        }
        Some(f) if f != probed => format!("forced by --tc-attach; {why}"),
        _ => why,
    };
    Check::pass(
        NAME,
        match forced.unwrap_or(probed) {
            TcPath::Tcx => format!("TCX links, pinned under <pin-path>/links: {why}"),
            TcPath::Netlink => format!(
                "netlink: cls_bpf filters (direct-action) on the clsact qdisc, priority {TC_PRIORITY} handle {TC_HANDLE:#x}; \
                 they stay attached without the agent and are replaced in place on restart: {why}"
            ),
        },
    )
}

/// Whether `run` will balance the node's own connections (`--socket-lb`):
/// a cgroup2 directory to attach to and SO_NETNS_COOKIE (5.14) to tell the
/// node's sockets from pods'. With `auto`, `run` goes on without when it
/// cannot (so does this check, saying so); an explicit cgroup must work.
pub fn socket_lb(want: &crate::socklb::SocketLb) -> Check {
    use crate::socklb::{auto_cgroup, is_cgroup2, netns_cookie, SocketLb};
    const NAME: &str = "socket LB";
    let cgroup = match want {
        SocketLb::Off => return Check::pass(NAME, "off (--socket-lb off): the node's own connections to services are not balanced"),
        SocketLb::Auto => auto_cgroup(),
        SocketLb::Cgroup(p) if is_cgroup2(p) => Ok(p.clone()),
        SocketLb::Cgroup(p) => Err(crate::socklb::Error::NotCgroup2(p.clone())),
    };
    match cgroup.and_then(|c| netns_cookie().map(|_| c)) {
        Ok(c) => Check::pass(NAME, format!("the node's own connections to services are balanced at connect()/sendmsg(): programs on cgroup {}", c.display())),
        Err(e) if *want == SocketLb::Auto => Check::pass(
            NAME,
            format!("unavailable ({}): `run` goes on without, and the node's own connections to services are not balanced", crate::chain::chain(&e)),
        ),
        Err(e) => Check::fail(NAME, format!("{}: pass --socket-lb auto, off, or a cgroup2 directory", crate::chain::chain(&e))),
    }
}

/// Loads every program of the embedded object into this kernel's verifier,
/// with small private maps, then drops them: nothing is pinned or attached.
/// Says how many instructions the verifier walked for each.
/// The one true answer to "do the programs run on this kernel"
/// (`lb-agent doctor` only; `run` loads them for real anyway).
pub fn programs() -> Check {
    const NAME: &str = "programs";
    let sizes = crate::pins::MapSizes {
        services: 64,
        backends: 64,
        slots: 64,
        conntrack: 1024,
        affinity: 64,
        conntrack_v6: 1024,
        affinity_v6: 64,
        sockets: 64,
        sockets_v6: 64,
    };
    let mut loader = crate::loader::new_loader();
    for name in lb_common::maps::ALL {
        loader.map_max_entries(name, crate::migrate::expected(name, sizes).max_entries);
    }
    let mut ebpf = match loader.load(crate::loader::BYTECODE) {
        Ok(e) => e,
        Err(e) => return Check::fail(NAME, format!("the kernel refused the object's maps or BTF: {e}")),
    };
    let (mut loaded, mut rejected) = (Vec::new(), Vec::new());
    for (name, prog) in ebpf.programs_mut() {
        let r = match prog {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            _ => continue,
        };
        // With the verifier's instruction count (kernel 5.16+): how close
        // each program is to its limit of 1M on this kernel.
        let insns = prog.info().ok().and_then(|i| i.verified_instruction_count());
        match r {
            Ok(()) => loaded.push(insns.map_or_else(|| name.to_string(), |n| format!("{name} ({n} insns)"))),
            Err(e) => rejected.push((name.to_string(), crate::loader::Error::program_load(name, e))),
        }
    }
    loaded.sort();
    rejected.sort_by(|a, b| a.0.cmp(&b.0));
    if rejected.is_empty() {
        return Check::pass(NAME, format!("this kernel's verifier accepts {} (loaded and dropped)", loaded.join(", ")));
    }
    let names: Vec<&str> = rejected.iter().map(|(n, _)| n.as_str()).collect();
    Check::fail(NAME, format!("this kernel's verifier rejects {} (accepts {}); {}", names.join(", "), loaded.join(", "), crate::chain::chain(&rejected[0].1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_kernels_are_refused_with_the_fix() {
        assert!(kernel_version(Ok(KernelVersion::new(6, 18, 0))).ok);
        assert!(kernel_version(Ok(KernelVersion::new(5, 15, 0))).ok);
        let c = kernel_version(Ok(KernelVersion::new(5, 10, 28)));
        assert!(
            !c.ok && c.detail.contains("older than 5.15") && c.detail.contains("upgrade"),
            "{}",
            c.detail
        );
        assert!(!kernel_version(Err("failed to parse kernel version".into())).ok);
        assert!(kernel_version(KernelVersion::current().map_err(|e| e.to_string())).ok, "this machine's kernel");
    }

    #[test]
    fn missing_btf_is_reported() {
        let c = btf(Path::new("/nonexistent/vmlinux"));
        assert!(
            !c.ok && c.detail.contains("CONFIG_DEBUG_INFO_BTF"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn missing_capabilities_are_named() {
        let all = format!(
            "Name:\tx\nCapEff:\t{:016x}\n",
            (1u64 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
        );
        assert!(privileges(&all).ok);
        let c = privileges("CapEff:\t0000000000001000\n");
        assert!(!c.ok, "{}", c.detail);
        assert!(
            c.detail.contains("missing CAP_BPF, CAP_SYS_ADMIN") && c.detail.contains("run as root"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn the_report_marks_each_check() {
        let r = report(&[Check::pass("a", "fine"), Check::fail("b", "broken: do x")]);
        assert!(
            r.contains("✓ a") && r.contains("✗ b") && r.contains("1 check(s) failed"),
            "{r}"
        );
    }
}
