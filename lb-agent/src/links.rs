//! Attachments that outlive the agent. With a links directory, every
//! attachment is a bpf_link pinned at `<links>/<iface>@<program>`: the
//! kernel keeps the program attached while no agent runs (a crash, a
//! restart, an upgrade), and a new agent swaps its program in atomically
//! (`bpf_link_update`) instead of detaching and attaching — no packet meets
//! an interface without a program. Removing the pin detaches.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        tc, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use lb_common::maps::programs;

use crate::loader::program;

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
        let link: FdLink = xdp.take_link(id)?.try_into().context("XDP attached without a bpf_link (kernel < 5.9?)")?;
        pin_link(link, &pin)?;
    }
    Ok(())
}

pub fn attach_tc(ebpf: &mut Ebpf, iface: &str, prog: &str, at: TcAttachType, links: Option<&Path>) -> Result<()> {
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
    // Needed only for the netlink attach of kernels before 6.6 (TCX needs none).
    let _ = tc::qdisc_add_clsact(iface);
    let id = p.attach(iface, at).with_context(|| format!("attaching {prog} to {iface} ({at:?})"))?;
    if let Some(pin) = pin {
        let link: FdLink = p.take_link(id)?.try_into().context("tc attached without a bpf_link (TCX needs kernel >= 6.6)")?;
        pin_link(link, &pin)?;
    }
    Ok(())
}

/// Attaches the socket programs to the cgroup directory `cgroup` (the cgroup2
/// root in production: every process of the node), pinned at
/// `<links>/cgroup@<program>`. cgroup links cannot swap their program, so a
/// new agent attaches next to the old link and moves its pin over the old
/// one, which then detaches: for a moment both run, and the second finds a
/// backend address, not a service, and leaves it alone.
pub fn attach_cgroup(ebpf: &mut Ebpf, cgroup: &Path, links: Option<&Path>) -> Result<()> {
    let dir = std::fs::File::open(cgroup).with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
    for name in programs::SOCK {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        // With bpf_link (kernel >= 5.7) "Single" means flags 0; a cgroup link
        // always coexists with others (the kernel rejects ALLOW_MULTI there).
        let id = p
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup {} (needs cgroup v2 and kernel >= 5.7)", cgroup.display()))?;
        if let Some(links) = links {
            let link: FdLink = p.take_link(id)?.try_into().context("cgroup program attached without a bpf_link")?;
            let pin = pin_path(links, "cgroup", name);
            let next = crate::migrate::next_path(&pin);
            let _ = std::fs::remove_file(&next);
            pin_link(link, &next)?;
            std::fs::rename(&next, &pin).with_context(|| format!("moving the link pin {} to {}", next.display(), pin.display()))?;
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
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    link.pin(pin).with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(())
}

/// Points every link pinned under `links` at this object's program of the
/// same name (used when maps move to new instances: the old programs must stop
/// writing the old maps).
pub fn relink_all(ebpf: &mut Ebpf, links: &Path) -> Result<()> {
    let Ok(dir) = std::fs::read_dir(links) else { return Ok(()) };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, prog)) = name.rsplit_once('@') else { continue };
        // Socket programs are re-attached by `attach_cgroup` once loading is done.
        if programs::SOCK.contains(&prog) {
            continue;
        }
        let Some(old) = pinned(&entry.path()) else { continue };
        let r = if prog == programs::XDP_LB {
            let p: &mut Xdp = program(ebpf, prog)?;
            p.attach_to_link(old.try_into()?).map(drop)
        } else {
            let p: &mut SchedClassifier = program(ebpf, prog)?;
            p.attach_to_link(old.try_into()?).map(drop)
        };
        r.with_context(|| format!("switching the link {name} to the new program"))?;
    }
    Ok(())
}
