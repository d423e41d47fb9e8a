//! Attachments that outlive the agent. With a links directory, every
//! attachment is a bpf_link pinned at `<links>/<iface>@<program>`: the
//! kernel keeps the program attached while no agent runs (a crash, a
//! restart, an upgrade), and a new agent swaps its program in atomically
//! (`bpf_link_update`) instead of detaching and attaching — no packet meets
//! an interface without a program. Removing the pin detaches.
//!
//! tc has two paths ([`TcPath`]): TCX links (kernel 6.6+), pinned like the
//! others, or, on older kernels, a cls_bpf filter on the clsact qdisc at a
//! fixed priority and handle. Such a filter outlives the agent by itself;
//! the next agent finds it there and replaces its program in place.
use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use lb_common::maps::programs;

use crate::pins::{next_path, program, ProgramLookupError};

/// An attachment step that failed: which interface, hook or pin, and the
/// kernel feature or command that fixes it where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Program(#[from] ProgramLookupError),
    #[error("interface name {iface:?}")]
    IfaceName {
        iface: String,
        #[source]
        source: std::ffi::NulError,
    },
    #[error("interface {iface} does not exist")]
    NoIface { iface: String },
    /// `step` names the interface, hook and program, and what the kernel needs.
    #[error("{step}")]
    Attach {
        step: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A program error aya gives without more to say (taking a link).
    #[error(transparent)]
    Aya(#[from] aya::programs::ProgramError),
    #[error("{what} attached without a bpf_link{hint}")]
    NoBpfLink {
        what: &'static str,
        hint: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A pinned link of another kind than its name says.
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
    #[error("adding the clsact qdisc to {iface} (needs sch_ingress)")]
    Clsact {
        iface: String,
        #[source]
        source: tc::TcError,
    },
    #[error("the tc filter at priority {TC_PRIORITY} handle {TC_HANDLE:#x} on {iface} ({at:?}) is not xdplb's ({kind} {name:?}): remove it (`tc filter del dev {iface} {} pref {TC_PRIORITY}`)", if *.at == TcAttachType::Ingress { "ingress" } else { "egress" })]
    ForeignFilter {
        iface: String,
        at: TcAttachType,
        kind: String,
        name: Option<String>,
    },
    /// A file-system or netlink step: `step` says which, on what.
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the link at {}", .path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("attaching XDP to {iface} in {mode} mode (if the driver lacks native XDP, use generic mode)")]
    Uplink {
        iface: String,
        mode: String,
        #[source]
        source: Box<Error>,
    },
    #[error("switching {what}")]
    Relink {
        what: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_step(step: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { step: step(), source }
}

fn pin_path(links: &Path, iface: &str, prog: &str) -> PathBuf {
    links.join(format!("{iface}@{prog}"))
}

/// The pinned link at `path`, if there is one. A stale pin (its interface
/// gone, or not a link) is removed and reported as absent.
fn pinned(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(l) => Some(FdLink::from(l)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "removing an unusable link pin");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

pub fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpMode, links: Option<&Path>) -> Result<()> {
    let xdp: &mut Xdp = program(ebpf, programs::XDP_LB)?;
    let pin = links.map(|l| pin_path(l, iface, programs::XDP_LB));
    if let Some(old) = pin.as_deref().and_then(pinned) {
        match xdp.attach_to_link(old.try_into()?) {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(%iface, error = %e, "replacing the pinned XDP link failed; attaching anew");
                let _ = std::fs::remove_file(pin.as_deref().unwrap_or(Path::new("")));
            }
        }
    }
    let id = xdp.attach(iface, mode)?;
    if let Some(pin) = pin {
        let link: FdLink = xdp.take_link(id)?.try_into().map_err(|source| Error::NoBpfLink { what: "XDP", hint: " (kernel < 5.9?)", source })?;
        pin_link(link, &pin)?;
    }
    Ok(())
}

/// How tc programs attach on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcPath {
    /// TCX bpf_links (kernel >= 6.6), pinned under the links directory.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc, direct-action, at
    /// [`TC_PRIORITY`]/[`TC_HANDLE`]: the filter outlives the agent by itself.
    Netlink,
}

/// Our netlink filters' priority: 1, the first filter to run, as TCX
/// programs run before every netlink filter.
pub const TC_PRIORITY: u16 = 1;
/// Our netlink filters' handle ("LB"): with the priority, what identifies
/// them (together with their program name) on restart and uninstall.
pub const TC_HANDLE: u32 = 0x4c42;

/// The tc programs (the names our filters carry).
const TC_PROGRAMS: &[&str] = &[programs::TC_INGRESS, programs::TC_EGRESS];

const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;

static TC_PATH: std::sync::OnceLock<TcPath> = std::sync::OnceLock::new();

/// Fixes the tc attach path for this process: `forced`, or what the kernel
/// offers (see [`probe_tc_path`]). The first call decides; returns the path.
pub fn choose_tc_path(forced: Option<TcPath>) -> TcPath {
    *TC_PATH.get_or_init(|| forced.unwrap_or_else(|| probe_tc_path().0))
}

/// The tc attach path of this process (probed on first use).
pub fn tc_path() -> TcPath {
    choose_tc_path(None)
}

/// Whether the kernel has TCX, by asking it: a BPF_PROG_QUERY for the TCX
/// ingress hook of loopback succeeds on kernels with TCX (6.6+) and fails
/// with EINVAL on older ones, which do not know the attach type. Nothing is
/// attached. Returns the path and why.
pub fn probe_tc_path() -> (TcPath, String) {
    match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
        Ok(_) => (TcPath::Tcx, "the kernel has TCX (BPF_PROG_QUERY on a TCX hook answered)".into()),
        Err(aya::programs::ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            (TcPath::Netlink, "the kernel has no TCX (needs 6.6; BPF_PROG_QUERY on a TCX hook: EINVAL)".into())
        }
        // Could not ask (no privileges, no loopback): go by the version.
        Err(e) if aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)) => (TcPath::Tcx, format!("kernel >= 6.6 (the TCX probe failed: {e})")),
        Err(e) => (TcPath::Netlink, format!("kernel < 6.6 (the TCX probe failed: {e})")),
    }
}

fn parent(at: TcAttachType) -> u32 {
    match at {
        TcAttachType::Ingress => CLSACT_INGRESS,
        TcAttachType::Egress => CLSACT_EGRESS,
        TcAttachType::Custom(p) => p,
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|source| Error::IfaceName { iface: iface.into(), source })?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(Error::NoIface { iface: iface.into() }),
        i => Ok(i),
    }
}

/// Our netlink filter on `iface`'s `at` hook: the one at our priority and
/// handle. Returns its program name; an error when that place is held by a
/// filter that is not one of ours.
fn our_filter(ifindex: u32, iface: &str, at: TcAttachType) -> Result<Option<String>> {
    let filters = crate::tcfilter::list(ifindex, parent(at)).map_err(io_step(|| format!("listing the tc filters of {iface} ({at:?})")))?;
    let Some(f) = filters.into_iter().find(|f| f.priority == TC_PRIORITY && f.handle == TC_HANDLE) else { return Ok(None) };
    match f.name {
        Some(n) if f.kind == "bpf" && TC_PROGRAMS.contains(&n.as_str()) => Ok(Some(n)),
        name => Err(Error::ForeignFilter { iface: iface.into(), at, kind: f.kind, name }),
    }
}

pub fn attach_tc(ebpf: &mut Ebpf, iface: &str, prog: &str, at: TcAttachType, links: Option<&Path>) -> Result<()> {
    match tc_path() {
        TcPath::Tcx => attach_tcx(ebpf, iface, prog, at, links)?,
        TcPath::Netlink => attach_netlink(ebpf, iface, prog, at, links.is_some())?,
    }
    // One path only: a leftover of the other one (the agent was run with
    // another --tc-attach) would run the program twice.
    if let Some(links) = links {
        match tc_path() {
            TcPath::Tcx => {
                if let Err(e) = remove_filter(iface, at) {
                    tracing::warn!(%iface, error = crate::chain::chain(&e), "could not check for a netlink tc filter of an earlier agent");
                }
            }
            TcPath::Netlink => {
                let _ = std::fs::remove_file(pin_path(links, iface, prog));
            }
        }
    }
    Ok(())
}

fn attach_tcx(ebpf: &mut Ebpf, iface: &str, prog: &str, at: TcAttachType, links: Option<&Path>) -> Result<()> {
    let p: &mut SchedClassifier = program(ebpf, prog)?;
    let pin = links.map(|l| pin_path(l, iface, prog));
    if let Some(old) = pin.as_deref().and_then(pinned) {
        match p.attach_to_link(old.try_into()?) {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(%iface, prog, error = %e, "replacing the pinned tc link failed; attaching anew");
                let _ = std::fs::remove_file(pin.as_deref().unwrap_or(Path::new("")));
            }
        }
    }
    let id = p.attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(|source| Error::Attach {
        step: format!("attaching {prog} to {iface} ({at:?}) through TCX (needs kernel >= 6.6: use --tc-attach auto or netlink)"),
        source,
    })?;
    if let Some(pin) = pin {
        let link: FdLink = p.take_link(id)?.try_into().map_err(|source| Error::NoBpfLink { what: "tc", hint: "", source })?;
        pin_link(link, &pin)?;
    }
    Ok(())
}

/// Attaches through a cls_bpf filter at our priority and handle. An existing
/// filter of ours there is replaced in place (cls_bpf swaps the program
/// atomically: no packet meets the hook without one, and there is never a
/// second copy); otherwise one is created. With `persist`, the filter is left
/// attached when this process ends (the kernel keeps it; no pin is needed).
fn attach_netlink(ebpf: &mut Ebpf, iface: &str, prog: &str, at: TcAttachType, persist: bool) -> Result<()> {
    let index = ifindex(iface)?;
    // The hook the filters hang on; already there after the first attach.
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => return Err(Error::Clsact { iface: iface.into(), source }),
    }
    let existing = our_filter(index, iface, at)?;
    let p: &mut SchedClassifier = program(ebpf, prog)?;
    let id = match existing {
        Some(_) => {
            let link = our_link(iface, at)?;
            p.attach_to_link(link).map_err(|source| Error::Attach { step: format!("replacing the tc filter of {iface} ({at:?}) with {prog}"), source })?
        }
        None => {
            let opts = NlOptions { priority: TC_PRIORITY, handle: TcHandle::from(TC_HANDLE), classid: None };
            p.attach_with_options(iface, at, TcAttachOptions::Netlink(opts))
                .map_err(|source| Error::Attach { step: format!("attaching {prog} to {iface} ({at:?}) as a tc filter (needs cls_bpf)"), source })?
        }
    };
    if persist {
        // aya deletes the filter when its link is dropped; ours must stay.
        std::mem::forget(p.take_link(id)?);
    }
    Ok(())
}

/// A handle on our netlink filter on `iface`'s `at` hook.
fn our_link(iface: &str, at: TcAttachType) -> Result<SchedClassifierLink> {
    SchedClassifierLink::attached(iface, at, TC_PRIORITY, TcHandle::from(TC_HANDLE), None)
        .map_err(io_step(|| format!("finding the tc filter of {iface} ({at:?})")))
}

/// Deletes our netlink filter on `iface`'s `at` hook, if there is one.
fn remove_filter(iface: &str, at: TcAttachType) -> Result<()> {
    if our_filter(ifindex(iface)?, iface, at)?.is_some() {
        // Dropping an aya tc link deletes its filter.
        drop(our_link(iface, at)?);
    }
    Ok(())
}

/// Our netlink filters in this network namespace: (interface, hook, program).
pub fn netlink_filters() -> Result<Vec<(String, TcAttachType, String)>> {
    let mut out = Vec::new();
    for (index, iface) in crate::tcfilter::interfaces().map_err(io_step(|| "listing network interfaces".into()))? {
        for at in [TcAttachType::Ingress, TcAttachType::Egress] {
            // Someone else's filter at our place is not ours to list.
            if let Ok(Some(prog)) = our_filter(index, &iface, at) {
                out.push((iface.clone(), at, prog));
            }
        }
    }
    Ok(out)
}

/// Deletes every netlink filter of ours in this network namespace (what
/// `uninstall` does for them; TCX links go with their pins). Returns how many.
pub fn remove_netlink_filters() -> Result<usize> {
    let found = netlink_filters()?;
    for (iface, at, _) in &found {
        remove_filter(iface, *at)?;
    }
    Ok(found.len())
}

/// Attaches the socket programs to the cgroup directory `cgroup` (the cgroup2
/// root in production: every process of the node), pinned at
/// `<links>/cgroup@<program>`. cgroup links cannot swap their program, so a
/// new agent attaches next to the old link and moves its pin over the old
/// one, which then detaches: for a moment both run, and the second finds a
/// backend address, not a service, and leaves it alone.
pub fn attach_cgroup(ebpf: &mut Ebpf, cgroup: &Path, links: Option<&Path>) -> Result<()> {
    let dir = std::fs::File::open(cgroup).map_err(io_step(|| format!("opening the cgroup {}", cgroup.display())))?;
    for name in programs::SOCK {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        // With bpf_link (kernel >= 5.7) "Single" means flags 0; a cgroup link
        // always coexists with others (the kernel rejects ALLOW_MULTI there).
        let id = p.attach(&dir, CgroupAttachMode::Single).map_err(|source| Error::Attach {
            step: format!("attaching {name} to the cgroup {} (needs cgroup v2 and kernel >= 5.7)", cgroup.display()),
            source,
        })?;
        if let Some(links) = links {
            let link: FdLink = p.take_link(id)?.try_into().map_err(|source| Error::NoBpfLink { what: "cgroup program", hint: "", source })?;
            let pin = pin_path(links, "cgroup", name);
            let next = next_path(&pin);
            let _ = std::fs::remove_file(&next);
            pin_link(link, &next)?;
            std::fs::rename(&next, &pin).map_err(io_step(|| format!("moving the link pin {} to {}", next.display(), pin.display())))?;
        }
    }
    Ok(())
}

/// Removes the socket programs' pinned cgroup links, which detaches them.
pub fn remove_cgroup_links(links: &Path) {
    for name in programs::SOCK {
        let _ = std::fs::remove_file(pin_path(links, "cgroup", name));
    }
}

fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(io_step(|| format!("creating {}", dir.display())))?;
    }
    link.pin(pin).map_err(|source| Error::Pin { path: pin.to_path_buf(), source })?;
    Ok(())
}

/// Points every link pinned under `links` at this object's program of the
/// same name (used when maps move to new instances: the old programs must stop
/// writing the old maps).
pub fn relink_all(ebpf: &mut Ebpf, links: &Path) -> Result<()> {
    for entry in std::fs::read_dir(links).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, prog)) = name.rsplit_once('@') else { continue };
        // Socket programs are re-attached by `attach_cgroup` once loading is done.
        if programs::SOCK.contains(&prog) {
            continue;
        }
        let Some(old) = pinned(&entry.path()) else { continue };
        let relink = |source| Error::Relink { what: format!("the link {name} to the new program"), source: Box::new(source) };
        if prog == programs::XDP_LB {
            let p: &mut Xdp = program(ebpf, prog)?;
            p.attach_to_link(old.try_into()?).map_err(|e| relink(e.into()))?;
        } else {
            let p: &mut SchedClassifier = program(ebpf, prog)?;
            p.attach_to_link(old.try_into()?).map_err(|e| relink(e.into()))?;
        }
    }
    // Netlink filters have no pins: found on the interfaces, replaced in place.
    for (iface, at, prog) in netlink_filters()? {
        attach_netlink(ebpf, &iface, &prog, at, true)
            .map_err(|e| Error::Relink { what: format!("the tc filter of {iface} to the new {prog}"), source: Box::new(e) })?;
    }
    Ok(())
}
