//! Host-side pod interfaces come and go with pods: the agent re-scans the
//! namespace's interfaces every second and attaches tc to each new one whose
//! name matches a `--pod-iface` glob.
use std::collections::BTreeSet;

use aya::Ebpf;
use lb_agent::loader;

pub struct PodIfaces {
    globs: Vec<String>,
    /// Where the links are pinned (see `loader::attach_pod_iface`).
    pin_dir: std::path::PathBuf,
    /// Interfaces attached (or that failed: not retried until they reappear).
    seen: BTreeSet<String>,
}

impl PodIfaces {
    pub fn new(globs: Vec<String>, pin_dir: std::path::PathBuf) -> Self {
        Self {
            globs,
            pin_dir,
            seen: BTreeSet::new(),
        }
    }

    /// Attaches to matching interfaces not seen before; forgets vanished ones
    /// so a re-created interface of the same name is attached again.
    pub fn scan(&mut self, ebpf: &mut Ebpf) {
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
        self.seen.retain(|i| present.contains(i));
        for iface in present {
            if self.seen.contains(&iface) || !self.globs.iter().any(|g| glob_match(g, &iface)) {
                continue;
            }
            match loader::attach_pod_iface(ebpf, &iface, Some(&self.pin_dir)) {
                Ok(()) => tracing::info!(%iface, "attached tc to pod interface"),
                Err(e) => {
                    tracing::warn!(%iface, error = format!("{e:#}"), "attaching to pod interface failed")
                }
            }
            self.seen.insert(iface);
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
