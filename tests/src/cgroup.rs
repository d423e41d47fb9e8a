//! cgroup v2 directories for tests of the socket programs: the agent
//! attaches to one (`--socket-lb <dir>`) and only processes put into it
//! are affected, so tests never touch the host's other processes. Named
//! `xlbt-<pid>-<n>` under the cgroup2 mount; removed on drop, and a later
//! run removes those whose process is gone.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::netns::Netns;

pub struct TestCgroup {
    pub path: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where cgroup v2 is mounted on this host.
pub fn mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    lb_agent::socklb::cgroup2_mount(&mounts).expect("these tests need a cgroup2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
}

impl TestCgroup {
    pub fn new() -> Self {
        let root = mount();
        remove_stale(&root);
        let path = root.join(format!("xlbt-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating the cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// Runs `program args` inside this cgroup and `ns`'s network namespace;
    /// waits for it.
    pub fn run(&self, ns: &Netns, program: &Path, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .args(["sh", "-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
            .arg(&self.path)
            .arg(program)
            .args(args)
            .output()
            .expect("running a process in the test cgroup")
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes run to completion in `run`, so the cgroup is empty.
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn remove_stale(root: &Path) {
    let Ok(dir) = std::fs::read_dir(root) else { return };
    for e in dir.flatten() {
        if crate::netns::owner_gone(&e.file_name().to_string_lossy(), &["xlbt-"]) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}
