//! Host-side pod interfaces come and go with pods: the agent attaches tc to
//! each new one whose name matches a `--pod-iface` glob the moment a
//! netlink link event announces it (and re-scans every second besides),
//! retries an attach that failed at every scan, and removes the link pins
//! of interfaces that vanished.
use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use crate::{
    linkwatch::{next_change, LinkEvents},
    loader,
};

pub struct PodIfaces {
    globs: Vec<String>,
    /// Where the links are pinned (see `loader::attach_pod_iface`).
    pin_dir: std::path::PathBuf,
    /// Interfaces attached.
    attached: BTreeSet<String>,
    /// Interfaces whose attach failed, with the attempts so far: retried at
    /// every scan while they exist.
    failed: BTreeMap<String, u32>,
    /// Link events; None without globs or when netlink refused (then the
    /// periodic scan alone finds interfaces).
    events: Option<LinkEvents>,
}

impl PodIfaces {
    pub fn new(globs: Vec<String>, pin_dir: std::path::PathBuf) -> Self {
        let events = if globs.is_empty() {
            None
        } else {
            LinkEvents::new()
                .map_err(|e| tracing::warn!(error = %e, "subscribing to link events failed; pod interfaces are found by the scan every second"))
                .ok()
        };
        Self { globs, pin_dir, attached: BTreeSet::new(), failed: BTreeMap::new(), events }
    }

    /// Waits for the next link event (forever without a subscription).
    pub async fn link_event(&mut self) {
        next_change(&mut self.events, |e| tracing::warn!(error = %e, "reading link events failed; pod interfaces are found by the scan every second")).await
    }

    /// Attaches to matching interfaces not attached yet (`trigger` says why
    /// the scan runs, for the log); forgets vanished ones, so a re-created
    /// interface of the same name is attached again, and removes their pins.
    pub fn scan(&mut self, ebpf: &mut Ebpf, trigger: &str) {
        if self.globs.is_empty() {
            return;
        }
        let present = match interfaces() {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing network interfaces failed");
                return;
            }
        };
        self.attached.retain(|i| present.contains(i));
        self.failed.retain(|i, _| present.contains(i));
        self.remove_vanished_pins(&present);
        for iface in present {
            if self.attached.contains(&iface) || !self.globs.iter().any(|g| glob_match(g, &iface)) {
                continue;
            }
            match loader::attach_pod_iface(ebpf, &iface, Some(&self.pin_dir)) {
                Ok(()) => {
                    let attempts = self.failed.remove(&iface).map_or(1, |n| n + 1);
                    tracing::info!(%iface, trigger, attempts, "attached tc to pod interface");
                    self.attached.insert(iface);
                }
                Err(e) => {
                    let n = self.failed.entry(iface.clone()).or_insert(0);
                    *n += 1;
                    // Logged at the first failure and then ever more rarely.
                    if n.is_power_of_two() {
                        tracing::warn!(%iface, attempts = *n, error = crate::chain::chain(&e), "attaching to pod interface failed; retrying every second");
                    }
                }
            }
        }
    }

    /// Removes the link pins (`<iface>@<program>`) of pod interfaces that
    /// no longer exist: the links are dead, and a later relink of every pin
    /// (a map resize) must not trip over them.
    fn remove_vanished_pins(&self, present: &BTreeSet<String>) {
        let dir = crate::pins::links_dir(&self.pin_dir);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((iface, _)) = name.rsplit_once('@') else { continue };
            if present.contains(iface) || !self.globs.iter().any(|g| glob_match(g, iface)) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(%iface, pin = %name, "removed the link pin of a vanished pod interface"),
                Err(e) => tracing::warn!(%iface, pin = %name, error = %e, "removing the link pin of a vanished pod interface failed"),
            }
        }
    }
}

/// The interfaces of this process's network namespace. Asked of the
/// kernel (`if_nameindex`, netlink) rather than read from /sys/class/net,
/// which lists the namespace that mounted /sys: not ours when the agent
/// was moved into a namespace with setns (`nsenter --net`) and /sys was not
/// remounted.
fn interfaces() -> std::io::Result<BTreeSet<String>> {
    // SAFETY: if_nameindex returns an array terminated by a zeroed entry,
    // or null on failure; it is freed below and not used afterwards.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut names = BTreeSet::new();
    let mut p = list;
    // SAFETY: walks the array up to its terminating entry (index 0); each
    // name is a NUL-terminated string owned by the array.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            names.insert(std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(names)
}

/// Shell-style match (`*` any run, `?` one character, `[...]` a class); a
/// pattern that does not parse matches nothing (`run` refuses it up front,
/// see [`check_glob`]).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name))
}

/// A `--pod-iface` glob, or why it is not one.
pub fn check_glob(pattern: &str) -> Result<String, String> {
    glob::Pattern::new(pattern).map(|_| pattern.to_string()).map_err(|e| format!("not a glob ({e}): use *, ? and [...] as in a shell"))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("veth*", "veth1a2b"));
        assert!(glob_match("cali*", "cali"));
        assert!(glob_match("pod?", "pod0"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(!glob_match("pod?", "pod10"));
        assert!(glob_match("lxc*_h", "lxc12_h"));
    }

    #[test]
    fn a_pattern_that_is_no_glob_is_refused_up_front() {
        let e = super::check_glob("veth[").unwrap_err();
        assert!(e.contains("not a glob"), "{e}");
        assert_eq!(super::check_glob("veth*").as_deref(), Ok("veth*"));
        assert!(!glob_match("veth[", "veth["), "never matches: `run` refused it");
    }

    #[test]
    fn the_interfaces_of_this_namespace_include_loopback() {
        assert!(super::interfaces().unwrap().contains("lo"));
    }
}
