//! Whether the agent's pins outlive it. Pins keep the programs attached and
//! the flows alive across restarts, but only on a bpffs that outlives the
//! process: `ip netns exec` gives its command a private mount namespace with
//! a fresh /sys, where /sys/fs/bpf is an empty directory; a bpffs the agent
//! mounts there dies with the process, and every flow with it on the next
//! restart. The agent refuses to start that way unless told it may.
use std::path::{Path, PathBuf};

use crate::loader::is_bpffs;

/// Why the pins would die with the process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the pins under {pin_dir} would not outlive this process: {why}. Run the agent in a network namespace with \
     `nsenter --net=/run/netns/NAME lb-agent run ...` (it keeps the host's mounts) instead of `ip netns exec`, or \
     mount the host's bpffs at {parent} (in Kubernetes: a hostPath volume of /sys/fs/bpf); \
     --allow-ephemeral-pins starts anyway, losing every flow on restart",
    pin_dir = .pin_dir.display(),
    parent = .parent.display()
)]
pub struct Ephemeral {
    pub pin_dir: PathBuf,
    pub parent: PathBuf,
    pub why: String,
}

/// The mount namespace of a process (`mnt:[4026531841]`), if readable.
fn mount_ns(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// Checks that pins under `pin_dir` outlive the process, before the agent
/// mounts anything. A bpffs already at the pin directory's parent was
/// mounted by someone else (systemd, a container's hostPath) and is kept.
/// One the agent must mount itself stays only in the host's mount
/// namespace: that of PID 1, or the initial one where kernel threads live
/// (PID 2, kthreadd; PID 1 may be unreadable in a sandbox). In any other
/// (`ip netns exec`, `unshare -m`) it dies with the namespace.
pub fn check(pin_dir: &Path) -> Result<(), Ephemeral> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    if is_bpffs(&parent) {
        return Ok(());
    }
    let own = mount_ns("self");
    let host: Vec<PathBuf> = ["1", "2"].iter().filter_map(|p| mount_ns(p)).collect();
    // Unreadable: nothing to compare; the start-up bpffs check still applies.
    let Some(own) = own.filter(|_| !host.is_empty()) else {
        return Ok(());
    };
    if host.contains(&own) {
        return Ok(());
    }
    Err(Ephemeral {
        pin_dir: pin_dir.to_path_buf(),
        parent: parent.clone(),
        why: format!(
            "{} is not a bpffs, and this process runs in a mount namespace ({}) that is not the host's ({}): a bpffs the agent mounted there would die with it",
            parent.display(),
            own.display(),
            host.iter().map(|h| h.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    })
}
