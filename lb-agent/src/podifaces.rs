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

/// Shell-style match of `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
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
    fn the_interfaces_of_this_namespace_include_loopback() {
        assert!(super::interfaces().unwrap().contains("lo"));
    }
}
